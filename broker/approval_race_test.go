package broker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// The race of TestConcurrentApprovalsHaveOneOutcome: 50 approvals and one
// deny on one fresh 2-of-3 request, released together, raceIterations times
// on each database.
const (
	raceIterations = 200
	raceApprovals  = 50
	raceGroup      = "race-approvers"
)

// raceRequester files every request of the race. She is in the approvers'
// group and holds the approve scope, so only her being the requester keeps
// her votes out.
var raceRequester = &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{raceGroup},
	Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove}}

// raceEntitlements need 2 approvals from a1, a2 and a3: named by ID, or
// through a group that also holds look-alike accounts of them (and the
// requester), which must count as the person they look like.
func raceEntitlements() []*lapse.Entitlement {
	h := lapse.Duration(time.Hour)
	return []*lapse.Entitlement{
		{Name: "race/by-id", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Required: 2, Approvers: []string{"a1", "a2", "a3"}}},
		{Name: "race/by-group", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Required: 2, Approvers: []string{"group:" + raceGroup}}},
	}
}

// spelled returns the principal a credential for this spelling of an ID
// authenticates as: the ID through lapse.NormalizeID, as authn stores it.
func spelled(tb testing.TB, spelling string, kind lapse.PrincipalKind, groups []string, scopes ...string) *lapse.Principal {
	tb.Helper()
	id, err := lapse.NormalizeID(spelling)
	if err != nil {
		tb.Fatalf("NormalizeID(%q): %v", spelling, err)
	}
	return &lapse.Principal{ID: id, Kind: kind, Name: spelling, Groups: groups, Scopes: scopes}
}

// raceSpellings are ways to write one identity that NormalizeID accepts:
// case, surrounding space, full-width letters, and a Cyrillic look-alike
// (a different normalised ID with the same confusable skeleton).
func raceSpellings(id string) []string {
	upper := strings.ToUpper(id)
	full := strings.Map(func(r rune) rune {
		if r >= '!' && r <= '~' {
			return r - '!' + '！' // the full-width form of printable ASCII
		}
		return r
	}, id)
	cyrillic := strings.Replace(id, "a", "\u0430", 1) // Cyrillic а
	return []string{id, upper, "  " + id + " ", "\t" + upper + "\n", full, cyrillic}
}

// raceVoter is one caller of the race.
type raceVoter struct {
	p    *lapse.Principal
	deny bool
}

// raceVoters returns the approvers' pool (every spelling of a1, a2, a3 and
// of the requester, and callers who are never eligible) and the spellings
// in which each of a1, a2, a3 may deny.
func raceVoters(tb testing.TB) (pool []*lapse.Principal, deniers [][]*lapse.Principal) {
	tb.Helper()
	group := []string{raceGroup}
	for _, id := range []string{"a1", "a2", "a3"} {
		var mine []*lapse.Principal
		for _, s := range raceSpellings(id) {
			mine = append(mine, spelled(tb, s, lapse.KindHuman, group, lapse.ScopeRead, lapse.ScopeApprove))
		}
		pool = append(pool, mine...)
		deniers = append(deniers, mine)
	}
	for _, s := range raceSpellings(raceRequester.ID) {
		pool = append(pool, spelled(tb, s, lapse.KindHuman, group, lapse.ScopeAdmin))
	}
	pool = append(pool,
		spelled(tb, "eve", lapse.KindHuman, nil, lapse.ScopeApprove),         // in no list or group
		spelled(tb, "svc:bot", lapse.KindService, group, lapse.ScopeApprove), // not a person
		spelled(tb, "A1", lapse.KindHuman, group, lapse.ScopeRead),           // a1's credential without scope approve
		&lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Groups: group, Act: []string{"a2"}, // an agent acting for a2
			Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}},
	)
	return pool, deniers
}

// raceOutcome is what one call of the race returned.
type raceOutcome struct {
	voter raceVoter
	req   *lapse.Request
	err   error
}

// TestConcurrentApprovalsHaveOneOutcome: 50 concurrent approvals and one
// deny on a 2-of-3 request, raceIterations times on SQLite and on
// PostgreSQL, end each time in exactly one terminal state by the
// documented rule: approvals count per distinct eligible human; a deny
// that lands before quorum decides the request; once decided nothing
// changes it; at most one grant per request.
func TestConcurrentApprovalsHaveOneOutcome(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) {
			e := newEnv(t, db.open(t))
			if err := e.broker.SetCatalog(append(catalog(), raceEntitlements()...)); err != nil {
				t.Fatal(err)
			}
			pool, deniers := raceVoters(t)
			rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: iteration i always has the same lineup (not the same interleaving)
			counts := map[lapse.RequestState]int{}
			for i := range raceIterations {
				ent := raceEntitlements()[i%2]
				lineup := make([]raceVoter, 0, raceApprovals+1)
				for j := range raceApprovals {
					lineup = append(lineup, raceVoter{p: pool[(j+i)%len(pool)]})
				}
				mine := deniers[i%3]
				denier := mine[(i/3)%len(mine)]
				if !eligible(ent, denier) {
					denier = mine[0]
				}
				lineup = append(lineup, raceVoter{p: denier, deny: true})
				rng.Shuffle(len(lineup), func(a, b int) { lineup[a], lineup[b] = lineup[b], lineup[a] })

				res, err := e.broker.CreateRequest(as(raceRequester), lapse.RequestInput{Entitlement: ent.Name})
				if err != nil {
					t.Fatalf("iteration %d: create request: %v", i, err)
				}
				out := raceOnce(e, res.Request.ID, lineup)
				state := checkRace(t, e, fmt.Sprintf("iteration %d (%s)", i, ent.Name), ent, res.Request.ID, out)
				counts[state]++
			}
			t.Logf("%d races: %d approved, %d denied", raceIterations, counts[lapse.RequestApproved], counts[lapse.RequestDenied])
		})
	}
}

