package mariadb_test

import (
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// TestCheckpointMapCoversGrantCheckpoints: every checkpoint a grant
// reports is a path of the map, with the same kind; the revocation
// latency is kill_wait; grant_option and unsafe_skip_session_kill make
// unbounded paths.
func TestCheckpointMapCoversGrantCheckpoints(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	_, g := f.grant(t, c, f.spec())
	m := c.CheckpointMap(f.spec())
	if m.RevocationLatency != f.config().KillWait.D() {
		t.Errorf("latency = %s, want kill_wait", m.RevocationLatency)
	}
	kinds := map[string]lapse.CheckpointKind{}
	for _, p := range m.Paths {
		kinds[p.Name] = p.Kind
		if p.Outlives != 0 || p.Unbounded || p.Kill == "" || p.Verify == "" {
			t.Errorf("path %+v", p)
		}
	}
	for _, cp := range g.Checkpoints {
		if k, ok := kinds[cp.Name]; !ok || k != cp.Kind {
			t.Errorf("checkpoint %s (%s) is not on the map %v", cp.Name, cp.Kind, kinds)
		}
	}
	spec := f.spec()
	spec["grant_option"] = true
	unsafe := f.open(t, func(c *mariadb.Config) { c.UnsafeSkipSessionKill = true })
	for name, m := range map[string][]lapse.CheckpointPath{"grant_option": c.CheckpointMap(spec).Paths, "unsafe_skip_session_kill": unsafe.CheckpointMap(f.spec()).Paths} {
		n := 0
		for _, p := range m {
			if p.Unbounded {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d unbounded paths, want 1", name, n)
		}
	}
}
