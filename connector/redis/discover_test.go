package redis_test

import (
	"context"
	"slices"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// TestDiscoverFindsLapseUsersAndStandingPrivilege builds drift by hand on
// a replicated deployment and checks that Discover reports it: Lapse's
// users (one of them left behind on a single replica), and the other
// enabled accounts that can run what the catalog entitles — but not those
// that are disabled or can run nothing entitled.
func TestDiscoverFindsLapseUsersAndStandingPrivilege(t *testing.T) {
	nodes := startTopology(t)
	c := openConn(t, nodes)
	ctx := context.Background()
	primary, replica2 := nodes[0], nodes[2]

	active := grantID()
	grantFor(t, c, active, map[string]any{"commands": []any{"get"}, "keys": []any{"lapsetest:*"}})
	orphan := grantID()
	orphanUser, _ := c.UserName(orphan)
	mustDo(t, replica2, "ACL", "SETUSER", orphanUser, "on", ">x", "+get", "~*")
	mustDo(t, primary, "ACL", "SETUSER", "ops", "on", ">x", "+@all", "~*")
	mustDo(t, primary, "ACL", "SETUSER", "reader", "on", ">x", "+@read", "-get", "+get", "~*")
	mustDo(t, primary, "ACL", "SETUSER", "writer", "on", ">x", "+set", "~*")
	mustDo(t, primary, "ACL", "SETUSER", "readnoget", "on", ">x", "+@read", "-get", "~*")
	mustDo(t, primary, "ACL", "SETUSER", "disabled", "off", ">x", "+@all", "~*")
	mustDo(t, replica2, "ACL", "SETUSER", "selector", "on", ">x", "-@all", "(~s:* +get)")

	d, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{
		{"commands": []any{"get"}, "keys": []any{"lapsetest:*"}},
		{"categories": []any{"hash"}, "keys": []any{"h:*"}},
	}})
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	got := map[string]connector.DiscoveredPrincipal{}
	for _, p := range d.Principals {
		got[p.Name] = p
	}
	activeUser, _ := c.UserName(active)
	want := map[string]struct {
		ephemeral bool
		grantID   string
		has       []string
	}{
		activeUser:   {true, active, []string{"+get", "~lapsetest:*", "node:primary", "node:replica-1", "node:replica-2"}},
		orphanUser:   {true, orphan, []string{"+get", "node:replica-2"}},
		"ops":        {false, "", []string{"+get", "+@hash", "node:primary"}},
		"lapseadmin": {false, "", []string{"+get", "+@hash", "node:primary", "node:replica-1", "node:replica-2"}},
		"reader":     {false, "", []string{"+get", "+@hash", "node:primary"}},
		"readnoget":  {false, "", []string{"+@hash", "node:primary"}},
		"selector":   {false, "", []string{"+get", "node:replica-2"}},
	}
	for name, w := range want {
		p, ok := got[name]
		if !ok {
			t.Errorf("Discover did not list %s", name)
			continue
		}
		if p.Ephemeral != w.ephemeral || p.GrantID != w.grantID {
			t.Errorf("%s: ephemeral=%v grant=%q, want %v %q", name, p.Ephemeral, p.GrantID, w.ephemeral, w.grantID)
		}
		for _, h := range w.has {
			if !slices.Contains(p.Privileges, h) {
				t.Errorf("%s: privileges %v lack %s", name, p.Privileges, h)
			}
		}
		for _, pr := range p.Privileges {
			if len(pr) > 0 && pr[0] == '#' {
				t.Errorf("%s: a password hash is listed as a privilege", name)
			}
		}
	}
	if slices.Contains(got["readnoget"].Privileges, "+get") {
		t.Error("readnoget is listed with +get although -get follows +@read")
	}
	if slices.Contains(got[orphanUser].Privileges, "node:primary") {
		t.Error("the orphan is listed on the primary")
	}
	for _, name := range []string{"writer", "disabled", "default"} {
		if _, ok := got[name]; ok {
			t.Errorf("Discover listed %s, which holds no entitled privilege it can use", name)
		}
	}

	if _, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{{"commands": []any{"get nopass"}}}}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Discover with a bad spec: %v, want invalid", err)
	}
}

func mustDo(t *testing.T, n node, args ...any) {
	t.Helper()
	if err := n.admin.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("%s: %v: %v", n.name, args, err)
	}
}
