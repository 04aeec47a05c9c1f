package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// Explanation says why a principal may or may not get an entitlement, and
// who can approve it: each check Decide makes, in Decide's order, with
// what it found, then the stages with the people behind each approver
// entry. Outcome, Rule, Duration and Error are Decide's own answer, never
// a second opinion: the checks explain it.
type Explanation struct {
	Entitlement string          `json:"entitlement"`
	Principal   lapse.Principal `json:"principal"`
	// Groups are the principal's groups as the policy sees them
	// (GroupsOf): those the identity presented, except the policy's own,
	// plus every policy group that lists the principal.
	Groups  []string  `json:"groups"`
	At      time.Time `json:"at"`
	Version string    `json:"policy_version"`

	Outcome  Outcome         `json:"outcome"`
	Rule     string          `json:"rule"`
	Duration lapse.Duration  `json:"duration,omitzero"`
	Error    *ExplainedError `json:"error,omitempty"`

	Checks []Check `json:"checks"`
	// BreakGlass is the entitlement's emergency path, when it has one.
	BreakGlass *ExplainedBreakGlass `json:"break_glass,omitempty"`
	// Stages are what a request by the principal waits for when no
	// automatic path applies (the rule for the principal's lane).
	Stages []ExplainedStage `json:"stages,omitempty"`
	// StagesPass says whether every stage can pass with the approvals of
	// everyone the policy knows can give them, the principal excepted:
	// PassYes, PassNo, or PassUnknown when some approvers are groups of the
	// identity provider, whose members the policy cannot count.
	StagesPass string `json:"stages_pass,omitempty"`
}

