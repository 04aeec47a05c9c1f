package redis_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse/connector"
)

// The benchmarks measure, against the shared server and in the same run,
// the connector and a bare go-redis client issuing the same commands, at 1
// and 8 concurrent callers. Every benchmark user is unique and removed
// afterwards. Run them short, e.g.
//
//	go test ./connector/redis -run '^$' -bench '^Benchmark(Provision|Revoke)$' -benchtime 5000x
//
// and compare a connector row only with the bare client's of the same
// run. Variants that hold a live session per user open one socket per
// user: keep -benchtime at a few thousand iterations for them. Besides
// ops/s and latency, each reports cpu-µs/op, the CPU the benchmark process
// spent per operation.

var benchSpec = map[string]any{"commands": []any{"get", "set"}, "keys": []any{"lapsetest:*"}}

// benchRules are the ACL SETUSER arguments the connector builds for
// benchSpec (after the name), so the bare client issues the same command.
func benchRules(hash string) []any {
	return []any{"reset", "resetchannels", "on", "#" + hash, "~lapsetest:*", "+get", "+set", "-@dangerous"}
}

var concurrencies = []int{1, 8}

// run executes op b.N times over conc goroutines and reports ops/s and
// latency percentiles.
func run(b *testing.B, conc int, op func(i int) error) {
	b.Helper()
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		lat   = make([]time.Duration, b.N)
	)
	b.ResetTimer()
	cpu := processCPU()
	b.StartTimer()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				start := time.Now()
				err := op(i)
				lat[i] = time.Since(start)
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu = processCPU() - cpu
	if first != nil {
		b.Fatal(first)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	// CPU the benchmark process (connector or bare client, and the
	// harness) spent per operation: on a machine with few cores it takes
	// from the server, so it bounds throughput when many callers run.
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// benchSetup opens the connector and a bare client with the same pool
// settings on the shared server.
func benchSetup(b testing.TB) (addr string, c connector.Connector, raw *goredis.Client) {
	b.Helper()
	nodes := sharedNodes(b)
	c = openConn(b, nodes)
	raw = goredis.NewClient(&goredis.Options{Addr: nodes[0].addr, Protocol: 2, DisableIdentity: true, PoolSize: 16, MaxRetries: -1})
	b.Cleanup(func() { raw.Close() })
	return nodes[0].addr, c, raw
}

// TestBenchRawIssuesTheSameCommand keeps the benchmark honest: the bare
// client's ACL SETUSER yields the same user as the connector's.
func TestBenchRawIssuesTheSameCommand(t *testing.T) {
	_, c, raw := benchSetup(t)
	ctx := context.Background()
	g := grantFor(t, c, grantID(), benchSpec)
	sum := sha256.Sum256([]byte(g.Secret["password"]))
	rawUser := "lapse_" + grantID()
	if err := raw.Do(ctx, append([]any{"ACL", "SETUSER", rawUser}, benchRules(hex.EncodeToString(sum[:]))...)...).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Do(ctx, "ACL", "DELUSER", rawUser) })
	lines, err := raw.Do(ctx, "ACL", "LIST").StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	var viaConnector, viaRaw string
	for _, l := range lines {
		switch f := strings.Fields(l); f[1] {
		case g.Info["username"]:
			viaConnector = strings.Join(f[2:], " ")
		case rawUser:
			viaRaw = strings.Join(f[2:], " ")
		}
	}
	if viaConnector == "" || viaConnector != viaRaw {
		t.Fatalf("connector made %q, bare client made %q", viaConnector, viaRaw)
	}
}

// dropUsers removes benchmark users left by a run, outside the timer.
func dropUsers(b *testing.B, raw *goredis.Client, users []string) {
	b.Helper()
	ctx := context.Background()
	for len(users) > 0 {
		n := min(len(users), 500)
		args := []any{"ACL", "DELUSER"}
		for _, u := range users[:n] {
			args = append(args, u)
		}
		if err := raw.Do(ctx, args...).Err(); err != nil {
			b.Errorf("cleanup: ACL DELUSER: %v", err)
		}
		users = users[n:]
	}
}

