package broker_test

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// env is a broker over a real store, fake targets and a fake clock.
type env struct {
	t      *testing.T
	store  lapse.Store
	clock  *fakeclock.Clock
	fake   *fake.Conn
	slow   *fake.Conn
	broker *broker.Broker
	cfg    broker.Config
}

var (
	alice = &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{"developers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest}}
	bob   = &lapse.Principal{ID: "bob", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove, lapse.ScopeRevoke}}
	carol = &lapse.Principal{ID: "carol", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
	dave  = &lapse.Principal{ID: "dave", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
	ci    = &lapse.Principal{ID: "svc:ci", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}}
)

func as(p *lapse.Principal) context.Context {
	return lapse.NewContext(context.Background(), p)
}

func catalog() []*lapse.Entitlement {
	h := lapse.Duration(time.Hour)
	return []*lapse.Entitlement{
		{Name: "db/read", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h,
			RequireReason: true, Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}, Spec: map[string]any{"privileges": []any{"read"}}},
		{Name: "db/admin", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Required: 2, Approvers: []string{"group:approvers"}}},
		{Name: "db/status", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService}, DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}},
		{Name: "slow/status", Target: "slow", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService}, DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}},
	}
}

func newEnv(t *testing.T, store lapse.Store) *env {
	t.Helper()
	e := &env{t: t, store: store, clock: fakeclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}
	e.fake = fake.New(fake.Options{Clock: e.clock})
	e.slow = fake.New(fake.Options{Clock: e.clock})
	key := make([]byte, 32)
	rand.Read(key)
	e.cfg = broker.Config{
		Store: store, Clock: e.clock, Catalog: catalog(), SealingKey: key,
		Targets: map[string]broker.Target{
			"fake": {Kind: "fake", Connector: e.fake, Concurrency: 4},
			"slow": {Kind: "fake", Connector: e.slow, Concurrency: 2},
		},
		Engine: broker.EngineConfig{Owner: "test-a", Lease: 30 * time.Second, RetryBase: time.Second, RetryMax: time.Minute},
	}
	b, err := broker.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	return e
}

func newSQLiteEnv(t *testing.T) *env { return newEnv(t, sqltest.OpenSQLite(t)) }

func (e *env) tick() {
	e.t.Helper()
	if err := e.broker.Tick(context.Background()); err != nil {
		e.t.Fatalf("tick: %v", err)
	}
}

func (e *env) grant(id string) *lapse.Grant {
	e.t.Helper()
	g, err := e.store.GetGrant(context.Background(), id)
	if err != nil {
		e.t.Fatalf("get grant %s: %v", id, err)
	}
	return g
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := lapse.ErrorCode(err); got != code {
		t.Fatalf("error code = %q (%v), want %q", got, err, code)
	}
}

func (e *env) approvedGrant() *lapse.Grant {
	e.t.Helper()
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "incident 7"})
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{RequestHash: res.Request.Hash})
	if err != nil {
		e.t.Fatal(err)
	}
	if r.State != lapse.RequestApproved || r.GrantID == "" {
		e.t.Fatalf("request after approval: %s, grant %q", r.State, r.GrantID)
	}
	e.tick()
	g := e.grant(r.GrantID)
	if g.State != lapse.GrantActive {
		e.t.Fatalf("grant state after tick = %s (%s)", g.State, g.LastError)
	}
	return g
}

