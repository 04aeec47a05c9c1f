package policy_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// tuesday is a Tuesday morning, 10:00 UTC.
var tuesday = time.Date(2026, 3, 3, 10, 0, 0, 0, time.UTC)

func hours(n float64) lapse.Duration { return lapse.Duration(time.Duration(n * float64(time.Hour))) }

// explainDoc has an entitlement for every path of Decide.
func explainDoc() policy.Document {
	return policy.Document{
		Groups: map[string][]string{"dba": {"dana", "dmitri", "dolores"}, "security": {"sam", "sofia"}},
		OnCall: map[string][]string{"dba": {"dmitri"}},
		Entitlements: []*lapse.Entitlement{
			{Name: "db/read", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindAgent}, Requesters: []string{"group:engineering", "group:dba"},
				DefaultDuration: hours(1), MaxDuration: hours(4), RequireReason: true, Agents: &lapse.AgentRule{Approval: lapse.AgentApprovalHuman},
				Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}, AutoWhen: `principal.id in on_call["dba"]`}},
			{Name: "db/write", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: hours(0.5), MaxDuration: hours(2),
				RequireTicket: true, TicketPattern: `OPS-[0-9]+`, Approval: lapse.ApprovalRule{Required: 2, Approvers: []string{"group:dba"}},
				BreakGlass: &lapse.BreakGlassRule{MaxDuration: hours(0.5), ReviewWithin: hours(24), Reviewers: []string{"group:security"}, Condition: `principal.id in on_call["dba"]`}},
			{Name: "db/ddl", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: hours(1), MaxDuration: hours(2), MaxScheduleAhead: hours(72),
				Condition: `request.starts_at.getHours() >= 6 && request.starts_at.getHours() < 9`,
				Approval: lapse.ApprovalRule{Stages: []lapse.ApprovalStage{
					{Name: "dba", Groups: []lapse.ApproverGroup{{Required: 1, Approvers: []string{"group:dba"}}}},
					{Name: "security", Groups: []lapse.ApproverGroup{{Required: 1, Approvers: []string{"group:security", "carol"}}}}}}},
			{Name: "api/status", Target: "api", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService}, DefaultDuration: hours(0.25), MaxDuration: hours(1),
				Approval: lapse.ApprovalRule{Auto: true}},
			{Name: "api/broken", Target: "api", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, MaxDuration: hours(1), DefaultDuration: hours(1),
				Condition: `request.nope == 1`, Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"carol"}}},
		},
	}
}

