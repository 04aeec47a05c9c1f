package postgres_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// catalog is a snapshot of what hostile input could change: roles (with
// their attributes), memberships, schemas, databases and tables, limited to
// the names this test owns and the server's own, so that other tests
// running on the same server do not disturb the comparison.
func (f *fixture) catalog(t *testing.T) []string {
	t.Helper()
	rows, err := f.admin.Query(bg(t), `
WITH mine AS (
  SELECT oid, rolname::text AS name FROM pg_roles
  WHERE rolname::text LIKE '%' || $1 || '%' OR rolname = 'postgres' OR starts_with(rolname::text, 'pg_')
)
SELECT 'role ' || r.rolname || ' super=' || r.rolsuper || ' login=' || r.rolcanlogin || ' createrole=' || r.rolcreaterole
       || ' pw=' || (a.rolpassword IS NOT NULL) FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.oid IN (SELECT oid FROM mine)
UNION ALL
SELECT 'member ' || g.rolname || ' <- ' || m.rolname || ' admin=' || am.admin_option
  FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
  WHERE am.roleid IN (SELECT oid FROM mine) OR am.member IN (SELECT oid FROM mine)
UNION ALL
SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname::text LIKE '%' || $1 || '%' OR nspname = 'public'
UNION ALL
SELECT 'database ' || datname FROM pg_database WHERE datname::text LIKE '%' || $1 || '%' OR datname IN ('postgres', 'template1')
UNION ALL
SELECT 'table ' || schemaname || '.' || tablename || ' owner=' || tableowner FROM pg_tables WHERE schemaname::text LIKE '%' || $1 || '%'
ORDER BY 1`, f.id)
	if err != nil {
		t.Fatalf("snapshot catalog: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatalf("snapshot catalog: %v", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("snapshot catalog: %v", err)
	}
	return out
}

func diff(before, after []string) (added, removed []string) {
	for _, a := range after {
		if !slices.Contains(before, a) {
			added = append(added, a)
		}
	}
	for _, b := range before {
		if !slices.Contains(after, b) {
			removed = append(removed, b)
		}
	}
	return added, removed
}

// TestHostileInputIsRejected sends hostile values in every caller-influenced
// field that reaches the connector — the spec's role names, account, flags
// and limits, the grant ID, State and Probe — and checks that each is
// refused with EINVALID (or, for fields the connector never puts into a
// statement, ignored) and that the server's catalog differs from before
// only by what a legitimate grant was meant to create.
func TestHostileInputIsRejected(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	canary := "ltc_" + f.id + "_canary"
	f.exec(t, ctx, "CREATE ROLE "+ident(canary)+" NOLOGIN")
	c := f.open(t)

	hostile := []string{
		`x"; DROP ROLE ` + canary + `; --`,
		`x'; DROP ROLE ` + canary + `; --`,
		"x;DROP ROLE " + canary,
		"x\x00y",
		"x\xff\xfe",
		"x%",
		"x y",
		"x\ny",
		"$$; DROP ROLE " + canary + "; $$",
		`x\" , superuser`,
	}
	before := f.catalog(t)

	t.Run("spec", func(t *testing.T) {
		var specs []map[string]any
		for _, h := range hostile {
			specs = append(specs,
				map[string]any{"roles": []any{h}},
				map[string]any{"roles": []any{f.group, h}},
				map[string]any{"roles": []any{f.group}, "account": h},
				map[string]any{"roles": []any{f.group}, "inherit": h},
				map[string]any{"roles": []any{f.group}, "connection_limit": h},
				map[string]any{"roles": []any{f.group}, h: true},
			)
		}
		specs = append(specs, badSpecs(f.group)...)
		for i, s := range specs {
			if err := c.ValidateSpec(s); lapse.ErrorCode(err) != lapse.EINVALID && lapse.ErrorCode(err) != lapse.ETOOLARGE {
				t.Errorf("spec %d: ValidateSpec: %v, want EINVALID", i, err)
			}
			_, err := c.Grant(ctx, grantRequest(newGrantID(), s))
			if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
				t.Errorf("spec %d: Grant: %v, want EINVALID", i, err)
			}
		}
	})

	t.Run("grant ID", func(t *testing.T) {
		for _, h := range append(hostile, "", "gr_"+strings.Repeat("x", 200)) {
			_, err := c.Grant(ctx, grantRequest(h, f.spec()))
			if lapse.ErrorCode(err) != lapse.EINVALID {
				t.Errorf("grant ID %q: Grant: %v, want EINVALID", h, err)
			}
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: h, Spec: f.spec()}); lapse.ErrorCode(err) != lapse.EINVALID {
				t.Errorf("grant ID %q: Revoke: %v, want EINVALID", h, err)
			}
			if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: h, Spec: f.spec()}); lapse.ErrorCode(err) != lapse.EINVALID {
				t.Errorf("grant ID %q: Verify: %v, want EINVALID", h, err)
			}
		}
	})

	t.Run("state and probe", func(t *testing.T) {
		id := newGrantID()
		for _, h := range hostile {
			for _, st := range []map[string]any{
				{"v": 1, "mode": "ephemeral", "role": h},
				{"v": 1, "mode": "elevation", "role": h, "account": h},
				{"v": 1, "mode": "ephemeral", "role": f.prefix + strings.TrimPrefix(id, "gr_"), "roles": []any{h}},
				{"v": 1, "mode": "elevation", "role": f.prefix + "e_" + strings.TrimPrefix(id, "gr_"), "account": h},
				{"v": 1, "mode": "ephemeral", "role": f.prefix + strings.TrimPrefix(id, "gr_"), "oid": 10},
			} {
				raw, _ := json.Marshal(st)
				// A bad State must neither block revocation nor reach a
				// statement: Revoke ignores it and works from the grant ID.
				// An OID in State (10 is the bootstrap superuser) never makes
				// Revoke touch the role or the sessions it names.
				if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: f.spec(), State: raw}); err != nil {
					t.Errorf("Revoke with state %v: %v", st, err)
				}
				if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Spec: f.spec(), State: raw, Probe: map[string]string{"password": h}}); err != nil {
					t.Errorf("Verify with state %v: %v", st, err)
				}
			}
		}
	})

	if after := f.catalog(t); !slices.Equal(before, after) {
		added, removed := diff(before, after)
		t.Fatalf("hostile input changed the catalog: added %v, removed %v", added, removed)
	}

	t.Run("principal, entitlement and custom grant ID", func(t *testing.T) {
		// These never reach a statement: the grant succeeds and creates
		// exactly its role and its membership.
		for i, h := range hostile {
			req := grantRequest(newGrantID(), f.spec())
			if i%2 == 1 {
				req.GrantID = "custom-" + f.id + "." + strings.Repeat("z", i)
			}
			req.Principal = lapse.Principal{ID: h, Name: h, Groups: []string{h}, Kind: lapse.KindHuman, CredentialID: h}
			req.Entitlement = h
			g, err := c.Grant(ctx, req)
			if err != nil {
				t.Fatalf("Grant with hostile principal %q: %v", h, err)
			}
			role := g.Info["user"]
			added, removed := diff(before, f.catalog(t))
			slices.Sort(added)
			want := []string{"member " + f.group + " <- " + role + " admin=false", "role " + role + " super=false login=true createrole=false pw=true"}
			if !slices.Equal(added, want) || len(removed) > 0 {
				t.Errorf("grant %d changed the catalog by added %v removed %v; want added %v", i, added, removed, want)
			}
			revoke(t, c, req.GrantID, f.spec(), g)
			requireGone(t, verify(t, c, req.GrantID, f.spec(), g))
		}
	})

	if !roleExists(t, f.admin, canary) {
		t.Fatal("the canary role was dropped")
	}
	if after := f.catalog(t); !slices.Equal(before, after) {
		added, removed := diff(before, after)
		t.Fatalf("catalog differs after revoking the legitimate grants: added %v, removed %v", added, removed)
	}
}
