package broker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// Reserved expiries (reserve.go): the engine claims an active grant's
// expiry ahead of its deadline and revokes it when the deadline comes.

func reserveStores() map[string]func(testing.TB) lapse.Store {
	return map[string]func(testing.TB) lapse.Store{
		"sqlite":   func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) },
		"postgres": func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) },
	}
}

// gaugeValue reads a gauge.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// withReservedGrants runs body on SQLite and on PostgreSQL with n active
// grants whose expiries a running engine has reserved, the clock two
// seconds before their deadline. stop stops the engine.
func withReservedGrants(t *testing.T, n int, body func(t *testing.T, env *cfEnv, ids []string, stop func())) {
	for name, open := range reserveStores() {
		t.Run(name, func(t *testing.T) {
			env := newCFEnv(t, open(t), 8)
			ids := env.activeGrants(n)
			env.clock.Set(env.deadline.Add(-2 * time.Second))
			stop := env.runEngine()
			eventually(t, "reserved", func() bool { return env.reservedBy("test-a", ids...) })
			body(t, env, ids, stop)
		})
	}
}

// runEngine runs e's engine until the test ends, and returns a function
// that stops it and waits for it to return.
func (e *cfEnv) runEngine() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.b.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *cfEnv) grant(id string) *lapse.Grant {
	e.t.Helper()
	g, err := e.store.GetGrant(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return g
}

// revokedAtDeadline moves the clock to the deadline, wakes the engine and
// waits until every grant is revoked.
func (e *cfEnv) revokedAtDeadline(ids ...string) {
	e.t.Helper()
	e.clock.Set(e.deadline)
	e.b.nudge()
	eventually(e.t, "revoked at the deadline", func() bool {
		for _, id := range ids {
			if e.state(id) != lapse.GrantRevoked {
				return false
			}
		}
		return true
	})
}

// reservedBy reports whether every grant is active and leased by owner.
func (e *cfEnv) reservedBy(owner string, ids ...string) bool {
	for _, id := range ids {
		if g := e.grant(id); g.State != lapse.GrantActive || g.LeaseOwner != owner {
			return false
		}
	}
	return true
}

// Before the deadline the grants are reserved and untouched on the target;
// at the deadline each is revoked once, with one revoke_started and one
// revoked event in that order, and ends expired.
func TestReservedExpiriesRevokeAtTheDeadline(t *testing.T) {
	withReservedGrants(t, 20, func(t *testing.T, env *cfEnv, ids []string, stop func()) {
		never(t, "revoked before the deadline", func() bool { return env.conn.Calls(fake.Revoke) > 0 })
		if got := gaugeValue(t, env.b.metrics.reservedGrants); got != float64(len(ids)) {
			t.Errorf("lapse_engine_reserved_expiries = %v, want %d", got, len(ids))
		}
		for _, id := range ids {
			if g := env.grant(id); !g.LeaseUntil.Equal(env.deadline.Add(cfLease)) || !g.DueAt.Equal(g.LeaseUntil) {
				t.Fatalf("reserved grant %s: lease until %v, due %v; want both %v", id, g.LeaseUntil, g.DueAt, env.deadline.Add(cfLease))
			}
		}

		env.revokedAtDeadline(ids...)
		for _, id := range ids {
			if n := env.conn.CallsFor(fake.Revoke, id); n != 1 || env.conn.Has(id) {
				t.Errorf("grant %s: %d revokes on the target, still there: %v", id, n, env.conn.Has(id))
			}
			g := env.grant(id)
			if g.EndReason != lapse.EndExpired || g.RevokedAt.Before(env.deadline) || g.LeaseOwner != "" {
				t.Errorf("grant %s: end %s, revoked at %v, lease %q", id, g.EndReason, g.RevokedAt, g.LeaseOwner)
			}
			evs, err := env.store.ListEvents(context.Background(), lapse.EventFilter{GrantID: id})
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, ev := range evs {
				types = append(types, ev.Type)
			}
			if got := strings.Join(types, ","); got != lapse.EventGrantRevokeStarted+","+lapse.EventGrantRevoked {
				t.Errorf("grant %s: events %s", id, got)
			}
		}
	})
}

// A release before the deadline supersedes the reservation: the grant is
// revoked at once, not at its deadline, once, and ends released. An
// extension of a reserved grant is refused.
func TestReleaseSupersedesAReservedExpiry(t *testing.T) {
	withReservedGrants(t, 3, func(t *testing.T, env *cfEnv, ids []string, stop func()) {

		ctx := context.Background()
		err := env.store.Update(ctx, func(tx lapse.Tx) error {
			_, err := env.b.applyExtension(ctx, tx, env.b.catalog.Load(),
				&lapse.Request{ID: lapse.NewID(lapse.PrefixRequest, env.clock.Now()), Extends: ids[0], Duration: lapse.Duration(time.Minute)}, env.clock.Now())
			return err
		})
		if lapse.ErrorCode(err) != lapse.ECONFLICT || !strings.Contains(lapse.ErrorMessage(err), "already scheduled") {
			t.Fatalf("extension of a reserved grant: %v, want ECONFLICT (already scheduled)", err)
		}

		alice := &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}}
		if _, err := env.b.Release(lapse.NewContext(ctx, alice), ids[1], lapse.ReleaseInput{}); err != nil {
			t.Fatal(err)
		}
		if got := gaugeValue(t, env.b.metrics.reservedGrants); got != 2 {
			t.Errorf("lapse_engine_reserved_expiries = %v after a release, want 2", got)
		}
		eventually(t, "released grant revoked before the deadline", func() bool { return env.state(ids[1]) == lapse.GrantRevoked })
		if g := env.grant(ids[1]); g.EndReason != lapse.EndReleased || !g.RevokedAt.Before(env.deadline) {
			t.Fatalf("released grant: end %s at %v", g.EndReason, g.RevokedAt)
		}

		env.clock.Set(env.deadline)
		env.b.nudge()
		eventually(t, "the others revoked", func() bool {
			return env.state(ids[0]) == lapse.GrantRevoked && env.state(ids[2]) == lapse.GrantRevoked
		})
		for _, id := range ids {
			if n := env.conn.CallsFor(fake.Revoke, id); n != 1 {
				t.Errorf("grant %s: %d revokes on the target, want 1", id, n)
			}
		}
		// The superseded reservation is gone from the gauge too.
		if got := gaugeValue(t, env.b.metrics.reservedGrants); got != 0 {
			t.Errorf("lapse_engine_reserved_expiries = %v after the deadline, want 0", got)
		}
	})
}

