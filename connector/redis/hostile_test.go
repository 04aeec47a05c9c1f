package redis_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// TestHostileInputLeavesCatalogUnchanged sends hostile input through every
// caller-influenced field that reaches the connector — the spec, the grant
// ID, the principal, the entitlement name, the probe and the state — and
// checks each is rejected (or defused) and that ACL LIST on every node
// differs from before only by what a grant was meant to create.
func TestHostileInputLeavesCatalogUnchanged(t *testing.T) {
	nodes := startTopology(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	before := aclSnapshot(t, nodes)

	unchanged := func(t *testing.T) {
		t.Helper()
		if after := aclSnapshot(t, nodes); !reflect.DeepEqual(before, after) {
			t.Fatalf("ACL LIST changed:\nbefore %v\nafter  %v", before, after)
		}
	}

	t.Run("spec", func(t *testing.T) {
		for name, spec := range hostileSpecs {
			id := grantID()
			_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Principal: testPrincipal, Spec: spec})
			if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.ETOOLARGE {
				t.Errorf("%s: Grant: %v, want invalid", name, err)
			}
		}
		unchanged(t)
	})

	t.Run("spec the server rejects", func(t *testing.T) {
		// Well-formed, but not a command this server knows: the server
		// refuses the whole ACL SETUSER, so nothing changes.
		for _, cmd := range []string{"allcommands", "nopass", "notacommand"} {
			_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: grantID(), Spec: map[string]any{"commands": []any{"get", cmd}}})
			if lapse.ErrorCode(err) != lapse.EINVALID {
				t.Errorf("command %s: Grant: %v, want invalid", cmd, err)
			}
		}
		unchanged(t)
	})

	t.Run("grant ID", func(t *testing.T) {
		for _, id := range []string{
			"", "gr_x'; ACL SETUSER evil on nopass +@all", "gr x", "GR_X", "gr_x\x00", "gr_\xff", "gr_%",
			"gr_x\r\nACL SETUSER evil on", strings.Repeat("g", 49), "gr_x>pw", "gr_x~*", "gr_x(",
		} {
			for _, call := range []func() error{
				func() error {
					_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: testSpec()})
					return err
				},
				func() error { _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); return err },
				func() error { _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id}); return err },
			} {
				if err := call(); lapse.ErrorCode(err) != lapse.EINVALID {
					t.Errorf("grant ID %q: %v, want invalid", id, err)
				}
			}
		}
		unchanged(t)
	})

	t.Run("principal, entitlement, probe and state", func(t *testing.T) {
		id := grantID()
		hostile := "x'\"; ACL SETUSER evil on nopass +@all \x00 % \xff >pw allkeys"
		g, err := c.Grant(ctx, &connector.GrantRequest{
			GrantID:     id,
			Principal:   lapse.Principal{ID: hostile, Kind: lapse.KindAgent, Name: hostile, Groups: []string{hostile}},
			Entitlement: hostile,
			Spec:        map[string]any{"commands": []any{"get"}, "keys": []any{"allkeys", "nopass", "on"}},
		})
		if err != nil {
			t.Fatalf("Grant: %v", err)
		}
		user := g.Info["username"]
		t.Cleanup(func() { c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}) })

		// Exactly one new user per node, with exactly the spec's rules:
		// keyword-like key literals stay key patterns.
		hash := sha256.Sum256([]byte(g.Secret["password"]))
		want := "user " + user + " on sanitize-payload #" + hex.EncodeToString(hash[:]) +
			" ~allkeys ~nopass ~on resetchannels -@all +get"
		after := aclSnapshot(t, nodes)
		for _, n := range nodes {
			var added []string
			for _, l := range after[n.name] {
				if !slices.Contains(before[n.name], l) {
					added = append(added, l)
				}
			}
			if len(added) != 1 || added[0] != want {
				t.Errorf("%s: ACL LIST gained %q, want exactly %q", n.name, added, want)
			}
			if len(after[n.name]) != len(before[n.name])+1 {
				t.Errorf("%s: ACL LIST lost or gained other users", n.name)
			}
		}

		// A hostile probe is one AUTH argument: binary-safe, it fails.
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id,
			Probe: map[string]string{"password": "x\r\nACL SETUSER evil on nopass +@all\r\n"},
			State: json.RawMessage(`{"user":"default","nodes":["primary","x y","evil\r\n"]}`)})
		if err != nil {
			t.Fatalf("Verify with hostile probe and state: %v", err)
		}
		if p := checkpoint(t, v, "primary/acl").Evidence["login_probe"]; p != "rejected: WRONGPASS" {
			t.Errorf("hostile probe outcome %v", p)
		}
		for _, cp := range v.Checkpoints {
			if strings.Contains(cp.Name, " ") || strings.Contains(cp.Name, "\r") {
				t.Errorf("a hostile node name from State became checkpoint %q", cp.Name)
			}
		}

		// A hostile state cannot redirect Revoke: it removes the grant's
		// user, and only it.
		for _, st := range []string{`{"user":"default","nodes":["primary"]}`, `{`, `"lapseadmin"`} {
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: json.RawMessage(st)}); err != nil {
				t.Fatalf("Revoke with state %s: %v", st, err)
			}
		}
		unchanged(t)
	})
}

