package token_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// The token target is exercised the way an API server uses a token: Use
// verifies it against the JWKS and asks introspection; Hold caches it and
// follows the revocation feed with the real follower. After Revoke, both
// refuse it; a token of another target's key is refused by Use.
func TestExerciseUseAndHold(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, lapse.SystemClock{})
	c := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, time.Now())
	g, err := c.Grant(ctx, &connector.GrantRequest{GrantID: id, Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService},
		Entitlement: "api/read", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	req := &connector.ExerciseRequest{GrantID: id, Secret: g.Secret, Info: g.Info}
	if err := c.Use(ctx, req); err != nil {
		t.Fatalf("Use of an active token: %v", err)
	}
	held, err := c.Hold(ctx, req)
	if err != nil {
		t.Fatalf("Hold: %v", err)
	}
	defer held.Close()
	if err := held.Check(ctx); err != nil {
		t.Fatalf("Check of an active token: %v", err)
	}
	if d := held.Describe(); !strings.Contains(d, id) || strings.Contains(d, g.Secret["token"]) {
		t.Errorf("Describe = %q: want the jti and never the token", d)
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	if err := c.Use(ctx, req); !connector.Denied(err) {
		t.Errorf("Use after Revoke = %v, want a denial", err)
	}
	if err := held.Check(ctx); !connector.Denied(err) {
		t.Errorf("Check after Revoke = %v, want a denial", err)
	}

	other := newFixture(t, lapse.SystemClock{})
	oc := other.open(t, other.config())
	og, err := oc.Grant(ctx, &connector.GrantRequest{GrantID: lapse.NewID(lapse.PrefixGrant, time.Now()), Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService},
		Entitlement: "api/read", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Use(ctx, &connector.ExerciseRequest{Secret: og.Secret}); !connector.Denied(err) {
		t.Errorf("Use of another key's token = %v, want a denial", err)
	}
	if err := c.Use(ctx, &connector.ExerciseRequest{}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Use without a token = %v, want invalid", err)
	}
}
