package mariadb

import (
	"context"
	"sync"
	"time"
)

// batchTimeout bounds one batch. A batch serves several callers, so it
// does not end when the caller that happens to run it gives up.
const batchTimeout = time.Minute

// maxBatch bounds how many callers one batch serves, and so the size of
// the statement it sends.
const maxBatch = 32

// batcher coalesces concurrent reads of the same kind into one set-wise
// read. A caller that finds fewer than maxRunning batches in flight runs
// everything pending itself, batch after batch, until nothing is pending;
// the others wait for theirs. A lone caller runs at once, with no waiting
// window, so batching costs nothing at low concurrency. It is not a lock
// on the target: up to maxRunning batches run in parallel.
//
// Every item is read by a batch that started after the item was queued,
// so a batched read is never older than the call it answers.
type batcher[T any] struct {
	maxRunning int
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

// do has v read by some batch and returns when run has filled in its
// result, or with ctx's error if the caller stops waiting first.
func (b *batcher[T]) do(ctx context.Context, v T) error {
	it := &batchItem[T]{v: v, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, it)
	if b.running < b.maxRunning {
		b.running++
		for len(b.pending) > 0 {
			n := min(len(b.pending), maxBatch)
			b.largest = max(b.largest, n)
			batch := b.pending[:n:n]
			b.pending = append([]*batchItem[T](nil), b.pending[n:]...)
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
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchTimeout)
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
	b.run(ctx, vs)
}
