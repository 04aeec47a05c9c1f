package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// Benchmarks compare the connector with a bare pgx client issuing the raw
// statements in the same run, at 1 and 8 concurrent callers. They report
// ops/s and per-operation p50/p99 latency; run them with a short benchtime,
// for example:
//
//	go test ./connector/postgres/ -run '^$' -bench . -benchtime 400x

var concurrencies = []int{1, 8}

// runConcurrent calls op(i) for i in [0, n) from conc goroutines and returns
// each call's latency. The first error stops the benchmark.
func runConcurrent(b *testing.B, n, conc int, op func(worker, i int) error) []time.Duration {
	b.Helper()
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				start := time.Now()
				if err := op(w, i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	return lat
}

func report(b *testing.B, lat []time.Duration, elapsed time.Duration, unit string) {
	b.Helper()
	s := slices.Clone(lat)
	slices.Sort(s)
	pct := func(p float64) float64 {
		if len(s) == 0 {
			return 0
		}
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), unit+"/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// bareConns opens one plain pgx connection per worker: the "bare client".
func bareConns(b *testing.B, n int) []*pgx.Conn {
	b.Helper()
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		c, err := pgx.Connect(bg(b), adminDSN())
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		b.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	return conns
}

// dropPrefixed drops, in bulk, the roles a benchmark made (they own
// nothing), so the fixture's one-by-one cleanup has little left to do.
func (f *fixture) dropPrefixed(b *testing.B) {
	b.Helper()
	ctx := bg(b)
	for {
		var names []string
		if err := f.admin.QueryRow(ctx, "SELECT coalesce(array_agg(rolname::text), '{}') FROM (SELECT rolname FROM pg_roles WHERE starts_with(rolname::text, $1) LIMIT 500) t", f.prefix).Scan(&names); err != nil {
			b.Fatal(err)
		}
		if len(names) == 0 {
			return
		}
		q := make([]string, len(names))
		for i, n := range names {
			q[i] = ident(n)
		}
		if _, err := f.admin.Exec(ctx, "DROP ROLE IF EXISTS "+strings.Join(q, ", ")); err != nil {
			b.Fatal(err)
		}
	}
}

func verifier(b *testing.B, iterations int) string {
	b.Helper()
	var pw [32]byte
	_, _ = rand.Read(pw[:])
	v, err := postgres.SCRAMVerifier(base64.RawURLEncoding.EncodeToString(pw[:]), iterations)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkProvision: the connector's Grant against a bare client issuing
// CREATE ROLE … LOGIN PASSWORD '<verifier>' VALID UNTIL … IN ROLE with a
// verifier computed in advance (the raw floor), and with a plaintext
// password that the server hashes (SCRAM, 4,096 iterations), which is what
// a broker that sends passwords pays.
func BenchmarkProvision(b *testing.B) {
	for _, conc := range concurrencies {
		b.Run(fmt.Sprintf("lapse/c=%d", conc), func(b *testing.B) {
			f := newFixture(b)
			c := f.open(b, func(cfg *postgres.Config) { cfg.MaxConns = max(conc, 2) })
			spec := f.spec()
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = newGrantID()
			}
			deadline := time.Now().Add(time.Hour)
			// One Grant first: the connector's check of the entitled roles
			// for grant options is then made, and afterwards renewed in the
			// background as it would be in steady use.
			if _, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: newGrantID(), Spec: spec, ExpiresAt: deadline}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			lat := runConcurrent(b, b.N, conc, func(_, i int) error {
				_, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: ids[i], Spec: spec, ExpiresAt: deadline})
				return err
			})
			elapsed := time.Since(start)
			b.StopTimer()
			report(b, lat, elapsed, "grants")
			f.dropPrefixed(b)
		})
		// raw-same: the connector's exact statements (async commit, the OID
		// read in the same round trip); raw-sync: CREATE ROLE with a
		// verifier, committed synchronously; raw-plaintext: the server
		// hashes a plaintext password (what a broker that sends passwords
		// pays), committed synchronously.
		for _, variant := range []string{"raw-same", "raw-sync", "raw-plaintext"} {
			b.Run(fmt.Sprintf("%s/c=%d", variant, conc), func(b *testing.B) {
				f := newFixture(b)
				conns := bareConns(b, conc)
				stmts := make([]string, b.N)
				until := time.Now().Add(time.Hour).UTC().Format("2006-01-02 15:04:05") + "+00"
				for i := range stmts {
					name := fmt.Sprintf("%sr%d", f.prefix, i)
					pw := verifier(b, postgres.DefaultSCRAMIterations)
					if variant == "raw-plaintext" {
						var raw [32]byte
						_, _ = rand.Read(raw[:])
						pw = base64.RawURLEncoding.EncodeToString(raw[:])
					}
					stmt := fmt.Sprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT -1 PASSWORD '%s' VALID UNTIL '%s' IN ROLE %s",
						ident(name), pw, until, ident(f.group))
					if variant == "raw-same" {
						stmt = "SET LOCAL synchronous_commit = off;\n" + stmt + ";\nSELECT oid FROM pg_catalog.pg_roles WHERE rolname = '" + name + "'"
					}
					stmts[i] = stmt
				}
				b.ResetTimer()
				start := time.Now()
				lat := runConcurrent(b, b.N, conc, func(w, i int) error {
					_, err := conns[w].Exec(context.Background(), stmts[i])
					return err
				})
				elapsed := time.Since(start)
				b.StopTimer()
				report(b, lat, elapsed, "grants")
				f.dropPrefixed(b)
			})
		}
	}
}

