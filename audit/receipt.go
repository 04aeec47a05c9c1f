package audit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/lapsehq/lapse"
)

// ReceiptFormat is the format member of every receipt.
const ReceiptFormat = "lapse-receipt/v1"

// receiptContext is prepended to the receipt body before signing, so a
// receipt signature can never be mistaken for a checkpoint signature made
// with the same key (or the other way round).
const receiptContext = "lapse-receipt/v1\n"

// SignedReceipt is a receipt file: the receipt, the name of the key that
// signed it, and the Ed25519 signature over receiptContext followed by the
// receipt's JSON encoding. The file is exactly the JSON encoding of this
// struct (as encoding/json writes it) and a newline; VerifyReceipt accepts
// nothing else, so changing any byte of the file makes it fail.
type SignedReceipt struct {
	Receipt   Receipt `json:"receipt"`
	KeyName   string  `json:"key_name"`
	KeyHash   uint32  `json:"key_hash"`
	Signature []byte  `json:"signature"`
}

// Receipt states that every system that accepted a grant's privilege was
// checked and showed it gone, with the evidence, and proves that this
// statement — the grant.revoked event — is an entry of the audit log.
type Receipt struct {
	Format   string       `json:"format"`
	IssuedAt time.Time    `json:"issued_at"`
	Grant    ReceiptGrant `json:"grant"`
	// Checkpoints are the systems that accepted the privilege, each with
	// the evidence its verification observed.
	Checkpoints []*lapse.Checkpoint `json:"checkpoints"`
	Timings     ReceiptTimings      `json:"timings"`
	Log         ReceiptLog          `json:"log"`
	// SessionTests are the session-level tests run on this grant (the
	// zero-standing-privilege canary: use, hold a session, revoke, check
	// both are refused), each a log entry proven against the same
	// checkpoint as Log. Absent for grants no test ran on.
	SessionTests []ReceiptEntry `json:"session_tests,omitempty"`
}

// ReceiptEntry is one further log entry a receipt carries: its canonical
// leaf, the same decoded, and its inclusion proof in the tree of the
// receipt's checkpoint.
type ReceiptEntry struct {
	Seq       int64        `json:"seq"`
	Leaf      []byte       `json:"leaf"`
	Event     *lapse.Event `json:"event"`
	Inclusion [][]byte     `json:"inclusion"`
}

// ReceiptGrant is the grant a receipt is about.
type ReceiptGrant struct {
	ID              string           `json:"id"`
	RequestID       string           `json:"request_id"`
	Principal       lapse.Principal  `json:"principal"`
	Entitlement     string           `json:"entitlement"`
	Target          string           `json:"target"`
	TaskID          string           `json:"task_id,omitempty"`
	State           lapse.GrantState `json:"state"`
	EndReason       lapse.EndReason  `json:"end_reason"`
	CreatedAt       time.Time        `json:"created_at"`
	StartsAt        time.Time        `json:"starts_at"`
	ExpiresAt       time.Time        `json:"expires_at"`
	ActivatedAt     time.Time        `json:"activated_at,omitzero"`
	RevokeStartedAt time.Time        `json:"revoke_started_at,omitzero"`
	RevokedAt       time.Time        `json:"revoked_at"`
}

// ReceiptTimings says how long the privilege outlived its end.
type ReceiptTimings struct {
	// EndedAt is when the privilege should have stopped: the deadline, or
	// the start of an earlier release or revocation.
	EndedAt time.Time `json:"ended_at"`
	// LastVerifiedAt is when the last checkpoint confirmed it gone.
	LastVerifiedAt time.Time `json:"last_verified_at"`
	// ResidualWindow is LastVerifiedAt - EndedAt: the longest the privilege
	// can have been usable after it ended, on any system. Nanoseconds.
	ResidualWindow time.Duration `json:"residual_window_ns"`
}

// ReceiptLog locates the grant.revoked event in the log.
type ReceiptLog struct {
	Origin string `json:"origin"`
	// Seq is the entry; Leaf its canonical encoding (see AppendLeaf), from
	// which the verifier computes its leaf hash.
	Seq  int64  `json:"seq"`
	Leaf []byte `json:"leaf"`
	// Event is Leaf decoded, for people; the verifier checks it equals Leaf.
	Event *lapse.Event `json:"event"`
	// TreeSize and Inclusion are the inclusion proof of the entry in the
	// tree that Checkpoint signs.
	TreeSize   uint64   `json:"tree_size"`
	Inclusion  [][]byte `json:"inclusion"`
	Checkpoint string   `json:"checkpoint"`
}

