package redis

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestBatcherNeverServesAStaleAnswer: a request that arrives while a batch
// runs must not get that batch's answer, which was read before it asked.
func TestBatcherNeverServesAStaleAnswer(t *testing.T) {
	var (
		mu      sync.Mutex
		batches [][]string
		release = make(chan struct{})
		started = make(chan struct{}, 10)
	)
	b := &batcher[string, string]{timeout: time.Minute, run: func(_ context.Context, reqs []string) []string {
		mu.Lock()
		n := len(batches)
		batches = append(batches, slices.Clone(reqs))
		mu.Unlock()
		started <- struct{}{}
		if n == 0 {
			<-release // hold the first batch until the others have queued
		}
		out := make([]string, len(reqs))
		for i, r := range reqs {
			out[i] = r + "@batch" + string(rune('0'+n))
		}
		return out
	}}
	ctx := context.Background()
	first := make(chan string)
	go func() {
		r, _ := b.do(ctx, "a")
		first <- r
	}()
	<-started // batch 0 is running with "a" only
	var wg sync.WaitGroup
	later := make([]string, 3)
	for i, req := range []string{"b", "c", "d"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			later[i], _ = b.do(ctx, req)
		}()
	}
	// Wait until the three have queued behind the running batch.
	for {
		b.mu.Lock()
		queued := b.next != nil && len(b.next.reqs) == 3
		b.mu.Unlock()
		if queued {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if r := <-first; r != "a@batch0" {
		t.Errorf("first answer %q", r)
	}
	wg.Wait()
	for i, req := range []string{"b", "c", "d"} {
		if later[i] != req+"@batch1" {
			t.Errorf("%s got %q, want an answer from the batch after it arrived", req, later[i])
		}
	}
	if len(batches) != 2 || len(batches[1]) != 3 {
		t.Errorf("batches %v, want [[a] [b c d]]", batches)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.busy || b.next != nil {
		t.Error("the batcher did not go idle")
	}
}

func TestParseClientListCannotBeForged(t *testing.T) {
	list := "id=3 addr=127.0.0.1:1 laddr=127.0.0.1:6379 fd=8 name=user=lapse_x age=1 cmd=get user=default redir=-1 resp=2\n" +
		"id=4 addr=127.0.0.1:2 laddr=127.0.0.1:6379 fd=9 name= age=1 cmd=blpop user=lapse_x redir=-1 resp=2\n" +
		"id=5 addr=127.0.0.1:3 laddr=127.0.0.1:6379 fd=10 name=x age=1 cmd=get user=lapse_xy redir=-1 resp=3\n"
	total, by := parseClientList(list, map[string]bool{"lapse_x": true, "default": true})
	if total != 3 {
		t.Errorf("total %d", total)
	}
	if got := by["lapse_x"]; len(got) != 1 || got[0] != (client{id: "4", addr: "127.0.0.1:2", cmd: "blpop"}) {
		t.Errorf("lapse_x clients %+v", got)
	}
	if len(by["default"]) != 1 || len(by["lapse_xy"]) != 0 {
		t.Errorf("by user %+v", by)
	}
}
