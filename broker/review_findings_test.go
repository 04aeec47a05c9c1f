package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/policy"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// Tests for the findings of the review of the human lane: each shows a way
// to get or keep a privilege the policy does not give, or evidence that
// does not say what happened.

// findingsPolicy is humanLanePolicy with entitlements that combine
// break-glass with extensions, and conditions on what an extension and a
// channel are.
func findingsPolicy() policy.Document {
	doc := humanLanePolicy()
	h := lapse.Duration(time.Hour)
	doc.Entitlements = append(doc.Entitlements,
		// Break glass for 15 minutes; an approved grant may be extended
		// without re-approval up to two hours.
		&lapse.Entitlement{Name: "db/bg", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			Approval:  lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}},
			Extension: &lapse.ExtensionRule{MaxTotal: lapse.Duration(2 * time.Hour)},
			BreakGlass: &lapse.BreakGlassRule{MaxDuration: lapse.Duration(15 * time.Minute), ReviewWithin: lapse.Duration(24 * time.Hour),
				Reviewers: []string{"group:security"}}},
		// New requests are approved at once; extensions (request.extends
		// names the grant) wait for an approver.
		&lapse.Entitlement{Name: "db/ext", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: h, MaxDuration: h,
			Approval:  lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}, AutoWhen: `request.extends == ""`},
			Extension: &lapse.ExtensionRule{MaxTotal: lapse.Duration(2 * time.Hour), Reapprove: true}},
		// Never through the token endpoint (the machine channel, which
		// the server sets, unlike the client-declared cli or mcp).
		&lapse.Entitlement{Name: "db/nomachine", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService}, DefaultDuration: h, MaxDuration: h,
			Condition: `request.channel != "machine"`,
			Approval:  lapse.ApprovalRule{Auto: true}},
	)
	return doc
}

func newFindingsEnv(t *testing.T, store lapse.Store) *env {
	t.Helper()
	e := newEnv(t, store)
	if err := e.broker.SetPolicy(findingsPolicy()); err != nil {
		t.Fatal(err)
	}
	return e
}

// A rejected break-glass review ends the grant: the request decided at
// filing must name its grant, or the rejection has nothing to end.
func TestFindingBreakGlassRejectionEndsTheGrant(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", BreakGlass: true, Reason: "the primary is down"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant == nil || res.Grant.State != lapse.GrantActive {
		t.Fatalf("break-glass grant: %+v", res.Grant)
	}
	stored, err := e.store.GetRequest(context.Background(), res.Request.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.GrantID != res.Grant.ID {
		t.Errorf("the stored break-glass request names grant %q, want %q", stored.GrantID, res.Grant.ID)
	}
	if _, err := e.broker.ReviewRequest(as(erin), res.Request.ID, lapse.ReviewInput{Outcome: lapse.ReviewRejected, Comment: "no incident"}); err != nil {
		t.Fatal(err)
	}
	e.tick()
	e.tick()
	if g := e.grant(res.Grant.ID); g.State != lapse.GrantRevoked || g.EndReason != lapse.EndRevoked {
		t.Fatalf("after a rejected review the grant is %s (%s), want revoked", g.State, g.EndReason)
	}
	if e.fake.Has(res.Grant.ID) {
		t.Fatal("the rejected break-glass grant is still on the target")
	}
}

