package postgres

import (
	"context"
	"sync"
	"time"
)

// batcher coalesces concurrent calls into batches, the way a database
// groups commits: a caller that finds fewer than maxRunning batches in
// flight becomes a leader and runs everything pending, in batches of up to
// maxBatch, until nothing is pending; the others wait for their item. A lone
// caller runs alone at once — there is no waiting window — so batching
// costs nothing at low concurrency and, under load, turns N revocations
// into a few set-based statements and one synchronous commit. Up to
// maxRunning leaders run in parallel: this is not a lock on the target.
type batcher[T any] struct {
	maxRunning int
	maxBatch   int
	timeout    time.Duration
	run        func(ctx context.Context, items []T)

	mu      sync.Mutex
	pending []*batchItem[T]
	running int
	largest int // the largest batch run so far, for tests and diagnostics
}

type batchItem[T any] struct {
	v    T
	done chan struct{}
}

// do runs v in some batch and returns when run has filled in its result,
// or with ctx's error if the caller stops waiting (the item still runs;
// every operation batched here is idempotent).
func (b *batcher[T]) do(ctx context.Context, v T) error {
	it := &batchItem[T]{v: v, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, it)
	if b.running < b.maxRunning {
		b.running++
		for len(b.pending) > 0 {
			n := min(len(b.pending), b.maxBatch)
			b.largest = max(b.largest, n)
			batch := make([]*batchItem[T], n)
			copy(batch, b.pending)
			b.pending = append(b.pending[:0:0], b.pending[n:]...)
			b.mu.Unlock()
			b.runBatch(ctx, batch)
			b.mu.Lock()
		}
		b.running--
	}
	b.mu.Unlock()
	select {
	case <-it.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batcher[T]) runBatch(ctx context.Context, batch []*batchItem[T]) {
	// The batch serves other callers too: it must not end because the
	// leader's caller gave up.
	runCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	vs := make([]T, len(batch))
	for i, it := range batch {
		vs[i] = it.v
	}
	defer func() {
		for _, it := range batch {
			close(it.done)
		}
	}()
	b.run(runCtx, vs)
}
