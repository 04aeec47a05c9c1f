package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

var (
	// helper is an AI agent. Its own groups and scopes would let it do
	// much more than its sponsor; none of that may count.
	helper = &lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Groups: []string{"admins", "approvers"},
		Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove}}
	rootAdmin = &lapse.Principal{ID: "root", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeAdmin}}
)

// agentCatalog is the catalog of the agent lane's tests.
func agentCatalog() []*lapse.Entitlement {
	h := lapse.Duration(time.Hour)
	both := []lapse.PrincipalKind{lapse.KindHuman, lapse.KindAgent}
	approvers := lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}
	return []*lapse.Entitlement{
		// Needs a human for everyone; only developers may ask.
		{Name: "db/read", Target: "fake", Lanes: both, Requesters: []string{"group:developers"}, DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h, Approval: approvers},
		// Granted at once, to people, services and agents.
		{Name: "db/status", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService, lapse.KindAgent}, DefaultDuration: lapse.Duration(30 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}},
		// Only admins may ask; alice is no admin (the agent is).
		{Name: "db/admin", Target: "fake", Lanes: both, Requesters: []string{"group:admins"}, DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}},
		// High-risk: granted at once to people, an agent's request waits
		// for a human.
		{Name: "db/flush", Target: "fake", Lanes: both, DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true, Approvers: []string{"group:approvers"}}, Agents: &lapse.AgentRule{Approval: lapse.AgentApprovalHuman}},
		// Not for agents at all.
		{Name: "db/human", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}},
		// Task fences.
		{Name: "db/task", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService, lapse.KindAgent}, DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}, Fence: lapse.FenceWait},
		{Name: "db/task-strict", Target: "fake", Lanes: both, DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Auto: true}, Fence: lapse.FenceFail},
		{Name: "db/task-approved", Target: "fake", Lanes: both, DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: h,
			Approval: approvers, Fence: lapse.FenceWait},
	}
}

func newAgentEnv(t *testing.T, store lapse.Store) *env {
	t.Helper()
	e := newEnv(t, store)
	e.cfg.Catalog = agentCatalog()
	if err := e.broker.SetCatalog(e.cfg.Catalog); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) mandate(p *lapse.Principal, agent string, maxDuration time.Duration, ents ...string) *lapse.Mandate {
	e.t.Helper()
	m, err := e.broker.CreateMandate(as(p), lapse.MandateInput{AgentID: agent, Entitlements: ents,
		MaxDuration: lapse.Duration(maxDuration), ExpiresIn: lapse.Duration(8 * time.Hour)})
	if err != nil {
		e.t.Fatalf("create mandate: %v", err)
	}
	return m
}

func forBoth(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) { fn(t, newAgentEnv(t, db.open(t))) })
	}
}

func wantActFor(t *testing.T, p lapse.Principal, agent, sponsor string) {
	t.Helper()
	if p.ID != agent || p.Kind != lapse.KindAgent || !slices.Equal(p.Act, []string{sponsor}) {
		t.Fatalf("principal %+v, want agent %s acting for %s", p, agent, sponsor)
	}
}

// TestAgentWithoutMandateIsRefused: an agent asks only for a human sponsor;
// without a mandate there is none, and nothing is filed.
func TestAgentWithoutMandateIsRefused(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	_, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status"})
	wantCode(t, err, lapse.EFORBIDDEN)
	if lapse.ErrorField(err) != "entitlement" || !containsAll(lapse.ErrorMessage(err), "no live mandate", "lapse mandate create") {
		t.Errorf("refusal: %v", err)
	}
	// An entitlement closed to agents says so first.
	_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/human"})
	wantCode(t, err, lapse.EFORBIDDEN)
	if list, err := e.broker.Entitlements(as(helper)); err != nil || len(list) != 0 {
		t.Errorf("an agent without mandates may request %d entitlements (%v)", len(list), err)
	}
	rs, _ := e.store.ListRequests(context.Background(), lapse.RequestFilter{})
	gs, _ := e.store.ListGrants(context.Background(), lapse.GrantFilter{})
	if len(rs)+len(gs) != 0 {
		t.Fatalf("refusals left %d requests and %d grants", len(rs), len(gs))
	}
}

