package fake_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/fake"
)

// harness runs the suite against c. open returns the connector the suite
// gets on each Open after the first, which is c itself.
func harness(c *fake.Conn, open func() connector.Connector) connectortest.Harness {
	first := true
	return connectortest.Harness{
		Open: func(t *testing.T) connector.Connector {
			if first {
				first = false
				return c
			}
			return open()
		},
		Spec: map[string]any{"privileges": []any{"read", "db:write"}},
		BadSpecs: []map[string]any{
			{"privileges": "read"},
			{"privileges": []any{"read; drop"}},
			{"privileges": []any{42}},
			{"role": "admin"},
		},
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			return c.Authenticate(g.Info["user"], g.Secret["password"])
		},
		Hold: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			s, err := c.OpenSession(g.Info["user"], g.Secret["password"])
			if err != nil {
				return nil, nil, err
			}
			return s.Do, s.Close, nil
		},
	}
}

func TestContractMemory(t *testing.T) {
	c := fake.New(fake.Options{})
	// In memory the target is c itself: a "restarted" connector is c
	// without its Close, so the suite cannot close the target under itself.
	connectortest.Run(t, harness(c, func() connector.Connector {
		return struct {
			connector.Connector
			connector.SpecValidator
		}{c, c}
	}))
}

func TestContractDir(t *testing.T) {
	dir := t.TempDir()
	opts := fake.Options{Dir: filepath.Join(dir, "grants"), Journal: filepath.Join(dir, "journal")}
	// Each Open after the first is a separate instance sharing the
	// directory, as a restarted process would be.
	connectortest.Run(t, harness(fake.New(opts), func() connector.Connector { return fake.New(opts) }))
}

func grantReq(id string) *connector.GrantRequest {
	return &connector.GrantRequest{
		GrantID:     id,
		Principal:   lapse.Principal{ID: "alice", Kind: lapse.KindHuman},
		Entitlement: "demo/read",
		ExpiresAt:   time.Now().Add(time.Hour),
	}
}

func newID() string { return lapse.NewID(lapse.PrefixGrant, time.Now()) }

func mustGrant(t *testing.T, c *fake.Conn, id string) *connector.GrantResponse {
	t.Helper()
	resp, err := c.Grant(context.Background(), grantReq(id))
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return resp
}

func mustVerify(t *testing.T, c *fake.Conn, id string, g *connector.GrantResponse) *connector.VerifyResponse {
	t.Helper()
	v, err := c.Verify(context.Background(), &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return v
}

func TestSabotagedRevokeLeavesResidue(t *testing.T) {
	ctx := context.Background()
	c := fake.New(fake.Options{})
	id := newID()
	g := mustGrant(t, c, id)
	s, err := c.OpenSession(g.Info["user"], g.Secret["password"])
	if err != nil {
		t.Fatal(err)
	}
	c.Sabotage(id)
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatalf("sabotaged Revoke must report success, got %v", err)
	}
	v := mustVerify(t, c, id, g)
	if v.Gone() {
		t.Fatal("Verify reports gone after a sabotaged Revoke")
	}
	for _, cp := range v.Checkpoints {
		if cp.Gone || len(cp.Residue) == 0 {
			t.Errorf("checkpoint %s: gone=%v residue=%v, want residue", cp.Name, cp.Gone, cp.Residue)
		}
	}
	if err := s.Do(ctx); err != nil {
		t.Errorf("session died although Revoke was sabotaged: %v", err)
	}
	c.ClearSabotage()
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
		t.Fatal(err)
	}
	if v := mustVerify(t, c, id, g); !v.Gone() {
		t.Fatalf("not gone after a working Revoke: %+v", v.Checkpoints)
	}
	if err := s.Do(ctx); lapse.ErrorCode(err) != lapse.EUNAUTHORIZED {
		t.Errorf("session after Revoke: code %q, want %q", lapse.ErrorCode(err), lapse.EUNAUTHORIZED)
	}
}

func TestSabotageAll(t *testing.T) {
	c := fake.New(fake.Options{})
	id := newID()
	g := mustGrant(t, c, id)
	c.Sabotage("")
	if _, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}); err != nil {
		t.Fatal(err)
	}
	if !c.Has(id) {
		t.Fatal("Sabotage(\"\") did not stop Revoke")
	}
	if mustVerify(t, c, id, g).Gone() {
		t.Fatal("Verify reports gone after a sabotaged Revoke")
	}
}

