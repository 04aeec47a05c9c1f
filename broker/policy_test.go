package broker_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/policy"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

var (
	erin  = &lapse.Principal{ID: "erin", Kind: lapse.KindHuman, Groups: []string{"security"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
	frank = &lapse.Principal{ID: "frank", Kind: lapse.KindHuman, Groups: []string{"security", "approvers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
)

// humanLanePolicy adds to the test catalog the human lane's policy
// features: serial stages with two groups, a condition, on-call
// auto-approval, break-glass and a scheduled start, with a group the
// policy defines itself.
func humanLanePolicy() policy.Document {
	h := lapse.Duration(time.Hour)
	ents := append(catalog(),
		&lapse.Entitlement{Name: "db/owner", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			MaxScheduleAhead: lapse.Duration(24 * time.Hour),
			Approval: lapse.ApprovalRule{Stages: []lapse.ApprovalStage{
				{Name: "leads", Groups: []lapse.ApproverGroup{{Name: "leads", Required: 1, Approvers: []string{"group:leads"}}}},
				{Name: "review", Groups: []lapse.ApproverGroup{
					{Name: "approvers", Required: 1, Approvers: []string{"group:approvers"}},
					{Name: "security", Required: 1, Approvers: []string{"group:security"}},
				}},
			}}},
		&lapse.Entitlement{Name: "db/shift", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			Approval:  lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}},
			Extension: &lapse.ExtensionRule{MaxTotal: lapse.Duration(2 * time.Hour), Reapprove: true}},
		&lapse.Entitlement{Name: "db/night", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			Approval:  lapse.ApprovalRule{Auto: true},
			Extension: &lapse.ExtensionRule{MaxTotal: lapse.Duration(90 * time.Minute)}},
		&lapse.Entitlement{Name: "db/oncall", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			Condition: `request.duration <= duration("30m") || principal.id in on_call["dba"]`,
			Approval:  lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}, AutoWhen: `principal.id in on_call["dba"]`},
			BreakGlass: &lapse.BreakGlassRule{MaxDuration: lapse.Duration(15 * time.Minute), ReviewWithin: lapse.Duration(24 * time.Hour),
				Reviewers: []string{"group:security"}}},
	)
	return policy.Document{
		Entitlements: ents,
		Groups:       map[string][]string{"leads": {"dave"}},
		OnCall:       map[string][]string{"dba": {"carol"}},
	}
}

