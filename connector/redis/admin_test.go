package redis_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// documentedACL is the administrative account's ACL as
// docs/connectors/redis.md and RequiredPermissions give it.
var documentedACL = []string{
	"+acl|setuser", "+acl|deluser", "+acl|getuser", "+acl|list", "+acl|cat",
	"+client|kill", "+client|list", "+client|setname", "+multi", "+exec", "+ping",
}

// limitedAdmin makes (or resets) an admin user on n with exactly rules and
// returns n as that user.
func limitedAdmin(t *testing.T, n node, name string, rules ...string) node {
	t.Helper()
	password := randHex(16)
	args := []any{"ACL", "SETUSER", name, "reset", "on", ">" + password}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := n.admin.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %s: %v", name, err)
	}
	n.user, n.password = name, password
	return n
}

func setRules(t *testing.T, n node, user string, rules ...string) {
	t.Helper()
	args := []any{"ACL", "SETUSER", user}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := n.admin.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %s %v: %v", user, rules, err)
	}
}

// TestDocumentedAdminACLIsTheWorkingSet: the administrative account with
// exactly the documented rules (or +acl for the acl subcommands) grants,
// revokes, verifies and discovers; an account that lacks any of them is
// refused when the connector opens, with an error that names what to add —
// among them the old example's set, which lacked client|setname, multi and
// exec. The check changes nothing on the server.
func TestDocumentedAdminACLIsTheWorkingSet(t *testing.T) {
	srv := startServer(t, "primary", nil)
	ctx := context.Background()

	if !slices.Equal(lredis.RequiredPermissions, trimPlus(documentedACL)) {
		t.Fatalf("RequiredPermissions %v differ from the documented ACL %v", lredis.RequiredPermissions, documentedACL)
	}
	for i, rules := range [][]string{
		documentedACL,
		append([]string{"+acl"}, documentedACL[5:]...),
	} {
		admin := limitedAdmin(t, srv, fmt.Sprintf("lapse-admin-%d", i), rules...)
		c := openConn(t, []node{admin})
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("Ping with %v: %v", rules, err)
		}
		id := grantID()
		g := grantFor(t, c, id, testSpec())
		session := newClient(srv.addr, g.Info["username"], g.Secret["password"])
		defer session.Close()
		if err := session.Ping(ctx).Err(); err != nil {
			t.Fatalf("grantee login: %v", err)
		}
		r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
		if err != nil {
			t.Fatalf("Revoke with %v: %v", rules, err)
		}
		if !strings.Contains(strings.Join(r.Actions, "\n"), "closed 1 connections") {
			t.Errorf("Revoke actions %q: want the grantee's connection closed", r.Actions)
		}
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
		if err != nil || !v.Gone() {
			t.Fatalf("Verify with %v: %v, residue %v", rules, err, residues(v))
		}
		if _, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{testSpec()}}); err != nil {
			t.Fatalf("Discover with %v: %v", rules, err)
		}
	}

	before := aclSnapshot(t, []node{srv})
	for _, tc := range []struct {
		name  string
		rules []string
		want  []string
	}{
		{"the old example", []string{"+acl", "+client|kill", "+client|list", "+ping", "+hello", "+auth"}, []string{"+client|setname", "+multi", "+exec"}},
		{"no multi", without(documentedACL, "+multi"), []string{"+multi"}},
		{"no exec", without(documentedACL, "+exec"), []string{"+exec"}},
		{"no client|setname", without(documentedACL, "+client|setname"), []string{"+client|setname"}},
		{"no acl|setuser", without(documentedACL, "+acl|setuser"), []string{"+acl|setuser"}},
		{"no client|kill", without(documentedACL, "+client|kill"), []string{"+client|kill"}},
		{"nothing", nil, documentedACL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin := limitedAdmin(t, srv, "lapse-limited", tc.rules...)
			c, err := lredis.New(ctx, lredis.Config{Nodes: []lredis.NodeConfig{admin.config()}}, connector.Env{Name: "cache"})
			if err == nil {
				c.Close()
				t.Fatalf("New accepted an admin account with only %v", tc.rules)
			}
			if lapse.ErrorCode(err) != lapse.EINVALID {
				t.Errorf("New: %v, want invalid", err)
			}
			msg := lapse.ErrorMessage(err)
			if !strings.Contains(msg, "ACL SETUSER lapse-limited "+strings.Join(tc.want, " ")+"") || !strings.Contains(msg, "node primary") {
				t.Errorf("New: %q, want it to name node primary and exactly %v", msg, tc.want)
			}
			if strings.Contains(err.Error(), admin.password) {
				t.Error("the error holds the admin password")
			}
		})
	}
	if err := srv.admin.Do(ctx, "ACL", "DELUSER", "lapse-limited").Err(); err != nil {
		t.Fatal(err)
	}
	after := aclSnapshot(t, []node{srv})
	if !slices.Equal(before["primary"], after["primary"]) {
		t.Errorf("the permission check changed the server's users:\nbefore %q\nafter  %q", before["primary"], after["primary"])
	}
}

