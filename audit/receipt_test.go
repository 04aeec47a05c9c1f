package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// revokedGrant appends a grant's history ending in grant.revoked (not yet
// integrated) and returns the grant as Service.GetGrant would.
func (e *env) revokedGrant(t *testing.T) *lapse.Grant {
	t.Helper()
	ctx := context.Background()
	g := &lapse.Grant{
		ID: "gr_receipt", RequestID: "rq_receipt", Entitlement: "db/read", Target: "prod-db",
		Principal: lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Name: "Alice"},
		State:     lapse.GrantRevoked, EndReason: lapse.EndReleased,
		CreatedAt: t0, StartsAt: t0, ExpiresAt: t0.Add(time.Hour), ActivatedAt: t0.Add(time.Second),
		RevokeStartedAt: t0.Add(10 * time.Minute), RevokedAt: t0.Add(10*time.Minute + 3*time.Second),
		Checkpoints: []*lapse.Checkpoint{
			{GrantID: "gr_receipt", Name: "role", Kind: lapse.CheckpointTarget, CreatedAt: t0, RevokedAt: t0.Add(10 * time.Minute),
				VerifiedAt: t0.Add(10*time.Minute + 2*time.Second), Evidence: json.RawMessage(`{"role":"absent","login":"refused"}`)},
			{GrantID: "gr_receipt", Name: "sessions", Kind: lapse.CheckpointSessions, CreatedAt: t0, RevokedAt: t0.Add(10 * time.Minute),
				VerifiedAt: t0.Add(10*time.Minute + 3*time.Second), Evidence: json.RawMessage(`{"backends":0}`)},
		},
	}
	// As the engine records it: the evidence digest binds the checkpoints
	// a receipt shows to this entry.
	revoked, _ := json.Marshal(map[string]any{"checkpoints": 2, "evidence_digest": lapse.EvidenceDigest(g.Checkpoints)})
	err := e.store.Update(ctx, func(tx lapse.Tx) error {
		for _, typ := range []string{lapse.EventGrantCreated, lapse.EventGrantProvisioned, lapse.EventGrantRevokeStarted, lapse.EventGrantRevoked} {
			data := json.RawMessage(`{"checkpoints":2}`)
			if typ == lapse.EventGrantRevoked {
				data = revoked
			}
			ev := &lapse.Event{Time: g.RevokedAt, Type: typ, ActorID: "engine", ActorKind: lapse.KindService,
				Channel: lapse.ChannelEngine, RequestID: g.RequestID, GrantID: g.ID, Outcome: "ok", Data: data}
			if err := tx.AppendEvent(ctx, ev); err != nil {
				return err
			}
			g.Events = append(g.Events, ev)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestReceipt(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.appendEvents(t, 200, 100, 100)
		g := e.revokedGrant(t)
		e.appendEvents(t, 30, 30, 0) // entries after it, unsigned yet

		// The grant.revoked entry is not under a checkpoint yet: Receipt
		// integrates and signs first.
		file, err := e.log.Receipt(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := audit.NewVerifier(e.vkey)
		rc, err := audit.VerifyReceipt(file, v)
		if err != nil {
			t.Fatalf("a fresh receipt does not verify: %v\n%s", err, file)
		}
		if rc.Grant.ID != g.ID || rc.Log.Seq != 204 || rc.Timings.ResidualWindow != 3*time.Second || len(rc.Checkpoints) != 2 {
			t.Fatalf("receipt = %+v", rc)
		}

		// Altering any byte makes it fail.
		for i := range file {
			bad := bytes.Clone(file)
			bad[i] ^= 0x01
			if _, err := audit.VerifyReceipt(bad, v); err == nil {
				t.Fatalf("the receipt verified with byte %d changed (%q → %q)", i, file[i], bad[i])
			}
		}
		if _, err := audit.VerifyReceipt(append(bytes.Clone(file), '\n'), v); err == nil {
			t.Fatal("the receipt verified with a byte appended")
		}
		if _, err := audit.VerifyReceipt(file[:len(file)-1], v); err == nil {
			t.Fatal("the receipt verified with its last byte removed")
		}
		// Another key, even with the same origin, does not verify it.
		_, other, _ := audit.GenerateKey("lapse.test/audit")
		ov, _ := audit.NewVerifier(other)
		if _, err := audit.VerifyReceipt(file, ov); err == nil {
			t.Fatal("the receipt verified with another key")
		}

		// A receipt signed later, against a larger tree, still verifies.
		e.sync(t)
		if later, err := e.log.Receipt(ctx, g); err != nil {
			t.Fatal(err)
		} else if _, err := audit.VerifyReceipt(later, v); err != nil {
			t.Fatal(err)
		}

		g.State = lapse.GrantRevokeFailed
		if _, err := e.log.Receipt(ctx, g); lapse.ErrorCode(err) != lapse.ECONFLICT {
			t.Fatalf("receipt of an unrevoked grant: %v", err)
		}
	})
}

// TestReceiptRefusesTamperedEntry: the log will not sign a receipt for an
// entry whose stored event no longer matches its leaf.
func TestReceiptRefusesTamperedEntry(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		g := e.revokedGrant(t)
		e.sync(t)
		e.exec(t, "UPDATE events SET outcome = 'forged' WHERE seq = 4")
		if _, err := e.log.Receipt(context.Background(), g); err == nil {
			t.Fatal("a receipt was signed over a tampered entry")
		}
	})
}