func TestHumanLaneToVerifiedRevocation(t *testing.T) {
	e := newSQLiteEnv(t)
	g := e.approvedGrant()
	if !e.fake.Has(g.ID) {
		t.Fatal("fake target has no account for the active grant")
	}
	if len(g.Checkpoints) == 0 {
		t.Fatal("active grant has no checkpoints")
	}
	creds, err := e.broker.ClaimCredentials(as(alice), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(creds.Secret) == 0 {
		t.Fatal("no secret in credentials")
	}
	_, err = e.broker.ClaimCredentials(as(alice), g.ID)
	wantCode(t, err, lapse.EGONE)
	_, err = e.broker.ClaimCredentials(as(carol), g.ID)
	wantCode(t, err, lapse.EFORBIDDEN) // carol lacks the request scope

	// Nothing happens before the deadline.
	e.clock.Advance(14 * time.Minute)
	e.tick()
	if got := e.grant(g.ID).State; got != lapse.GrantActive {
		t.Fatalf("state before deadline = %s", got)
	}
	e.clock.Advance(time.Minute)
	e.tick()
	g = e.grant(g.ID)
	if g.State != lapse.GrantRevoked || g.EndReason != lapse.EndExpired {
		t.Fatalf("after deadline: state %s reason %s (%s)", g.State, g.EndReason, g.LastError)
	}
	if e.fake.Has(g.ID) {
		t.Fatal("account still present on the target after revocation")
	}
	for _, c := range g.Checkpoints {
		if !c.Verified() || len(c.Evidence) == 0 {
			t.Fatalf("checkpoint %s not verified with evidence: %+v", c.Name, c)
		}
	}
	if n := e.fake.CallsFor(fake.Revoke, g.ID); n != 1 {
		t.Fatalf("revoke called %d times, want 1", n)
	}
	full, err := e.broker.GetGrant(as(alice), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, ev := range full.Events {
		types[ev.Type] = true
	}
	for _, want := range []string{lapse.EventGrantCreated, lapse.EventGrantProvisioned, lapse.EventCredentialsClaimed, lapse.EventGrantRevokeStarted, lapse.EventGrantRevoked} {
		if !types[want] {
			t.Errorf("grant history lacks %s", want)
		}
	}
}

func TestAutoApprovedGetsCredentialsInOneCall(t *testing.T) {
	e := newSQLiteEnv(t)
	res, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status", Duration: lapse.Duration(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant == nil || res.Grant.State != lapse.GrantActive || res.Credentials == nil || len(res.Credentials.Secret) == 0 {
		t.Fatalf("auto-approved result: %+v", res)
	}
	if !res.Grant.ExpiresAt.Equal(e.clock.Now().Add(time.Minute)) {
		t.Fatalf("expires at %v", res.Grant.ExpiresAt)
	}
	// The credentials were handed over in the response; they are not kept.
	_, err = e.broker.ClaimCredentials(as(ci), res.Grant.ID)
	wantCode(t, err, lapse.EGONE)

	g, err := e.broker.Release(as(ci), res.Grant.ID, lapse.ReleaseInput{})
	if err != nil {
		t.Fatal(err)
	}
	if g.State != lapse.GrantRevoking {
		t.Fatalf("after release: %s", g.State)
	}
	e.tick()
	if g := e.grant(res.Grant.ID); g.State != lapse.GrantRevoked || g.EndReason != lapse.EndReleased {
		t.Fatalf("after release tick: %s %s", g.State, g.EndReason)
	}
}

func TestApprovalRules(t *testing.T) {
	e := newSQLiteEnv(t)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Request.ID

	// Self-approval is refused whatever scopes the requester holds.
	selfish := &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeAdmin}}
	_, err = e.broker.Approve(as(selfish), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	// Not in the approvers group.
	outsider := &lapse.Principal{ID: "eve", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeApprove}}
	_, err = e.broker.Approve(as(outsider), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	// A service never approves, even in the group.
	robot := &lapse.Principal{ID: "svc:bot", Kind: lapse.KindService, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeApprove}}
	_, err = e.broker.Approve(as(robot), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	// A stale hash is refused.
	_, err = e.broker.Approve(as(bob), id, lapse.DecisionInput{RequestHash: "00"})
	wantCode(t, err, lapse.ECONFLICT)

	r, err := e.broker.Approve(as(bob), id, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestPending {
		t.Fatalf("one of two approvals decided the request: %s", r.State)
	}
	// One human counts once.
	_, err = e.broker.Approve(as(bob), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
	r, err = e.broker.Approve(as(carol), id, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestApproved {
		t.Fatalf("after quorum: %s", r.State)
	}
	// Decided is final.
	_, err = e.broker.Deny(as(dave), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)

	// A deny before quorum wins.
	res, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	r, err = e.broker.Deny(as(carol), res.Request.ID, lapse.DecisionInput{Comment: "not now"})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestDenied || r.GrantID != "" {
		t.Fatalf("after deny: %s grant %q", r.State, r.GrantID)
	}
	_, err = e.broker.Approve(as(dave), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
}

func TestPendingRequestExpires(t *testing.T) {
	e := newSQLiteEnv(t)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "x"})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(broker.DefaultPendingTimeout)
	_, err = e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
	r, err := e.store.GetRequest(context.Background(), res.Request.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestExpired {
		t.Fatalf("state = %s, want expired", r.State)
	}
}

func TestBadInputCreatesNothing(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) { badInputCreatesNothing(t, newEnv(t, db.open(t))) })
	}
}

