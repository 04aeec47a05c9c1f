package postgres_test

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// TestAdminPowers: the entitled roles' admin powers, found on the real
// server in the roles themselves and in every role they reach, whether
// that membership is inherited or needs SET ROLE; a plain read role and a
// role with only CREATEDB carry none.
func TestAdminPowers(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	role := func(suffix, attrs string) string {
		name := "ltg_" + f.id + "_" + suffix
		f.exec(t, ctx, "CREATE ROLE "+ident(name)+" NOLOGIN "+attrs)
		return name
	}
	cases := []struct {
		name  string
		setup func() string // returns the entitled role
		want  []string      // what the findings must say; none if empty
	}{
		{"plain read role", func() string { return f.group }, nil},
		{"createdb is not admin", func() string { return role("cdb", "CREATEDB") }, nil},
		{"createrole", func() string {
			r := role("cr", "CREATEROLE")
			return r
		}, []string{"role ltg_" + f.id + "_cr has CREATEROLE"}},
		{"inherits from a superuser", func() string {
			su := role("su", "SUPERUSER")
			app := role("app", "")
			f.exec(t, ctx, "GRANT "+ident(su)+" TO "+ident(app))
			return app
		}, []string{"role ltg_" + f.id + "_app (through its membership in ltg_" + f.id + "_su) is a superuser"}},
		{"reaches a superuser through SET ROLE only", func() string {
			mid := role("mid", "NOINHERIT")
			app := role("app2", "NOINHERIT")
			f.exec(t, ctx, "GRANT "+ident("ltg_"+f.id+"_su")+" TO "+ident(mid))
			f.exec(t, ctx, "GRANT "+ident(mid)+" TO "+ident(app))
			return app
		}, []string{"role ltg_" + f.id + "_app2 (through its membership in ltg_" + f.id + "_su) is a superuser"}},
		{"admin option", func() string {
			r := role("adm", "")
			f.exec(t, ctx, "GRANT "+ident(f.group)+" TO "+ident(r)+" WITH ADMIN OPTION")
			return r
		}, []string{"role ltg_" + f.id + "_adm holds ADMIN OPTION on role " + f.group}},
		{"bypassrls and replication", func() string { return role("rls", "BYPASSRLS REPLICATION") },
			[]string{"role ltg_" + f.id + "_rls has BYPASSRLS", "role ltg_" + f.id + "_rls has REPLICATION"}},
		{"server files", func() string {
			r := role("files", "")
			f.exec(t, ctx, "GRANT pg_write_server_files TO "+ident(r))
			return r
		}, []string{"role ltg_" + f.id + "_files (through its membership in pg_write_server_files) writes files as the server's operating-system user"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entitled := tc.setup()
			got, err := c.AdminPowers(ctx, map[string]any{"roles": []any{entitled}})
			if err != nil {
				t.Fatalf("AdminPowers: %v", err)
			}
			if len(tc.want) == 0 && len(got) != 0 {
				t.Fatalf("AdminPowers = %q, want none", got)
			}
			for _, w := range tc.want {
				if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, w) }) {
					t.Errorf("AdminPowers = %q, want a line starting %q", got, w)
				}
			}
		})
	}

	// Elevation mode: the account's own attributes are not the grant's.
	acct := "ltg_" + f.id + "_acct"
	f.exec(t, ctx, "CREATE ROLE "+ident(acct)+" LOGIN CREATEROLE")
	got, err := c.AdminPowers(ctx, map[string]any{"account": acct, "roles": []any{f.group}})
	if err != nil || len(got) != 0 {
		t.Errorf("elevation of a CREATEROLE account into a read role: %q, %v; want none", got, err)
	}
	// A role that does not exist carries nothing (Grant refuses it).
	if got, err := c.AdminPowers(ctx, map[string]any{"roles": []any{"ltg_" + f.id + "_none"}}); err != nil || len(got) != 0 {
		t.Errorf("missing role: %q, %v", got, err)
	}
	if _, err := c.AdminPowers(ctx, map[string]any{"roles": "x"}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("bad spec: %v, want %s", err, lapse.EINVALID)
	}
}

// TestEscalationThroughBroker: on the real server, an entitlement whose
// role has CREATEROLE (accepted as a grant-option risk, so ValidateSpec
// lets it through) is refused by the broker by default, naming it and the
// finding; in highest_tier mode it is served with the tier, and a
// request for it waits for the tier's approvers although its own rule is
// automatic.
func TestEscalationThroughBroker(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	admin := "ltg_" + f.id + "_cr"
	f.exec(t, ctx, "CREATE ROLE "+ident(admin)+" NOLOGIN CREATEROLE")
	c := f.open(t)
	catalog := []*lapse.Entitlement{
		{Name: "pg/read", Target: "pg", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Auto: true}, Spec: f.spec()},
		{Name: "pg/admin", Target: "pg", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: lapse.Duration(time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Auto: true}, Spec: map[string]any{"roles": []any{admin}, "accept_grant_option_risk": true}},
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{
		Store: sqltest.OpenSQLite(t), SealingKey: key, Catalog: catalog,
		Targets: map[string]broker.Target{"pg": {Kind: "postgres", Connector: c}},
		// The server wraps every connector in the audit gate; so does this.
		AuditGate: func(context.Context) error { return nil },
	}

	_, err := broker.New(cfg)
	var ee *broker.EscalationError
	if !errors.As(err, &ee) || ee.Entitlement != "pg/admin" {
		t.Fatalf("New = %v, want an escalation refusal of pg/admin", err)
	}
	if lapse.ErrorCode(err) != lapse.EFORBIDDEN || lapse.ErrorReason(err) != broker.ReasonEscalation || lapse.ErrorField(err) != "spec" {
		t.Errorf("refusal: code %q reason %q field %q, want %s, %s, spec", lapse.ErrorCode(err), lapse.ErrorReason(err), lapse.ErrorField(err), lapse.EFORBIDDEN, broker.ReasonEscalation)
	}
	if !strings.Contains(err.Error(), "role "+admin+" has CREATEROLE") {
		t.Errorf("refusal does not name the finding: %v", err)
	}

	tier := &lapse.ApprovalRule{Required: 2, Approvers: []string{"group:security"}}
	cfg.Escalation = broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: tier}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatalf("New in highest_tier mode: %v", err)
	}
	alice := lapse.NewContext(ctx, &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest}})
	res, err := b.CreateRequest(alice, lapse.RequestInput{Entitlement: "pg/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != lapse.RequestPending || res.Grant != nil || res.Request.Required != 2 {
		t.Errorf("request for pg/admin: state %s, grant %v, required %d; want pending for 2 approvals", res.Request.State, res.Grant, res.Request.Required)
	}
	fs := b.Escalations()
	if len(fs) != 1 || fs[0].Entitlement != "pg/admin" || fs[0].Source != broker.FindingTarget {
		t.Errorf("Escalations = %+v", fs)
	}
}
