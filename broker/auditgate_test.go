package broker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector/fake"
)

// gate is an audit gate the test opens and closes.
type gate struct{ closed atomic.Bool }

func (g *gate) check(context.Context) error {
	if g.closed.Load() {
		return lapse.Errorf(lapse.EUNAVAILABLE, "audit log degraded: test")
	}
	return nil
}

func newGatedEnv(t *testing.T) (*env, *gate) {
	t.Helper()
	e := newSQLiteEnv(t)
	g := &gate{}
	e.cfg.AuditGate = g.check
	b, err := broker.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.broker = b
	return e, g
}

func wantDegraded(t *testing.T, err error) {
	t.Helper()
	wantCode(t, err, lapse.EUNAVAILABLE)
	if r := lapse.ErrorReason(err); r != lapse.ReasonAuditDegraded {
		t.Fatalf("reason = %q, want %q (error: %v)", r, lapse.ReasonAuditDegraded, err)
	}
}

func (e *env) eventTypes(grantID string) map[string]bool {
	e.t.Helper()
	evs, err := e.store.ListEvents(context.Background(), lapse.EventFilter{GrantID: grantID})
	if err != nil {
		e.t.Fatal(err)
	}
	types := map[string]bool{}
	for _, ev := range evs {
		types[ev.Type] = true
	}
	return types
}

// TestAuditGateFailsClosed: while the audit log is degraded no approval and
// no privilege is issued, on any path, and everything that takes privilege
// away carries on and is recorded.
func TestAuditGateFailsClosed(t *testing.T) {
	e, g := newGatedEnv(t)
	ctx := context.Background()
	released := e.approvedGrant() // active before the log degrades
	expiring := e.approvedGrant()
	// Approved while the log was healthy, not yet provisioned.
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "incident 8"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	scheduledID := r.GrantID
	pending, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatal(err)
	}
	toDeny, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "incident 9"})
	if err != nil {
		t.Fatal(err)
	}

	g.closed.Store(true)
	grantsBefore, _ := e.store.ListGrants(ctx, lapse.GrantFilter{})

	// Auto-approval: refused whole, nothing stored.
	before, _ := e.store.ListRequests(ctx, lapse.RequestFilter{})
	_, err = e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"})
	wantDegraded(t, err)
	if after, _ := e.store.ListRequests(ctx, lapse.RequestFilter{}); len(after) != len(before) {
		t.Fatalf("a refused auto-approved request was stored (%d → %d requests)", len(before), len(after))
	}
	// An approval vote, even one short of quorum.
	_, err = e.broker.Approve(as(bob), pending.Request.ID, lapse.DecisionInput{})
	wantDegraded(t, err)
	if got, _ := e.store.GetRequest(ctx, pending.Request.ID); got.State != lapse.RequestPending || len(got.Approvals) != 0 {
		t.Fatalf("request after a refused approval: %s, %d approvals", got.State, len(got.Approvals))
	}
	// Filing, denying and cancelling grant nothing: they carry on.
	filed, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatalf("filing a request while degraded: %v", err)
	}
	if _, err := e.broker.Deny(as(bob), toDeny.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatalf("deny while degraded: %v", err)
	}
	if _, err := e.broker.CancelRequest(as(alice), filed.Request.ID); err != nil {
		t.Fatalf("cancel while degraded: %v", err)
	}

	// Release, deadline and the scheduled grant, all through the engine.
	if _, err := e.broker.Release(as(alice), released.ID, lapse.ReleaseInput{}); err != nil {
		t.Fatalf("release while degraded: %v", err)
	}
	e.tick()                          // the release and the scheduled grant
	e.clock.Advance(15 * time.Minute) // past expiring's deadline
	e.tick()
	for _, id := range []string{released.ID, expiring.ID} {
		got := e.grant(id)
		if got.State != lapse.GrantRevoked || e.fake.Has(id) {
			t.Fatalf("grant %s while degraded: %s (%s), on target %v", id, got.State, got.LastError, e.fake.Has(id))
		}
		if types := e.eventTypes(id); !types[lapse.EventGrantRevokeStarted] || !types[lapse.EventGrantRevoked] {
			t.Fatalf("grant %s: revocation events not stored: %v", id, types)
		}
	}
	sched := e.grant(scheduledID)
	if sched.State != lapse.GrantRevoked || sched.EndReason != lapse.EndProvisionFailed || e.fake.Has(scheduledID) {
		t.Fatalf("grant scheduled before the log degraded: %s/%s, on target %v", sched.State, sched.EndReason, e.fake.Has(scheduledID))
	}
	if n := e.fake.CallsFor(fake.Grant, scheduledID); n != 0 {
		t.Fatalf("the target was asked to grant %d times while degraded", n)
	}
	if types := e.eventTypes(scheduledID); !types[lapse.EventGrantProvisionFailed] {
		t.Fatalf("the refused provisioning is not recorded: %v", types)
	}
	if grantsAfter, _ := e.store.ListGrants(ctx, lapse.GrantFilter{}); len(grantsAfter) != len(grantsBefore) {
		t.Fatalf("a grant was created while degraded (%d → %d)", len(grantsBefore), len(grantsAfter))
	}

	// Recovered: approvals and grants work again.
	g.closed.Store(false)
	if _, err := e.broker.Approve(as(bob), pending.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatalf("approve after recovery: %v", err)
	}
	auto, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"})
	if err != nil || auto.Grant.State != lapse.GrantActive {
		t.Fatalf("auto-approval after recovery: %+v, %v", auto, err)
	}
}

