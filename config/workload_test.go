package config_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse/config"
)

// workloadBase extends base with two trusted issuers. Line numbers in
// TestWorkloadErrors count from base's first line (base has 12 lines).
const workloadBase = base + `workload:
  issuers:
    - name: k8s
      issuer: https://kubernetes.default.svc
      jwks_file: keys/k8s-jwks.json
      audiences: [lapse]
      algorithms: [RS256, ES256]
      leeway: 0s
      principal: '"k8s:" + claims["kubernetes.io"].namespace + "/" + claims["kubernetes.io"].serviceaccount.name'
      groups: '["k8s-ns:" + claims["kubernetes.io"].namespace]'
    - name: github
      issuer: https://token.actions.githubusercontent.com
      discovery: true
      audiences: [https://lapse.example.com]
      principal: '"ci:" + claims.repository'
      require: 'claims.repository_owner == "acme"'
`

func TestWorkloadParses(t *testing.T) {
	c := mustParse(t, workloadBase)
	if len(c.Workload.Issuers) != 2 {
		t.Fatalf("issuers = %+v", c.Workload.Issuers)
	}
	k8s := c.Workload.Issuers[0]
	if k8s.JWKSFile != filepath.Join(c.Dir, "keys", "k8s-jwks.json") {
		t.Errorf("jwks_file = %q; want it relative to the configuration", k8s.JWKSFile)
	}
	if k8s.Leeway == nil || time.Duration(*k8s.Leeway) != 0 {
		t.Errorf("leeway = %v; want an explicit 0", k8s.Leeway)
	}
	if gh := c.Workload.Issuers[1]; !gh.Discovery || gh.Leeway != nil || gh.Require == "" {
		t.Errorf("github = %+v", gh)
	}
	if c := mustParse(t, base); len(c.Workload.Issuers) != 0 {
		t.Errorf("no workload section: %+v", c.Workload)
	}
}

// TestWorkloadErrors: mistakes in the workload section, including CEL
// that does not compile or has the wrong type, are reported at their line
// and field, all in one run.
func TestWorkloadErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(string) string
		line int
		path string
	}{
		{"CEL does not compile", func(s string) string {
			return strings.Replace(s, `'"ci:" + claims.repository'`, `'"ci:" + claim.repository'`, 1)
		}, 27, "workload.issuers[1].principal"},
		{"CEL has the wrong type", func(s string) string {
			return strings.Replace(s, `'claims.repository_owner == "acme"'`, `'claims.repository_owner + "x"'`, 1)
		}, 28, "workload.issuers[1].require"},
		{"groups is not a list", func(s string) string {
			return strings.Replace(s, `'["k8s-ns:" + claims["kubernetes.io"].namespace]'`, `'"k8s-ns"'`, 1)
		}, 22, "workload.issuers[0].groups"},
		{"HMAC algorithm", func(s string) string { return strings.Replace(s, "[RS256, ES256]", "[RS256, HS256]", 1) }, 19, "workload.issuers[0].algorithms[1]"},
		{"unknown key", func(s string) string { return strings.Replace(s, "audiences: [lapse]", "audience: [lapse]", 1) }, 18, "workload.issuers[0].audience"},
		{"two key sources", func(s string) string {
			return strings.Replace(s, "      discovery: true\n", "      discovery: true\n      jwks_url: https://x.example.com/keys\n", 1)
		}, 26, "workload.issuers[1].jwks_url"},
		{"duplicate name", func(s string) string { return strings.Replace(s, "name: github", "name: k8s", 1) }, 23, "workload.issuers[1].name"},
		{"bad leeway", func(s string) string { return strings.Replace(s, "leeway: 0s", "leeway: a while", 1) }, 20, "workload.issuers[0].leeway"},
		{"no audiences", func(s string) string {
			return strings.Replace(s, "      audiences: [https://lapse.example.com]\n", "", 1)
		}, 23, "workload.issuers[1].audiences"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse(filepath.Join(t.TempDir(), "lapse.yaml"), []byte(tt.edit(workloadBase)))
			ce := configError(t, err)
			if ce.Line != tt.line || (tt.path != "" && ce.Path != tt.path) {
				t.Errorf("error at line %d field %q; want line %d field %q: %v", ce.Line, ce.Path, tt.line, tt.path, err)
			}
			if !strings.Contains(err.Error(), "lapse.yaml:") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	// Several mistakes are reported together.
	src := strings.Replace(strings.Replace(workloadBase, "claims.repository'", "claim.repository'", 1), "[RS256, ES256]", "[none]", 1)
	_, err := config.Parse(filepath.Join(t.TempDir(), "lapse.yaml"), []byte(src))
	if msg := err.Error(); !strings.Contains(msg, "algorithms[0]") || !strings.Contains(msg, "issuers[1].principal") {
		t.Errorf("want both errors reported: %v", err)
	}
}