func badInputCreatesNothing(t *testing.T, e *env) {
	big := make([]byte, lapse.MaxReasonLength+1)
	for i := range big {
		big[i] = 'a'
	}
	cases := []struct {
		name  string
		in    lapse.RequestInput
		code  string
		field string
	}{
		{"negative duration", lapse.RequestInput{Entitlement: "db/read", Reason: "x", Duration: lapse.Duration(-time.Minute)}, lapse.EINVALID, "duration"},
		{"sub-second duration", lapse.RequestInput{Entitlement: "db/read", Reason: "x", Duration: lapse.Duration(time.Millisecond)}, lapse.EINVALID, "duration"},
		{"above maximum", lapse.RequestInput{Entitlement: "db/read", Reason: "x", Duration: lapse.Duration(2 * time.Hour)}, lapse.EINVALID, "duration"},
		{"absurd duration", lapse.RequestInput{Entitlement: "db/read", Reason: "x", Duration: lapse.Duration(1 << 62)}, lapse.EINVALID, "duration"},
		{"unknown entitlement", lapse.RequestInput{Entitlement: "db/nope"}, lapse.ENOTFOUND, "entitlement"},
		{"malformed entitlement", lapse.RequestInput{Entitlement: "DB; drop"}, lapse.EINVALID, "entitlement"},
		{"missing reason", lapse.RequestInput{Entitlement: "db/read"}, lapse.EINVALID, "reason"},
		{"huge reason", lapse.RequestInput{Entitlement: "db/read", Reason: string(big)}, lapse.ETOOLARGE, "reason"},
		{"control characters", lapse.RequestInput{Entitlement: "db/read", Reason: "ok\x1b[31m"}, lapse.EINVALID, "reason"},
		{"invalid utf-8", lapse.RequestInput{Entitlement: "db/read", Reason: "\xff\xfe"}, lapse.EINVALID, "reason"},
		{"NUL in reason", lapse.RequestInput{Entitlement: "db/read", Reason: "ok\x00; DROP TABLE grants"}, lapse.EINVALID, "reason"},
		{"NUL in task ID", lapse.RequestInput{Entitlement: "db/status", TaskID: "job\x00"}, lapse.EINVALID, "task_id"},
		{"bad ticket", lapse.RequestInput{Entitlement: "db/read", Reason: "x", Ticket: "a b"}, lapse.EINVALID, "ticket"},
		{"wrong lane", lapse.RequestInput{Entitlement: "db/read", Reason: "x"}, lapse.EFORBIDDEN, "entitlement"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			who := alice
			if c.name == "wrong lane" {
				who = ci
			}
			_, err := e.broker.CreateRequest(as(who), c.in)
			wantCode(t, err, c.code)
			if f := lapse.ErrorField(err); f != c.field {
				t.Fatalf("field = %q, want %q", f, c.field)
			}
		})
	}
	_, err := e.broker.CreateRequest(context.Background(), lapse.RequestInput{Entitlement: "db/read"})
	wantCode(t, err, lapse.EUNAUTHORIZED)
	rs, err := e.store.ListRequests(context.Background(), lapse.RequestFilter{})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := e.store.ListGrants(context.Background(), lapse.GrantFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 0 || len(gs) != 0 {
		t.Fatalf("bad input left %d requests and %d grants", len(rs), len(gs))
	}
}

func TestFailedRevocationRetriesForever(t *testing.T) {
	e := newSQLiteEnv(t)
	g := e.approvedGrant()
	e.fake.Fail(fake.Revoke, g.ID, errors.New("target unreachable"))
	e.clock.Advance(time.Hour)
	e.tick()
	got := e.grant(g.ID)
	if got.State != lapse.GrantRevokeFailed || got.Attempts != 1 {
		t.Fatalf("state %s attempts %d", got.State, got.Attempts)
	}
	// Back-off grows and is capped, and retries never stop.
	prevWait := time.Duration(0)
	for i := 0; i < 12; i++ {
		got = e.grant(g.ID)
		wait := got.DueAt.Sub(e.clock.Now())
		if wait <= 0 || wait > time.Minute {
			t.Fatalf("attempt %d: next retry in %v, want within (0, 1m]", got.Attempts, wait)
		}
		if i > 0 && i < 5 && wait < prevWait/2 {
			t.Fatalf("back-off shrank: %v after %v", wait, prevWait)
		}
		prevWait = wait
		e.clock.Set(got.DueAt)
		e.tick()
	}
	if got = e.grant(g.ID); got.State != lapse.GrantRevokeFailed || got.Attempts != 13 {
		t.Fatalf("after 13 failures: %s attempts %d", got.State, got.Attempts)
	}
	e.fake.ClearFailures()
	e.clock.Set(got.DueAt)
	e.tick()
	if got = e.grant(g.ID); got.State != lapse.GrantRevoked {
		t.Fatalf("after the target recovered: %s (%s)", got.State, got.LastError)
	}
}