// Auto-approved requests name their grant too, so the request and the
// events of its filing point at what it made.
func TestFindingAutoApprovedRequestNamesItsGrant(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.GrantID == "" || res.Request.GrantID != res.Grant.ID {
		t.Fatalf("auto-approved request names grant %q, want %q", res.Request.GrantID, res.Grant.ID)
	}
	r, err := e.broker.GetRequest(as(alice), res.Request.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.GrantID != res.Grant.ID {
		t.Fatalf("stored request names grant %q, want %q", r.GrantID, res.Grant.ID)
	}
}

// A break-glass grant is self-approved and lasts at most the break-glass
// maximum. An extension without re-approval must not take it beyond that:
// the extra time would be self-approved, never broadcast, never reviewed.
func TestFindingBreakGlassGrantCannotBeExtendedBeyondItsMaximum(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/bg", BreakGlass: true, Reason: "the primary is down"})
	if err != nil {
		t.Fatal(err)
	}
	g := res.Grant
	if g == nil || g.ExpiresAt.Sub(g.StartsAt) != 15*time.Minute {
		t.Fatalf("break-glass grant: %+v", g)
	}
	_, err = e.broker.ExtendGrant(as(alice), g.ID, lapse.ExtendInput{Duration: lapse.Duration(time.Hour), Reason: "still broken"})
	wantCode(t, err, lapse.EINVALID)
	if got := e.grant(g.ID); !got.ExpiresAt.Equal(g.ExpiresAt) {
		t.Fatalf("the break-glass grant now ends %s, want %s", got.ExpiresAt, g.ExpiresAt)
	}

	// An approved grant of the same entitlement still extends.
	res, err = e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/bg"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	e.tick()
	ext, err := e.broker.ExtendGrant(as(alice), r.GrantID, lapse.ExtendInput{Duration: lapse.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if ext.Grant == nil {
		t.Fatalf("the approved grant was not extended: %+v", ext.Request)
	}
}

// request.extends is documented as "the grant an extension extends":
// conditions must see it when an extension is decided, or an auto_when
// meant for new requests only approves extensions too.
func TestFindingConditionsSeeRequestExtends(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/ext"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant == nil || res.Grant.State != lapse.GrantActive {
		t.Fatalf("new request: %s", res.Request.State)
	}
	ext, err := e.broker.ExtendGrant(as(alice), res.Grant.ID, lapse.ExtendInput{Duration: lapse.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if ext.Grant != nil || ext.Request.State != lapse.RequestPending {
		t.Fatalf("the extension was approved by an auto_when that excludes extensions: %s", ext.Request.State)
	}
	if got := e.grant(res.Grant.ID); !got.ExpiresAt.Equal(res.Grant.ExpiresAt) {
		t.Fatalf("the grant now ends %s, want %s", got.ExpiresAt, res.Grant.ExpiresAt)
	}
}

// request.channel is documented as how the request was filed: a
// condition on it must hold when the request is filed, not only when a
// scheduled grant starts.
func TestFindingConditionsSeeRequestChannel(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	_, err := e.broker.CreateRequest(lapse.WithChannel(as(ci), lapse.ChannelMachine), lapse.RequestInput{Entitlement: "db/nomachine"})
	wantCode(t, err, lapse.EFORBIDDEN)
	if n := e.fake.Calls(fake.Grant); n != 0 {
		t.Fatalf("%d grants provisioned through a channel the condition refuses", n)
	}
	res, err := e.broker.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/nomachine"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant == nil {
		t.Fatalf("through the API: %s", res.Request.State)
	}
}

// hookStore runs a function inside the transaction, when a request is
// inserted or an approval recorded: a policy reload that lands in the
// middle of a decision.
type hookStore struct {
	lapse.Store
	mu         sync.Mutex
	hook       func()
	failGrants bool
}

func (s *hookStore) set(f func()) {
	s.mu.Lock()
	s.hook = f
	s.mu.Unlock()
}

func (s *hookStore) fire() {
	s.mu.Lock()
	f := s.hook
	s.hook = nil
	s.mu.Unlock()
	if f != nil {
		f()
	}
}

func (s *hookStore) Update(ctx context.Context, fn func(tx lapse.Tx) error) error {
	return s.Store.Update(ctx, func(tx lapse.Tx) error { return fn(&hookTx{Tx: tx, s: s}) })
}

type hookTx struct {
	lapse.Tx
	s *hookStore
}

// UpdateGrant fails while failGrants is set: a store that cannot write
// the grant's row.
func (t *hookTx) UpdateGrant(ctx context.Context, g *lapse.Grant) error {
	t.s.mu.Lock()
	fail := t.s.failGrants
	t.s.mu.Unlock()
	if fail {
		return lapse.Errorf(lapse.EUNAVAILABLE, "injected: the grant cannot be written")
	}
	return t.Tx.UpdateGrant(ctx, g)
}

func (t *hookTx) InsertRequest(ctx context.Context, r *lapse.Request) error {
	t.s.fire()
	return t.Tx.InsertRequest(ctx, r)
}

func (t *hookTx) InsertApproval(ctx context.Context, a *lapse.Approval) error {
	t.s.fire()
	return t.Tx.InsertApproval(ctx, a)
}

// A decision is made under one policy: when a reload lands while an
// extension is decided, it is not applied by the old policy's rule and
// recorded under the new policy's version, which requires re-approval.
func TestFindingReloadDuringExtensionIsNotDecidedByTwoPolicies(t *testing.T) {
	hs := &hookStore{Store: sqltest.OpenSQLite(t)}
	e := newFindingsEnv(t, hs)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/night"})
	if err != nil {
		t.Fatal(err)
	}
	g := res.Grant
	strict := findingsPolicy()
	for _, ent := range strict.Entitlements {
		if ent.Name == "db/night" {
			ent.Approval = lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}
			ent.Extension = &lapse.ExtensionRule{MaxTotal: ent.Extension.MaxTotal, Reapprove: true}
		}
	}
	strictVersion, err := policy.Version(strict)
	if err != nil {
		t.Fatal(err)
	}
	hs.set(func() {
		if err := e.broker.SetPolicy(strict); err != nil {
			t.Error(err)
		}
	})
	ext, err := e.broker.ExtendGrant(as(alice), g.ID, lapse.ExtendInput{Duration: lapse.Duration(30 * time.Minute)})
	if e.broker.PolicyVersion() != strictVersion {
		t.Fatal("the reload did not happen")
	}
	if err == nil && ext.Grant != nil {
		// Applied: then only under the policy that allowed it, and
		// recorded so.
		evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{RequestID: ext.Request.ID})
		for _, ev := range evs {
			if ev.PolicyVersion == strictVersion {
				t.Fatalf("%s of an extension applied without re-approval records policy %s, which requires re-approval", ev.Type, ev.PolicyVersion)
			}
		}
	}
	wantCode(t, err, lapse.ECONFLICT)
	if got := e.grant(g.ID); !got.ExpiresAt.Equal(g.ExpiresAt) {
		t.Fatalf("extended by a rule no longer in force: ends %s, want %s", got.ExpiresAt, g.ExpiresAt)
	}
}

// The same for an approval: the vote is checked and recorded under one
// policy. Here the reload lands between the eligibility check and the
// vote's record and takes bob out of the approvers: the log must not say
// that bob approved under a policy in which he is no approver.
func TestFindingReloadDuringApprovalIsNotDecidedByTwoPolicies(t *testing.T) {
	hs := &hookStore{Store: sqltest.OpenSQLite(t)}
	e := newFindingsEnv(t, hs)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read", Reason: "incident 7"})
	if err != nil {
		t.Fatal(err)
	}
	changed := findingsPolicy()
	for _, ent := range changed.Entitlements {
		if ent.Name == "db/read" {
			ent.Approval = lapse.ApprovalRule{Required: 1, Approvers: []string{"carol"}}
		}
	}
	changedVersion, err := policy.Version(changed)
	if err != nil {
		t.Fatal(err)
	}
	hs.set(func() {
		if err := e.broker.SetPolicy(changed); err != nil {
			t.Error(err)
		}
	})
	_, err = e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{RequestID: res.Request.ID})
	for _, ev := range evs {
		if ev.Type == lapse.EventRequestApproved && ev.PolicyVersion == changedVersion {
			t.Fatalf("bob's approval is recorded under policy %s, in which he is no approver", ev.PolicyVersion)
		}
	}
	wantCode(t, err, lapse.ECONFLICT)
	r, _ := e.store.GetRequest(context.Background(), res.Request.ID)
	if r.State != lapse.RequestPending || len(r.Approvals) != 0 {
		t.Fatalf("request %s with %d approvals after a vote refused by a reload", r.State, len(r.Approvals))
	}
	// Once the reload is over, the vote is judged by the policy in force.
	_, err = e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
}