// TestReceiptRefusesChangedEvidence: the checkpoints a receipt shows must be
// those the grant.revoked entry's evidence digest recorded. Evidence changed
// in the store afterwards is not signed, and a receipt whose evidence was
// edited fails offline even where its signature would verify.
func TestReceiptRefusesChangedEvidence(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		g := e.revokedGrant(t)
		e.sync(t)
		changed := *g.Checkpoints[1]
		changed.Evidence = json.RawMessage(`{"backends":3}`)
		forged := *g
		forged.Checkpoints = []*lapse.Checkpoint{g.Checkpoints[0], &changed}
		if _, err := e.log.Receipt(ctx, &forged); lapse.ErrorCode(err) != lapse.EINTERNAL {
			t.Fatalf("receipt over changed evidence: %v, want EINTERNAL", err)
		}
		dropped := *g
		dropped.Checkpoints = g.Checkpoints[:1]
		if _, err := e.log.Receipt(ctx, &dropped); err == nil {
			t.Fatal("a receipt was signed with a checkpoint left out")
		}
		if _, err := e.log.Receipt(ctx, g); err != nil {
			t.Fatalf("the true receipt: %v", err)
		}
	})
}

// TestReceiptCarriesSessionTests: the session-level test run on a grant
// (the canary: a new use and a held session both refused after revocation,
// with the timings) travels in its receipt as a proven log entry, and a
// receipt that lies about it does not verify.
func TestReceiptCarriesSessionTests(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		g := e.revokedGrant(t)
		tested := &lapse.Event{Time: g.RevokedAt.Add(time.Second), Type: lapse.EventCanaryPassed, ActorID: "lapse:canary",
			ActorKind: lapse.KindService, Channel: lapse.ChannelSystem, RequestID: g.RequestID, GrantID: g.ID, Outcome: "passed",
			Data: json.RawMessage(`{"login_refused_ms":12,"session_ended_ms":15}`)}
		if err := e.store.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, tested) }); err != nil {
			t.Fatal(err)
		}
		e.appendEvents(t, 10, 10, 0)
		file, err := e.log.Receipt(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := audit.NewVerifier(e.vkey)
		rc, err := audit.VerifyReceipt(file, v)
		if err != nil {
			t.Fatalf("a receipt with a session test does not verify: %v", err)
		}
		if len(rc.SessionTests) != 1 || rc.SessionTests[0].Seq != tested.Seq || rc.SessionTests[0].Event.Type != lapse.EventCanaryPassed ||
			!bytes.Contains(rc.SessionTests[0].Event.Data, []byte(`"session_ended_ms":15`)) {
			t.Fatalf("session tests = %+v", rc.SessionTests)
		}
		// Claiming the test failed, or moving it to another entry, breaks
		// the receipt even before its signature is checked.
		for _, bad := range [][2]string{{`"type":"zsp.canary_passed"`, `"type":"zsp.canary_failed"`}, {`"session_ended_ms":15`, `"session_ended_ms":1`}} {
			altered := bytes.Replace(file, []byte(bad[0]), []byte(bad[1]), 1)
			if bytes.Equal(altered, file) {
				t.Fatalf("the receipt has no %s", bad[0])
			}
			if _, err := audit.VerifyReceipt(altered, v); err == nil {
				t.Fatalf("a receipt with %s verified", bad[1])
			}
		}
	})
}
