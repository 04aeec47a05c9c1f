package mariadb_test

import (
	"context"
	"crypto/sha1"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// Benchmarks compare the connector with a bare client issuing the same
// statements in the same run; run them a few times, each time all of them,
// so that the two alternate (-count would repeat each one in a row):
//
//	for i in 1 2 3; do go test ./connector/mariadb/ -run '^$' -bench . -benchtime 300x -count 1; done
//
// The connector runs with its default configuration (a pool of
// max_open_conns = 8); the bare client has one connection per concurrent
// caller and issues its statements one after another.
//
// Provision: connector Grant (spec: one pre-made role, which becomes the
// default role) vs CREATE OR REPLACE USER … IDENTIFIED BY PASSWORD, GRANT
// role, SET DEFAULT ROLE.
//
// Revoke: connector Revoke, alone or followed by Verify (catalog, process
// list, definer objects, grants made, and a real login attempt), with no
// session or with one open session per grant that must be killed, vs two
// floors from the bare client:
//
//   - raw: KILL HARD CONNECTION USER + DROP USER;
//   - raw+verify: the same, then the reads Verify makes (the connector's
//     own catalog statements for one user, and SHOW PROCESSLIST) and one
//     login attempt with the dropped account's password, which must fail.
//
// FailedLogin: one bare login attempt that the server refuses, alone.

// benchChunk bounds how many grants (and sessions) exist at once, so that
// open sessions stay well under the server's max_connections.
const benchChunk = 50

// runConcurrent calls op(i) for every i in [0, n) from par goroutines.
func runConcurrent(b *testing.B, n, par int, op func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := op(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
}

// chunks runs setup (timer stopped) and then the timed op over b.N items in
// chunks of benchChunk.
func chunks(b *testing.B, par int, setup func(n int), op func(i int) error, teardown func()) {
	b.StopTimer()
	for done := 0; done < b.N; done += benchChunk {
		n := min(benchChunk, b.N-done)
		setup(n)
		b.StartTimer()
		runConcurrent(b, n, par, op)
		b.StopTimer()
		teardown()
	}
}

func nativeHash(pw string) string {
	h1 := sha1.Sum([]byte(pw))
	h2 := sha1.Sum(h1[:])
	return "*" + strings.ToUpper(hex.EncodeToString(h2[:]))
}

// rawClient is a bare administrative client with the same pool size and
// interpolation as the connector, so the comparison is of work, not setup.
func rawClient(b *testing.B, par int) *sql.DB {
	cfg, err := mysql.ParseDSN(testDSN())
	if err != nil {
		b.Fatal(err)
	}
	cfg.InterpolateParams = true
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		b.Fatal(err)
	}
	db := sql.OpenDB(mc)
	db.SetMaxOpenConns(par)
	db.SetMaxIdleConns(par)
	b.Cleanup(func() { db.Close() })
	return db
}

// benchUsers returns n user names of the form the connector makes (the
// fixture's prefix and a fresh grant ID), so that the bare client's
// statements are the connector's: the server's work on an account depends
// a little on its name.
func benchUsers(f *fixture, n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = mariadb.UserName(f.prefix, lapse.NewID(lapse.PrefixGrant, time.Now()))
	}
	return users
}

func holdSession(user, password string) (driver.Conn, error) {
	cfg, err := mysql.ParseDSN(testDSN())
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Passwd, cfg.DBName = user, password, ""
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	return mc.Connect(context.Background())
}

func BenchmarkProvision(b *testing.B) {
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("connector/c=%d", par), func(b *testing.B) {
			f := newFixture(b)
			c := f.open(b)
			spec := map[string]any{"roles": []any{f.role}}
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = lapse.NewID(lapse.PrefixGrant, time.Now())
			}
			exp := time.Now().Add(time.Hour)
			b.ResetTimer()
			runConcurrent(b, b.N, par, func(i int) error {
				_, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: ids[i], Spec: spec, ExpiresAt: exp})
				return err
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "grants/s")
		})
		b.Run(fmt.Sprintf("raw/c=%d", par), func(b *testing.B) {
			f := newFixture(b)
			db := rawClient(b, par)
			hash := nativeHash("bench-" + rnd(16))
			users := benchUsers(f, b.N)
			b.ResetTimer()
			runConcurrent(b, b.N, par, func(i int) error {
				acct := "`" + users[i] + "`@`%`"
				for _, s := range []string{
					"CREATE OR REPLACE USER " + acct + " IDENTIFIED BY PASSWORD '" + hash + "'",
					"GRANT `" + f.role + "` TO " + acct,
					"SET DEFAULT ROLE `" + f.role + "` FOR " + acct,
				} {
					if _, err := db.Exec(s); err != nil {
						return err
					}
				}
				return nil
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "grants/s")
		})
	}
}

