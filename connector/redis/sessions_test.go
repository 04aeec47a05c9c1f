package redis_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// session is a connection of the grant's user in some state, with a check
// that it can no longer act.
type session struct {
	node, state string
	// dead returns nil once the session is unusable, or errStillWorks.
	dead func(ctx context.Context) error
}

// openAwkwardSessions opens, on node n, sessions of the grant's user in
// every state that a revocation must end: idle, blocked (BLPOP, or XREAD
// on a replica), inside
// MULTI, subscribed, authenticated mid-connection with AUTH (a connection
// that started as someone else), and on RESP3. It waits until the server
// shows each state in CLIENT LIST.
func openAwkwardSessions(t *testing.T, n node, replica bool, user, password string) []session {
	t.Helper()
	ctx := context.Background()
	tag := randHex(4)
	var out []session
	client := func() *goredis.Client {
		c := newClient(n.addr, user, password)
		t.Cleanup(func() { c.Close() })
		return c
	}

	// Idle, after one command.
	idle := client().Conn()
	if err := idle.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s: idle session: %v", n.name, err)
	}
	out = append(out, session{n.name, "idle", func(ctx context.Context) error {
		if idle.Get(ctx, "lapsetest:x").Err() == goredis.Nil {
			return errStillWorks
		}
		return nil
	}})

	// Blocked with no timeout: BLPOP on the primary; XREAD BLOCK on a
	// replica, which refuses BLPOP because it pops.
	blocked := client().Conn()
	if err := blocked.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s: blocking session: %v", n.name, err)
	}
	blockCmd := "blpop"
	blockDone := make(chan error, 1)
	if replica {
		blockCmd = "xread"
		go func() {
			blockDone <- blocked.XRead(context.Background(), &goredis.XReadArgs{
				Streams: []string{"lapsetest:xread:" + tag, "$"}, Block: 0,
			}).Err()
		}()
	} else {
		go func() {
			blockDone <- blocked.BLPop(context.Background(), 0, "lapsetest:blpop:"+tag).Err()
		}()
	}
	out = append(out, session{n.name, "blocked in " + blockCmd, func(ctx context.Context) error {
		select {
		case err := <-blockDone:
			if err == nil {
				return fmt.Errorf("the blocking command returned a value")
			}
			return nil
		case <-ctx.Done():
			return errStillWorks
		}
	}})

	// Inside MULTI with a queued command.
	multi := client().Conn()
	if err := multi.Do(ctx, "MULTI").Err(); err != nil {
		t.Fatalf("%s: MULTI: %v", n.name, err)
	}
	if err := multi.Do(ctx, "GET", "lapsetest:multi").Err(); err != nil {
		t.Fatalf("%s: queue GET: %v", n.name, err)
	}
	out = append(out, session{n.name, "inside MULTI", func(ctx context.Context) error {
		if multi.Do(ctx, "EXEC").Err() == nil {
			return errStillWorks
		}
		return nil
	}})

	// Subscribed to a channel.
	sub := client().Subscribe(ctx, "lapsetest:chan:"+tag)
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("%s: SUBSCRIBE: %v", n.name, err)
	}
	out = append(out, session{n.name, "subscribed", func(ctx context.Context) error {
		// A subscribed connection that is still alive answers PING with
		// a pong; a closed one ends the stream with an error. (PubSub.Ping
		// only writes; the answer arrives through Receive.)
		if err := sub.Ping(ctx); err != nil {
			return nil
		}
		msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("no pong and no close: %w", errStillWorks)
			}
			return nil
		}
		return fmt.Errorf("received %T: %w", msg, errStillWorks)
	}})

	// A connection that logged in as someone else and switched to the
	// grant's user with AUTH (the Redis form of SET ROLE).
	switched := newClient(n.addr, n.user, n.password).Conn()
	t.Cleanup(func() { switched.Close() })
	if err := switched.Do(ctx, "AUTH", user, password).Err(); err != nil {
		t.Fatalf("%s: AUTH switch: %v", n.name, err)
	}
	out = append(out, session{n.name, "switched with AUTH", func(ctx context.Context) error {
		if switched.Get(ctx, "lapsetest:x").Err() == goredis.Nil {
			return errStillWorks
		}
		return nil
	}})

	// RESP3 (HELLO 3 AUTH).
	r3c := goredis.NewClient(&goredis.Options{Addr: n.addr, Username: user, Password: password, Protocol: 3, DisableIdentity: true, MaxRetries: -1})
	t.Cleanup(func() { r3c.Close() })
	resp3 := r3c.Conn()
	if err := resp3.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s: RESP3 session: %v", n.name, err)
	}
	out = append(out, session{n.name, "RESP3", func(ctx context.Context) error {
		if resp3.Get(ctx, "lapsetest:x").Err() == goredis.Nil {
			return errStillWorks
		}
		return nil
	}})

	// Wait until the server shows each state.
	waitFor(t, n.name+": sessions in their states", func() bool {
		lines := clientsOf(t, n, user)
		var blockedSeen, multiSeen, subSeen bool
		for _, l := range lines {
			blockedSeen = blockedSeen || strings.Contains(l, "cmd="+blockCmd) && strings.Contains(l, "flags=b")
			multiSeen = multiSeen || strings.Contains(l, "multi=1")
			subSeen = subSeen || strings.Contains(l, "sub=1")
		}
		return len(lines) == 6 && blockedSeen && multiSeen && subSeen
	})
	return out
}

