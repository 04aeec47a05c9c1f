package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/fake"
)

// An agent's approved grant that has not started is checked again on its
// sponsor's side too: once the policy no longer lets the sponsor request
// the entitlement, the agent does not get it either.
func TestAgentGrantRechecksTheSponsor(t *testing.T) {
	forBoth(t, func(t *testing.T, e *env) {
		// alice (a developer) gives helper a mandate for db/read; the
		// request waits for an approver.
		e.mandate(alice, "helper", time.Hour, "db/read")
		res, err := e.broker.CreateRequest(as(helper), lapse.RequestInput{Entitlement: "db/read", Reason: "nightly report"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Request.Delegation != lapse.DelegationMandate {
			t.Fatalf("delegation %q", res.Request.Delegation)
		}
		// Developers may no longer ask for db/read; then bob approves the
		// request that was already filed.
		cat := agentCatalog()
		for _, ent := range cat {
			if ent.Name == "db/read" {
				ent.Requesters = []string{"group:admins"}
			}
		}
		r, err := e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.broker.SetCatalog(cat); err != nil {
			t.Fatal(err)
		}
		e.tick()
		e.tick()
		g := e.grant(r.GrantID)
		if n := e.fake.CallsFor(fake.Grant, g.ID); n != 0 {
			t.Fatal("provisioned for an agent whose sponsor may no longer request it")
		}
		if g.State != lapse.GrantRevoked || g.EndReason != lapse.EndCancelled {
			t.Fatalf("grant %s, %s", g.State, g.EndReason)
		}
		evs, _ := e.store.ListEvents(context.Background(), lapse.EventFilter{GrantID: g.ID})
		if !slices.ContainsFunc(evs, func(ev *lapse.Event) bool { return ev.Type == lapse.EventGrantCancelled }) {
			t.Fatal("no grant.cancelled event")
		}
	})
}