func TestSabotagedRevokeIsCaughtByVerify(t *testing.T) {
	e := newSQLiteEnv(t)
	g := e.approvedGrant()
	e.fake.Sabotage(g.ID)
	e.clock.Advance(time.Hour)
	e.tick()
	got := e.grant(g.ID)
	if got.State != lapse.GrantRevokeFailed {
		t.Fatalf("sabotaged revoke ended %s, want revoke_failed", got.State)
	}
	var residue bool
	for _, c := range got.Checkpoints {
		residue = residue || len(c.Residue) > 0
	}
	if !residue || !e.fake.Has(g.ID) {
		t.Fatalf("no residue recorded: %+v", got.Checkpoints)
	}
	e.fake.ClearSabotage()
	e.clock.Set(got.DueAt)
	e.tick()
	if got = e.grant(g.ID); got.State != lapse.GrantRevoked {
		t.Fatalf("after repair: %s", got.State)
	}
}

func TestProvisionFailureIsUndone(t *testing.T) {
	e := newSQLiteEnv(t)
	e.fake.Fail(fake.Grant, "", errors.New("boom"))
	_, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"})
	wantCode(t, err, lapse.EUNAVAILABLE)
	e.fake.ClearFailures()
	e.tick()
	gs, err := e.store.ListGrants(context.Background(), lapse.GrantFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].State != lapse.GrantRevoked || gs[0].EndReason != lapse.EndProvisionFailed {
		t.Fatalf("failed provisioning left: %+v", gs)
	}
}

// A process that crashed while holding claims: its leases lapse and another
// process finishes the work; the crashed process, if it comes back with a
// stale copy, cannot write.
func TestCrashedOwnerIsTakenOver(t *testing.T) {
	store := sqltest.OpenSQLite(t)
	e := newEnv(t, store)
	var ids []string
	for i := 0; i < 20; i++ {
		ids = append(ids, e.approvedGrant().ID)
	}
	e.clock.Advance(time.Hour)
	// Process A claims the due grants and "crashes" before acting.
	claimed, err := store.ClaimDueGrants(context.Background(), lapse.ClaimInput{Owner: "test-a", Now: e.clock.Now(), Lease: 30 * time.Second, Limit: 100})
	if err != nil || len(claimed) != 20 {
		t.Fatalf("claim: %d, %v", len(claimed), err)
	}
	// Process B, same store, different owner.
	cfgB := e.cfg
	cfgB.Engine.Owner = "test-b"
	b2, err := broker.New(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if s := e.grant(id).State; s != lapse.GrantActive {
			t.Fatalf("B acted on a grant under A's valid lease: %s", s)
		}
	}
	e.clock.Advance(31 * time.Second)
	if err := b2.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if g := e.grant(id); g.State != lapse.GrantRevoked {
			t.Fatalf("grant %s: %s after takeover", id, g.State)
		}
		if n := e.fake.CallsFor(fake.Revoke, id); n != 1 {
			t.Fatalf("grant %s revoked %d times", id, n)
		}
	}
	// A's stale copy is fenced out.
	stale := claimed[0]
	stale.State = lapse.GrantActive
	err = store.Update(context.Background(), func(tx lapse.Tx) error { return tx.UpdateGrant(context.Background(), stale) })
	wantCode(t, err, lapse.ECONFLICT)
}