// TestRevokeEndsEverySessionOnEveryNode is the end-to-end test:
// grant → log in with go-redis on the primary and both replicas → hold
// sessions in every awkward state → revoke → every session is gone, a new
// login fails on every node, and Verify's evidence shows it.
func TestRevokeEndsEverySessionOnEveryNode(t *testing.T) {
	nodes := startTopology(t)
	c := openConn(t, nodes)
	id := grantID()
	g := grantFor(t, c, id, testSpec())
	user, password := g.Info["username"], g.Secret["password"]

	var sessions []session
	for i, n := range nodes {
		sessions = append(sessions, openAwkwardSessions(t, n, i > 0, user, password)...)
	}
	ctx := context.Background()

	// While active, Verify shows the user and its sessions on every node.
	v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil {
		t.Fatalf("Verify while active: %v", err)
	}
	for _, n := range nodes {
		acl := checkpoint(t, v, n.name+"/acl")
		if acl.Gone || acl.Evidence["user_present"] != true || acl.Evidence["login_probe"] != "accepted: AUTH succeeded" {
			t.Errorf("%s: active grant: acl checkpoint %+v", n.name, acl)
		}
		s := checkpoint(t, v, n.name+"/sessions")
		if s.Gone || s.Evidence["clients_of_user"] != 6 {
			t.Errorf("%s: active grant: sessions checkpoint %+v", n.name, s)
		}
	}
	// The probe connection must not stay logged in as the user.
	for _, n := range nodes {
		if got := len(clientsOf(t, n, user)); got != 6 {
			t.Errorf("%s: %d clients of the user after Verify, want the 6 sessions", n.name, got)
		}
	}

	r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	for i, n := range nodes {
		want := fmt.Sprintf("node %s: deleted ACL user %s, closed 6 connections", n.name, user)
		if r.Actions[i] != want {
			t.Errorf("action %d = %q, want %q", i, r.Actions[i], want)
		}
	}

	for _, s := range sessions {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.dead(ctx); err != nil {
			t.Errorf("%s: session %s: %v after Revoke", s.node, s.state, err)
		}
		cancel()
	}
	for _, n := range nodes {
		if l := clientsOf(t, n, user); len(l) != 0 {
			t.Errorf("%s: clients of %s left: %v", n.name, user, l)
		}
		if err := n.admin.Do(ctx, "ACL", "GETUSER", user).Err(); err != goredis.Nil {
			t.Errorf("%s: ACL GETUSER = %v, want nil", n.name, err)
		}
		fresh := newClient(n.addr, user, password)
		if err := fresh.Ping(ctx).Err(); !isWrongPass(err) {
			t.Errorf("%s: new login after Revoke: %v, want WRONGPASS", n.name, err)
		}
		fresh.Close()
	}

	v, err = c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !v.Gone() {
		t.Fatalf("Verify after Revoke: residue %v", residues(v))
	}
	if len(v.Checkpoints) != 2*len(nodes) {
		t.Errorf("%d checkpoints, want one target and one sessions checkpoint per node", len(v.Checkpoints))
	}
	for _, n := range nodes {
		acl := checkpoint(t, v, n.name+"/acl")
		if acl.Evidence["user_present"] != false || acl.Evidence["login_probe"] != "rejected: WRONGPASS" || acl.Evidence["query"] != "ACL GETUSER "+user {
			t.Errorf("%s: acl evidence %v", n.name, acl.Evidence)
		}
		s := checkpoint(t, v, n.name+"/sessions")
		if s.Evidence["clients_of_user"] != 0 || s.Evidence["query"] != "CLIENT LIST" {
			t.Errorf("%s: sessions evidence %v", n.name, s.Evidence)
		}
		if seen, _ := s.Evidence["clients_seen"].(int); seen < 1 {
			t.Errorf("%s: CLIENT LIST saw %v clients; it must at least see the connector's own", n.name, s.Evidence["clients_seen"])
		}
	}
}

