package sqltest

import (
	"context"
	"database/sql"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Roles is a throw-away database owned by a schema-owner role, with a
// second login role for the server: the setup of docs/audit.md, "Database
// roles", before the owner migrates and grants.
type Roles struct {
	Owner, Server string // role names
	Password      string // of both roles
	// OwnerDSN and ServerDSN connect to the database as each role.
	OwnerDSN, ServerDSN string
}

// PostgresRoles creates two login roles with random names (roles are
// global to the cluster, so names must not collide with parallel tests)
// and a database owned by the first, in which only the owner may create
// objects. At cleanup it drops the database and both roles. Without
// PostgreSQL the test skips loudly, or fails when CI=true.
func PostgresRoles(tb testing.TB) *Roles {
	tb.Helper()
	base := PostgresDSN(tb) // registers the database's own cleanup
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		tb.Fatal(err)
	}
	db := cfg.Database
	suffix := randomSuffix(tb)
	r := &Roles{Owner: "lapse_owner_" + suffix, Server: "lapse_server_" + suffix, Password: randomSuffix(tb)}
	maintenance, err := pgx.ParseConfig(withDatabase(base, "postgres"))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Registered after PostgresDSN's cleanup, so it runs first: a role
	// that owns the database cannot be dropped before the database is.
	tb.Cleanup(func() {
		a := stdlib.OpenDB(*maintenance)
		defer a.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := a.ExecContext(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
			tb.Errorf("sqltest: drop database %s: %v", db, err)
		}
		for _, role := range []string{r.Server, r.Owner} {
			if _, err := a.ExecContext(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
				tb.Errorf("sqltest: drop role %s: %v", role, err)
			}
		}
	})
	admin := stdlib.OpenDB(*cfg)
	defer admin.Close()
	admin.SetMaxOpenConns(1)
	// The roles' password is random hex, so it can be spliced.
	stmts := []string{
		"CREATE ROLE " + r.Owner + " LOGIN PASSWORD '" + r.Password + "'",
		"CREATE ROLE " + r.Server + " LOGIN PASSWORD '" + r.Password + "'",
		// The database was made by the superuser; hand it to the owner,
		// with the public schema (owned by the database owner since
		// PostgreSQL 15). Older servers let every role create in public:
		// take that away, as docs/audit.md says.
		"ALTER DATABASE " + db + " OWNER TO " + r.Owner,
		"ALTER SCHEMA public OWNER TO " + r.Owner,
		"REVOKE CREATE ON SCHEMA public FROM PUBLIC",
	}
	for _, q := range stmts {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			tb.Fatalf("sqltest: %s: %v", q, err)
		}
	}
	r.OwnerDSN = withUser(base, r.Owner, r.Password)
	r.ServerDSN = withUser(base, r.Server, r.Password)
	return r
}

// WithSchema returns dsn with schema first on its search path.
func WithSchema(dsn, schema string) string { return withParam(dsn, "search_path", schema) }

// OpenRaw opens a plain database/sql handle on dsn (one connection),
// closed at cleanup: for tests that act on the database as an attacker or
// an operator would, outside the store.
func OpenRaw(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(1)
	tb.Cleanup(func() { db.Close() })
	return db
}

// withUser returns dsn connecting as user with password.
func withUser(dsn, user, password string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			u.User = url.UserPassword(user, password)
			return u.String()
		}
	}
	return dsn + " user=" + user + " password=" + password
}