func TestTargetConcurrencyAndIsolation(t *testing.T) {
	e := newSQLiteEnv(t)
	// Block the slow target's revocations entirely.
	var slowIDs, fastIDs []string
	for i := 0; i < 6; i++ {
		res, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "slow/status"})
		if err != nil {
			t.Fatal(err)
		}
		slowIDs = append(slowIDs, res.Grant.ID)
	}
	for i := 0; i < 40; i++ {
		res, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"})
		if err != nil {
			t.Fatal(err)
		}
		fastIDs = append(fastIDs, res.Grant.ID)
	}
	release := e.slow.Block(fake.Revoke)
	e.clock.Advance(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.broker.Run(ctx) }()
	// The fast target finishes while the slow one is stuck.
	deadline := time.Now().Add(20 * time.Second)
	for {
		done := 0
		for _, id := range fastIDs {
			if e.grant(id).State == lapse.GrantRevoked {
				done++
			}
		}
		if done == len(fastIDs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fast target starved: %d/%d revoked", done, len(fastIDs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w := e.slow.Waiting(); w > 2 {
		t.Fatalf("%d calls in flight on a target limited to 2", w)
	}
	release()
	for {
		done := 0
		for _, id := range slowIDs {
			if e.grant(id).State == lapse.GrantRevoked {
				done++
			}
		}
		if done == len(slowIDs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slow target: %d/%d revoked", done, len(slowIDs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if p := e.slow.PeakConcurrency(); p > 2 {
		t.Fatalf("slow target saw %d concurrent calls, limit 2", p)
	}
	if p := e.fake.PeakConcurrency(); p > 4 {
		t.Fatalf("fast target saw %d concurrent calls, limit 4", p)
	}
}

// Many approvers race on one 2-of-3 request, and one of them denies:
// exactly one terminal state, on every database.
func TestConcurrentDecisionsEndInOneOutcome(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) {
			e := newEnv(t, db.open(t))
			approvers := []*lapse.Principal{bob, carol, dave}
			for round := 0; round < 20; round++ {
				res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for i := 0; i < 30; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						p := approvers[i%3]
						if i == 17 {
							e.broker.Deny(as(p), res.Request.ID, lapse.DecisionInput{})
							return
						}
						e.broker.Approve(as(p), res.Request.ID, lapse.DecisionInput{})
					}(i)
				}
				wg.Wait()
				r, err := e.store.GetRequest(context.Background(), res.Request.ID)
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Approvals) > 3 {
					t.Fatalf("%d votes from 3 people", len(r.Approvals))
				}
				gs, _ := e.store.ListGrants(context.Background(), lapse.GrantFilter{RequestID: r.ID})
				switch r.State {
				case lapse.RequestApproved:
					if len(gs) != 1 {
						t.Fatalf("approved with %d grants", len(gs))
					}
				case lapse.RequestDenied:
					if len(gs) != 0 {
						t.Fatalf("denied with %d grants", len(gs))
					}
				default:
					t.Fatalf("state %s after all votes", r.State)
				}
			}
		})
	}
}

// The probe material a connector hands out at Grant survives the store and
// reaches Verify, so verification includes a real login attempt.
func TestVerifyRunsTheLoginProbe(t *testing.T) {
	e := newSQLiteEnv(t)
	g := e.approvedGrant()
	if len(g.SealedProbe) == 0 {
		t.Fatal("the stored grant carries no sealed probe material")
	}
	e.clock.Advance(time.Hour)
	e.tick()
	got := e.grant(g.ID)
	if got.State != lapse.GrantRevoked {
		t.Fatalf("grant ended %s (%s), want revoked", got.State, got.LastError)
	}
	if len(got.SealedProbe) != 0 {
		t.Error("probe material is kept after the revocation was verified")
	}
	var probed bool
	for _, c := range got.Checkpoints {
		if c.Name == fake.CheckpointAccount {
			probed = strings.Contains(string(c.Evidence), `"login_probe":"refused"`)
		}
	}
	if !probed {
		t.Fatalf("no refused login probe in the evidence: %+v", got.Checkpoints)
	}
}

// omitsCheckpoint is a connector whose Verify leaves one of the checkpoints
// it declared at Grant out of its answer while drop is set.
type omitsCheckpoint struct {
	*fake.Conn
	mu   sync.Mutex
	drop string
}

func (o *omitsCheckpoint) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	vr, err := o.Conn.Verify(ctx, req)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := vr.Checkpoints[:0]
	for _, c := range vr.Checkpoints {
		if c.Name != o.drop {
			kept = append(kept, c)
		}
	}
	vr.Checkpoints = kept
	return vr, nil
}

