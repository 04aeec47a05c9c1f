package lapse

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// Entitlement is a named, requestable privilege on one target: "prod-db/read",
// "cache/flush", "payments-api/refund". The catalog of entitlements is policy;
// it is loaded from configuration and never from a caller.
type Entitlement struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Target names the configured target (connector instance) that
	// materialises the privilege.
	Target string `json:"target"`
	// Lanes lists the principal kinds that may request it.
	Lanes []PrincipalKind `json:"lanes"`
	// Requesters restricts who may request it: principal IDs or
	// "group:NAME". Empty means any authenticated principal of an allowed lane.
	Requesters []string `json:"requesters,omitempty"`

	DefaultDuration Duration `json:"default_duration,omitzero"`
	MaxDuration     Duration `json:"max_duration,omitzero"`
	RequireReason   bool     `json:"require_reason"`
	RequireTicket   bool     `json:"require_ticket"`
	// TicketPattern, when set, is a regular expression (RE2) every ticket
	// must match in full: "^OPS-[0-9]+$".
	TicketPattern string `json:"ticket_pattern,omitempty"`
	// ReasonPattern, when set, is a regular expression (RE2) every reason
	// must match in full, e.g. one that demands an incident reference:
	// "(?s).*INC-[0-9]+.*".
	ReasonPattern string `json:"reason_pattern,omitempty"`
	// Condition, when set, is a CEL expression over the request, the
	// principal, the time and the context that must be true for the
	// request to be filed, and again when its grant starts
	// (docs/policy.md).
	Condition string `json:"condition,omitempty"`
	// MaxScheduleAhead, when positive, lets a request ask for its grant to
	// start later, at most this far ahead; 0 means grants start when they
	// are approved.
	MaxScheduleAhead Duration `json:"max_schedule_ahead,omitzero"`
	// ClockStart says when a grant's duration starts to run: ClockAtStart
	// (the default: when the grant starts, at approval or at the scheduled
	// start) or ClockAtRequest (when the request was filed, so time spent
	// waiting for approvers is taken from the grant).
	ClockStart string `json:"clock_start,omitempty"`
	// BreakGlass, when set, lets a requester approve their own request in
	// an emergency, under its rules.
	BreakGlass *BreakGlassRule `json:"break_glass,omitempty"`
	// Extension, when set, lets the holder of an active grant ask for more
	// time, under its rules.
	Extension *ExtensionRule `json:"extension,omitempty"`
	// PendingTimeout is how long a request waits for a decision before it
	// expires.
	PendingTimeout Duration `json:"pending_timeout,omitzero"`

	Approval ApprovalRule `json:"approval"`

	// Agents is what applies to the agent lane beyond Approval; nil means
	// nothing more (docs/agents.md).
	Agents *AgentRule `json:"agents,omitempty"`
	// Fence says what happens to a new grant of this entitlement while an
	// earlier grant to the same principal is not yet revoked and verified:
	// "" (FenceNone) lets them overlap, FenceWait keeps the new one
	// scheduled until then, FenceFail refuses the request (docs/agents.md).
	Fence string `json:"fence,omitempty"`

	// Exposure is the checkpoint map and exposure policy (docs/zsp.md):
	// where access is created and consumed, how long it can outlive
	// revocation, and the limit. The configuration sets the policy and the
	// paths it adds; the broker serves it completed with the connector's
	// paths and the bound (Exposure.Complete). Nil when neither says
	// anything.
	Exposure *Exposure `json:"exposure,omitempty"`

	// MaxUses, when positive, bounds how many times a grant may be used
	// where the target can count uses (only token targets can: each RFC
	// 7662 introspection that answers active is one use). The use after
	// the last is refused and ends the grant. 0 means no limit.
	MaxUses int `json:"max_uses,omitempty"`

	// Spec is the connector-specific description of what is granted (roles,
	// claims, ACL rules). The target's connector validates it at load time.
	Spec map[string]any `json:"spec,omitempty"`
}

