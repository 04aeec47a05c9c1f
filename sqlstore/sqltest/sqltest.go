// Package sqltest opens throw-away stores for tests and benchmarks: SQLite in
// a temporary directory, and PostgreSQL in a uniquely named database that is
// dropped at cleanup.
//
// PostgreSQL is found at 127.0.0.1:5432 as user postgres, or at the base DSN
// in LAPSE_TEST_POSTGRES (a libpq key/value string or a postgres:// URL; its
// database is where test databases are created from). When PostgreSQL cannot
// be reached the test is skipped with a loud message, or fails when CI=true.
package sqltest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/lapsehq/lapse/sqlstore"
)

// PostgresEnv names the environment variable that overrides the base DSN.
const PostgresEnv = "LAPSE_TEST_POSTGRES"

// DefaultPostgresDSN is the base DSN when PostgresEnv is unset.
const DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// OpenSQLite opens a store on a new SQLite file in a temporary directory and
// closes it at cleanup.
func OpenSQLite(tb testing.TB) *sqlstore.Store {
	tb.Helper()
	return open(tb, sqlstore.DriverSQLite, SQLitePath(tb))
}

// SQLitePath returns a path for a new SQLite database in a temporary
// directory that is removed at cleanup.
func SQLitePath(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "lapse.db")
}

// OpenPostgres creates a database lapse_test_<random>, opens a store on it,
// and at cleanup closes the store and drops the database.
func OpenPostgres(tb testing.TB) *sqlstore.Store {
	tb.Helper()
	return open(tb, sqlstore.DriverPostgres, PostgresDSN(tb))
}

func open(tb testing.TB, driver, dsn string) *sqlstore.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := sqlstore.Open(ctx, driver, dsn)
	if err != nil {
		tb.Fatalf("open %s store: %v", driver, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close %s store: %v", driver, err)
		}
	})
	return s
}

// PostgresDSN creates a database lapse_test_<random> and returns a DSN for
// it, without opening a store (for tests that run several processes or
// stores on one database). The database is dropped at cleanup, with any
// connections still open to it.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		base = DefaultPostgresDSN
	}
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		tb.Fatalf("sqltest: %s cannot be parsed as a PostgreSQL DSN", PostgresEnv)
	}
	admin := stdlib.OpenDB(*cfg)
	admin.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		unreachable(tb, cfg, err)
	}

	name := "lapse_test_" + randomSuffix(tb)
	if err := createDatabase(ctx, admin, name); err != nil {
		admin.Close()
		tb.Fatalf("sqltest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("sqltest: drop database %s: %v", name, err)
		}
	})
	return withDatabase(base, name)
}

// createDatabase creates name, retrying while the template database is
// briefly in use by another test doing the same.
func createDatabase(ctx context.Context, admin *sql.DB, name string) error {
	for attempt := 0; ; attempt++ {
		_, err := admin.ExecContext(ctx, "CREATE DATABASE "+name)
		var pe *pgconn.PgError
		if err == nil || attempt == 20 || !errors.As(err, &pe) || pe.Code != "55006" {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(50*(attempt+1)) * time.Millisecond):
		}
	}
}

// OpenPostgresSchema opens a store in a new schema lapse_test_<random> of the
// database that dsn names (typically one made by PostgresDSN), and at cleanup
// closes the store and drops the schema. A schema costs milliseconds where a
// database costs seconds on a busy disk, so suites that need many empty
// stores share one database this way.
func OpenPostgresSchema(tb testing.TB, dsn string) *sqlstore.Store {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("sqltest: the DSN cannot be parsed")
	}
	admin := stdlib.OpenDB(*cfg)
	admin.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		unreachable(tb, cfg, err)
	}
	name := "lapse_test_" + randomSuffix(tb)
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+name); err != nil {
		admin.Close()
		tb.Fatalf("sqltest: create schema %s: %v", name, err)
	}
	tb.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+name+" CASCADE"); err != nil {
			tb.Errorf("sqltest: drop schema %s: %v", name, err)
		}
	})
	// Registered after the schema's cleanup, so it runs first.
	return open(tb, sqlstore.DriverPostgres, withParam(dsn, "search_path", name))
}

func randomSuffix(tb testing.TB) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("sqltest: random name: %v", err)
	}
	return hex.EncodeToString(b[:])
}

// withDatabase returns base with its database replaced by name.
func withDatabase(base, name string) string {
	if isURL(base) {
		if u, err := url.Parse(base); err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	// A key/value DSN: a later keyword overrides an earlier one.
	return base + " dbname=" + name
}

// withParam returns dsn with a run-time parameter set.
func withParam(dsn, key, value string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			q := u.Query()
			q.Set(key, value)
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	return dsn + " " + key + "=" + value
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func unreachable(tb testing.TB, cfg *pgx.ConnConfig, err error) {
	tb.Helper()
	where := cfg.Host + ":" + strconv.Itoa(int(cfg.Port))
	if os.Getenv("CI") == "true" {
		tb.Fatalf("sqltest: PostgreSQL at %s is unreachable and CI=true: %v", where, err)
	}
	tb.Skipf("!!! SKIPPED: PostgreSQL at %s is unreachable (%v); start it or set %s to run the PostgreSQL tests !!!",
		where, err, PostgresEnv)
}