// TestSabotagedRevokeIsCaught makes Revoke do what other brokers do —
// `ACL SETUSER off`, which keeps authenticated connections — and checks
// that Verify reports the residue (so the grant goes to revoke_failed),
// that a retried real Revoke then succeeds, and that a revocation which
// skips one replica is caught on that replica alone.
func TestSabotagedRevokeIsCaught(t *testing.T) {
	nodes := startTopology(t)
	ctx := context.Background()

	t.Run("off-instead-of-deluser", func(t *testing.T) {
		c := openConn(t, nodes)
		id := grantID()
		g := grantFor(t, c, id, testSpec())
		user, password := g.Info["username"], g.Secret["password"]
		var held []*goredis.Conn
		for _, n := range nodes {
			cn := newClient(n.addr, user, password).Conn()
			t.Cleanup(func() { cn.Close() })
			if err := cn.Ping(ctx).Err(); err != nil {
				t.Fatalf("%s: login: %v", n.name, err)
			}
			held = append(held, cn)
		}

		lredis.SabotageRevoke(c, "off", func(string) bool { return true })
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
			t.Fatalf("sabotaged Revoke: %v", err)
		}
		// The danger is real: new logins fail, held connections still act.
		for i, n := range nodes {
			if err := held[i].Get(ctx, "lapsetest:x").Err(); err != goredis.Nil {
				t.Fatalf("%s: the sabotage did not leave the session alive (%v); the test proves nothing", n.name, err)
			}
		}
		for attempt := 1; attempt <= 2; attempt++ { // the broker keeps retrying verification
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if v.Gone() {
				t.Fatal("Verify reports gone after a revocation that left the user and its sessions")
			}
			for _, n := range nodes {
				acl := checkpoint(t, v, n.name+"/acl")
				if acl.Gone || acl.Evidence["user_present"] != true || acl.Evidence["login_probe"] != "rejected: WRONGPASS" {
					t.Errorf("%s: acl checkpoint %+v", n.name, acl)
				}
				s := checkpoint(t, v, n.name+"/sessions")
				if s.Gone || s.Evidence["clients_of_user"] != 1 || len(s.Residue) != 1 {
					t.Errorf("%s: sessions checkpoint %+v", n.name, s)
				}
			}
		}

		// The retry, with the connector fixed, finishes the job.
		lredis.RestoreRevoke(c)
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
			t.Fatalf("retried Revoke: %v", err)
		}
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
		if err != nil {
			t.Fatalf("Verify after retry: %v", err)
		}
		if !v.Gone() {
			t.Fatalf("Verify after the retried Revoke: residue %v", residues(v))
		}
		for i, n := range nodes {
			if err := held[i].Get(ctx, "lapsetest:x").Err(); err == goredis.Nil {
				t.Errorf("%s: held session still works after the retried Revoke", n.name)
			}
		}
	})

	t.Run("one-replica-skipped", func(t *testing.T) {
		c := openConn(t, nodes)
		id := grantID()
		g := grantFor(t, c, id, testSpec())
		lredis.SabotageRevoke(c, "skip", func(node string) bool { return node == "replica-2" })
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
			t.Fatalf("sabotaged Revoke: %v", err)
		}
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		for _, cp := range v.Checkpoints {
			wantGone := !strings.HasPrefix(cp.Name, "replica-2/")
			if cp.Kind == "sessions" && !wantGone {
				wantGone = true // no session was opened on it
			}
			if cp.Gone != wantGone {
				t.Errorf("checkpoint %s: gone = %v, want %v (residue %v)", cp.Name, cp.Gone, wantGone, cp.Residue)
			}
		}
		acl := checkpoint(t, v, "replica-2/acl")
		if acl.Evidence["login_probe"] != "accepted: AUTH succeeded" {
			t.Errorf("replica-2 login probe: %v", acl.Evidence["login_probe"])
		}
		if len(acl.Residue) != 2 {
			t.Errorf("replica-2 residue %v, want the user and the accepted login", acl.Residue)
		}
	})
}

