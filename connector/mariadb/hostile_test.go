package mariadb_test

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// snapshotQueries read every part of the server's catalog a grant could
// touch: accounts (mysql.global_priv is what the mysql.user view shows),
// role mappings, database, table, column, routine and proxy privileges,
// routines, events, schemas and tables.
var snapshotQueries = []string{
	"SELECT CONCAT_WS('|', 'account', User, Host, JSON_VALUE(Priv, '$.access'), JSON_VALUE(Priv, '$.account_locked')) FROM mysql.global_priv",
	"SELECT CONCAT_WS('|', 'role_mapping', User, Host, Role, Admin_option) FROM mysql.roles_mapping",
	"SELECT CONCAT_WS('|', 'db', User, Host, Db, Select_priv, Insert_priv, Update_priv, Delete_priv, Create_priv, Drop_priv, Grant_priv) FROM mysql.db",
	"SELECT CONCAT_WS('|', 'tables_priv', User, Host, Db, Table_name, Table_priv, Column_priv) FROM mysql.tables_priv",
	"SELECT CONCAT_WS('|', 'columns_priv', User, Host, Db, Table_name, Column_name, Column_priv) FROM mysql.columns_priv",
	"SELECT CONCAT_WS('|', 'procs_priv', User, Host, Db, Routine_name, Proc_priv) FROM mysql.procs_priv",
	"SELECT CONCAT_WS('|', 'proxies_priv', User, Host, Proxied_user, Proxied_host) FROM mysql.proxies_priv",
	"SELECT CONCAT_WS('|', 'routine', db, name, type, definer) FROM mysql.proc",
	"SELECT CONCAT_WS('|', 'event', db, name, definer) FROM mysql.event",
	"SELECT CONCAT_WS('|', 'schema', SCHEMA_NAME) FROM information_schema.SCHEMATA",
	"SELECT CONCAT_WS('|', 'table', TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE) FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema')",
}

// snapshot returns the server's catalog as a sorted list of lines, with the
// connections of the test's users (by prefix): a killed one would reappear,
// if at all, under another ID. Rows still in the handshake ("Connect", such
// as a refused login probe on its way out) hold no privilege and are left
// out.
func snapshot(t *testing.T, f *fixture) []string {
	t.Helper()
	out := readLines(t, f.admin, snapshotQueries...)
	out = append(out, readLines(t, f.admin, fmt.Sprintf(
		"SELECT CONCAT_WS('|', 'session', ID, USER, COALESCE(DB, ''), COMMAND) FROM information_schema.PROCESSLIST WHERE LEFT(USER, %d) = '%s' AND COMMAND <> 'Connect'",
		len(f.prefix), f.prefix))...)
	sort.Strings(out)
	return out
}

func readLines(t *testing.T, admin *sql.DB, queries ...string) []string {
	t.Helper()
	var out []string
	for _, q := range queries {
		rows, err := admin.Query(q)
		if err != nil {
			t.Fatalf("snapshot: %s: %v", q, err)
		}
		for rows.Next() {
			var s sql.NullString
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s.String)
		}
		rows.Close()
	}
	return out
}

