package redis_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// sharedAddr is the machine's Redis server; LAPSE_TEST_REDIS_ADDR
// overrides it.
func sharedAddr() string {
	if a := os.Getenv("LAPSE_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// missing skips the test, or fails it under CI=true, when a service the
// test needs is not there.
func missing(t testing.TB, what string, err error) {
	t.Helper()
	msg := fmt.Sprintf("REDIS CONNECTOR TESTS NOT RUN: %s is not available: %v", what, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// sharedServer returns the shared server's address and an admin client to
// it, or skips.
func sharedServer(t testing.TB) (string, *goredis.Client) {
	t.Helper()
	addr := sharedAddr()
	c := newClient(addr, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		missing(t, "Redis at "+addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return addr, c
}

func newClient(addr, user, password string) *goredis.Client {
	return goredis.NewClient(&goredis.Options{
		Addr: addr, Username: user, Password: password,
		Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
	})
}

// node is a test Redis server.
type node struct {
	name     string
	addr     string
	user     string
	password string
	admin    *goredis.Client
}

func (n node) config() lredis.NodeConfig {
	return lredis.NodeConfig{Name: n.name, Addr: n.addr, Username: n.user, Password: lapse.SecretRef{Value: n.password}}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer starts a private redis-server on a free loopback port with
// persistence off, the default user disabled and an admin user with a
// random password; it is killed at cleanup. replicaOf, when set, makes it
// a replica of that node.
func startServer(t testing.TB, name string, replicaOf *node) node {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "the redis-server binary", err)
	}
	n := node{name: name, user: "lapseadmin", password: randHex(16)}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
		n.addr = "127.0.0.1:" + strconv.Itoa(port)
		dir := t.TempDir()
		args := []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--daemonize", "no",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--logfile", filepath.Join(dir, "redis.log"),
			"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
			"--user", "default", "off",
			"--user", n.user, "on", ">" + n.password, "~*", "&*", "+@all",
		}
		if replicaOf != nil {
			host, rport, _ := net.SplitHostPort(replicaOf.addr)
			args = append(args, "--replicaof", host, rport,
				"--masteruser", replicaOf.user, "--masterauth", replicaOf.password)
		}
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		n.admin = newClient(n.addr, n.user, n.password)
		if err := waitReady(n.admin, exited); err != nil {
			lastErr = err
			n.admin.Close()
			stop()
			continue // most likely the port was taken in between
		}
		t.Cleanup(func() {
			n.admin.Close()
			stop()
		})
		return n
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return n
}

func waitReady(c *goredis.Client, exited <-chan error) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startTopology starts a primary and two replicas, and waits until both
// replicas are linked to the primary, so "every node" is a real
// replicated deployment.
func startTopology(t testing.TB) []node {
	t.Helper()
	primary := startServer(t, "primary", nil)
	r1 := startServer(t, "replica-1", &primary)
	r2 := startServer(t, "replica-2", &primary)
	for _, r := range []node{r1, r2} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			info, err := r.admin.Info(context.Background(), "replication").Result()
			if err == nil && strings.Contains(info, "master_link_status:up") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %s did not link to the primary: %v\n%s", r.name, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return []node{primary, r1, r2}
}

// openConn opens the connector on nodes and closes it at cleanup.
func openConn(t testing.TB, nodes []node, mod ...func(*lredis.Config)) *lredis.Conn {
	t.Helper()
	cfg := lredis.Config{}
	for _, n := range nodes {
		cfg.Nodes = append(cfg.Nodes, n.config())
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := lredis.New(context.Background(), cfg, connector.Env{Name: "cache"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sharedNodes describes the shared server as a one-node deployment.
func sharedNodes(t testing.TB) []node {
	addr, admin := sharedServer(t)
	return []node{{name: "main", addr: addr, admin: admin}}
}

func grantID() string { return lapse.NewID(lapse.PrefixGrant, time.Now()) }

// testSpec grants what the tests' sessions use, on keys and channels of
// the test's own namespace.
func testSpec() map[string]any {
	return map[string]any{
		"commands":   []any{"get", "ping", "blpop", "xread", "multi", "exec", "subscribe", "set"},
		"categories": []any{"connection"},
		"keys":       []any{"lapsetest:*"},
		"channels":   []any{"lapsetest:*"},
	}
}

// grantFor grants spec and revokes at cleanup.
func grantFor(t testing.TB, c connector.Connector, id string, spec map[string]any) *connector.GrantResponse {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
			t.Errorf("cleanup revoke %s: %v", id, err)
		}
	})
	resp, err := c.Grant(context.Background(), &connector.GrantRequest{
		GrantID: id, Principal: testPrincipal, Entitlement: "cache/test", Spec: spec,
		ExpiresAt: time.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return resp
}

var testPrincipal = lapse.Principal{ID: "svc-redis-test", Kind: lapse.KindService}

// aclSnapshot returns ACL LIST of every node, sorted, keyed by node.
func aclSnapshot(t testing.TB, nodes []node) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, n := range nodes {
		l, err := n.admin.Do(context.Background(), "ACL", "LIST").StringSlice()
		if err != nil {
			t.Fatalf("ACL LIST on %s: %v", n.name, err)
		}
		sort.Strings(l)
		out[n.name] = l
	}
	return out
}

// userLines filters an ACL snapshot to users with the given prefix, for
// tests on the shared server where other tests' users may come and go.
func userLines(snap map[string][]string, keep func(user string) bool) map[string][]string {
	out := map[string][]string{}
	for node, lines := range snap {
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) > 1 && keep(f[1]) {
				out[node] = append(out[node], l)
			}
		}
	}
	return out
}

// clientsOf returns the CLIENT LIST lines of user on n.
func clientsOf(t testing.TB, n node, user string) []string {
	t.Helper()
	text, err := n.admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST on %s: %v", n.name, err)
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if strings.Contains(" "+sc.Text()+" ", " user="+user+" ") {
			out = append(out, sc.Text())
		}
	}
	return out
}

// waitFor polls cond until it holds, failing after a generous deadline.
// It waits for the server to reach a state (a client blocked in BLPOP), it
// asserts nothing about how long that takes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isWrongPass(err error) bool {
	return err != nil && strings.Contains(err.Error(), "WRONGPASS")
}

// residues collects every residue of a verification.
func residues(v *connector.VerifyResponse) []string {
	var r []string
	for _, c := range v.Checkpoints {
		r = append(r, c.Residue...)
	}
	return r
}

func checkpoint(t testing.TB, v *connector.VerifyResponse, name string) connector.CheckpointResult {
	t.Helper()
	for _, c := range v.Checkpoints {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no checkpoint %s in %+v", name, v.Checkpoints)
	return connector.CheckpointResult{}
}

var errStillWorks = errors.New("still works")
