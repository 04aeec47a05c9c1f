package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Escalation lint (docs/configuration.md, "Escalation"). When a catalog is
// installed, every entitlement is checked for grants that would carry
// admin powers: on the target, as its connector reports them
// (connector.EscalationChecker: a PostgreSQL role with CREATEROLE, a
// MariaDB role WITH GRANT OPTION, a Redis +@admin), and in Lapse itself,
// when the grant would make its holder a member of a group that approves
// requests (connector.GroupGranter). Such an entitlement is never served
// silently: with EscalationRefuse (the default) the catalog is refused,
// naming it and what was found; with EscalationHighestTier, or when the
// policy acknowledges it, it is served with the highest approval tier as
// its approval rule — never auto-approved, so never through the machine
// lane's token endpoint either — the way exposure over its limit is
// (exposure.go).
//
// What is not checked: whether a grant reaches Lapse's own store (a
// PostgreSQL or MariaDB target on the server that holds Lapse's database).
// A DSN comparison would miss every alias (another host name, an IP, a
// pooler, a socket) and could not tell whether the entitled roles reach
// the store's tables at all; the attributes that reach every database
// (SUPERUSER, BYPASSRLS, global privileges) are flagged by the connectors,
// and docs/audit.md's database roles keep the broker's own role apart.

// What happens to an entitlement with findings (EscalationPolicy.Mode).
const (
	// EscalationRefuse refuses the catalog (the default).
	EscalationRefuse = "refuse"
	// EscalationHighestTier serves the entitlement with
	// EscalationPolicy.Approval as its approval rule.
	EscalationHighestTier = "highest_tier"
)

// ReasonEscalation is the reason of the error that refuses a catalog with
// an entitlement whose grants carry admin powers (EFORBIDDEN, field spec;
// EUNAVAILABLE when the check could not run). Like lapse's reasons it is
// stable.
const ReasonEscalation = "escalation"

// Sources of a Finding.
const (
	// FindingTarget: the target's connector reports an admin power.
	FindingTarget = "target"
	// FindingApprover: the grant names a group that approves requests.
	FindingApprover = "approver"
	// FindingUnchecked: the connector could not check; the entitlement
	// is treated as flagged.
	FindingUnchecked = "unchecked"
)

// Bounds of a check.
const (
	// escalationTimeout bounds the connector calls of one catalog install.
	escalationTimeout = 30 * time.Second
	// maxFindings bounds the findings kept per entitlement.
	maxFindings = 16
)

// EscalationPolicy says what the broker does with an entitlement whose
// grants carry admin powers. The zero value refuses them.
type EscalationPolicy struct {
	// Mode is EscalationRefuse ("" too) or EscalationHighestTier.
	Mode string
	// Approval is the highest approval tier: required with
	// EscalationHighestTier and with Acknowledged, never automatic, and
	// needing at least as many approvals as the rule of each entitlement
	// it replaces.
	Approval *lapse.ApprovalRule
	// Acknowledged names entitlements, with the reason given, that are
	// served with Approval even in refuse mode: an acknowledgement never
	// lets an entitlement be requested under its own rule.
	Acknowledged map[string]string
}

// Finding is one reason an entitlement is flagged.
type Finding struct {
	Entitlement string `json:"entitlement"`
	Target      string `json:"target"`
	// Source is FindingTarget, FindingApprover or FindingUnchecked.
	Source string `json:"source"`
	// What says it for people: "role app_admin has CREATEROLE".
	What string `json:"what"`
}

func (f Finding) String() string { return f.What }

// EscalationError refuses an entitlement whose grants carry admin powers.
// Err is a *lapse.Error (field spec, reason ReasonEscalation).
type EscalationError struct {
	Entitlement string
	Findings    []Finding
	Err         error
}

// Error is the refusal as an operator reads it; the message names the
// entitlement, and the code and reason are in Err.
func (e *EscalationError) Error() string { return "broker: " + lapse.ErrorMessage(e.Err) }

// Unwrap returns the *lapse.Error.
func (e *EscalationError) Unwrap() error { return e.Err }