func diff(a, b []string) (onlyA, onlyB []string) {
	for _, x := range a {
		if !slices.Contains(b, x) {
			onlyA = append(onlyA, x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			onlyB = append(onlyB, x)
		}
	}
	return
}

// hostileNames are values that must never become part of a statement:
// quotes of every kind, statement separators, comments, NUL, invalid UTF-8,
// wildcards, spaces, look-alikes and over-long names.
var hostileNames = []string{
	"", "x'", "x`", `x"`, "x`; DROP DATABASE mysql; --", "x;", "x\x00y", "\xff\xfe", "x%", "%", "_%",
	"x y", " x", "x\n", "x\\", "x--", "x/*", "x#", "ｘ", "x\u200b", "x.y", "x@y", "x,y", "x()",
	strings.Repeat("a", 65),
}

// hostileSpecs returns specs with hostile input in every field, each with
// the field the error must name (a prefix).
func hostileSpecs(f *fixture) []struct {
	field string
	spec  map[string]any
} {
	type hs = struct {
		field string
		spec  map[string]any
	}
	var out []hs
	grant := func(db, table any, privs ...any) map[string]any {
		g := map[string]any{"database": db, "privileges": privs}
		if table != nil {
			g["table"] = table
		}
		return map[string]any{"grants": []any{g}}
	}
	for _, h := range hostileNames {
		out = append(out,
			hs{"spec.roles[0]", map[string]any{"roles": []any{h}}},
			hs{"spec.grants[0].privileges[0]", grant(f.db, nil, h)},
		)
		if h != "" { // empty means "unset" for these fields
			out = append(out,
				hs{"spec.default_role", map[string]any{"roles": []any{f.role}, "default_role": h}},
				hs{"spec.grants[0].table", grant(f.db, h, "SELECT")},
				hs{"spec.grants[0].database", grant(h, nil, "SELECT")},
			)
		}
	}
	for _, p := range []string{
		"SELECT; DROP USER root", "SELECT,INSERT", "ALL PRIVILEGES WITH GRANT OPTION", "SUPER", "FILE",
		"GRANT OPTION", "CREATE USER", "SHUTDOWN", "RELOAD", "REPLICATION SLAVE", "PROXY", "USAGE",
		"SELECT ", " SELECT", "SELECT  ", "SEL\x00ECT", "select\tinsert",
	} {
		out = append(out, hs{"spec.grants[0].privileges[0]", grant(f.db, nil, p)})
	}
	for _, r := range []string{"PUBLIC", "none", "NONE", "current_role", f.prefix + "x"} {
		out = append(out, hs{"spec.roles[0]", map[string]any{"roles": []any{r}}})
	}
	out = append(out,
		hs{"spec", map[string]any{}},
		hs{"spec", map[string]any{"roles": f.role}},
		hs{"spec", map[string]any{"roles": []any{f.role}, "host": "%"}},
		hs{"spec", map[string]any{"roles": []any{f.role}, "password": "x"}},
		hs{"spec", map[string]any{"roles": []any{f.role}, "max_user_connections": "5"}},
		hs{"spec", map[string]any{"roles": []any{f.role}, "max_user_connections": 1.5}},
		hs{"spec", map[string]any{"roles": []any{f.role}, "Roles\x00": []any{"x"}}},
		hs{"spec.max_user_connections", map[string]any{"roles": []any{f.role}, "max_user_connections": -1}},
		hs{"spec.max_user_connections", map[string]any{"roles": []any{f.role}, "max_user_connections": 1 << 40}},
		hs{"spec.roles[1]", map[string]any{"roles": []any{f.role, f.role}}},
		hs{"spec.grants[0].database", grant("mysql", nil, "SELECT")},
		hs{"spec.grants[0].database", grant("MySQL", "user", "SELECT")},
		hs{"spec.grants[0].table", grant("*", "items", "SELECT")},
		hs{"spec.grants[0].privileges[0]", grant("*", nil, "ALL")},
		hs{"spec.grants[0].privileges[0]", grant(f.db, "items", "EXECUTE")},
		hs{"spec.grants[0].privileges[0]", grant(f.db, nil, "PROCESS")},
		hs{"spec.grants[0].privileges", grant(f.db, nil)},
		hs{"spec.grants[0].privileges", grant(f.db, nil, "ALL", "SELECT")},
		hs{"spec.grant_option", map[string]any{"roles": []any{f.role}, "grant_option": true}},
		hs{"spec.roles", map[string]any{"roles": func() []any {
			var r []any
			for i := range 17 {
				r = append(r, fmt.Sprintf("r%d", i))
			}
			return r
		}()}},
	)
	return out
}

// hostileValues are for fields the connector must never put into a
// statement at all (principal, entitlement, probe): the hostile names, SQL
// aimed at this server, and very long values.
var hostileValues = append(slices.Clone(hostileNames[1:]),
	"x'; DROP USER root@localhost; --", "`; DROP DATABASE mysql; --", "x\"; KILL CONNECTION USER root; --",
	"_", "x_y", "%'@'%", "root", "root@localhost", "x\r\nSHOW GRANTS", "x\x00'; DROP USER root; --",
	strings.Repeat("x'`;", 1<<14), strings.Repeat("\xff%_\x00", 1<<14),
)

// hostileGrantIDs are grant IDs the connector refuses.
var hostileGrantIDs = []string{
	"", "gr_\x00", "gr_\xff", "gr x", "gr\n", "gr_x\r\nKILL 1", "gr_\tx", "gr_x\u2028", "gr_x\u00a0",
	strings.Repeat("g", 300), "gr_" + strings.Repeat("'", 300),
}

// oddGrantIDs are grant IDs that are not Lapse IDs but printable: the
// connector accepts them and only ever hashes them into a name.
var oddGrantIDs = []string{
	"gr_`';DROP/**/USER/**/root@localhost;--", "gr_%", "gr__", "_", "%", "gr_'", `gr_"`, "gr_;", `gr_\`,
	"gr_x`@`%", "gr_ｘ", strings.Repeat("g", 256),
}

// TestHostileInputRejected feeds hostile input into every caller-influenced
// field that reaches the connector — the spec (ValidateSpec, Grant,
// Discover, Revoke, Verify), the grant ID (Grant, Revoke, Verify), State (Revoke, Verify),
// the principal and the entitlement name (Grant, Revoke, Verify) and the
// sealed probe material (Verify) — and checks that each is rejected with
// EINVALID (or ETOOLARGE) naming the field, or used without reaching a
// statement, and that the server's catalog and the connections of the
// test's users differ from before only by what a legitimate grant was
// meant to create.
func TestHostileInputRejected(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	before := snapshot(t, f)
	ctx := context.Background()
	unchanged := func(t *testing.T, what string) {
		t.Helper()
		if removed, added := diff(before, snapshot(t, f)); len(removed)+len(added) > 0 {
			t.Fatalf("%s changed the catalog: removed %q, added %q", what, removed, added)
		}
	}
	rejected := func(t *testing.T, what string, err error) {
		t.Helper()
		if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
			t.Errorf("%s: %v (code %q), want invalid", what, err, code)
		}
	}

	t.Run("spec", func(t *testing.T) {
		for i, h := range hostileSpecs(f) {
			err := c.ValidateSpec(h.spec)
			rejected(t, fmt.Sprintf("case %d %q: ValidateSpec", i, h.spec), err)
			if field := lapse.ErrorField(err); !strings.HasPrefix(field, h.field) {
				t.Errorf("case %d %q: error names field %q, want %q", i, h.spec, field, h.field)
			}
			id := lapse.NewID(lapse.PrefixGrant, time.Now())
			_, err = c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: h.spec, ExpiresAt: time.Now().Add(time.Hour)})
			rejected(t, fmt.Sprintf("case %d: Grant", i), err)
			_, err = c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{f.spec(), h.spec}})
			rejected(t, fmt.Sprintf("case %d: Discover", i), err)
			if field := lapse.ErrorField(err); field != "specs[1]" {
				t.Errorf("case %d: Discover names field %q, want specs[1]", i, field)
			}
			// Revoke and Verify take the spec too, and must neither use a
			// hostile one nor let it block them.
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: h.spec}); err != nil {
				t.Errorf("case %d: Revoke with the spec: %v", i, err)
			}
			if v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Spec: h.spec}); err != nil || !v.Gone() {
				t.Errorf("case %d: Verify with the spec: %v, %+v", i, err, v)
			}
		}
		unchanged(t, "rejected specs")
	})

	t.Run("grant ID", func(t *testing.T) {
		for _, id := range hostileGrantIDs {
			_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: f.spec()})
			rejected(t, fmt.Sprintf("grant ID %q: Grant", id), err)
			_, err = c.Revoke(ctx, &connector.RevokeRequest{GrantID: id})
			rejected(t, fmt.Sprintf("grant ID %q: Revoke", id), err)
			_, err = c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Probe: map[string]string{"password": "x"}})
			rejected(t, fmt.Sprintf("grant ID %q: Verify", id), err)
		}
		// Printable grant IDs that are not Lapse IDs are hashed into a
		// safe name: Verify and Revoke of a grant that never existed find
		// nothing and change nothing.
		safe := regexp.MustCompile(`^` + f.prefix + `[a-z0-9]{25}$`)
		for _, id := range oddGrantIDs {
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Probe: map[string]string{"password": id}})
			if err != nil {
				t.Fatalf("grant ID %q: Verify: %v", id, err)
			}
			if !v.Gone() {
				t.Errorf("grant ID %q: Verify of a grant never made reports residue: %+v", id, v.Checkpoints)
			}
			users, _ := checkpoint(t, v, lapse.CheckpointTarget).Evidence["users"].([]string)
			if len(users) != 1 || !safe.MatchString(users[0]) {
				t.Errorf("grant ID %q: Verify looked at users %q, want one hashed name", id, users)
			}
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
				t.Errorf("grant ID %q: Revoke: %v", id, err)
			}
		}
		unchanged(t, "hostile grant IDs")
	})

	// Hostile State is ignored, not obeyed: Revoke and Verify still work
	// on the name derived from the grant ID and touch nothing else — not
	// the admin account, not another grant's user or its live connection,
	// not an event they did not make.
	t.Run("state", func(t *testing.T) {
		bystanderID, bystander := f.grant(t, c, f.spec())
		live := grantee(t, bystander)
		live.SetMaxOpenConns(1)
		var connID int64
		if err := live.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&connID); err != nil {
			t.Fatalf("bystander session: %v", err)
		}
		before := snapshot(t, f)
		other := bystander.Info["user"]
		states := []string{
			`{"user":"root","host":"localhost"}`, `{"user":"root","host":"127.0.0.1"}`, `{"user":"root","host":"%"}`,
			`{"user":"x'; DROP USER root; --","host":"%"}`, `{"user":"x` + "`" + `; DROP DATABASE mysql; --"}`,
			`{"event":"mysql.x"}`, `{"event":"` + f.db + `.x'; DROP DATABASE mysql; --"}`, `not json`, `{`, `null`, `[]`, `"root"`,
			`{"user":"` + other + `","host":"%"}`, `{"user":"` + other + `","host":"localhost'; DROP USER root; --"}`,
			`{"user":"` + other + `","host":"%","event":"mysql.` + other + `"}`,
			`{"user":"` + other + `\u0000","host":"%"}`, `{"user":"` + other + `%"}`, `{"user":"` + other[:len(other)-1] + `_"}`,
			`{"user":"` + strings.Repeat("a", 1<<16) + `"}`, string([]byte{'{', '"', 'u', 0xff, '"', ':', '1', '}'}),
		}
		for _, st := range states {
			id := lapse.NewID(lapse.PrefixGrant, time.Now())
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: []byte(st), Probe: bystander.Probe})
			if err != nil {
				t.Fatalf("Verify with state %.80q: %v", st, err)
			}
			// Had State redirected Verify to the bystander, its account
			// and its session would be residue and the probe, made with
			// the bystander's own password, would have logged in.
			if !v.Gone() {
				t.Errorf("Verify with state %.80q reports residue of another user: %+v", st, v.Checkpoints)
			}
			if users, _ := checkpoint(t, v, lapse.CheckpointTarget).Evidence["users"].([]string); !slices.Equal(users, []string{c.UserName(id)}) {
				t.Errorf("Verify with state %.80q looked at users %q, want only %s", st, users, c.UserName(id))
			}
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: []byte(st)}); err != nil {
				t.Errorf("Revoke with state %.80q: %v", st, err)
			}
		}
		if removed, added := diff(before, snapshot(t, f)); len(removed)+len(added) > 0 {
			t.Fatalf("hostile State changed the catalog or the bystander's connection: removed %q, added %q", removed, added)
		}
		var again int64
		if err := live.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&again); err != nil || again != connID {
			t.Fatalf("the bystander's connection %d was touched by a Revoke with hostile State: now %d (%v)", connID, again, err)
		}
		if err := login(ctx, bystander, "SELECT 1"); err != nil {
			t.Fatalf("another grant's user was touched by a Revoke with hostile State: %v", err)
		}
		live.Close()
		mustRevoke(t, c, bystanderID, bystander)
		unchanged(t, "hostile State")
	})

	// The probe material comes back from the store sealed, but is not
	// trusted either: it is only ever the password of a login attempt as
	// the grant's own user. A hostile one fails to log in — also as a
	// user that exists — and reaches no statement.
	t.Run("probe", func(t *testing.T) {
		id, g := f.grant(t, c, f.spec())
		before := snapshot(t, f)
		fresh := lapse.NewID(lapse.PrefixGrant, time.Now())
		for _, h := range hostileValues {
			for _, probe := range []map[string]string{
				{"password": h}, {"password": g.Secret["password"] + h}, {"password": h, h: g.Secret["password"]},
			} {
				v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: probe})
				if err != nil {
					t.Fatalf("Verify of a live grant with probe %.40q: %v", h, err)
				}
				acc := checkpoint(t, v, lapse.CheckpointTarget)
				if p, _ := acc.Evidence["login_probe"].(string); !strings.HasPrefix(p, "denied") {
					t.Errorf("probe %.40q as the live user: outcome %q, want denied", h, p)
				}
				if slices.ContainsFunc(acc.Residue, func(r string) bool { return strings.Contains(r, "login") }) {
					t.Errorf("probe %.40q: residue %q", h, acc.Residue)
				}
				if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: fresh, Probe: probe}); err != nil {
					t.Fatalf("Verify of a grant never made with probe %.40q: %v", h, err)
				}
			}
		}
		if removed, added := diff(before, snapshot(t, f)); len(removed)+len(added) > 0 {
			t.Fatalf("hostile probes changed the catalog: removed %q, added %q", removed, added)
		}
		if err := login(ctx, g, "SELECT 1"); err != nil {
			t.Fatalf("hostile probes locked out the grant's own login: %v", err)
		}
		mustRevoke(t, c, id, g)
		unchanged(t, "hostile probes")
	})

	// The principal and the entitlement name never reach a statement: each
	// grant succeeds and creates exactly its own user and privileges, and
	// Revoke and Verify with the same hostile principal remove and prove
	// gone exactly that.
	t.Run("principal and entitlement", func(t *testing.T) {
		for i, h := range hostileValues {
			id := lapse.NewID(lapse.PrefixGrant, time.Now())
			p := lapse.Principal{ID: h, Kind: lapse.KindHuman, Name: h, Groups: []string{h, "admins", h}, Scopes: []string{h}, CredentialID: h}
			g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Principal: p, Entitlement: h, Spec: f.spec(), ExpiresAt: time.Now().Add(time.Hour)})
			if err != nil {
				t.Fatalf("value %d: Grant with hostile principal and entitlement: %v", i, err)
			}
			user := g.Info["user"]
			if user != c.UserName(id) {
				t.Errorf("value %d: user %q, want %q", i, user, c.UserName(id))
			}
			removed, added := diff(before, snapshot(t, f))
			if len(removed) > 0 || len(added) == 0 {
				t.Errorf("value %d: grant removed %q, added %q", i, removed, added)
			}
			for _, a := range added {
				if !strings.Contains(a, "|"+user+"|") {
					t.Errorf("value %d: the grant added %q, which is not about its own user %s", i, a, user)
				}
			}
			for k, v := range g.Info {
				if strings.Contains(v, h) && len(h) > 2 {
					t.Errorf("value %d: Info %s = %q repeats the hostile value", i, k, v)
				}
			}
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Principal: p, Spec: f.spec(), State: g.State}); err != nil {
				t.Fatalf("value %d: Revoke with hostile principal: %v", i, err)
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Principal: p, Spec: f.spec(), State: g.State, Probe: g.Probe})
			if err != nil {
				t.Fatalf("value %d: Verify with hostile principal: %v", i, err)
			}
			if !v.Gone() {
				t.Errorf("value %d: not gone after Revoke: %+v", i, v.Checkpoints)
			}
			unchanged(t, fmt.Sprintf("value %d: grant and revoke with a hostile principal", i))
		}
	})

	// A grant ID full of SQL is only ever hashed into a safe name.
	t.Run("odd grant ID", func(t *testing.T) {
		for _, id := range oddGrantIDs[:3] {
			g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: f.spec(), ExpiresAt: time.Now().Add(time.Hour)})
			if err != nil {
				t.Fatalf("Grant with a strange but printable grant ID %q: %v", id, err)
			}
			t.Cleanup(func() { c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}) })
			user := g.Info["user"]
			if !regexp.MustCompile(`^[a-z0-9_]{1,32}$`).MatchString(user) {
				t.Errorf("user name %q is outside the safe alphabet or longer than 32", user)
			}
			removed, added := diff(before, snapshot(t, f))
			if len(added) == 0 {
				t.Fatal("a valid grant changed nothing")
			}
			if len(removed) > 0 {
				t.Errorf("a valid grant removed catalog entries: %q", removed)
			}
			for _, a := range added {
				if !strings.Contains(a, "|"+user+"|") {
					t.Errorf("a valid grant added %q, which is not about its own user %s", a, user)
				}
			}
			mustRevoke(t, c, id, g)
			if v := mustVerify(t, c, id, g); !v.Gone() {
				t.Errorf("grant ID %q: not gone after Revoke: %+v", id, v.Checkpoints)
			}
			unchanged(t, "grant and revoke with grant ID "+id)
		}
	})
}

