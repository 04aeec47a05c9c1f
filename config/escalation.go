package config

import (
	"slices"

	"github.com/goccy/go-yaml/ast"

	"github.com/lapsehq/lapse"
)

// Escalation modes (Escalation.Mode), as the broker reads them
// (broker.EscalationRefuse, broker.EscalationHighestTier).
const (
	EscalationRefuse      = "refuse"
	EscalationHighestTier = "highest_tier"
)

// MaxAcknowledgementReason bounds the reason of an acknowledgement.
const MaxAcknowledgementReason = MaxPathText

// Escalation says what happens to an entitlement whose grants would carry
// admin powers on its target or let its holder approve requests
// (docs/configuration.md, "Escalation"). The server checks the catalog
// against the targets when it starts; the file only says the policy.
type Escalation struct {
	// Mode is EscalationRefuse (the default: the server does not start)
	// or EscalationHighestTier (such entitlements are served with
	// Approval as their approval rule).
	Mode string
	// Approval is the highest approval tier: required with
	// highest_tier and with Acknowledged, never automatic.
	Approval *lapse.ApprovalRule
	// Acknowledged maps the entitlements whose admin powers are accepted
	// to the reason given. They are served with Approval, never with
	// their own rule, even when Mode is EscalationRefuse.
	Acknowledged map[string]string
}

// rawEscalation is the long form of the escalation key; the short form is
// the mode alone (escalation: highest_tier).
type rawEscalation struct {
	Mode        string               `yaml:"mode"`
	Approval    *rawApproval         `yaml:"approval"`
	Acknowledge []rawAcknowledgement `yaml:"acknowledge"`
}

type rawAcknowledgement struct {
	Entitlement string `yaml:"entitlement"`
	Reason      string `yaml:"reason"`
}

// escalation validates the top-level escalation key (node, undecoded: a
// mode or a mapping) against the catalog in c.
func (v *validator) escalation(c *Config, node ast.Node) Escalation {
	x := Escalation{Mode: EscalationRefuse}
	if isNull(node) {
		return x
	}
	var r rawEscalation
	if s, ok := unwrapNode(node).(*ast.StringNode); ok {
		r.Mode = s.Value
	} else if err := decodeStrict(v.file, v.src, node, &r); err != nil {
		if ce, ok := err.(*Error); ok {
			v.errs = append(v.errs, ce)
		} else {
			v.add(path("escalation"), err)
		}
		return x
	}
	modeAt := path("escalation", "mode")
	if _, short := unwrapNode(node).(*ast.StringNode); short {
		modeAt = path("escalation")
	}
	switch r.Mode {
	case "", EscalationRefuse:
	case EscalationHighestTier:
		x.Mode = EscalationHighestTier
	default:
		v.errorf(modeAt, "must be %s (the default) or %s, not %q", EscalationRefuse, EscalationHighestTier, r.Mode)
	}

	if a := r.Approval; a != nil {
		at := func(s ...step) []step { return append(path("escalation", "approval"), s...) }
		tier := &lapse.ApprovalRule{Required: a.Required, Approvers: v.principals(at("approvers"), a.Approvers)}
		switch {
		case a.Auto:
			v.errorf(at("auto"), "the highest approval tier cannot be automatic")
		case len(a.Stages) > 0 || a.AutoWhen != "":
			v.errorf(at(), "the highest approval tier is required: N with approvers; stages and auto_when are not allowed here")
		case a.Required < 1 || a.Required > MaxApprovals:
			v.errorf(at("required"), "must be between 1 and %d", MaxApprovals)
		case len(a.Approvers) == 0:
			v.errorf(at("approvers"), "required: who may approve (principal IDs or group:NAME)")
		case !slices.ContainsFunc(tier.Approvers, isGroup) && len(tier.Approvers) < a.Required:
			v.errorf(at("required"), "needs %d approvals but only %d approvers are listed", a.Required, len(tier.Approvers))
		}
		x.Approval = tier
	}
	if x.Approval == nil && x.Mode == EscalationHighestTier {
		v.errorf(path("escalation", "approval"), "required with mode: highest_tier: the highest approval tier, required: N with approvers")
	}
	if x.Approval != nil && x.Mode == EscalationRefuse && len(r.Acknowledge) == 0 {
		v.errorf(path("escalation", "approval"), "used only with mode: highest_tier or with acknowledge; in refuse mode without acknowledgements nothing is served with it")
	}

	for i, a := range r.Acknowledge {
		at := func(s ...step) []step { return append(path("escalation", "acknowledge", i), s...) }
		if x.Approval == nil {
			v.errorf(at(), "an acknowledgement needs the highest approval tier (escalation.approval): an acknowledged entitlement is served with it, never with its own rule")
			break
		}
		switch _, ok := c.entIndex[a.Entitlement]; {
		case a.Entitlement == "":
			v.errorf(at("entitlement"), "required: the name of an entitlement in the catalog")
			continue
		case !ok:
			v.errorf(at("entitlement"), "no entitlement named %q in the catalog", a.Entitlement)
			continue
		case x.Acknowledged[a.Entitlement] != "":
			v.errorf(at("entitlement"), "%q is acknowledged twice", a.Entitlement)
			continue
		}
		if a.Reason == "" {
			v.errorf(at("reason"), "required: why the admin powers are accepted (it is logged whenever the catalog is installed)")
			continue
		}
		if err := pathText(a.Reason); err != "" { // at most MaxAcknowledgementReason bytes of text
			v.errorf(at("reason"), "%s", err)
			continue
		}
		if x.Acknowledged == nil {
			x.Acknowledged = map[string]string{}
		}
		x.Acknowledged[a.Entitlement] = a.Reason
	}
	return x
}
