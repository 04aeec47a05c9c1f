package mariadb_test

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

// role creates a uniquely named role, dropped at cleanup.
func (f *fixture) newRole(t *testing.T, suffix string) string {
	t.Helper()
	name := strings.TrimSuffix(f.role, "_role") + "_" + suffix
	f.exec(t, "CREATE ROLE `"+name+"`")
	t.Cleanup(func() { f.execQuiet(t, "DROP ROLE IF EXISTS `"+name+"`") })
	return name
}

// TestAdminPowers: on the real server, GRANT OPTION, ADMIN OPTION, admin
// global privileges and any privilege on the mysql schema are found in the
// spec, in its roles and in the roles they reach; the fixture's plain role
// and harmless global privileges carry none.
func TestAdminPowers(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := context.Background()
	escapedDB := strings.ReplaceAll(f.db, "_", `\_`)

	cases := []struct {
		name string
		spec func() map[string]any
		want []string // substrings, each in some finding; none if empty
	}{
		{"plain role", func() map[string]any { return map[string]any{"roles": []any{f.role}} }, nil},
		{"grant option on a role", func() map[string]any {
			r := f.newRole(t, "go")
			f.exec(t, "GRANT SELECT ON `"+escapedDB+"`.* TO `"+r+"` WITH GRANT OPTION")
			return map[string]any{"roles": []any{r}}
		}, []string{"holds GRANT OPTION on "}},
		{"inherited create user", func() map[string]any {
			inner, outer := f.newRole(t, "cu"), f.newRole(t, "app")
			f.exec(t, "GRANT CREATE USER ON *.* TO `"+inner+"`")
			f.exec(t, "GRANT `"+inner+"` TO `"+outer+"`")
			return map[string]any{"roles": []any{outer}}
		}, []string{"(through its membership in " + strings.TrimSuffix(f.role, "_role") + "_cu) holds CREATE USER on *.*"}},
		{"admin option", func() map[string]any {
			r := f.newRole(t, "adm")
			f.exec(t, "GRANT `"+f.role+"` TO `"+r+"` WITH ADMIN OPTION")
			return map[string]any{"roles": []any{r}}
		}, []string{"holds ADMIN OPTION on role " + f.role}},
		{"mysql schema", func() map[string]any {
			r := f.newRole(t, "my")
			f.exec(t, "GRANT SELECT ON mysql.global_priv TO `"+r+"`")
			f.exec(t, "GRANT INSERT ON `m%`.* TO `"+r+"`")
			return map[string]any{"roles": []any{r}}
		}, []string{"holds SELECT on mysql.global_priv", "holds INSERT on m%.*"}},
		{"spec grant option", func() map[string]any {
			return map[string]any{"grants": []any{map[string]any{"database": f.db, "privileges": []any{"SELECT"}}}, "grant_option": true}
		}, []string{"WITH GRANT OPTION"}},
		{"spec global select", func() map[string]any {
			return map[string]any{"grants": []any{map[string]any{"database": "*", "privileges": []any{"SELECT", "PROCESS"}}}}
		}, []string{"the spec grants SELECT on *.*, which covers the mysql schema"}},
		{"spec harmless global", func() map[string]any {
			return map[string]any{"grants": []any{map[string]any{"database": "*", "privileges": []any{"PROCESS", "SHOW DATABASES"}}}}
		}, nil},
		{"missing role", func() map[string]any { return map[string]any{"roles": []any{f.role + "_none"}} }, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.AdminPowers(ctx, tc.spec())
			if err != nil {
				t.Fatalf("AdminPowers: %v", err)
			}
			if len(tc.want) == 0 && len(got) != 0 {
				t.Fatalf("AdminPowers = %q, want none", got)
			}
			for _, w := range tc.want {
				if !slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, w) }) {
					t.Errorf("AdminPowers = %q, want a line with %q", got, w)
				}
			}
		})
	}
}

// TestEscalationThroughBroker: a role WITH GRANT OPTION on the real server
// makes the broker refuse its entitlement by default, and serve it with
// the highest tier when the policy acknowledges it.
func TestEscalationThroughBroker(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	r := f.newRole(t, "go")
	f.exec(t, "GRANT SELECT ON `"+strings.ReplaceAll(f.db, "_", `\_`)+"`.* TO `"+r+"` WITH GRANT OPTION")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{
		Store: sqltest.OpenSQLite(t), SealingKey: key,
		Catalog: []*lapse.Entitlement{{Name: "db/share", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman},
			DefaultDuration: lapse.Duration(time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}}, Spec: map[string]any{"roles": []any{r}}}},
		Targets: map[string]broker.Target{"db": {Kind: "mariadb", Connector: c}},
	}
	_, err := broker.New(cfg)
	var ee *broker.EscalationError
	if !errors.As(err, &ee) || ee.Entitlement != "db/share" || lapse.ErrorReason(err) != broker.ReasonEscalation {
		t.Fatalf("New = %v, want an escalation refusal of db/share", err)
	}
	if len(ee.Findings) == 0 || !strings.Contains(ee.Findings[0].What, "GRANT OPTION") {
		t.Errorf("findings = %+v", ee.Findings)
	}

	cfg.Escalation = broker.EscalationPolicy{
		Approval:     &lapse.ApprovalRule{Required: 2, Approvers: []string{"group:security"}},
		Acknowledged: map[string]string{"db/share": "the data team shares read access"},
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatalf("New with the entitlement acknowledged: %v", err)
	}
	list, err := b.Entitlements(lapse.NewContext(ctx(t), &lapse.Principal{ID: "auditor", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeAdmin}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Approval.Required != 2 || !slices.Equal(list[0].Approval.Approvers, []string{"group:security"}) {
		t.Errorf("served = %+v, want the tier's rule", list[0].Approval)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}