// TestRevokeReportsRefusedTransaction: if the administrative account
// loses +exec or +multi after the connector opened, Revoke fails with
// unavailable and an error that names the refused command — never a
// misread reply — and says whether the commands ran outside a
// transaction.
func TestRevokeReportsRefusedTransaction(t *testing.T) {
	srv := startServer(t, "primary", nil)
	ctx := context.Background()
	admin := limitedAdmin(t, srv, "lapse-admin", documentedACL...)
	c := openConn(t, []node{admin})

	for _, tc := range []struct {
		remove   string
		want     []string
		userGone bool // the server ran the commands anyway
	}{
		{"-exec", []string{"EXEC", "+exec", "discarded"}, false},
		{"-multi", []string{"MULTI", "+multi", "outside a transaction"}, true},
		{"-client|kill", []string{"CLIENT KILL", "+client|kill", "discarded"}, false},
	} {
		t.Run(tc.remove, func(t *testing.T) {
			id := grantID()
			g := grantFor(t, c, id, testSpec())
			setRules(t, srv, "lapse-admin", tc.remove)
			_, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
			setRules(t, srv, "lapse-admin", documentedACL...)
			if lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
				t.Fatalf("Revoke without %s: %v, want unavailable", tc.remove, err)
			}
			msg := lapse.ErrorMessage(err)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Revoke without %s: message %q does not say %q", tc.remove, msg, w)
				}
			}
			if strings.Contains(err.Error(), "unexpected type") {
				t.Errorf("Revoke misread the replies: %v", err)
			}
			gone := srv.admin.Do(ctx, "ACL", "GETUSER", g.Info["username"]).Err() == goredis.Nil
			if gone != tc.userGone {
				t.Errorf("user gone after the failed Revoke: %v, want %v", gone, tc.userGone)
			}
			// The pool is not left inside a transaction: the retry works.
			if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
				t.Fatalf("Revoke again: %v", err)
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
			if err != nil || !v.Gone() {
				t.Fatalf("Verify: %v, residue %v", err, residues(v))
			}
		})
	}
}

// TestPrefixChangeStillRevokesStateUser: a grant made under one prefix and
// revoked after the prefix changed. State records the user and belongs to
// the grant, so Revoke deletes that user and closes its connection, and
// Verify checks it — before the revocation it reports the user as residue.
func TestPrefixChangeStillRevokesStateUser(t *testing.T) {
	nodes := sharedNodes(t)
	ctx := context.Background()
	old := openConn(t, nodes, func(c *lredis.Config) { c.Prefix = "lapseold_" })
	renamed := openConn(t, nodes, func(c *lredis.Config) { c.Prefix = "lapsenew_" })
	id := grantID()
	g := grantFor(t, old, id, testSpec())
	user := g.Info["username"]
	if !strings.HasPrefix(user, "lapseold_") {
		t.Fatalf("user %s", user)
	}
	session := newClient(nodes[0].addr, user, g.Secret["password"])
	defer session.Close()
	if err := session.Ping(ctx).Err(); err != nil {
		t.Fatalf("grantee login: %v", err)
	}

	v, err := renamed.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if v.Gone() {
		t.Fatal("Verify after a prefix change calls the active grant gone")
	}
	if !strings.Contains(strings.Join(residues(v), "\n"), user) {
		t.Errorf("residue %q does not name %s", residues(v), user)
	}

	r, err := renamed.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if want := "node main: deleted ACL user " + user + ", closed 1 connections"; !slices.Contains(r.Actions, want) {
		t.Errorf("Revoke actions %q, want %q", r.Actions, want)
	}
	if err := nodes[0].admin.Do(ctx, "ACL", "GETUSER", user).Err(); err != goredis.Nil {
		t.Fatalf("the user made under the old prefix survived Revoke: %v", err)
	}
	if len(clientsOf(t, nodes[0], user)) != 0 {
		t.Error("a connection of the old user survived Revoke")
	}
	v, err = renamed.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil || !v.Gone() {
		t.Fatalf("Verify after Revoke: %v, residue %v", err, residues(v))
	}
	acl := checkpoint(t, v, "main/acl")
	if acl.Evidence["state_user"] != user {
		t.Errorf("evidence %v does not show that %s was checked", acl.Evidence, user)
	}
}

func trimPlus(rules []string) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = strings.TrimPrefix(r, "+")
	}
	return out
}

func without(s []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(v string) bool { return v == drop })
}
