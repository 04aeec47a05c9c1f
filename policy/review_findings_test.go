package policy

import (
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// A break-glass grant that waits (behind a fence) is checked again when it
// starts like any other: the break-glass condition must still hold, or a
// requester who has gone off call still gets the self-approved grant.
func TestFindingRecheckEvaluatesTheBreakGlassCondition(t *testing.T) {
	ent := func() *lapse.Entitlement {
		return &lapse.Entitlement{Name: "db/write", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman},
			DefaultDuration: lapse.Duration(time.Hour), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}},
			BreakGlass: &lapse.BreakGlassRule{MaxDuration: lapse.Duration(15 * time.Minute), ReviewWithin: lapse.Duration(24 * time.Hour),
				Condition: `principal.id in on_call["dba"]`}}
	}
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	r := &lapse.Request{ID: "rq_1", Requester: *human("alice"), Entitlement: "db/write", Duration: lapse.Duration(15 * time.Minute),
		Reason: "the primary is down", BreakGlass: true, State: lapse.RequestApproved, CreatedAt: now, DecidedAt: now}

	onCall := compile(t, Document{Entitlements: []*lapse.Entitlement{ent()}, OnCall: map[string][]string{"dba": {"alice"}}})
	if err := onCall.Recheck(r, now.Add(time.Minute)); err != nil {
		t.Fatalf("on call: %v", err)
	}
	offCall := compile(t, Document{Entitlements: []*lapse.Entitlement{ent()}, OnCall: map[string][]string{"dba": {"bob"}}})
	if err := offCall.Recheck(r, now.Add(time.Minute)); err == nil {
		t.Fatal("a break-glass grant starts for a requester the break-glass condition no longer allows")
	}
	// A condition that cannot be evaluated is no, here too.
	broken := ent()
	broken.BreakGlass.Condition = `principal.id in on_call["nonexistent"]`
	if err := compile(t, Document{Entitlements: []*lapse.Entitlement{broken}}).Recheck(r, now.Add(time.Minute)); err == nil {
		t.Fatal("a break-glass condition that fails to evaluate let the grant start")
	}
}
