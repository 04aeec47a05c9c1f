package postgres_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// lapseRoles counts the roles with the fixture's prefix: what a refused
// Grant must not have made.
func (f *fixture) lapseRoles(t *testing.T) int {
	t.Helper()
	var n int
	mustScan(t, f.admin.QueryRow(bg(t), "SELECT count(*) FROM pg_roles WHERE starts_with(rolname::text, $1)", f.prefix), &n)
	return n
}

// TestGrantOptionOfEntitledRoleRefused: an entitled role through which the
// grantee could pass a privilege on — a grant option (on a table, a column,
// a schema, a function, a database, in default privileges, in another
// database), ownership, ADMIN OPTION, CREATEROLE, held by the role itself
// or by a role it is a member of — makes ValidateSpec and Grant refuse the
// spec with EINVALID naming the role and the object, in both modes, and
// Grant creates nothing. A database the connector may not visit is refused
// too: what it holds there cannot be shown harmless.
func TestGrantOptionOfEntitledRoleRefused(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	bob := "ltb_" + f.id + "_bob"
	account := "lta_" + f.id + "_app"
	f.exec(t, ctx, "CREATE ROLE "+ident(bob)+" NOLOGIN")
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	schema := ident(f.schema)
	other := "ltdb_" + f.id + "_go"
	f.createDatabase(t, other)
	otherDB := connectDB(t, other)

	cases := []struct {
		name    string
		setup   func(role string)
		mention func(role string) []string
		mods    []func(*postgres.Config)
	}{
		{
			name: "table",
			setup: func(r string) {
				f.exec(t, ctx, "GRANT USAGE ON SCHEMA "+schema+" TO "+ident(r))
				f.exec(t, ctx, "GRANT SELECT ON "+f.table+" TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{r + " holds SELECT WITH GRANT OPTION on table " + f.schema + ".items in database postgres"}
			},
		},
		{
			name: "column",
			setup: func(r string) {
				f.exec(t, ctx, "GRANT SELECT (name), UPDATE (name) ON "+f.table+" TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{"holds SELECT, UPDATE WITH GRANT OPTION on table column " + f.schema + ".items.name"}
			},
		},
		{
			name: "inherited",
			setup: func(r string) {
				holder := r + "_h"
				f.exec(t, ctx, "CREATE ROLE "+ident(holder)+" NOLOGIN")
				f.exec(t, ctx, "GRANT INSERT ON "+f.table+" TO "+ident(holder)+" WITH GRANT OPTION")
				f.exec(t, ctx, "GRANT "+ident(holder)+" TO "+ident(r))
			},
			mention: func(r string) []string {
				return []string{r + " (through its membership in " + r + "_h) holds INSERT WITH GRANT OPTION on table " + f.schema + ".items"}
			},
		},
		{
			name: "owner",
			setup: func(r string) {
				f.exec(t, ctx, "CREATE TABLE "+schema+"."+ident(r)+" (id int)")
				f.exec(t, ctx, "ALTER TABLE "+schema+"."+ident(r)+" OWNER TO "+ident(r))
			},
			mention: func(r string) []string {
				return []string{r + " owns table " + f.schema + "." + r + " (an owner holds every grant option)"}
			},
		},
		{
			name: "schema",
			setup: func(r string) {
				f.exec(t, ctx, "GRANT USAGE, CREATE ON SCHEMA "+schema+" TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{"holds CREATE, USAGE WITH GRANT OPTION on schema " + f.schema}
			},
		},
		{
			name: "function",
			setup: func(r string) {
				f.exec(t, ctx, "CREATE FUNCTION "+schema+".answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
				f.exec(t, ctx, "GRANT EXECUTE ON FUNCTION "+schema+".answer() TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{"holds EXECUTE WITH GRANT OPTION on function " + f.schema + ".answer()"}
			},
		},
		{
			name: "default privileges",
			setup: func(r string) {
				f.exec(t, ctx, "ALTER DEFAULT PRIVILEGES IN SCHEMA "+schema+" GRANT SELECT ON TABLES TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{r + " receives SELECT WITH GRANT OPTION from default privileges on new relations"}
			},
		},
		{
			name: "database",
			setup: func(r string) {
				f.exec(t, ctx, "GRANT CONNECT ON DATABASE "+ident(other)+" TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string { return []string{r + " holds CONNECT WITH GRANT OPTION on database " + other} },
		},
		{
			name:    "admin option",
			setup:   func(r string) { f.exec(t, ctx, "GRANT "+ident(bob)+" TO "+ident(r)+" WITH ADMIN OPTION") },
			mention: func(r string) []string { return []string{r + " holds ADMIN OPTION on role " + bob} },
		},
		{
			name:    "superuser",
			setup:   func(r string) { f.exec(t, ctx, "ALTER ROLE "+ident(r)+" SUPERUSER") },
			mention: func(r string) []string { return []string{r + " is a superuser"} },
		},
		{
			name:    "createrole",
			setup:   func(r string) { f.exec(t, ctx, "ALTER ROLE "+ident(r)+" CREATEROLE") },
			mention: func(r string) []string { return []string{r + " has CREATEROLE"} },
		},
		{
			name: "other database",
			setup: func(r string) {
				mustExec(t, otherDB, "CREATE TABLE "+ident(r)+" (id int)")
				mustExec(t, otherDB, "GRANT SELECT, DELETE ON "+ident(r)+" TO "+ident(r)+" WITH GRANT OPTION")
			},
			mention: func(r string) []string {
				return []string{r + " holds DELETE, SELECT WITH GRANT OPTION on table public." + r + " in database " + other}
			},
		},
		{
			name: "database not inspected",
			setup: func(r string) {
				mustExec(t, otherDB, "CREATE TABLE "+ident(r)+" (id int)")
				mustExec(t, otherDB, "GRANT SELECT ON "+ident(r)+" TO "+ident(r))
			},
			mention: func(r string) []string {
				return []string{r + " owns or holds objects the connector may not inspect (outside databases, or no connections allowed) in database " + other}
			},
			mods: []func(*postgres.Config){func(c *postgres.Config) { c.Databases = []string{"postgres"} }},
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			role := "ltg_" + f.id + "_go" + string(rune('a'+i))
			f.exec(t, ctx, "CREATE ROLE "+ident(role)+" NOLOGIN")
			tc.setup(role)
			c := f.open(t, tc.mods...)
			for _, spec := range []map[string]any{
				{"roles": []any{role}},
				{"roles": []any{f.group, role}},
				{"roles": []any{role}, "account": account},
			} {
				for _, call := range []struct {
					name string
					run  func() error
				}{
					{"ValidateSpec", func() error { return c.ValidateSpec(spec) }},
					{"Grant", func() error { _, err := c.Grant(ctx, grantRequest(newGrantID(), spec)); return err }},
				} {
					err := call.run()
					if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "spec.roles" {
						t.Fatalf("%s(%v): %v, want EINVALID on spec.roles", call.name, spec, err)
					}
					msg := lapse.ErrorMessage(err)
					for _, m := range append(tc.mention(role), "accept_grant_option_risk") {
						if !strings.Contains(msg, m) {
							t.Errorf("%s(%v): message %q does not say %q", call.name, spec, msg, m)
						}
					}
				}
			}
			if n := f.lapseRoles(t); n != 0 {
				t.Errorf("refused grants left %d roles", n)
			}
		})
	}
}

// TestGrantOptionCheckedAtGrant: a spec that was clean when the catalog was
// loaded is refused by Grant once a grant option is given to its role (and
// the check Grant may reuse has aged), also when many Grants run at once,
// and the fixture's plain group role carries no risk.
func TestGrantOptionCheckedAtGrant(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	if err := c.ValidateSpec(f.spec()); err != nil {
		t.Fatalf("ValidateSpec of a role without grant options: %v", err)
	}
	id, g := grant(t, c, f.spec())
	if risk, ok := g.Info["grant_option_risk"]; ok {
		t.Errorf("Info names a risk for a plain role: %q", risk)
	}
	revoke(t, c, id, f.spec(), g)
	f.exec(t, ctx, "GRANT SELECT ON "+f.table+" TO "+ident(f.group)+" WITH GRANT OPTION")
	// Grants within a moment of each other share one check.
	time.Sleep(postgres.GrantOptionCheckAge + 100*time.Millisecond)
	_, err := c.Grant(ctx, grantRequest(newGrantID(), f.spec()))
	if lapse.ErrorCode(err) != lapse.EINVALID || !strings.Contains(lapse.ErrorMessage(err), f.group+" holds SELECT WITH GRANT OPTION") {
		t.Fatalf("Grant after the grant option was given: %v, want EINVALID naming it", err)
	}
	// Concurrent Grants for the same roles share a check; every one of
	// them is refused.
	errs := make(chan error, 16)
	for range cap(errs) {
		go func() {
			_, err := c.Grant(ctx, grantRequest(newGrantID(), f.spec()))
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("concurrent Grant: %v, want EINVALID", err)
		}
	}
	if n := f.lapseRoles(t); n != 0 {
		t.Errorf("the refused grants left %d roles", n)
	}
}

// TestGrantOptionRiskAccepted reproduces what the refusal prevents: with
// accept_grant_option_risk the grant is made, Info and Discover name the
// risk, and a privilege the grantee passes on with the entitled role's
// grant option is recorded with the entitled role as grantor — it survives
// Revoke, and Verify (which can only see the grant's own role) reports
// the grant gone.
func TestGrantOptionRiskAccepted(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	role := "ltg_" + f.id + "_opt"
	bob := "ltb_" + f.id + "_bob"
	f.exec(t, ctx, "CREATE ROLE "+ident(role)+" NOLOGIN")
	f.exec(t, ctx, "CREATE ROLE "+ident(bob)+" NOLOGIN")
	f.exec(t, ctx, "GRANT USAGE ON SCHEMA "+ident(f.schema)+" TO "+ident(role))
	f.exec(t, ctx, "GRANT SELECT ON "+f.table+" TO "+ident(role)+" WITH GRANT OPTION")
	c := f.open(t)
	risk := role + " holds SELECT WITH GRANT OPTION on table " + f.schema + ".items in database postgres"

	for _, spec := range []map[string]any{
		{"roles": []any{role}, "accept_grant_option_risk": true},
		{"roles": []any{role}, "accept_grant_option_risk": true, "inherit": false},
	} {
		if err := c.ValidateSpec(spec); err != nil {
			t.Fatalf("ValidateSpec(%v): %v", spec, err)
		}
		id, g := grant(t, c, spec)
		if got := g.Info["grant_option_risk"]; got != risk {
			t.Errorf("Info grant_option_risk = %q, want %q", got, risk)
		}
		d, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{spec}})
		if err != nil {
			t.Fatalf("Discover: %v", err)
		}
		p := discovered(d, g.Info["user"])
		if p == nil || !slices.Contains(p.Privileges, role) || !slices.Contains(p.Privileges, "grant option risk: "+risk) {
			t.Errorf("Discover lists %+v, want %s with its role and the risk", p, g.Info["user"])
		}

		// The grantee passes SELECT on to bob (after SET ROLE when it does
		// not inherit): PostgreSQL records the entitled role as grantor.
		conn, err := login(ctx, t, g, "")
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if spec["inherit"] == false {
			mustExec(t, conn, "SET ROLE "+ident(role))
		}
		mustExec(t, conn, "GRANT SELECT ON "+f.table+" TO "+ident(bob))
		_ = conn.Close(ctx)
		var acl string
		mustScan(t, f.admin.QueryRow(ctx, "SELECT relacl::text FROM pg_class WHERE oid = $1::regclass", f.table), &acl)
		if !strings.Contains(acl, bob+"=r/"+role) {
			t.Fatalf("ACL %s: want bob's SELECT granted by %s", acl, role)
		}

		revoke(t, c, id, spec, g)
		requireGone(t, verify(t, c, id, spec, g))
		var still bool
		mustScan(t, f.admin.QueryRow(ctx, "SELECT has_table_privilege($1, $2, 'SELECT')", bob, f.table), &still)
		if !still {
			t.Fatal("bob lost SELECT with the grant: the risk this test documents is gone, update the connector and its docs")
		}
		f.exec(t, ctx, "REVOKE SELECT ON "+f.table+" FROM "+ident(bob))
	}
}

// TestGrantOptionCheckRenewedAhead: once a check is half its age, a Grant
// renews it in the background, and a grant option given before that renewal
// started is seen by the next Grant, well before the old check would have
// expired.
func TestGrantOptionCheckRenewedAhead(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	give := "GRANT SELECT ON " + f.table + " TO " + ident(f.group) + " WITH GRANT OPTION"
	take := "REVOKE GRANT OPTION FOR SELECT ON " + f.table + " FROM " + ident(f.group)
	for attempt := 1; ; attempt++ {
		postgres.WaitRiskRenewals(c)
		time.Sleep(postgres.GrantOptionCheckAge) // every earlier check has expired
		id, g := grant(t, c, f.spec())           // the first check
		revoke(t, c, id, f.spec(), g)
		f.exec(t, ctx, give)
		time.Sleep(postgres.GrantOptionCheckAge/2 + 50*time.Millisecond)
		// Served by the first check, still young enough; starts the
		// renewal. Refused only if this machine stalled so long that the
		// first check expired: then try again.
		_, err := c.Grant(ctx, grantRequest(newGrantID(), f.spec()))
		if lapse.ErrorCode(err) == lapse.EINVALID && attempt < 3 {
			f.exec(t, ctx, take)
			continue
		}
		if err != nil {
			t.Fatalf("Grant within the first check's age: %v", err)
		}
		break
	}
	postgres.WaitRiskRenewals(c)
	_, err := c.Grant(ctx, grantRequest(newGrantID(), f.spec()))
	if lapse.ErrorCode(err) != lapse.EINVALID || !strings.Contains(lapse.ErrorMessage(err), f.group+" holds SELECT WITH GRANT OPTION") {
		t.Fatalf("Grant after the renewal: %v, want EINVALID naming the grant option", err)
	}
}
