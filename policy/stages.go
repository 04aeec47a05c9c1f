package policy

import (
	"fmt"
	"slices"
	"time"

	"github.com/lapsehq/lapse"
)

// Progress is how far a request's approvals have come through its stages.
type Progress struct {
	// Stage is the index of the first stage that has not passed;
	// len(stages) when all have.
	Stage int
	// Done is set when every stage has passed.
	Done bool
	// Counted are the approvers whose votes count, by stage, in vote
	// order (one human once: the first of their votes).
	Counted [][]string
	// Missing describes what the current stage still needs ("1 more of
	// group:dba"), for people and for the API.
	Missing []string
}

// Progress evaluates approvals (in the order they were cast) against the
// stages of rule for a request by requester. Only approvals count, each
// human once, never the requester or anyone the requester acted for, and
// only for groups the approver is in as the policy sees them now: an
// approver removed from a group no longer counts.
//
// A stage passes when each of its groups has its quorum; a human fills at
// most one place, in one group of one stage. The places are assigned by
// maximum bipartite matching, so the order in which people in several
// groups approve never decides whether a stage passes.
func (p *Policy) Progress(rule lapse.ApprovalRule, requester *lapse.Principal, approvals []*lapse.Approval) Progress {
	stages := rule.StageList()
	var voters []*lapse.Principal
	seen := map[string]bool{}
	for _, a := range approvals {
		if a.Decision != lapse.DecisionApprove || Self(requester, a.Approver.ID) {
			continue
		}
		k := lapse.HumanKey(a.Approver.ID)
		if seen[k] {
			continue
		}
		seen[k] = true
		voters = append(voters, &a.Approver)
	}
	pr := Progress{Counted: make([][]string, len(stages))}
	used := make([]bool, len(voters))
	for i, s := range stages {
		match, filled := p.match(s, voters, used)
		if !filled {
			pr.Stage = i
			pr.Missing = missing(s, match)
			for v, slot := range match {
				if slot >= 0 {
					pr.Counted[i] = append(pr.Counted[i], voters[v].ID)
				}
			}
			return pr
		}
		for v, slot := range match {
			if slot >= 0 {
				used[v] = true
				pr.Counted[i] = append(pr.Counted[i], voters[v].ID)
			}
		}
	}
	pr.Stage, pr.Done = len(stages), true
	return pr
}

// Self reports whether id is the requester, or someone the requester
// acted for, under any spelling: nobody decides their own request.
func Self(requester *lapse.Principal, id string) bool {
	if lapse.SameHuman(id, requester.ID) {
		return true
	}
	return slices.ContainsFunc(requester.Act, func(a string) bool { return lapse.SameHuman(a, id) })
}

// slotsOf expands a stage's groups into places: group g with Required n
// is n places labelled g.
func slotsOf(s lapse.ApprovalStage) []int {
	var slots []int
	for g, grp := range s.Groups {
		for range grp.Required {
			slots = append(slots, g)
		}
	}
	return slots
}

// match assigns unused voters to the stage's places. It returns, for
// each voter, the place it fills (-1 for none) and whether every place is
// filled. Stages are small (at most a few groups of at most ten), so the
// simple augmenting-path algorithm is plenty.
func (p *Policy) match(s lapse.ApprovalStage, voters []*lapse.Principal, used []bool) ([]int, bool) {
	slots := slotsOf(s)
	slotOwner := make([]int, len(slots))
	for i := range slotOwner {
		slotOwner[i] = -1
	}
	eligible := func(v, slot int) bool {
		return !used[v] && p.Matches(s.Groups[slots[slot]].Approvers, voters[v])
	}
	var try func(v int, visited []bool) bool
	try = func(v int, visited []bool) bool {
		for slot := range slots {
			if visited[slot] || !eligible(v, slot) {
				continue
			}
			visited[slot] = true
			if slotOwner[slot] < 0 || try(slotOwner[slot], visited) {
				slotOwner[slot] = v
				return true
			}
		}
		return false
	}
	for v := range voters {
		if !used[v] {
			try(v, make([]bool, len(slots)))
		}
	}
	match := make([]int, len(voters))
	for i := range match {
		match[i] = -1
	}
	filled := true
	for slot, v := range slotOwner {
		if v < 0 {
			filled = false
			continue
		}
		match[v] = slot
	}
	return match, filled
}

func missing(s lapse.ApprovalStage, match []int) []string {
	slots := slotsOf(s)
	have := make([]int, len(s.Groups))
	for _, slot := range match {
		if slot >= 0 {
			have[slots[slot]]++
		}
	}
	var out []string
	for g, grp := range s.Groups {
		if n := grp.Required - have[g]; n > 0 {
			out = append(out, fmt.Sprintf("%d more of %s", n, describeGroup(grp)))
		}
	}
	return out
}

func describeGroup(g lapse.ApproverGroup) string {
	if g.Name != "" {
		return g.Name
	}
	if len(g.Approvers) == 1 {
		return g.Approvers[0]
	}
	return fmt.Sprintf("%v", g.Approvers)
}

