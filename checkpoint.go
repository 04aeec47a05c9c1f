package lapse

import (
	"encoding/json"
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