// CheckEscalation returns what makes entitlements escalate: the admin
// powers their targets' connectors report, and the groups their grants
// name that approve requests in entitlements or in policy's highest tier.
// A connector that cannot check yields a FindingUnchecked. Entitlements
// must have passed their connectors' ValidateSpec; one whose target is not
// in targets is skipped. It is what the broker runs when a catalog is
// installed, for `lapse policy check` and the like.
func CheckEscalation(ctx context.Context, entitlements []*lapse.Entitlement, targets map[string]Target, policy EscalationPolicy) []Finding {
	return checkEscalation(ctx, entitlements, func(name string) connector.Connector {
		return targets[name].Connector
	}, policy.Approval)
}

func checkEscalation(ctx context.Context, entries []*lapse.Entitlement, conn func(target string) connector.Connector, tier *lapse.ApprovalRule) []Finding {
	approves := approverGroups(entries, tier)
	type result struct {
		lines []string
		err   error
	}
	checked := map[string]result{} // target and spec → what the connector said
	var out []Finding
	for _, e := range entries {
		c := conn(e.Target)
		if c == nil {
			continue
		}
		var fs []Finding
		add := func(source, what string) {
			if len(fs) < maxFindings {
				fs = append(fs, Finding{Entitlement: e.Name, Target: e.Target, Source: source, What: what})
			}
		}
		if ec, ok := c.(connector.EscalationChecker); ok {
			spec, _ := json.Marshal(e.Spec) // a spec that passed ValidateSpec encodes
			key := e.Target + "\x00" + string(spec)
			r, done := checked[key]
			if !done {
				r.lines, r.err = ec.AdminPowers(ctx, e.Spec)
				checked[key] = r
			}
			if r.err != nil {
				add(FindingUnchecked, "its admin powers on target "+e.Target+" could not be checked: "+lapse.ErrorMessage(r.err))
			}
			for _, l := range r.lines {
				add(FindingTarget, l)
			}
		}
		if gg, ok := c.(connector.GroupGranter); ok {
			for _, g := range gg.GrantedGroups(e.Spec) {
				norm, err := lapse.NormalizeID(g)
				if err != nil {
					continue
				}
				if names := approves[norm]; len(names) > 0 {
					add(FindingApprover, fmt.Sprintf("its grant names group %s, which approves requests for %s", norm, strings.Join(names, ", ")))
				}
			}
		}
		out = append(out, fs...)
	}
	return out
}

// approverGroups maps each group named as "group:NAME" by an approval rule
// — an entitlement's own, its exposure tier, and the highest tier — to
// what it approves.
func approverGroups(entries []*lapse.Entitlement, tier *lapse.ApprovalRule) map[string][]string {
	m := map[string][]string{}
	note := func(list []string, what string) {
		for _, a := range list {
			if g, ok := strings.CutPrefix(a, "group:"); ok && !slices.Contains(m[g], what) {
				m[g] = append(m[g], what)
			}
		}
	}
	for _, e := range entries {
		note(e.Approval.AllApprovers(), e.Name)
		if e.Exposure != nil && e.Exposure.Approval != nil {
			note(e.Exposure.Approval.Approvers, e.Name)
		}
	}
	if tier != nil {
		note(tier.Approvers, "every entitlement served with the highest approval tier")
	}
	return m
}

// tierRule returns a higher approval tier as the rule an entitlement is
// served with when policy escalates it (exposure over its limit, admin
// powers): tier's quorum and approvers and nothing else, so that nothing
// of the entitlement's own rule — auto, its stages, a condition that
// approves without a human — decides a request for it. It reports false
// when tier cannot decide anything.
func tierRule(tier *lapse.ApprovalRule) (lapse.ApprovalRule, bool) {
	if tier == nil || tier.Auto || tier.Required < 1 || len(tier.Approvers) == 0 {
		return lapse.ApprovalRule{}, false
	}
	return lapse.ApprovalRule{Required: tier.Required, Approvers: slices.Clone(tier.Approvers)}, true
}

