package mariadb_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// TestGrantPrivilegesExact checks that the grant gives what the spec says
// and nothing more: the default role is active at login, the table grant
// works, and a database-level grant on a name with "_" does not leak to a
// database whose name differs in that position (MariaDB reads "_" as a
// wildcard there).
func TestGrantPrivilegesExact(t *testing.T) {
	f := newFixture(t)
	lookalike := strings.Replace(f.db, "_", "X", 1) // lt_abc_db → ltXabc_db
	f.exec(t, "CREATE DATABASE `"+lookalike+"`")
	t.Cleanup(func() { f.execQuiet(t, "DROP DATABASE IF EXISTS `"+lookalike+"`") })
	f.exec(t, "CREATE TABLE `"+lookalike+"`.secrets (id INT)")
	c := f.open(t)
	_, g := f.grant(t, c, f.spec())
	ctx := context.Background()
	if g.Info["default_role"] != f.role {
		t.Errorf("Info default_role = %q, want %s", g.Info["default_role"], f.role)
	}
	db := grantee(t, g)
	var role string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_ROLE()").Scan(&role); err != nil || role != f.role {
		t.Errorf("CURRENT_ROLE() at login = %q (%v), want %s", role, err, f.role)
	}
	if _, err := db.ExecContext(ctx, "UPDATE `"+f.db+"`.items SET name = 'uno' WHERE id = 1"); err != nil {
		t.Errorf("UPDATE granted on the table: %v", err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM `"+f.db+"`.items WHERE id = 2"); err == nil {
		t.Error("DELETE was not granted but works")
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM `"+lookalike+"`.secrets").Scan(&n); err == nil {
		t.Errorf("the grant on %s.* also opened %s: \"_\" was not escaped", f.db, lookalike)
	}
	if _, err := db.ExecContext(ctx, "CREATE USER `x`@`%`"); err == nil {
		t.Error("the grantee can create users")
	}
}

// TestGrantMissingRole: a role that does not exist is EINVALID, and the
// half-made user is removed.
func TestGrantMissingRole(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id := lapse.NewID(lapse.PrefixGrant, time.Now())
	_, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: id, Spec: map[string]any{"roles": []any{"lt_no_such_role_" + rnd(6)}}})
	if lapse.ErrorCode(err) != lapse.EINVALID {
		t.Fatalf("Grant with a missing role: %v, want invalid", err)
	}
	var left int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ?", c.UserName(id)).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Error("a failed Grant left its user behind")
	}
}

// TestGrantTwiceReplacesPassword: a repeated Grant (the broker lost the
// first response) yields one account whose only working password is the
// second one.
func TestGrantTwiceReplacesPassword(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g1 := f.grant(t, c, f.spec())
	g2, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: id, Spec: f.spec()})
	if err != nil {
		t.Fatal(err)
	}
	if g1.Secret["password"] == g2.Secret["password"] {
		t.Fatal("the second Grant returned the same password")
	}
	if err := login(context.Background(), g1, "SELECT 1"); err == nil {
		t.Error("the first password still works after the second Grant")
	}
	if err := login(context.Background(), g2, "SELECT 1"); err != nil {
		t.Errorf("the second password does not work: %v", err)
	}
	var n int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ?", g1.Info["user"]).Scan(&n); err != nil || n != 1 {
		t.Errorf("accounts for the grant = %d (%v), want 1", n, err)
	}
}

// TestVerifyProbeUnreachable: if the login probe cannot reach the server,
// Verify fails (the check could not run) instead of counting the failed
// connection as a refused login.
func TestVerifyProbeUnreachable(t *testing.T) {
	f := newFixture(t)
	c := f.open(t, func(cfg *mariadb.Config) {
		cfg.Address = "127.0.0.1:1"
		cfg.ProbeTimeout = lapse.Duration(2 * time.Second)
	})
	id, g := f.grant(t, c, f.spec())
	mustRevoke(t, c, id, g)
	_, err := c.Verify(context.Background(), &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Fatalf("Verify with an unreachable probe address: %v, want unavailable", err)
	}
}

