package config_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
)

// zspBase has the zsp block and an entitlement with an exposure block.
// Line numbers in TestZSPErrors count from its first line.
const zspBase = `sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  db: {kind: fake}
zsp:
  max_exposure: 5m
  drift:
    interval: 10m
    remove: true
  canary:
    interval: 0
    entitlements: [db/read]
entitlements:
  - name: db/read
    target: db
    max_duration: 1h
    approval: {required: 1, approvers: [bob]}
    exposure:
      limit: 1m
      over_limit: approval
      approval: {required: 2, approvers: ["group:security"]}
      paths:
        - {name: pgbouncer, kind: consumer, consumed_at: "pgbouncer 10.0.0.5:6432", outlives: 30s, kill: "RECONNECT via admin console", verify: "SHOW CLIENTS has no row for the user"}
        - {name: fake:sessions, outlives: 0}
        - {name: api-cache, outlives: until_expiry}
  - name: db/write
    target: db
    max_duration: 1h
    approval: {auto: true}
`

func TestZSPParse(t *testing.T) {
	c := mustParse(t, zspBase)
	want := config.ZSP{
		MaxExposure: 5 * time.Minute,
		Drift:       config.Drift{Interval: 10 * time.Minute, Remove: true},
		Canary:      config.Canary{Entitlements: []string{"db/read"}},
	}
	if c.ZSP.MaxExposure != want.MaxExposure || c.ZSP.Drift != want.Drift || c.ZSP.Canary.Interval != 0 || !slices.Equal(c.ZSP.Canary.Entitlements, want.Canary.Entitlements) {
		t.Errorf("ZSP = %+v, want %+v", c.ZSP, want)
	}
	x := c.Entitlements[0].Exposure
	if x == nil {
		t.Fatal("db/read has no exposure")
	}
	if x.Limit.D() != time.Minute || x.OverLimit != lapse.OverLimitApproval {
		t.Errorf("limit %s over_limit %q, want 1m approval", x.Limit, x.OverLimit)
	}
	if x.Approval == nil || x.Approval.Required != 2 || !slices.Equal(x.Approval.Approvers, []string{"group:security"}) {
		t.Errorf("tier = %+v", x.Approval)
	}
	if len(x.Paths) != 3 {
		t.Fatalf("paths = %+v", x.Paths)
	}
	p := x.Paths[0]
	if p.Name != "pgbouncer" || p.Kind != lapse.CheckpointConsumer || p.Outlives.D() != 30*time.Second || p.ConsumedAt != "pgbouncer 10.0.0.5:6432" ||
		p.Kill == "" || p.Verify == "" || p.Source != lapse.PathFromConfig {
		t.Errorf("path 0 = %+v", p)
	}
	if q := x.Paths[1]; q.Kind != "" || q.Outlives != 0 || q.UntilExpiry || q.Unbounded {
		t.Errorf("path 1 = %+v, want an override with kind left to the connector and outlives 0", q)
	}
	if q := x.Paths[2]; !q.UntilExpiry {
		t.Errorf("path 2 = %+v, want until_expiry", q)
	}
	// The global limit applies where the entitlement says nothing.
	if x := c.Entitlements[1].Exposure; x == nil || x.Limit.D() != 5*time.Minute || x.Policy() != lapse.OverLimitRefuse || len(x.Paths) != 0 {
		t.Errorf("db/write exposure = %+v, want the default limit of 5m, refuse", x)
	}
}

func TestZSPDefaults(t *testing.T) {
	c := mustParse(t, base)
	if c.ZSP.MaxExposure != 0 || c.ZSP.Drift != (config.Drift{}) || c.ZSP.Canary.Interval != 0 || len(c.ZSP.Canary.Entitlements) != 0 {
		t.Errorf("ZSP = %+v, want all off", c.ZSP)
	}
	if c.Entitlements[0].Exposure != nil {
		t.Errorf("exposure = %+v, want none without a limit or paths", c.Entitlements[0].Exposure)
	}
	// An entitlement's limit: 0 opts out of the default.
	c = mustParse(t, strings.Replace(zspBase, "      limit: 1m\n", "      limit: 0\n", 1))
	if x := c.Entitlements[0].Exposure; x.Limit != 0 {
		t.Errorf("limit = %s, want 0", x.Limit)
	}
}

func TestZSPErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int
		path string
	}{
		{"unknown zsp key", strings.Replace(zspBase, "  max_exposure: 5m\n", "  max_exposur: 5m\n", 1), 5, "zsp.max_exposur"},
		{"unknown drift key", strings.Replace(zspBase, "    remove: true\n", "    remov: true\n", 1), 8, "zsp.drift.remov"},
		{"unknown exposure key", strings.Replace(zspBase, "      limit: 1m\n", "      limt: 1m\n", 1), 18, "entitlements[0].exposure.limt"},
		{"unknown path key", strings.Replace(zspBase, "outlives: until_expiry}", "outlives: until_expiry, ttl: 3s}", 1), 24, "entitlements[0].exposure.paths[2].ttl"},
		{"bad max_exposure", strings.Replace(zspBase, "max_exposure: 5m", "max_exposure: soon", 1), 5, "zsp.max_exposure"},
		{"negative max_exposure", strings.Replace(zspBase, "max_exposure: 5m", "max_exposure: -5m", 1), 5, "zsp.max_exposure"},
		{"drift interval too short", strings.Replace(zspBase, "interval: 10m", "interval: 10ms", 1), 7, "zsp.drift.interval"},
		{"canary interval too long", strings.Replace(zspBase, "    interval: 0\n", "    interval: 48h\n", 1), 10, "zsp.canary.interval"},
		{"canary names an unknown entitlement", strings.Replace(zspBase, "entitlements: [db/read]", "entitlements: [db/reed]", 1), 11, "zsp.canary.entitlements[0]"},
		{"canary lists one twice", strings.Replace(zspBase, "entitlements: [db/read]", "entitlements: [db/read, db/read]", 1), 11, "zsp.canary.entitlements[1]"},
		{"bad over_limit", strings.Replace(zspBase, "over_limit: approval", "over_limit: warn", 1), 19, "entitlements[0].exposure.over_limit"},
		{"approval tier without over_limit approval", strings.Replace(zspBase, "      over_limit: approval\n", "", 1), 19, "entitlements[0].exposure.approval"},
		{"over_limit approval without a tier", strings.Replace(zspBase, "      approval: {required: 2, approvers: [\"group:security\"]}\n", "", 1), 17, "entitlements[0].exposure.approval"},
		{"tier lower than the rule", strings.Replace(strings.Replace(zspBase, "{required: 1, approvers: [bob]}", "{required: 3, approvers: [\"group:ops\"]}", 1), "required: 2", "required: 1", 1), 20, "entitlements[0].exposure.approval.required"},
		{"automatic tier", strings.Replace(zspBase, "{required: 2, approvers: [\"group:security\"]}", "{auto: true}", 1), 20, "entitlements[0].exposure.approval.auto"},
		{"path without outlives", strings.Replace(zspBase, "{name: fake:sessions, outlives: 0}", "{name: fake:sessions}", 1), 23, "entitlements[0].exposure.paths[1].outlives"},
		{"bad outlives", strings.Replace(zspBase, "outlives: 30s", "outlives: forever", 1), 22, "entitlements[0].exposure.paths[0].outlives"},
		{"path without a name", strings.Replace(zspBase, "{name: api-cache, ", "{", 1), 24, "entitlements[0].exposure.paths[2].name"},
		{"bad path name", strings.Replace(zspBase, "name: api-cache", "name: \"api cache\"", 1), 24, "entitlements[0].exposure.paths[2].name"},
		{"duplicate path", strings.Replace(zspBase, "name: api-cache", "name: pgbouncer", 1), 24, "entitlements[0].exposure.paths[2].name"},
		{"bad path kind", strings.Replace(zspBase, "kind: consumer", "kind: pooler", 1), 22, "entitlements[0].exposure.paths[0].kind"},
		{"control character in a path", strings.Replace(zspBase, "RECONNECT via admin console", `RECONNECT\u001b[2J`, 1), 22, "entitlements[0].exposure.paths[0].kill"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("lapse.yaml", []byte(tt.src))
			ce := configError(t, err)
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, err)
			}
			if ce.Column == 0 {
				t.Errorf("no column (%v)", err)
			}
		})
	}
}