func TestInjectedFailures(t *testing.T) {
	ctx := context.Background()
	c := fake.New(fake.Options{})
	a, b := newID(), newID()
	boom := lapse.Errorf(lapse.EUNAVAILABLE, "target down")

	c.Fail(fake.Grant, a, boom)
	if _, err := c.Grant(ctx, grantReq(a)); !errors.Is(err, boom) {
		t.Fatalf("Grant(a) = %v, want the injected error", err)
	}
	if c.Has(a) {
		t.Fatal("a failed Grant created an account")
	}
	mustGrant(t, c, b) // only a fails

	c.FailTimes(fake.Revoke, "", 2, nil)
	for i := range 2 {
		_, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: b})
		if lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
			t.Fatalf("Revoke %d: code %q, want %q", i, lapse.ErrorCode(err), lapse.EUNAVAILABLE)
		}
		if !c.Has(b) {
			t.Fatal("a failed Revoke removed the account")
		}
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: b}); err != nil {
		t.Fatalf("third Revoke: %v (FailTimes 2 must stop failing)", err)
	}

	c.Fail(fake.Verify, "", nil)
	if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: b}); err == nil {
		t.Fatal("Verify did not fail")
	}
	c.Fail(fake.Discover, "", nil)
	if _, err := c.Discover(ctx, &connector.DiscoverRequest{}); err == nil {
		t.Fatal("Discover did not fail")
	}
	c.ClearFailures()
	if _, err := c.Grant(ctx, grantReq(a)); err != nil {
		t.Fatalf("Grant after ClearFailures: %v", err)
	}
	if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: b}); err != nil {
		t.Fatalf("Verify after ClearFailures: %v", err)
	}

	if got := c.CallsFor(fake.Grant, a); got != 2 {
		t.Errorf("CallsFor(Grant, a) = %d, want 2", got)
	}
	if got := c.CallsFor(fake.Revoke, b); got != 3 {
		t.Errorf("CallsFor(Revoke, b) = %d, want 3", got)
	}
	if got := c.Calls(fake.Grant); got != 3 {
		t.Errorf("Calls(Grant) = %d, want 3", got)
	}
	if got := c.Calls(fake.Verify); got != 2 {
		t.Errorf("Calls(Verify) = %d, want 2", got)
	}
}

func TestGrantRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	c := fake.New(fake.Options{})
	for _, id := range []string{"", "../etc", "a/b", "x y", strings.Repeat("a", 129)} {
		if _, err := c.Grant(ctx, grantReq(id)); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("Grant(%q): code %q, want %q", id, lapse.ErrorCode(err), lapse.EINVALID)
		}
	}
	req := grantReq(newID())
	req.ExpiresAt = time.Now().Add(-time.Second)
	if _, err := c.Grant(ctx, req); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Grant past its deadline: code %q, want %q", lapse.ErrorCode(err), lapse.EINVALID)
	}
	if ids, _ := c.Live(); len(ids) != 0 {
		t.Errorf("rejected grants created accounts: %v", ids)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestAccountExpiresOnTarget(t *testing.T) {
	clk := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := fake.New(fake.Options{Clock: clk})
	req := grantReq(newID())
	req.ExpiresAt = clk.Now().Add(time.Minute)
	g, err := c.Grant(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Authenticate(g.Info["user"], g.Secret["password"]); err != nil {
		t.Fatalf("login before the deadline: %v", err)
	}
	if err := c.Authenticate(g.Info["user"], "wrong"); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	clk.Add(time.Minute)
	if err := c.Authenticate(g.Info["user"], g.Secret["password"]); err == nil {
		t.Fatal("login at the deadline succeeded: the target must enforce expiry itself")
	}
}

func TestPeakConcurrencyAndGate(t *testing.T) {
	c := fake.New(fake.Options{})
	release := c.Block(fake.Revoke)
	const n = 5
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newID()
		mustGrant(t, c, ids[i])
	}
	c.ResetPeak()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id})
			errs <- err
		}()
	}
	waitFor(t, func() bool { return c.Waiting() == n })
	// Grants are not blocked by a Revoke gate.
	mustGrant(t, c, newID())
	for _, id := range ids {
		if !c.Has(id) {
			t.Fatal("a blocked Revoke removed its account")
		}
	}
	if got := c.InFlight(); got != n {
		t.Errorf("InFlight = %d, want %d", got, n)
	}
	release()
	release() // harmless twice
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Revoke: %v", err)
		}
	}
	if got := c.PeakConcurrency(); got < n {
		t.Errorf("PeakConcurrency = %d, want at least %d", got, n)
	}
	if got := c.InFlight(); got != 0 {
		t.Errorf("InFlight after all calls = %d", got)
	}
	for _, id := range ids {
		if c.Has(id) {
			t.Errorf("%s still present after released Revoke", id)
		}
	}
}

