package config_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse/config"
)

// escalationBase has the escalation block in its long form. Line numbers
// in TestEscalationErrors count from its first line.
const escalationBase = `sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  db: {kind: fake}
escalation:
  mode: refuse
  approval: {required: 2, approvers: ["group:Security"]}
  acknowledge:
    - entitlement: db/admin
      reason: "the on-call DBA needs CREATEROLE for failovers"
entitlements:
  - name: db/read
    target: db
    max_duration: 1h
    approval: {auto: true}
  - name: db/admin
    target: db
    max_duration: 1h
    approval: {required: 1, approvers: [bob]}
`

func TestEscalationParse(t *testing.T) {
	c := mustParse(t, escalationBase)
	x := c.Escalation
	if x.Mode != config.EscalationRefuse || x.Approval == nil || x.Approval.Auto || x.Approval.Required != 2 || !slices.Equal(x.Approval.Approvers, []string{"group:security"}) {
		t.Errorf("escalation = %+v, tier %+v", x, x.Approval)
	}
	if len(x.Acknowledged) != 1 || !strings.Contains(x.Acknowledged["db/admin"], "CREATEROLE") {
		t.Errorf("acknowledged = %v", x.Acknowledged)
	}

	// The default refuses; the short form names the mode alone.
	if x := mustParse(t, base).Escalation; x.Mode != config.EscalationRefuse || x.Approval != nil || len(x.Acknowledged) != 0 {
		t.Errorf("default = %+v, want refuse", x)
	}
	short := strings.Replace(escalationBase, "escalation:\n  mode: refuse\n  approval: {required: 2, approvers: [\"group:Security\"]}\n  acknowledge:\n    - entitlement: db/admin\n      reason: \"the on-call DBA needs CREATEROLE for failovers\"\n", "escalation: refuse\n", 1)
	if x := mustParse(t, short).Escalation; x.Mode != config.EscalationRefuse || x.Approval != nil {
		t.Errorf("short form = %+v", x)
	}
	tier := strings.Replace(escalationBase, "mode: refuse", "mode: highest_tier", 1)
	if x := mustParse(t, tier).Escalation; x.Mode != config.EscalationHighestTier || x.Approval.Required != 2 {
		t.Errorf("highest_tier = %+v", x)
	}
}

func TestEscalationErrors(t *testing.T) {
	noAck := strings.Replace(escalationBase, "  acknowledge:\n    - entitlement: db/admin\n      reason: \"the on-call DBA needs CREATEROLE for failovers\"\n", "", 1)
	tests := []struct {
		name string
		src  string
		line int
		path string
	}{
		{"unknown key", strings.Replace(escalationBase, "  mode: refuse\n", "  mod: refuse\n", 1), 5, "escalation.mod"},
		{"bad mode", strings.Replace(escalationBase, "mode: refuse", "mode: allow", 1), 5, "escalation.mode"},
		{"bad short mode", strings.Replace(noAck, "escalation:\n  mode: refuse\n  approval: {required: 2, approvers: [\"group:Security\"]}\n", "escalation: allow\n", 1), 4, "escalation"},
		{"highest_tier without a tier", strings.Replace(strings.Replace(noAck, "  approval: {required: 2, approvers: [\"group:Security\"]}\n", "", 1), "mode: refuse", "mode: highest_tier", 1), 4, "escalation.approval"},
		{"tier unused in refuse mode", noAck, 6, "escalation.approval"},
		{"automatic tier", strings.Replace(escalationBase, "{required: 2, approvers: [\"group:Security\"]}", "{auto: true}", 1), 6, "escalation.approval.auto"},
		{"tier with stages", strings.Replace(escalationBase, "{required: 2, approvers: [\"group:Security\"]}", "{auto_when: \"true\", required: 2, approvers: [\"group:security\"]}", 1), 6, "escalation.approval"},
		{"tier quorum out of range", strings.Replace(escalationBase, "required: 2", "required: 11", 1), 6, "escalation.approval.required"},
		{"tier quorum impossible", strings.Replace(escalationBase, "[\"group:Security\"]", "[carol]", 1), 6, "escalation.approval.required"},
		{"acknowledgement without a tier", strings.Replace(escalationBase, "  approval: {required: 2, approvers: [\"group:Security\"]}\n", "", 1), 7, "escalation.acknowledge[0]"},
		{"acknowledges an unknown entitlement", strings.Replace(escalationBase, "entitlement: db/admin", "entitlement: db/admn", 1), 8, "escalation.acknowledge[0].entitlement"},
		{"acknowledgement without a reason", strings.Replace(escalationBase, "      reason: \"the on-call DBA needs CREATEROLE for failovers\"\n", "", 1), 8, "escalation.acknowledge[0].reason"},
		{"acknowledged twice", strings.Replace(escalationBase, "      reason: \"the on-call DBA needs CREATEROLE for failovers\"\n", "      reason: once\n    - {entitlement: db/admin, reason: twice}\n", 1), 10, "escalation.acknowledge[1].entitlement"},
		{"control character in a reason", strings.Replace(escalationBase, "for failovers", `for\u001b[2J`, 1), 9, "escalation.acknowledge[0].reason"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("lapse.yaml", []byte(tt.src))
			ce := configError(t, err)
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, err)
			}
		})
	}
}

// TestEscalationDocExamples parses each escalation example of the
// documentation (one per paragraph of its block), so they cannot rot.
func TestEscalationDocExamples(t *testing.T) {
	const catalog = `sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  prod-db: {kind: fake}
entitlements:
  - {name: prod-db/admin, target: prod-db, max_duration: 1h, approval: {required: 1, approvers: [bob]}}
`
	b, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, block := range strings.Split(string(b), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if !strings.HasPrefix(block, "escalation:") {
			continue
		}
		for _, example := range strings.Split(block, "\n\n") {
			found++
			x := mustParse(t, catalog+example+"\n").Escalation
			if strings.Contains(example, "acknowledge:") && x.Acknowledged["prod-db/admin"] == "" {
				t.Errorf("example %q acknowledges nothing", example)
			}
		}
	}
	if found != 3 {
		t.Errorf("configuration.md has %d escalation examples, want 3", found)
	}
}
