package main

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse/zsp"
	"github.com/lapsehq/lapse/zsp/zsptest"
)

// zspTestConfig is a configuration with one target of each real kind on
// the machine's servers, each with an entitlement that needs a human
// approval (the canary skips it). unsafe weakens the MariaDB target.
func zspTestConfig(t *testing.T, unsafe bool) string {
	t.Helper()
	pg, maria, cache := zsptest.NewPostgres(t), zsptest.NewMariaDB(t), zsptest.NewRedis(t)
	return writeServerConfig(t, fmt.Sprintf(`data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
targets:
  pg:
    kind: postgres
    config: {dsn: %q, prefix: %s}
  maria:
    kind: mariadb
    config: {dsn: %q, prefix: %s, unsafe_skip_session_kill: %v}
  cache:
    kind: redis
    config:
      prefix: %s
      nodes: [{name: main, addr: %q}]
  api:
    kind: token
    config: {issuer: "http://127.0.0.1:8700", audience: api, generate_key: true}
entitlements:
  - {name: pg/read, target: pg, max_duration: 1h, approval: {required: 1, approvers: [bob]}, spec: {roles: [%s]}}
  - {name: maria/read, target: maria, max_duration: 1h, approval: {required: 1, approvers: [bob]}, spec: {roles: [%s]}}
  - {name: cache/read, target: cache, max_duration: 1h, approval: {required: 1, approvers: [bob]}, spec: {commands: [get], keys: ["lapsetest:*"]}}
  - {name: api/read, target: api, max_duration: 1h, approval: {required: 1, approvers: [bob]}}
  - {name: api/canary, target: api, max_duration: 5m, approval: {auto: true}, spec: {scopes: [canary]}}
zsp:
  canary:
    entitlements: [api/canary]
`, pg.DSN, pg.Prefix, maria.DSN, maria.Prefix, unsafe, cache.Prefix, cache.Addr, pg.Group, maria.Role))
}

// lapse zsp test passes against the local PostgreSQL, MariaDB and Redis
// (and the token target), with the canary entitlement from the
// configuration.
func TestZSPTestPasses(t *testing.T) {
	path := zspTestConfig(t, false)
	stdout, stderr, err := runLapse(t, "zsp", "test", "--config", path)
	if err != nil {
		t.Fatalf("lapse zsp test: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	if n := strings.Count(stdout, "PASSED"); n != 4 {
		t.Errorf("%d targets passed, want 4:\n%s", n, stdout)
	}
	if !strings.Contains(stdout, "api/canary") {
		t.Errorf("the configured canary entitlement was not used:\n%s", stdout)
	}
	stdout, _, err = runLapse(t, "zsp", "test", "pg", "cache", "-c", path, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ Results []*zsp.SessionResult }
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("json output: %v\n%s", err, stdout)
	}
	if len(out.Results) != 2 || out.Results[0].Target != "pg" || !out.Results[0].Passed() || !out.Results[1].Passed() {
		t.Errorf("json results: %s", stdout)
	}
	if _, _, err := runLapse(t, "zsp", "test", "nope", "-c", path); err == nil || exitStatus(err) != exitUsage {
		t.Errorf("unknown target: %v, want a usage error", err)
	}
}

// Pointed at a deliberately weakened configuration, lapse zsp test exits
// non-zero and names the session that survived.
func TestZSPTestFailsOnWeakenedConfiguration(t *testing.T) {
	path := zspTestConfig(t, true)
	stdout, stderr, err := runLapse(t, "zsp", "test", "maria", "pg", "--config", path)
	if err == nil {
		t.Fatalf("lapse zsp test passed a weakened configuration:\n%s", stdout)
	}
	if st := exitStatus(err); st != exitError {
		t.Errorf("exit status %d, want %d", st, exitError)
	}
	if !strings.Contains(stdout, "SURVIVED: mariadb connection") || !strings.Contains(stdout, "FAILED") {
		t.Errorf("output does not name the surviving session:\n%s", stdout)
	}
	if strings.Count(stdout, "PASSED") != 1 {
		t.Errorf("pg should still pass:\n%s", stdout)
	}
	if !strings.Contains(stderr, "UNSAFE") {
		t.Errorf("the unsafe option was not logged loudly:\n%s", stderr)
	}
}

// The scheduled canary runs inside lapse server when zsp.canary.interval
// is set, and reports to the metrics.
func TestServerRunsTheCanary(t *testing.T) {
	path := writeServerConfig(t, strings.Replace(serverConfig, "entitlements:", "zsp:\n  canary: {interval: 1s}\nentitlements:", 1))
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := metricsText(t, r.url)
		if passedRuns.MatchString(m) {
			if !strings.Contains(m, `lapse_canary_runs_total{result="skipped",target="scratch"}`) {
				t.Error("the fake target (no Exerciser) is not counted as skipped")
			}
			if !strings.Contains(m, `lapse_canary_denial_seconds{check="session",target="demo-api"}`) {
				t.Error("no denial time measured")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no passed canary run in the metrics:\n%s\nstderr:\n%s", m, r.stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// passedRuns matches a passed-canary counter of at least one run.
var passedRuns = regexp.MustCompile(`(?m)^lapse_canary_runs_total\{result="passed",target="demo-api"\} [1-9]`)

// exitStatus is the exit status of err, printing nothing.
func exitStatus(err error) int {
	m := NewMain()
	m.Stderr = io.Discard
	return m.ExitStatus(err)
}
