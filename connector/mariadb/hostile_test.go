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
// touch.
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

// snapshot returns the server's catalog as a sorted list of lines.
func snapshot(t *testing.T, admin *sql.DB) []string {
	t.Helper()
	var out []string
	for _, q := range snapshotQueries {
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
	sort.Strings(out)
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

// TestHostileInputRejected feeds hostile input into every caller-influenced
// field and checks that ValidateSpec and Grant reject it with EINVALID (or
// ETOOLARGE) naming the field, and that the server's catalog is unchanged;
// then that a valid grant changes the catalog only by its own user.
func TestHostileInputRejected(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	before := snapshot(t, f.admin)
	ctx := context.Background()
	for i, h := range hostileSpecs(f) {
		err := c.ValidateSpec(h.spec)
		if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
			t.Errorf("case %d %q: ValidateSpec: code %q (%v), want invalid", i, h.spec, code, err)
			continue
		}
		if field := lapse.ErrorField(err); !strings.HasPrefix(field, h.field) {
			t.Errorf("case %d %q: error names field %q, want %q", i, h.spec, field, h.field)
		}
		id := lapse.NewID(lapse.PrefixGrant, time.Now())
		_, err = c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: h.spec, ExpiresAt: time.Now().Add(time.Hour)})
		if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
			t.Errorf("case %d: Grant: code %q, want invalid", i, code)
		}
	}
	for _, id := range []string{"", "gr_\x00", "gr_\xff", "gr x", "gr\n", strings.Repeat("g", 300)} {
		_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: f.spec()})
		if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
			t.Errorf("grant ID %q: Grant: code %q, want invalid", id, code)
		}
		_, err = c.Revoke(ctx, &connector.RevokeRequest{GrantID: id})
		if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
			t.Errorf("grant ID %q: Revoke: code %q, want invalid", id, code)
		}
	}
	if only1, only2 := diff(before, snapshot(t, f.admin)); len(only1)+len(only2) > 0 {
		t.Fatalf("rejected specs or grant IDs changed the catalog: removed %q, added %q", only1, only2)
	}
	// Hostile State is ignored, not obeyed: Revoke still works on the name
	// derived from the grant ID and touches nothing else — not the admin
	// account, not another grant's user, not an event it did not make.
	bystanderID, bystander := f.grant(t, c, f.spec())
	before = snapshot(t, f.admin)
	for _, st := range []string{
		`{"user":"root","host":"localhost"}`, `{"user":"root","host":"127.0.0.1"}`,
		`{"user":"x'; DROP USER root; --","host":"%"}`, `{"event":"mysql.x"}`, `not json`,
		`{"user":"` + bystander.Info["user"] + `","host":"%"}`,
		`{"user":"` + bystander.Info["user"] + `","host":"%","event":"mysql.` + bystander.Info["user"] + `"}`,
	} {
		id := lapse.NewID(lapse.PrefixGrant, time.Now())
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: []byte(st)}); err != nil {
			t.Errorf("Revoke with state %s: %v", st, err)
		}
	}
	if only1, only2 := diff(before, snapshot(t, f.admin)); len(only1)+len(only2) > 0 {
		t.Fatalf("revoking with hostile State changed the catalog: removed %q, added %q", only1, only2)
	}
	if err := login(ctx, bystander, "SELECT 1"); err != nil {
		t.Fatalf("another grant's user was touched by a Revoke with hostile State: %v", err)
	}
	mustRevoke(t, c, bystanderID, bystander)
	before = snapshot(t, f.admin)

	// A grant ID full of SQL is only ever hashed into a safe name.
	id := "gr_`';DROP/**/USER/**/root@localhost;--"
	g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: f.spec(), ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatalf("Grant with a strange but printable grant ID: %v", err)
	}
	t.Cleanup(func() { c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}) })
	user := g.Info["user"]
	if !regexp.MustCompile(`^[a-z0-9_]{1,32}$`).MatchString(user) {
		t.Errorf("user name %q is outside the safe alphabet or longer than 32", user)
	}
	_, added := diff(before, snapshot(t, f.admin))
	if len(added) == 0 {
		t.Fatal("a valid grant changed nothing")
	}
	_, removed := diff(snapshot(t, f.admin), before)
	if len(removed) > 0 {
		t.Errorf("a valid grant removed catalog entries: %q", removed)
	}
	for _, a := range added {
		if !strings.Contains(a, "|"+user+"|") {
			t.Errorf("a valid grant added %q, which is not about its own user %s", a, user)
		}
	}
	mustRevoke(t, c, id, g)
	if only1, only2 := diff(before, snapshot(t, f.admin)); len(only1)+len(only2) > 0 {
		t.Errorf("after Revoke the catalog differs from before the grant: removed %q, added %q", only1, only2)
	}
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
