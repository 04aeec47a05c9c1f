package broker_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
)

// powered is a fake target whose connector reports admin powers and
// granted groups from the spec's privileges: "admin" is an admin power,
// "group:NAME" puts the holder in group NAME. The real connectors' checks
// are tested against their servers (connector/*/escalation_test.go).
type powered struct {
	*fake.Conn
	err   error // AdminPowers fails with it, when set
	calls int
}

func privileges(spec map[string]any) []string {
	var out []string
	l, _ := spec["privileges"].([]any)
	for _, p := range l {
		s, _ := p.(string)
		out = append(out, s)
	}
	return out
}

func (p *powered) AdminPowers(_ context.Context, spec map[string]any) ([]string, error) {
	p.calls++
	if p.err != nil {
		return nil, p.err
	}
	if slices.Contains(privileges(spec), "admin") {
		return []string{"privilege admin"}, nil
	}
	return nil, nil
}

func (p *powered) GrantedGroups(spec map[string]any) []string {
	var out []string
	for _, s := range privileges(spec) {
		if g, ok := strings.CutPrefix(s, "group:"); ok {
			out = append(out, g)
		}
	}
	return out
}

var (
	_ connector.EscalationChecker = (*powered)(nil)
	_ connector.GroupGranter      = (*powered)(nil)
)

// tier is the highest approval tier of these tests: two of security.
var tier = &lapse.ApprovalRule{Required: 2, Approvers: []string{"group:security"}}

// rootEntitlement is an auto-approved entitlement on the powered target
// that both lanes may request, with the given privileges.
func rootEntitlement(name string, privs ...string) *lapse.Entitlement {
	l := make([]any, len(privs))
	for i, p := range privs {
		l[i] = p
	}
	return &lapse.Entitlement{
		Name: name, Target: "powered", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService},
		DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Auto: true}, Spec: map[string]any{"privileges": l},
	}
}

// escalationConfig is e's configuration with the powered target, the
// given policy and the standard catalog plus extra.
func escalationConfig(e *env, p *powered, policy broker.EscalationPolicy, extra ...*lapse.Entitlement) broker.Config {
	cfg := e.cfg
	cfg.Targets = maps.Clone(cfg.Targets)
	cfg.Targets["powered"] = broker.Target{Kind: "powered", Connector: p, Concurrency: 2}
	cfg.Catalog = append(catalog(), extra...)
	cfg.Escalation = policy
	return cfg
}

func newPowered(e *env) *powered { return &powered{Conn: fake.New(fake.Options{Clock: e.clock})} }

func wantEscalationRefused(t *testing.T, err error, name, code string) *broker.EscalationError {
	t.Helper()
	var ee *broker.EscalationError
	if !errors.As(err, &ee) || ee.Entitlement != name {
		t.Fatalf("error = %v, want an escalation refusal of %s", err, name)
	}
	if lapse.ErrorCode(err) != code || lapse.ErrorReason(err) != broker.ReasonEscalation || lapse.ErrorField(err) != "spec" {
		t.Fatalf("refusal: code %q, reason %q, field %q; want %s, %s, spec (%v)", lapse.ErrorCode(err), lapse.ErrorReason(err), lapse.ErrorField(err), code, broker.ReasonEscalation, err)
	}
	return ee
}