// TestDiscover: Discover lists the connector's users by prefix (also an
// orphan no grant explains), and every other account or role that holds an
// entitled role or privilege: through the role, a chain of roles, a direct
// grant, a wildcard database grant, or a global privilege.
func TestDiscover(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := f.grant(t, c, f.spec())

	// An orphan: a prefixed user a crashed broker could have left.
	orphanID := lapse.NewID(lapse.PrefixGrant, time.Now())
	orphan := c.UserName(orphanID)
	f.exec(t, "CREATE USER `"+orphan+"`@`10.0.0.%` ACCOUNT LOCK")

	x := rnd(6)
	viaRole := "lt_" + x + "_viarole"
	chainRole := "lt_" + x + "_chain"
	viaChain := "lt_" + x + "_viachain"
	direct := "lt_" + x + "_direct"
	wild := "lt_" + x + "_wild"
	global := "lt_" + x + "_global"
	unrelated := "lt_" + x + "_unrelated"
	for _, u := range []string{viaRole, viaChain, direct, wild, global, unrelated} {
		f.exec(t, "CREATE USER `"+u+"`@`%` ACCOUNT LOCK")
		t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+u+"`@`%`") })
	}
	f.exec(t, "CREATE ROLE `"+chainRole+"`")
	t.Cleanup(func() { f.execQuiet(t, "DROP ROLE IF EXISTS `"+chainRole+"`") })
	f.exec(t, "GRANT `"+f.role+"` TO `"+viaRole+"`@`%`")
	f.exec(t, "GRANT `"+f.role+"` TO `"+chainRole+"`")
	f.exec(t, "GRANT `"+chainRole+"` TO `"+viaChain+"`@`%`")
	f.exec(t, "GRANT UPDATE ON `"+f.db+"`.items TO `"+direct+"`@`%`")
	// A wildcard database grant that covers the fixture's database.
	f.exec(t, "GRANT SELECT ON `lt\\_"+f.db[3:6]+"%`.* TO `"+wild+"`@`%`")
	f.exec(t, "GRANT PROCESS ON *.* TO `"+unrelated+"`@`%`")
	f.exec(t, "GRANT SELECT ON *.* TO `"+global+"`@`%`")

	spec := map[string]any{
		"roles":  []any{f.role},
		"grants": []any{map[string]any{"database": f.db, "privileges": []any{"SELECT"}}, map[string]any{"database": f.db, "table": "items", "privileges": []any{"UPDATE"}}},
	}
	d, err := c.Discover(context.Background(), &connector.DiscoverRequest{Specs: []map[string]any{spec}})
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	byName := map[string]connector.DiscoveredPrincipal{}
	for _, p := range d.Principals {
		byName[p.Name] = p
	}
	mine := byName[g.Info["account"]]
	if !mine.Ephemeral || mine.GrantID != id || !slices.Contains(mine.Privileges, "role:"+f.role) {
		t.Errorf("the grant's user: %+v", mine)
	}
	if o := byName[orphan+"@10.0.0.%"]; !o.Ephemeral || o.GrantID != orphanID {
		t.Errorf("orphan: %+v (want ephemeral with grant ID %s)", o, orphanID)
	}
	for name, want := range map[string]string{
		viaRole + "@%":  "role:" + f.role,
		viaChain + "@%": "role:" + chainRole,
		chainRole:       "role:" + f.role,
		direct + "@%":   "UPDATE on " + f.db + ".items",
		wild + "@%":     "SELECT on ",
		global + "@%":   "SELECT on *.*",
	} {
		p, ok := byName[name]
		if !ok {
			t.Errorf("standing privilege of %s not discovered", name)
			continue
		}
		if p.Ephemeral {
			t.Errorf("%s is reported as ephemeral", name)
		}
		if !slices.ContainsFunc(p.Privileges, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("%s privileges %v lack %q", name, p.Privileges, want)
		}
	}
	if _, ok := byName[unrelated+"@%"]; ok {
		t.Errorf("%s holds nothing entitled but is listed", unrelated)
	}
	if _, ok := byName[f.role]; ok {
		t.Errorf("the entitled role itself is listed as standing privilege")
	}

	_, err = c.Discover(context.Background(), &connector.DiscoverRequest{Specs: []map[string]any{{"roles": []any{"x'"}}}})
	if lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Discover with a hostile spec: %v, want invalid", err)
	}
}

// TestNewChecksAdminPrivileges: an administrative account that cannot see
// other users' connections (no PROCESS) would make Verify blind to live
// sessions, so New refuses it.
func TestNewChecksAdminPrivileges(t *testing.T) {
	f := newFixture(t)
	weak := "lt_" + rnd(6) + "_weak"
	pw := rnd(24)
	f.exec(t, "CREATE USER `"+weak+"`@`%` IDENTIFIED BY '"+pw+"'")
	t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+weak+"`@`%`") })
	f.exec(t, "GRANT CREATE USER, CONNECTION ADMIN ON *.* TO `"+weak+"`@`%`")
	cfg := f.config()
	cfg.DSN = lapse.SecretRef{Value: weak + ":" + pw + "@tcp(127.0.0.1:3306)/"}
	_, err := mariadb.New(context.Background(), cfg, connector.Env{})
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "dsn" {
		t.Fatalf("New with an admin lacking PROCESS: %v, want invalid dsn", err)
	}
	if strings.Contains(err.Error(), pw) {
		t.Error("the error repeats the admin password")
	}
}

// TestMaxUserConnections: the spec's connection limit is enforced by the
// server, and Verify counts a login refused only by that limit as accepted
// credentials (the server checks the limit after authentication).
func TestMaxUserConnections(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	spec := f.spec()
	spec["max_user_connections"] = 1
	id, g := f.grant(t, c, spec)
	conn, err := grantee(t, g).Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := login(context.Background(), g, "SELECT 1"); mysqlErrno(err) != 1226 {
		t.Fatalf("second connection: %v, want error 1226 (max_user_connections)", err)
	}
	v := mustVerify(t, c, id, g)
	if p, _ := checkpoint(t, v, lapse.CheckpointTarget).Evidence["login_probe"].(string); !strings.HasPrefix(p, "accepted") {
		t.Errorf("login probe at the connection limit = %q, want accepted", p)
	}
}
