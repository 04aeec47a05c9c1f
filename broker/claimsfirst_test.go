package broker

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// Claims first (commitLoop): on a store with one writer, the committer holds
// results while a wave of deadlines is being claimed.

const cfLease = 30 * time.Second

// cfEnv is a broker with one fake target over store, on a fake clock that
// stands at deadline unless a test moves it.
type cfEnv struct {
	t        *testing.T
	store    lapse.Store
	clock    *fakeclock.Clock
	conn     *fake.Conn
	b        *Broker
	deadline time.Time
}

func newCFEnv(t *testing.T, store lapse.Store, batch int) *cfEnv {
	t.Helper()
	deadline := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := fakeclock.New(deadline)
	conn := fake.New(fake.Options{Clock: clock})
	key := make([]byte, 32)
	rand.Read(key)
	h := lapse.Duration(time.Hour)
	b, err := New(Config{
		Store: store, Clock: clock, SealingKey: key,
		Catalog: []*lapse.Entitlement{{Name: "db/status", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman},
			DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h, Approval: lapse.ApprovalRule{Auto: true}}},
		Targets: map[string]Target{"fake": {Kind: "fake", Connector: conn, Concurrency: 4}},
		Engine:  EngineConfig{Owner: "test-a", Lease: cfLease, BatchSize: batch, PollInterval: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &cfEnv{t: t, store: store, clock: clock, conn: conn, b: b, deadline: deadline}
}

// activeGrants stores n active grants, live on the fake target, whose
// deadline is e.deadline.
func (e *cfEnv) activeGrants(n int) []string {
	e.t.Helper()
	ctx := context.Background()
	start := e.deadline.Add(-time.Minute)
	e.clock.Set(start) // the fake target refuses a grant whose deadline has passed
	defer e.clock.Set(e.deadline)
	ids := make([]string, n)
	gs := make([]*lapse.Grant, n)
	for i := range gs {
		id := lapse.NewID(lapse.PrefixGrant, start)
		ids[i] = id
		p := lapse.Principal{ID: "alice", Kind: lapse.KindHuman}
		if _, err := e.conn.Grant(ctx, &connector.GrantRequest{GrantID: id, Principal: p, Entitlement: "db/status", ExpiresAt: e.deadline}); err != nil {
			e.t.Fatal(err)
		}
		gs[i] = &lapse.Grant{
			ID: id, RequestID: lapse.NewID(lapse.PrefixRequest, start), Principal: p,
			Entitlement: "db/status", Target: "fake", State: lapse.GrantActive, StartsAt: start, ExpiresAt: e.deadline, DueAt: e.deadline,
			CreatedAt: start, ActivatedAt: start, CredentialsClaimed: true,
			Checkpoints: []*lapse.Checkpoint{{GrantID: id, Name: fake.CheckpointAccount, Kind: lapse.CheckpointTarget, CreatedAt: start}},
		}
	}
	for lo := 0; lo < n; lo += 500 {
		if err := e.store.Update(ctx, func(tx lapse.Tx) error {
			for _, g := range gs[lo:min(lo+500, n)] {
				if err := tx.InsertGrant(ctx, g); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	return ids
}

func (e *cfEnv) state(id string) lapse.GrantState {
	e.t.Helper()
	g, err := e.store.GetGrant(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return g.State
}

// eventually waits (on the wall clock, generously) until cond holds. It
// bounds a wait that must end, not how long the work takes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for stop := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(stop) {
			t.Fatalf("still not %s after a minute", what)
		}
	}
}

// never checks, for a while, that cond does not become true. It cannot fail
// because the machine is slow, only because cond happened.
func never(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for stop := time.Now().Add(300 * time.Millisecond); time.Now().Before(stop); time.Sleep(5 * time.Millisecond) {
		if cond() {
			t.Fatalf("%s", what)
		}
	}
}

// claimOne claims the due grants for the fake target directly (not through
// a cycle, so nothing ends the wave) and waits until their connector steps
// are done: their results are then with the committer.
func (e *cfEnv) claimOne(ids ...string) {
	e.t.Helper()
	t := e.b.targets["fake"]
	n, err := e.b.engine.claim(context.Background(), t, e.clock.Now(), 10)
	if err != nil || n != len(ids) {
		e.t.Fatalf("claim: %d, %v; want %d", n, err, len(ids))
	}
	eventually(e.t, "revoked on the target", func() bool {
		for _, id := range ids {
			if e.conn.Has(id) {
				return false
			}
		}
		return t.inflight.Load() == 0
	})
}

// orderStore records, in commit order, the write transactions that matter
// here: "claim" for a claim that took grants, "revoked" for a transaction
// that wrote a revoked grant. It declares serial writes as told. On SQLite
// an Update's function runs holding the one writer, so recording inside it
// is commit order.
type orderStore struct {
	lapse.Store
	serial bool
	mu     sync.Mutex
	log    []string
}

func (s *orderStore) SerialWrites() bool { return s.serial }

func (s *orderStore) Update(ctx context.Context, fn func(tx lapse.Tx) error) error {
	return s.Store.Update(ctx, func(tx lapse.Tx) error { return fn(&orderTx{Tx: tx, s: s}) })
}

func (s *orderStore) record(what string) {
	s.mu.Lock()
	s.log = append(s.log, what)
	s.mu.Unlock()
}

type orderTx struct {
	lapse.Tx
	s       *orderStore
	revoked bool
}

func (t *orderTx) ClaimDueGrants(ctx context.Context, in lapse.ClaimInput) ([]*lapse.Grant, error) {
	gs, err := t.Tx.ClaimDueGrants(ctx, in)
	if err == nil && len(gs) > 0 {
		t.s.record("claim")
	}
	return gs, err
}

func (t *orderTx) UpdateGrant(ctx context.Context, g *lapse.Grant) error {
	if err := t.Tx.UpdateGrant(ctx, g); err != nil {
		return err
	}
	if g.State == lapse.GrantRevoked && !t.revoked {
		t.revoked = true
		t.s.record("revoked")
	}
	return nil
}

// runWave runs the engine until no grant is due, then stops it, and checks
// that every grant was revoked exactly once.
func (e *cfEnv) runWave(ids []string) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.b.Run(ctx); close(done) }()
	eventually(e.t, "all written", func() bool {
		_, pending, err := e.store.NextDueAt(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		return !pending
	})
	cancel()
	<-done
	revokedEvents := map[string]int{}
	for after := int64(0); ; {
		evs, err := e.store.ListEvents(context.Background(), lapse.EventFilter{AfterSeq: after, Limit: 1000})
		if err != nil {
			e.t.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		for _, ev := range evs {
			if ev.Type == lapse.EventGrantRevoked {
				revokedEvents[ev.GrantID]++
			}
			after = ev.Seq
		}
	}
	for _, id := range ids {
		g, err := e.store.GetGrant(context.Background(), id)
		if err != nil {
			e.t.Fatal(err)
		}
		if g.State != lapse.GrantRevoked || !g.RevokedAt.Equal(e.deadline) {
			e.t.Fatalf("grant %s: %s, revoked at %v (%s); want revoked at the deadline", id, g.State, g.RevokedAt, g.LastError)
		}
		if n := revokedEvents[id]; n != 1 {
			e.t.Fatalf("grant %s has %d %s events, want 1", id, n, lapse.EventGrantRevoked)
		}
		if e.conn.Has(id) {
			e.t.Fatalf("grant %s is still live on the target", id)
		}
	}
	if len(revokedEvents) != len(ids) {
		e.t.Fatalf("%d grants have %s events, want %d", len(revokedEvents), lapse.EventGrantRevoked, len(ids))
	}
}

// During a wave on a serial-writer store, every claim is written before any
// result, and every held result is written in the end: each grant revoked
// exactly once.
func TestClaimsFirstOnASerialStore(t *testing.T) {
	// Two full claims of 200 (capacity is two batches, so the second claim
	// is never cut short), then one that finds nothing: the wave is
	// claimed. Nothing bounds the hold before that: 400 results are fewer
	// than maxHeldBatches batches, and the fake clock does not move.
	store := &orderStore{Store: sqltest.OpenSQLite(t), serial: true}
	e := newCFEnv(t, store, 200)
	if !e.b.engine.serial {
		t.Fatal("the engine does not see the store's serial writes")
	}
	ids := e.activeGrants(400)
	e.runWave(ids)
	store.mu.Lock()
	defer store.mu.Unlock()
	lastClaim, firstResult, claims := -1, -1, 0
	for i, w := range store.log {
		switch {
		case w == "claim":
			lastClaim, claims = i, claims+1
		case firstResult < 0:
			firstResult = i
		}
	}
	if claims != 2 || firstResult < 0 || firstResult < lastClaim {
		t.Fatalf("write order %v: want both claims before the first result", store.log)
	}
}

// Many small batches: the hold reaches maxHeldBatches, targets reach their
// capacity, the wave stops and starts. Nothing is lost.
func TestClaimsFirstLosesNothing(t *testing.T) {
	e := newCFEnv(t, sqltest.OpenSQLite(t), 8)
	e.runWave(e.activeGrants(600))
}

// A held result is written once it reaches its hold limit on the engine's
// clock, though the wave is still being claimed; its RevokedAt is the
// moment Verify confirmed, not the write.
func TestHeldResultIsWrittenAtItsHoldLimit(t *testing.T) {
	e := newCFEnv(t, sqltest.OpenSQLite(t), 16)
	if !e.b.engine.serial {
		t.Fatal("the engine does not see that SQLite writes serially")
	}
	id := e.activeGrants(1)[0]
	eng := e.b.engine
	eng.start()
	e.claimOne(id) // a claim that took grants: the wave is being claimed
	never(t, "the result was written though the wave is being claimed", func() bool { return e.state(id) == lapse.GrantRevoked })
	e.clock.Advance(cfLease/10 - time.Millisecond)
	never(t, "the result was written before its hold limit", func() bool { return e.state(id) == lapse.GrantRevoked })
	e.clock.Advance(time.Millisecond)
	eventually(t, "written at the hold limit", func() bool { return e.state(id) == lapse.GrantRevoked })
	if !eng.claiming.Load() {
		t.Fatal("the wave ended; the test no longer shows the hold limit")
	}
	eng.stop()
	g, err := e.store.GetGrant(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !g.RevokedAt.Equal(e.deadline) {
		t.Fatalf("RevokedAt = %v, want the verify time %v", g.RevokedAt, e.deadline)
	}
}

// Tick waits for every result after each cycle, and stop before it ends the
// committer: both make it write what it holds, though the wave is being
// claimed and the clock stands still.
func TestTickAndStopWriteHeldResults(t *testing.T) {
	t.Run("tick", func(t *testing.T) {
		// 40 due grants, batches of 16: Tick's first cycles claim full
		// batches, so the wave is being claimed while Tick waits.
		e := newCFEnv(t, sqltest.OpenSQLite(t), 16)
		ids := e.activeGrants(40)
		within(t, "Tick", func() error { return e.b.Tick(context.Background()) })
		for _, id := range ids {
			if s := e.state(id); s != lapse.GrantRevoked {
				t.Fatalf("after Tick: %s, want revoked", s)
			}
		}
	})
	t.Run("stop", func(t *testing.T) {
		e := newCFEnv(t, sqltest.OpenSQLite(t), 16)
		id := e.activeGrants(1)[0]
		eng := e.b.engine
		eng.start()
		e.claimOne(id)
		within(t, "stop", func() error { eng.stop(); return nil })
		if s := e.state(id); s != lapse.GrantRevoked {
			t.Fatalf("after stop: %s, want revoked", s)
		}
	})
}

// within runs fn and fails if it has not returned after a minute: fn must
// end, however slowly.
func within(t *testing.T, what string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("%s still waits for held results after a minute", what)
	}
}

// On a store whose writers run in parallel, results are written at once,
// even while a wave is being claimed and the clock stands still.
func TestParallelStoreWritesResultsAtOnce(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{
		{"sqlite-undeclared", func(tb testing.TB) lapse.Store { return &orderStore{Store: sqltest.OpenSQLite(tb), serial: false} }},
		{"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }},
	} {
		t.Run(db.name, func(t *testing.T) {
			e := newCFEnv(t, db.open(t), 16)
			eng := e.b.engine
			if eng.serial {
				t.Fatal("the engine takes the store's writes to be serial")
			}
			id := e.activeGrants(1)[0]
			eng.start()
			defer eng.stop()
			eng.claiming.Store(true) // as if a wave were being claimed
			e.claimOne(id)
			eventually(t, "written", func() bool { return e.state(id) == lapse.GrantRevoked })
		})
	}
}

// The hold decision itself.
func TestHoldDecision(t *testing.T) {
	e := newCFEnv(t, sqltest.OpenSQLite(t), 8)
	eng := e.b.engine
	t0 := e.deadline
	most := maxHeldBatches * 8

	// Lease/10 after arrival, while the lease has long to run.
	if got, want := eng.holdLimit(t0, t0.Add(cfLease)), t0.Add(cfLease/10); !got.Equal(want) {
		t.Fatalf("hold limit = %v, want %v", got, want)
	}
	// Never past Lease/20 before the lease ends (a step that started at
	// the last moment its lease allowed and ran long).
	if got, want := eng.holdLimit(t0, t0.Add(cfLease/10)), t0.Add(cfLease/20); !got.Equal(want) {
		t.Fatalf("hold limit near the lease end = %v, want %v", got, want)
	}
	// Past the lease: write at once.
	if got := eng.holdLimit(t0, t0.Add(-time.Second)); got.After(t0) {
		t.Fatalf("hold limit of a result whose lease has ended = %v, after its arrival %v", got, t0)
	}
	// Whenever a step may start (more than Lease/10 of its lease left),
	// its result is written within Lease/10 and inside its lease.
	for left := cfLease/10 + time.Millisecond; left <= cfLease; left += time.Second {
		l := eng.holdLimit(t0, t0.Add(left))
		if l.After(t0.Add(cfLease/10)) || !l.Before(t0.Add(left)) {
			t.Fatalf("lease with %v left: hold limit %v", left, l.Sub(t0))
		}
	}

	limit := t0.Add(cfLease / 10)
	for _, c := range []struct {
		held    int
		now     time.Time
		holding bool
		want    bool
	}{
		{1, t0, false, true}, // not holding: write at once
		{most, t0, false, true},
		{1, t0, true, false},                                 // holding, just arrived
		{most - 1, limit.Add(-time.Nanosecond), true, false}, // just under both bounds
		{most, t0, true, true},                               // maxHeldBatches batches
		{1, limit, true, true},                               // at the hold limit
		{1, limit.Add(time.Hour), true, true},                // past it (a clock that jumped)
	} {
		if got := eng.shouldFlush(c.held, limit, c.now, c.holding); got != c.want {
			t.Errorf("shouldFlush(%d held, %v after arrival, holding %v) = %v, want %v", c.held, c.now.Sub(t0), c.holding, got, c.want)
		}
	}

	// holding needs all three: a serial store, a wave, no one waiting.
	eng.claiming.Store(true)
	if !eng.holding() {
		t.Fatal("not holding during a wave on a serial store")
	}
	eng.noHold.Add(1)
	if eng.holding() {
		t.Fatal("holding while Tick or stop waits")
	}
	eng.noHold.Add(-1)
	eng.serial = false
	if eng.holding() {
		t.Fatal("holding on a parallel store")
	}
}
