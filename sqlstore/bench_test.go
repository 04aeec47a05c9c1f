package sqlstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// The benchmarks measure the store on the revocation path: inserting
// grants, claiming due batches, and the one transaction per batch that moves
// hundreds of grants on with a checkpoint and an event each. They report
// ns/grant besides ns/op.

var benchStores = []struct {
	name string
	open func(testing.TB) *sqlstore.Store
}{
	{"sqlite", func(tb testing.TB) *sqlstore.Store { return sqltest.OpenSQLite(tb) }},
	{"postgres", func(tb testing.TB) *sqlstore.Store { return sqltest.OpenPostgres(tb) }},
}

var benchT0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// cpuTime returns the CPU time this process has used (user and system, all
// threads). On a machine shared with other work, CPU time per grant is a
// steadier figure than elapsed time; for PostgreSQL it leaves out the
// server's share.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// perGrant reports elapsed and CPU time per grant for a benchmark whose
// b.N iterations each handled n grants; cpu is the CPU time they used.
func perGrant(b *testing.B, n int, cpu time.Duration) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/grant")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/grant")
}

func benchGrant(i int, due time.Time) *lapse.Grant {
	created := benchT0.Add(time.Duration(i) * time.Microsecond)
	id := lapse.NewID(lapse.PrefixGrant, created)
	return &lapse.Grant{
		ID:             id,
		RequestID:      lapse.NewID(lapse.PrefixRequest, created),
		Principal:      lapse.Principal{ID: fmt.Sprintf("svc-%d", i%50), Kind: lapse.KindService, Groups: []string{"deploy"}},
		Entitlement:    "api/read",
		Target:         fmt.Sprintf("target-%d", i%4),
		State:          lapse.GrantActive,
		StartsAt:       created,
		ExpiresAt:      due,
		DueAt:          due,
		ConnectorState: []byte(`{"jti":"` + id + `"}`),
		Info:           map[string]string{"audience": "api"},
		CreatedAt:      created,
		ActivatedAt:    created,
		Checkpoints: []*lapse.Checkpoint{
			{GrantID: id, Name: "target", Kind: lapse.CheckpointTarget, CreatedAt: created},
		},
	}
}

func insertBenchGrants(b *testing.B, s lapse.Store, from, n int, due time.Time) []*lapse.Grant {
	b.Helper()
	gs := make([]*lapse.Grant, n)
	for i := range gs {
		gs[i] = benchGrant(from+i, due)
	}
	insertGrantList(b, s, gs)
	return gs
}

func insertGrantList(b *testing.B, s lapse.Store, gs []*lapse.Grant) {
	b.Helper()
	ctx := context.Background()
	n := len(gs)
	for start := 0; start < n; start += 1000 {
		batch := gs[start:min(start+1000, n)]
		if err := s.Update(ctx, func(tx lapse.Tx) error {
			for _, g := range batch {
				if err := tx.InsertGrant(ctx, g); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInsertGrants: one transaction inserts 500 grants with one
// checkpoint each.
func BenchmarkInsertGrants(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			const batch = 500
			b.ResetTimer()
			cpu := cpuTime()
			for i := range b.N {
				insertBenchGrants(b, s, i*batch, batch, benchT0.Add(time.Hour))
			}
			perGrant(b, batch, cpuTime()-cpu)
		})
	}
}

// BenchmarkClaimDue: claim the 512 oldest of 10,000 due grants (with their
// checkpoints). Each iteration moves the clock past the previous lease, so
// every claim finds a full batch.
func BenchmarkClaimDue(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			ctx := context.Background()
			s := st.open(b)
			insertBenchGrants(b, s, 0, 10000, benchT0)
			const limit, lease = 512, time.Minute
			now := benchT0
			b.ResetTimer()
			cpu := cpuTime()
			for range b.N {
				now = now.Add(lease)
				gs, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "bench", Now: now, Lease: lease, Limit: limit})
				if err != nil {
					b.Fatal(err)
				}
				if len(gs) != limit || len(gs[0].Checkpoints) != 1 {
					b.Fatalf("claimed %d grants", len(gs))
				}
			}
			perGrant(b, limit, cpuTime()-cpu)
		})
	}
}

// transition is what the engine writes per grant when a batch moves on:
// the grant, one checkpoint, one event.
func transition(ctx context.Context, tx lapse.Tx, g *lapse.Grant, state lapse.GrantState, at time.Time) error {
	g.State = state
	g.RevokeStartedAt = at
	g.Attempts++
	if err := tx.UpdateGrant(ctx, g); err != nil {
		return err
	}
	cp := g.Checkpoints[0]
	cp.RevokedAt = at
	cp.VerifiedAt = at
	cp.Evidence = json.RawMessage(`{"introspection":"inactive"}`)
	if err := tx.PutCheckpoint(ctx, cp); err != nil {
		return err
	}
	return tx.AppendEvent(ctx, &lapse.Event{
		Time: at, Type: lapse.EventGrantVerified, Channel: lapse.ChannelEngine,
		RequestID: g.RequestID, GrantID: g.ID, Outcome: "ok",
	})
}

