package token_test

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// TestAdminPowersForLapseItself: scopes named like Lapse's own approve,
// revoke and admin scopes are flagged only on a token whose audience is
// this Lapse server; for another API they are that API's business.
func TestAdminPowersForLapseItself(t *testing.T) {
	f := newFixture(t, newClock())
	spec := map[string]any{"scopes": []any{"approve", "lapse:admin", "read", "payments:refund"}}

	other := f.open(t, f.config())
	if got, err := other.AdminPowers(context.Background(), spec); err != nil || len(got) != 0 {
		t.Errorf("audience %s: %q, %v; want nothing flagged", audience, got, err)
	}

	cfg := f.config()
	cfg.Audience = strings.TrimSuffix(issuer, "/") + "/v1"
	self := f.open(t, cfg)
	got, err := self.AdminPowers(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.HasPrefix(got[0], "scope approve on a token for Lapse's own API") || !strings.HasPrefix(got[1], "scope lapse:admin") {
		t.Errorf("audience %s: %q, want approve and lapse:admin flagged", cfg.Audience, got)
	}
}

// TestGrantedGroups: the groups claim, as a string or a list, whatever the
// audience.
func TestGrantedGroups(t *testing.T) {
	f := newFixture(t, newClock())
	c := f.open(t, f.config())
	if got := c.GrantedGroups(map[string]any{"claims": map[string]any{"groups": []any{"security", "ops"}}}); !slices.Equal(got, []string{"security", "ops"}) {
		t.Errorf("list: %q", got)
	}
	if got := c.GrantedGroups(map[string]any{"claims": map[string]any{"groups": "security"}}); !slices.Equal(got, []string{"security"}) {
		t.Errorf("string: %q", got)
	}
	if got := c.GrantedGroups(map[string]any{"scopes": []any{"security"}}); len(got) != 0 {
		t.Errorf("no groups claim: %q", got)
	}
}
