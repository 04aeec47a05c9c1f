// Package batch coalesces concurrent calls into set-wise batches, the way a
// database groups commits. Connectors use it so that many revocations or
// verifications arriving together (a wave of deadlines) become a few
// statements instead of one each.
package batch

import (
	"context"
	"sync"
	"time"
)

// Batcher runs items in batches. A caller that finds fewer than MaxRunning
// batches in flight becomes a leader and runs everything pending, in
// batches of up to MaxBatch, until nothing is pending; the others wait for
// their item. A lone caller runs alone at once — there is no waiting window
// — so batching costs nothing at low concurrency. Up to MaxRunning leaders
// run in parallel: a Batcher is not a lock on the target.
//
// Every item is run by a batch that started after the item was queued, so a
// batched read is never older than the call it answers.
type Batcher[T any] struct {
	MaxRunning int           // leaders at once; at least 1
	MaxBatch   int           // items per batch; at least 1
	Timeout    time.Duration // bounds one batch, whatever its callers do
	Run        func(ctx context.Context, items []T)

	mu      sync.Mutex
	pending []*item[T]
	running int
	largest int // the largest batch run so far, for tests and diagnostics
}

type item[T any] struct {
	v    T
	done chan struct{}
}

// Do runs v in some batch and returns when Run has filled in its result,
// or with ctx's error if the caller stops waiting first (the item still
// runs: what is batched must be idempotent, or its result unneeded).
func (b *Batcher[T]) Do(ctx context.Context, v T) error {
	it := &item[T]{v: v, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, it)
	if b.running < max(b.MaxRunning, 1) {
		b.running++
		for len(b.pending) > 0 {
			n := min(len(b.pending), max(b.MaxBatch, 1))
			b.largest = max(b.largest, n)
			batch := b.pending[:n:n]
			b.pending = append([]*item[T](nil), b.pending[n:]...)
			b.mu.Unlock()
			b.run(ctx, batch)
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

// Largest returns the size of the largest batch run so far.
func (b *Batcher[T]) Largest() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.largest
}

func (b *Batcher[T]) run(ctx context.Context, batch []*item[T]) {
	// The batch serves other callers too: it must not end because the
	// leader's caller gave up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.Timeout)
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
	b.Run(ctx, vs)
}