func mustCompile(t *testing.T, doc policy.Document) *policy.Policy {
	t.Helper()
	p, err := policy.Compile(doc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPolicyExplainAgreesWithDecide: over every combination of principal and
// request, the explanation's outcome and rule are Decide's, the first
// check that fails carries the rule of the refusal, and nothing fails
// when the request is not refused. This is what keeps the order of the
// explanation's input checks in step with Decide's.
func TestPolicyExplainAgreesWithDecide(t *testing.T) {
	p := mustCompile(t, explainDoc())
	principals := []*lapse.Principal{
		{ID: "erik", Kind: lapse.KindHuman, Groups: []string{"engineering"}},
		{ID: "dmitri", Kind: lapse.KindHuman},
		{ID: "sally", Kind: lapse.KindHuman, Groups: []string{"sales"}},
		{ID: "ci", Kind: lapse.KindService},
		{ID: "helper", Kind: lapse.KindAgent, Groups: []string{"engineering"}, Act: []string{"dmitri"}},
	}
	var inputs []lapse.RequestInput
	for _, name := range []string{"db/read", "db/write", "db/ddl", "api/status", "api/broken", "nope"} {
		for _, d := range []lapse.Duration{0, hours(0.5), hours(3), -1} {
			for _, reason := range []string{"", "short", "the primary is down, failing over"} {
				for _, ticket := range []string{"", "OPS-1", "JIRA-2", "bad ticket"} {
					for _, bg := range []bool{false, true} {
						for _, start := range []time.Time{{}, tuesday.Add(-time.Hour), tuesday.Add(21 * time.Hour), tuesday.Add(100 * time.Hour)} {
							inputs = append(inputs, lapse.RequestInput{Entitlement: name, Duration: d, Reason: reason, Ticket: ticket, BreakGlass: bg, StartsAt: start})
						}
					}
				}
			}
		}
	}
	seen := map[string]bool{}
	for _, pr := range principals {
		for _, in := range inputs {
			copyIn := in
			d := p.Decide(pr, &copyIn, tuesday)
			x := p.Explain(pr, in, tuesday)
			what := fmt.Sprintf("%s asks %+v", pr.ID, in)
			if x.Outcome != d.Outcome || x.Rule != d.Rule || x.Duration.D() != d.Duration {
				t.Fatalf("%s: explained %s/%s/%s, decided %s/%s/%s", what, x.Outcome, x.Rule, x.Duration, d.Outcome, d.Rule, d.Duration)
			}
			seen[d.Rule] = true
			i := slices.IndexFunc(x.Checks, func(c policy.Check) bool { return c.Result == policy.CheckFail })
			switch {
			case d.Outcome == policy.Refused && i < 0:
				t.Fatalf("%s: refused by %s, but no check fails: %+v", what, d.Rule, x.Checks)
			case d.Outcome == policy.Refused && x.Checks[i].Rule != d.Rule:
				t.Fatalf("%s: refused by %s, but the first failing check is %s (%s)", what, d.Rule, x.Checks[i].Name, x.Checks[i].Rule)
			case d.Outcome != policy.Refused && i >= 0:
				t.Fatalf("%s: %s, but check %s fails", what, d.Outcome, x.Checks[i].Name)
			case d.Outcome == policy.Refused && (x.Error == nil || x.Error.Code != lapse.ErrorCode(d.Err) || x.Error.Field != lapse.ErrorField(d.Err)):
				t.Fatalf("%s: error %+v, decided %v", what, x.Error, d.Err)
			}
		}
	}
	for _, rule := range []string{"catalog", "requesters", "input", "condition", "break_glass", "auto", "auto_when", "stages"} {
		if !seen[rule] {
			t.Errorf("no combination was decided by %s: the test no longer covers it", rule)
		}
	}
}

// TestPolicyExplainApprovers: a policy group lists its members except the
// requester and whoever they act for; a person entry naming the requester
// is marked excluded; an identity-provider group is named as such.
func TestPolicyExplainApprovers(t *testing.T) {
	p := mustCompile(t, explainDoc())
	x := p.Explain(&lapse.Principal{ID: "dana", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "db/ddl", StartsAt: tuesday.Add(21 * time.Hour)}, tuesday)
	if x.Outcome != policy.NeedsApproval || len(x.Stages) != 2 || x.StagesPass != policy.PassYes {
		t.Fatalf("dana's ddl: %+v", x)
	}
	dba := x.Stages[0].Groups[0].Approvers[0]
	if dba.Kind != policy.EntryPolicyGroup || !slices.Equal(dba.Members, []string{"dmitri", "dolores"}) || !slices.Equal(dba.Excluded, []string{"dana"}) {
		t.Errorf("group:dba for dana: %+v", dba)
	}
	if carol := x.Stages[1].Groups[0].Approvers[1]; carol.Kind != policy.EntryPerson || len(carol.Excluded) != 0 {
		t.Errorf("carol: %+v", carol)
	}

	// An agent acting for dmitri: dmitri is left out too, under any
	// spelling of his ID.
	agent := &lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Groups: []string{"engineering"}, Act: []string{"dmitri"}}
	x = p.Explain(agent, lapse.RequestInput{Entitlement: "db/read", Reason: "summarise slow queries"}, tuesday)
	if got := x.Stages[0].Groups[0].Approvers[0]; slices.Contains(got.Members, "dmitri") || !slices.Equal(got.Excluded, []string{"dmitri"}) {
		t.Errorf("agent for dmitri: %+v", got)
	}
	if x.Outcome != policy.NeedsApproval {
		t.Errorf("agent for the DBA on call: %s, want needs_approval (its auto_when does not apply)", x.Outcome)
	}

	// Stages that only the requester could pass.
	doc := explainDoc()
	doc.Groups["security"] = []string{"sam"}
	doc.Entitlements[2].Approval.Stages[1].Groups[0].Approvers = []string{"group:security"}
	p = mustCompile(t, doc)
	x = p.Explain(&lapse.Principal{ID: "sam", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "db/ddl", StartsAt: tuesday.Add(21 * time.Hour)}, tuesday)
	if x.Stages[1].Passes != policy.PassNo || x.StagesPass != policy.PassNo || x.Stages[0].Passes != policy.PassYes {
		t.Errorf("sam's ddl, sam the only security approver: %+v", x.Stages)
	}

	// An identity-provider group cannot be counted.
	x = p.Explain(&lapse.Principal{ID: "erik", Kind: lapse.KindHuman, Groups: []string{"engineering"}}, lapse.RequestInput{Entitlement: "api/broken"}, tuesday)
	if x.StagesPass != policy.PassYes {
		t.Errorf("carol alone: %s", x.StagesPass)
	}
}

// TestPolicyExplainConditions: each condition is shown with its source and
// what it gave; one that cannot be evaluated says so and refuses.
func TestPolicyExplainConditions(t *testing.T) {
	p := mustCompile(t, explainDoc())
	erik := &lapse.Principal{ID: "erik", Kind: lapse.KindHuman, Groups: []string{"engineering"}}
	check := func(x *policy.Explanation, name string) policy.Check {
		t.Helper()
		i := slices.IndexFunc(x.Checks, func(c policy.Check) bool { return c.Name == name })
		if i < 0 {
			t.Fatalf("no check %s in %+v", name, x.Checks)
		}
		return x.Checks[i]
	}
	x := p.Explain(erik, lapse.RequestInput{Entitlement: "db/ddl", StartsAt: tuesday.Add(4 * time.Hour)}, tuesday)
	if c := check(x, "condition"); c.Result != policy.CheckFail || c.Value != "false" || c.Source == "" {
		t.Errorf("ddl at 14:00: %+v", c)
	}
	x = p.Explain(erik, lapse.RequestInput{Entitlement: "api/broken"}, tuesday)
	if c := check(x, "condition"); c.Result != policy.CheckFail || len(c.Value) < 6 || c.Value[:6] != "error:" {
		t.Errorf("a condition that cannot be evaluated: %+v", c)
	}
	dmitri := &lapse.Principal{ID: "dmitri", Kind: lapse.KindHuman}
	x = p.Explain(dmitri, lapse.RequestInput{Entitlement: "db/read", Reason: "lag"}, tuesday)
	if c := check(x, "auto_when"); c.Result != policy.CheckPass || c.Value != "true" {
		t.Errorf("auto_when for the DBA on call: %+v", c)
	}
	if c := check(x, "stages"); c.Result != policy.CheckUnchecked {
		t.Errorf("stages after auto_when: %+v", c)
	}
}

// TestPolicyExplainBreakGlass: the path is available to the people its
// condition names, whatever the reason given, and its limits are shown.
func TestPolicyExplainBreakGlass(t *testing.T) {
	p := mustCompile(t, explainDoc())
	x := p.Explain(&lapse.Principal{ID: "dmitri", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "db/write", Ticket: "OPS-9"}, tuesday)
	bg := x.BreakGlass
	if bg == nil || !bg.Available || bg.MaxDuration != hours(0.5) || bg.ReviewWithin != hours(24) || bg.Value != "true" || bg.Reviewers[0].Kind != policy.EntryPolicyGroup {
		t.Fatalf("dmitri, on call: %+v", bg)
	}
	x = p.Explain(&lapse.Principal{ID: "erik", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "db/write", Ticket: "OPS-9"}, tuesday)
	if bg := x.BreakGlass; bg.Available || bg.Refusal == nil || bg.Refusal.Field != "break_glass" {
		t.Errorf("erik, not on call: %+v", bg)
	}
	// The request's other requirements hold under break glass too: the
	// refusal says which is missing.
	x = p.Explain(&lapse.Principal{ID: "dmitri", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "db/write"}, tuesday)
	if bg := x.BreakGlass; bg.Available || bg.Refusal == nil || bg.Refusal.Field != "ticket" {
		t.Errorf("dmitri without a ticket: %+v", bg)
	}
	x = p.Explain(&lapse.Principal{ID: "ci", Kind: lapse.KindService}, lapse.RequestInput{Entitlement: "api/status"}, tuesday)
	if x.BreakGlass != nil || x.Outcome != policy.AutoApproved {
		t.Errorf("no break-glass rule: %+v", x)
	}
}

// TestPolicyExplainUnknown: an entitlement that does not exist is one failed
// check, the catalog's.
func TestPolicyExplainUnknown(t *testing.T) {
	p := mustCompile(t, explainDoc())
	x := p.Explain(&lapse.Principal{ID: "erik", Kind: lapse.KindHuman}, lapse.RequestInput{Entitlement: "nope"}, tuesday)
	if x.Outcome != policy.Refused || x.Rule != "catalog" || len(x.Checks) != 1 || x.Error.Code != lapse.ENOTFOUND || x.Version != p.Version() {
		t.Errorf("%+v", x)
	}
}
