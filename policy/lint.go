package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"

	"github.com/lapsehq/lapse"
)

// Warning is something `lapse policy check` finds in a policy that
// compiles but will not work the way its author meant: an approver group
// nobody is in, a quorum the listed people cannot reach, a condition that
// names an on-call list that does not exist. The server runs such a
// policy; `lapse policy check --strict` refuses it.
type Warning struct {
	// Code is stable (the Lint constants); scripts and tests match it.
	Code string `json:"code"`
	// Entitlement names the entitlement at fault, or "" for the groups
	// and on-call lists themselves.
	Entitlement string `json:"entitlement,omitempty"`
	// Field is the field at fault, relative to the entitlement
	// ("approval.stages[1].groups[0].required") or, without an
	// entitlement, to the policy ("on_call.dba").
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Lint codes (Warning.Code).
const (
	// LintNobodyApproves: every approver entry of a stage's group is known
	// to the policy (people and policy groups) and none names anyone.
	LintNobodyApproves = "nobody_approves"
	// LintQuorumUnreachable: the people a stage's groups list are fewer
	// than its quorums need, counting each human once, in one group.
	LintQuorumUnreachable = "quorum_unreachable"
	// LintSelfBlocks: the stages can pass only with the approval of
	// someone who may also request the entitlement, so that person's own
	// requests can never be approved.
	LintSelfBlocks = "self_blocks"
	// LintNobodyRequests: the requesters are policy groups with no members.
	LintNobodyRequests = "nobody_requests"
	// LintNobodyReviews: a break-glass rule whose reviewers (or, when it
	// names none, the approvers) are known to the policy and name nobody.
	LintNobodyReviews = "nobody_reviews"
	// LintUnknownOnCall: a condition reads an on-call list the policy does
	// not define; on_call["x"] then fails to evaluate, which is "no".
	LintUnknownOnCall = "unknown_on_call"
	// LintEmptyOnCall: a condition reads an on-call list with nobody on it.
	LintEmptyOnCall = "empty_on_call"
	// LintLateReview: a break-glass post-review due more than
	// MaxReviewWithin after the request: an emergency is reviewed while
	// people still remember it.
	LintLateReview = "late_review"
	// LintMachineWaits: the service lane may request an entitlement whose
	// approval is neither automatic nor conditional: the machine lane has
	// no human in the loop, so such a request only waits.
	LintMachineWaits = "machine_waits"
	// LintTicketOptional: a ticket_pattern without require_ticket checks
	// the tickets that are given and lets a request without one through.
	LintTicketOptional = "ticket_optional"
)

// MaxReviewWithin is the longest break_glass.review_within that passes
// the lint without a warning.
const MaxReviewWithin = 7 * 24 * time.Hour

// lintRequester is a requester who is nobody: its ID has a space, which
// no normalised ID has, so it matches no approver and no group.
var lintRequester = &lapse.Principal{ID: "policy check", Kind: lapse.KindHuman}

// Lint returns the warnings of p, by entitlement in name order and then
// by field. It decides nothing that Decide and Progress do not: a quorum
// is checked by running Progress on the approvals of every person the
// policy knows can approve.
func (p *Policy) Lint() []Warning {
	var out []Warning
	for _, name := range p.names {
		out = append(out, p.lintEntitlement(p.byName[name])...)
	}
	return out
}

func (p *Policy) lintEntitlement(en *entry) []Warning {
	e := en.e
	var out []Warning
	warn := func(code, field, format string, args ...any) {
		out = append(out, Warning{Code: code, Entitlement: e.Name, Field: field, Message: fmt.Sprintf(format, args...)})
	}

	if len(e.Requesters) > 0 {
		if people, known := p.known(e.Requesters); known && len(people) == 0 {
			warn(LintNobodyRequests, "requesters", "nobody can request %s: its requesters are policy groups with no members", e.Name)
		}
	}

	rule := e.Approval
	stages := rule.StageList()
	stageField := func(i, g int, key string) string {
		if len(rule.Stages) == 0 {
			return "approval." + key // the one-stage shorthand: approval.required, approval.approvers
		}
		return fmt.Sprintf("approval.stages[%d].groups[%d].%s", i, g, key)
	}
	reachable := true
	for i, s := range stages {
		var stagePeople []string
		stageKnown := true
		for g, grp := range s.Groups {
			people, known := p.known(grp.Approvers)
			stagePeople = append(stagePeople, people...)
			stageKnown = stageKnown && known
			switch {
			case !known:
			case len(people) == 0:
				reachable = false
				warn(LintNobodyApproves, stageField(i, g, "approvers"), "nobody can approve in stage %s, group %s: its approvers name no one the policy knows", stageName(s, i), groupName(grp, g))
			case len(people) < grp.Required:
				reachable = false
				warn(LintQuorumUnreachable, stageField(i, g, "required"), "stage %s, group %s needs %s but only %s can give them (%s)", stageName(s, i), groupName(grp, g), plural(grp.Required, "approval"), people1(len(people)), strings.Join(people, ", "))
			}
		}
		if !reachable || !stageKnown {
			continue
		}
		// Each group may have enough people and the stage still not pass,
		// when groups share people: one human fills one place.
		if pg := p.Progress(lapse.ApprovalRule{Stages: []lapse.ApprovalStage{s}}, lintRequester, approvalsBy(unique(stagePeople))); !pg.Done {
			reachable = false
			field := fmt.Sprintf("approval.stages[%d]", i)
			if len(rule.Stages) == 0 {
				field = "approval.required"
			}
			warn(LintQuorumUnreachable, field, "stage %s cannot pass even if everyone it lists approves, since each person counts once, in one group: it still needs %s", stageName(s, i), strings.Join(pg.Missing, ", "))
		}
	}

	// The whole rule with every known approver, then once for each of them
	// who may also request: if their own approval is what makes it pass,
	// their request never can.
	if people, known := p.known(rule.AllApprovers()); reachable && known && len(stages) > 0 {
		all := approvalsBy(people)
		if p.Progress(rule, lintRequester, all).Done {
			var blocked []string
			for _, id := range people {
				pr := &lapse.Principal{ID: id, Kind: lapse.KindHuman}
				if !e.AllowsLane(lapse.KindHuman) || p.MayRequest(e, pr) != nil {
					continue
				}
				if !p.Progress(rule, pr, all).Done {
					blocked = append(blocked, id)
				}
			}
			if len(blocked) > 0 {
				warn(LintSelfBlocks, "approval", "the requests of %s can never be approved: the stages need them and nobody approves their own request", strings.Join(blocked, ", "))
			}
		} else {
			warn(LintQuorumUnreachable, "approval", "the stages cannot all pass even if everyone they list approves, since each person counts once in all the stages")
		}
	}

	if slices.Contains(e.Lanes, lapse.KindService) {
		if r := e.RuleFor(lapse.KindService); !r.Auto && r.AutoWhen == "" {
			warn(LintMachineWaits, "lanes", "the service lane may request %s but its approval is not automatic: a service's request would wait for humans, and the machine lane never waits", e.Name)
		}
	}

	if e.TicketPattern != "" && !e.RequireTicket {
		warn(LintTicketOptional, "ticket_pattern", "ticket_pattern without require_ticket: a ticket that is given must match, but a request without one passes")
	}

	if bg := e.BreakGlass; bg != nil {
		if bg.ReviewWithin.D() > MaxReviewWithin {
			warn(LintLateReview, "break_glass.review_within", "the break-glass post-review is due %s after the request, later than a week", short(bg.ReviewWithin.D()))
		}
		reviewers, field := bg.Reviewers, "break_glass.reviewers"
		if len(reviewers) == 0 {
			reviewers, field = rule.AllApprovers(), "break_glass"
		}
		if people, known := p.known(reviewers); known && len(people) == 0 {
			warn(LintNobodyReviews, field, "nobody can review a break-glass request of %s: its reviewers name no one the policy knows", e.Name)
		}
	}

	for _, c := range []struct {
		field string
		cond  *Condition
	}{{"condition", en.condition}, {"approval.auto_when", en.autoWhen}, {"break_glass.condition", en.breakGlass}} {
		if c.cond == nil {
			continue
		}
		for _, list := range OnCallLists(c.cond.Source) {
			members, ok := p.doc.OnCall[list]
			switch {
			case !ok:
				warn(LintUnknownOnCall, c.field, "the condition reads on_call[%q], which the policy does not define%s", list, definedLists(p.doc.OnCall))
			case len(members) == 0:
				warn(LintEmptyOnCall, c.field, "the condition reads on_call[%q], which has nobody on it", list)
			}
		}
	}
	return out
}

// known resolves an approver or requester list to the people it names,
// each once, in list order. known is false when the list has an entry
// whose members come from an identity provider's claims (a group the
// policy does not define), which the policy cannot count.
func (p *Policy) known(list []string) (people []string, known bool) {
	known = true
	for _, e := range list {
		name, group := strings.CutPrefix(e, "group:")
		switch members, own := p.doc.Groups[name]; {
		case !group:
			people = append(people, e)
		case own:
			people = append(people, members...)
		default:
			known = false
		}
	}
	return unique(people), known
}

func people1(n int) string {
	if n == 1 {
		return "1 person"
	}
	return fmt.Sprintf("%d people", n)
}

func unique(ids []string) []string {
	var out []string
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// approvalsBy returns one approval by each of ids, as humans with no
// groups of their own: policy groups match them by membership.
func approvalsBy(ids []string) []*lapse.Approval {
	out := make([]*lapse.Approval, len(ids))
	for i, id := range ids {
		out[i] = &lapse.Approval{Approver: lapse.Principal{ID: id, Kind: lapse.KindHuman}, Decision: lapse.DecisionApprove}
	}
	return out
}

func groupName(g lapse.ApproverGroup, i int) string {
	if g.Name != "" {
		return g.Name
	}
	return fmt.Sprintf("%d", i+1)
}

func definedLists(m map[string][]string) string {
	if len(m) == 0 {
		return " (it defines none)"
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return " (defined: " + strings.Join(names, ", ") + ")"
}

// OnCallLists returns the on-call lists a condition names literally —
// on_call["dba"], on_call.dba, "dba" in on_call — each once, in order.
// A list chosen at run time (on_call[request.team]) cannot be known
// here and is not returned. src must compile (CompileCondition).
func OnCallLists(src string) []string {
	parsed, iss := env.Parse(src)
	if iss.Err() != nil {
		return nil
	}
	var out []string
	add := func(name string) {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	isOnCall := func(e celast.Expr) bool {
		return e.Kind() == celast.IdentKind && e.AsIdent() == "on_call"
	}
	literal := func(e celast.Expr) (string, bool) {
		if e.Kind() != celast.LiteralKind {
			return "", false
		}
		s, ok := e.AsLiteral().Value().(string)
		return s, ok
	}
	celast.PreOrderVisit(parsed.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			// has(on_call.x) asks whether the list exists: naming a
			// missing one there is deliberate.
			if sel := e.AsSelect(); isOnCall(sel.Operand()) && !sel.IsTestOnly() {
				add(sel.FieldName())
			}
		case celast.CallKind:
			call := e.AsCall()
			args := call.Args()
			if len(args) != 2 {
				return
			}
			switch call.FunctionName() {
			case operators.Index, operators.OptIndex:
				if s, ok := literal(args[1]); ok && isOnCall(args[0]) {
					add(s)
				}
			case operators.In:
				if s, ok := literal(args[0]); ok && isOnCall(args[1]) {
					add(s)
				}
			}
		}
	}))
	return out
}