// TestEscalationRefusedByDefault: with no escalation policy, a catalog
// with an entitlement whose grants carry admin powers is refused, naming
// it and the finding — at New, and at a later SetCatalog, which leaves
// the catalog in force unchanged. An audit-gated connector still reports.
func TestEscalationRefusedByDefault(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	cfg := escalationConfig(e, p, broker.EscalationPolicy{}, rootEntitlement("db/root", "admin"))
	cfg.AuditGate = func(context.Context) error { return nil }
	_, err := broker.New(cfg)
	ee := wantEscalationRefused(t, err, "db/root", lapse.EFORBIDDEN)
	if len(ee.Findings) != 1 || ee.Findings[0].Source != broker.FindingTarget || ee.Findings[0].What != "privilege admin" || !strings.Contains(err.Error(), "privilege admin") {
		t.Errorf("findings = %+v (%v)", ee.Findings, err)
	}

	cfg.Catalog = append(catalog(), rootEntitlement("db/plain", "read"))
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := b.PolicyVersion()
	err = b.SetCatalog(append(catalog(), rootEntitlement("db/plain", "read"), rootEntitlement("db/root", "admin")))
	wantEscalationRefused(t, err, "db/root", lapse.EFORBIDDEN)
	if b.PolicyVersion() != before || len(b.Escalations()) != 0 {
		t.Error("a refused catalog replaced the one in force")
	}
	if _, err := b.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/root"}); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("request for the refused entitlement: %v, want %s", err, lapse.ENOTFOUND)
	}
}

// TestEscalationHighestTier: in highest_tier mode an auto-approved
// entitlement with admin powers is served with the tier: a human's and a
// service's request both wait, the entitlement's former approvers are not
// eligible, and two of the tier's approvers grant it.
func TestEscalationHighestTier(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	b, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: tier}, rootEntitlement("db/root", "admin")))
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, b, "db/root").Approval; got.Auto || got.Required != 2 || !slices.Equal(got.Approvers, tier.Approvers) {
		t.Fatalf("served approval = %+v, want the tier", got)
	}
	if got := served(t, b, "db/status").Approval; !got.Auto {
		t.Errorf("an entitlement without findings changed: %+v", got)
	}
	fs := b.Escalations()
	if len(fs) != 1 || fs[0].Entitlement != "db/root" || fs[0].Target != "powered" {
		t.Errorf("Escalations = %+v", fs)
	}

	res, err := b.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/root"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant != nil || res.Request.State != lapse.RequestPending || res.Request.Required != 2 {
		t.Fatalf("request: state %s, required %d, grant %v; want pending for 2", res.Request.State, res.Request.Required, res.Grant)
	}
	if r, err := b.CreateRequest(as(ci), lapse.RequestInput{Entitlement: "db/root"}); err != nil || r.Grant != nil || r.Request.State != lapse.RequestPending {
		t.Fatalf("machine lane: %+v, %v; want a pending request, never an automatic grant", r, err)
	}
	r := res.Request
	if _, err := b.Approve(as(bob), r.ID, lapse.DecisionInput{RequestHash: r.Hash}); lapse.ErrorCode(err) != lapse.EFORBIDDEN {
		t.Errorf("approval by a non-tier approver: %v, want %s", err, lapse.EFORBIDDEN)
	}
	for _, who := range []*lapse.Principal{sec1, sec2} {
		if r, err = b.Approve(as(who), r.ID, lapse.DecisionInput{RequestHash: r.Hash}); err != nil {
			t.Fatalf("approve as %s: %v", who.ID, err)
		}
	}
	if r.State != lapse.RequestApproved || r.GrantID == "" {
		t.Fatalf("after two tier approvals: %s", r.State)
	}
}

// TestEscalationAcknowledged: in refuse mode an acknowledged entitlement
// is served with the tier, never with its own rule; an acknowledgement
// without a tier, or a tier weaker than the rule it replaces, is refused.
func TestEscalationAcknowledged(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	ack := map[string]string{"db/root": "the on-call DBA needs it for failovers"}
	b, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{Approval: tier, Acknowledged: ack}, rootEntitlement("db/root", "admin")))
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, b, "db/root").Approval; got.Auto || got.Required != 2 {
		t.Errorf("acknowledged entitlement served with %+v, want the tier", got)
	}

	_, err = broker.New(escalationConfig(e, p, broker.EscalationPolicy{Acknowledged: ack}, rootEntitlement("db/root", "admin")))
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "escalation.approval" {
		t.Errorf("acknowledgement without a tier: %v, want %s on escalation.approval", err, lapse.EINVALID)
	}
	_, err = broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: &lapse.ApprovalRule{Auto: true}}))
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "escalation.approval" {
		t.Errorf("automatic tier: %v, want %s on escalation.approval", err, lapse.EINVALID)
	}
	_, err = broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: "allow"}))
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "escalation.mode" {
		t.Errorf("unknown mode: %v, want %s on escalation.mode", err, lapse.EINVALID)
	}

	strict := rootEntitlement("db/root", "admin")
	strict.Approval = lapse.ApprovalRule{Required: 3, Approvers: []string{"group:approvers"}}
	_, err = broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: tier}, strict))
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "escalation.approval.required" {
		t.Errorf("a tier weaker than the entitlement's own rule: %v, want %s on escalation.approval.required", err, lapse.EINVALID)
	}
}