func TestBlockedCallHonoursContext(t *testing.T) {
	c := fake.New(fake.Options{})
	release := c.Block()
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Grant(ctx, grantReq(newID()))
		done <- err
	}()
	waitFor(t, func() bool { return c.Waiting() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Grant after cancel = %v, want context.Canceled", err)
	}
	if c.InFlight() != 0 || c.Waiting() != 0 {
		t.Fatalf("InFlight=%d Waiting=%d after cancel", c.InFlight(), c.Waiting())
	}
}

// waitFor polls cond; it is a synchronisation point, not a timing
// assertion, and gives up only after a generous bound.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOpenFactory(t *testing.T) {
	dir := t.TempDir()
	src := fmt.Sprintf("latency: 1ms\ndir: %s\njournal: %s\n", filepath.Join(dir, "g"), filepath.Join(dir, "j"))
	decode := func(v any) error { return yaml.UnmarshalWithOptions([]byte(src), v, yaml.Strict()) }
	conn, err := fake.Open(connector.Env{Name: "demo", Clock: lapse.SystemClock{}}, decode)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	c := conn.(*fake.Conn)
	defer c.Close()
	id := newID()
	mustGrant(t, c, id)
	if _, err := os.Stat(filepath.Join(dir, "g", id+".json")); err != nil {
		t.Fatalf("dir mode did not store the grant as a file: %v", err)
	}

	bad := func(v any) error {
		return yaml.UnmarshalWithOptions([]byte("latncy: 1ms\n"), v, yaml.Strict())
	}
	if _, err := fake.Open(connector.Env{}, bad); err == nil {
		t.Error("Open accepted an unknown key")
	}
	neg := func(v any) error { return yaml.UnmarshalWithOptions([]byte("latency: -1s\n"), v, yaml.Strict()) }
	if _, err := fake.Open(connector.Env{}, neg); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Open with negative latency: %v", err)
	}
}

func readJournal(t *testing.T, path string) []fake.JournalEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []fake.JournalEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e fake.JournalEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("journal line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJournalExactlyOnce races two connectors sharing one directory and
// one journal (as two broker processes would) on the same grants: each
// grant is journaled as granted once and revoked once.
func TestJournalExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	opts := fake.Options{Dir: filepath.Join(dir, "g"), Journal: filepath.Join(dir, "journal")}
	a, b := fake.New(opts), fake.New(opts)
	defer a.Close()
	defer b.Close()
	const n = 50
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newID()
	}
	run := func(op func(c *fake.Conn, id string) error) {
		var wg sync.WaitGroup
		for _, c := range []*fake.Conn{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, id := range ids {
					if err := op(c, id); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
	}
	run(func(c *fake.Conn, id string) error { _, err := c.Grant(context.Background(), grantReq(id)); return err })
	run(func(c *fake.Conn, id string) error {
		_, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id})
		return err
	})
	checkJournal(t, readJournal(t, opts.Journal), ids)
}

func checkJournal(t *testing.T, entries []fake.JournalEntry, ids []string) {
	t.Helper()
	count := map[string]map[string]int{}
	for _, e := range entries {
		if count[e.GrantID] == nil {
			count[e.GrantID] = map[string]int{}
		}
		count[e.GrantID][e.Op]++
		if e.PID == 0 || e.Time.IsZero() {
			t.Errorf("journal entry without pid or time: %+v", e)
		}
	}
	for _, id := range ids {
		if g, r := count[id]["grant"], count[id]["revoke"]; g != 1 || r != 1 {
			t.Errorf("%s: journaled %d grants and %d revokes, want 1 and 1", id, g, r)
		}
	}
	if len(entries) != 2*len(ids) {
		t.Errorf("journal has %d entries, want %d", len(entries), 2*len(ids))
	}
}

