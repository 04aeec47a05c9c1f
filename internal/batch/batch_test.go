package batch

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBatcherServesEachItemOnceAfterItIsQueued checks the batcher's
// guarantees: every item is run exactly once, by a batch that started
// after the item was queued (so a batched read is never older than the
// call it answers), and no more than MaxRunning batches run at once.
func TestBatcherServesEachItemOnceAfterItIsQueued(t *testing.T) {
	type item struct {
		queued, started int64
		runs            atomic.Int32
	}
	var clock, running, most atomic.Int64
	var mu sync.Mutex
	largest := 0
	b := &Batcher[*item]{MaxRunning: 2, MaxBatch: 32, Timeout: time.Minute, Run: func(ctx context.Context, items []*item) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		start := clock.Add(1)
		for _, it := range items {
			it.started = start
			it.runs.Add(1)
		}
		mu.Lock()
		largest = max(largest, len(items))
		mu.Unlock()
	}}
	items := make([]*item, 200)
	var wg sync.WaitGroup
	for i := range items {
		items[i] = &item{}
		wg.Go(func() {
			items[i].queued = clock.Add(1)
			if err := b.Do(context.Background(), items[i]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i, it := range items {
		if n := it.runs.Load(); n != 1 {
			t.Errorf("item %d ran %d times", i, n)
		}
		if it.started <= it.queued {
			t.Errorf("item %d was served by a batch that started before it was queued", i)
		}
	}
	if m := most.Load(); m > 2 {
		t.Errorf("%d batches ran at once, want at most 2", m)
	}
	t.Logf("largest batch: %d", largest)
}

// TestBatcherCallerStopsWaiting: a caller whose context ends returns its
// error at once; its item still runs in a later batch.
func TestBatcherCallerStopsWaiting(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	var ran sync.Map
	b := &Batcher[string]{MaxRunning: 1, MaxBatch: 32, Timeout: time.Minute, Run: func(ctx context.Context, items []string) {
		for _, it := range items {
			if it == "first" {
				close(entered)
				<-release
			}
			ran.Store(it, true)
		}
	}}
	firstDone := make(chan error)
	go func() { firstDone <- b.Do(context.Background(), "first") }()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Do(ctx, "second"); err != context.Canceled {
		t.Fatalf("do with a cancelled context = %v, want context.Canceled", err)
	}
	close(release)
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	if _, ok := ran.Load("second"); !ok {
		t.Error("the item of the caller that stopped waiting never ran")
	}
}