// TestEscalationGroupInApprovers: an entitlement whose grant puts its
// holder in a group that approves requests is flagged, naming the group
// and what it approves — the entitlements' own rules and the tier alike.
func TestEscalationGroupInApprovers(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	_, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{}, rootEntitlement("idp/approvers", "group:Approvers")))
	ee := wantEscalationRefused(t, err, "idp/approvers", lapse.EFORBIDDEN)
	if len(ee.Findings) != 1 || ee.Findings[0].Source != broker.FindingApprover ||
		!strings.Contains(ee.Findings[0].What, "group approvers") || !strings.Contains(ee.Findings[0].What, "db/read, db/admin") {
		t.Errorf("findings = %+v", ee.Findings)
	}

	b, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: tier},
		rootEntitlement("idp/security", "group:security"), rootEntitlement("idp/devs", "group:developers")))
	if err != nil {
		t.Fatal(err)
	}
	fs := b.Escalations()
	if len(fs) != 1 || fs[0].Entitlement != "idp/security" || !strings.Contains(fs[0].What, "highest approval tier") {
		t.Errorf("Escalations = %+v, want idp/security flagged for the tier's group and idp/devs not", fs)
	}
}

// TestEscalationUnchecked: an entitlement whose check could not run is
// never treated as clean: refused with EUNAVAILABLE by default, served
// with the tier in highest_tier mode. Identical specs are checked once.
func TestEscalationUnchecked(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	p.err = lapse.Errorf(lapse.EUNAVAILABLE, "cannot reach the target")
	_, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{}, rootEntitlement("db/maybe", "read")))
	wantEscalationRefused(t, err, "db/maybe", lapse.EUNAVAILABLE)

	p.calls = 0
	b, err := broker.New(escalationConfig(e, p, broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: tier},
		rootEntitlement("db/maybe", "read"), rootEntitlement("db/maybe-too", "read")))
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, b, "db/maybe").Approval; got.Auto || got.Required != 2 {
		t.Errorf("unchecked entitlement served with %+v, want the tier", got)
	}
	if p.calls != 1 {
		t.Errorf("AdminPowers called %d times for one spec, want 1", p.calls)
	}
	if fs := b.Escalations(); len(fs) != 2 || fs[0].Source != broker.FindingUnchecked {
		t.Errorf("Escalations = %+v", fs)
	}
}

// TestCheckEscalation: the function lapse policy check calls reports the
// same findings without a broker, in catalog order.
func TestCheckEscalation(t *testing.T) {
	e := newSQLiteEnv(t)
	p := newPowered(e)
	cfg := escalationConfig(e, p, broker.EscalationPolicy{}, rootEntitlement("db/root", "admin"), rootEntitlement("idp/approvers", "group:approvers"))
	fs := broker.CheckEscalation(context.Background(), cfg.Catalog, cfg.Targets, broker.EscalationPolicy{Approval: tier})
	if len(fs) != 2 || fs[0].Entitlement != "db/root" || fs[1].Entitlement != "idp/approvers" || fs[1].Source != broker.FindingApprover {
		t.Errorf("CheckEscalation = %+v", fs)
	}
}