// escalate applies b's escalation policy to the catalog being installed
// (entries as written, c as served so far): it refuses the catalog if an
// entitlement with findings is neither acknowledged nor in highest_tier
// mode, and otherwise serves such entitlements with the highest tier. The
// connectors are asked with a bounded context of its own, because
// SetPolicy has none.
func (b *Broker) escalate(c *catalog, entries []*lapse.Entitlement) error {
	p := b.escalation
	switch p.Mode {
	case "":
		p.Mode = EscalationRefuse
	case EscalationRefuse, EscalationHighestTier:
	default:
		return &lapse.Error{Code: lapse.EINVALID, Field: "escalation.mode", Message: fmt.Sprintf("escalation mode must be %s or %s, not %q", EscalationRefuse, EscalationHighestTier, p.Mode)}
	}
	tier, haveTier := tierRule(p.Approval)
	if !haveTier && (p.Approval != nil || p.Mode == EscalationHighestTier || len(p.Acknowledged) > 0) {
		return lapse.FieldErrorf(lapse.EINVALID, "escalation.approval", "the highest approval tier must be set, with required >= 1 and approvers, and never auto")
	}

	// Served entries in file order, so the first refusal is the first in
	// the file.
	served := make([]*lapse.Entitlement, 0, len(entries))
	for _, e := range entries {
		served = append(served, c.byName[e.Name])
	}
	ctx, cancel := context.WithTimeout(context.Background(), escalationTimeout)
	defer cancel()
	findings := checkEscalation(ctx, served, func(name string) connector.Connector {
		if t := b.targets[name]; t != nil {
			return t.conn
		}
		return nil
	}, p.Approval)

	byName := map[string][]Finding{}
	for _, f := range findings {
		byName[f.Entitlement] = append(byName[f.Entitlement], f)
	}
	var errs []error
	for _, e := range served {
		fs := byName[e.Name]
		if len(fs) == 0 {
			continue
		}
		reason, acknowledged := p.Acknowledged[e.Name]
		if p.Mode != EscalationHighestTier && !acknowledged {
			errs = append(errs, escalationRefused(e, fs))
			continue
		}
		if own := e.Approval.TotalRequired(); !e.Approval.Auto && own > tier.Required {
			errs = append(errs, &EscalationError{Entitlement: e.Name, Findings: fs, Err: lapse.FieldErrorf(lapse.EINVALID, "escalation.approval.required",
				"%s needs %d approvals by its own rule, more than the %d of the highest approval tier that would replace it: raise escalation.approval.required", e.Name, own, tier.Required)})
			continue
		}
		out := *e
		out.Approval, _ = tierRule(&tier)
		c.byName[e.Name] = &out
		b.log.Warn("entitlement carries admin powers: served with the highest approval tier",
			"entitlement", e.Name, "target", e.Target, "findings", whats(fs),
			"required", tier.Required, "approvers", strings.Join(tier.Approvers, ","),
			"mode", p.Mode, "acknowledged", reason)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	c.findings = findings
	return nil
}

// escalationRefused is the refusal of e for fs.
func escalationRefused(e *lapse.Entitlement, fs []Finding) *EscalationError {
	code := lapse.EFORBIDDEN
	if slices.ContainsFunc(fs, func(f Finding) bool { return f.Source == FindingUnchecked }) {
		code = lapse.EUNAVAILABLE
	}
	return &EscalationError{Entitlement: e.Name, Findings: fs, Err: &lapse.Error{Code: code, Field: "spec", Reason: ReasonEscalation,
		Message: fmt.Sprintf("a grant of %s would carry admin powers: %s. Escalation policy refuses it: take the powers away, or serve it with the highest approval tier (escalation.mode: highest_tier, or acknowledge it under escalation.acknowledge)",
			e.Name, strings.Join(whats(fs), "; "))}}
}

func whats(fs []Finding) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.What
	}
	return out
}

// Escalations returns the findings of the catalog in force: the
// entitlements served with the highest approval tier, and why.
func (b *Broker) Escalations() []Finding {
	return slices.Clone(b.catalog.Load().findings)
}

// AdminPowers implements connector.EscalationChecker when the wrapped
// connector does, so the audit gate does not hide it.
func (c *gatedConnector) AdminPowers(ctx context.Context, spec map[string]any) ([]string, error) {
	if ec, ok := c.Connector.(connector.EscalationChecker); ok {
		return ec.AdminPowers(ctx, spec)
	}
	return nil, nil
}

// GrantedGroups implements connector.GroupGranter when the wrapped
// connector does.
func (c *gatedConnector) GrantedGroups(spec map[string]any) []string {
	if gg, ok := c.Connector.(connector.GroupGranter); ok {
		return gg.GrantedGroups(spec)
	}
	return nil
}

var (
	_ connector.EscalationChecker = (*gatedConnector)(nil)
	_ connector.GroupGranter      = (*gatedConnector)(nil)
)