// TestConfigValidate rejects configurations that would put unchecked text
// into statements or break the name bound.
func TestConfigValidate(t *testing.T) {
	dsn := lapse.SecretRef{Value: testDSN()}
	good := mariadb.Config{DSN: dsn}
	if err := good.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for _, tc := range []struct {
		field string
		cfg   mariadb.Config
	}{
		{"dsn", mariadb.Config{}},
		{"dsn", mariadb.Config{DSN: lapse.SecretRef{Value: "root@tcp(127.0.0.1:3306)/?multiStatements=true"}}},
		{"dsn", mariadb.Config{DSN: lapse.SecretRef{Value: "not a dsn"}}},
		{"prefix", mariadb.Config{DSN: dsn, Prefix: "toolong_"}},
		{"prefix", mariadb.Config{DSN: dsn, Prefix: "Lapse_"}},
		{"prefix", mariadb.Config{DSN: dsn, Prefix: "1x_"}},
		{"prefix", mariadb.Config{DSN: dsn, Prefix: "x`_"}},
		{"account_host", mariadb.Config{DSN: dsn, AccountHost: "x'"}},
		{"account_host", mariadb.Config{DSN: dsn, AccountHost: "a b"}},
		{"account_host", mariadb.Config{DSN: dsn, AccountHost: "x`"}},
		{"definers", mariadb.Config{DSN: dsn, Definers: "delete"}},
		{"definer_reassign_to", mariadb.Config{DSN: dsn, Definers: mariadb.DefinerReassign}},
		{"definer_reassign_to", mariadb.Config{DSN: dsn, Definers: mariadb.DefinerReassign, DefinerReassignTo: "x'@localhost"}},
		{"definer_reassign_to", mariadb.Config{DSN: dsn, Definers: mariadb.DefinerReassign, DefinerReassignTo: "lapse_x@localhost"}},
		{"definer_reassign_to", mariadb.Config{DSN: dsn, DefinerReassignTo: "owner@localhost"}},
		{"expiry_event_schema", mariadb.Config{DSN: dsn, ExpiryEventSchema: "a;b"}},
		{"max_open_conns", mariadb.Config{DSN: dsn, MaxOpenConns: -1}},
		{"kill_wait", mariadb.Config{DSN: dsn, KillWait: lapse.Duration(-time.Second)}},
		{"address", mariadb.Config{DSN: dsn, Address: "host port"}},
	} {
		err := tc.cfg.Validate()
		if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != tc.field {
			t.Errorf("%+v: got %v (field %q), want invalid %s", tc.cfg, err, lapse.ErrorField(err), tc.field)
		}
		if err != nil && strings.Contains(err.Error(), "127.0.0.1:3306") {
			t.Errorf("an error repeats the DSN: %v", err)
		}
	}
}

