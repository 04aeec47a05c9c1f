package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/zsp/zsptest"
)

// escalationConfig has a Redis target on the machine's server and an
// auto-approved entitlement whose rules include +@admin (its spec on line
// 20), with
// the given escalation block.
func escalationConfig(t *testing.T, escalation string) string {
	t.Helper()
	cache := zsptest.NewRedis(t)
	return writeServerConfig(t, fmt.Sprintf(`data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
targets:
  cache:
    kind: redis
    config:
      prefix: %s
      nodes: [{name: main, addr: %q}]
entitlements:
  - name: cache/read
    target: cache
    max_duration: 1h
    approval: {auto: true}
    spec: {commands: [get], keys: ["lapsetest:*"]}
  - name: cache/admin
    target: cache
    max_duration: 1h
    approval: {auto: true}
    spec: {categories: [admin], privileged: true}
%s`, cache.Prefix, cache.Addr, escalation))
}

// TestServerRefusesEscalation: by default lapse server does not start
// when an entitlement's grants would carry admin powers; the error points
// at the entitlement's spec in the file and says what was found.
func TestServerRefusesEscalation(t *testing.T) {
	path := escalationConfig(t, "")
	_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a configuration error", err, err)
	}
	if ce.File != path || ce.Line != 20 || ce.Path != "entitlements[1].spec" {
		t.Errorf("error at %s:%d %q, want line 20, entitlements[1].spec: %v", ce.File, ce.Line, ce.Path, err)
	}
	if !strings.Contains(err.Error(), "cache/admin") || !strings.Contains(err.Error(), "rule +@admin") {
		t.Errorf("the error does not name the entitlement and the finding: %v", err)
	}
	if lapse.ErrorCode(err) != lapse.EFORBIDDEN || lapse.ErrorReason(err) != broker.ReasonEscalation {
		t.Errorf("code %q reason %q, want %s %s", lapse.ErrorCode(err), lapse.ErrorReason(err), lapse.EFORBIDDEN, broker.ReasonEscalation)
	}
	if exitStatus(err) == exitOK {
		t.Error("exit status 0")
	}
}

// TestServerEscalationHighestTier: with escalation.mode highest_tier the
// server starts and serves the entitlement with the tier: the catalog
// shows the tier's rule, and a request waits for its approvers instead of
// being granted at once.
func TestServerEscalationHighestTier(t *testing.T) {
	path := escalationConfig(t, `escalation:
  mode: highest_tier
  approval: {required: 2, approvers: ["group:security"]}
`)
	out, stderr, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", "alice", "--scope", "read,request")
	if err != nil {
		t.Fatalf("admin apikey create: %v\n%s", err, stderr)
	}
	alice := strings.TrimSpace(out)
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")

	var list struct {
		Entitlements []*lapse.Entitlement `json:"entitlements"`
	}
	if code := call(t, "GET", r.url+"/v1/entitlements", alice, nil, &list); code != 200 {
		t.Fatalf("GET /v1/entitlements: %d", code)
	}
	i := slices.IndexFunc(list.Entitlements, func(e *lapse.Entitlement) bool { return e.Name == "cache/admin" })
	if i < 0 {
		t.Fatalf("cache/admin is not in the catalog: %+v", list.Entitlements)
	}
	if a := list.Entitlements[i].Approval; a.Auto || a.Required != 2 || !slices.Equal(a.Approvers, []string{"group:security"}) {
		t.Errorf("cache/admin is served with %+v, want the tier", a)
	}
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "cache/admin"}, &res); code != 201 {
		t.Fatalf("request: status %d", code)
	}
	if res.Grant != nil || res.Request.State != lapse.RequestPending {
		t.Errorf("request for cache/admin: %+v, want pending without a grant", res.Request)
	}
	if !strings.Contains(r.stderr.String(), "served with the highest approval tier") {
		t.Errorf("the escalation was not logged:\n%s", r.stderr.String())
	}
}