// TestMandateRules: who may give a mandate, for what.
func TestMandateRules(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	in := func(ents ...string) lapse.MandateInput {
		return lapse.MandateInput{AgentID: "helper", Entitlements: ents, MaxDuration: lapse.Duration(10 * time.Minute), ExpiresIn: lapse.Duration(time.Hour)}
	}
	for _, c := range []struct {
		name  string
		who   *lapse.Principal
		in    lapse.MandateInput
		code  string
		field string
	}{
		{"the sponsor may not request it", alice, in("db/admin"), lapse.EFORBIDDEN, "entitlements"},
		{"closed to agents", alice, in("db/human"), lapse.EFORBIDDEN, "entitlements"},
		{"unknown entitlement", alice, in("db/nope"), lapse.ENOTFOUND, "entitlements"},
		{"named twice", alice, in("db/status", "db/status"), lapse.EINVALID, "entitlements"},
		{"none named", alice, in(), lapse.EINVALID, "entitlements"},
		{"an agent sponsors", helper, in("db/status"), lapse.EFORBIDDEN, ""},
		{"a service sponsors", ci, in("db/status"), lapse.EFORBIDDEN, ""},
		{"without scope request", carol, in("db/status"), lapse.EFORBIDDEN, ""},
		{"to oneself", alice, lapse.MandateInput{AgentID: "Alice", Entitlements: []string{"db/status"}, MaxDuration: lapse.Duration(time.Minute), ExpiresIn: lapse.Duration(time.Hour)}, lapse.EINVALID, "agent_id"},
		{"no ceiling", alice, lapse.MandateInput{AgentID: "helper", Entitlements: []string{"db/status"}, ExpiresIn: lapse.Duration(time.Hour)}, lapse.EINVALID, "max_duration"},
		{"no expiry", alice, lapse.MandateInput{AgentID: "helper", Entitlements: []string{"db/status"}, MaxDuration: lapse.Duration(time.Minute)}, lapse.EINVALID, "expires_in"},
		{"too long", alice, lapse.MandateInput{AgentID: "helper", Entitlements: []string{"db/status"}, MaxDuration: lapse.Duration(time.Minute), ExpiresIn: lapse.Duration(40 * 24 * time.Hour)}, lapse.EINVALID, "expires_in"},
		{"bad agent ID", alice, lapse.MandateInput{AgentID: "a b", Entitlements: []string{"db/status"}, MaxDuration: lapse.Duration(time.Minute), ExpiresIn: lapse.Duration(time.Hour)}, lapse.EINVALID, "agent_id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.broker.CreateMandate(as(c.who), c.in)
			wantCode(t, err, c.code)
			if lapse.ErrorField(err) != c.field {
				t.Fatalf("field %q, want %q (%v)", lapse.ErrorField(err), c.field, err)
			}
		})
	}
	if ms, _ := e.store.ListMandates(context.Background(), lapse.MandateFilter{}); len(ms) != 0 {
		t.Fatalf("refused mandates stored: %d", len(ms))
	}

	m := e.mandate(alice, " Helper ", 10*time.Minute, "db/status", "db/read")
	if m.AgentID != "helper" || m.Sponsor.ID != "alice" || m.Sponsor.Kind != lapse.KindHuman || !slices.Equal(m.Sponsor.Groups, []string{"developers"}) ||
		len(m.Sponsor.Scopes) != 0 || !m.ExpiresAt.Equal(e.clock.Now().Add(8*time.Hour)) {
		t.Fatalf("mandate %+v", m)
	}
	evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{})
	if last := evs[len(evs)-1]; last.Type != lapse.EventMandateCreated || last.ActorID != "alice" || !containsAll(string(last.Data), m.ID, `"agent":"helper"`, "db/read") {
		t.Fatalf("last event %+v %s", last, last.Data)
	}

	// Who sees it: the sponsor, the agent, and those who may approve,
	// revoke or administer; nobody else.
	for _, c := range []struct {
		who  *lapse.Principal
		want int
	}{{alice, 1}, {helper, 1}, {bob, 1}, {rootAdmin, 1}, {ci, 0}, {&lapse.Principal{ID: "other-agent", Kind: lapse.KindAgent, Scopes: []string{lapse.ScopeRead}}, 0}} {
		ms, err := e.broker.ListMandates(as(c.who), lapse.MandateFilter{Live: true})
		if err != nil || len(ms) != c.want {
			t.Errorf("%s sees %d mandates (%v), want %d", c.who.ID, len(ms), err, c.want)
		}
	}
}

