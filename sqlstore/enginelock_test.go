package sqlstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// The engine lock frees the leases in a SQLite store only when no other
// engine holds it, and only once per start: an engine that starts beside a
// running one takes over nothing.
func TestEngineLockFreesLeasesOfEndedEngines(t *testing.T) {
	ctx := context.Background()
	path := sqltest.SQLitePath(t)
	open := func() *sqlstore.Store {
		s, err := sqlstore.Open(ctx, sqlstore.DriverSQLite, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open()
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	leased := func(state lapse.GrantState, expires, leaseUntil time.Time) *lapse.Grant {
		id := lapse.NewID(lapse.PrefixGrant, now)
		return &lapse.Grant{
			ID: id, RequestID: lapse.NewID(lapse.PrefixRequest, now), Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService},
			Entitlement: "x/use", Target: "x", State: state, StartsAt: now.Add(-time.Hour), ExpiresAt: expires,
			DueAt: leaseUntil, LeaseOwner: "dead", LeaseUntil: leaseUntil, Fence: 3, CreatedAt: now.Add(-time.Hour),
		}
	}
	reserved := leased(lapse.GrantActive, now.Add(time.Second), now.Add(time.Minute))
	revoking := leased(lapse.GrantRevoking, now.Add(-time.Second), now.Add(time.Minute))
	lapsed := leased(lapse.GrantRevokeFailed, now.Add(-time.Hour), now.Add(-time.Minute))
	idle := leased(lapse.GrantActive, now.Add(time.Hour), time.Time{})
	idle.LeaseOwner, idle.DueAt, idle.Fence = "", idle.ExpiresAt, 0
	insert := func(gs ...*lapse.Grant) {
		t.Helper()
		if err := s.Update(ctx, func(tx lapse.Tx) error {
			for _, g := range gs {
				if err := tx.InsertGrant(ctx, g); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	insert(reserved, revoking, lapsed, idle)

	freed, unlock, err := s.LockEngine(ctx, now)
	if err != nil || unlock == nil {
		t.Fatalf("LockEngine: %v (unlock %v)", err, unlock != nil)
	}
	if freed != 3 {
		t.Fatalf("freed %d leases, want 3", freed)
	}
	for _, c := range []struct {
		g   *lapse.Grant
		due time.Time
	}{{reserved, reserved.ExpiresAt}, {revoking, now}, {lapsed, lapsed.DueAt}} {
		got, err := s.GetGrant(ctx, c.g.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LeaseOwner != "" || !got.LeaseUntil.IsZero() || !got.DueAt.Equal(c.due) || got.Fence != 4 || got.Version != 2 || got.State != c.g.State {
			t.Errorf("%s grant after the takeover: lease %q until %v, due %v (want %v), fence %d, version %d",
				c.g.State, got.LeaseOwner, got.LeaseUntil, got.DueAt, c.due, got.Fence, got.Version)
		}
	}
	if got, _ := s.GetGrant(ctx, idle.ID); got.Version != 1 || got.Fence != 0 {
		t.Errorf("an unleased grant was written: version %d, fence %d", got.Version, got.Fence)
	}

	// A second engine, on another connection to the same file, while the
	// first runs: it takes over nothing.
	held := leased(lapse.GrantRevoking, now.Add(-time.Second), now.Add(time.Minute))
	held.LeaseOwner = "running"
	insert(held)
	other := open()
	freed2, unlock2, err := other.LockEngine(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetGrant(ctx, held.ID); freed2 != 0 || got.LeaseOwner != "running" {
		t.Fatalf("an engine beside a running one freed %d leases; the running engine's lease is now %q", freed2, got.LeaseOwner)
	}

	// Both gone: the next one takes over.
	unlock()
	unlock2()
	freed3, unlock3, err := open().LockEngine(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock3()
	if got, _ := s.GetGrant(ctx, held.ID); freed3 != 1 || got.LeaseOwner != "" {
		t.Fatalf("after every engine ended: freed %d, lease %q", freed3, got.LeaseOwner)
	}
}

// When freeing the leases fails, the engine still holds the lock: no
// engine that starts after it takes its leases for a dead process's.
func TestEngineLockHeldWhenFreeingFails(t *testing.T) {
	path := sqltest.SQLitePath(t)
	open := func() *sqlstore.Store {
		s, err := sqlstore.Open(context.Background(), sqlstore.DriverSQLite, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	freed, unlock, err := open().LockEngine(cancelled, time.Now())
	if err == nil || unlock == nil || freed != 0 {
		t.Fatalf("LockEngine with a cancelled context: freed %d, unlock %v, err %v; want the lock held and the error", freed, unlock != nil, err)
	}
	defer unlock()
	s := open()
	g := &lapse.Grant{
		ID: lapse.NewID(lapse.PrefixGrant, time.Now()), RequestID: lapse.NewID(lapse.PrefixRequest, time.Now()),
		Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService}, Entitlement: "x/use", Target: "x",
		State: lapse.GrantRevoking, StartsAt: time.Now(), ExpiresAt: time.Now(), DueAt: time.Now().Add(time.Minute),
		LeaseOwner: "running", LeaseUntil: time.Now().Add(time.Minute), CreatedAt: time.Now(),
	}
	if err := s.Update(context.Background(), func(tx lapse.Tx) error { return tx.InsertGrant(context.Background(), g) }); err != nil {
		t.Fatal(err)
	}
	freed2, unlock2, err := s.LockEngine(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock2()
	if got, _ := s.GetGrant(context.Background(), g.ID); freed2 != 0 || got.LeaseOwner != "running" {
		t.Fatalf("an engine beside one whose takeover failed freed %d leases; lease now %q", freed2, got.LeaseOwner)
	}
}

// On PostgreSQL replicas run side by side: nothing is locked or freed.
func TestEngineLockIsNothingOnPostgres(t *testing.T) {
	s := sqltest.OpenPostgres(t)
	freed, unlock, err := s.LockEngine(context.Background(), time.Now())
	if err != nil || unlock != nil || freed != 0 {
		t.Fatalf("LockEngine on PostgreSQL: %d, unlock %v, %v", freed, unlock != nil, err)
	}
}
