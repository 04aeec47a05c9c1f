package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// adminDSN is the superuser connection the tests use; LAPSE_TEST_POSTGRES_DSN
// overrides the local default.
func adminDSN() string {
	if v := os.Getenv("LAPSE_TEST_POSTGRES_DSN"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// requireServer connects to the test server. Without one the test fails
// under CI=true and is skipped, loudly, otherwise.
func requireServer(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, adminDSN())
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		msg := fmt.Sprintf("PostgreSQL is not reachable at %s (set LAPSE_TEST_POSTGRES_DSN): %v", redact(adminDSN()), err)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip("SKIPPING: " + msg)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		u.User = url.User(u.User.Username())
		return u.String()
	}
	return "(dsn)"
}

func randSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func bg(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// fixture is one test's world on the shared server: a connector prefix no
// other test uses, an entitled group role with SELECT on a table in its own
// schema, and cleanup that removes all of it and any role left with the
// prefix.
type fixture struct {
	admin  *pgxpool.Pool
	id     string
	prefix string
	group  string
	schema string
	table  string // schema-qualified, quoted
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	admin := requireServer(tb)
	id := randSuffix()
	f := &fixture{
		admin:  admin,
		id:     id,
		prefix: "lt" + id + "_",
		group:  "ltg_" + id + "_read",
		schema: "lts_" + id,
	}
	f.table = ident(f.schema) + ".items"
	ctx := bg(tb)
	tb.Cleanup(func() { f.cleanup(tb) })
	f.exec(tb, ctx, "CREATE ROLE "+ident(f.group)+" NOLOGIN")
	f.exec(tb, ctx, "CREATE SCHEMA "+ident(f.schema))
	f.exec(tb, ctx, "CREATE TABLE "+f.table+" (id int PRIMARY KEY, name text)")
	f.exec(tb, ctx, "INSERT INTO "+f.table+" VALUES (1, 'one'), (2, 'two')")
	f.exec(tb, ctx, "GRANT USAGE ON SCHEMA "+ident(f.schema)+" TO "+ident(f.group))
	f.exec(tb, ctx, "GRANT SELECT ON "+f.table+" TO "+ident(f.group))
	return f
}

func (f *fixture) exec(tb testing.TB, ctx context.Context, sql string, args ...any) {
	tb.Helper()
	if _, err := f.admin.Exec(ctx, sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

// cleanup removes every role with the fixture's prefix or id (whatever a
// failed test left), the schema, and the group.
func (f *fixture) cleanup(tb testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := f.admin.Query(ctx, `SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1) OR rolname::text LIKE $2 ORDER BY 1 DESC`, f.prefix, "%"+f.id+"%")
	if err != nil {
		tb.Errorf("cleanup: list roles: %v", err)
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Errorf("cleanup: list roles: %v", err)
		return
	}
	for _, n := range names {
		_, _ = f.admin.Exec(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", n)
	}
	_, _ = f.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident(f.schema)+" CASCADE")
	for _, n := range names {
		_, _ = f.admin.Exec(ctx, "DROP OWNED BY "+ident(n))
	}
	for _, n := range names {
		if _, err := f.admin.Exec(ctx, "DROP ROLE IF EXISTS "+ident(n)); err != nil {
			tb.Errorf("cleanup: drop role %s: %v", n, err)
		}
	}
}

// createDatabase makes a database that is dropped at cleanup (after the
// fixture's roles, which cleanup in that database must not depend on).
func (f *fixture) createDatabase(tb testing.TB, name string) {
	tb.Helper()
	ctx := bg(tb)
	f.exec(tb, ctx, "CREATE DATABASE "+ident(name))
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := f.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			tb.Errorf("cleanup: drop database %s: %v", name, err)
		}
	})
}

// dbDSN is the admin DSN pointing at another database.
func dbDSN(tb testing.TB, db string) string {
	tb.Helper()
	u, err := url.Parse(adminDSN())
	if err != nil {
		tb.Fatalf("parse dsn: %v", err)
	}
	u.Path = "/" + db
	return u.String()
}

func (f *fixture) config(mods ...func(*postgres.Config)) postgres.Config {
	cfg := postgres.Config{
		DSN:    lapse.SecretRef{Value: adminDSN()},
		Prefix: f.prefix,
	}
	for _, m := range mods {
		m(&cfg)
	}
	return cfg
}