// TestAuditGateCauseStaysInternal: the refusal keeps the gate's error as
// its cause, for the server's log, and shows the caller only a safe
// message.
func TestAuditGateCauseStaysInternal(t *testing.T) {
	e, g := newGatedEnv(t)
	g.closed.Store(true)
	_, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/status"})
	wantDegraded(t, err)
	var le *lapse.Error
	if !errors.As(err, &le) || le.Err == nil {
		t.Fatalf("the cause is not kept for the log: %#v", err)
	}
	if msg := lapse.ErrorMessage(err); msg == "" || msg == le.Err.Error() {
		t.Fatalf("message %q", msg)
	}
}

// TestUserTextWithNULIsRefused: every text a caller can supply is checked
// by the broker before anything reaches the store, NUL included.
func TestUserTextWithNULIsRefused(t *testing.T) {
	e := newSQLiteEnv(t)
	ctx := context.Background()
	admin := &lapse.Principal{ID: "root", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeAdmin}}
	const nul = "a\x00b"
	for _, c := range []struct {
		field string
		call  func() error
	}{
		{"reason", func() error {
			_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: nul})
			return err
		}},
		{"ticket", func() error {
			_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "x", Ticket: nul})
			return err
		}},
		{"task_id", func() error {
			_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "x", TaskID: nul})
			return err
		}},
		{"entitlement", func() error {
			_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read\x00"})
			return err
		}},
		{"comment", func() error {
			_, err := e.broker.Approve(as(bob), lapse.NewID(lapse.PrefixRequest, time.Now()), lapse.DecisionInput{Comment: nul})
			return err
		}},
		{"comment", func() error {
			_, err := e.broker.Deny(as(bob), lapse.NewID(lapse.PrefixRequest, time.Now()), lapse.DecisionInput{Comment: nul})
			return err
		}},
		{"reason", func() error {
			_, err := e.broker.Revoke(as(bob), lapse.NewID(lapse.PrefixGrant, time.Now()), lapse.RevokeInput{Reason: nul})
			return err
		}},
		{"id", func() error { _, err := e.broker.GetGrant(as(bob), "gr_"+nul); return err }},
		{"id", func() error { _, err := e.broker.Release(as(alice), "gr_"+nul, lapse.ReleaseInput{}); return err }},
		{"id", func() error { _, err := e.broker.GetRequest(as(bob), "req_"+nul); return err }},
		{"name", func() error {
			_, err := e.broker.CreateAPIKey(as(admin), lapse.APIKeyInput{PrincipalID: "x", PrincipalKind: lapse.KindService, Scopes: []string{lapse.ScopeRead}, Name: nul})
			return err
		}},
		{"principal_id", func() error {
			_, err := e.broker.CreateAPIKey(as(admin), lapse.APIKeyInput{PrincipalID: nul, PrincipalKind: lapse.KindService, Scopes: []string{lapse.ScopeRead}})
			return err
		}},
		{"groups", func() error {
			_, err := e.broker.CreateAPIKey(as(admin), lapse.APIKeyInput{PrincipalID: "x", PrincipalKind: lapse.KindService, Groups: []string{nul}, Scopes: []string{lapse.ScopeRead}})
			return err
		}},
	} {
		err := c.call()
		wantCode(t, err, lapse.EINVALID)
		if f := lapse.ErrorField(err); f != c.field {
			t.Fatalf("field = %q, want %q (%v)", f, c.field, err)
		}
	}
	rs, _ := e.store.ListRequests(ctx, lapse.RequestFilter{})
	ks, _ := e.store.ListAPIKeys(ctx)
	evs, _ := e.store.ListEvents(ctx, lapse.EventFilter{})
	if len(rs)+len(ks)+len(evs) != 0 {
		t.Fatalf("refused input left %d requests, %d keys, %d events", len(rs), len(ks), len(evs))
	}
}