// ApprovalRule says who must approve a request before a grant is made.
// Required and Approvers are the one-stage shorthand ("2 of group:dba");
// Stages is the general form. Only one of the two is set.
type ApprovalRule struct {
	// Auto grants without a human decision (the machine lane's default).
	Auto bool `json:"auto"`
	// Required is the number of distinct eligible humans who must approve.
	Required int `json:"required,omitempty"`
	// Approvers are the principal IDs or "group:NAME" entries eligible to
	// approve. The requester is never eligible for their own request.
	Approvers []string `json:"approvers,omitempty"`
	// Stages are decided one after the other: a stage's approvers can
	// approve only once every earlier stage has passed.
	Stages []ApprovalStage `json:"stages,omitempty"`
	// AutoWhen, when set, is a CEL expression: a request for which it is
	// true is approved without a human (for example, members of an on-call
	// list). Otherwise the stages decide.
	AutoWhen string `json:"auto_when,omitempty"`
}

// ApprovalStage is one step of an approval: it passes when every one of
// its groups has its quorum, each human counting once, in one group only.
type ApprovalStage struct {
	Name   string          `json:"name,omitempty"`
	Groups []ApproverGroup `json:"groups"`
}

// ApproverGroup is "Required of Approvers" within a stage.
type ApproverGroup struct {
	Name      string   `json:"name,omitempty"`
	Required  int      `json:"required"`
	Approvers []string `json:"approvers"`
}

// StageList returns the rule as stages: Stages, or the shorthand as one
// stage of one group. It is empty for a rule with no human approval.
func (r ApprovalRule) StageList() []ApprovalStage {
	if len(r.Stages) > 0 {
		return r.Stages
	}
	if r.Required < 1 || len(r.Approvers) == 0 {
		return nil
	}
	return []ApprovalStage{{Name: "approval", Groups: []ApproverGroup{{Required: r.Required, Approvers: r.Approvers}}}}
}

// TotalRequired is the number of distinct humans the rule needs in all.
func (r ApprovalRule) TotalRequired() int {
	n := 0
	for _, s := range r.StageList() {
		for _, g := range s.Groups {
			n += g.Required
		}
	}
	return n
}

// AllApprovers lists every approver entry of every stage, once each.
func (r ApprovalRule) AllApprovers() []string {
	var out []string
	for _, s := range r.StageList() {
		for _, g := range s.Groups {
			for _, a := range g.Approvers {
				if !slices.Contains(out, a) {
					out = append(out, a)
				}
			}
		}
	}
	return out
}

// BreakGlassRule is an entitlement's emergency path: the requester
// approves their own request with a mandatory reason, for at most
// MaxDuration; every approver the request skipped is notified, and the
// request must be reviewed afterwards by someone else within ReviewWithin.
type BreakGlassRule struct {
	MaxDuration Duration `json:"max_duration"`
	// ReviewWithin is the time the post-review is due in after the request.
	ReviewWithin Duration `json:"review_within"`
	// Reviewers may record the post-review; empty means the entitlement's
	// approvers. The requester never reviews their own break-glass.
	Reviewers []string `json:"reviewers,omitempty"`
	// Condition, when set, is a CEL expression that must also be true
	// (for example, that the requester is on call).
	Condition string `json:"condition,omitempty"`
}

// ExtensionRule is how an active grant gets more time: an extension is a
// request of its own, approved by the entitlement's stages again unless
// Reapprove is false, and the grant's whole length, extensions included,
// never exceeds MaxTotal.
type ExtensionRule struct {
	MaxTotal  Duration `json:"max_total"`
	Reapprove bool     `json:"reapprove"`
}

// Clock starts (Entitlement.ClockStart).
const (
	ClockAtStart   = ""
	ClockAtRequest = "request"
)

// AgentRule is the agent lane's policy on one entitlement.
type AgentRule struct {
	// Approval is AgentApprovalPolicy (an agent's request is decided by
	// the entitlement's approval rule, like anyone's) or
	// AgentApprovalHuman (it always waits for the entitlement's human
	// approvers, even when the rule grants others at once).
	Approval string `json:"approval"`
}