// TestAgentNeverExceedsItsSponsor: an agent under a mandate gets the
// sponsor's eligibility within the mandate's ceiling, acting for the
// sponsor; its own groups and scopes count for nothing, and the sponsor
// never approves what it asked for them.
func TestAgentNeverExceedsItsSponsor(t *testing.T) {
	forBoth(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		m := e.mandate(alice, "helper", 10*time.Minute, "db/status", "db/read", "db/flush")

		// What it may request, as it applies to the agent.
		list, err := e.broker.Entitlements(as(helper))
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*lapse.Entitlement{}
		for _, x := range list {
			byName[x.Name] = x
		}
		if len(list) != 3 || byName["db/status"].MaxDuration.D() != 10*time.Minute || byName["db/status"].DefaultDuration.D() != 10*time.Minute ||
			!byName["db/status"].Approval.Auto || byName["db/flush"].Approval.Auto || byName["db/flush"].Approval.Required != 1 {
			t.Fatalf("agent's entitlements: %+v", list)
		}

		// Low-risk: granted at once, to the agent acting for alice, within
		// the ceiling (the entitlement's 30m default is cut to it).
		res, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status", TaskID: "task-1"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Grant == nil || res.Grant.State != lapse.GrantActive || res.Credentials == nil {
			t.Fatalf("auto grant: %+v", res)
		}
		wantActFor(t, res.Request.Requester, "helper", "alice")
		wantActFor(t, res.Grant.Principal, "helper", "alice")
		if d := res.Request.Duration.D(); d != 10*time.Minute {
			t.Fatalf("duration %s, want the mandate's ceiling of 10m", d)
		}
		stored := e.grant(res.Grant.ID)
		wantActFor(t, stored.Principal, "helper", "alice")
		evs, _ := e.store.ListEvents(ctx, lapse.EventFilter{RequestID: res.Request.ID})
		if len(evs) == 0 || evs[0].Type != lapse.EventRequestCreated || evs[0].ActorID != "helper" || !slices.Equal(evs[0].Act, []string{"alice"}) ||
			!containsAll(string(evs[0].Data), `"sponsor":"alice"`, `"mandate":"`+m.ID+`"`, `"delegation":"mandate"`) {
			t.Fatalf("request.created = %+v %s", evs[0], evs[0].Data)
		}

		// Beyond the ceiling; what the sponsor may not request (though the
		// agent's own groups would allow it); what the mandate does not
		// name; nested delegation.
		_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status", Duration: lapse.Duration(30 * time.Minute)})
		wantCode(t, err, lapse.EINVALID)
		if lapse.ErrorField(err) != "duration" {
			t.Fatalf("ceiling refusal names %q", lapse.ErrorField(err))
		}
		_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/admin"})
		wantCode(t, err, lapse.EFORBIDDEN)
		nested := &lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Scopes: []string{lapse.ScopeRequest}, Act: []string{"other-agent"}}
		_, err = e.broker.CreateRequest(as(nested), lapse.RequestInput{Entitlement: "db/status"})
		wantCode(t, err, lapse.EFORBIDDEN)
		_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status", OnBehalfOf: "bob"})
		wantCode(t, err, lapse.EINVALID)

		// Needs a human for everyone: pending, and neither the agent (not
		// human, whatever its scopes) nor its sponsor may decide it.
		pend, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/read", Duration: lapse.Duration(5 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if pend.Request.State != lapse.RequestPending || pend.Request.Required != 1 || pend.Grant != nil {
			t.Fatalf("db/read for the agent: %+v", pend.Request)
		}
		aliceApprover := &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeApprove}}
		for _, who := range []*lapse.Principal{helper, aliceApprover} {
			_, err = e.broker.Approve(as(who), pend.Request.ID, lapse.DecisionInput{})
			wantCode(t, err, lapse.EFORBIDDEN)
			_, err = e.broker.Deny(as(who), pend.Request.ID, lapse.DecisionInput{})
			wantCode(t, err, lapse.EFORBIDDEN)
		}
		if list, _ := e.broker.ListRequests(as(aliceApprover), lapse.RequestFilter{Approvable: true}); len(list) != 0 {
			t.Errorf("the sponsor is offered %d of the agent's requests to approve", len(list))
		}
		// The sponsor sees it and may withdraw it; bob approves it.
		if _, err := e.broker.GetRequest(as(alice), pend.Request.ID); err != nil {
			t.Fatalf("the sponsor cannot see the request filed for her: %v", err)
		}
		r, err := e.broker.Approve(as(bob), pend.Request.ID, lapse.DecisionInput{RequestHash: pend.Request.Hash})
		if err != nil || r.State != lapse.RequestApproved {
			t.Fatalf("bob's approval: %+v %v", r, err)
		}
		e.tick()
		g := e.grant(r.GrantID)
		wantActFor(t, g.Principal, "helper", "alice")
		if g.State != lapse.GrantActive {
			t.Fatalf("approved grant %s (%s)", g.State, g.LastError)
		}
		if _, err := e.broker.ClaimCredentials(as(helper), g.ID); err != nil {
			t.Fatalf("the agent claims its credentials: %v", err)
		}

		// High-risk: alice herself gets it at once; her agent's request
		// waits for a human, whom she cannot be.
		mine, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/flush"})
		if err != nil || mine.Grant == nil || mine.Credentials == nil {
			t.Fatalf("alice's own db/flush: %+v %v", mine, err)
		}
		risky, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/flush"})
		if err != nil {
			t.Fatal(err)
		}
		if risky.Request.State != lapse.RequestPending || risky.Request.Required != 1 || risky.Grant != nil || risky.Credentials != nil {
			t.Fatalf("the agent's high-risk request was not held for a human: %+v", risky)
		}
		_, err = e.broker.Approve(as(aliceApprover), risky.Request.ID, lapse.DecisionInput{})
		wantCode(t, err, lapse.EFORBIDDEN)
		if r, err := e.broker.Approve(as(carol), risky.Request.ID, lapse.DecisionInput{}); err != nil || r.State != lapse.RequestApproved {
			t.Fatalf("carol's approval: %+v %v", r, err)
		}

		// The sponsor may end what the agent holds for her.
		if _, err := e.broker.Release(as(alice), res.Grant.ID, lapse.ReleaseInput{}); err != nil {
			t.Fatalf("the sponsor releases the agent's grant: %v", err)
		}
		if _, err := e.broker.Release(as(dave2()), g.ID, lapse.ReleaseInput{}); lapse.ErrorCode(err) != lapse.ENOTFOUND {
			t.Fatalf("someone else releases the agent's grant: %v", err)
		}
	})
}