// Receipt signs the revocation receipt of g, which must be revoked and
// carry its checkpoints (as lapse.Service.GetGrant returns it). Its
// grant.revoked entry is looked up in the store, not in g.Events, which
// holds only the first page of a long history. If that entry is not yet
// under a signed checkpoint, Receipt runs a Sync first. Issuing the receipt
// is recorded as a receipt.issued event (the caller in ctx is its actor);
// a receipt that cannot be recorded is not issued.
// Returns ECONFLICT if g is not revoked or has no grant.revoked entry,
// EUNAVAILABLE if the entry cannot be signed or the issue recorded now.
func (l *Log) Receipt(ctx context.Context, g *lapse.Grant) ([]byte, error) {
	if g.State != lapse.GrantRevoked {
		return nil, lapse.Errorf(lapse.ECONFLICT, "grant %s is %s: a receipt exists only once revocation is verified", g.ID, g.State)
	}
	stored, err := l.b.GrantEvent(ctx, g.ID, lapse.EventGrantRevoked)
	if err != nil {
		return nil, err
	}
	if stored == nil {
		return nil, lapse.Errorf(lapse.ECONFLICT, "grant %s has no %s entry", g.ID, lapse.EventGrantRevoked)
	}
	seq := stored.Seq
	var tests []*lapse.Event
	for _, typ := range sessionTestEvents {
		ev, err := l.b.GrantEvent(ctx, g.ID, typ)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			tests = append(tests, ev)
		}
	}
	slices.SortFunc(tests, func(a, b *lapse.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	last := seq
	if len(tests) > 0 {
		last = max(last, tests[len(tests)-1].Seq)
	}
	cp, err := l.Latest(ctx)
	if lapse.ErrorCode(err) == lapse.ENOTFOUND || err == nil && cp.Size < uint64(last) {
		if cp, err = l.Sync(ctx); err == nil && (cp == nil || cp.Size < uint64(last)) {
			err = lapse.Errorf(lapse.EUNAVAILABLE, "the audit log has not integrated entry %d yet", last)
		}
	}
	if err != nil {
		return nil, err
	}
	revoked, err := l.proveEntry(ctx, stored, cp)
	if err != nil {
		return nil, err
	}
	leaf, proof, ev := revoked.Leaf, revoked.Inclusion, revoked.Event
	var sessionTests []ReceiptEntry
	for _, t := range tests {
		e, err := l.proveEntry(ctx, t, cp)
		if err != nil {
			return nil, err
		}
		sessionTests = append(sessionTests, *e)
	}
	var logged struct {
		EvidenceDigest string `json:"evidence_digest"`
	}
	if json.Unmarshal(ev.Data, &logged) != nil || logged.EvidenceDigest != lapse.EvidenceDigest(g.Checkpoints) {
		// The checkpoints table is not part of the log; its rows must
		// still be exactly what the revocation recorded.
		return nil, lapse.Errorf(lapse.EINTERNAL, "audit: grant %s's stored checkpoints differ from what its revocation (entry %d) recorded", g.ID, seq)
	}
	now := l.clock.Now()
	rc := Receipt{
		Format:   ReceiptFormat,
		IssuedAt: now.UTC(),
		Grant: ReceiptGrant{
			ID: g.ID, RequestID: g.RequestID, Principal: g.Principal, Entitlement: g.Entitlement,
			Target: g.Target, TaskID: g.TaskID, State: g.State, EndReason: g.EndReason,
			CreatedAt: g.CreatedAt.UTC(), StartsAt: g.StartsAt.UTC(), ExpiresAt: g.ExpiresAt.UTC(),
			ActivatedAt: g.ActivatedAt.UTC(), RevokeStartedAt: g.RevokeStartedAt.UTC(), RevokedAt: g.RevokedAt.UTC(),
		},
		Checkpoints: g.Checkpoints,
		Timings:     timings(g),
		Log: ReceiptLog{
			Origin: l.Origin(), Seq: seq, Leaf: leaf, Event: ev,
			TreeSize: cp.Size, Inclusion: proof, Checkpoint: string(cp.Note),
		},
		SessionTests: sessionTests,
	}
	if rc.Checkpoints == nil {
		rc.Checkpoints = []*lapse.Checkpoint{}
	}
	file, err := signReceipt(l.signer, &rc)
	if err != nil {
		return nil, err
	}
	if err := l.b.AppendEvent(ctx, receiptEvent(ctx, g, seq, cp.Size, now)); err != nil {
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the receipt could not be recorded in the audit log, so it was not issued; try again", Err: err}
	}
	return file, nil
}

// sessionTestEvents are the entries of a grant that record a session-level
// test of it; a receipt carries the newest of each.
var sessionTestEvents = []string{lapse.EventCanaryPassed, lapse.EventCanaryFailed}

// proveEntry checks a stored event against its leaf hash and proves it in
// the tree of cp, whose root it checks the proof against.
// Returns EINTERNAL when the stored event, leaf or tree disagree (run
// lapse audit verify).
func (l *Log) proveEntry(ctx context.Context, stored *lapse.Event, cp *Checkpoint) (*ReceiptEntry, error) {
	seq := stored.Seq
	leaf := EncodeLeaf(stored)
	hashes, err := l.b.Nodes(ctx, []compact.NodeID{compact.NewNodeID(0, uint64(seq-1))})
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(hashes[0], LeafHash(leaf)) {
		return nil, lapse.Errorf(lapse.EINTERNAL, "audit: entry %d does not match its leaf hash; run lapse audit verify", seq)
	}
	proof, err := inclusionProof(ctx, l.b, uint64(seq-1), cp.Size)
	if err != nil {
		return nil, lapse.Internal("audit: inclusion proof", err)
	}
	if err := VerifyInclusion(uint64(seq-1), cp.Size, hashes[0], proof, cp.Root); err != nil {
		return nil, lapse.Errorf(lapse.EINTERNAL, "audit: the stored tree does not prove entry %d; run lapse audit verify", seq)
	}
	ev, err := ParseLeaf(leaf)
	if err != nil {
		return nil, lapse.Internal("audit: decode leaf", err)
	}
	return &ReceiptEntry{Seq: seq, Leaf: leaf, Event: ev, Inclusion: proof}, nil
}

// receiptEvent records the issue of a receipt: which grant, which entry it
// proves and against which tree size. The receipt itself is not logged (it
// can be fetched again) and holds no secret anyway.
func receiptEvent(ctx context.Context, g *lapse.Grant, seq int64, size uint64, now time.Time) *lapse.Event {
	ev := &lapse.Event{Time: now, Type: lapse.EventReceiptIssued, ActorID: "lapse", Channel: lapse.ChannelSystem,
		RequestID: g.RequestID, GrantID: g.ID, Outcome: "issued"}
	if p := lapse.FromContext(ctx); p != nil {
		ev.ActorID, ev.ActorKind, ev.Channel = p.ID, p.Kind, lapse.ChannelFrom(ctx)
	}
	ev.Data, _ = json.Marshal(map[string]any{"revoked_seq": seq, "tree_size": size}) // integers always encode
	return ev
}

// timings computes a grant's residual window.
func timings(g *lapse.Grant) ReceiptTimings {
	t := ReceiptTimings{EndedAt: g.ExpiresAt.UTC()}
	if !g.RevokeStartedAt.IsZero() && g.RevokeStartedAt.Before(t.EndedAt) {
		t.EndedAt = g.RevokeStartedAt.UTC()
	}
	for _, c := range g.Checkpoints {
		if c != nil && c.VerifiedAt.After(t.LastVerifiedAt) {
			t.LastVerifiedAt = c.VerifiedAt.UTC()
		}
	}
	if t.LastVerifiedAt.IsZero() {
		t.LastVerifiedAt = g.RevokedAt.UTC()
	}
	if d := t.LastVerifiedAt.Sub(t.EndedAt); d > 0 {
		t.ResidualWindow = d
	}
	return t
}

func signReceipt(s note.Signer, rc *Receipt) ([]byte, error) {
	body, err := json.Marshal(rc)
	if err != nil {
		return nil, lapse.Internal("audit: encode receipt", err)
	}
	sig, err := s.Sign(append([]byte(receiptContext), body...))
	if err != nil {
		return nil, lapse.Internal("audit: sign receipt", err)
	}
	out, err := json.Marshal(&SignedReceipt{Receipt: *rc, KeyName: s.Name(), KeyHash: s.KeyHash(), Signature: sig})
	if err != nil {
		return nil, lapse.Internal("audit: encode receipt", err)
	}
	return append(out, '\n'), nil
}

// VerifyReceipt checks a receipt file offline with only the log's public
// key: the file is in canonical form, the signature verifies, the
// embedded checkpoint verifies, the event is the grant's grant.revoked
// entry, and the inclusion proof places it under the checkpoint's root.
// It returns the receipt when all of that holds.
func VerifyReceipt(file []byte, v note.Verifier) (*Receipt, error) {
	var sr SignedReceipt
	dec := json.NewDecoder(bytes.NewReader(file))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sr); err != nil {
		return nil, fmt.Errorf("receipt: not a receipt: %w", err)
	}
	canon, err := json.Marshal(&sr)
	if err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	if !bytes.Equal(append(canon, '\n'), file) {
		return nil, errors.New("receipt: not in canonical form (the file was changed)")
	}
	if sr.KeyName != v.Name() || sr.KeyHash != v.KeyHash() {
		return nil, fmt.Errorf("receipt: signed by key %s+%08x, not by %s+%08x", sr.KeyName, sr.KeyHash, v.Name(), v.KeyHash())
	}
	body, err := json.Marshal(&sr.Receipt)
	if err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	if !v.Verify(append([]byte(receiptContext), body...), sr.Signature) {
		return nil, errors.New("receipt: the signature does not verify")
	}
	rc := &sr.Receipt
	if rc.Format != ReceiptFormat {
		return nil, fmt.Errorf("receipt: unknown format %q", rc.Format)
	}
	cp, err := OpenCheckpoint([]byte(rc.Log.Checkpoint), v)
	if err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	if cp.Size != rc.Log.TreeSize || rc.Log.Origin != cp.Origin {
		return nil, errors.New("receipt: the proof is not for the embedded checkpoint")
	}
	ev, err := ParseLeaf(rc.Log.Leaf)
	if err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	a, _ := json.Marshal(ev)
	b, _ := json.Marshal(rc.Log.Event)
	if !bytes.Equal(a, b) || ev.Seq != rc.Log.Seq {
		return nil, errors.New("receipt: the event does not match the log entry")
	}
	if ev.Type != lapse.EventGrantRevoked || ev.GrantID != rc.Grant.ID || rc.Grant.State != lapse.GrantRevoked {
		return nil, errors.New("receipt: the log entry is not this grant's revocation")
	}
	if len(rc.Checkpoints) == 0 {
		return nil, errors.New("receipt: it names no system that accepted the privilege")
	}
	for _, c := range rc.Checkpoints {
		if c == nil || c.GrantID != rc.Grant.ID || !c.Verified() {
			return nil, errors.New("receipt: a checkpoint is not a verified checkpoint of this grant")
		}
	}
	var logged struct {
		Checkpoints    int    `json:"checkpoints"`
		EvidenceDigest string `json:"evidence_digest"`
	}
	if err := json.Unmarshal(ev.Data, &logged); err != nil || logged.EvidenceDigest == "" {
		return nil, errors.New("receipt: the log entry records no evidence digest")
	}
	if logged.Checkpoints != len(rc.Checkpoints) || logged.EvidenceDigest != lapse.EvidenceDigest(rc.Checkpoints) {
		return nil, errors.New("receipt: the checkpoints and their evidence are not those the log entry recorded")
	}
	if err := VerifyInclusion(uint64(ev.Seq-1), cp.Size, LeafHash(rc.Log.Leaf), rc.Log.Inclusion, cp.Root); err != nil {
		return nil, fmt.Errorf("receipt: the inclusion proof does not verify: %w", err)
	}
	for i, st := range rc.SessionTests {
		tev, err := ParseLeaf(st.Leaf)
		if err != nil {
			return nil, fmt.Errorf("receipt: session test %d: %w", i, err)
		}
		a, _ := json.Marshal(tev)
		b, _ := json.Marshal(st.Event)
		if !bytes.Equal(a, b) || tev.Seq != st.Seq {
			return nil, fmt.Errorf("receipt: session test %d does not match its log entry", i)
		}
		if !slices.Contains(sessionTestEvents, tev.Type) || tev.GrantID != rc.Grant.ID {
			return nil, fmt.Errorf("receipt: session test %d is not a session-level test of this grant", i)
		}
		if err := VerifyInclusion(uint64(tev.Seq-1), cp.Size, LeafHash(st.Leaf), st.Inclusion, cp.Root); err != nil {
			return nil, fmt.Errorf("receipt: session test %d: the inclusion proof does not verify: %w", i, err)
		}
	}
	return rc, nil
}
