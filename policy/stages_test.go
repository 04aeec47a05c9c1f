package policy

import (
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

func human(id string, groups ...string) *lapse.Principal {
	return &lapse.Principal{ID: id, Kind: lapse.KindHuman, Groups: groups}
}

func votes(ps ...*lapse.Principal) []*lapse.Approval {
	var out []*lapse.Approval
	for _, p := range ps {
		out = append(out, &lapse.Approval{Approver: *p, Decision: lapse.DecisionApprove})
	}
	return out
}

func compile(t *testing.T, doc Document) *Policy {
	t.Helper()
	p, err := Compile(doc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Two groups that must both approve: a person in both fills one place
// only, and the order of votes never decides the outcome.
func TestProgressMatchesEachHumanOnce(t *testing.T) {
	rule := lapse.ApprovalRule{Stages: []lapse.ApprovalStage{{Groups: []lapse.ApproverGroup{
		{Required: 1, Approvers: []string{"group:dba"}},
		{Required: 1, Approvers: []string{"group:sec"}},
	}}}}
	p := compile(t, Document{})
	req := human("alice")
	both := human("bob", "dba", "sec")
	dba := human("carol", "dba")
	sec := human("dave", "sec")
	for _, c := range []struct {
		name string
		v    []*lapse.Approval
		done bool
	}{
		{"one human in both groups", votes(both), false},
		{"the same human twice", votes(both, both), false},
		{"both-group human first, then dba", votes(both, dba), true},
		{"dba first, then both-group human", votes(dba, both), true},
		{"two of the same group", votes(dba, human("erin", "dba")), false},
		{"one of each", votes(sec, dba), true},
		{"requester's own vote never counts", votes(human("alice", "dba", "sec"), sec), false},
		{"a look-alike of the requester never counts", votes(human("\u0430lice", "dba"), sec), false},
	} {
		if got := p.Progress(rule, req, c.v); got.Done != c.done {
			t.Errorf("%s: done = %v, want %v (%+v)", c.name, got.Done, c.done, got)
		}
	}
}

// A group the policy defines itself is the policy's: an identity
// provider's group of the same name does not make someone a member.
func TestPolicyGroupsAreAuthoritative(t *testing.T) {
	p := compile(t, Document{Groups: map[string][]string{"leads": {"dave"}}})
	if !p.Matches([]string{"group:leads"}, human("dave")) {
		t.Error("a member listed by the policy is not matched")
	}
	if p.Matches([]string{"group:leads"}, human("mallory", "leads")) {
		t.Error("an identity provider's claim made someone a member of a policy group")
	}
	if !p.Matches([]string{"group:dba"}, human("carol", "dba")) {
		t.Error("an identity provider's group the policy does not define is not matched")
	}
}

func TestSerialStagesRefuseLaterApproversFirst(t *testing.T) {
	rule := lapse.ApprovalRule{Stages: []lapse.ApprovalStage{
		{Name: "lead", Groups: []lapse.ApproverGroup{{Required: 1, Approvers: []string{"lead"}}}},
		{Name: "security", Groups: []lapse.ApproverGroup{{Required: 1, Approvers: []string{"sec"}}}},
	}}
	p := compile(t, Document{})
	r := &lapse.Request{Requester: *human("alice"), Entitlement: "x"}
	if err := p.MayApprove(rule, r, human("sec")); lapse.ErrorCode(err) != lapse.ECONFLICT {
		t.Fatalf("second stage before the first: %v", err)
	}
	if err := p.MayDeny(rule, r, human("sec")); err != nil {
		t.Fatalf("a later stage's approver may deny at any time: %v", err)
	}
	if err := p.MayApprove(rule, r, human("lead")); err != nil {
		t.Fatal(err)
	}
	r.Approvals = votes(human("lead"))
	if err := p.MayApprove(rule, r, human("sec")); err != nil {
		t.Fatalf("second stage after the first: %v", err)
	}
	if err := p.MayApprove(rule, r, human("mallory")); lapse.ErrorCode(err) != lapse.EFORBIDDEN {
		t.Fatalf("an outsider: %v", err)
	}
	// IDs arrive normalised (case, width); a look-alike is refused here.
	sec := []*lapse.Principal{human("\u0430lice", "sec")}
	if err := p.MayApprove(lapse.ApprovalRule{Required: 1, Approvers: []string{"group:sec"}}, r, sec[0]); lapse.ErrorCode(err) != lapse.EFORBIDDEN {
		t.Fatalf("the requester under a look-alike spelling: %v", err)
	}
}

func TestConditions(t *testing.T) {
	for _, bad := range []string{`request.duration <=`, `1 + 1`, `principal.nope(`} {
		if _, err := CompileCondition(bad); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("%q compiled: %v", bad, err)
		}
	}
	c, err := CompileCondition(`principal.id in on_call["dba"] && now.getHours("UTC") >= 8 && request.duration <= duration("1h")`)
	if err != nil {
		t.Fatal(err)
	}
	at := func(h int) time.Time { return time.Date(2026, 12, 4, h, 0, 0, 0, time.UTC) }
	vars := Vars{Principal: human("carol"), Request: &lapse.Request{Duration: lapse.Duration(30 * time.Minute)}, OnCall: map[string][]string{"dba": {"carol"}}}
	for _, c2 := range []struct {
		at   time.Time
		want bool
	}{{at(9), true}, {at(7), false}} {
		vars.Now = c2.at
		if ok, err := c.Eval(vars); err != nil || ok != c2.want {
			t.Errorf("at %s: %v, %v; want %v", c2.at, ok, err, c2.want)
		}
	}
	// A condition that cannot be evaluated is an error, never a yes.
	c, _ = CompileCondition(`on_call["nobody"].size() > 0`)
	if ok, err := c.Eval(Vars{Now: at(9)}); err == nil || ok {
		t.Errorf("missing list: %v, %v", ok, err)
	}
}

func TestRecheck(t *testing.T) {
	e := &lapse.Entitlement{Name: "db/owner", Target: "t", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, MaxDuration: lapse.Duration(time.Hour), DefaultDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:leads"}}}
	doc := Document{Entitlements: []*lapse.Entitlement{e}, Groups: map[string][]string{"leads": {"dave"}}}
	r := &lapse.Request{Requester: *human("alice"), Entitlement: "db/owner", Duration: lapse.Duration(time.Hour), Approvals: votes(human("dave"))}
	now := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	if err := compile(t, doc).Recheck(r, now); err != nil {
		t.Fatalf("unchanged policy: %v", err)
	}
	doc.Groups = map[string][]string{"leads": {"someone-else"}}
	if err := compile(t, doc).Recheck(r, now); err == nil {
		t.Fatal("an approver removed from the group still counts")
	}
	shorter := *e
	shorter.MaxDuration = lapse.Duration(30 * time.Minute)
	shorter.DefaultDuration = shorter.MaxDuration
	if err := compile(t, Document{Entitlements: []*lapse.Entitlement{&shorter}, Groups: map[string][]string{"leads": {"dave"}}}).Recheck(r, now); err == nil {
		t.Fatal("a duration beyond the new maximum passes")
	}
}

func TestReasonAndTicketFormats(t *testing.T) {
	e := &lapse.Entitlement{Name: "db/admin", Target: "t", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, MaxDuration: lapse.Duration(time.Hour), DefaultDuration: lapse.Duration(time.Hour),
		RequireReason: true, ReasonPattern: `(?s).*INC-[0-9]+.*`, TicketPattern: `OPS-[0-9]+`,
		Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"bob"}}}
	p := compile(t, Document{Entitlements: []*lapse.Entitlement{e}})
	now := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		reason, ticket string
		field          string // "" when accepted
	}{
		{"replication lag, INC-42", "OPS-7", ""},
		{"replication lag", "", "reason"},
		{"INC-42", "x OPS-7 y", "ticket"}, // anchored: a ticket that merely contains the format is refused
		{"INC-42", "ops-7", "ticket"},
	} {
		in := lapse.RequestInput{Entitlement: e.Name, Reason: c.reason, Ticket: c.ticket}
		d := p.Decide(human("alice"), &in, now)
		got := ""
		if d.Outcome == Refused {
			got = lapse.ErrorField(d.Err)
		}
		if got != c.field {
			t.Errorf("reason %q, ticket %q: refused on %q (%v), want %q", c.reason, c.ticket, got, d.Err, c.field)
		}
	}
}