// TestMandateRevocationEndsTheAgentsAccess: revoking a mandate stops new
// requests under it, ends what the agent holds for the sponsor, and makes
// a pending request it rests on unapprovable. Only the sponsor or an
// administrator may revoke; an expired mandate is as good as none.
func TestMandateRevocationEndsTheAgentsAccess(t *testing.T) {
	forBoth(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		m := e.mandate(alice, "helper", 10*time.Minute, "db/status", "db/read")
		other := e.mandate(alice, "other-agent", 10*time.Minute, "db/status")
		active, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status"})
		if err != nil {
			t.Fatal(err)
		}
		pend, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/read"})
		if err != nil {
			t.Fatal(err)
		}
		own, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status"})
		if err != nil {
			t.Fatal(err)
		}

		for _, who := range []*lapse.Principal{bob, helper} {
			_, err := e.broker.RevokeMandate(as(who), m.ID)
			wantCode(t, err, lapse.EFORBIDDEN)
		}
		_, err = e.broker.RevokeMandate(as(ci), m.ID)
		wantCode(t, err, lapse.ENOTFOUND)

		got, err := e.broker.RevokeMandate(as(alice), m.ID)
		if err != nil || got.RevokedAt.IsZero() || got.RevokedBy != "alice" {
			t.Fatalf("revoke: %+v %v", got, err)
		}
		if g := e.grant(active.Grant.ID); g.State != lapse.GrantRevoking || g.EndReason != lapse.EndRevoked {
			t.Fatalf("the agent's grant under the mandate is %s %s", g.State, g.EndReason)
		}
		if g := e.grant(own.Grant.ID); g.State != lapse.GrantActive {
			t.Fatalf("alice's own grant was ended: %s", g.State)
		}
		_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status"})
		wantCode(t, err, lapse.EFORBIDDEN)
		_, err = e.broker.Approve(as(bob), pend.Request.ID, lapse.DecisionInput{})
		wantCode(t, err, lapse.ECONFLICT)
		e.tick()
		if g := e.grant(active.Grant.ID); g.State != lapse.GrantRevoked {
			t.Fatalf("after the engine ran: %s", g.State)
		}
		// Revoking again changes nothing; an administrator may revoke too.
		again, err := e.broker.RevokeMandate(as(alice), m.ID)
		if err != nil || !again.RevokedAt.Equal(got.RevokedAt) {
			t.Fatalf("second revoke: %+v %v", again, err)
		}
		if _, err := e.broker.RevokeMandate(as(rootAdmin), other.ID); err != nil {
			t.Fatal(err)
		}
		n := 0
		evs, _ := e.store.ListEvents(ctx, lapse.EventFilter{})
		for _, ev := range evs {
			if ev.Type == lapse.EventMandateRevoked {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%d mandate.revoked events, want 2", n)
		}

		// Expiry.
		short, err := e.broker.CreateMandate(as(alice), lapse.MandateInput{AgentID: "helper", Entitlements: []string{"db/status"},
			MaxDuration: lapse.Duration(time.Minute), ExpiresIn: lapse.Duration(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(time.Hour)
		_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status"})
		wantCode(t, err, lapse.EFORBIDDEN)
		if ms, _ := e.broker.ListMandates(as(alice), lapse.MandateFilter{Live: true}); len(ms) != 0 {
			t.Fatalf("live mandates after expiry: %+v (short %s)", ms, short.ID)
		}
	})
}

// TestSeveralSponsors: when mandates of several sponsors cover a request,
// the agent names one; each request acts for exactly one sponsor.
func TestSeveralSponsors(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	dan := &lapse.Principal{ID: "dan", Kind: lapse.KindHuman, Groups: []string{"ops"}, Scopes: []string{lapse.ScopeRequest}}
	e.mandate(alice, "helper", 10*time.Minute, "db/status")
	e.mandate(dan, "helper", 20*time.Minute, "db/status")
	_, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status"})
	wantCode(t, err, lapse.EINVALID)
	if lapse.ErrorField(err) != "on_behalf_of" {
		t.Fatalf("field %q", lapse.ErrorField(err))
	}
	res, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status", OnBehalfOf: "Dan"})
	if err != nil {
		t.Fatal(err)
	}
	wantActFor(t, res.Request.Requester, "helper", "dan")
	if res.Request.Duration.D() != 20*time.Minute {
		t.Fatalf("dan's ceiling applies: %s", res.Request.Duration)
	}
	_, err = e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/status", OnBehalfOf: "erin"})
	wantCode(t, err, lapse.EFORBIDDEN)
	if lapse.ErrorField(err) != "on_behalf_of" {
		t.Fatalf("field %q", lapse.ErrorField(err))
	}
}

// TestDelegatedAgentRequest: under RFC 8693 delegation the sponsor is
// present (lapse.WithSponsor): the agent gets what the sponsor may request
// now, within the agent lane, and within its mandates from that sponsor
// when it holds any.
func TestDelegatedAgentRequest(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	delegated := func(sponsor *lapse.Principal) context.Context {
		a := *helper
		a.Act = []string{sponsor.ID}
		return lapse.WithChannel(lapse.WithSponsor(as(&a), sponsor), lapse.ChannelMachine)
	}
	res, err := e.broker.CreateRequest(delegated(alice), lapse.RequestInput{Entitlement: "db/status", Duration: lapse.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	wantActFor(t, res.Grant.Principal, "helper", "alice")
	if res.Credentials == nil || res.Request.Duration.D() != time.Hour {
		t.Fatalf("delegated grant %+v", res.Request)
	}
	evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{RequestID: res.Request.ID})
	if !containsAll(string(evs[0].Data), `"delegation":"token_exchange"`, `"sponsor":"alice"`) || evs[0].Channel != lapse.ChannelMachine {
		t.Fatalf("request.created %s on %s", evs[0].Data, evs[0].Channel)
	}
	for _, c := range []struct {
		name string
		ctx  context.Context
		ent  string
		code string
	}{
		{"the sponsor may not request it", delegated(alice), "db/admin", lapse.EFORBIDDEN},
		{"closed to agents", delegated(alice), "db/human", lapse.EFORBIDDEN},
		{"a sponsor who is a service", delegated(ci), "db/status", lapse.EFORBIDDEN},
		{"a sponsor without scope request", delegated(carol), "db/status", lapse.EFORBIDDEN},
		{"act names someone else", lapse.WithSponsor(as(&lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Scopes: []string{lapse.ScopeRequest}, Act: []string{"bob"}}), alice), "db/status", lapse.EFORBIDDEN},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.broker.CreateRequest(c.ctx, lapse.RequestInput{Entitlement: c.ent})
			wantCode(t, err, c.code)
		})
	}
	// High-risk stays with a human, also with the sponsor present.
	risky, err := e.broker.CreateRequest(delegated(alice), lapse.RequestInput{Entitlement: "db/flush"})
	if err != nil || risky.Request.State != lapse.RequestPending {
		t.Fatalf("delegated high-risk request: %+v %v", risky, err)
	}
	// Once alice gives the agent a mandate, it narrows the delegation too.
	e.mandate(alice, "helper", 5*time.Minute, "db/read")
	_, err = e.broker.CreateRequest(delegated(alice), lapse.RequestInput{Entitlement: "db/status"})
	wantCode(t, err, lapse.EFORBIDDEN)
	_, err = e.broker.CreateRequest(delegated(alice), lapse.RequestInput{Entitlement: "db/read", Duration: lapse.Duration(10 * time.Minute)})
	wantCode(t, err, lapse.EINVALID)
}

// TestAgentsNeverApprove: no agent decides anything, whatever its groups
// and scopes, also for a request that is not its own.
func TestAgentsNeverApprove(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read"})
	if err != nil {
		t.Fatal(err)
	}
	boss := &lapse.Principal{ID: "boss-agent", Kind: lapse.KindAgent, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeAdmin}}
	for _, who := range []*lapse.Principal{helper, boss} {
		_, err := e.broker.Approve(as(who), res.Request.ID, lapse.DecisionInput{RequestHash: res.Request.Hash})
		wantCode(t, err, lapse.EFORBIDDEN)
		_, err = e.broker.Deny(as(who), res.Request.ID, lapse.DecisionInput{})
		wantCode(t, err, lapse.EFORBIDDEN)
		if list, _ := e.broker.ListRequests(as(who), lapse.RequestFilter{Approvable: true}); len(list) != 0 {
			t.Errorf("%s is offered %d requests to approve", who.ID, len(list))
		}
	}
	if r, _ := e.store.GetRequest(context.Background(), res.Request.ID); len(r.Approvals) != 0 || r.State != lapse.RequestPending {
		t.Fatalf("request after the agents tried: %s, %d votes", r.State, len(r.Approvals))
	}
}