// TestRulesAreEnforcedByTheServer checks on the real server what the spec
// grammar promises: the password reaches the server only as its SHA-256,
// a broad category cannot smuggle in a dangerous command, privileged
// grants never include ACL, and keys outside the patterns are refused.
func TestRulesAreEnforcedByTheServer(t *testing.T) {
	nodes := sharedNodes(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	admin := nodes[0].admin

	login := func(t *testing.T, g *connector.GrantResponse) *goredis.Client {
		cl := newClient(nodes[0].addr, g.Info["username"], g.Secret["password"])
		t.Cleanup(func() { cl.Close() })
		return cl
	}

	t.Run("read category without dangerous commands", func(t *testing.T) {
		g := grantFor(t, c, grantID(), map[string]any{"categories": []any{"read"}, "keys": []any{"lapsetest:*"}})
		cl := login(t, g)
		if err := cl.Get(ctx, "lapsetest:k").Err(); err != goredis.Nil {
			t.Errorf("GET on an allowed key: %v", err)
		}
		if err := cl.Get(ctx, "other:k").Err(); !goredis.IsPermissionError(err) {
			t.Errorf("GET outside the key pattern: %v, want NOPERM", err)
		}
		for _, cmd := range [][]any{{"KEYS", "lapsetest:*"}, {"INFO"}, {"SET", "lapsetest:k", "v"}} {
			if err := cl.Do(ctx, cmd...).Err(); !goredis.IsPermissionError(err) {
				t.Errorf("%v: %v, want NOPERM", cmd, err)
			}
		}
		fields, err := admin.Do(ctx, "ACL", "GETUSER", g.Info["username"]).Slice()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]any{}
		for i := 0; i+1 < len(fields); i += 2 {
			got[fields[i].(string)] = fields[i+1]
		}
		hash := sha256.Sum256([]byte(g.Secret["password"]))
		if pw := got["passwords"].([]any); len(pw) != 1 || pw[0] != hex.EncodeToString(hash[:]) {
			t.Errorf("passwords = %v, want only the SHA-256 of the secret", pw)
		}
		if flags := got["flags"].([]any); slices.Contains(flags, any("nopass")) || !slices.Contains(flags, any("on")) {
			t.Errorf("flags = %v", flags)
		}
		// Redis resolves the trailing -@dangerous against the commands
		// granted so far: "-@all +@read -sort_ro -keys" on 7.0.
		cmds, _ := got["commands"].(string)
		if !strings.HasPrefix(cmds, "-@all +@read ") || !strings.Contains(cmds, " -keys") || got["keys"] != "~lapsetest:*" || got["channels"] != "" {
			t.Errorf("rules = %v %v %v", got["commands"], got["keys"], got["channels"])
		}
	})

	t.Run("privileged never includes ACL", func(t *testing.T) {
		g := grantFor(t, c, grantID(), map[string]any{"categories": []any{"admin", "dangerous"}, "privileged": true, "keys": []any{"lapsetest:*"}})
		cl := login(t, g)
		if err := cl.Do(ctx, "CONFIG", "GET", "maxmemory").Err(); err != nil {
			t.Errorf("CONFIG GET with a privileged grant: %v", err)
		}
		for _, cmd := range [][]any{{"ACL", "SETUSER", "lapsetest_evil", "on", "nopass", "+@all"}, {"ACL", "LIST"}, {"MODULE", "LIST"}} {
			if err := cl.Do(ctx, cmd...).Err(); !goredis.IsPermissionError(err) {
				t.Errorf("%v: %v, want NOPERM", cmd[:2], err)
			}
		}
		if err := admin.Do(ctx, "ACL", "GETUSER", "lapsetest_evil").Err(); err != goredis.Nil {
			t.Errorf("a user was created through a privileged grant: %v", err)
			admin.Do(ctx, "ACL", "DELUSER", "lapsetest_evil")
		}
	})

	t.Run("channels reset whatever the server default", func(t *testing.T) {
		g := grantFor(t, c, grantID(), map[string]any{"commands": []any{"publish"}})
		if err := login(t, g).Publish(ctx, "anychannel", "x").Err(); !goredis.IsPermissionError(err) {
			t.Errorf("PUBLISH with no channel granted: %v, want NOPERM", err)
		}
	})
}