// open opens a connector with the fixture's prefix, closed at cleanup.
func (f *fixture) open(tb testing.TB, mods ...func(*postgres.Config)) *postgres.Conn {
	tb.Helper()
	c, err := postgres.New(bg(tb), f.config(mods...), connector.Env{Name: "pg-test", Clock: lapse.SystemClock{}})
	if err != nil {
		tb.Fatalf("postgres.New: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (f *fixture) spec() map[string]any { return map[string]any{"roles": []any{f.group}} }

func grantRequest(id string, spec map[string]any) *connector.GrantRequest {
	return &connector.GrantRequest{
		GrantID:     id,
		Principal:   lapse.Principal{ID: "alice@example.com", Kind: lapse.KindHuman},
		Entitlement: "pg/read",
		Spec:        spec,
		ExpiresAt:   time.Now().UTC().Add(time.Hour).Truncate(time.Second),
	}
}

func newGrantID() string { return lapse.NewID(lapse.PrefixGrant, time.Now()) }

// grant makes a grant through c and fails the test on error.
func grant(tb testing.TB, c connector.Connector, spec map[string]any) (string, *connector.GrantResponse) {
	tb.Helper()
	id := newGrantID()
	resp, err := c.Grant(bg(tb), grantRequest(id, spec))
	if err != nil {
		tb.Fatalf("Grant: %v", err)
	}
	return id, resp
}

// loginConfig is a pgx configuration that logs in with the grant's
// credentials to database db ("" for the default).
func loginConfig(tb testing.TB, g *connector.GrantResponse, db string) *pgx.ConnConfig {
	tb.Helper()
	u := g.Secret["url"]
	if u == "" {
		tb.Fatal("grant has no url in Secret")
	}
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		tb.Fatal("grant url does not parse") // never print the url: it holds the password
	}
	if db != "" {
		cfg.Database = db
	}
	cfg.ConnectTimeout = 10 * time.Second
	return cfg
}

// login connects as the grantee with pgx, the server's own client library
// for Go.
func login(ctx context.Context, tb testing.TB, g *connector.GrantResponse, db string) (*pgx.Conn, error) {
	tb.Helper()
	return pgx.ConnectConfig(ctx, loginConfig(tb, g, db))
}

func revoke(tb testing.TB, c connector.Connector, id string, spec map[string]any, g *connector.GrantResponse) *connector.RevokeResponse {
	tb.Helper()
	req := &connector.RevokeRequest{GrantID: id, Spec: spec}
	if g != nil {
		req.State = g.State
	}
	resp, err := c.Revoke(bg(tb), req)
	if err != nil {
		tb.Fatalf("Revoke: %v", err)
	}
	return resp
}

func verify(tb testing.TB, c connector.Connector, id string, spec map[string]any, g *connector.GrantResponse) *connector.VerifyResponse {
	tb.Helper()
	req := &connector.VerifyRequest{GrantID: id, Spec: spec}
	if g != nil {
		req.State, req.Probe = g.State, g.Probe
	}
	v, err := c.Verify(bg(tb), req)
	if err != nil {
		tb.Fatalf("Verify: %v", err)
	}
	return v
}

func checkpoint(tb testing.TB, v *connector.VerifyResponse, name string) connector.CheckpointResult {
	tb.Helper()
	for _, c := range v.Checkpoints {
		if c.Name == name {
			return c
		}
	}
	tb.Fatalf("Verify reported no checkpoint %q", name)
	return connector.CheckpointResult{}
}

func requireGone(tb testing.TB, v *connector.VerifyResponse) {
	tb.Helper()
	for _, c := range v.Checkpoints {
		if !c.Gone {
			tb.Errorf("checkpoint %s not gone: residue %v, evidence %v", c.Name, c.Residue, c.Evidence)
		}
	}
	if !v.Gone() {
		tb.FailNow()
	}
}

func actionsContain(resp *connector.RevokeResponse, substr string) bool {
	for _, a := range resp.Actions {
		if strings.Contains(a, substr) {
			return true
		}
	}
	return false
}

// sessionsOf counts backends whose session user has the given OID or name,
// read directly by the test.
func sessionsOf(tb testing.TB, admin *pgxpool.Pool, oid uint32, name string) int {
	tb.Helper()
	var n int
	if err := admin.QueryRow(bg(tb), "SELECT count(*) FROM pg_stat_activity WHERE usesysid = $1 OR usename = $2", oid, name).Scan(&n); err != nil {
		tb.Fatalf("count sessions: %v", err)
	}
	return n
}

func roleExists(tb testing.TB, admin *pgxpool.Pool, name string) bool {
	tb.Helper()
	var ok bool
	if err := admin.QueryRow(bg(tb), "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&ok); err != nil {
		tb.Fatalf("check role: %v", err)
	}
	return ok
}