// TestSecondTaskWaitsForVerifiedRevocation: "A second task's grant is not
// issued while the first task's revocation is unverified." The first
// grant's revocation is sabotaged, so it stays in revoke_failed; the
// second stays scheduled, never provisioned, until the first is revoked
// and verified — then it starts at once.
func TestSecondTaskWaitsForVerifiedRevocation(t *testing.T) {
	forBoth(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		first, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task", TaskID: "task-1"})
		if err != nil || first.Credentials == nil {
			t.Fatalf("first task: %+v %v", first, err)
		}
		e.fake.Sabotage(first.Grant.ID)
		if _, err := e.broker.Release(as(alice), first.Grant.ID, lapse.ReleaseInput{}); err != nil {
			t.Fatal(err)
		}
		e.tick()
		if g := e.grant(first.Grant.ID); g.State != lapse.GrantRevokeFailed {
			t.Fatalf("first grant %s, want revoke_failed", g.State)
		}

		second, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task", TaskID: "task-2"})
		if err != nil {
			t.Fatal(err)
		}
		if second.Grant == nil || second.Grant.State != lapse.GrantScheduled || second.Credentials != nil {
			t.Fatalf("second task's grant: %+v", second.Grant)
		}
		for range 3 {
			e.clock.Advance(10 * time.Second) // rechecks, and the first's retries (still sabotaged)
			e.tick()
			g := e.grant(second.Grant.ID)
			if g.State != lapse.GrantScheduled || e.fake.Has(g.ID) || e.fake.CallsFor(fake.Grant, g.ID) != 0 {
				t.Fatalf("second grant %s while the first is %s: provisioned before the first's revocation was verified", g.State, e.grant(first.Grant.ID).State)
			}
			if !containsAll(g.LastError, "fenced", first.Grant.ID) {
				t.Fatalf("the wait is not explained: %q", g.LastError)
			}
		}
		_, err = e.broker.ClaimCredentials(as(alice), second.Grant.ID)
		wantCode(t, err, lapse.ECONFLICT)
		evs, _ := e.store.ListEvents(ctx, lapse.EventFilter{GrantID: second.Grant.ID})
		fenced := 0
		for _, ev := range evs {
			if ev.Type == lapse.EventGrantFenced {
				fenced++
			}
		}
		if fenced != 1 {
			t.Fatalf("%d grant.fenced events, want 1 per wait", fenced)
		}

		// The target is repaired: the first is revoked and verified, and
		// the second starts in the same engine pass.
		e.fake.ClearSabotage()
		e.clock.Set(e.grant(first.Grant.ID).DueAt)
		e.tick()
		if g := e.grant(first.Grant.ID); g.State != lapse.GrantRevoked {
			t.Fatalf("first grant %s after repair", g.State)
		}
		g := e.grant(second.Grant.ID)
		if g.State != lapse.GrantActive || g.LastError != "" {
			t.Fatalf("second grant %s (%s) once the first is verified revoked", g.State, g.LastError)
		}
		if creds, err := e.broker.ClaimCredentials(as(alice), g.ID); err != nil || len(creds.Secret) == 0 {
			t.Fatalf("second task's credentials: %v", err)
		}
	})
}

