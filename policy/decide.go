package policy

import (
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// Outcome is what the policy says of a request when it is filed.
type Outcome string

// Outcomes of Decide.
const (
	// Refused: the request may not be filed (Decision.Err says why).
	Refused Outcome = "refused"
	// AutoApproved: granted without a human (approval.auto, or
	// approval.auto_when was true).
	AutoApproved Outcome = "auto_approved"
	// BreakGlass: approved by the requester under the break-glass rule.
	BreakGlass Outcome = "break_glass"
	// NeedsApproval: it waits for the stages.
	NeedsApproval Outcome = "needs_approval"
)

// MinBreakGlassReason is the shortest reason a break-glass request may
// give: the reason is what the reviewers read afterwards, and "x" tells
// them nothing.
const MinBreakGlassReason = 10

// Decision is the policy's answer to a request being filed.
type Decision struct {
	Outcome Outcome
	// Err is the refusal (a *lapse.Error with a stable code and the field
	// at fault) when Outcome is Refused.
	Err error
	// Rule names what decided: "auto", "auto_when", "break_glass",
	// "stages", or the check that refused.
	Rule string
	// Duration is the effective duration (the default when none was
	// asked for).
	Duration time.Duration
	// Stages are what the request waits for, when it does.
	Stages []lapse.ApprovalStage
}

func refuse(rule string, err error) Decision {
	return Decision{Outcome: Refused, Rule: rule, Err: err}
}

var (
	ticketChars = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:#/-]*$`)
)

// Decide says what filing in as pr at now leads to. It normalises in
// (trims reason and ticket) as the stored request will hold it. Nothing
// here reads the store: the broker adds what needs it (mandates, fences,
// exposure) around this decision.
func (p *Policy) Decide(pr *lapse.Principal, in *lapse.RequestInput, now time.Time) Decision {
	return p.DecideFor(pr, nil, in, Filing{}, now)
}

// Filing is what the broker knows of a request beyond its input, for the
// conditions: how it arrived (request.channel) and the grant it extends
// (request.extends). A condition on either must hold when the request is
// decided, not only when its grant is checked again at its start.
type Filing struct {
	Channel string
	Extends string
}

// DecideFor is Decide for an agent acting for sponsor (nil for anyone
// else), filed as f: the agent's lane must be allowed, and who may
// request is checked on the sponsor (an agent never gets more than its
// sponsor could). The conditions see the agent, with its act chain.
func (p *Policy) DecideFor(pr, sponsor *lapse.Principal, in *lapse.RequestInput, f Filing, now time.Time) Decision {
	en := p.byName[in.Entitlement]
	if en == nil {
		return refuse("catalog", lapse.FieldErrorf(lapse.ENOTFOUND, "entitlement", "no entitlement named %s", in.Entitlement))
	}
	e := en.e
	if sponsor != nil {
		if !e.AllowsLane(pr.Kind) {
			return refuse("requesters", lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "entitlement %s is not available to %s principals", e.Name, pr.Kind))
		}
		if err := p.MayRequest(e, sponsor); err != nil {
			return refuse("requesters", err)
		}
	} else if err := p.MayRequest(e, pr); err != nil {
		return refuse("requesters", err)
	}
	d, err := p.validate(en, pr, in, now)
	if err != nil {
		return refuse("input", err)
	}
	r := &lapse.Request{Requester: *pr, Entitlement: e.Name, Duration: lapse.Duration(d), Reason: in.Reason,
		Ticket: in.Ticket, TaskID: in.TaskID, BreakGlass: in.BreakGlass, StartsAt: in.StartsAt, Channel: f.Channel, Extends: f.Extends}
	if err := p.checkCondition(en, pr, r, now); err != nil {
		return refuse("condition", err)
	}
	rule := e.RuleFor(pr.Kind)
	if in.BreakGlass {
		if en.breakGlass != nil {
			ok, err := en.breakGlass.Eval(p.vars(pr, r, now))
			if err != nil || !ok {
				return refuse("break_glass", lapse.FieldErrorf(lapse.EFORBIDDEN, "break_glass", "the break-glass condition of %s does not allow this request", e.Name))
			}
		}
		return Decision{Outcome: BreakGlass, Rule: "break_glass", Duration: d}
	}
	if rule.Auto {
		return Decision{Outcome: AutoApproved, Rule: "auto", Duration: d}
	}
	if rule.AutoWhen != "" && en.autoWhen != nil {
		// An auto_when that fails to evaluate is "no": the request waits
		// for its approvers instead.
		if ok, err := en.autoWhen.Eval(p.vars(pr, r, now)); err == nil && ok {
			return Decision{Outcome: AutoApproved, Rule: "auto_when", Duration: d}
		}
	}
	stages := rule.StageList()
	if len(stages) == 0 {
		return refuse("approval", lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "%s has no approvers for this request", e.Name))
	}
	return Decision{Outcome: NeedsApproval, Rule: "stages", Duration: d, Stages: stages}
}

// MayRequest checks the lanes and requesters of e.
func (p *Policy) MayRequest(e *lapse.Entitlement, pr *lapse.Principal) error {
	if !e.AllowsLane(pr.Kind) {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "entitlement %s is not available to %s principals", e.Name, pr.Kind)
	}
	if len(e.Requesters) > 0 && !p.Matches(e.Requesters, pr) {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "you may not request %s", e.Name)
	}
	return nil
}

