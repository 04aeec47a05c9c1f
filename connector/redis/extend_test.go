package redis_test

import (
	"context"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

func extendRequest(id string, g *connector.GrantResponse) *connector.ExtendRequest {
	req := &connector.ExtendRequest{GrantID: id, Principal: testPrincipal, Entitlement: "cache/test", Spec: testSpec(), ExpiresAt: time.Now().Add(3 * time.Hour)}
	if g != nil {
		req.State = g.State
	}
	return req
}

// TestExtendSharedServer: ACL users carry no deadline, so Extend only
// checks the user: nil while it exists (with or without State), and the
// user is left exactly as it was; ENOTFOUND once revoked.
func TestExtendSharedServer(t *testing.T) {
	nodes := sharedNodes(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	id := grantID()
	g := grantFor(t, c, id, testSpec())
	user := g.Info["username"]
	before := aclSnapshot(t, nodes)
	if err := c.Extend(ctx, extendRequest(id, g)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, nil)); err != nil {
		t.Errorf("Extend without State: %v", err)
	}
	mine := func(u string) bool { return u == user }
	if b, a := userLines(before, mine), userLines(aclSnapshot(t, nodes), mine); len(a["main"]) != 1 || a["main"][0] != b["main"][0] {
		t.Errorf("Extend changed the ACL user: before %q, after %q", b["main"], a["main"])
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, g)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want %s", err, lapse.ENOTFOUND)
	}
	if err := c.Extend(ctx, extendRequest("bad id", nil)); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Extend with a bad grant ID: %v, want %s", err, lapse.EINVALID)
	}
}

// TestExtendMissingOnOneNode: ACLs are per node, so a user that one node
// lost (a restart without an ACL file) makes Extend report ENOTFOUND even
// though the other node still has it.
func TestExtendMissingOnOneNode(t *testing.T) {
	nodes := []node{startServer(t, "a", nil), startServer(t, "b", nil)}
	c := openConn(t, nodes)
	ctx := context.Background()
	id := grantID()
	g := grantFor(t, c, id, testSpec())
	if err := c.Extend(ctx, extendRequest(id, g)); err != nil {
		t.Fatalf("Extend with the user on both nodes: %v", err)
	}
	if err := nodes[1].admin.Do(ctx, "ACL", "DELUSER", g.Info["username"]).Err(); err != nil {
		t.Fatalf("delete the user on node b: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, g)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend with the user missing on node b: %v, want %s", err, lapse.ENOTFOUND)
	}
}