// BenchmarkRevoke: the connector's Revoke followed by Verify (with the
// login probe) against two bare-client floors: terminate the role's
// backends and DROP ROLE (raw-terminate+drop), and the same followed by
// the checks Verify exists to make — one catalog read and a login attempt
// that must fail (raw-terminate+drop+checks). raw-failed-login is the
// login attempt alone: a backend start on the server, whatever the
// outcome.
func BenchmarkRevoke(b *testing.B) {
	for _, conc := range concurrencies {
		b.Run(fmt.Sprintf("lapse-revoke+verify/c=%d", conc), func(b *testing.B) {
			f := newFixture(b)
			c := f.open(b, func(cfg *postgres.Config) { cfg.MaxConns = max(conc, 2) })
			spec := f.spec()
			grants := makeGrants(b, c, spec, b.N)
			b.ResetTimer()
			start := time.Now()
			lat := runConcurrent(b, b.N, conc, func(_, i int) error {
				return revokeAndVerify(context.Background(), c, spec, grants[i])
			})
			elapsed := time.Since(start)
			b.StopTimer()
			report(b, lat, elapsed, "revocations")
		})
		b.Run(fmt.Sprintf("lapse-revoke/c=%d", conc), func(b *testing.B) {
			f := newFixture(b)
			c := f.open(b, func(cfg *postgres.Config) { cfg.MaxConns = max(conc, 2) })
			spec := f.spec()
			grants := makeGrants(b, c, spec, b.N)
			b.ResetTimer()
			start := time.Now()
			lat := runConcurrent(b, b.N, conc, func(_, i int) error {
				_, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: grants[i].id, Spec: spec, State: grants[i].resp.State})
				return err
			})
			elapsed := time.Since(start)
			b.StopTimer()
			report(b, lat, elapsed, "revocations")
		})
		for _, checks := range []bool{false, true} {
			variant := "raw-terminate+drop"
			if checks {
				variant += "+checks"
			}
			b.Run(fmt.Sprintf("%s/c=%d", variant, conc), func(b *testing.B) {
				f := newFixture(b)
				conns := bareConns(b, conc)
				names := make([]string, b.N)
				for i := range names {
					names[i] = fmt.Sprintf("%sr%d", f.prefix, i)
				}
				createBare(b, f, names)
				b.ResetTimer()
				start := time.Now()
				lat := runConcurrent(b, b.N, conc, func(w, i int) error {
					ctx := context.Background()
					if _, err := conns[w].Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", names[i]); err != nil {
						return err
					}
					if _, err := conns[w].Exec(ctx, "DROP ROLE "+ident(names[i])); err != nil || !checks {
						return err
					}
					var left int
					if err := conns[w].QueryRow(ctx, rawChecksSQL, names[i]).Scan(&left); err != nil {
						return err
					}
					if left != 0 {
						return fmt.Errorf("%s: %d left", names[i], left)
					}
					return failedLogin(ctx, names[i])
				})
				elapsed := time.Since(start)
				b.StopTimer()
				report(b, lat, elapsed, "revocations")
			})
		}
		b.Run(fmt.Sprintf("raw-failed-login/c=%d", conc), func(b *testing.B) {
			f := newFixture(b)
			b.ResetTimer()
			start := time.Now()
			lat := runConcurrent(b, b.N, conc, func(_, i int) error {
				return failedLogin(context.Background(), fmt.Sprintf("%sr%d", f.prefix, i))
			})
			elapsed := time.Since(start)
			b.StopTimer()
			report(b, lat, elapsed, "logins")
		})
	}
}

// rawChecksSQL is a bare client's version of what Verify reads for one
// dropped role: the role, its memberships, what it owns or holds, and its
// sessions. $1: the role's name.
const rawChecksSQL = `
SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1)
     + (SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid IN (m.roleid, m.member) WHERE r.rolname = $1)
     + (SELECT count(*) FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1)
     + (SELECT count(*) FROM pg_stat_activity WHERE usename = $1)`

// failedLogin attempts a login as user, which must be refused.
func failedLogin(ctx context.Context, user string) error {
	cfg, err := pgconn.ParseConfig(adminDSN())
	if err != nil {
		return err
	}
	cfg.User, cfg.Password = user, "not-the-password"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		_ = conn.Close(ctx)
		return fmt.Errorf("login as %s accepted", user)
	}
	return nil
}