// raceOnce starts one goroutine per voter, releases them together, and
// returns what each call returned, in lineup order.
func raceOnce(e *env, id string, lineup []raceVoter) []raceOutcome {
	out := make([]raceOutcome, len(lineup))
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	for k, v := range lineup {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ctx := as(v.p)
			ready.Done()
			<-start
			var r *lapse.Request
			var err error
			if v.deny {
				r, err = e.broker.Deny(ctx, id, lapse.DecisionInput{Comment: "no"})
			} else {
				r, err = e.broker.Approve(ctx, id, lapse.DecisionInput{})
			}
			out[k] = raceOutcome{voter: v, req: r, err: err}
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	return out
}

// eligible is the documented rule for who may decide a request of ent
// filed by raceRequester: a caller with scope approve who is an eligible
// person.
func eligible(ent *lapse.Entitlement, p *lapse.Principal) bool {
	return p.HasScope(lapse.ScopeApprove) && eligiblePerson(ent, p)
}

// eligiblePerson says whether p, as recorded on a vote (without the
// credential's scopes), may decide a request of ent filed by
// raceRequester: a person named by the entitlement's approvers, and not
// the requester under any spelling.
func eligiblePerson(ent *lapse.Entitlement, p *lapse.Principal) bool {
	return p.Kind == lapse.KindHuman && !lapse.SameHuman(p.ID, raceRequester.ID) && lapse.Matches(ent.Approval.Approvers, p)
}

// checkRace checks one race against the documented rule and returns the
// request's final state.
func checkRace(t *testing.T, e *env, what string, ent *lapse.Entitlement, id string, out []raceOutcome) lapse.RequestState {
	t.Helper()
	ctx := context.Background()
	r, err := e.store.GetRequest(ctx, id)
	if err != nil {
		t.Fatalf("%s: get request: %v", what, err)
	}
	if r.State != lapse.RequestApproved && r.State != lapse.RequestDenied {
		t.Fatalf("%s: state %s after every vote, want approved or denied", what, r.State)
	}

	// The stored votes: each from an eligible person, bound to the
	// request, at most one per person however spelled.
	humans := map[string]string{}
	approves, denies := 0, 0
	for _, a := range r.Approvals {
		if !eligiblePerson(ent, &a.Approver) {
			t.Fatalf("%s: a vote of %q (%s) was recorded; they may not decide it", what, a.Approver.ID, a.Approver.Kind)
		}
		if a.RequestHash != r.Hash {
			t.Fatalf("%s: the vote of %q is bound to %q, not the request's hash", what, a.Approver.ID, a.RequestHash)
		}
		key := lapse.HumanKey(a.Approver.ID)
		if prev, dup := humans[key]; dup {
			t.Fatalf("%s: %q and %q both voted: one person, two votes", what, prev, a.Approver.ID)
		}
		humans[key] = a.Approver.ID
		switch a.Decision {
		case lapse.DecisionApprove:
			approves++
		case lapse.DecisionDeny:
			denies++
		default:
			t.Fatalf("%s: vote of %q has decision %q", what, a.Approver.ID, a.Decision)
		}
	}

	// The log: one request.created, then the votes, then exactly one
	// request.decided, and no vote after it.
	evs, err := e.store.ListEvents(ctx, lapse.EventFilter{RequestID: id, Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatalf("%s: list events: %v", what, err)
	}
	var (
		created, decided []*lapse.Event
		votes            []*lapse.Event
		grantCreated     []*lapse.Event
	)
	for _, ev := range evs {
		switch ev.Type {
		case lapse.EventRequestCreated:
			created = append(created, ev)
		case lapse.EventRequestApproved, lapse.EventRequestDenied:
			if len(decided) > 0 {
				t.Fatalf("%s: %s by %s (seq %d) after the request was decided (seq %d)", what, ev.Type, ev.ActorID, ev.Seq, decided[0].Seq)
			}
			votes = append(votes, ev)
		case lapse.EventRequestDecided:
			decided = append(decided, ev)
		case lapse.EventGrantCreated:
			grantCreated = append(grantCreated, ev)
		}
	}
	if len(created) != 1 || len(decided) != 1 {
		t.Fatalf("%s: %d request.created and %d request.decided events, want 1 and 1: %s", what, len(created), len(decided), eventList(evs))
	}
	if d := decided[0]; d.Outcome != string(r.State) {
		t.Fatalf("%s: request.decided says %q, the request is %s", what, d.Outcome, r.State)
	}
	if len(votes) == 0 || len(votes) != len(r.Approvals) {
		t.Fatalf("%s: %d vote events for %d stored votes: %s", what, len(votes), len(r.Approvals), eventList(evs))
	}
	stored := map[string]lapse.Decision{}
	for _, a := range r.Approvals {
		stored[a.Approver.ID] = a.Decision
	}
	approvesBefore := 0
	for k, ev := range votes {
		want := lapse.DecisionApprove
		if ev.Type == lapse.EventRequestDenied {
			want = lapse.DecisionDeny
		}
		if d, ok := stored[ev.ActorID]; !ok || d != want {
			t.Fatalf("%s: %s by %q has no matching stored vote", what, ev.Type, ev.ActorID)
		}
		if want == lapse.DecisionDeny && k != len(votes)-1 {
			t.Fatalf("%s: votes were counted after a deny: %s", what, eventList(evs))
		}
		if want == lapse.DecisionApprove {
			approvesBefore++
		}
	}

	grants, err := e.store.ListGrants(ctx, lapse.GrantFilter{RequestID: id, Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatalf("%s: list grants: %v", what, err)
	}
	switch r.State {
	case lapse.RequestApproved:
		if approves != 2 || denies != 0 || approvesBefore != 2 {
			t.Fatalf("%s: approved with %d approvals and %d denials recorded, want exactly 2 and 0: %s", what, approves, denies, eventList(evs))
		}
		if len(grants) != 1 || grants[0].ID != r.GrantID || len(grantCreated) != 1 || grantCreated[0].GrantID != r.GrantID {
			t.Fatalf("%s: approved with grant %q, %d grants stored and %d grant.created events, want exactly one", what, r.GrantID, len(grants), len(grantCreated))
		}
	case lapse.RequestDenied:
		if denies != 1 || approves >= 2 {
			t.Fatalf("%s: denied with %d approvals and %d denials recorded, want fewer than 2 and 1: %s", what, approves, denies, eventList(evs))
		}
		if r.GrantID != "" || len(grants) != 0 || len(grantCreated) != 0 {
			t.Fatalf("%s: denied, yet grant %q, %d grants stored, %d grant.created events", what, r.GrantID, len(grants), len(grantCreated))
		}
	}

	// Every call: accepted only from an eligible person, refused with a
	// stable code otherwise.
	accepted := map[string]lapse.Decision{}
	for _, o := range out {
		p, code := o.voter.p, lapse.ErrorCode(o.err)
		verb := "approve"
		if o.voter.deny {
			verb = "deny"
		}
		switch {
		case !p.HasScope(lapse.ScopeApprove):
			if code != lapse.EFORBIDDEN {
				t.Fatalf("%s: %s as %q without scope approve: %v, want %s", what, verb, p.Name, o.err, lapse.EFORBIDDEN)
			}
		case !eligible(ent, p):
			// Refused as not allowed, or, once decided, as too late.
			if code != lapse.EFORBIDDEN && code != lapse.ECONFLICT {
				t.Fatalf("%s: %s as %q (%s, not eligible): %v, want %s or %s", what, verb, p.Name, p.Kind, o.err, lapse.EFORBIDDEN, lapse.ECONFLICT)
			}
		case o.err != nil:
			// Already decided, or this person already voted.
			if code != lapse.ECONFLICT {
				t.Fatalf("%s: %s as %q (eligible): %v, want success or %s", what, verb, p.Name, o.err, lapse.ECONFLICT)
			}
		default:
			d := lapse.DecisionApprove
			if o.voter.deny {
				d = lapse.DecisionDeny
			}
			if _, dup := accepted[p.ID]; dup {
				t.Fatalf("%s: two %s calls as %q both succeeded", what, verb, p.ID)
			}
			accepted[p.ID] = d
			if o.req == nil || (d == lapse.DecisionDeny) != (o.req.State == lapse.RequestDenied) {
				t.Fatalf("%s: accepted %s as %q returned %+v", what, verb, p.Name, o.req)
			}
		}
	}
	if len(accepted) != len(stored) {
		t.Fatalf("%s: %d calls succeeded for %d stored votes", what, len(accepted), len(stored))
	}
	for id, d := range accepted {
		if stored[id] != d {
			t.Fatalf("%s: the accepted %s of %q is not what was stored (%q)", what, d, id, stored[id])
		}
	}
	return r.State
}

// eventList shows events compactly for a failure message.
func eventList(evs []*lapse.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "\n  %d %s %s %s", ev.Seq, ev.Type, ev.ActorID, ev.Outcome)
	}
	return b.String()
}