func (p *Policy) checkCondition(en *entry, pr *lapse.Principal, r *lapse.Request, now time.Time) error {
	if en.condition == nil {
		return nil
	}
	ok, err := en.condition.Eval(p.vars(pr, r, now))
	if err != nil {
		// The author's mistake, not the requester's: refused, and the
		// message says the policy could not decide.
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "the policy of %s could not be evaluated for this request", en.e.Name)
	}
	if !ok {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "the policy of %s does not allow this request", en.e.Name)
	}
	return nil
}

// validate checks the input against the entitlement and returns the
// effective duration.
func (p *Policy) validate(en *entry, pr *lapse.Principal, in *lapse.RequestInput, now time.Time) (time.Duration, error) {
	e := en.e
	max := e.MaxDuration.D()
	def := e.DefaultDuration.D()
	if in.BreakGlass {
		switch {
		case e.BreakGlass == nil:
			return 0, lapse.FieldErrorf(lapse.EFORBIDDEN, "break_glass", "%s has no break-glass path", e.Name)
		case pr.Kind != lapse.KindHuman:
			return 0, lapse.FieldErrorf(lapse.EFORBIDDEN, "break_glass", "only a human may break glass")
		case !in.StartsAt.IsZero():
			return 0, lapse.FieldErrorf(lapse.EINVALID, "starts_at", "a break-glass grant starts now")
		}
		max = min(max, e.BreakGlass.MaxDuration.D())
		def = min(def, max)
	}
	d := in.Duration.D()
	switch {
	case d == 0:
		d = def
	case d < 0:
		return 0, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration must be positive")
	case d < time.Second:
		return 0, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration must be at least 1s")
	case d > max:
		return 0, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration exceeds the maximum of %s for %s", lapse.Duration(max), e.Name)
	}
	in.Reason = strings.TrimSpace(in.Reason)
	if err := lapse.CheckText("reason", in.Reason, lapse.MaxReasonLength); err != nil {
		return 0, err
	}
	if e.RequireReason && in.Reason == "" {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "reason", "%s requires a reason", e.Name)
	}
	if in.Reason != "" && en.reason != nil && !en.reason.MatchString(in.Reason) {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "reason", "the reason does not have the format %s requires (%s)", e.Name, e.ReasonPattern)
	}
	if in.BreakGlass && utf8.RuneCountInString(in.Reason) < MinBreakGlassReason {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "reason", "break glass needs a reason of at least %d characters: the reviewers read it", MinBreakGlassReason)
	}
	in.Ticket = strings.TrimSpace(in.Ticket)
	if len(in.Ticket) > lapse.MaxTicketLength {
		return 0, lapse.FieldErrorf(lapse.ETOOLARGE, "ticket", "ticket is longer than %d bytes", lapse.MaxTicketLength)
	}
	if in.Ticket != "" && !ticketChars.MatchString(in.Ticket) {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "ticket", "ticket may contain letters, digits and . _ : # / - only")
	}
	if e.RequireTicket && in.Ticket == "" {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "ticket", "%s requires a ticket", e.Name)
	}
	if in.Ticket != "" && en.ticket != nil && !en.ticket.MatchString(in.Ticket) {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "ticket", "ticket does not have the format %s requires (%s)", e.Name, e.TicketPattern)
	}
	if len(in.TaskID) > lapse.MaxTaskIDLength {
		return 0, lapse.FieldErrorf(lapse.ETOOLARGE, "task_id", "task_id is longer than %d bytes", lapse.MaxTaskIDLength)
	}
	if in.TaskID != "" && !ticketChars.MatchString(in.TaskID) {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "task_id", "task_id may contain letters, digits and . _ : # / - only")
	}
	if !in.StartsAt.IsZero() {
		in.StartsAt = in.StartsAt.UTC()
		switch ahead := in.StartsAt.Sub(now); {
		case e.MaxScheduleAhead <= 0:
			return 0, lapse.FieldErrorf(lapse.EINVALID, "starts_at", "%s does not allow a scheduled start", e.Name)
		case ahead < 0:
			return 0, lapse.FieldErrorf(lapse.EINVALID, "starts_at", "starts_at is in the past")
		case ahead > e.MaxScheduleAhead.D():
			return 0, lapse.FieldErrorf(lapse.EINVALID, "starts_at", "starts_at is more than %s ahead, the most %s allows", e.MaxScheduleAhead, e.Name)
		}
	}
	return d, nil
}

// GrantWindow is when the grant of r, decided at decided, starts and
// ends: it starts at the scheduled start or at the decision, whichever is
// later, and runs for the request's duration from then — or, when the
// entitlement's clock starts at the request, from the request's filing
// (or its scheduled start), so that waiting for approvers is taken from
// the grant.
func GrantWindow(e *lapse.Entitlement, r *lapse.Request, decided time.Time) (start, end time.Time) {
	start = decided
	if r.StartsAt.After(start) {
		start = r.StartsAt
	}
	clock := start
	if e != nil && e.ClockStart == lapse.ClockAtRequest {
		clock = r.CreatedAt
		if r.StartsAt.After(clock) {
			clock = r.StartsAt
		}
	}
	return start, clock.Add(r.Duration.D())
}
