package policy_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

const fixtureSrc = `policy: ../lapse.yaml
now: 2026-03-03T10:00:00Z
cases:
  - name: erik reads after a DBA
    principal: {id: " Erik ", groups: [Engineering, "group:Ops"]}
    request: {entitlement: db/read, duration: 2h, reason: "  lag  "}
    approvals:
      - {id: dana}
      - {id: Dolores, decision: deny}
    expect:
      outcome: needs_approval
      rule: stages
      duration: 2h
      stages:
        - name: approval
          groups: [{required: 1, approvers: ["group:DBA"]}]
      progress: {done: true}
  - name: at night
    now: 2026-03-04T03:00:00+01:00
    principal: {id: helper, kind: agent, groups: [engineering], act: [Dmitri]}
    request: {entitlement: db/read, starts_at: 2026-03-04T07:00:00Z, break_glass: true}
    expect:
      outcome: refused
      error: {code: forbidden, field: break_glass}
`

// TestPolicyParseFixture: IDs and groups normalised as the identity layer
// would, times and durations parsed, cases positioned.
func TestPolicyParseFixture(t *testing.T) {
	fx, err := policy.ParseFixture("db_test.yaml", []byte(fixtureSrc))
	if err != nil {
		t.Fatal(err)
	}
	if fx.Policy != "../lapse.yaml" || len(fx.Cases) != 2 {
		t.Fatalf("%+v", fx)
	}
	c := fx.Cases[0]
	if c.Line != 4 || c.Principal.ID != "erik" || !slices.Equal(c.Principal.Groups, []string{"engineering", "ops"}) || c.Principal.Kind != lapse.KindHuman {
		t.Errorf("case 0: line %d, principal %+v", c.Line, c.Principal)
	}
	if !c.Now.Equal(tuesday) || c.Input.Duration != hours(2) || c.Input.Reason != "  lag  " {
		t.Errorf("case 0: now %v, input %+v", c.Now, c.Input)
	}
	if len(c.Approvals) != 2 || c.Approvals[1].Approver.ID != "dolores" || c.Approvals[1].Decision != lapse.DecisionDeny || c.Approvals[0].Decision != lapse.DecisionApprove {
		t.Errorf("case 0: approvals %+v", c.Approvals)
	}
	if x := c.Expect; x.Stages[0].Groups[0].Approvers[0] != "group:dba" || x.Progress.Done == nil || !*x.Progress.Done {
		t.Errorf("case 0: expect %+v", x)
	}
	c = fx.Cases[1]
	if c.Now.UTC().Hour() != 2 || c.Principal.Kind != lapse.KindAgent || !slices.Equal(c.Principal.Act, []string{"dmitri"}) || !c.Input.BreakGlass {
		t.Errorf("case 1: %+v", c)
	}
}

// TestPolicyParseFixtureErrors: every mistake, at its line and field, with code
// invalid; an unknown key is refused.
func TestPolicyParseFixtureErrors(t *testing.T) {
	_, err := policy.ParseFixture("x_test.yaml", []byte("policy: a.yaml\nnow: 2026-03-03T10:00:00Z\ncases:\n  - name: a\n    principal: {id: a}\n    request: {entitlement: e}\n    expect: {outcome: refused, eror: {}}\n"))
	var fe *policy.FixtureError
	if !errors.As(err, &fe) || fe.Line != 7 || !strings.Contains(err.Error(), `unknown key "eror"`) || lapse.ErrorCode(fe) != lapse.EINVALID {
		t.Errorf("unknown key: %v", err)
	}

	src := `cases:
  - name: a
    principal: {kind: robot, groups: ["a b"]}
    request: {duration: soon, starts_at: tomorrow}
    approvals: [{id: b, decision: maybe}]
    expect: {outcome: granted, duration: -}
  - name: a
    now: 2026-03-03T10:00:00Z
    principal: {id: a}
    request: {entitlement: e}
    expect: {outcome: auto_approved, error: {}, progress: {done: true, stage: x}}
`
	_, err = policy.ParseFixture("x_test.yaml", []byte(src))
	if err == nil {
		t.Fatal("no error")
	}
	var fields []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		// A key missing at the top concerns the whole file (line 0).
		if !errors.As(e, &fe) || (fe.Line == 0) != (fe.Field == "policy") || fe.File != "x_test.yaml" {
			t.Errorf("not positioned: %v", e)
		}
		fields = append(fields, fe.Field)
	}
	for _, want := range []string{"policy", "cases[0].now", "cases[0].principal.id", "cases[0].principal.kind", "cases[0].principal.groups[0]",
		"cases[0].request.entitlement", "cases[0].request.duration", "cases[0].request.starts_at", "cases[0].approvals[0].decision",
		"cases[0].expect.outcome", "cases[0].expect.duration", "cases[1].expect.error", "cases[1].expect.progress.stage"} {
		if !slices.Contains(fields, want) {
			t.Errorf("no error at %s in:\n%v", want, err)
		}
	}

	// Two cases with one name cannot be told apart in the output.
	dup := "policy: a.yaml\nnow: 2026-03-03T10:00:00Z\ncases:\n" + strings.Repeat("  - {name: a, principal: {id: a}, request: {entitlement: e}, expect: {outcome: refused}}\n", 2)
	if _, err := policy.ParseFixture("x_test.yaml", []byte(dup)); err == nil || !strings.Contains(err.Error(), "already at line 4") {
		t.Errorf("duplicate names: %v", err)
	}
}

