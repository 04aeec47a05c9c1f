package redis

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

func TestStateEncodingIsJSON(t *testing.T) {
	c := &Conn{cfg: Config{Prefix: "lapse_"}}
	names := []string{"primary", "replica-1"}
	var err error
	if c.nodesJSON, err = json.Marshal(names); err != nil {
		t.Fatal(err)
	}
	c.nodeNames = names
	id := "gr_01abc-def"
	got := c.encodeState("lapse_" + id)
	want, _ := json.Marshal(state{User: "lapse_" + id, Nodes: names})
	if string(got) != string(want) {
		t.Fatalf("encodeState = %s, json.Marshal = %s", got, want)
	}
	if !c.isCurrentState(id, got) {
		t.Fatal("Grant's own state is not recognised")
	}
	fast, ok := c.grantState(id, got)
	var slow state
	if err := json.Unmarshal(got, &slow); err != nil || !ok || !reflect.DeepEqual(*fast, slow) {
		t.Fatalf("grantState = %+v %v, decoded %+v %v", fast, ok, slow, err)
	}
	for _, other := range []string{
		`{"user":"lapse_gr_01abc-de","nodes":["primary","replica-1"]}`,
		`{"user":"lapse_gr_01abc-def","nodes":["primary"]}`,
		`{"user":"lapse_gr_01abc-def","nodes":["primary","replica-1"]} `,
		`{"user":"old_gr_01abc-def","nodes":["primary","replica-1"]}`,
		`{"user":"lapse_gr_01abc-def","nodes":["primary","replica-1"]`,
		`{"user":"lapse_gr_01abc-def","nodes":["primary","replica-1"]}}`,
	} {
		if c.isCurrentState(id, []byte(other)) {
			t.Errorf("%s taken for the current state", other)
		}
	}
}

func TestSpecElementErrorNamesItsField(t *testing.T) {
	_, err := parseSpec(map[string]any{"commands": []any{"get", "acl"}})
	if f := lapse.ErrorField(err); f != "spec.commands[1]" {
		t.Fatalf("error %v names field %q, want spec.commands[1]", err, f)
	}
	_, err = parseSpec(map[string]any{"commands": []any{"get"}, "keys": []any{"a:*", "b c"}})
	if f := lapse.ErrorField(err); f != "spec.keys[1]" {
		t.Fatalf("error %v names field %q, want spec.keys[1]", err, f)
	}
}

// holdFirst returns a batcher whose first batch waits for release, and the
// batches it ran.
func holdFirst(max int, writes bool) (b *batcher[string, string], release chan struct{}, started chan struct{}, batches func() [][]string) {
	var (
		mu  sync.Mutex
		ran [][]string
	)
	release = make(chan struct{})
	started = make(chan struct{}, 100)
	b = &batcher[string, string]{max: max, writes: writes, run: func(_ context.Context, reqs []string) []string {
		mu.Lock()
		n := len(ran)
		ran = append(ran, slices.Clone(reqs))
		mu.Unlock()
		started <- struct{}{}
		if n == 0 {
			<-release
		}
		out := make([]string, len(reqs))
		for i, r := range reqs {
			out[i] = r + "!"
		}
		return out
	}}
	return b, release, started, func() [][]string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ran)
	}
}

func queued(b *batcher[string, string]) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, bt := range b.queue {
		n += len(bt.reqs)
	}
	return n
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBatcherBoundsItsBatches(t *testing.T) {
	b, release, started, batches := holdFirst(2, false)
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); b.do(ctx, "a") }()
	<-started
	for _, r := range []string{"b", "c", "d", "e", "f"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := b.do(ctx, r); err != nil || got != r+"!" {
				t.Errorf("%s: %q %v", r, got, err)
			}
		}()
	}
	waitUntil(t, func() bool { return queued(b) == 5 })
	close(release)
	wg.Wait()
	var sizes []int
	for _, bt := range batches() {
		sizes = append(sizes, len(bt))
	}
	if !slices.Equal(sizes, []int{1, 2, 2, 1}) {
		t.Errorf("batch sizes %v, want [1 2 2 1]", sizes)
	}
}

