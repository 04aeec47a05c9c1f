// Package policy decides, from the entitlement catalog, who may ask for
// which privilege, what an answer needs (nothing, a break-glass reason, or
// approval stages), who may approve, and whether a decision still holds
// when its grant starts. The broker asks it on every request and approval
// and again before it provisions; `lapse policy test` and `lapse policy
// explain` ask it the same questions offline, so what the tools say is
// what the server does.
//
// A Policy is immutable once compiled: the server reloads by compiling a
// new one and swapping it in whole.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// Document is a policy as written: the entitlement catalog, the groups the
// policy defines itself, and the on-call lists (already read from their
// files). Groups and on-call lists hold normalised principal IDs.
type Document struct {
	Entitlements []*lapse.Entitlement `json:"entitlements"`
	// Groups defined here are the policy's own: membership in them comes
	// from this list only, never from an identity provider's claims, so
	// that removing someone from an approver group here takes effect on
	// every decision still to be checked.
	Groups map[string][]string `json:"groups,omitempty"`
	// OnCall are named lists of principal IDs, for conditions
	// (on_call["dba"]). They are part of the policy version: a rotation
	// is a policy change, recorded like any other.
	OnCall map[string][]string `json:"on_call,omitempty"`
	// Escalation is how the server treats entitlements that carry admin
	// powers (the broker's escalation policy), when it says anything: it
	// changes who approves, so it is part of the version. Compile ignores
	// it.
	Escalation any `json:"escalation,omitempty"`
}

// Policy is a compiled Document.
type Policy struct {
	doc     Document
	byName  map[string]*entry
	names   []string
	version string
}

type entry struct {
	e          *lapse.Entitlement
	condition  *Condition
	autoWhen   *Condition
	breakGlass *Condition
	ticket     *regexp.Regexp
	reason     *regexp.Regexp
}

// Compile checks and compiles doc. Errors name the entitlement and the
// field ("entitlements[prod-db/read].approval.auto_when: ...").
func Compile(doc Document) (*Policy, error) {
	p := &Policy{doc: doc, byName: make(map[string]*entry, len(doc.Entitlements))}
	for _, e := range doc.Entitlements {
		if e == nil || e.Name == "" {
			return nil, lapse.Errorf(lapse.EINVALID, "policy: an entitlement without a name")
		}
		if _, dup := p.byName[e.Name]; dup {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "name", "policy: entitlement %s is defined twice", e.Name)
		}
		en := &entry{e: e}
		fail := func(field string, err error) error {
			return lapse.FieldErrorf(lapse.EINVALID, field, "policy: entitlement %s: %s: %s", e.Name, field, lapse.ErrorMessage(err))
		}
		var err error
		if e.Condition != "" {
			if en.condition, err = CompileCondition(e.Condition); err != nil {
				return nil, fail("condition", err)
			}
		}
		if e.Approval.AutoWhen != "" {
			if en.autoWhen, err = CompileCondition(e.Approval.AutoWhen); err != nil {
				return nil, fail("approval.auto_when", err)
			}
		}
		if e.BreakGlass != nil && e.BreakGlass.Condition != "" {
			if en.breakGlass, err = CompileCondition(e.BreakGlass.Condition); err != nil {
				return nil, fail("break_glass.condition", err)
			}
		}
		if e.TicketPattern != "" {
			if en.ticket, err = CompileTicketPattern(e.TicketPattern); err != nil {
				return nil, fail("ticket_pattern", err)
			}
		}
		if e.ReasonPattern != "" {
			if en.reason, err = CompileTicketPattern(e.ReasonPattern); err != nil {
				return nil, fail("reason_pattern", err)
			}
		}
		if err := checkStages(e.Approval); err != nil {
			return nil, fail("approval", err)
		}
		p.byName[e.Name] = en
		p.names = append(p.names, e.Name)
	}
	slices.Sort(p.names)
	v, err := Version(doc)
	if err != nil {
		return nil, err
	}
	p.version = v
	return p, nil
}

