package broker_test

import (
	"testing"
	"time"

	"github.com/lapsehq/lapse/broker"
)

// TestBackoffIsCappedAndJittered: the wait before attempt n doubles from
// base up to the cap, and is spread over the upper half of that value so
// that many grants failing together do not retry together.
func TestBackoffIsCappedAndJittered(t *testing.T) {
	const base, capWait = time.Second, time.Minute
	for n := 1; n <= 40; n++ {
		ceil := min(base<<min(n-1, 30), capWait)
		seen := map[time.Duration]bool{}
		for range 200 {
			d := broker.Backoff(base, capWait, n)
			if d < ceil/2 || d > ceil {
				t.Fatalf("attempt %d: wait %v outside [%v, %v]", n, d, ceil/2, ceil)
			}
			seen[d] = true
		}
		// 200 draws from a range of nanoseconds: without jitter they
		// would all be equal.
		if len(seen) < 150 {
			t.Fatalf("attempt %d: only %d distinct waits in 200 draws; retries are not jittered", n, len(seen))
		}
	}
}