// MayApprove says whether approver may approve r now: eligible for the
// current stage, and their approval adds to it (a second person for a
// group that already has its quorum adds nothing, and is told so). The
// requester and those they acted for are refused under every spelling.
func (p *Policy) MayApprove(rule lapse.ApprovalRule, r *lapse.Request, approver *lapse.Principal) error {
	if err := p.mayDecide(rule, r, approver); err != nil {
		return err
	}
	stages := rule.StageList()
	before := p.Progress(rule, &r.Requester, r.Approvals)
	if before.Done {
		return lapse.Errorf(lapse.ECONFLICT, "the request already has every approval it needs")
	}
	cur := stages[before.Stage]
	if !p.inStage(cur, approver) {
		for i := before.Stage + 1; i < len(stages); i++ {
			if p.inStage(stages[i], approver) {
				return lapse.Errorf(lapse.ECONFLICT, "you approve in stage %q, which starts once stage %q has passed", stageName(stages[i], i), stageName(cur, before.Stage))
			}
		}
		return lapse.Errorf(lapse.EFORBIDDEN, "you are not an eligible approver of %s", r.Entitlement)
	}
	with := append(slices.Clone(r.Approvals), &lapse.Approval{Approver: *approver, Decision: lapse.DecisionApprove})
	after := p.Progress(rule, &r.Requester, with)
	if !after.Done && after.Stage == before.Stage && len(after.Counted[after.Stage]) == len(before.Counted[before.Stage]) {
		return lapse.Errorf(lapse.ECONFLICT, "your approval would not count: the groups you are in already have their approvals in stage %q", stageName(cur, before.Stage))
	}
	return nil
}

// MayDeny says whether approver may deny r: anyone eligible in any stage
// may, at any point before the request is decided.
func (p *Policy) MayDeny(rule lapse.ApprovalRule, r *lapse.Request, approver *lapse.Principal) error {
	if err := p.mayDecide(rule, r, approver); err != nil {
		return err
	}
	for _, s := range rule.StageList() {
		if p.inStage(s, approver) {
			return nil
		}
	}
	return lapse.Errorf(lapse.EFORBIDDEN, "you are not an eligible approver of %s", r.Entitlement)
}

func (p *Policy) mayDecide(rule lapse.ApprovalRule, r *lapse.Request, approver *lapse.Principal) error {
	if lapse.SameHuman(approver.ID, r.Requester.ID) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you cannot decide your own request")
	}
	if Self(&r.Requester, approver.ID) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you cannot decide a request filed on your behalf")
	}
	if approver.Kind != lapse.KindHuman {
		return lapse.Errorf(lapse.EFORBIDDEN, "only humans approve or deny requests")
	}
	if len(rule.StageList()) == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "%s needs no approval", r.Entitlement)
	}
	return nil
}

func (p *Policy) inStage(s lapse.ApprovalStage, pr *lapse.Principal) bool {
	for _, g := range s.Groups {
		if p.Matches(g.Approvers, pr) {
			return true
		}
	}
	return false
}

func stageName(s lapse.ApprovalStage, i int) string {
	if s.Name != "" {
		return s.Name
	}
	return fmt.Sprintf("%d", i+1)
}

// Recheck checks a decided request again, as its grant is about to start,
// against the policy in force now: the entitlement still exists and the
// requester may still ask for it (lanes, requesters, condition), the
// duration is still within its maximum, and the decision still holds —
// auto-approval still applies, the break-glass rule still exists, or the
// approvals still pass every stage with the approvers eligible now. It
// returns nil, or the reason nothing may be provisioned.
func (p *Policy) Recheck(r *lapse.Request, now time.Time) error {
	en := p.byName[r.Entitlement]
	if en == nil {
		return lapse.Errorf(lapse.ECONFLICT, "entitlement %s is no longer in the policy", r.Entitlement)
	}
	e := en.e
	pr := &r.Requester
	if pr.Kind == lapse.KindAgent {
		// The sponsor's side (mandates) is the broker's to check again.
		if !e.AllowsLane(pr.Kind) {
			return lapse.Errorf(lapse.ECONFLICT, "%s is no longer available to agents", e.Name)
		}
	} else if err := p.MayRequest(e, pr); err != nil {
		return lapse.Errorf(lapse.ECONFLICT, "the policy no longer lets %s request %s", pr.ID, e.Name)
	}
	if r.Privilege != "" && r.Privilege != e.PrivilegeHash() {
		return lapse.Errorf(lapse.ECONFLICT, "what %s grants (its target, spec or use limit) changed since the request was filed; its decision was for the old privilege", e.Name)
	}
	max := e.MaxDuration.D()
	if r.BreakGlass && e.BreakGlass != nil {
		max = min(max, e.BreakGlass.MaxDuration.D())
	}
	if r.Duration.D() > max {
		return lapse.Errorf(lapse.ECONFLICT, "the request's duration %s now exceeds the maximum of %s", r.Duration, lapse.Duration(max))
	}
	if err := p.checkCondition(en, pr, r, now); err != nil {
		return lapse.Errorf(lapse.ECONFLICT, "%s", lapse.ErrorMessage(err))
	}
	rule := e.RuleFor(pr.Kind)
	switch {
	case r.BreakGlass:
		if e.BreakGlass == nil {
			return lapse.Errorf(lapse.ECONFLICT, "%s no longer has a break-glass path", e.Name)
		}
		// A fenced break-glass grant starts later: the self-approval holds
		// only while its condition does (an error is no, as in Decide).
		if en.breakGlass != nil {
			if ok, err := en.breakGlass.Eval(p.vars(pr, r, now)); err != nil || !ok {
				return lapse.Errorf(lapse.ECONFLICT, "the break-glass condition of %s no longer allows this request", e.Name)
			}
		}
		return nil
	case rule.Auto:
		return nil
	case rule.AutoWhen != "" && en.autoWhen != nil:
		if ok, err := en.autoWhen.Eval(p.vars(pr, r, now)); err == nil && ok {
			return nil
		}
	}
	if pg := p.Progress(rule, pr, r.Approvals); !pg.Done {
		if len(rule.StageList()) == 0 {
			return lapse.Errorf(lapse.ECONFLICT, "%s is no longer approvable", e.Name)
		}
		return lapse.Errorf(lapse.ECONFLICT, "the approvals no longer satisfy the policy: stage %d needs %v", pg.Stage+1, pg.Missing)
	}
	return nil
}