func BenchmarkRevoke(b *testing.B) {
	for _, sessions := range []int{0, 1} {
		for _, par := range []int{1, 8} {
			name := fmt.Sprintf("sessions=%d/c=%d", sessions, par)
			b.Run("connector+verify/"+name, func(b *testing.B) { benchConnectorRevoke(b, par, sessions, true) })
			b.Run("connector/"+name, func(b *testing.B) { benchConnectorRevoke(b, par, sessions, false) })
			b.Run("raw/"+name, func(b *testing.B) { benchRawRevoke(b, par, sessions, false) })
			b.Run("raw+verify/"+name, func(b *testing.B) { benchRawRevoke(b, par, sessions, true) })
		}
	}
}

func benchConnectorRevoke(b *testing.B, par, sessions int, verify bool) {
	f := newFixture(b)
	c := f.open(b)
	spec := map[string]any{"roles": []any{f.role}}
	var (
		ids   []string
		resps []*connector.GrantResponse
		held  []driver.Conn
	)
	chunks(b, par, func(n int) {
		ids, resps, held = make([]string, n), make([]*connector.GrantResponse, n), nil
		for i := range n {
			ids[i] = lapse.NewID(lapse.PrefixGrant, time.Now())
			g, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: ids[i], Spec: spec, ExpiresAt: time.Now().Add(time.Hour)})
			if err != nil {
				b.Fatal(err)
			}
			resps[i] = g
			for range sessions {
				s, err := holdSession(g.Info["user"], g.Secret["password"])
				if err != nil {
					b.Fatal(err)
				}
				held = append(held, s)
			}
		}
	}, func(i int) error {
		ctx := context.Background()
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i], State: resps[i].State}); err != nil {
			return err
		}
		if !verify {
			return nil
		}
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: ids[i], State: resps[i].State, Probe: resps[i].Probe})
		if err != nil {
			return err
		}
		if !v.Gone() {
			return fmt.Errorf("grant %s not gone: %+v", ids[i], v.Checkpoints)
		}
		return nil
	}, func() {
		for _, s := range held {
			s.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "revokes/s")
}

func benchRawRevoke(b *testing.B, par, sessions int, verify bool) {
	f := newFixture(b)
	db := rawClient(b, par)
	pw := "bench-" + rnd(16)
	hash := nativeHash(pw)
	var (
		users []string
		held  []driver.Conn
	)
	chunks(b, par, func(n int) {
		users, held = benchUsers(f, n), nil
		for i := range n {
			acct := "`" + users[i] + "`@`%`"
			for _, s := range []string{
				"CREATE OR REPLACE USER " + acct + " IDENTIFIED BY PASSWORD '" + hash + "'",
				"GRANT `" + f.role + "` TO " + acct,
				"SET DEFAULT ROLE `" + f.role + "` FOR " + acct,
			} {
				if _, err := db.Exec(s); err != nil {
					b.Fatal(err)
				}
			}
			for range sessions {
				s, err := holdSession(users[i], pw)
				if err != nil {
					b.Fatal(err)
				}
				held = append(held, s)
			}
		}
	}, func(i int) error {
		if _, err := db.Exec("KILL HARD CONNECTION USER `" + users[i] + "`"); err != nil {
			return err
		}
		if _, err := db.Exec("DROP USER `" + users[i] + "`@`%`"); err != nil {
			return err
		}
		if !verify {
			return nil
		}
		return rawVerify(db, users[i], pw)
	}, func() {
		for _, s := range held {
			s.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "revokes/s")
}

// rawVerify issues the reads Verify makes for user, one after another, and
// one login attempt with password, which must be refused.
func rawVerify(db *sql.DB, user, password string) error {
	queries, args := mariadb.VerifyReads(user)
	queries = append(queries, "SHOW PROCESSLIST")
	args = append(args, nil)
	for i, q := range queries {
		rows, err := db.Query(q, args[i]...)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		if err := rows.Close(); err != nil {
			return err
		}
	}
	return failedLogin(user, password)
}

// failedLogin attempts a login as user that the server must refuse.
func failedLogin(user, password string) error {
	cfg, err := mysql.ParseDSN(testDSN())
	if err != nil {
		return err
	}
	cfg.User, cfg.Passwd, cfg.DBName = user, password, ""
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	c, err := mc.Connect(context.Background())
	if err == nil {
		c.Close()
		return fmt.Errorf("login as %s succeeded", user)
	}
	if n := mysqlErrno(err); n != 1045 && n != 1698 {
		return fmt.Errorf("login as %s: %w, want access denied", user, err)
	}
	return nil
}

func BenchmarkFailedLogin(b *testing.B) {
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("raw/c=%d", par), func(b *testing.B) {
			f := newFixture(b)
			user := benchUsers(f, 1)[0]
			b.ResetTimer()
			runConcurrent(b, b.N, par, func(int) error { return failedLogin(user, "bench-"+user) })
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}