// BenchmarkRevokeLiveSession: one revocation at a time of a role with an
// open session, until the session is gone and verified; raw: terminate,
// wait for the backend to exit, DROP ROLE.
func BenchmarkRevokeLiveSession(b *testing.B) {
	b.Run("lapse-revoke+verify", func(b *testing.B) {
		f := newFixture(b)
		c := f.open(b)
		spec := f.spec()
		for range b.N {
			b.StopTimer()
			g := makeGrants(b, c, spec, 1)[0]
			s, err := login(bg(b), b, g.resp, "")
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := revokeAndVerify(context.Background(), c, spec, g); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			_ = s.Close(context.Background())
			b.StartTimer()
		}
	})
	b.Run("raw-terminate-wait+drop", func(b *testing.B) {
		f := newFixture(b)
		conn := bareConns(b, 1)[0]
		for i := range b.N {
			b.StopTimer()
			name := fmt.Sprintf("%sr%d", f.prefix, i)
			createBare(b, f, []string{name})
			s, err := pgx.Connect(bg(b), dsnAs(b, name))
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			ctx := context.Background()
			if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", name); err != nil {
				b.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "DROP ROLE "+ident(name)); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			_ = s.Close(context.Background())
			b.StartTimer()
		}
	})
}

// BenchmarkExpire1000Together: 1,000 grants expire in the same second; the
// connector revokes and verifies all of them with 8 concurrent callers. The
// metrics are the time until the last one is verified gone and the p99 of
// the time from the start of the batch until each is verified (target:
// p99 ≤ 1 s). Use -benchtime 1x.
func BenchmarkExpire1000Together(b *testing.B) {
	for _, probe := range []bool{true, false} {
		b.Run(fmt.Sprintf("login-probe=%v", probe), func(b *testing.B) { benchExpire1000(b, probe) })
	}
	// The floor of the probe alone: 1,000 refused logins by 8 bare callers.
	b.Run("raw-1000-failed-logins", func(b *testing.B) {
		const n, conc = 1000, 8
		f := newFixture(b)
		var total time.Duration
		for range b.N {
			start := time.Now()
			runConcurrent(b, n, conc, func(_, i int) error {
				return failedLogin(context.Background(), fmt.Sprintf("%sr%d", f.prefix, i))
			})
			total += time.Since(start)
		}
		b.ReportMetric(total.Seconds()/float64(b.N), "s/1000-batch")
	})
}

func benchExpire1000(b *testing.B, probe bool) {
	const n, conc = 1000, 8
	f := newFixture(b)
	c := f.open(b, func(cfg *postgres.Config) { cfg.MaxConns = conc; cfg.NoLoginProbe = !probe })
	spec := f.spec()
	var all []time.Duration
	var total time.Duration
	for range b.N {
		b.StopTimer()
		grants := makeGrants(b, c, spec, n)
		b.StartTimer()
		start := time.Now()
		done := make([]time.Duration, n)
		runConcurrent(b, n, conc, func(_, i int) error {
			err := revokeAndVerify(context.Background(), c, spec, grants[i])
			done[i] = time.Since(start)
			return err
		})
		total += time.Since(start)
		all = append(all, done...)
	}
	b.StopTimer()
	slices.Sort(all)
	b.ReportMetric(total.Seconds()/float64(b.N), "s/1000-batch")
	b.ReportMetric(float64(all[len(all)/2].Milliseconds()), "p50-verified-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Milliseconds()), "p99-verified-ms")
}

type benchGrant struct {
	id   string
	resp *connector.GrantResponse
}

func makeGrants(b *testing.B, c connector.Connector, spec map[string]any, n int) []benchGrant {
	b.Helper()
	out := make([]benchGrant, n)
	deadline := time.Now().Add(time.Hour)
	var mu sync.Mutex
	runConcurrent(b, n, 4, func(_, i int) error {
		id := newGrantID()
		resp, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: id, Spec: spec, ExpiresAt: deadline})
		mu.Lock()
		out[i] = benchGrant{id: id, resp: resp}
		mu.Unlock()
		return err
	})
	return out
}

func revokeAndVerify(ctx context.Context, c connector.Connector, spec map[string]any, g benchGrant) error {
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: g.id, Spec: spec, State: g.resp.State}); err != nil {
		return err
	}
	v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: g.id, Spec: spec, State: g.resp.State, Probe: g.resp.Probe})
	if err != nil {
		return err
	}
	if !v.Gone() {
		return lapse.Errorf(lapse.ECONFLICT, "grant %s not gone after revoke", g.id)
	}
	return nil
}

// createBare makes login roles the way a bare client would, in batches.
func createBare(b *testing.B, f *fixture, names []string) {
	b.Helper()
	ctx := bg(b)
	for start := 0; start < len(names); start += 200 {
		var sb strings.Builder
		for _, n := range names[start:min(start+200, len(names))] {
			sb.WriteString("CREATE ROLE " + ident(n) + " LOGIN IN ROLE " + ident(f.group) + ";\n")
		}
		if _, err := f.admin.Exec(ctx, sb.String()); err != nil {
			b.Fatal(err)
		}
	}
}
