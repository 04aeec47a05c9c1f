package config_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse/authn/oidc"
	"github.com/lapsehq/lapse/config"
)

// oidcBase extends base with two identity providers. Line numbers in
// TestOIDCConfigErrors count from base's first line (base has 12 lines).
const oidcBase = base + `oidc:
  issuers:
    - name: corp
      issuer: https://login.example.com
      audiences: [lapse-cli, lapse-web]
      algorithms: [RS256]
      clock_skew: 1m
      max_age: 8h
      ca_file: certs/idp-ca.pem
      groups_prefix: "corp:"
      scope_rules:
        - group: "corp:approvers"
          scopes: [approve]
    - name: partners
      issuer: https://partners.example.com/oauth2
      audiences: [lapse]
      id_claim: sub
      scopes: []
`

func TestOIDCConfigParses(t *testing.T) {
	c := mustParse(t, oidcBase)
	if len(c.OIDC.Issuers) != 2 {
		t.Fatalf("issuers = %+v", c.OIDC.Issuers)
	}
	corp := c.OIDC.Issuers[0]
	if corp.CAFile != filepath.Join(c.Dir, "certs", "idp-ca.pem") {
		t.Errorf("ca_file = %q; want it relative to the configuration", corp.CAFile)
	}
	if corp.ClockSkew != time.Minute || corp.MaxAge != 8*time.Hour || !slices.Equal(corp.Audiences, []string{"lapse-cli", "lapse-web"}) {
		t.Errorf("corp = %+v", corp)
	}
	if corp.Scopes != nil || len(corp.ScopeRules) != 1 || corp.ScopeRules[0].Group != "corp:approvers" {
		t.Errorf("corp scopes = %q, rules = %+v; want the default scopes and one rule", corp.Scopes, corp.ScopeRules)
	}
	partners := c.OIDC.Issuers[1]
	if partners.IDClaim != oidc.ClaimSub || partners.Scopes == nil || len(partners.Scopes) != 0 {
		t.Errorf("partners = %+v; want id_claim sub and explicitly no fixed scopes", partners)
	}
	if c := mustParse(t, base); len(c.OIDC.Issuers) != 0 {
		t.Errorf("no oidc section: %+v", c.OIDC)
	}
}

// TestOIDCConfigErrors: mistakes in the oidc section are reported at their
// line and field, all in one run.
func TestOIDCConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(string) string
		line int
		path string
	}{
		{"HMAC algorithm", func(s string) string { return strings.Replace(s, "[RS256]", "[RS256, HS256]", 1) }, 18, "oidc.issuers[0].algorithms[1]"},
		{"unknown key", func(s string) string { return strings.Replace(s, "audiences: [lapse]", "audience: [lapse]", 1) }, 28, "oidc.issuers[1].audience"},
		{"no audiences", func(s string) string { return strings.Replace(s, "      audiences: [lapse]\n", "", 1) }, 26, "oidc.issuers[1].audiences"},
		{"plain http", func(s string) string { return strings.Replace(s, "https://partners", "http://partners", 1) }, 27, "oidc.issuers[1].issuer"},
		{"duplicate name", func(s string) string { return strings.Replace(s, "name: partners", "name: corp", 1) }, 26, "oidc.issuers[1].name"},
		{"bad duration", func(s string) string { return strings.Replace(s, "clock_skew: 1m", "clock_skew: a bit", 1) }, 19, "oidc.issuers[0].clock_skew"},
		{"zero skew", func(s string) string { return strings.Replace(s, "clock_skew: 1m", "clock_skew: 0s", 1) }, 19, "oidc.issuers[0].clock_skew"},
		{"skew too large", func(s string) string { return strings.Replace(s, "clock_skew: 1m", "clock_skew: 1h", 1) }, 19, "oidc.issuers[0].clock_skew"},
		{"unknown scope", func(s string) string { return strings.Replace(s, "scopes: [approve]", "scopes: [approve, sudo]", 1) }, 25, "oidc.issuers[0].scope_rules[0].scopes[1]"},
		{"group not normalised", func(s string) string { return strings.Replace(s, `"corp:approvers"`, `"Corp:Approvers"`, 1) }, 24, "oidc.issuers[0].scope_rules[0].group"},
		{"prefix with sub", func(s string) string {
			return strings.Replace(s, "id_claim: sub", "id_claim: sub\n      id_prefix: \"p:\"", 1)
		}, 30, "oidc.issuers[1].id_prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse(filepath.Join(t.TempDir(), "lapse.yaml"), []byte(tt.edit(oidcBase)))
			ce := configError(t, err)
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("error at line %d field %q; want line %d field %q: %v", ce.Line, ce.Path, tt.line, tt.path, err)
			}
		})
	}
	src := strings.Replace(strings.Replace(oidcBase, "[RS256]", "[none]", 1), "https://partners", "http://partners", 1)
	_, err := config.Parse(filepath.Join(t.TempDir(), "lapse.yaml"), []byte(src))
	if msg := err.Error(); !strings.Contains(msg, "oidc.issuers[0].algorithms[0]") || !strings.Contains(msg, "oidc.issuers[1].issuer") {
		t.Errorf("want both errors reported: %v", err)
	}
}