// TestUnreportedCheckpointIsNotRevoked: a grant is revoked only when one
// verification saw every checkpoint it has gone. A Verify that reports
// the others as gone but is silent about one is not proof.
func TestUnreportedCheckpointIsNotRevoked(t *testing.T) {
	e := newSQLiteEnv(t)
	conn := &omitsCheckpoint{Conn: e.fake}
	cfg := e.cfg
	cfg.Targets = map[string]broker.Target{"fake": {Kind: "fake", Connector: conn, Concurrency: 4}, "slow": cfg.Targets["slow"]}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	g := e.approvedGrant()
	if len(g.Checkpoints) < 2 {
		t.Fatalf("the fake declared %d checkpoints; the test needs two", len(g.Checkpoints))
	}
	omitted := g.Checkpoints[len(g.Checkpoints)-1].Name
	conn.mu.Lock()
	conn.drop = omitted
	conn.mu.Unlock()

	e.clock.Advance(time.Hour)
	e.tick()
	got := e.grant(g.ID)
	if got.State != lapse.GrantRevokeFailed || !strings.Contains(got.LastError, omitted) {
		t.Fatalf("Verify silent about %s: grant %s (%q), want revoke_failed naming it", omitted, got.State, got.LastError)
	}
	for _, c := range got.Checkpoints {
		if c.Name == omitted && (!c.VerifiedAt.IsZero() || len(c.Residue) == 0) {
			t.Errorf("the unreported checkpoint is stored as %+v", c)
		}
	}

	conn.mu.Lock()
	conn.drop = ""
	conn.mu.Unlock()
	e.clock.Set(got.DueAt)
	e.tick()
	got = e.grant(g.ID)
	if got.State != lapse.GrantRevoked {
		t.Fatalf("once Verify reports every checkpoint: %s (%s)", got.State, got.LastError)
	}
	for _, c := range got.Checkpoints {
		if c.VerifiedAt.IsZero() {
			t.Errorf("revoked with checkpoint %s unverified", c.Name)
		}
	}
}

// TestConcurrentEndsOfOneGrantEndInOneOutcome races everything that can
// end one grant — its owner's release, an approver's revoke, and its
// deadline seen by two replicas' engines at once — on both databases. Each
// round ends with one end reason, one revoke_started and one revoked
// event, one effective revocation on the target, and the grant revoked.
func TestConcurrentEndsOfOneGrantEndInOneOutcome(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) {
			e := newEnv(t, db.open(t))
			cfg := e.cfg
			cfg.Engine.Owner = "test-b"
			other, err := broker.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for round := 0; round < 10; round++ {
				g := e.approvedGrant()
				e.clock.Set(g.ExpiresAt.Add(time.Second))
				var wg sync.WaitGroup
				run := func(f func()) {
					wg.Add(1)
					go func() { defer wg.Done(); f() }()
				}
				run(func() { e.broker.Release(as(alice), g.ID, lapse.ReleaseInput{}) })
				run(func() { e.broker.Revoke(as(bob), g.ID, lapse.RevokeInput{Reason: "race"}) })
				run(func() { e.broker.Tick(ctx) })
				run(func() { other.Tick(ctx) })
				wg.Wait()
				for i := 0; i < 5 && e.grant(g.ID).State != lapse.GrantRevoked; i++ {
					e.tick()
				}
				got := e.grant(g.ID)
				if got.State != lapse.GrantRevoked {
					t.Fatalf("round %d: grant %s (%s)", round, got.State, got.LastError)
				}
				switch got.EndReason {
				case lapse.EndReleased, lapse.EndRevoked, lapse.EndExpired:
				default:
					t.Fatalf("round %d: end reason %q", round, got.EndReason)
				}
				events, err := e.store.ListEvents(ctx, lapse.EventFilter{GrantID: g.ID})
				if err != nil {
					t.Fatal(err)
				}
				count := map[string]int{}
				for _, ev := range events {
					count[ev.Type]++
				}
				if count[lapse.EventGrantRevokeStarted] != 1 || count[lapse.EventGrantRevoked] != 1 {
					t.Fatalf("round %d: %d revoke_started and %d revoked events, want one each", round,
						count[lapse.EventGrantRevokeStarted], count[lapse.EventGrantRevoked])
				}
				if n := e.fake.CallsFor(fake.Revoke, g.ID); n != 1 {
					t.Fatalf("round %d: %d Revoke calls on the target, want 1", round, n)
				}
			}
		})
	}
}

