// Package zsptest prepares the real servers of the machine (README, "Run
// the tests") for session-level tests: per test, a connector prefix and an
// entitled role of its own, removed at cleanup with everything made under
// the prefix. Without a server the test fails under CI=true and is
// skipped, loudly, otherwise.
package zsptest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the MariaDB driver
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse/internal/testlock"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// The servers' addresses; the connectors' test variables override them.
var (
	PostgresDSN = env("LAPSE_TEST_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	MariaDBDSN  = env("LAPSE_TEST_MARIADB_DSN", "root@tcp(127.0.0.1:3306)/")
	RedisAddr   = env("LAPSE_TEST_REDIS_ADDR", "127.0.0.1:6379")
)

// Missing fails the test under CI=true and skips it, loudly, otherwise.
func Missing(t testing.TB, what string, err error) {
	t.Helper()
	msg := fmt.Sprintf("ZSP SESSION TESTS NOT RUN: %s is not available: %v", what, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func rnd(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

func timeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// Postgres is a connector prefix and a NOLOGIN group role on the
// PostgreSQL server.
type Postgres struct{ DSN, Prefix, Group string }

// NewPostgres makes the group role; cleanup terminates and drops every
// role with the prefix, and the group.
func NewPostgres(t testing.TB) Postgres {
	t.Helper()
	ctx, cancel := timeout()
	defer cancel()
	admin, err := pgxpool.New(ctx, PostgresDSN)
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		Missing(t, "PostgreSQL", err)
	}
	id := rnd(8)
	f := Postgres{DSN: PostgresDSN, Prefix: "lz" + id + "_", Group: "lzg_" + id}
	if _, err := admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{f.Group}.Sanitize()+" NOLOGIN"); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := timeout()
		defer cancel()
		rows, _ := admin.Query(ctx, "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1)", f.Prefix)
		names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, n := range append(names, f.Group) {
			_, _ = admin.Exec(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", n)
			_, _ = admin.Exec(ctx, "DROP OWNED BY "+pgx.Identifier{n}.Sanitize())
			if _, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{n}.Sanitize()); err != nil {
				t.Errorf("cleanup: drop role %s: %v", n, err)
			}
		}
	})
	return f
}

// MariaDB is a connector prefix and a role on the MariaDB server.
type MariaDB struct{ DSN, Prefix, Role string }

// NewMariaDB makes the role; cleanup kills and drops every user with the
// prefix, and the role.
func NewMariaDB(t testing.TB) MariaDB {
	t.Helper()
	ctx, cancel := timeout()
	defer cancel()
	admin, err := sql.Open("mysql", MariaDBDSN)
	if err == nil {
		err = admin.PingContext(ctx)
	}
	if err != nil {
		Missing(t, "MariaDB", err)
	}
	testlock.MariaDB(t, admin) // see internal/testlock
	id := rnd(4)
	f := MariaDB{DSN: MariaDBDSN, Prefix: "z" + id + "_", Role: "lz_" + id + "_role"}
	if _, err := admin.ExecContext(ctx, "CREATE ROLE `"+f.Role+"`"); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		rows, err := admin.Query("SELECT User, Host FROM mysql.global_priv WHERE LEFT(User, ?) = ?", len(f.Prefix), f.Prefix)
		if err == nil {
			var accts [][2]string
			for rows.Next() {
				var u, h string
				if rows.Scan(&u, &h) == nil {
					accts = append(accts, [2]string{u, h})
				}
			}
			rows.Close()
			for _, a := range accts {
				_, _ = admin.Exec("KILL HARD CONNECTION USER `" + a[0] + "`")
				_, _ = admin.Exec("DROP USER IF EXISTS `" + a[0] + "`@`" + a[1] + "`")
			}
		}
		if _, err := admin.Exec("DROP ROLE IF EXISTS `" + f.Role + "`"); err != nil {
			t.Errorf("cleanup: drop role %s: %v", f.Role, err)
		}
	})
	return f
}

// Redis is a connector prefix on the Redis server.
type Redis struct{ Addr, Prefix string }

// NewRedis checks the server; cleanup deletes every ACL user with the
// prefix.
func NewRedis(t testing.TB) Redis {
	t.Helper()
	ctx, cancel := timeout()
	defer cancel()
	admin := goredis.NewClient(&goredis.Options{Addr: RedisAddr, Protocol: 2, DisableIdentity: true})
	if err := admin.Ping(ctx).Err(); err != nil {
		admin.Close()
		Missing(t, "Redis", err)
	}
	f := Redis{Addr: RedisAddr, Prefix: "lz" + rnd(8) + "_"}
	t.Cleanup(func() {
		defer admin.Close()
		users, _ := admin.Do(context.Background(), "ACL", "USERS").StringSlice()
		for _, u := range users {
			if strings.HasPrefix(u, f.Prefix) {
				if err := admin.Do(context.Background(), "ACL", "DELUSER", u).Err(); err != nil {
					t.Errorf("cleanup: delete user %s: %v", u, err)
				}
			}
		}
	})
	return f
}
