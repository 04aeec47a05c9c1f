package lapse

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// CheckpointKind says what kind of system accepted a privilege.
type CheckpointKind string

// Checkpoint kinds (DESIGN.md §2).
const (
	CheckpointTarget   CheckpointKind = "target"   // the account, ACL or membership itself
	CheckpointSessions CheckpointKind = "sessions" // live sessions opened with it
	CheckpointCache    CheckpointKind = "cache"    // a cache that may outlive it
	CheckpointConsumer CheckpointKind = "consumer" // a system that accepts it (an API server, an SSH host)
)

// Checkpoint is one (grant × system that must confirm revocation). A grant
// is revoked only when every one of its checkpoints is verified.
type Checkpoint struct {
	GrantID    string         `json:"grant_id"`
	Name       string         `json:"name"`
	Kind       CheckpointKind `json:"kind"`
	CreatedAt  time.Time      `json:"created_at"`
	RevokedAt  time.Time      `json:"revoked_at,omitzero"`
	VerifiedAt time.Time      `json:"verified_at,omitzero"`
	// Evidence is what the last verification observed, as the connector
	// reported it (JSON object). It never holds a secret.
	Evidence json.RawMessage `json:"evidence,omitempty"`
	// Residue lists what the last verification still found, if anything.
	Residue []string `json:"residue,omitempty"`
}

// Verified reports whether revocation was confirmed on this checkpoint.
func (c *Checkpoint) Verified() bool { return !c.VerifiedAt.IsZero() }

// EvidenceDigest returns a SHA-256 digest (hex) of what a set of verified
// checkpoints says: each checkpoint's name, kind, verification time and
// evidence, in name order. The grant.revoked event records it, so that a
// revocation receipt's evidence is bound to the audit log entry it proves,
// not only to the receipt's signature. Evidence is canonicalised (decoded
// and re-encoded) so that the same observation digests the same however
// it was spaced when stored.
func EvidenceDigest(cps []*Checkpoint) string {
	sorted := make([]*Checkpoint, 0, len(cps))
	for _, c := range cps {
		if c != nil {
			sorted = append(sorted, c)
		}
	}
	slices.SortFunc(sorted, func(a, b *Checkpoint) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, c := range sorted {
		field([]byte(c.Name))
		field([]byte(c.Kind))
		field(binary.BigEndian.AppendUint64(nil, uint64(c.VerifiedAt.UnixNano())))
		field(canonicalJSON(c.Evidence))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// canonicalJSON re-encodes raw with encoding/json's rules (sorted keys,
// compact); raw that does not decode is used as it is.
func canonicalJSON(raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return raw
	}
	b, err := json.Marshal(v)
	if err != nil {
		return raw
	}
	return b
}