func BenchmarkProvision(b *testing.B) {
	_, c, raw := benchSetup(b)
	ctx := context.Background()
	for _, conc := range concurrencies {
		b.Run(fmt.Sprintf("connector/c=%d", conc), func(b *testing.B) {
			ids := make([]string, b.N)
			users := make([]string, b.N)
			for i := range ids {
				ids[i] = grantID()
			}
			run(b, conc, func(i int) error {
				g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: ids[i], Spec: benchSpec})
				if err == nil {
					users[i] = g.Info["username"]
				}
				return err
			})
			dropUsers(b, raw, users)
		})
		b.Run(fmt.Sprintf("raw/c=%d", conc), func(b *testing.B) {
			users := make([]string, b.N)
			for i := range users {
				users[i] = "lapse_" + grantID()
			}
			sum := sha256.Sum256([]byte(randHex(32)))
			rules := benchRules(hex.EncodeToString(sum[:]))
			run(b, conc, func(i int) error {
				return raw.Do(ctx, append([]any{"ACL", "SETUSER", users[i]}, rules...)...).Err()
			})
			dropUsers(b, raw, users)
		})
	}
}

// BenchmarkRevoke measures revocation as the broker runs it — Revoke, then
// Verify with the login probe, failing unless every checkpoint is gone
// ("connector") — and Revoke alone ("connector-revoke-only"), against a
// bare client issuing the revocation commands: CLIENT KILL USER and ACL
// DELUSER one after the other ("raw-seq"), or in one MULTI/EXEC as the
// connector sends them ("raw-multi"); and against a bare client doing the
// work Verify must do as well ("raw-verify"): the MULTI/EXEC, then, in one
// pipeline on the same connection, ACL GETUSER, CLIENT LIST and AUTH with
// the deleted user's password, failing unless the user is absent, no
// client of it is listed and the AUTH is refused. "session" variants hold
// one authenticated connection per user that revocation must close.
func BenchmarkRevoke(b *testing.B) {
	addr, c, raw := benchSetup(b)
	ctx := context.Background()
	for _, sessions := range []bool{false, true} {
		suffix := ""
		if sessions {
			suffix = "+session"
		}
		for _, conc := range concurrencies {
			b.Run(fmt.Sprintf("connector%s/c=%d", suffix, conc), func(b *testing.B) {
				b.StopTimer()
				ids := make([]string, b.N)
				grants := make([]*connector.GrantResponse, b.N)
				users := make([]string, b.N)
				for i := range ids {
					ids[i] = grantID()
					g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: ids[i], Spec: benchSpec})
					if err != nil {
						b.Fatal(err)
					}
					grants[i], users[i] = g, g.Info["username"]
				}
				defer dropUsers(b, raw, users)
				if sessions {
					holdSessions(b, addr, users, func(i int) string { return grants[i].Secret["password"] })
				}
				run(b, conc, func(i int) error {
					if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i], State: grants[i].State}); err != nil {
						return err
					}
					v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: ids[i], State: grants[i].State, Probe: grants[i].Probe})
					if err != nil {
						return err
					}
					if !v.Gone() {
						return fmt.Errorf("not gone: %v", residues(v))
					}
					return nil
				})
			})
			b.Run(fmt.Sprintf("connector-revoke-only%s/c=%d", suffix, conc), func(b *testing.B) {
				b.StopTimer()
				ids := make([]string, b.N)
				users := make([]string, b.N)
				passwords := make([]string, b.N)
				for i := range ids {
					ids[i] = grantID()
					g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: ids[i], Spec: benchSpec})
					if err != nil {
						b.Fatal(err)
					}
					users[i], passwords[i] = g.Info["username"], g.Secret["password"]
				}
				defer dropUsers(b, raw, users)
				if sessions {
					holdSessions(b, addr, users, func(i int) string { return passwords[i] })
				}
				run(b, conc, func(i int) error {
					_, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i]})
					return err
				})
			})
			for _, mode := range []string{"raw-seq", "raw-multi", "raw-verify"} {
				b.Run(fmt.Sprintf("%s%s/c=%d", mode, suffix, conc), func(b *testing.B) {
					b.StopTimer()
					users := make([]string, b.N)
					password := randHex(32)
					sum := sha256.Sum256([]byte(password))
					rules := benchRules(hex.EncodeToString(sum[:]))
					for i := range users {
						users[i] = "lapse_" + grantID()
						if err := raw.Do(ctx, append([]any{"ACL", "SETUSER", users[i]}, rules...)...).Err(); err != nil {
							b.Fatal(err)
						}
					}
					defer dropUsers(b, raw, users)
					if sessions {
						holdSessions(b, addr, users, func(int) string { return password })
					}
					run(b, conc, func(i int) error {
						if mode == "raw-multi" || mode == "raw-verify" {
							_, err := raw.TxPipelined(ctx, func(p goredis.Pipeliner) error {
								p.Do(ctx, "CLIENT", "KILL", "USER", users[i])
								p.Do(ctx, "ACL", "DELUSER", users[i])
								return nil
							})
							if err != nil || mode == "raw-multi" {
								return err
							}
							return rawVerify(ctx, raw, users[i], password)
						}
						if err := raw.Do(ctx, "CLIENT", "KILL", "USER", users[i]).Err(); err != nil {
							return err
						}
						return raw.Do(ctx, "ACL", "DELUSER", users[i]).Err()
					})
				})
			}
		}
	}
}

