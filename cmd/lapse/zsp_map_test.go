package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
)

// mapConfig declares, on top of the connectors' own paths, an API server
// that caches sessions for 30s (over the 10s limit: refused), and a
// pgbouncer under the default limit of 5m.
const mapConfig = `data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
zsp:
  max_exposure: 5m
targets:
  demo-api:
    kind: token
    config:
      issuer: http://127.0.0.1:8700
      audience: demo-api
      generate_key: true
      consumers: [orders-api]
  scratch:
    kind: fake
entitlements:
  - name: demo-api/read
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
  - name: scratch/pooled
    target: scratch
    max_duration: 10m
    approval: {auto: true}
    exposure:
      paths:
        - {name: pgbouncer, kind: consumer, consumed_at: "pgbouncer 10.0.0.5:6432", outlives: 30s, kill: "RECONNECT via admin console", verify: "SHOW CLIENTS has no row for the user"}
  - name: scratch/cached
    target: scratch
    max_duration: 10m
    approval: {auto: true}
    exposure:
      limit: 10s
      paths:
        - {name: api-cache, kind: cache, consumed_at: "orders-api session cache", outlives: 30s, kill: "none", verify: "wait for the TTL"}
`

// TestZSPMap: lapse zsp map shows the connectors' paths and the configured
// ones with the bound against the limit, and exits 1 for an entitlement
// whose bound exceeds its limit with over_limit refuse.
func TestZSPMap(t *testing.T) {
	path := writeServerConfig(t, mapConfig)

	out, stderr, err := runLapse(t, "zsp", "map", "scratch/pooled", "--config", path, "-o", "json")
	if err != nil {
		t.Fatalf("zsp map scratch/pooled: %v\n%s", err, stderr)
	}
	var got struct {
		Entitlements []mappedEntitlement `json:"entitlements"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Entitlements) != 1 {
		t.Fatalf("output %s (%v)", out, err)
	}
	x := got.Entitlements[0].Exposure
	if x.Bound.D() != 30*time.Second || x.BoundBy != "pgbouncer" || x.Limit.D() != 5*time.Minute || x.Exceeded {
		t.Errorf("exposure = %+v, want bound 30s by pgbouncer within 5m", x)
	}
	names := []string{}
	for _, p := range x.Paths {
		names = append(names, p.Name+"/"+p.Source)
	}
	if strings.Join(names, ",") != "fake:account/connector,fake:sessions/connector,pgbouncer/config" {
		t.Errorf("paths = %v", names)
	}

	// The token target's consumer follows the feed: its poll bounds it.
	out, _, err = runLapse(t, "zsp", "map", "demo-api/read", "--config", path, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if x := got.Entitlements[0].Exposure; x.BoundBy != "consumer:orders-api" || x.Bound.D() != 2*time.Second {
		t.Errorf("token exposure = %+v", x)
	}

	// Everything, for people: exit 1 names the refused entitlement.
	out, _, err = runLapse(t, "zsp", "map", "--config", path)
	if err == nil || !strings.Contains(err.Error(), "scratch/cached") {
		t.Fatalf("zsp map: err %v, want one naming scratch/cached", err)
	}
	for _, s := range []string{"pgbouncer", "RECONNECT via admin console", "api-cache", "EXCEEDED: requests are refused", "consumer:orders-api", "within the limit"} {
		if !strings.Contains(out, s) {
			t.Errorf("the map does not show %q:\n%s", s, out)
		}
	}

	_, _, err = runLapse(t, "zsp", "map", "nope/none", "--config", path)
	if lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("unknown entitlement: %v, want %s", err, lapse.ENOTFOUND)
	}
}

// TestServerRefusesOverExposureLimit: through lapse server, the catalog
// shows each entitlement's exposure before anything is requested, and a
// request for one whose cache outlives the limit is refused with 403 and
// reason exposure_over_limit, naming the path.
func TestServerRefusesOverExposureLimit(t *testing.T) {
	path := writeServerConfig(t, mapConfig)
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
	for _, e := range list.Entitlements {
		if e.Name == "scratch/cached" && (e.Exposure == nil || !e.Exposure.Exceeded || e.Exposure.BoundBy != "api-cache") {
			t.Errorf("scratch/cached exposure = %+v", e.Exposure)
		}
	}
	var body api.ErrorBody
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "scratch/cached"}, &body); code != 403 {
		t.Fatalf("request: status %d, want 403", code)
	}
	if body.Error.Code != lapse.EFORBIDDEN || body.Error.Reason != lapse.ReasonExposureOverLimit || !strings.Contains(body.Error.Message, "api-cache") {
		t.Errorf("error = %+v", body.Error)
	}
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "scratch/pooled"}, &res); code != 201 || res.Grant == nil {
		t.Fatalf("request within the limit: status %d", code)
	}
}
