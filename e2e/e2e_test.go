// Package e2e runs the real lapse binary as separate processes against the
// real stores and kills them, to check what only process boundaries can
// show: deadlines survive SIGKILL, and replicas sharing one PostgreSQL store
// revoke every grant exactly once.
package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api/client"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

var lapseBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lapse-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lapseBin = filepath.Join(dir, "lapse")
	build := exec.Command("go", "build", "-o", lapseBin, "github.com/lapsehq/lapse/cmd/lapse")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build lapse:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a configuration shared by one or more lapse server processes.
type cluster struct {
	t       *testing.T
	dir     string
	config  string
	journal string
}

const clusterConfig = `data_dir: {{DIR}}
log: {level: info, format: json}
store:
  driver: {{DRIVER}}
  dsn: {{DSN}}
sealing_key: {file: sealing.key}
engine:
  lease: {{LEASE}}
  claim_ahead: {{AHEAD}}
  poll_interval: 200ms
  retry_base: 200ms
  retry_max: 2s
targets:
  shared:
    kind: fake
    concurrency: 8
    config:
      dir: {{DIR}}/target
      journal: {{DIR}}/journal.jsonl
entitlements:
  - name: shared/use
    target: shared
    lanes: [service]
    default_duration: 3s
    max_duration: 1m
    approval: {auto: true}
`

func newCluster(t *testing.T, driver, dsn string, lease time.Duration) *cluster {
	t.Helper()
	return newClusterAhead(t, driver, dsn, lease, lease/10)
}