// BenchmarkBatchTransition: one Update moves 500 grants on, each with
// UpdateGrant + PutCheckpoint + AppendEvent.
func BenchmarkBatchTransition(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			ctx := context.Background()
			s := st.open(b)
			const batch = 500
			gs := insertBenchGrants(b, s, 0, batch, benchT0)
			states := []lapse.GrantState{lapse.GrantRevoking, lapse.GrantVerifying}
			b.ResetTimer()
			cpu := cpuTime()
			for i := range b.N {
				at := benchT0.Add(time.Duration(i) * time.Second)
				if err := s.Update(ctx, func(tx lapse.Tx) error {
					for _, g := range gs {
						if err := transition(ctx, tx, g, states[i%2], at); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			perGrant(b, batch, cpuTime()-cpu)
		})
	}
}

// BenchmarkRevokeWave: 10,000 grants expire in the same second; the store's
// share of revoking them all as the engine does: claim batches of 512, then
// one transaction per batch marks each grant revoked with its checkpoint
// verified and an event. ms/wave is the store's total for the wave.
func BenchmarkRevokeWave(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			ctx := context.Background()
			const wave, limit = 10000, 512
			var total, claiming, writing, slowest, cpu time.Duration
			for i := range b.N {
				b.StopTimer()
				s := st.open(b)
				insertBenchGrants(b, s, i*wave, wave, benchT0)
				b.StartTimer()
				began, cpu0 := time.Now(), cpuTime()
				done := 0
				for {
					t := time.Now()
					gs, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "bench", Now: benchT0, Lease: time.Minute, Limit: limit})
					if err != nil {
						b.Fatal(err)
					}
					claimed := time.Now()
					claiming += claimed.Sub(t)
					slowest = max(slowest, claimed.Sub(t))
					if len(gs) == 0 {
						break
					}
					if err := s.Update(ctx, func(tx lapse.Tx) error {
						for _, g := range gs {
							g.DueAt = time.Time{}
							g.RevokedAt = benchT0
							g.LeaseOwner, g.LeaseUntil = "", time.Time{}
							if err := transition(ctx, tx, g, lapse.GrantRevoked, benchT0); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						b.Fatal(err)
					}
					writing += time.Since(claimed)
					slowest = max(slowest, time.Since(claimed))
					done += len(gs)
				}
				total += time.Since(began)
				cpu += cpuTime() - cpu0
				if done != wave {
					b.Fatalf("revoked %d of %d", done, wave)
				}
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/wave")
			b.ReportMetric(float64(claiming.Milliseconds())/float64(b.N), "claim-ms/wave")
			b.ReportMetric(float64(writing.Milliseconds())/float64(b.N), "write-ms/wave")
			b.ReportMetric(float64(slowest.Milliseconds()), "max-call-ms")
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*wave), "ns/grant")
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/wave")
		})
	}
}

// BenchmarkClaimWave: 10,000 grants of one target expire together and are
// claimed in batches of 512 at one instant, as the engine does during a
// wave; with expire=true the claim also moves each to revoking
// (ClaimInput.Expire). Claimed grants stay leased, so each claim passes
// over the ones before it.
func BenchmarkClaimWave(b *testing.B) {
	for _, st := range benchStores {
		for _, expire := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/expire=%v", st.name, expire), func(b *testing.B) {
				ctx := context.Background()
				const wave, limit = 10000, 512
				var cpu time.Duration
				for i := range b.N {
					b.StopTimer()
					s := st.open(b)
					gs := make([]*lapse.Grant, wave)
					for j := range gs {
						gs[j] = benchGrant(i*wave+j, benchT0)
						gs[j].Target = "wave"
					}
					insertGrantList(b, s, gs)
					b.StartTimer()
					cpu0 := cpuTime()
					for done := 0; done < wave; {
						got, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "bench", Now: benchT0, Lease: time.Minute, Limit: limit, Target: "wave", Expire: expire})
						if err != nil {
							b.Fatal(err)
						}
						if len(got) == 0 {
							b.Fatalf("claimed %d of %d", done, wave)
						}
						done += len(got)
					}
					cpu += cpuTime() - cpu0
					b.StopTimer()
					s.Close()
					b.StartTimer()
				}
				perGrant(b, wave, cpu)
			})
		}
	}
}
