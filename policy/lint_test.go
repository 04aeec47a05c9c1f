package policy_test

import (
	"slices"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

func ent(name string, rule lapse.ApprovalRule) *lapse.Entitlement {
	return &lapse.Entitlement{Name: name, Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, MaxDuration: hours(1), DefaultDuration: hours(1), Approval: rule}
}

func stage(name string, groups ...lapse.ApproverGroup) lapse.ApprovalStage {
	return lapse.ApprovalStage{Name: name, Groups: groups}
}

// TestPolicyLint: each warning, from the entitlement that has it, at its field;
// and none from the policy that is fine.
func TestPolicyLint(t *testing.T) {
	groups := map[string][]string{"ghosts": {}, "pair": {"ann", "bob"}, "solo": {"sam"}, "x": {"xena", "xavier"}, "dba": {"dana", "dmitri", "dolores"}}
	onCall := map[string][]string{"dba": {"dmitri"}, "empty": {}}

	nobody := ent("nobody", lapse.ApprovalRule{Required: 1, Approvers: []string{"group:ghosts"}})
	nobody.Requesters = []string{"group:ghosts"}
	glass := ent("glass", lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}})
	glass.TicketPattern = "OPS-[0-9]+"
	glass.BreakGlass = &lapse.BreakGlassRule{MaxDuration: hours(0.25), ReviewWithin: hours(24 * 14), Reviewers: []string{"group:ghosts"}, Condition: `principal.id in on_call["sre"]`}
	machine := ent("machine", lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}})
	machine.Lanes = []lapse.PrincipalKind{lapse.KindService}
	onCallRule := ent("oncall", lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}, AutoWhen: `principal.id in on_call.empty || "dba" in on_call`})
	onCallRule.Condition = `has(on_call.maybe) || on_call[request.reason].size() > 0`

	tests := []struct {
		e     *lapse.Entitlement
		codes []string // in order
		field []string
	}{
		{nobody, []string{policy.LintNobodyRequests, policy.LintNobodyApproves}, []string{"requesters", "approval.approvers"}},
		{ent("quorum", lapse.ApprovalRule{Required: 2, Approvers: []string{"group:solo"}}), []string{policy.LintQuorumUnreachable}, []string{"approval.required"}},
		{ent("overlap", lapse.ApprovalRule{Stages: []lapse.ApprovalStage{stage("both",
			lapse.ApproverGroup{Required: 2, Approvers: []string{"group:x"}}, lapse.ApproverGroup{Required: 1, Approvers: []string{"xena"}})}}),
			[]string{policy.LintQuorumUnreachable}, []string{"approval.stages[0]"}},
		// Two stages, each fine alone, that need more people than there
		// are: one human counts once in all the stages.
		{ent("serial", lapse.ApprovalRule{Stages: []lapse.ApprovalStage{
			stage("one", lapse.ApproverGroup{Required: 2, Approvers: []string{"group:pair"}}),
			stage("two", lapse.ApproverGroup{Required: 1, Approvers: []string{"ann"}})}}),
			[]string{policy.LintQuorumUnreachable}, []string{"approval"}},
		{ent("pair", lapse.ApprovalRule{Required: 2, Approvers: []string{"group:pair"}}), []string{policy.LintSelfBlocks}, []string{"approval"}},
		{glass, []string{policy.LintTicketOptional, policy.LintLateReview, policy.LintNobodyReviews, policy.LintUnknownOnCall},
			[]string{"ticket_pattern", "break_glass.review_within", "break_glass.reviewers", "break_glass.condition"}},
		{machine, []string{policy.LintMachineWaits}, []string{"lanes"}},
		{onCallRule, []string{policy.LintEmptyOnCall}, []string{"approval.auto_when"}},
		// Fine: an identity-provider group cannot be counted, so it is not
		// linted; 2 of 3 DBAs leaves 2 when one of them asks.
		{ent("idp", lapse.ApprovalRule{Required: 5, Approvers: []string{"group:engineering"}}), nil, nil},
		{ent("dba", lapse.ApprovalRule{Required: 2, Approvers: []string{"group:dba"}, AutoWhen: `principal.id in on_call["dba"]`}), nil, nil},
		{ent("auto", lapse.ApprovalRule{Auto: true}), nil, nil},
	}
	for _, tc := range tests {
		p := mustCompile(t, policy.Document{Entitlements: []*lapse.Entitlement{tc.e}, Groups: groups, OnCall: onCall})
		var codes, fields []string
		for _, w := range p.Lint() {
			if w.Entitlement != tc.e.Name || w.Message == "" {
				t.Errorf("%s: %+v", tc.e.Name, w)
			}
			codes, fields = append(codes, w.Code), append(fields, w.Field)
		}
		if !slices.Equal(codes, tc.codes) || !slices.Equal(fields, tc.field) {
			t.Errorf("%s: warnings %v at %v, want %v at %v", tc.e.Name, codes, fields, tc.codes, tc.field)
		}
	}
}

// TestPolicyOnCallLists: the lists a condition names literally, once each;
// existence tests and lists chosen at run time are not.
func TestPolicyOnCallLists(t *testing.T) {
	for src, want := range map[string][]string{
		`principal.id in on_call["dba"]`:                                    {"dba"},
		`principal.id in on_call.sre || principal.id in on_call["dba"]`:     {"sre", "dba"},
		`"dba" in on_call && principal.id in on_call["dba"]`:                {"dba"},
		`has(on_call.maybe) && principal.id in on_call[request.reason]`:     nil,
		`on_call.exists(k, k == "x")`:                                       nil,
		`request.duration < duration("1h") && principal.kind == "human"`:    nil,
		`principal.id in on_call[?"opt"].orValue([])`:                       nil, // optional syntax is not enabled; it does not compile
		`on_call["a"].exists(id, id == principal.id) && on_call["b"] != []`: {"a", "b"},
	} {
		if got := policy.OnCallLists(src); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", src, got, want)
		}
	}
}
