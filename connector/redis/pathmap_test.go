package redis_test

import (
	"testing"

	"github.com/lapsehq/lapse"
)

// TestCheckpointMapCoversGrantCheckpoints: every checkpoint a grant
// reports (two per node) is a path of the map, with the same kind, and
// nothing outlives revocation.
func TestCheckpointMapCoversGrantCheckpoints(t *testing.T) {
	c := openConn(t, sharedNodes(t))
	g := grantFor(t, c, grantID(), testSpec())
	m := c.CheckpointMap(testSpec())
	if m.RevocationLatency <= 0 {
		t.Errorf("latency = %s, want the command timeout", m.RevocationLatency)
	}
	kinds := map[string]lapse.CheckpointKind{}
	for _, p := range m.Paths {
		kinds[p.Name] = p.Kind
		if p.Outlives != 0 || p.Unbounded || p.Kill == "" || p.Verify == "" {
			t.Errorf("path %+v", p)
		}
	}
	if len(g.Checkpoints) == 0 || len(kinds) != len(g.Checkpoints) {
		t.Errorf("map %v, grant checkpoints %v", kinds, g.Checkpoints)
	}
	for _, cp := range g.Checkpoints {
		if k, ok := kinds[cp.Name]; !ok || k != cp.Kind {
			t.Errorf("checkpoint %s (%s) is not on the map %v", cp.Name, cp.Kind, kinds)
		}
	}
}
