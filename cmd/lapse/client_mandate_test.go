package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// TestMandateCommands: lapse mandate create, list and revoke send what the
// flags say, print what the server answered, and refuse bad flags as usage
// errors before calling the server.
func TestMandateCommands(t *testing.T) {
	c := newCLI(t)
	mk := func(in lapse.MandateInput) *lapse.Mandate {
		return &lapse.Mandate{ID: "mdt_06f3ahd0qchpsbqvzg81nrh3f0", AgentID: in.AgentID, Entitlements: in.Entitlements,
			Sponsor: lapse.Principal{ID: "alice", Kind: lapse.KindHuman}, MaxDuration: in.MaxDuration,
			CreatedAt: testNow, ExpiresAt: testNow.Add(in.ExpiresIn.D())}
	}
	var got lapse.MandateInput
	c.svc.createMandate = func(_ context.Context, in lapse.MandateInput) (*lapse.Mandate, error) {
		got = in
		return mk(in), nil
	}
	out, stderr := c.mustRun("mandate", "create", "--agent", "ci-helper", "--entitlement", "demo-api/status,demo-api/read",
		"--max-duration", "15m", "--expires-in", "7d")
	if got.AgentID != "ci-helper" || !slices.Equal(got.Entitlements, []string{"demo-api/status", "demo-api/read"}) ||
		got.MaxDuration.D() != 15*time.Minute || got.ExpiresIn.D() != 7*24*time.Hour {
		t.Errorf("sent %+v", got)
	}
	assertContains(t, out, "Gave agent ci-helper mandate mdt_06f3ahd0qchpsbqvzg81nrh3f0", "demo-api/status, demo-api/read", "live")
	assertContains(t, stderr, "lapse mandate revoke mdt_06f3ahd0qchpsbqvzg81nrh3f0")

	for _, args := range [][]string{
		{"mandate", "create", "--entitlement", "x", "--max-duration", "1m", "--expires-in", "1h"},
		{"mandate", "create", "--agent", "a", "--max-duration", "1m", "--expires-in", "1h"},
		{"mandate", "create", "--agent", "a", "--entitlement", "x", "--expires-in", "1h"},
		{"mandate", "create", "--agent", "a", "--entitlement", "x", "--max-duration", "soon", "--expires-in", "1h"},
		{"mandate", "revoke", "gr_x"},
		{"mandate", "frobnicate"},
	} {
		if _, _, code := c.run(args...); code != exitUsage {
			t.Errorf("lapse %v: exit %d, want usage", args, code)
		}
	}
	if n := c.svc.called("CreateMandate"); n != 1 {
		t.Errorf("CreateMandate called %d times", n)
	}

	var filter lapse.MandateFilter
	c.svc.listMandates = func(_ context.Context, f lapse.MandateFilter) ([]*lapse.Mandate, error) {
		filter = f
		return []*lapse.Mandate{mk(got)}, nil
	}
	out, _ = c.mustRun("mandate", "list", "--agent", "ci-helper")
	if !filter.Live || filter.AgentID != "ci-helper" {
		t.Errorf("list filter %+v", filter)
	}
	assertContains(t, out, "mdt_06f3ahd0qchpsbqvzg81nrh3f0", "ci-helper", "alice", "15m")
	c.mustRun("mandate", "list", "--all")
	if filter.Live {
		t.Error("--all still asks for live mandates only")
	}

	c.svc.revokeMandate = func(_ context.Context, id string) (*lapse.Mandate, error) {
		m := mk(got)
		m.ID, m.RevokedAt, m.RevokedBy = id, testNow, "alice"
		return m, nil
	}
	out, _ = c.mustRun("mandate", "revoke", "mdt_06f3ahd0qchpsbqvzg81nrh3f0")
	assertContains(t, out, "Revoked mandate mdt_06f3ahd0qchpsbqvzg81nrh3f0", "revoked")
}