// CompileTicketPattern compiles a ticket or reason format: RE2, anchored
// at both ends whatever the author wrote, so "OPS-[0-9]+" cannot match
// "x OPS-1 y".
func CompileTicketPattern(s string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + s + `)$`)
	if err != nil {
		return nil, lapse.Errorf(lapse.EINVALID, "not a regular expression: %v", err)
	}
	return re, nil
}

// checkStages refuses stage lists that could never be satisfied.
func checkStages(r lapse.ApprovalRule) error {
	for i, s := range r.Stages {
		if len(s.Groups) == 0 {
			return lapse.Errorf(lapse.EINVALID, "stage %d has no groups", i+1)
		}
		for j, g := range s.Groups {
			if g.Required < 1 || len(g.Approvers) == 0 {
				return lapse.Errorf(lapse.EINVALID, "stage %d, group %d needs required >= 1 and approvers", i+1, j+1)
			}
		}
	}
	return nil
}

// Version is the content hash of a policy: "sha256:" and the hex SHA-256
// of its canonical JSON (entitlements in name order; Go encodes map keys
// sorted). A catalog without groups or on-call lists has the version
// lapse.PolicyVersion gives its entitlements.
func Version(doc Document) (string, error) {
	if len(doc.Groups) == 0 && len(doc.OnCall) == 0 && doc.Escalation == nil {
		return lapse.PolicyVersion(doc.Entitlements)
	}
	sorted := slices.Clone(doc.Entitlements)
	slices.SortFunc(sorted, func(a, b *lapse.Entitlement) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(Document{Entitlements: sorted, Groups: doc.Groups, OnCall: doc.OnCall, Escalation: doc.Escalation})
	if err != nil {
		return "", fmt.Errorf("policy version: %w", err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Version returns the policy's content hash, recorded on every decision.
func (p *Policy) Version() string { return p.version }

// Document returns what the policy was compiled from.
func (p *Policy) Document() Document { return p.doc }

// Names lists the entitlements in name order.
func (p *Policy) Names() []string { return p.names }

// Entitlement returns the named entitlement, or nil.
func (p *Policy) Entitlement(name string) *lapse.Entitlement {
	if en := p.byName[name]; en != nil {
		return en.e
	}
	return nil
}

// Replace returns a copy of the policy with e in place of the entitlement
// of the same name; the compiled conditions stay (e must keep them). The
// broker uses it to serve an entitlement with a substituted approval tier.
func (p *Policy) Replace(e *lapse.Entitlement) *Policy {
	q := *p
	q.byName = make(map[string]*entry, len(p.byName))
	for k, v := range p.byName {
		q.byName[k] = v
	}
	if old := p.byName[e.Name]; old != nil {
		en := *old
		en.e = e
		if e.Approval.AutoWhen == "" {
			en.autoWhen = nil
		}
		q.byName[e.Name] = &en
	}
	return &q
}

// GroupsOf returns p's groups as the policy sees them: the groups the
// identity presented, except those the policy defines itself, plus every
// policy group that lists p.
func (p *Policy) GroupsOf(pr *lapse.Principal) []string {
	var out []string
	for _, g := range pr.Groups {
		if _, own := p.doc.Groups[g]; !own {
			out = append(out, g)
		}
	}
	for name, members := range p.doc.Groups {
		if slices.Contains(members, pr.ID) && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Matches reports whether pr is named by a list of principal IDs and
// "group:NAME" entries, with groups as the policy sees them. The match
// is exact: a look-alike spelling never makes someone eligible.
func (p *Policy) Matches(list []string, pr *lapse.Principal) bool {
	for _, e := range list {
		if name, ok := strings.CutPrefix(e, "group:"); ok {
			if members, own := p.doc.Groups[name]; own {
				if slices.Contains(members, pr.ID) {
					return true
				}
			} else if pr.InGroup(name) {
				return true
			}
			continue
		}
		if e == pr.ID {
			return true
		}
	}
	return false
}

// vars assembles a condition's input.
func (p *Policy) vars(pr *lapse.Principal, r *lapse.Request, now time.Time) Vars {
	return Vars{Principal: pr, Groups: p.GroupsOf(pr), Request: r, Now: now, OnCall: p.doc.OnCall}
}
