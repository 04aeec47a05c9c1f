package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The server reloads its policy when a policy file changes; a policy that
// does not compile never replaces the one in force.
func TestServerReloadsPolicyOnChange(t *testing.T) {
	cfgPath := writeServerConfig(t, serverConfig+"policy:\n  files: [policy.d]\n")
	dir := filepath.Dir(cfgPath)
	pd := filepath.Join(dir, "policy.d")
	if err := os.Mkdir(pd, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(src string) {
		t.Helper()
		// Written aside and renamed, as editors and deploy tools do.
		tmp := filepath.Join(dir, "next.yaml")
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(pd, "extra.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write("groups:\n  leads: [carol]\n")
	r := startLapse(t, "server", "--config", cfgPath, "--listen", "127.0.0.1:0")
	defer r.stop()

	waitMetric := func(name string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m := metricsText(t, r.url)
			if strings.Contains(m, name) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s in the metrics:\n%s\nstderr:\n%s", name, m, r.stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	write(`entitlements:
  - name: scratch/owner
    target: scratch
    max_duration: 1h
    condition: 'request.duration <= duration("30m")'
    approval:
      stages:
        - name: leads
          groups: [{required: 1, approvers: ["group:leads"]}]
`)
	waitMetric("lapse_policy_reloads_total 1")

	// A broken policy: the CEL does not compile. It is refused and
	// counted; the policy in force stays.
	write(`entitlements:
  - name: scratch/owner
    target: scratch
    max_duration: 1h
    condition: 'request.duration <= '
    approval: {auto: true}
`)
	waitMetric("lapse_policy_reload_failures_total 1")
	if !strings.Contains(r.stderr.String(), "extra.yaml:5") {
		t.Errorf("the refused reload does not name the file and line:\n%s", r.stderr.String())
	}
	m := metricsText(t, r.url)
	if !strings.Contains(m, "lapse_policy_reloads_total 1") {
		t.Errorf("a broken policy was put in force:\n%s", m)
	}
}