// Agent approval modes (AgentRule.Approval).
const (
	AgentApprovalPolicy = "policy"
	AgentApprovalHuman  = "human"
)

// Fence modes (Entitlement.Fence).
const (
	FenceNone = ""
	FenceWait = "wait"
	FenceFail = "fail"
)

// RuleFor returns the approval rule that decides a request by a principal
// of kind: the entitlement's rule, except that an agent's request for an
// entitlement whose agents need a human is never granted at once and
// waits for at least one of the entitlement's approvers.
func (e *Entitlement) RuleFor(kind PrincipalKind) ApprovalRule {
	r := e.Approval
	if kind == KindAgent && e.Agents != nil && e.Agents.Approval == AgentApprovalHuman {
		r.Auto = false
		r.AutoWhen = ""
		if len(r.Stages) == 0 {
			r.Required = max(r.Required, 1)
		}
	}
	return r
}

// AllowsLane reports whether kind may request the entitlement.
func (e *Entitlement) AllowsLane(kind PrincipalKind) bool {
	for _, k := range e.Lanes {
		if k == kind {
			return true
		}
	}
	return false
}

// Matches reports whether p is named by a list of principal IDs and
// "group:NAME" entries (already normalised).
func Matches(list []string, p *Principal) bool {
	for _, entry := range list {
		if len(entry) > 6 && entry[:6] == "group:" {
			if p.InGroup(entry[6:]) {
				return true
			}
			continue
		}
		if entry == p.ID {
			return true
		}
	}
	return false
}

// Duration is a time.Duration that reads and writes as a Go duration string
// ("15m", "8h") in JSON and YAML.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. Every duration Lapse
// reads from input or configuration is positive: zero and negative values
// are rejected here, so an omitted duration (the zero value) and an explicit
// "0s" can never be confused.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v <= 0 {
		return FieldErrorf(EINVALID, "duration", "duration must be positive")
	}
	*d = Duration(v)
	return nil
}

// MaxAnyDuration bounds every duration Lapse accepts from input: nothing is
// granted for longer than a year, and nothing larger can overflow a deadline.
const MaxAnyDuration = 366 * 24 * time.Hour

// ParseDuration parses a Go duration string and rejects values that are
// absurd for a grant (longer than MaxAnyDuration). Zero and negative values
// are returned as parsed; callers decide whether they are allowed.
func ParseDuration(s string) (time.Duration, error) {
	if len(s) > 32 {
		return 0, FieldErrorf(EINVALID, "duration", "duration is too long to be valid")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, FieldErrorf(EINVALID, "duration", "not a duration like 15m or 8h")
	}
	if v > MaxAnyDuration || v < -MaxAnyDuration {
		return 0, FieldErrorf(EINVALID, "duration", "duration is out of range")
	}
	return v, nil
}

// PrivilegeHash is the hex SHA-256 of what a grant of e is on its target:
// the target, the connector spec and the use limit. A request records it
// when it is filed, so its approvals are bound to the privilege they were
// given for: if what the entitlement grants changes before the grant
// starts, the approvals no longer apply (policy.Recheck).
func (e *Entitlement) PrivilegeHash() string {
	b, err := json.Marshal(struct {
		Target  string         `json:"target"`
		Spec    map[string]any `json:"spec,omitempty"`
		MaxUses int            `json:"max_uses,omitempty"`
	}{e.Target, e.Spec, e.MaxUses})
	if err != nil {
		// A spec that does not encode cannot be compared: one that never
		// matches makes every approval of it void, which fails closed.
		return "unencodable"
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// PolicyVersion returns the content hash of an entitlement catalog:
// "sha256:" and the hex SHA-256 of its JSON encoding, in name order. The
// same catalog, however its file was laid out, has the same version; any
// change to a rule, a duration, an approver or a spec changes it. Every
// event records the version in force when it was written.
func PolicyVersion(entries []*Entitlement) (string, error) {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b *Entitlement) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(sorted)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