// A graceful stop frees the reservations that have not fired: the grants
// are active, unleased and due at their deadline again, so whoever runs
// next acts on time.
func TestStopFreesReservedExpiries(t *testing.T) {
	withReservedGrants(t, 5, func(t *testing.T, env *cfEnv, ids []string, stop func()) {
		stop()
		for _, id := range ids {
			g := env.grant(id)
			if g.State != lapse.GrantActive || g.LeaseOwner != "" || !g.LeaseUntil.IsZero() || !g.DueAt.Equal(env.deadline) {
				t.Errorf("grant %s after stop: %s, lease %q until %v, due %v", id, g.State, g.LeaseOwner, g.LeaseUntil, g.DueAt)
			}
		}
		if n := env.conn.Calls(fake.Revoke); n != 0 {
			t.Fatalf("%d revokes before the deadline", n)
		}
	})
}

// lockFailStore is a store whose engine lock cannot be taken.
type lockFailStore struct{ lapse.Store }

func (lockFailStore) LockEngine(context.Context, time.Time) (int, func(), error) {
	return 0, nil, errors.New("no lock today")
}

// An engine that cannot take the store's engine lock reserves nothing
// (another engine could free its leases as a dead process's) and still
// revokes every grant at its deadline, by the ordinary claim.
func TestNoReservationsWithoutTheEngineLock(t *testing.T) {
	env := newCFEnv(t, lockFailStore{sqltest.OpenSQLite(t)}, 8)
	ids := env.activeGrants(4)
	env.clock.Set(env.deadline.Add(-2 * time.Second))
	env.runEngine()
	never(t, "reserved without the engine lock", func() bool {
		for _, id := range ids {
			if env.grant(id).LeaseOwner != "" {
				return true
			}
		}
		return false
	})
	env.revokedAtDeadline(ids...)
}

// Credentials are not handed out once the grant's deadline has come, even
// while the store still shows it active (a reserved expiry is written with
// its result).
func TestNoCredentialsAfterTheDeadline(t *testing.T) {
	env := newCFEnv(t, sqltest.OpenSQLite(t), 8)
	id := env.activeGrants(1)[0]
	ctx := context.Background()
	sealed, err := env.b.sealer.seal(id, purposeCredentials, map[string]string{"password": "not-shown-late"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.store.Update(ctx, func(tx lapse.Tx) error {
		g, err := tx.GetGrant(ctx, id)
		if err != nil {
			return err
		}
		g.CredentialsClaimed, g.SealedCredentials = false, sealed
		return tx.UpdateGrant(ctx, g)
	}); err != nil {
		t.Fatal(err)
	}
	alice := lapse.NewContext(ctx, &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}})
	env.clock.Set(env.deadline)
	if _, err := env.b.ClaimCredentials(alice, id); lapse.ErrorCode(err) != lapse.ECONFLICT {
		t.Fatalf("credentials at the deadline: %v, want ECONFLICT", err)
	}
	env.clock.Set(env.deadline.Add(-time.Second))
	if creds, err := env.b.ClaimCredentials(alice, id); err != nil || creds.Secret["password"] != "not-shown-late" {
		t.Fatalf("credentials before the deadline: %v, %v", creds, err)
	}
}

// countingStore counts NextDueAt calls: one per engine loop.
type countingStore struct {
	lapse.Store
	loops atomic.Int64
}

func (s *countingStore) NextDueAt(ctx context.Context) (time.Time, bool, error) {
	s.loops.Add(1)
	return s.Store.NextDueAt(ctx)
}

// A grant that is due but cannot be claimed here (its target is not
// configured in this process) does not make the engine loop spin: it
// looks again every few tens of milliseconds, not continuously.
func TestDueButUnclaimableDoesNotSpin(t *testing.T) {
	store := &countingStore{Store: sqltest.OpenSQLite(t)}
	env := newCFEnv(t, store, 8)
	ctx := context.Background()
	start := env.deadline.Add(-time.Minute)
	g := &lapse.Grant{
		ID: lapse.NewID(lapse.PrefixGrant, start), RequestID: lapse.NewID(lapse.PrefixRequest, start),
		Principal: lapse.Principal{ID: "alice", Kind: lapse.KindHuman}, Entitlement: "db/status", Target: "elsewhere",
		State: lapse.GrantActive, StartsAt: start, ExpiresAt: env.deadline, DueAt: env.deadline, CreatedAt: start, ActivatedAt: start,
	}
	if err := store.Update(ctx, func(tx lapse.Tx) error { return tx.InsertGrant(ctx, g) }); err != nil {
		t.Fatal(err)
	}
	env.runEngine()
	time.Sleep(300 * time.Millisecond)
	// A spinning loop makes thousands of rounds in 300 ms; one that looks
	// again every 25 ms (dueRecheck) about twelve.
	if n := store.loops.Load(); n > 150 {
		t.Fatalf("the engine looped %d times in 300 ms with one unclaimable grant due", n)
	}
}
