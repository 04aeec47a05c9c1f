package audit_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

var benchEvents = flag.Int("audit.events", 1_000_000, "events in the audit benchmarks' log")

// BenchmarkLog measures, at -audit.events events (one million by default):
//
//   - append: durable appends through Store.Update, 1,000 events per
//     transaction (the engine's batches) and, over a sample, one event per
//     transaction (an API call);
//   - integrate: the sequencer turning committed events into leaf and node
//     hashes and one signed checkpoint;
//   - verify: Verify recomputing the whole log against its checkpoints;
//   - scan: the store's Scan alone, the bound of verify.
//
// Run: go test -run '^$' -bench BenchmarkLog -benchtime 3x -count 5 ./audit/
func BenchmarkLog(b *testing.B) {
	for _, db := range []struct {
		name string
		open func(testing.TB) *sqlstore.Store
	}{
		{"sqlite", func(tb testing.TB) *sqlstore.Store { return sqltest.OpenSQLite(tb) }},
		{"postgres", func(tb testing.TB) *sqlstore.Store { return sqltest.OpenPostgres(tb) }},
	} {
		b.Run(db.name, func(b *testing.B) {
			ctx := context.Background()
			s := db.open(b)
			n := *benchEvents

			start := time.Now()
			appendBench(b, s, 0, n, 1000)
			batched := float64(n) / time.Since(start).Seconds()
			const single = 2000
			start = time.Now()
			appendBench(b, s, n, single, 1)
			one := float64(single) / time.Since(start).Seconds()

			skey, vkey, _ := audit.GenerateKey("bench/audit")
			l, err := audit.NewLog(audit.Config{Backend: s.Audit(), SigningKey: skey, VerifierKey: vkey,
				Sinks: []audit.Sink{&audit.DirSink{Dir: b.TempDir()}}})
			if err != nil {
				b.Fatal(err)
			}
			start = time.Now()
			cp, err := l.Sync(ctx)
			if err != nil || cp.Size != uint64(n+single) {
				b.Fatalf("sync: %v", err)
			}
			integrate := float64(n+single) / time.Since(start).Seconds()

			v, _ := audit.NewVerifier(vkey)
			var verified time.Duration
			runs := 0
			for b.Loop() {
				t := time.Now()
				r, err := audit.Verify(ctx, s.Audit(), audit.VerifyOptions{Verifier: v})
				if err != nil || !r.OK() || r.Entries != int64(n+single) {
					b.Fatalf("verify: %v %+v", err, r)
				}
				verified += time.Since(t)
				runs++
			}
			// The same number of bare scans (Backend.Scan, nothing done per
			// entry): how fast the store alone hands the entries over, the
			// bound of verify, which checks them while the next are read.
			var scanned time.Duration
			for range runs {
				t := time.Now()
				k := 0
				if err := s.Audit().Scan(ctx, 0, 0, func(*audit.Entry) error { k++; return nil }); err != nil || k != n+single {
					b.Fatalf("scan: %v, %d entries", err, k)
				}
				scanned += time.Since(t)
			}
			b.ReportMetric(batched, "append-batch-events/s")
			b.ReportMetric(one, "append-single-events/s")
			b.ReportMetric(integrate, "integrate-events/s")
			b.ReportMetric(float64(n+single)*float64(runs)/verified.Seconds(), "verify-events/s")
			b.ReportMetric(float64(n+single)*float64(runs)/scanned.Seconds(), "scan-events/s")
		})
	}
}

// appendBench appends n events after the first from, per to a transaction.
func appendBench(b *testing.B, s *sqlstore.Store, from, n, per int) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for done := 0; done < n; done += per {
		err := s.Update(ctx, func(tx lapse.Tx) error {
			for i := range min(per, n-done) {
				j := from + done + i
				data, _ := json.Marshal(map[string]any{"actions": []string{"drop_role", "terminate"}, "checkpoints": 2, "end_reason": "expired"})
				if err := tx.AppendEvent(ctx, &lapse.Event{
					Time: t0.Add(time.Duration(j) * time.Microsecond), Type: lapse.EventGrantRevoked,
					ActorID: "engine", ActorKind: lapse.KindService, Channel: lapse.ChannelEngine,
					RequestID: fmt.Sprintf("rq_%024d", j), GrantID: fmt.Sprintf("gr_%024d", j), Outcome: "verified", Data: data,
				}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
