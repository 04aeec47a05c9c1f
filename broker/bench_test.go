package broker_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// BenchmarkRevocationOvershoot measures deadline → revoked (verified) for N
// grants that all expire at the same instant, on the fake connector, with
// the real engine and the wall clock. It reports p50, p99 and max overshoot
// in milliseconds (deadline → the moment Verify confirmed the grant gone,
// its RevokedAt), and all-durable-ms: deadline → the moment the store shows
// every grant revoked, an upper bound on when the last result committed
// (sampled every 10 ms). Run:
//
//	go test ./broker -run '^$' -bench RevocationOvershoot -benchtime 3x
func BenchmarkRevocationOvershoot(b *testing.B) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		for _, n := range []int{1000, 10000} {
			for _, ahead := range []struct {
				name string
				d    time.Duration
			}{{"reserved", 0}, {"claimed-at-deadline", -1}} {
				b.Run(fmt.Sprintf("%s/grants=%d/%s", db.name, n, ahead.name), func(b *testing.B) {
					var p50s, p99s, maxs, alls []float64
					for i := 0; i < b.N; i++ {
						p50, p99, mx, all := overshootRun(b, db.open(b), n, ahead.d)
						p50s, p99s, maxs, alls = append(p50s, p50), append(p99s, p99), append(maxs, mx), append(alls, all)
					}
					b.ReportMetric(median(p50s), "p50-ms")
					b.ReportMetric(median(p99s), "p99-ms")
					b.ReportMetric(median(maxs), "max-ms")
					b.ReportMetric(median(alls), "all-durable-ms")
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}

// overshootRun runs one wave. claimAhead is the engine's ClaimAhead: 0 for
// the default (expiries reserved ahead of the deadline), -1 to claim every
// grant only once it is due.
func overshootRun(b *testing.B, store lapse.Store, n int, claimAhead time.Duration) (p50, p99, mx, all float64) {
	b.Helper()
	b.StopTimer()
	ctx := context.Background()
	conn := fake.New(fake.Options{})
	key := make([]byte, 32)
	rand.Read(key)
	br, err := broker.New(broker.Config{
		Store: store, SealingKey: key, Catalog: catalog(),
		Targets: map[string]broker.Target{"fake": {Kind: "fake", Connector: conn, Concurrency: 16}, "slow": {Kind: "fake", Connector: fake.New(fake.Options{})}},
		Engine:  broker.EngineConfig{ClaimAhead: claimAhead},
	})
	if err != nil {
		b.Fatal(err)
	}
	// Lead time for setup: grants are written first, then all expire at
	// the same instant while the engine runs.
	setup := 3*time.Second + time.Duration(n)*300*time.Microsecond
	now := time.Now().UTC()
	deadline := now.Add(setup)
	grants := make([]*lapse.Grant, n)
	for i := range grants {
		id := lapse.NewID(lapse.PrefixGrant, now)
		if _, err := conn.Grant(ctx, &connector.GrantRequest{GrantID: id, Principal: *alice, ExpiresAt: deadline}); err != nil {
			b.Fatal(err)
		}
		grants[i] = &lapse.Grant{
			ID: id, RequestID: lapse.NewID(lapse.PrefixRequest, now), Principal: lapse.Principal{ID: "alice", Kind: lapse.KindHuman},
			Entitlement: "db/status", Target: "fake", State: lapse.GrantActive, StartsAt: now, ExpiresAt: deadline, DueAt: deadline,
			CreatedAt: now, ActivatedAt: now, CredentialsClaimed: true,
			Checkpoints: []*lapse.Checkpoint{{GrantID: id, Name: fake.CheckpointAccount, Kind: lapse.CheckpointTarget, CreatedAt: now}},
		}
	}
	for start := 0; start < n; start += 500 {
		end := min(start+500, n)
		if err := store.Update(ctx, func(tx lapse.Tx) error {
			for _, g := range grants[start:end] {
				if err := tx.InsertGrant(ctx, g); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	if time.Now().After(deadline.Add(-time.Second)) {
		b.Fatalf("setup took too long; the deadline passed before the engine started")
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { br.Run(runCtx); close(done) }()
	b.StartTimer()
	connectortest.AwaitWave(b, store, deadline, 2*time.Minute)
	all = float64(time.Since(deadline)) / float64(time.Millisecond)
	b.StopTimer()
	cancel()
	<-done
	ids := make([]string, len(grants))
	for i, g := range grants {
		ids[i] = g.ID
	}
	over := connectortest.Overshoots(b, store, ids, deadline)
	return over[len(over)/2], over[len(over)*99/100], over[len(over)-1], all
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
