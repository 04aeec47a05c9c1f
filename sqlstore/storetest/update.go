package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var updateTests = []test{
	{"Rollback", testRollback},
	{"Panic", testPanic},
	{"ReadYourWrites", testReadYourWrites},
	{"ErrorPassesThrough", testErrorPassesThrough},
}

// testRollback: when fn fails, nothing it wrote remains, in the store or in
// the versions and sequence numbers of the structs it passed.
func testRollback(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	existing := fullGrant(t0)
	insertGrants(t, s, existing)
	before := *existing

	r := fullRequest(t0)
	g := fullGrant(t0.Add(time.Second))
	ev := &lapse.Event{Type: lapse.EventGrantCreated, GrantID: g.ID}
	key := &lapse.APIKey{ID: "rrrrssssuuuu", Prefix: "rrrrssssuuuu", Hash: []byte{1}, CreatedAt: t0}
	rev := &lapse.TokenRevocation{Target: "api", TokenID: "jti-1"}
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx lapse.Tx) error {
		steps := []func() error{
			func() error { return tx.InsertRequest(ctx, r) },
			func() error { return tx.InsertApproval(ctx, approval(r, "bob", t0)) },
			func() error { return tx.InsertGrant(ctx, g) },
			func() error {
				existing.State = lapse.GrantRevoked
				return tx.UpdateGrant(ctx, existing)
			},
			func() error {
				return tx.PutCheckpoint(ctx, &lapse.Checkpoint{GrantID: existing.ID, Name: "new", Kind: lapse.CheckpointCache})
			},
			func() error { return tx.AppendEvent(ctx, ev) },
			func() error { return tx.InsertAPIKey(ctx, key) },
			func() error { _, err := tx.AddTokenRevocation(ctx, rev); return err },
			func() error { return tx.AckTokenRevocations(ctx, "api", "c1", 1) },
		}
		for i, step := range steps {
			if err := step(); err != nil {
				return fmt.Errorf("step %d: %w", i, err)
			}
		}
		if r.Version != 1 || g.Version != 1 || existing.Version != 2 || ev.Seq != 1 || rev.Seq != 1 {
			return fmt.Errorf("inside the transaction: versions %d %d %d, seqs %d %d", r.Version, g.Version, existing.Version, ev.Seq, rev.Seq)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}

	if r.Version != 0 || g.Version != 0 || existing.Version != 1 || ev.Seq != 0 || rev.Seq != 0 {
		t.Fatalf("after rollback: versions %d %d %d, seqs %d %d; want 0 0 1 0 0",
			r.Version, g.Version, existing.Version, ev.Seq, rev.Seq)
	}
	_, err = s.GetRequest(ctx, r.ID)
	wantCode(t, err, lapse.ENOTFOUND)
	_, err = s.GetGrant(ctx, g.ID)
	wantCode(t, err, lapse.ENOTFOUND)
	wantEqual(t, "grant updated in the rolled-back transaction", getGrant(t, s, existing.ID), &before)
	if evs, err := s.ListEvents(ctx, lapse.EventFilter{}); err != nil || len(evs) != 0 {
		t.Fatalf("events after rollback: %v, %v", evs, err)
	}
	_, err = s.GetAPIKey(ctx, key.Prefix)
	wantCode(t, err, lapse.ENOTFOUND)
	if revoked, err := s.TokenRevoked(ctx, "api", "jti-1"); err != nil || revoked {
		t.Fatalf("TokenRevoked after rollback = %v, %v", revoked, err)
	}
	if acks, err := s.ConsumerAcks(ctx, "api"); err != nil || len(acks) != 0 {
		t.Fatalf("acks after rollback: %v, %v", acks, err)
	}
	counts, err := s.CountGrantsByState(ctx)
	if err != nil || counts[lapse.GrantActive] != 1 || counts[lapse.GrantRevoked] != 0 {
		t.Fatalf("counts after rollback: %v, %v", counts, err)
	}

	// The rolled-back sequence numbers are reused: no gaps.
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.AppendEvent(ctx, ev); err != nil {
			return err
		}
		_, err := tx.AddTokenRevocation(ctx, rev)
		return err
	})
	if ev.Seq != 1 || rev.Seq != 1 {
		t.Fatalf("after a rollback the next event got seq %d and the next revocation %d; want 1, 1", ev.Seq, rev.Seq)
	}
	// The same structs can be written again after the failed attempt.
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertRequest(ctx, r); err != nil {
			return err
		}
		return tx.UpdateGrant(ctx, existing)
	})
}

func testPanic(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	func() {
		defer func() {
			if p := recover(); p != "kaboom" {
				t.Fatalf("recovered %v, want the panic from fn", p)
			}
		}()
		_ = s.Update(ctx, func(tx lapse.Tx) error {
			if err := tx.InsertRequest(ctx, r); err != nil {
				return err
			}
			panic("kaboom")
		})
	}()
	_, err := s.GetRequest(ctx, r.ID)
	wantCode(t, err, lapse.ENOTFOUND)
	// The store is still usable: the transaction did not stay open.
	insertRequest(t, s, r)
}

func testReadYourWrites(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	g := fullGrant(t0)
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertRequest(ctx, r); err != nil {
			return err
		}
		if err := tx.InsertApproval(ctx, approval(r, "bob", t0)); err != nil {
			return err
		}
		got, err := tx.GetRequest(ctx, r.ID)
		if err != nil {
			return err
		}
		if len(got.Approvals) != 1 || got.Version != 1 {
			return fmt.Errorf("Tx.GetRequest does not see the transaction's writes: %+v", got)
		}
		if err := tx.InsertGrant(ctx, g); err != nil {
			return err
		}
		g.State = lapse.GrantRevoking
		if err := tx.UpdateGrant(ctx, g); err != nil {
			return err
		}
		gg, err := tx.GetGrant(ctx, g.ID)
		if err != nil {
			return err
		}
		if gg.State != lapse.GrantRevoking || gg.Version != 2 || len(gg.Checkpoints) != 2 {
			return fmt.Errorf("Tx.GetGrant does not see the transaction's writes: %+v", gg)
		}
		return nil
	})
}

func testErrorPassesThrough(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx lapse.Tx) error {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "who", "no")
	})
	wantCode(t, err, lapse.EFORBIDDEN)
	if lapse.ErrorField(err) != "who" {
		t.Fatalf("field lost: %v", err)
	}
	calls := 0
	err = s.Update(ctx, func(tx lapse.Tx) error {
		calls++
		return lapse.Errorf(lapse.ECONFLICT, "the caller's own conflict")
	})
	wantCode(t, err, lapse.ECONFLICT)
	if calls != 1 {
		t.Fatalf("fn ran %d times for an application error; want once", calls)
	}
}
