package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
)

// A canary grant skips lanes and approval (db/admin needs two human
// approvals), goes to the canary principal only, is recorded like any
// grant, and ReleaseCanary revokes and verifies it without an engine.
func TestCanaryGrantIsRecordedAndRevokedWithoutEngine(t *testing.T) {
	e := newSQLiteEnv(t)
	ctx := context.Background()
	g, creds, err := e.broker.CanaryGrant(ctx, broker.CanaryInput{Entitlement: "db/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if g.State != lapse.GrantActive || g.Principal.ID != broker.CanaryPrincipal.ID || g.Principal.Kind != lapse.KindService {
		t.Fatalf("canary grant = %s for %s/%s", g.State, g.Principal.ID, g.Principal.Kind)
	}
	if len(creds.Secret) == 0 || !e.fake.Has(g.ID) {
		t.Fatal("canary grant has no credentials or no account on the target")
	}
	if got := g.ExpiresAt.Sub(g.StartsAt); got != broker.DefaultCanaryDuration {
		t.Errorf("duration = %s, want %s", got, broker.DefaultCanaryDuration)
	}
	stored := e.grant(g.ID)
	if len(stored.SealedCredentials) != 0 || !stored.CredentialsClaimed {
		t.Error("canary credentials were stored; they must go to the caller only")
	}
	r, err := e.store.GetRequest(ctx, g.RequestID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestApproved || len(r.Approvals) != 0 || r.Channel != lapse.ChannelSystem {
		t.Errorf("request = %s with %d approvals on %s", r.State, len(r.Approvals), r.Channel)
	}
	evs, err := e.store.ListEvents(ctx, lapse.EventFilter{RequestID: r.ID})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
		if ev.Type == lapse.EventGrantProvisioned {
			continue // provisioning is the broker's own step, as for any grant
		}
		if ev.ActorID != broker.CanaryPrincipal.ID || ev.Channel != lapse.ChannelSystem {
			t.Errorf("%s: actor %s on %s, want the canary on system", ev.Type, ev.ActorID, ev.Channel)
		}
	}
	want := []string{lapse.EventRequestCreated, lapse.EventRequestDecided, lapse.EventGrantCreated, lapse.EventGrantProvisioned}
	if len(types) != len(want) {
		t.Fatalf("events = %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("events = %v, want %v", types, want)
		}
	}

	out, err := e.broker.ReleaseCanary(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if out.State != lapse.GrantRevoked || out.EndReason != lapse.EndReleased || e.fake.Has(g.ID) {
		t.Fatalf("after ReleaseCanary: %s (%s), account left %v", out.State, out.LastError, e.fake.Has(g.ID))
	}
	if err := e.broker.RecordCanary(ctx, lapse.EventCanaryPassed, g.ID, map[string]any{"target": "fake"}); err != nil {
		t.Fatal(err)
	}
	evs, _ = e.store.ListEvents(ctx, lapse.EventFilter{GrantID: g.ID})
	if last := evs[len(evs)-1]; last.Type != lapse.EventCanaryPassed || last.RequestID != g.RequestID {
		t.Errorf("last event of the grant = %s (request %s)", last.Type, last.RequestID)
	}
}

// The canary's release and record refuse any grant that is not the
// canary's, so they cannot end or annotate someone else's access.
func TestCanaryCannotTouchOtherGrants(t *testing.T) {
	e := newSQLiteEnv(t)
	ctx := context.Background()
	g := e.approvedGrant()
	if _, err := e.broker.ReleaseCanary(ctx, g.ID); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("ReleaseCanary of alice's grant = %v, want not_found", err)
	}
	if _, err := e.broker.SettleCanary(ctx, g.ID); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("SettleCanary of alice's grant = %v, want not_found", err)
	}
	if err := e.broker.RecordCanary(ctx, lapse.EventCanaryPassed, g.ID, nil); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("RecordCanary on alice's grant = %v, want not_found", err)
	}
	if got := e.grant(g.ID); got.State != lapse.GrantActive {
		t.Errorf("alice's grant is %s after the canary's attempts", got.State)
	}
	if _, _, err := e.broker.CanaryGrant(ctx, broker.CanaryInput{Entitlement: "db/read", Duration: time.Hour}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("an hour-long canary = %v, want invalid", err)
	}
	if _, _, err := e.broker.CanaryGrant(ctx, broker.CanaryInput{Entitlement: "nope"}); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("canary of an unknown entitlement = %v, want not_found", err)
	}
	// The bypass is not on the service: nothing that reaches the broker
	// through lapse.Service (the API, MCP, the CLI) can call it.
	var svc lapse.Service = e.broker
	if _, ok := svc.(interface {
		CanaryGrant(context.Context, broker.CanaryInput) (*lapse.Grant, *lapse.Credentials, error)
	}); !ok {
		t.Fatal("test is stale: the broker no longer has CanaryGrant")
	}
}

// No canary grant is made while the audit log is degraded.
func TestCanaryFailsClosedOnAuditGate(t *testing.T) {
	e := newSQLiteEnv(t)
	cfg := e.cfg
	cfg.AuditGate = func(context.Context) error { return errors.New("sink down") }
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = b.CanaryGrant(context.Background(), broker.CanaryInput{Entitlement: "db/status"})
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE || lapse.ErrorReason(err) != lapse.ReasonAuditDegraded {
		t.Fatalf("canary with a degraded log = %v, want unavailable/audit_degraded", err)
	}
}