// TestJournalAcrossProcesses runs the revokes in two child processes.
func TestJournalAcrossProcesses(t *testing.T) {
	if os.Getenv("FAKE_HELPER_DIR") != "" {
		t.Skip("inside a helper process")
	}
	dir := t.TempDir()
	opts := fake.Options{Dir: filepath.Join(dir, "g"), Journal: filepath.Join(dir, "journal")}
	c := fake.New(opts)
	defer c.Close()
	const n = 40
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newID()
		mustGrant(t, c, ids[i])
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRevokeAll$", "-test.count=1")
			cmd.Env = append(os.Environ(), "FAKE_HELPER_DIR="+opts.Dir, "FAKE_HELPER_JOURNAL="+opts.Journal)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("helper process: %v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	entries := readJournal(t, opts.Journal)
	checkJournal(t, entries, ids)
	pids := map[int]bool{}
	for _, e := range entries {
		if e.Op == "revoke" {
			pids[e.PID] = true
		}
		if e.Op == "revoke" && e.PID == os.Getpid() {
			t.Errorf("revoke of %s journaled by the parent process", e.GrantID)
		}
	}
	t.Logf("revokes journaled by %d helper processes", len(pids))
	if ids, _ := c.Live(); len(ids) != 0 {
		t.Errorf("accounts left after both helpers revoked: %v", ids)
	}
}

// TestHelperRevokeAll is the child process of TestJournalAcrossProcesses.
func TestHelperRevokeAll(t *testing.T) {
	dir := os.Getenv("FAKE_HELPER_DIR")
	if dir == "" {
		t.Skip("only runs as a helper process")
	}
	c := fake.New(fake.Options{Dir: dir, Journal: os.Getenv("FAKE_HELPER_JOURNAL")})
	defer c.Close()
	ids, err := c.Live()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDiscoverListsPrivileges(t *testing.T) {
	c := fake.New(fake.Options{})
	id := newID()
	req := grantReq(id)
	req.Spec = map[string]any{"privileges": []string{"read", "write"}}
	if _, err := c.Grant(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	d, err := c.Discover(context.Background(), &connector.DiscoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Principals) != 1 {
		t.Fatalf("Discover listed %d principals, want 1", len(d.Principals))
	}
	p := d.Principals[0]
	if p.GrantID != id || !p.Ephemeral || strings.Join(p.Privileges, ",") != "read,write" {
		t.Errorf("Discover = %+v", p)
	}
}

// BenchmarkGrantRevoke measures the fake's own cost per grant+revoke, which
// the broker's revocation benchmarks must be able to ignore.
func BenchmarkGrantRevoke(b *testing.B) {
	c := fake.New(fake.Options{})
	ctx := context.Background()
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = newID()
	}
	req := grantReq("")
	b.ResetTimer()
	for i := range b.N {
		req.GrantID = ids[i]
		g, err := c.Grant(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i], State: g.State}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRevoke10k revokes 10,000 live grants from 8 goroutines, the
// shape of the broker's overdue sweep.
func BenchmarkRevoke10k(b *testing.B) {
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		c := fake.New(fake.Options{})
		ids := make([]string, 10000)
		for i := range ids {
			ids[i] = newID()
			if _, err := c.Grant(ctx, grantReq(ids[i])); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(ids); i += 8 {
					if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i]}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
}

func TestThroughBroker(t *testing.T) {
	clock := connectortest.NewClock()
	c := fake.New(fake.Options{Clock: clock})
	connectortest.RunThroughBroker(t, connectortest.BrokerCase{
		Target: "scratch", Kind: "fake", Conn: c, Clock: clock,
		Sabotage: func(on bool) {
			if on {
				c.Sabotage("")
			} else {
				c.ClearSabotage()
			}
		},
		Login: func(ctx context.Context, creds *lapse.Credentials) error {
			return c.Authenticate(creds.Info["user"], creds.Secret["password"])
		},
	})
}
