package lapse_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

func TestExposureComplete(t *testing.T) {
	connectorPaths := []lapse.CheckpointPath{
		{Name: "role", Kind: lapse.CheckpointTarget, Kill: "DROP ROLE", Verify: "pg_roles"},
		{Name: "sessions", Kind: lapse.CheckpointSessions, Kill: "terminate", Verify: "pg_stat_activity"},
	}
	policy := &lapse.Exposure{
		Limit: lapse.Duration(time.Minute), OverLimit: lapse.OverLimitRefuse,
		Paths: []lapse.CheckpointPath{
			{Name: "pgbouncer", ConsumedAt: "pgbouncer:6432", Outlives: lapse.Duration(30 * time.Second)},
			// Replaces the connector's path of that name, keeping what it
			// does not say.
			{Name: "sessions", Outlives: lapse.Duration(5 * time.Second)},
		},
	}
	x := policy.Complete(connectorPaths, 10*time.Second, time.Hour)
	if len(x.Paths) != 3 || x.Paths[1].Source != lapse.PathFromConfig || x.Paths[1].Kill != "terminate" || x.Paths[1].Kind != lapse.CheckpointSessions ||
		x.Paths[0].Source != lapse.PathFromConnector || x.Paths[2].Kind != lapse.CheckpointConsumer {
		t.Fatalf("paths = %+v", x.Paths)
	}
	if x.Bound.D() != 40*time.Second || x.BoundBy != "pgbouncer" || x.Exceeded || x.Unbounded {
		t.Errorf("bound %s by %q exceeded %v, want 40s by pgbouncer within 1m", x.Bound, x.BoundBy, x.Exceeded)
	}
	if s := x.BoundText(time.Hour); !strings.Contains(s, "pgbouncer") || !strings.Contains(s, "30s") || !strings.Contains(s, "10s") {
		t.Errorf("BoundText = %q", s)
	}
	if len(policy.Paths) != 2 || policy.Paths[1].Kill != "" {
		t.Error("Complete changed its receiver")
	}

	// Until expiry: the entitlement's max_duration counts.
	x = (&lapse.Exposure{Limit: lapse.Duration(5 * time.Minute)}).Complete([]lapse.CheckpointPath{
		{Name: "offline", UntilExpiry: true, Outlives: lapse.Duration(time.Minute)},
	}, 0, time.Hour)
	if x.Bound.D() != time.Hour+time.Minute || !x.Exceeded {
		t.Errorf("until-expiry bound %s exceeded %v", x.Bound, x.Exceeded)
	}
	// Unbounded beats everything, and exceeds any limit.
	x = (&lapse.Exposure{Limit: lapse.Duration(lapse.MaxAnyDuration)}).Complete([]lapse.CheckpointPath{
		{Name: "big", Outlives: lapse.Duration(time.Hour)}, {Name: "grant-options", Unbounded: true},
	}, 0, time.Hour)
	if !x.Unbounded || x.BoundBy != "grant-options" || !x.Exceeded {
		t.Errorf("unbounded: %+v", x)
	}
	// No policy, no paths: nothing outlives, no limit.
	x = (*lapse.Exposure)(nil).Complete(nil, 0, time.Hour)
	if x.Bound != 0 || x.Exceeded || x.Policy() != lapse.OverLimitRefuse || !strings.HasPrefix(x.BoundText(time.Hour), "0") {
		t.Errorf("empty: %+v", x)
	}
}
