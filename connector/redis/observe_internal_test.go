package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
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
	b := &batcher[string, string]{run: func(_ context.Context, reqs []string) []string {
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
		queued := len(b.queue) == 1 && len(b.queue[0].reqs) == 3
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
	if b.busy || len(b.queue) != 0 {
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

// parseClientListByLine is the plain reading of CLIENT LIST that
// parseClientList must agree with: line by line, the first " user=" (or a
// leading "user=") of a line is its user field.
func parseClientListByLine(list string, wanted map[string]bool) (total int, byUser map[string][]client) {
	byUser = map[string][]client{}
	for line := range strings.Lines(list) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		total++
		user := field(line, "user")
		if wanted[user] {
			byUser[user] = append(byUser[user], client{id: field(line, "id"), addr: field(line, "addr"), cmd: field(line, "cmd")})
		}
	}
	return total, byUser
}

// clientLine is a Redis 7 CLIENT LIST entry.
func clientLine(id int, name, user string) string {
	return fmt.Sprintf("id=%d addr=127.0.0.1:%d laddr=127.0.0.1:6379 fd=8 name=%s age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 qbuf-free=20448 argv-mem=10 multi-mem=0 rbs=16384 rbp=16384 obl=0 oll=0 omem=0 tot-mem=37658 events=r cmd=get user=%s redir=-1 resp=2\n", id, 10000+id, name, user)
}

func TestParseClientListAgreesWithLineByLine(t *testing.T) {
	names := []string{"", "lapse", "user=lapse_a", "xuser=lapse_a", "lapse_a"}
	users := []string{"default", "lapse_a", "lapse_ab", "lapse_b", "user", "lapse_a-x"}
	wanted := map[string]bool{"lapse_a": true, "lapse_b": true}
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var b strings.Builder
		n := rnd.IntN(30)
		for i := range n {
			b.WriteString(clientLine(i, names[rnd.IntN(len(names))], users[rnd.IntN(len(users))]))
		}
		list := b.String()
		switch round % 4 {
		case 1:
			list = strings.TrimSuffix(list, "\n") // no final newline
		case 2:
			list = strings.ReplaceAll(list, "\n", "\r\n")
		case 3:
			// A line that starts with the user field.
			list += "user=lapse_b id=99 addr=127.0.0.1:1 cmd=get\n"
		}
		total, by := parseClientList(list, wanted)
		wantTotal, wantBy := parseClientListByLine(list, wanted)
		if total != wantTotal || !reflect.DeepEqual(by, wantBy) {
			t.Fatalf("round %d: got %d %+v, want %d %+v\n%s", round, total, by, wantTotal, wantBy, list)
		}
	}
}

func BenchmarkParseClientList(b *testing.B) {
	var sb strings.Builder
	for i := range 2000 {
		sb.WriteString(clientLine(i, "", fmt.Sprintf("lapse_%d", i)))
	}
	list := sb.String()
	wanted := map[string]bool{"lapse_1999": true}
	b.SetBytes(int64(len(list)))
	for b.Loop() {
		if _, by := parseClientList(list, wanted); len(by["lapse_1999"]) != 1 {
			b.Fatal(by)
		}
	}
}