// TestRevokeReportsUnreachableNode checks that a node that cannot be
// reached makes Revoke and Verify fail with EUNAVAILABLE — never a silent
// success — while Revoke still acts on the nodes it can reach.
func TestRevokeReportsUnreachableNode(t *testing.T) {
	live := startServer(t, "live", nil)
	dead := node{name: "dead", addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	ctx := context.Background()

	// Grant on a deployment with a dead node fails and leaves nothing on
	// the live node.
	both := openConn(t, []node{live, dead}, func(c *lredis.Config) {
		c.DialTimeout = lapse.Duration(500 * time.Millisecond) // the port is closed; this only bounds the test
	})
	id := grantID()
	_, err := both.Grant(ctx, &connector.GrantRequest{GrantID: id, Spec: testSpec()})
	if code := lapse.ErrorCode(err); code != lapse.EUNAVAILABLE {
		t.Fatalf("Grant with a dead node: %v (code %q), want unavailable", err, code)
	}
	user, _ := both.UserName(id)
	if err := live.admin.Do(ctx, "ACL", "GETUSER", user).Err(); err != goredis.Nil {
		t.Errorf("the failed grant left its user on the live node: %v", err)
	}

	// A grant made while the node was up, revoked while it is down.
	liveOnly := openConn(t, []node{live})
	id = grantID()
	grantFor(t, liveOnly, id, testSpec())
	if _, err := both.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Fatalf("Revoke with a dead node: %v, want unavailable", err)
	}
	user, _ = both.UserName(id)
	if err := live.admin.Do(ctx, "ACL", "GETUSER", user).Err(); err != goredis.Nil {
		t.Errorf("Revoke did not act on the live node: %v", err)
	}
	if _, err := both.Verify(ctx, &connector.VerifyRequest{GrantID: id}); lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Fatalf("Verify with a dead node: %v, want unavailable", err)
	}
}

// TestVerifyReportsUnconfiguredNode: a node that held the grant (per
// State) but was removed from the configuration cannot be checked, so
// Verify must not call the grant gone.
func TestVerifyReportsUnconfiguredNode(t *testing.T) {
	nodes := startTopology(t)
	all := openConn(t, nodes)
	id := grantID()
	g := grantFor(t, all, id, testSpec())
	fewer := openConn(t, nodes[:2])
	if _, err := fewer.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	v, err := fewer.Verify(context.Background(), &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if v.Gone() {
		t.Fatal("Verify calls the grant gone although replica-2 was never checked")
	}
	if cp := checkpoint(t, v, "replica-2/acl"); cp.Gone || len(cp.Residue) == 0 {
		t.Errorf("replica-2/acl: %+v", cp)
	}
}

// TestStateOfAnotherGrantIsIgnored: State comes back from the store and is
// not trusted. A state whose user is not this grant's (another grant's, or
// a hand-made one) does not belong to the grant: the nodes it names are
// not reported, and Revoke and Verify say that the state was ignored. The
// grant's own state, also under a prefix that was changed since, is used.
func TestStateOfAnotherGrantIsIgnored(t *testing.T) {
	nodes := sharedNodes(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	id := grantID()
	g := grantFor(t, c, id, testSpec())
	other, err := c.UserName(grantID())
	if err != nil {
		t.Fatal(err)
	}
	stateOf := func(user string) json.RawMessage {
		raw, err := json.Marshal(map[string]any{"user": user, "nodes": []string{nodes[0].name, "retired"}})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	for _, tc := range []struct {
		name, user string
		belongs    bool
	}{
		{"another grant's user", other, false},
		{"the default user", "default", false},
		{"the grant ID alone", id, false},
		{"the grant's user", g.Info["username"], true},
		{"the grant's user under an earlier prefix", "old_" + id, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := stateOf(tc.user)
			r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: st})
			if err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			ignored := slices.Contains(r.Actions, "state ignored: it does not belong to this grant")
			reported := slices.ContainsFunc(r.Actions, func(a string) bool { return strings.HasPrefix(a, "node retired:") })
			if ignored == tc.belongs || reported != tc.belongs {
				t.Errorf("Revoke actions %q: state ignored %v, retired node reported %v; want the state used: %v", r.Actions, ignored, reported, tc.belongs)
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: st, Probe: g.Probe})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			retired := slices.ContainsFunc(v.Checkpoints, func(cp connector.CheckpointResult) bool { return strings.HasPrefix(cp.Name, "retired/") })
			note := checkpoint(t, v, nodes[0].name+"/acl").Evidence["state"]
			if retired != tc.belongs || v.Gone() == tc.belongs || (note != nil) == tc.belongs {
				t.Errorf("Verify: retired node checked %v, gone %v, state note %v; want the state used: %v", retired, v.Gone(), note, tc.belongs)
			}
		})
	}
}

