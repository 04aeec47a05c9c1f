package postgres_test

import (
	"context"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// TestCheckpointMapCoversGrantCheckpoints: every checkpoint a grant
// reports is a path of the map, with the same kind; nothing outlives
// revocation but the accepted grant-option risk; the revocation latency
// is terminate_wait.
func TestCheckpointMapCoversGrantCheckpoints(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	defer c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id, Spec: f.spec()})

	m := c.CheckpointMap(f.spec())
	if m.RevocationLatency != postgres.DefaultTerminateWait {
		t.Errorf("latency = %s, want terminate_wait", m.RevocationLatency)
	}
	kinds := map[string]lapse.CheckpointKind{}
	for _, p := range m.Paths {
		kinds[p.Name] = p.Kind
		if p.Outlives != 0 || p.Unbounded || p.UntilExpiry || p.Kill == "" || p.Verify == "" || p.CreatedAt == "" || p.ConsumedAt == "" {
			t.Errorf("path %+v", p)
		}
	}
	for _, cp := range g.Checkpoints {
		if k, ok := kinds[cp.Name]; !ok || k != cp.Kind {
			t.Errorf("checkpoint %s (%s) is not on the map %v", cp.Name, cp.Kind, kinds)
		}
	}
	risky := map[string]any{"roles": []any{f.group}, "accept_grant_option_risk": true}
	var unbounded bool
	for _, p := range c.CheckpointMap(risky).Paths {
		unbounded = unbounded || (p.Name == postgres.CheckpointGrantOptions && p.Unbounded)
	}
	if !unbounded {
		t.Error("an accepted grant-option risk is not an unbounded path")
	}
}