// rawVerify is the bare client's verification of a revoked user: ACL
// GETUSER, CLIENT LIST and AUTH with its password in one pipeline. The
// AUTH is refused, so the pooled connection stays logged in as it was.
func rawVerify(ctx context.Context, raw *goredis.Client, user, password string) error {
	var get, list, auth *goredis.Cmd
	_, _ = raw.Pipelined(ctx, func(p goredis.Pipeliner) error {
		get = p.Do(ctx, "ACL", "GETUSER", user)
		list = p.Do(ctx, "CLIENT", "LIST")
		auth = p.Do(ctx, "AUTH", user, password)
		return nil
	})
	if err := get.Err(); err != goredis.Nil {
		return fmt.Errorf("ACL GETUSER %s: %v, want nil", user, err)
	}
	text, err := list.Text()
	if err != nil {
		return err
	}
	if strings.Contains(text, " user="+user+" ") {
		return fmt.Errorf("a client of %s is listed", user)
	}
	if err := auth.Err(); !isWrongPass(err) {
		return fmt.Errorf("AUTH as %s: %v, want WRONGPASS", user, err)
	}
	return nil
}

// holdSessions opens one authenticated raw connection per user and closes
// them when the benchmark ends. Raw sockets keep the client side cheap so
// the numbers measure the server and the connector.
func holdSessions(b *testing.B, addr string, users []string, password func(i int) string) {
	b.Helper()
	if len(users) > 5000 {
		b.Skip("session variants hold one socket per iteration: use -benchtime of at most 5000x")
	}
	conns := make([]net.Conn, 0, len(users))
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	buf := make([]byte, 64)
	for i, u := range users {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		pw := password(i)
		fmt.Fprintf(c, "*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(u), u, len(pw), pw)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "+OK\r\n" {
			b.Fatalf("session login: %q %v", buf[:n], err)
		}
	}
}

// BenchmarkMassExpiry revokes and verifies 1,000 grants that end in the
// same instant, 32 at a time, and reports how long the whole set takes.
func BenchmarkMassExpiry(b *testing.B) {
	_, c, raw := benchSetup(b)
	ctx := context.Background()
	const grants, workers = 1000, 32
	for range b.N {
		b.StopTimer()
		ids := make([]string, grants)
		gs := make([]*connector.GrantResponse, grants)
		users := make([]string, grants)
		for i := range ids {
			ids[i] = grantID()
			g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: ids[i], Spec: benchSpec})
			if err != nil {
				b.Fatal(err)
			}
			gs[i], users[i] = g, g.Info["username"]
		}
		start := time.Now()
		b.StartTimer()
		var (
			next  atomic.Int64
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
		)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= grants {
						return
					}
					err := func() error {
						if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i], State: gs[i].State}); err != nil {
							return err
						}
						v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: ids[i], State: gs[i].State, Probe: gs[i].Probe})
						if err == nil && !v.Gone() {
							err = fmt.Errorf("not gone: %v", residues(v))
						}
						return err
					}()
					if err != nil {
						mu.Lock()
						first = err
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		elapsed := time.Since(start)
		dropUsers(b, raw, users)
		if first != nil {
			b.Fatal(first)
		}
		b.ReportMetric(elapsed.Seconds()*1000, "ms/1000-grants")
	}
}