// TestConcurrentVerificationsStayExact runs many verifications at once, so
// they share CLIENT LIST pipelines, and checks each still gets its own
// exact answer: revoked grants gone, active grants with their one session.
func TestConcurrentVerificationsStayExact(t *testing.T) {
	nodes := sharedNodes(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	const grants = 16
	ids := make([]string, grants)
	gs := make([]*connector.GrantResponse, grants)
	for i := range ids {
		ids[i] = grantID()
		gs[i] = grantFor(t, c, ids[i], testSpec())
		if i%2 == 0 {
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: ids[i]}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		cn := newClient(nodes[0].addr, gs[i].Info["username"], gs[i].Secret["password"]).Conn()
		t.Cleanup(func() { cn.Close() })
		if err := cn.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		shared int
	)
	for round := 0; round < 5; round++ {
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: ids[i], State: gs[i].State, Probe: gs[i].Probe})
				if err != nil {
					t.Errorf("grant %d: Verify: %v", i, err)
					return
				}
				s := checkpoint(t, v, "main/sessions")
				mu.Lock()
				shared = max(shared, s.Evidence["listing_shared_by"].(int))
				mu.Unlock()
				revoked := i%2 == 0
				if v.Gone() != revoked {
					t.Errorf("grant %d (revoked %v): gone = %v, residue %v", i, revoked, v.Gone(), residues(v))
				}
				if want := map[bool]int{true: 0, false: 1}[revoked]; s.Evidence["clients_of_user"] != want {
					t.Errorf("grant %d: clients_of_user = %v, want %d", i, s.Evidence["clients_of_user"], want)
				}
			}()
		}
		wg.Wait()
	}
	t.Logf("at most %d verifications shared one CLIENT LIST", shared)
}

// TestAcceptedProbeLeavesNoLogin: Verify of an active grant has its login
// probe accepted, on the connection Verify reads with. Before Verify
// returns, that connection is the admin account's again — logged back in
// with the admin credentials, or, for a passwordless default user, by
// RESET — and the server lists no client of the grant's user but its own
// session. The next verification, after Revoke, is exact.
func TestAcceptedProbeLeavesNoLogin(t *testing.T) {
	private := startServer(t, "primary", nil)
	for _, tc := range []struct {
		name  string
		nodes []node
		admin string
	}{
		{"admin credentials", []node{private}, private.user},
		{"passwordless default user", sharedNodes(t), "default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.nodes[0]
			c := openConn(t, tc.nodes)
			ctx := context.Background()
			id := grantID()
			g := grantFor(t, c, id, testSpec())
			user := g.Info["username"]
			session := newClient(n.addr, user, g.Secret["password"])
			defer session.Close()
			if err := session.Get(ctx, "lapsetest:x").Err(); err != goredis.Nil {
				t.Fatalf("grantee login: %v", err)
			}
			for round := 0; round < 2; round++ {
				v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if p := checkpoint(t, v, n.name+"/acl").Evidence["login_probe"]; p != "accepted: AUTH succeeded" {
					t.Fatalf("login probe %v on an active grant", p)
				}
				if s := checkpoint(t, v, n.name+"/sessions"); s.Evidence["clients_of_user"] != 1 {
					t.Errorf("round %d: clients_of_user = %v, want the one session", round, s.Evidence["clients_of_user"])
				}
				who, err := lredis.CheckerIdentity(ctx, c, n.name)
				if err != nil || who != tc.admin {
					t.Fatalf("round %d: Verify's connection is logged in as %q (%v), want %s", round, who, err, tc.admin)
				}
				if got := len(clientsOf(t, n, user)); got != 1 {
					t.Errorf("round %d: %d clients of the user after Verify, want the one session", round, got)
				}
			}
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
				t.Fatal(err)
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
			if err != nil || !v.Gone() {
				t.Fatalf("Verify after Revoke: %v, residue %v", err, residues(v))
			}
		})
	}
}