// TestUserNameBound: names fit in 32 characters of [a-z0-9_] whatever the
// grant ID, lapse grant IDs map back, and different IDs never share a name.
func TestUserNameBound(t *testing.T) {
	re := regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	seen := map[string]string{}
	ids := []string{"x", "gr_", "gr_x", strings.Repeat("é", 100), "gr_`;--", "GR_ABC"}
	for range 1000 {
		ids = append(ids, lapse.NewID(lapse.PrefixGrant, time.Now()))
	}
	for _, prefix := range []string{"lapse_", "a", "abcdef"} {
		for _, id := range ids {
			n := mariadb.UserName(prefix, id)
			if len(n) > mariadb.MaxUserLength || !re.MatchString(n) {
				t.Fatalf("UserName(%q, %q) = %q: outside the bound or alphabet", prefix, id, n)
			}
			if !strings.HasPrefix(n, prefix) {
				t.Fatalf("UserName(%q, %q) = %q lacks the prefix", prefix, id, n)
			}
			if n != mariadb.UserName(prefix, id) {
				t.Fatal("UserName is not deterministic")
			}
			key := prefix + "\x00" + n
			if other, ok := seen[key]; ok && other != id {
				t.Fatalf("grant IDs %q and %q share user name %q", other, id, n)
			}
			seen[key] = id
		}
	}
	if got := mariadb.UserName("lapse_", "gr_06h3v3sg5wx8pp7szqxe4x39j8"); got != "lapse_06h3v3sg5wx8pp7szqxe4x39j8" || len(got) != 32 {
		t.Errorf("lapse grant ID maps to %q, want its random part after the prefix (32 characters)", got)
	}
}
