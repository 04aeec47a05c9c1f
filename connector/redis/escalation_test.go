package redis_test

import (
	"context"
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// TestAdminPowers: admin categories and commands are flagged as the spec
// names them, and a deny rule that takes them away again cancels them;
// data commands and harmless subcommands are not flagged.
func TestAdminPowers(t *testing.T) {
	c := openConn(t, sharedNodes(t))
	cases := []struct {
		spec map[string]any
		want []string // each the start of some finding; none if empty
	}{
		{map[string]any{"commands": []any{"get", "set"}, "categories": []any{"read"}}, nil},
		{map[string]any{"categories": []any{"admin"}, "privileged": true}, []string{"rule +@admin:"}},
		{map[string]any{"categories": []any{"dangerous"}, "privileged": true}, []string{"rule +@dangerous:"}},
		{map[string]any{"commands": []any{"acl"}}, []string{"rule +acl: manages users"}},
		{map[string]any{"commands": []any{"acl|setuser", "acl|whoami"}}, []string{"rule +acl|setuser:"}},
		{map[string]any{"commands": []any{"config|get", "module", "debug"}, "privileged": true}, []string{"rule +config|get:", "rule +module:", "rule +debug:"}},
		{map[string]any{"commands": []any{"acl|whoami", "cluster|info"}}, nil},
		{map[string]any{"categories": []any{"admin"}, "deny_categories": []any{"dangerous"}, "privileged": true}, nil},
		{map[string]any{"commands": []any{"config"}, "deny_commands": []any{"config"}, "privileged": true}, nil},
	}
	for _, tc := range cases {
		got, err := c.AdminPowers(context.Background(), tc.spec)
		if err != nil {
			t.Fatalf("AdminPowers(%v): %v", tc.spec, err)
		}
		if len(tc.want) == 0 && len(got) != 0 {
			t.Errorf("AdminPowers(%v) = %q, want none", tc.spec, got)
		}
		if len(got) != len(tc.want) {
			t.Errorf("AdminPowers(%v) = %q, want %d findings", tc.spec, got, len(tc.want))
		}
		for _, w := range tc.want {
			if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, w) }) {
				t.Errorf("AdminPowers(%v) = %q, want a line starting %q", tc.spec, got, w)
			}
		}
	}
	if _, err := c.AdminPowers(context.Background(), map[string]any{"commands": "get"}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("commands not a list: %v, want %s", err, lapse.EINVALID)
	}
}

// TestEscalationHighestTierThroughBroker: in highest_tier mode an
// auto-approved entitlement with +@admin waits for the tier's two
// approvers instead of being granted at once; once they approve, the real
// server gets the user, and revocation removes it.
func TestEscalationHighestTierThroughBroker(t *testing.T) {
	nodes := sharedNodes(t)
	clock := connectortest.NewClock()
	c := openConn(t, nodes)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	store := sqltest.OpenSQLite(t)
	spec := map[string]any{"categories": []any{"admin"}, "privileged": true}
	b, err := broker.New(broker.Config{
		Store: store, Clock: clock, SealingKey: key,
		Catalog: []*lapse.Entitlement{{Name: "cache/admin", Target: "cache", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindService},
			DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Auto: true}, Spec: spec}},
		Targets:    map[string]broker.Target{"cache": {Kind: "redis", Connector: c}},
		Escalation: broker.EscalationPolicy{Mode: broker.EscalationHighestTier, Approval: &lapse.ApprovalRule{Required: 2, Approvers: []string{"group:security"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	as := func(id string, groups []string, scopes ...string) context.Context {
		return lapse.NewContext(ctx, &lapse.Principal{ID: id, Kind: lapse.KindHuman, Groups: groups, Scopes: scopes})
	}
	res, err := b.CreateRequest(as("alice", nil, lapse.ScopeRequest, lapse.ScopeRead), lapse.RequestInput{Entitlement: "cache/admin", Reason: "flush a stuck replica"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant != nil || res.Request.State != lapse.RequestPending {
		t.Fatalf("an escalated auto entitlement was granted at once: %+v", res.Request)
	}
	// A service, which the auto rule would have served at once, now waits too.
	svc := lapse.NewContext(ctx, &lapse.Principal{ID: "svc:ci", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest}})
	if r, err := b.CreateRequest(svc, lapse.RequestInput{Entitlement: "cache/admin"}); err != nil || r.Grant != nil {
		t.Fatalf("machine lane: %+v, %v; want a pending request", r, err)
	}

	r := res.Request
	for _, approver := range []string{"sec1", "sec2"} {
		if r, err = b.Approve(as(approver, []string{"security"}, lapse.ScopeApprove), r.ID, lapse.DecisionInput{RequestHash: r.Hash}); err != nil {
			t.Fatalf("approve as %s: %v", approver, err)
		}
	}
	if r.State != lapse.RequestApproved || r.GrantID == "" {
		t.Fatalf("after the tier's two approvals: %s", r.State)
	}
	t.Cleanup(func() {
		if _, err := c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: r.GrantID}); err != nil {
			t.Errorf("cleanup revoke: %v", err)
		}
	})
	if err := b.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	g, err := store.GetGrant(ctx, r.GrantID)
	if err != nil || g.State != lapse.GrantActive {
		t.Fatalf("grant: %+v, %v", g, err)
	}
	user := g.Info["username"]
	rules, err := nodes[0].admin.Do(ctx, "ACL", "GETUSER", user).Result()
	if err != nil || rules == nil {
		t.Fatalf("ACL GETUSER %s: %v, %v", user, rules, err)
	}
	if _, err := b.Revoke(as("sec1", []string{"security"}, lapse.ScopeRevoke), g.ID, lapse.RevokeInput{Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := b.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if g, _ := store.GetGrant(ctx, g.ID); g.State != lapse.GrantRevoked {
		t.Errorf("grant after revocation: %s (%s)", g.State, g.LastError)
	}
}