// The same for filing: an auto-approved grant is not made, and recorded
// under a policy that needs an approver.
func TestFindingReloadDuringFilingIsNotDecidedByTwoPolicies(t *testing.T) {
	hs := &hookStore{Store: sqltest.OpenSQLite(t)}
	e := newFindingsEnv(t, hs)
	changed := findingsPolicy()
	for _, ent := range changed.Entitlements {
		if ent.Name == "db/status" {
			ent.Approval = lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}
		}
	}
	hs.set(func() {
		if err := e.broker.SetPolicy(changed); err != nil {
			t.Error(err)
		}
	})
	_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/status"})
	wantCode(t, err, lapse.ECONFLICT)
	if n := e.fake.Calls(fake.Grant); n != 0 {
		t.Fatalf("%d grants provisioned for a request the policy in force sends to an approver", n)
	}
}

// A rejected review and the end of its grant are one write: a rejection
// is never recorded while its grant lives on (the reviewer could not
// record it again, and may not hold the revoke scope).
func TestFindingRejectedReviewAndTheEndOfItsGrantAreOneWrite(t *testing.T) {
	hs := &hookStore{Store: sqltest.OpenSQLite(t)}
	e := newFindingsEnv(t, hs)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/oncall", BreakGlass: true, Reason: "the primary is down"})
	if err != nil {
		t.Fatal(err)
	}
	hs.mu.Lock()
	hs.failGrants = true
	hs.mu.Unlock()
	_, err = e.broker.ReviewRequest(as(erin), res.Request.ID, lapse.ReviewInput{Outcome: lapse.ReviewRejected, Comment: "no incident"})
	if err == nil {
		t.Fatal("the review succeeded although its grant could not be ended")
	}
	hs.mu.Lock()
	hs.failGrants = false
	hs.mu.Unlock()
	r, _ := e.store.GetRequest(context.Background(), res.Request.ID)
	g := e.grant(res.Grant.ID)
	if r.Review.State == lapse.ReviewRejected && g.State == lapse.GrantActive {
		t.Fatal("the rejection is recorded, and the grant it should end is still active")
	}
	// The reviewer tries again, and it takes.
	if _, err := e.broker.ReviewRequest(as(erin), res.Request.ID, lapse.ReviewInput{Outcome: lapse.ReviewRejected, Comment: "no incident"}); err != nil {
		t.Fatal(err)
	}
	if g := e.grant(res.Grant.ID); g.State != lapse.GrantRevoking {
		t.Fatalf("after the rejection the grant is %s", g.State)
	}
}

// A look-alike with the digit 0 for the letter o is the requester: the
// confusable tables map 0 to O, which a lower-cased ID never contains.
func TestFindingZeroForOLookAlikeCannotApprove(t *testing.T) {
	e := newFindingsEnv(t, sqltest.OpenSQLite(t))
	oscar := &lapse.Principal{ID: "oscar", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}}
	twin := &lapse.Principal{ID: "0scar", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeApprove}}
	res, err := e.broker.CreateRequest(as(oscar), lapse.RequestInput{Entitlement: "db/read", Reason: "incident 7"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.broker.Approve(as(twin), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
}