// TestOverdueBacklogIsPaced: after downtime, grants overdue by more than
// the grace are revoked at OverdueRate per target after a burst of a tenth
// of it, not all at once; a deadline that has just passed is not paced.
// The pacing reads the injected clock, so the delays are exact.
func TestOverdueBacklogIsPaced(t *testing.T) {
	e := newSQLiteEnv(t)
	cfg := e.cfg
	cfg.Engine.OverdueRate = 100 // a burst of 10, then one every 10ms
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	var (
		mu     sync.Mutex
		delays []time.Duration
	)
	broker.SetPause(b, func(d time.Duration) {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
	})
	const n = 50
	ids := make([]string, n)
	for i := range ids {
		res, err := b.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status"})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = res.Grant.ID
	}
	e.clock.Advance(time.Hour) // the server was down; every deadline is long past
	e.tick()
	for _, id := range ids {
		if g := e.grant(id); g.State != lapse.GrantRevoked {
			t.Fatalf("grant %s after the backlog: %s (%s)", id, g.State, g.LastError)
		}
	}
	mu.Lock()
	got := slices.Clone(delays)
	delays = delays[:0]
	mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d of %d overdue grants were paced", len(got), n)
	}
	slices.Sort(got)
	for i, d := range got {
		want := time.Duration(max(0, i-9)) * 10 * time.Millisecond
		if d < want-time.Millisecond || d > want+time.Millisecond {
			t.Fatalf("delay %d = %v, want %v: a burst of 10, then 100/s", i, d, want)
		}
	}

	// A deadline passed a moment ago is acted on at once.
	res, err := b.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status"})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Set(res.Grant.ExpiresAt.Add(time.Second))
	e.tick()
	if g := e.grant(res.Grant.ID); g.State != lapse.GrantRevoked {
		t.Fatalf("a fresh expiry: %s", g.State)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != 0 {
		t.Errorf("a deadline within the grace was paced: %v", delays)
	}
}

// TestEveryStepIsExactlyOneEvent pins the audit trail of the lanes: every
// transition of a request, a vote and a grant is one event, in order, with
// the actor who caused it — no step missing, none written twice.
func TestEveryStepIsExactlyOneEvent(t *testing.T) {
	e := newSQLiteEnv(t)
	g := e.approvedGrant()
	if _, err := e.broker.ClaimCredentials(as(alice), g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.Release(as(alice), g.ID, lapse.ReleaseInput{}); err != nil {
		t.Fatal(err)
	}
	e.tick()
	denied, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.Approve(as(bob), denied.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.Deny(as(carol), denied.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	e.tick()

	events, err := e.store.ListEvents(context.Background(), lapse.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range events {
		got = append(got, ev.Type+" by "+ev.ActorID+": "+ev.Outcome)
	}
	want := []string{
		// The human lane: filed, one vote, decided, provisioned by the
		// engine, credentials shown once, released, revoked and verified.
		"request.created by alice: pending",
		"request.approved by bob: approve",
		"request.decided by bob: approved",
		"grant.created by bob: scheduled",
		"grant.provision_started by lapse: provisioning",
		"grant.provisioned by lapse: active",
		"grant.credentials_claimed by alice: claimed",
		"grant.revoke_started by alice: released",
		"grant.revoked by lapse: verified",
		// A vote, then a deny before quorum, which decides.
		"request.created by alice: pending",
		"request.approved by bob: approve",
		"request.denied by carol: deny",
		"request.decided by carol: denied",
		// The machine lane: decided by policy in the same call, provisioned
		// inline; later its deadline passes.
		"request.created by svc:ci: pending",
		"request.decided by svc:ci: approved",
		"grant.created by svc:ci: provisioning",
		"grant.provisioned by lapse: active",
		"grant.revoke_started by lapse: expired",
		"grant.revoked by lapse: verified",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("audit trail:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for i, ev := range events {
		if ev.Seq != int64(i+1) || ev.Time.IsZero() || ev.Time.Location() != time.UTC || ev.Channel == "" {
			t.Errorf("event %d: seq %d, time %v, channel %q", i+1, ev.Seq, ev.Time, ev.Channel)
		}
	}
}