// newClusterAhead is newCluster with the engine's claim_ahead set.
func newClusterAhead(t *testing.T, driver, dsn string, lease, ahead time.Duration) *cluster {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(filepath.Join(dir, "sealing.key"), []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "target"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("{{DIR}}", dir, "{{DRIVER}}", driver, "{{DSN}}", fmt.Sprintf("%q", dsn), "{{LEASE}}", lease.String(), "{{AHEAD}}", ahead.String()).Replace(clusterConfig)
	path := filepath.Join(dir, "lapse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, dir: dir, config: path, journal: filepath.Join(dir, "journal.jsonl")}
}

// apiKey creates a service key directly in the store.
func (c *cluster) apiKey(principal string, scopes ...string) string {
	c.t.Helper()
	out, err := exec.Command(lapseBin, "admin", "apikey", "create", "-c", c.config, "--principal", principal,
		"--kind", "service", "--scope", strings.Join(scopes, ",")).Output()
	if err != nil {
		c.t.Fatalf("admin apikey create: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "lapse_") {
			return f
		}
	}
	c.t.Fatalf("no key in admin output")
	return ""
}

// server is one running lapse server process.
type server struct {
	cmd  *exec.Cmd
	addr string
	logs *strings.Builder
	mu   *sync.Mutex
	done chan struct{}
}

func (c *cluster) start() *server {
	c.t.Helper()
	addr := freeAddr(c.t)
	cmd := exec.Command(lapseBin, "server", "-c", c.config, "--listen", addr)
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = nil
	s := &server{cmd: cmd, addr: addr, logs: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.logs.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
		cmd.Wait()
		close(s.done)
	}()
	c.t.Cleanup(func() { s.kill() })
	cl := client.New("http://"+addr, "")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := cl.Ready(context.Background()); err == nil {
			return s
		}
		select {
		case <-s.done:
			c.t.Fatalf("lapse server exited during start:\n%s", s.log())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("lapse server not ready after 60s:\n%s", s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// kill sends SIGKILL: no shutdown code runs.
func (s *server) kill() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// journal counts effective grants and revocations per grant on the shared
// fake target.
func (c *cluster) journalCounts() (grants, revokes map[string]int) {
	c.t.Helper()
	grants, revokes = map[string]int{}, map[string]int{}
	b, err := os.ReadFile(c.journal)
	if err != nil && !os.IsNotExist(err) {
		c.t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var e struct {
			Op      string `json:"op"`
			GrantID string `json:"grant_id"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			c.t.Fatalf("journal line %q: %v", line, err)
		}
		if e.Op == "grant" {
			grants[e.GrantID]++
		} else {
			revokes[e.GrantID]++
		}
	}
	return grants, revokes
}

func issue(t *testing.T, cl *client.Client, n int, d time.Duration) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		res, err := cl.CreateRequest(context.Background(), lapse.RequestInput{Entitlement: "shared/use", Duration: lapse.Duration(d)})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		ids[i] = res.Grant.ID
	}
	return ids
}

// waitRevoked polls until every grant is revoked, and returns how long that
// took. It fails the test after limit.
func waitRevoked(t *testing.T, cl *client.Client, ids []string, limit time.Duration, logs func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		left := 0
		var sample *lapse.Grant
		for _, id := range ids {
			g, err := cl.GetGrant(context.Background(), id)
			if err != nil {
				t.Fatalf("get grant %s: %v", id, err)
			}
			if g.State != lapse.GrantRevoked {
				left++
				sample = g
			}
		}
		if left == 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%d of %d grants not revoked after %v; e.g. %s in %s (%s)\nserver log:\n%s", left, len(ids), limit, sample.ID, sample.State, sample.LastError, logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Fifty short grants are active; the server is killed with SIGKILL and
// started again only after every deadline has passed. Every grant is
// revoked after the restart, none lost, none revoked twice.
func TestDeadlinesSurviveSIGKILL(t *testing.T) {
	c := newCluster(t, "sqlite", "lapse.db", 5*time.Second)
	key := c.apiKey("svc:batch", "request", "read")
	s := c.start()
	cl := client.New("http://"+s.addr, key)
	ids := issue(t, cl, 50, 3*time.Second)
	s.kill()
	time.Sleep(4 * time.Second) // every deadline is now in the past, with no server running

	grants, revokes := c.journalCounts()
	if len(grants) != 50 || len(revokes) != 0 {
		t.Fatalf("before restart: %d grants and %d revocations on the target, want 50 and 0", len(grants), len(revokes))
	}
	s2 := c.start()
	cl2 := client.New("http://"+s2.addr, key)
	took := waitRevoked(t, cl2, ids, 60*time.Second, s2.log)
	t.Logf("all 50 overdue grants revoked %v after the restarted server was ready", took)
	grants, revokes = c.journalCounts()
	for _, id := range ids {
		if grants[id] != 1 || revokes[id] != 1 {
			t.Errorf("grant %s: created %d times, revoked %d times on the target", id, grants[id], revokes[id])
		}
		g, _ := cl2.GetGrant(context.Background(), id)
		n := 0
		for _, ev := range g.Events {
			if ev.Type == lapse.EventGrantRevoked {
				n++
			}
		}
		if n != 1 || g.EndReason != lapse.EndExpired {
			t.Errorf("grant %s: %d revoked events, end reason %s", id, n, g.EndReason)
		}
	}
}

// The server has reserved the expiries of twenty short grants (their
// deadlines are within claim_ahead, 30s) when it is killed with SIGKILL, so its
// leases on them last a minute past their deadlines. The restarted server is
// the only engine on the SQLite store: it frees those leases at start and
// revokes every grant, once, long before the leases would have ended.
func TestReservedExpiriesSurviveSIGKILL(t *testing.T) {
	const lease = time.Minute
	c := newClusterAhead(t, "sqlite", "lapse.db", lease, 30*time.Second)
	key := c.apiKey("svc:batch", "request", "read")
	s := c.start()
	cl := client.New("http://"+s.addr, key)
	const n = 20
	// Long enough that all are reserved before the first deadline, even
	// on a loaded machine.
	ids := issue(t, cl, n, 8*time.Second)
	for stop := time.Now().Add(time.Minute); reservedExpiries(t, s.addr) != n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(stop) {
			t.Fatalf("the server did not reserve the %d expiries:\n%s", n, s.log())
		}
	}
	first, last := deadlines(t, cl, ids)
	s.kill()
	time.Sleep(time.Until(last) + time.Second)
	if grants, revokes := c.journalCounts(); len(grants) != n || len(revokes) != 0 {
		t.Fatalf("before restart: %d grants and %d revocations on the target, want %d and 0", len(grants), len(revokes), n)
	}
	s2 := c.start()
	cl2 := client.New("http://"+s2.addr, key)
	waitRevoked(t, cl2, ids, time.Until(first.Add(lease)), s2.log)
	grants, revokes := c.journalCounts()
	for _, id := range ids {
		if grants[id] != 1 || revokes[id] != 1 {
			t.Errorf("grant %s: created %d times, revoked %d times on the target", id, grants[id], revokes[id])
		}
	}
	if !strings.Contains(s2.log(), "freed the leases an ended process left") {
		t.Errorf("the restarted server did not say it freed the leases:\n%s", s2.log())
	}
}

// reservedExpiries reads lapse_engine_reserved_expiries from a server.
func reservedExpiries(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "lapse_engine_reserved_expiries "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return int(f)
		}
	}
	return 0
}

// deadlines returns the earliest and latest deadline of the grants.
func deadlines(t *testing.T, cl *client.Client, ids []string) (first, last time.Time) {
	t.Helper()
	for i, id := range ids {
		g, err := cl.GetGrant(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 || g.ExpiresAt.Before(first) {
			first = g.ExpiresAt
		}
		if g.ExpiresAt.After(last) {
			last = g.ExpiresAt
		}
	}
	return first, last
}

// Two servers share one PostgreSQL store; one is killed in the middle of a
// wave of deadlines. Every grant is revoked exactly once.
func TestReplicasShareDeadlines(t *testing.T) {
	dsn := sqltest.PostgresDSN(t)
	c := newCluster(t, "postgres", dsn, 3*time.Second)
	key := c.apiKey("svc:batch", "request", "read")
	a := c.start()
	b := c.start()
	clA := client.New("http://"+a.addr, key)
	clB := client.New("http://"+b.addr, key)
	const n = 300
	ids := issue(t, clA, n/2, 4*time.Second)
	ids = append(ids, issue(t, clB, n/2, 4*time.Second)...)
	// Kill A just as the wave starts: some of its claims are in flight.
	first, err := clA.GetGrant(context.Background(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.ExpiresAt) + 30*time.Millisecond)
	a.kill()
	took := waitRevoked(t, clB, ids, 90*time.Second, b.log)
	t.Logf("wave of %d finished %v after the kill", n, took)
	grants, revokes := c.journalCounts()
	for _, id := range ids {
		if grants[id] != 1 || revokes[id] != 1 {
			t.Errorf("grant %s: created %d times, revoked %d times on the target", id, grants[id], revokes[id])
		}
		g, err := clB.GetGrant(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range g.Events {
			if ev.Type == lapse.EventGrantRevoked {
				n++
			}
		}
		if n != 1 {
			t.Errorf("grant %s: %d revoked events", id, n)
		}
	}
}
