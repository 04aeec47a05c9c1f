package postgres_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/postgres"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// BenchmarkExpireThroughBroker: 1,000 grants on PostgreSQL expire at the
// same instant and the real engine revokes them, as a deployment would: a
// SQLite store, the wall clock, expiries reserved ahead of the deadline,
// the target's concurrency 8. The grants are requested with one scheduled
// start and one duration, so that they all start, and end, together; the
// engine provisions them at the start. It reports the p50 and p99 of
// deadline → revoked (Verify confirmed every checkpoint), with and without
// the login probe. Run:
//
//	go test ./connector/postgres -run '^$' -bench '^BenchmarkExpireThroughBroker$' -benchtime 1x
func BenchmarkExpireThroughBroker(b *testing.B) {
	const n = 1000
	for _, probe := range []bool{true, false} {
		b.Run(fmt.Sprintf("login-probe=%v", probe), func(b *testing.B) {
			f := newFixture(b)
			c := f.open(b, func(cfg *postgres.Config) { cfg.MaxConns = 8; cfg.NoLoginProbe = !probe })
			var p50s, p99s []float64
			for range b.N {
				p50, p99 := expireThroughBroker(b, c, f.spec(), n)
				p50s, p99s = append(p50s, p50), append(p99s, p99)
			}
			slices.Sort(p50s)
			slices.Sort(p99s)
			b.ReportMetric(p50s[len(p50s)/2], "p50-ms")
			b.ReportMetric(p99s[len(p99s)/2], "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func expireThroughBroker(b *testing.B, c *postgres.Conn, spec map[string]any, n int) (p50, p99 float64) {
	b.Helper()
	b.StopTimer()
	ctx := context.Background()
	store := sqltest.OpenSQLite(b)
	key := make([]byte, 32)
	rand.Read(key)
	const duration = 5 * time.Second
	br, err := broker.New(broker.Config{
		Store: store, SealingKey: key,
		Catalog: []*lapse.Entitlement{{
			Name: "pg/use", Target: "pg", Lanes: []lapse.PrincipalKind{lapse.KindService},
			DefaultDuration: lapse.Duration(duration), MaxDuration: lapse.Duration(time.Hour),
			MaxScheduleAhead: lapse.Duration(time.Hour), Approval: lapse.ApprovalRule{Auto: true}, Spec: spec,
		}},
		Targets: map[string]broker.Target{"pg": {Kind: "postgres", Connector: c, Concurrency: 8}},
	})
	if err != nil {
		b.Fatal(err)
	}
	// Requests are filed first; the grants start together once they are
	// all in the store.
	start := time.Now().Add(2*time.Second + time.Duration(n)*2*time.Millisecond).UTC().Truncate(time.Millisecond)
	ids := make([]string, 0, n)
	for i := range n {
		svc := lapse.NewContext(ctx, &lapse.Principal{ID: fmt.Sprintf("svc:bench-%d", i), Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}})
		res, err := br.CreateRequest(svc, lapse.RequestInput{Entitlement: "pg/use", Duration: lapse.Duration(duration), StartsAt: start})
		if err != nil {
			b.Fatalf("request %d: %v", i, err)
		}
		if res.Grant == nil {
			b.Fatalf("request %d made no grant: %+v", i, res.Request)
		}
		ids = append(ids, res.Grant.ID)
	}
	if time.Now().After(start) {
		b.Fatalf("filing the requests took past their start")
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { br.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done }()
	b.StartTimer()
	deadline := start.Add(duration)
	connectortest.AwaitWave(b, store, deadline, 2*time.Minute)
	b.StopTimer()
	over := connectortest.Overshoots(b, store, ids, deadline)
	return over[len(over)/2], over[len(over)*99/100]
}