func newPolicyEnv(t *testing.T, store lapse.Store) *env {
	t.Helper()
	e := newEnv(t, store)
	if err := e.broker.SetPolicy(humanLanePolicy()); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestSerialStagesWithGroupsThatMustAllApprove(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/owner"})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Request.ID
	if res.Request.Required != 3 {
		t.Errorf("required = %d, want 3 (one lead, then one of approvers and one of security)", res.Request.Required)
	}
	// The second stage's approvers wait for the first.
	_, err = e.broker.Approve(as(bob), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
	// dave is a lead only because the policy says so, whatever his
	// identity provider's groups.
	if _, err := e.broker.Approve(as(dave), id, lapse.DecisionInput{}); err != nil {
		t.Fatalf("lead approves: %v", err)
	}
	// frank is in both groups of the second stage: he counts once, in
	// one of them; a second member of the group he filled adds nothing.
	r, err := e.broker.Approve(as(frank), id, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestPending {
		t.Fatalf("after one human in a stage of two groups: %s", r.State)
	}
	// bob (approvers) completes it: frank moves to security in the
	// matching.
	r, err = e.broker.Approve(as(bob), id, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestApproved || r.GrantID == "" {
		t.Fatalf("after every stage: %s, grant %q", r.State, r.GrantID)
	}
	// Once decided, nothing changes it.
	_, err = e.broker.Deny(as(erin), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
}

func TestAnApprovalThatAddsNothingIsRefused(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/owner"})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Request.ID
	if _, err := e.broker.Approve(as(dave), id, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.Approve(as(erin), id, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	// Security has its approval; another security-only approver adds
	// nothing to the stage.
	other := &lapse.Principal{ID: "gina", Kind: lapse.KindHuman, Groups: []string{"security"}, Scopes: []string{lapse.ScopeApprove}}
	_, err = e.broker.Approve(as(other), id, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
	r, _ := e.store.GetRequest(context.Background(), id)
	if len(r.Approvals) != 2 || r.State != lapse.RequestPending {
		t.Fatalf("request: %s with %d approvals", r.State, len(r.Approvals))
	}
}

func TestConditionAndOnCallAutoApproval(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	// carol is on call: approved at once, for the whole hour.
	onCall := &lapse.Principal{ID: "carol", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}}
	res, err := e.broker.CreateRequest(as(onCall), lapse.RequestInput{Entitlement: "db/oncall", Duration: lapse.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != lapse.RequestApproved || res.Grant == nil {
		t.Fatalf("on-call request: %s", res.Request.State)
	}
	// alice is not: within 30 minutes she may ask, and waits for bob.
	res, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", Duration: lapse.Duration(20 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != lapse.RequestPending {
		t.Fatalf("off-call request: %s", res.Request.State)
	}
	// Beyond them the condition refuses, naming the entitlement.
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", Duration: lapse.Duration(time.Hour)})
	wantCode(t, err, lapse.EFORBIDDEN)
	if f := lapse.ErrorField(err); f != "entitlement" {
		t.Errorf("field = %q", f)
	}
}

func TestBreakGlass(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	ctx := context.Background()
	_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", BreakGlass: true, Reason: "down"})
	wantCode(t, err, lapse.EINVALID) // the reason is too short to review
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", BreakGlass: true, Reason: "the primary is down"})
	wantCode(t, err, lapse.EFORBIDDEN) // no break-glass path there
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", BreakGlass: true, Reason: "the primary is down", Duration: lapse.Duration(30 * time.Minute)})
	wantCode(t, err, lapse.EINVALID) // beyond the break-glass maximum

	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", BreakGlass: true, Reason: "the primary is down"})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Request
	if r.State != lapse.RequestApproved || res.Grant == nil || !r.BreakGlass {
		t.Fatalf("break glass: %s", r.State)
	}
	if res.Grant.ExpiresAt.Sub(res.Grant.StartsAt) != 15*time.Minute {
		t.Errorf("break-glass grant lasts %s, want the break-glass default of 15m", res.Grant.ExpiresAt.Sub(res.Grant.StartsAt))
	}
	if r.Review == nil || r.Review.State != lapse.ReviewPending || !r.Review.DueAt.Equal(r.CreatedAt.Add(24*time.Hour)) {
		t.Fatalf("review: %+v", r.Review)
	}
	evs, err := e.store.ListEvents(ctx, lapse.EventFilter{RequestID: r.ID})
	if err != nil {
		t.Fatal(err)
	}
	var bg *lapse.Event
	for _, ev := range evs {
		if ev.Type == lapse.EventRequestBreakGlass {
			bg = ev
		}
	}
	if bg == nil {
		t.Fatal("no request.break_glass event")
	}
	for _, want := range []string{`"group:approvers"`, `"group:security"`, `"review_due"`} {
		if !strings.Contains(string(bg.Data), want) {
			t.Errorf("break-glass event data %s lacks %s", bg.Data, want)
		}
	}

	// The post-review: never by the requester, once, by a reviewer.
	_, err = e.broker.ReviewRequest(as(alice), r.ID, lapse.ReviewInput{Outcome: lapse.ReviewAccepted})
	wantCode(t, err, lapse.EFORBIDDEN)
	_, err = e.broker.ReviewRequest(as(bob), r.ID, lapse.ReviewInput{Outcome: lapse.ReviewAccepted})
	wantCode(t, err, lapse.EFORBIDDEN) // bob approves, but security reviews
	pending, err := e.broker.ListRequests(as(erin), lapse.RequestFilter{ReviewPending: true})
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending reviews: %d, %v", len(pending), err)
	}
	got, err := e.broker.ReviewRequest(as(erin), r.ID, lapse.ReviewInput{Outcome: lapse.ReviewAccepted, Comment: "postmortem PM-12"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Review.State != lapse.ReviewAccepted || got.Review.Reviewer != "erin" {
		t.Fatalf("review: %+v", got.Review)
	}
	_, err = e.broker.ReviewRequest(as(frank), r.ID, lapse.ReviewInput{Outcome: lapse.ReviewRejected, Comment: "second opinion"})
	wantCode(t, err, lapse.ECONFLICT)
}

// A request whose policy changes to deny after its quorum, but before its
// scheduled start, is never provisioned; the reason is recorded.
func TestPolicyChangeBeforeScheduledStartIsNeverProvisioned(t *testing.T) {
	for name, open := range map[string]func(*testing.T) lapse.Store{
		"sqlite":   func(t *testing.T) lapse.Store { return sqltest.OpenSQLite(t) },
		"postgres": func(t *testing.T) lapse.Store { return sqltest.OpenPostgres(t) },
	} {
		t.Run(name, func(t *testing.T) {
			for _, change := range []struct {
				name  string
				apply func(*policy.Document)
			}{
				{"condition now denies", func(d *policy.Document) {
					for _, ent := range d.Entitlements {
						if ent.Name == "db/owner" {
							ent.Condition = `principal.id != "alice"`
						}
					}
				}},
				{"approver left the group", func(d *policy.Document) { d.Groups["leads"] = []string{"someone-else"} }},
				{"what it grants changed", func(d *policy.Document) {
					for _, ent := range d.Entitlements {
						if ent.Name == "db/owner" {
							ent.Spec = map[string]any{"privileges": []any{"read", "write"}}
						}
					}
				}},
				{"entitlement removed", func(d *policy.Document) {
					d.Entitlements = slices.DeleteFunc(d.Entitlements, func(e *lapse.Entitlement) bool { return e.Name == "db/owner" })
				}},
			} {
				t.Run(change.name, func(t *testing.T) {
					e := newPolicyEnv(t, open(t))
					start := e.clock.Now().Add(2 * time.Hour)
					res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/owner", StartsAt: start})
					if err != nil {
						t.Fatal(err)
					}
					id := res.Request.ID
					for _, p := range []*lapse.Principal{dave, bob, erin} {
						if _, err := e.broker.Approve(as(p), id, lapse.DecisionInput{RequestHash: res.Request.Hash}); err != nil {
							t.Fatal(err)
						}
					}
					r, _ := e.store.GetRequest(context.Background(), id)
					if r.State != lapse.RequestApproved {
						t.Fatalf("request %s", r.State)
					}
					g := e.grant(r.GrantID)
					if !g.StartsAt.Equal(start) || g.State != lapse.GrantScheduled {
						t.Fatalf("grant %s starts %s, want scheduled at %s", g.State, g.StartsAt, start)
					}
					e.tick() // before the start: nothing happens
					if e.fake.Has(g.ID) {
						t.Fatal("provisioned before its start")
					}

					doc := humanLanePolicy()
					change.apply(&doc)
					if err := e.broker.SetPolicy(doc); err != nil {
						t.Fatal(err)
					}
					e.clock.Advance(2 * time.Hour)
					e.tick()
					e.tick()
					g = e.grant(g.ID)
					if n := e.fake.CallsFor(fake.Grant, g.ID); n != 0 {
						t.Fatal("the grant was provisioned under a policy that no longer allows it")
					}
					if g.State != lapse.GrantRevoked || g.EndReason != lapse.EndCancelled {
						t.Fatalf("grant: %s, %s, %q", g.State, g.EndReason, g.LastError)
					}
					evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{GrantID: g.ID})
					found := false
					for _, ev := range evs {
						found = found || ev.Type == lapse.EventGrantCancelled && strings.Contains(string(ev.Data), `"reason":"`)
						if ev.Type == lapse.EventGrantProvisioned {
							t.Fatal("grant.provisioned recorded")
						}
					}
					if !found {
						t.Fatal("no grant.cancelled event with the reason")
					}
				})
			}
		})
	}
}

// Without a change, the same scheduled grant starts on time.
func TestScheduledStart(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	start := e.clock.Now().Add(time.Hour)
	_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/owner", StartsAt: e.clock.Now().Add(48 * time.Hour)})
	wantCode(t, err, lapse.EINVALID)
	_, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "x", StartsAt: start})
	wantCode(t, err, lapse.EINVALID) // db/read has no scheduled start
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/owner", StartsAt: start})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*lapse.Principal{dave, bob, erin} {
		if _, err := e.broker.Approve(as(p), res.Request.ID, lapse.DecisionInput{}); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := e.store.GetRequest(context.Background(), res.Request.ID)
	e.clock.Advance(time.Hour)
	e.tick()
	g := e.grant(r.GrantID)
	if g.State != lapse.GrantActive || !g.ExpiresAt.Equal(start.Add(time.Hour)) {
		t.Fatalf("grant %s (%s), expires %s", g.State, g.LastError, g.ExpiresAt)
	}
}

func TestExtensions(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	ctx := context.Background()
	half := lapse.Duration(30 * time.Minute)

	// Without re-approval: extended at once, on the target too.
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/night"})
	if err != nil {
		t.Fatal(err)
	}
	g := res.Grant
	end := g.ExpiresAt
	ext, err := e.broker.ExtendGrant(as(alice), g.ID, lapse.ExtendInput{Duration: half, Reason: "long migration"})
	if err != nil {
		t.Fatal(err)
	}
	if ext.Grant == nil || !ext.Grant.ExpiresAt.Equal(end.Add(30*time.Minute)) || ext.Request.Extends != g.ID {
		t.Fatalf("extension: %+v", ext)
	}
	if got := e.fake.Deadline(g.ID); !got.Equal(end.Add(30 * time.Minute)) {
		t.Errorf("the target's deadline is %s, want %s", got, end.Add(30*time.Minute))
	}
	// The cumulative maximum (90m) holds.
	_, err = e.broker.ExtendGrant(as(alice), g.ID, lapse.ExtendInput{Duration: lapse.Duration(time.Minute)})
	wantCode(t, err, lapse.EINVALID)
	// Only the holder extends; an entitlement without a rule cannot.
	mallory := &lapse.Principal{ID: "mallory", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}}
	_, err = e.broker.ExtendGrant(as(mallory), g.ID, lapse.ExtendInput{Duration: half})
	wantCode(t, err, lapse.ENOTFOUND)
	other := e.approvedGrant()
	_, err = e.broker.ExtendGrant(as(alice), other.ID, lapse.ExtendInput{Duration: half})
	wantCode(t, err, lapse.EFORBIDDEN)

	// With re-approval: the extension waits for the approvers, and the
	// requester cannot approve it.
	res, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/shift"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	e.tick()
	g = e.grant(r.GrantID)
	end = g.ExpiresAt
	ext, err = e.broker.ExtendGrant(as(alice), g.ID, lapse.ExtendInput{Duration: lapse.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if ext.Grant != nil || ext.Request.State != lapse.RequestPending {
		t.Fatalf("an extension that needs approval was applied at once: %+v", ext)
	}
	_, err = e.broker.Approve(as(alice), ext.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	if _, err := e.broker.Approve(as(carol), ext.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
	if got := e.grant(g.ID); !got.ExpiresAt.Equal(end.Add(time.Hour)) || got.State != lapse.GrantActive {
		t.Fatalf("after approval the grant ends %s (%s), want %s", got.ExpiresAt, got.State, end.Add(time.Hour))
	}
	evs, _ := e.store.ListEvents(ctx, lapse.EventFilter{GrantID: g.ID})
	n := 0
	for _, ev := range evs {
		if ev.Type == lapse.EventGrantExtended {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d grant.extended events, want 1", n)
	}
	// The engine revokes at the new deadline, not the old one.
	e.clock.Advance(time.Hour + time.Minute)
	e.tick()
	if got := e.grant(g.ID); got.State != lapse.GrantActive {
		t.Fatalf("revoked at the old deadline: %s", got.State)
	}
	e.clock.Advance(time.Hour)
	e.tick()
	e.tick()
	if got := e.grant(g.ID); got.State != lapse.GrantRevoked {
		t.Fatalf("not revoked at the new deadline: %s", got.State)
	}
}

// Approvals bind to what the entitlement grants: once its spec changes, a
// pending request cannot be approved into the new privilege.
func TestApprovalsBindToThePrivilege(t *testing.T) {
	e := newPolicyEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/shift"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.Privilege == "" {
		t.Fatal("the request records no privilege hash")
	}
	doc := humanLanePolicy()
	for _, ent := range doc.Entitlements {
		if ent.Name == "db/shift" {
			ent.Spec = map[string]any{"privileges": []any{"read", "write"}}
		}
	}
	if err := e.broker.SetPolicy(doc); err != nil {
		t.Fatal(err)
	}
	_, err = e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT)
	r, _ := e.store.GetRequest(context.Background(), res.Request.ID)
	if len(r.Approvals) != 0 || r.State != lapse.RequestPending {
		t.Fatalf("request %s with %d approvals", r.State, len(r.Approvals))
	}
}
