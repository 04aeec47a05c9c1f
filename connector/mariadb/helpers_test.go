package mariadb_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
	"github.com/lapsehq/lapse/internal/testlock"
)

// testDSN is the administrative DSN of the test server: a MariaDB on
// 127.0.0.1:3306 whose root has no password, unless LAPSE_TEST_MARIADB_DSN
// says otherwise.
func testDSN() string {
	if d := os.Getenv("LAPSE_TEST_MARIADB_DSN"); d != "" {
		return d
	}
	return "root@tcp(127.0.0.1:3306)/"
}

// mustAdmin returns a bare administrative client of the test server. If the
// server is unreachable the test fails under CI=true and is skipped (loudly)
// otherwise.
func mustAdmin(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", testDSN())
	if err != nil {
		t.Fatalf("open admin client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		if os.Getenv("CI") == "true" {
			t.Fatalf("MariaDB is required under CI=true and is unreachable: %v", err)
		}
		t.Skipf("SKIPPING: MariaDB is not reachable (%v); set LAPSE_TEST_MARIADB_DSN or start MariaDB on 127.0.0.1:3306", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// rnd returns n random lower-case hex characters.
func rnd(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// fixture is a database with a table and a role on the test server, all
// uniquely named and removed at cleanup.
type fixture struct {
	admin  *sql.DB
	db     string // database, e.g. lt_3fa9c1_db (contains underscores on purpose)
	role   string // a role with SELECT, INSERT on db.*
	prefix string // a user-name prefix unique to the test
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	admin := mustAdmin(t)
	// Other packages' tests keep off the server while this one runs: the
	// hostile input test compares the whole catalog (internal/testlock).
	testlock.MariaDB(t, admin)
	id := rnd(6)
	f := &fixture{admin: admin, db: "lt_" + id + "_db", role: "lt_" + id + "_role", prefix: "t" + rnd(4) + "_"}
	f.exec(t, "CREATE DATABASE `"+f.db+"`")
	t.Cleanup(func() { f.execQuiet(t, "DROP DATABASE IF EXISTS `"+f.db+"`") })
	f.exec(t, "CREATE TABLE `"+f.db+"`.items (id INT PRIMARY KEY, name VARCHAR(32)) ENGINE=InnoDB")
	f.exec(t, "INSERT INTO `"+f.db+"`.items VALUES (1, 'one'), (2, 'two')")
	f.exec(t, "CREATE TABLE `"+f.db+"`.locked (id INT) ENGINE=InnoDB")
	f.exec(t, "CREATE ROLE `"+f.role+"`")
	t.Cleanup(func() { f.execQuiet(t, "DROP ROLE IF EXISTS `"+f.role+"`") })
	f.exec(t, "GRANT SELECT, INSERT ON `"+strings.ReplaceAll(f.db, "_", `\_`)+"`.* TO `"+f.role+"`")
	t.Cleanup(func() { f.dropPrefixUsers(t) })
	return f
}

func (f *fixture) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := f.admin.Exec(q, args...); err != nil {
		t.Fatalf("admin: %s: %v", q, err)
	}
}

func (f *fixture) execQuiet(t testing.TB, q string) {
	if _, err := f.admin.Exec(q); err != nil {
		t.Logf("cleanup: %s: %v", q, err)
	}
}

// dropPrefixUsers removes every user with the test's prefix, so a failing
// test leaves nothing behind.
func (f *fixture) dropPrefixUsers(t testing.TB) {
	rows, err := f.admin.Query("SELECT User, Host FROM mysql.global_priv WHERE LEFT(User, ?) = ?", len(f.prefix), f.prefix)
	if err != nil {
		t.Logf("cleanup: list users: %v", err)
		return
	}
	var accts [][2]string
	for rows.Next() {
		var u, h string
		if rows.Scan(&u, &h) == nil {
			accts = append(accts, [2]string{u, h})
		}
	}
	rows.Close()
	for _, a := range accts {
		f.execQuiet(t, fmt.Sprintf("KILL HARD CONNECTION USER `%s`", a[0]))
		f.execQuiet(t, fmt.Sprintf("DROP USER IF EXISTS `%s`@`%s`", a[0], a[1]))
	}
}

// spec is the fixture's standard entitlement: its role, UPDATE on the
// table and LOCK TABLES on the database directly.
func (f *fixture) spec() map[string]any {
	return map[string]any{
		"roles": []any{f.role},
		"grants": []any{
			map[string]any{"database": f.db, "table": "items", "privileges": []any{"UPDATE"}},
			map[string]any{"database": f.db, "privileges": []any{"LOCK TABLES", "select"}},
		},
	}
}

func (f *fixture) config(mut ...func(*mariadb.Config)) mariadb.Config {
	cfg := mariadb.Config{DSN: lapse.SecretRef{Value: testDSN()}, Prefix: f.prefix, KillWait: lapse.Duration(30 * time.Second)}
	for _, m := range mut {
		m(&cfg)
	}
	return cfg
}

func (f *fixture) open(t testing.TB, mut ...func(*mariadb.Config)) *mariadb.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := mariadb.New(ctx, f.config(mut...), connector.Env{Name: "testdb"})
	if err != nil {
		t.Fatalf("mariadb.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// grant makes a grant with a fresh ID and revokes it at cleanup.
func (f *fixture) grant(t testing.TB, c *mariadb.Conn, spec map[string]any) (string, *connector.GrantResponse) {
	t.Helper()
	id := lapse.NewID(lapse.PrefixGrant, time.Now())
	t.Cleanup(func() {
		if _, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}); err != nil {
			t.Errorf("cleanup revoke %s: %v", id, err)
		}
	})
	g, err := c.Grant(context.Background(), &connector.GrantRequest{
		GrantID: id, Entitlement: "test/entitlement", Spec: spec,
		ExpiresAt: time.Now().Add(time.Hour).Truncate(time.Second),
	})
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return id, g
}

// grantee returns a client that logs in with the grant's credentials, and
// its connections are closed at cleanup.
func grantee(t testing.TB, g *connector.GrantResponse) *sql.DB {
	t.Helper()
	cfg := mysql.NewConfig()
	cfg.User = g.Info["user"]
	cfg.Passwd = g.Secret["password"]
	cfg.Net = "tcp"
	cfg.Addr = g.Info["address"]
	cfg.Timeout = 5 * time.Second
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatalf("grantee connector: %v", err)
	}
	db := sql.OpenDB(mc)
	t.Cleanup(func() { db.Close() })
	return db
}

// login opens one new connection with the grant's credentials and runs a
// query with it; it returns the login or query error.
func login(ctx context.Context, g *connector.GrantResponse, query string) error {
	cfg := mysql.NewConfig()
	cfg.User = g.Info["user"]
	cfg.Passwd = g.Secret["password"]
	cfg.Net = "tcp"
	cfg.Addr = g.Info["address"]
	cfg.Timeout = 5 * time.Second
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(mc)
	defer db.Close()
	db.SetMaxIdleConns(0)
	var x any
	return db.QueryRowContext(ctx, query).Scan(&x)
}

// mysqlErrno returns the server error number in err, or 0.
func mysqlErrno(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

func residueOf(v *connector.VerifyResponse, kind lapse.CheckpointKind) []string {
	var out []string
	for _, c := range v.Checkpoints {
		if c.Kind == kind {
			out = append(out, c.Residue...)
		}
	}
	return out
}

func checkpoint(t testing.TB, v *connector.VerifyResponse, kind lapse.CheckpointKind) connector.CheckpointResult {
	t.Helper()
	for _, c := range v.Checkpoints {
		if c.Kind == kind {
			return c
		}
	}
	t.Fatalf("Verify returned no %s checkpoint", kind)
	return connector.CheckpointResult{}
}

func mustVerify(t testing.TB, c *mariadb.Conn, id string, g *connector.GrantResponse) *connector.VerifyResponse {
	t.Helper()
	req := &connector.VerifyRequest{GrantID: id}
	if g != nil {
		req.State, req.Probe = g.State, g.Probe
	}
	v, err := c.Verify(context.Background(), req)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return v
}

func mustRevoke(t testing.TB, c *mariadb.Conn, id string, g *connector.GrantResponse) *connector.RevokeResponse {
	t.Helper()
	req := &connector.RevokeRequest{GrantID: id}
	if g != nil {
		req.State = g.State
	}
	r, err := c.Revoke(context.Background(), req)
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	return r
}