// ExplainedError is a refusal: its stable code, the field at fault and
// the message the requester would read.
type ExplainedError struct {
	Code    string `json:"code"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// Check is one step of a decision.
type Check struct {
	// Name is the check: entitlement, lane, requesters, break_glass,
	// duration, reason, ticket, task_id, starts_at, condition,
	// break_glass.condition, auto, auto_when, stages, clock_start,
	// extension.
	Name string `json:"name"`
	// Rule is the Decision.Rule this check belongs to: when the request
	// is refused, the first check that fails has the decision's rule.
	// Empty for checks that only inform.
	Rule   string `json:"rule,omitempty"`
	Result string `json:"result"`
	Detail string `json:"detail"`
	// Source and Value are a condition's CEL text and what it evaluated
	// to: "true", "false", or "error: ..." (which counts as false).
	Source string `json:"source,omitempty"`
	Value  string `json:"value,omitempty"`
}

// Check results.
const (
	// CheckPass: the check holds.
	CheckPass = "pass"
	// CheckFail: the check refuses the request.
	CheckFail = "fail"
	// CheckNo: a path that would decide the request (auto, auto_when,
	// break glass) does not apply; the next one decides.
	CheckNo = "no"
	// CheckWait: the request waits for its approval stages.
	CheckWait = "wait"
	// CheckInfo: nothing to decide; the detail says what applies.
	CheckInfo = "info"
	// CheckUnchecked: Decide stops before this check, at an earlier one
	// that fails or at the path that decides.
	CheckUnchecked = "unchecked"
)

// Answers of ExplainedStage.Passes and Explanation.StagesPass.
const (
	PassYes     = "yes"
	PassNo      = "no"
	PassUnknown = "unknown"
)

// ExplainedBreakGlass is an entitlement's break-glass rule as it applies
// to the principal.
type ExplainedBreakGlass struct {
	// Available is Decide's answer to the same request asked as break
	// glass (starting now, for the default duration): true when it would
	// be approved. When the request's reason is shorter than a
	// break-glass reason must be, a stand-in reason is used, so that
	// Available says whether the path is open, not whether this reason
	// is long enough.
	Available bool `json:"available"`
	// Refusal is why it is not available.
	Refusal      *ExplainedError `json:"refusal,omitempty"`
	MaxDuration  lapse.Duration  `json:"max_duration"`
	ReviewWithin lapse.Duration  `json:"review_within"`
	// Reviewers may record the post-review: the rule's reviewers, or the
	// entitlement's approvers when it names none.
	Reviewers []ApproverEntry `json:"reviewers"`
	Condition string          `json:"condition,omitempty"`
	// Value is what the condition gave for the break-glass request.
	Value string `json:"value,omitempty"`
}

// ExplainedStage is one approval stage and who can approve in it.
type ExplainedStage struct {
	Name   string           `json:"name"`
	Groups []ExplainedGroup `json:"groups"`
	// Passes says whether this stage, on its own, passes with the
	// approvals of everyone the policy knows can approve in it, the
	// principal excepted (PassYes, PassNo, PassUnknown).
	Passes string `json:"passes"`
}

// ExplainedGroup is "Required of Approvers" within a stage.
type ExplainedGroup struct {
	Name      string          `json:"name,omitempty"`
	Required  int             `json:"required"`
	Approvers []ApproverEntry `json:"approvers"`
}

// ApproverEntry is one entry of an approver list and who it names.
type ApproverEntry struct {
	Entry string `json:"entry"`
	// Kind is EntryPerson, EntryPolicyGroup (its members are listed in
	// the policy, and here) or EntryIdPGroup (its members come from the
	// identity provider's claims when they sign in).
	Kind string `json:"kind"`
	// Members are a policy group's members who can approve: all but the
	// principal and whoever the principal acts for, who never decide
	// their own request.
	Members []string `json:"members,omitempty"`
	// Excluded are the entry's people who cannot approve this principal's
	// request because it is theirs.
	Excluded []string `json:"excluded,omitempty"`
}

// Approver entry kinds.
const (
	EntryPerson      = "person"
	EntryPolicyGroup = "policy_group"
	EntryIdPGroup    = "idp_group"
)

// inputChecks are the input checks of validate, in the order validate
// makes them: it stops at the first that fails, so the checks after it
// are unchecked. Keep this in step with validate (explain_test.go checks
// that the first failing check always carries Decide's rule).
var inputChecks = []string{"break_glass", "duration", "reason", "ticket", "task_id", "starts_at"}

// gatingRules are the rules of the checks Decide makes before it tries
// the paths that decide a request.
var gatingRules = []string{"catalog", "requesters", "input", "condition"}

// short formats a duration the way policies write them: "30m", "2h",
// "1h30m", not "2h0m0s".
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// standInReason is the reason Explain gives a break-glass request when the
// request has none long enough, to learn whether the path is open at all.
const standInReason = "lapse policy explain: stand-in break-glass reason"

// Explain explains what Decide says of in, filed by pr at now. It does not
// modify in.
func (p *Policy) Explain(pr *lapse.Principal, in lapse.RequestInput, now time.Time) *Explanation {
	asked := in // before Decide normalises it
	d := p.Decide(pr, &in, now)
	x := &Explanation{
		Entitlement: asked.Entitlement,
		Principal:   *pr,
		Groups:      p.GroupsOf(pr),
		At:          now.UTC(),
		Version:     p.version,
		Outcome:     d.Outcome,
		Rule:        d.Rule,
		Duration:    lapse.Duration(d.Duration),
		Error:       explainedError(d.Err),
	}
	if x.Groups == nil {
		x.Groups = []string{}
	}
	check := func(name, rule, result, detail string) *Check {
		x.Checks = append(x.Checks, Check{Name: name, Rule: rule, Result: result, Detail: detail})
		return &x.Checks[len(x.Checks)-1]
	}
	en := p.byName[asked.Entitlement]
	if en == nil {
		check("entitlement", "catalog", CheckFail, fmt.Sprintf("no entitlement named %s", asked.Entitlement))
		return x
	}
	e := en.e
	check("entitlement", "catalog", CheckPass, fmt.Sprintf("%s on target %s", e.Name, e.Target))

	// Lanes and requesters (MayRequest).
	lanes := make([]string, len(e.Lanes))
	for i, l := range e.Lanes {
		lanes[i] = string(l)
	}
	if e.AllowsLane(pr.Kind) {
		check("lane", "requesters", CheckPass, fmt.Sprintf("%s is one of the lanes (%s)", pr.Kind, strings.Join(lanes, ", ")))
	} else {
		check("lane", "requesters", CheckFail, fmt.Sprintf("%s is not one of the lanes (%s)", pr.Kind, strings.Join(lanes, ", ")))
	}
	switch i := slices.IndexFunc(e.Requesters, func(r string) bool { return p.Matches([]string{r}, pr) }); {
	case len(e.Requesters) == 0:
		check("requesters", "requesters", CheckPass, "anyone in an allowed lane may request it")
	case i >= 0:
		check("requesters", "requesters", CheckPass, fmt.Sprintf("%s is named by %s (requesters: %s)", pr.ID, e.Requesters[i], strings.Join(e.Requesters, ", ")))
	default:
		check("requesters", "requesters", CheckFail, fmt.Sprintf("%s is not named by the requesters (%s)", pr.ID, strings.Join(e.Requesters, ", ")))
	}

	// The input, as validate checks it.
	probe := asked
	_, verr := p.validate(en, pr, &probe, now)
	failed := len(inputChecks) // index of the input check that failed
	if verr != nil {
		field := lapse.ErrorField(verr)
		if asked.BreakGlass && field == "starts_at" {
			field = "break_glass" // the break-glass block refuses a scheduled start before any other input check
		}
		if i := slices.Index(inputChecks, field); i >= 0 {
			failed = i
		}
	}
	for i, name := range inputChecks {
		result, detail := p.explainInput(name, en, pr, asked)
		if result == "" {
			continue // not asked for, nothing to say
		}
		switch {
		case i == failed:
			result, detail = CheckFail, lapse.ErrorMessage(verr)
		case i > failed:
			result = CheckUnchecked
		}
		check(name, "input", result, detail)
	}
	if verr != nil && failed == len(inputChecks) {
		// A refusal of a field this explanation does not know: say it
		// rather than hide it.
		check(lapse.ErrorField(verr), "input", CheckFail, lapse.ErrorMessage(verr))
	}

	// The condition, evaluated on the request as it would be stored.
	r := p.requestFor(e, pr, asked, now)
	if en.condition == nil {
		check("condition", "condition", CheckInfo, "no condition")
	} else {
		ok, value := explainEval(en.condition, p.vars(pr, r, now))
		c := check("condition", "condition", CheckFail, "false: the request is refused")
		if ok {
			c.Result, c.Detail = CheckPass, "true"
		} else if strings.HasPrefix(value, "error") {
			c.Detail = "cannot be evaluated, which refuses the request"
		}
		c.Source, c.Value = en.condition.Source, value
	}

	// The paths, in Decide's order: break glass when asked, auto,
	// auto_when, the stages.
	rule := e.RuleFor(pr.Kind)
	paths := len(x.Checks)
	decided := asked.BreakGlass // a path has decided; later ones are not reached
	if asked.BreakGlass {
		c := check("break_glass.condition", "break_glass", CheckInfo, "no break-glass condition")
		if en.breakGlass != nil {
			ok, value := explainEval(en.breakGlass, p.vars(pr, r, now))
			c.Result, c.Detail, c.Source, c.Value = CheckPass, "true: the requester approves their own request", en.breakGlass.Source, value
			if !ok {
				c.Result, c.Detail = CheckFail, "false: break glass is refused"
			}
		}
	}
	switch {
	case decided:
		check("auto", "auto", CheckUnchecked, "break glass decides")
	case rule.Auto:
		check("auto", "auto", CheckPass, "approved without a human")
		decided = true
	default:
		check("auto", "auto", CheckNo, "not automatic")
	}
	if rule.AutoWhen != "" && en.autoWhen != nil {
		c := check("auto_when", "auto_when", CheckUnchecked, "an earlier path decides")
		c.Source = en.autoWhen.Source
		ok, value := explainEval(en.autoWhen, p.vars(pr, r, now))
		c.Value = value
		if !decided {
			c.Result, c.Detail = CheckNo, "not true: the stages decide"
			if ok {
				c.Result, c.Detail = CheckPass, "true: approved without a human"
				decided = true
			}
		}
	} else if e.Approval.AutoWhen != "" {
		check("auto_when", "auto_when", CheckNo, fmt.Sprintf("does not apply to the %s lane", pr.Kind))
	}
	stages := rule.StageList()
	switch {
	case decided:
		check("stages", "stages", CheckUnchecked, "an earlier path decides")
	case len(stages) == 0:
		check("stages", "approval", CheckFail, "no approval stages: nobody can approve it")
	default:
		check("stages", "stages", CheckWait, fmt.Sprintf("waits for %s, %s in all", plural(len(stages), "stage"), plural(rule.TotalRequired(), "approval")))
	}

	if d.Outcome == Refused && slices.Contains(gatingRules, d.Rule) {
		// Refused before any path is tried: say what each would have
		// given, but not as if it had decided.
		for i := range x.Checks[paths:] {
			c := &x.Checks[paths+i]
			c.Result, c.Detail = CheckUnchecked, "not reached, refused earlier (would be: "+c.Detail+")"
		}
	}

	// What applies to the grant, decided or not.
	if e.ClockStart == lapse.ClockAtRequest {
		check("clock_start", "", CheckInfo, "the duration runs from the request's filing (or its scheduled start): time spent waiting for approvers is taken from the grant")
	} else {
		check("clock_start", "", CheckInfo, "the duration runs from the grant's start")
	}
	if ext := e.Extension; ext != nil {
		how := "approved by the stages again"
		if !ext.Reapprove {
			how = "granted without approval"
		}
		check("extension", "", CheckInfo, fmt.Sprintf("a grant may be extended, %s, to %s in all", how, short(ext.MaxTotal.D())))
	} else {
		check("extension", "", CheckInfo, "a grant cannot be extended")
	}

	x.BreakGlass = p.explainBreakGlass(en, pr, asked, now)
	x.Stages, x.StagesPass = p.explainStages(rule, pr)
	return x
}

// explainInput describes one input check as if it passed; "" when there
// is nothing to say (a break glass or a task ID that was not asked for).
func (p *Policy) explainInput(name string, en *entry, pr *lapse.Principal, in lapse.RequestInput) (result, detail string) {
	e := en.e
	switch name {
	case "break_glass":
		switch {
		case !in.BreakGlass:
			return "", ""
		case e.BreakGlass == nil:
			return CheckFail, "asked, but there is no break-glass path" // validate says so too
		}
		return CheckPass, fmt.Sprintf("asked; the break-glass path allows at most %s", short(e.BreakGlass.MaxDuration.D()))
	case "duration":
		max, def := e.MaxDuration.D(), e.DefaultDuration.D()
		if in.BreakGlass && e.BreakGlass != nil {
			max = min(max, e.BreakGlass.MaxDuration.D())
			def = min(def, max)
		}
		if in.Duration == 0 {
			return CheckPass, fmt.Sprintf("none asked: the default, %s (max %s)", short(def), short(max))
		}
		return CheckPass, fmt.Sprintf("%s asked (max %s)", short(in.Duration.D()), short(max))
	case "reason":
		reason := strings.TrimSpace(in.Reason)
		need := "optional"
		switch {
		case in.BreakGlass:
			need = fmt.Sprintf("required, at least %d characters under break glass", MinBreakGlassReason)
		case e.RequireReason:
			need = "required"
		}
		if e.ReasonPattern != "" {
			need += ", in the format " + e.ReasonPattern
		}
		if reason == "" {
			return CheckPass, need + "; none given"
		}
		return CheckPass, need + "; given"
	case "ticket":
		ticket := strings.TrimSpace(in.Ticket)
		need := "optional"
		if e.RequireTicket {
			need = "required"
		}
		if e.TicketPattern != "" {
			need += ", in the format " + e.TicketPattern
		}
		if ticket == "" {
			return CheckPass, need + "; none given"
		}
		return CheckPass, need + "; given " + ticket
	case "task_id":
		if in.TaskID == "" {
			return "", ""
		}
		return CheckPass, "given " + in.TaskID
	case "starts_at":
		allow := "grants start when approved: no scheduled start"
		if e.MaxScheduleAhead > 0 {
			allow = fmt.Sprintf("a grant may be scheduled to start up to %s ahead", short(e.MaxScheduleAhead.D()))
		}
		if in.StartsAt.IsZero() {
			return CheckInfo, allow + "; none asked"
		}
		return CheckPass, allow + "; asked for " + in.StartsAt.UTC().Format(time.RFC3339)
	}
	return "", ""
}

// requestFor is the request a condition sees, as Decide builds it (with
// the default duration when none, or a bad one, was asked).
func (p *Policy) requestFor(e *lapse.Entitlement, pr *lapse.Principal, in lapse.RequestInput, now time.Time) *lapse.Request {
	d := in.Duration.D()
	if d <= 0 {
		d = e.DefaultDuration.D()
		if in.BreakGlass && e.BreakGlass != nil {
			d = min(d, e.BreakGlass.MaxDuration.D())
		}
	}
	startsAt := in.StartsAt
	if !startsAt.IsZero() {
		startsAt = startsAt.UTC()
	}
	return &lapse.Request{Requester: *pr, Entitlement: e.Name, Duration: lapse.Duration(d), Reason: strings.TrimSpace(in.Reason),
		Ticket: strings.TrimSpace(in.Ticket), TaskID: in.TaskID, BreakGlass: in.BreakGlass, StartsAt: startsAt}
}

// explainEval evaluates c and says what it gave. An error counts as false,
// as it does for every caller of Eval.
func explainEval(c *Condition, v Vars) (bool, string) {
	ok, err := c.Eval(v)
	switch {
	case err != nil:
		return false, "error: " + err.Error()
	case ok:
		return true, "true"
	}
	return false, "false"
}

func (p *Policy) explainBreakGlass(en *entry, pr *lapse.Principal, asked lapse.RequestInput, now time.Time) *ExplainedBreakGlass {
	e := en.e
	bg := e.BreakGlass
	if bg == nil {
		return nil
	}
	in := lapse.RequestInput{Entitlement: e.Name, Reason: asked.Reason, Ticket: asked.Ticket, TaskID: asked.TaskID, BreakGlass: true}
	if utf8.RuneCountInString(strings.TrimSpace(in.Reason)) < MinBreakGlassReason {
		in.Reason = standInReason
	}
	d := p.Decide(pr, &in, now)
	x := &ExplainedBreakGlass{
		Available:    d.Outcome == BreakGlass,
		Refusal:      explainedError(d.Err),
		MaxDuration:  lapse.Duration(min(e.MaxDuration.D(), bg.MaxDuration.D())),
		ReviewWithin: bg.ReviewWithin,
	}
	reviewers := bg.Reviewers
	if len(reviewers) == 0 {
		reviewers = e.Approval.AllApprovers()
	}
	x.Reviewers = p.entries(reviewers, pr)
	if en.breakGlass != nil {
		r := p.requestFor(e, pr, in, now)
		_, x.Value = explainEval(en.breakGlass, p.vars(pr, r, now))
		x.Condition = en.breakGlass.Source
	}
	return x
}

func (p *Policy) explainStages(rule lapse.ApprovalRule, pr *lapse.Principal) ([]ExplainedStage, string) {
	stages := rule.StageList()
	if len(stages) == 0 {
		return nil, ""
	}
	// pass runs Progress on the approvals of everyone the policy knows
	// can approve under r: that is the answer, when it passes or when
	// nobody else could approve.
	pass := func(r lapse.ApprovalRule) string {
		people, known := p.known(r.AllApprovers())
		switch {
		case p.Progress(r, pr, approvalsBy(people)).Done:
			return PassYes
		case known:
			return PassNo
		}
		return PassUnknown
	}
	out := make([]ExplainedStage, len(stages))
	for i, s := range stages {
		xs := ExplainedStage{Name: stageName(s, i), Passes: pass(lapse.ApprovalRule{Stages: []lapse.ApprovalStage{s}})}
		for _, g := range s.Groups {
			xs.Groups = append(xs.Groups, ExplainedGroup{Name: g.Name, Required: g.Required, Approvers: p.entries(g.Approvers, pr)})
		}
		out[i] = xs
	}
	return out, pass(rule)
}

// entries resolves an approver list for the request of pr.
func (p *Policy) entries(list []string, pr *lapse.Principal) []ApproverEntry {
	out := make([]ApproverEntry, 0, len(list))
	for _, e := range list {
		name, group := strings.CutPrefix(e, "group:")
		ae := ApproverEntry{Entry: e, Kind: EntryPerson}
		members, own := p.doc.Groups[name]
		switch {
		case !group:
			if Self(pr, e) {
				ae.Excluded = []string{e}
			}
		case own:
			ae.Kind = EntryPolicyGroup
			for _, m := range members {
				if Self(pr, m) {
					ae.Excluded = append(ae.Excluded, m)
				} else {
					ae.Members = append(ae.Members, m)
				}
			}
		default:
			ae.Kind = EntryIdPGroup
		}
		out = append(out, ae)
	}
	return out
}

func explainedError(err error) *ExplainedError {
	if err == nil {
		return nil
	}
	return &ExplainedError{Code: lapse.ErrorCode(err), Field: lapse.ErrorField(err), Message: lapse.ErrorMessage(err)}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