// TestPolicyRun: a case that holds has no diffs; one that does not names each
// field that differs, want then got, and notes the refusal.
func TestPolicyRun(t *testing.T) {
	p := mustCompile(t, explainDoc())
	fx, err := policy.ParseFixture("db_test.yaml", []byte(fixtureSrc))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range fx.Cases {
		if r := p.Run(c); !r.Passed() {
			t.Errorf("%s: %v %v", c.Name, r.Diffs, r.Notes)
		}
	}
	// The case is not changed by running it (Decide trims the reason).
	if fx.Cases[0].Input.Reason != "  lag  " {
		t.Errorf("Run changed the case's input: %q", fx.Cases[0].Input.Reason)
	}

	wrong := `policy: x.yaml
now: 2026-03-03T10:00:00Z
cases:
  - name: wrong
    principal: {id: erik, groups: [engineering]}
    request: {entitlement: db/ddl, starts_at: 2026-03-03T11:00:00Z}
    approvals: [{id: erik}, {id: dana}]
    expect:
      outcome: needs_approval
      rule: stages
      duration: 2h
      stages: [{name: dba}, {name: security}, {name: extra}]
      progress: {done: true, missing: []}
  - name: wrong stages
    principal: {id: erik, groups: [engineering]}
    request: {entitlement: db/ddl, starts_at: 2026-03-04T07:00:00Z}
    approvals: [{id: sam}]
    expect:
      outcome: needs_approval
      stages:
        - {name: dba, groups: [{required: 2, approvers: [dana]}, {}]}
        - {groups: [{name: sec, required: 1, approvers: [carol, "group:security"]}]}
      progress: {stage: security}
  - name: expects an error
    principal: {id: erik, groups: [engineering]}
    request: {entitlement: api/status}
    expect: {outcome: refused, error: {code: forbidden, field: entitlement}}
`
	fx, err = policy.ParseFixture("wrong_test.yaml", []byte(wrong))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{
		{
			"outcome: want needs_approval, got refused",
			"rule: want stages, got condition",
			"duration: want 2h, got 0s",
			"stages: want 3 stages, got 0 stages",
			"progress.done: want true, got false",
			"progress.missing: want [], got [1 more of [group:security carol]]",
		},
		{
			"stages[0].groups: want 2 groups, got 1 group",
			"stages[1].groups[0].name: want sec, got (none)",
			"progress.stage: want security, got dba",
		},
		{
			"outcome: want refused, got auto_approved",
			"error: want forbidden on entitlement, got none",
		},
	} {
		r := p.Run(fx.Cases[i])
		if !slices.Equal(r.Diffs, want) {
			t.Errorf("%s: diffs\n%s\nwant\n%s", fx.Cases[i].Name, strings.Join(r.Diffs, "\n"), strings.Join(want, "\n"))
		}
	}
	if r := p.Run(fx.Cases[0]); len(r.Notes) != 1 || !strings.HasPrefix(r.Notes[0], "refused by condition: ") || r.Progress == nil {
		t.Errorf("notes %v, progress %v", r.Notes, r.Progress)
	}
}