// TestWriteBatcherWaitsForItsBatch: a caller that gives up on a write
// still returns only once the write has run, so nothing it does next (a
// failed Grant's undo) can overtake it; a reader returns at once.
func TestWriteBatcherWaitsForItsBatch(t *testing.T) {
	for _, writes := range []bool{true, false} {
		b, release, started, batches := holdFirst(0, writes)
		go b.do(context.Background(), "a")
		<-started
		ctx, cancel := context.WithCancel(context.Background())
		type result struct {
			err error
			ran [][]string // the batches run when do returned
		}
		done := make(chan result, 1)
		go func() {
			_, err := b.do(ctx, "b")
			done <- result{err, batches()}
		}()
		waitUntil(t, func() bool { return queued(b) == 1 })
		cancel()
		if !writes {
			// The first batch is still held: the reader must return now.
			if r := <-done; r.err != context.Canceled {
				t.Errorf("reader: %v, want context.Canceled", r.err)
			}
			close(release)
			continue
		}
		close(release)
		r := <-done
		if r.err != nil {
			t.Errorf("writer: %v, want the batch's answer", r.err)
		}
		if len(r.ran) != 2 || !slices.Equal(r.ran[1], []string{"b"}) {
			t.Errorf("the writer returned when the batches run were %v, before its own", r.ran)
		}
	}
	b, _, _, batches := holdFirst(0, true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.do(ctx, "a"); err != context.Canceled || len(batches()) != 0 {
		t.Errorf("a caller that had given up: %v, %d batches run", err, len(batches()))
	}
}

// sharedConn opens the connector on the machine's Redis server, or skips.
func sharedConn(t *testing.T) *Conn {
	t.Helper()
	addr := os.Getenv("LAPSE_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c, err := New(context.Background(), Config{Nodes: []NodeConfig{{Name: "main", Addr: addr}}}, connector.Env{})
	if err == nil {
		err = c.Ping(context.Background())
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Redis at %s: %v", addr, err)
		}
		t.Skipf("Redis at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestBatchedRevocationsAnswerEachUser runs a batch of revocations
// directly, as concurrent callers share one, and checks that each gets its
// own answer: a user with a session, one that never existed, another, and
// the first again.
func TestBatchedRevocationsAnswerEachUser(t *testing.T) {
	c := sharedConn(t)
	n := c.nodes[0]
	ctx := context.Background()
	id := lapse.NewID(lapse.PrefixGrant, time.Now())
	a, b := "lapse_"+id+"a", "lapse_"+id+"b"
	t.Cleanup(func() { n.admin.Do(ctx, "ACL", "DELUSER", a, b) })
	for _, u := range []string{a, b} {
		if err := n.admin.Do(ctx, "ACL", "SETUSER", u, "reset", "on", ">x", "~lapsetest:*", "+get").Err(); err != nil {
			t.Fatal(err)
		}
	}
	session := goredis.NewClient(&goredis.Options{Addr: n.addr, Username: a, Password: "x", Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer session.Close()
	if err := session.Get(ctx, "lapsetest:x").Err(); err != goredis.Nil {
		t.Fatalf("session: %v", err)
	}
	absent := "lapse_" + id + "c"
	got := n.revokeUsers(ctx, []string{a, absent, b, a})
	want := []revocation{
		{nodeRevocation: nodeRevocation{deleted: true, killed: 1}},
		{},
		{nodeRevocation: nodeRevocation{deleted: true}},
		{},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("revokeUsers = %+v, want %+v", got, want)
	}
	for _, u := range []string{a, b} {
		if err := n.admin.Do(ctx, "ACL", "GETUSER", u).Err(); err != goredis.Nil {
			t.Errorf("%s: ACL GETUSER %v after the batch", u, err)
		}
	}
}