// TestPasswordNeverReachesTheServerInClear records every byte the
// connector sends to a private server (through a recording proxy) while a
// grant is made: ACL SETUSER carries the SHA-256 and the clear password is
// not on the wire at all. Verify's login probe then sends it in AUTH, the
// one place the protocol needs it, which MONITOR and SLOWLOG redact.
func TestPasswordNeverReachesTheServerInClear(t *testing.T) {
	n := startServer(t, "primary", nil)
	ctx := context.Background()
	if err := n.admin.ConfigSet(ctx, "slowlog-log-slower-than", "0").Err(); err != nil {
		t.Fatal(err)
	}
	mon := monitor(t, n)
	wire := recordingProxy(t, n.addr)
	viaProxy := n
	viaProxy.addr = wire.addr
	c := openConn(t, []node{viaProxy})

	id := grantID()
	g := grantFor(t, c, id, testSpec())
	password := g.Secret["password"]
	hash := sha256.Sum256([]byte(password))
	sent := wire.sent()
	if !strings.Contains(sent, "SETUSER") || !strings.Contains(sent, "#"+hex.EncodeToString(hash[:])) {
		t.Fatalf("the recorded traffic has no ACL SETUSER with the hash; the check proves nothing")
	}
	if strings.Contains(sent, password) {
		t.Fatal("Grant sent the clear password to the server")
	}

	if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(wire.sent(), password) {
		t.Fatal("Verify's login probe did not reach the server through the proxy; the check proves nothing")
	}
	// A marker command tells when MONITOR has delivered everything before it.
	marker := "lapsetest:marker:" + randHex(4)
	n.admin.Get(ctx, marker)
	seen := mon.until(t, marker)
	sawAuth := false
	for _, l := range seen {
		if strings.Contains(l, password) {
			t.Errorf("MONITOR showed the clear password")
		}
		sawAuth = sawAuth || strings.Contains(l, `"AUTH" "(redacted)" "(redacted)"`)
	}
	if !sawAuth {
		t.Errorf("MONITOR did not show the probe's AUTH; the check proves nothing (saw %q)", seen)
	}
	slow, err := n.admin.Do(ctx, "SLOWLOG", "GET", "1000").Slice()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(slow)
	if strings.Contains(string(b), password) {
		t.Error("SLOWLOG holds the clear password")
	}
	if !strings.Contains(string(b), "SETUSER") || !strings.Contains(string(b), "AUTH") {
		t.Errorf("SLOWLOG did not record ACL SETUSER and AUTH; the check proves nothing: %s", b)
	}
}

// wireRecorder is a TCP proxy that records what clients send.
type wireRecorder struct {
	addr string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (w *wireRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *wireRecorder) sent() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func recordingProxy(t *testing.T, target string) *wireRecorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wireRecorder{addr: l.Addr().String()}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		conns.Wait()
	})
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			conns.Add(2)
			go func() {
				defer conns.Done()
				// Record before forwarding, so what the server answered
				// is always already in the record.
				io.Copy(io.MultiWriter(w, server), client)
				server.Close()
			}()
			go func() {
				defer conns.Done()
				io.Copy(client, server)
				client.Close()
			}()
		}
	}()
	return w
}

// monitorConn is a raw MONITOR connection: go-redis's Monitor shares the
// pool, and a test that reads every line wants a socket of its own.
type monitorConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func monitor(t *testing.T, n node) *monitorConn {
	t.Helper()
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m := &monitorConn{conn: conn, r: bufio.NewReader(conn)}
	for _, cmd := range [][]string{{"AUTH", n.user, n.password}, {"MONITOR"}} {
		fmt.Fprintf(conn, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(conn, "$%d\r\n%s\r\n", len(a), a)
		}
		if l := m.line(t); l != "+OK" {
			t.Fatalf("%s: %q", cmd[0], l)
		}
	}
	return m
}

func (m *monitorConn) line(t *testing.T) string {
	t.Helper()
	m.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	l, err := m.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read MONITOR: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// until returns every line up to and including the first containing s.
func (m *monitorConn) until(t *testing.T, s string) []string {
	t.Helper()
	var out []string
	for {
		l := m.line(t)
		out = append(out, l)
		if strings.Contains(l, s) {
			return out
		}
	}
}