// TestFenceFailAndTheMachineLane: fence fail refuses a new grant while the
// previous one is not revoked; the machine lane never waits, so a fence
// refuses it as well.
func TestFenceFailAndTheMachineLane(t *testing.T) {
	e := newAgentEnv(t, sqltest.OpenSQLite(t))
	first, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task-strict"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task-strict"})
	wantCode(t, err, lapse.ECONFLICT)
	if lapse.ErrorReason(err) != lapse.ReasonFenced {
		t.Fatalf("reason %q", lapse.ErrorReason(err))
	}
	// Someone else's grant of the entitlement does not fence alice.
	if _, err := e.broker.CreateRequest(as(dave2()), lapse.RequestInput{Entitlement: "db/task-strict"}); err != nil {
		t.Fatalf("another principal is fenced: %v", err)
	}
	if _, err := e.broker.Release(as(alice), first.Grant.ID, lapse.ReleaseInput{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task-strict"})
	wantCode(t, err, lapse.ECONFLICT) // revoking is not revoked
	e.tick()
	if _, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task-strict"}); err != nil {
		t.Fatalf("after verified revocation: %v", err)
	}

	machine := lapse.WithChannel(as(ci), lapse.ChannelMachine)
	if _, err := e.broker.CreateRequest(machine, lapse.RequestInput{Entitlement: "db/task"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.broker.CreateRequest(machine, lapse.RequestInput{Entitlement: "db/task"})
	wantCode(t, err, lapse.ECONFLICT)
	if lapse.ErrorReason(err) != lapse.ReasonFenced {
		t.Fatalf("reason %q", lapse.ErrorReason(err))
	}
}

func dave2() *lapse.Principal {
	return &lapse.Principal{ID: "dave", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}}
}

// TestFenceHoldsUnderConcurrency: many requests of one principal for one
// fenced entitlement at once, then two engines (replicas) working the
// queue together: never two live grants of the pair at any time, and
// every grant in turn, on both databases.
func TestFenceHoldsUnderConcurrency(t *testing.T) {
	forBoth(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		const n = 6
		var mu sync.Mutex
		var results []*lapse.RequestResult
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/task", TaskID: fmt.Sprintf("task-%d", i)})
				if err != nil {
					t.Errorf("request %d: %v", i, err)
					return
				}
				mu.Lock()
				results = append(results, res)
				mu.Unlock()
			}()
		}
		wg.Wait()
		inline := 0
		for _, r := range results {
			if r.Credentials != nil {
				inline++
			}
		}
		if inline != 1 {
			t.Fatalf("%d of %d concurrent requests were provisioned at once, want exactly 1", inline, n)
		}
		cfg := e.cfg
		cfg.Engine.Owner = "test-b"
		b2, err := broker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		live := func() []*lapse.Grant {
			gs, err := e.store.ListGrants(ctx, lapse.GrantFilter{PrincipalID: "alice", Entitlement: "db/task", Live: true})
			if err != nil {
				t.Fatal(err)
			}
			return gs
		}
		done := map[string]bool{}
		for round := 0; len(done) < n && round < 4*n; round++ {
			var twg sync.WaitGroup
			for _, b := range []*broker.Broker{e.broker, b2} {
				twg.Add(1)
				go func() {
					defer twg.Done()
					if err := b.Tick(ctx); err != nil {
						t.Errorf("tick: %v", err)
					}
				}()
			}
			twg.Wait()
			gs := live()
			if len(gs) > 1 {
				t.Fatalf("round %d: %d live grants of one fenced pair: %v", round, len(gs), grantStates(gs))
			}
			for _, g := range gs {
				if g.State == lapse.GrantActive {
					done[g.ID] = true
					if _, err := e.broker.Release(as(alice), g.ID, lapse.ReleaseInput{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			e.clock.Advance(fenceStep)
		}
		if len(done) != n {
			t.Fatalf("%d of %d fenced grants ran", len(done), n)
		}
	})
}

// fenceStep moves the clock past a fenced grant's recheck.
const fenceStep = 6 * time.Second

func grantStates(gs []*lapse.Grant) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.ID+"="+string(g.State))
	}
	return out
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
