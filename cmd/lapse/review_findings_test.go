package main

import (
	"strings"
	"testing"

	"github.com/lapsehq/lapse/config"
)

// A reload applies the policy only: the broker keeps the targets and the
// escalation policy it started with. A reload that changes either must be
// refused, as one that adds or removes a target is, rather than reported
// as reloaded while the running server keeps the old settings — and, for
// escalation, serves admin-power entitlements with a tier the files no
// longer say (and records a version `lapse policy check` does not print).
func TestFindingReloadRefusesWhatOnlyARestartApplies(t *testing.T) {
	load := func(src string) *config.Config {
		t.Helper()
		cfg, err := config.Load(writeServerConfig(t, src))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tier := func(n string) string {
		return "escalation:\n  mode: highest_tier\n  approval: {required: " + n + ", approvers: [\"group:security\"]}\n"
	}
	running := load(serverConfig + tier("1"))

	if err := checkServerPolicy(load(serverConfig+tier("1")), running); err != nil {
		t.Fatalf("the same configuration: %v", err)
	}
	policyOnly := strings.Replace(serverConfig, "max_duration: 10m", "max_duration: 20m", 1)
	if err := checkServerPolicy(load(policyOnly+tier("1")), running); err != nil {
		t.Fatalf("a policy change: %v", err)
	}
	if err := checkServerPolicy(load(serverConfig+tier("2")), running); err == nil {
		t.Error("a reload that changes the escalation tier is accepted, and not applied")
	}
	moved := strings.Replace(serverConfig, "issuer: http://127.0.0.1:8700", "issuer: http://127.0.0.1:8701", 1)
	if err := checkServerPolicy(load(moved+tier("1")), running); err == nil {
		t.Error("a reload that changes a target's settings is accepted, and not applied")
	}
}
