package connectortest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// AwaitWave waits until store has no grant left to act on — every grant
// of a wave of deadlines is revoked — and fails tb if that has not
// happened limit after deadline. It polls with the cheapest query that can
// tell (NextDueAt, an index lookup), so that measuring takes little CPU
// from the engine and the target.
func AwaitWave(tb testing.TB, store lapse.Store, deadline time.Time, limit time.Duration) {
	tb.Helper()
	for {
		_, pending, err := store.NextDueAt(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		if !pending {
			return
		}
		if time.Since(deadline) > limit {
			tb.Fatalf("grants still pending %v after the deadline", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Overshoots returns, in ascending order, each grant's overshoot in
// milliseconds: from its deadline to its RevokedAt, the moment Verify
// confirmed every checkpoint. It fails tb unless every grant is revoked,
// expired, with the deadline given.
func Overshoots(tb testing.TB, store lapse.Store, ids []string, deadline time.Time) []float64 {
	tb.Helper()
	over := make([]float64, 0, len(ids))
	for _, id := range ids {
		g, err := store.GetGrant(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		if g.State != lapse.GrantRevoked || g.EndReason != lapse.EndExpired || !g.ExpiresAt.Equal(deadline) {
			tb.Fatalf("grant %s: %s, end %q, deadline %v (want revoked, expired, %v)", id, g.State, g.EndReason, g.ExpiresAt, deadline)
		}
		over = append(over, float64(g.RevokedAt.Sub(g.ExpiresAt))/float64(time.Millisecond))
	}
	slices.Sort(over)
	return over
}
