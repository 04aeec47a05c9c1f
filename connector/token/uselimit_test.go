package token_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/token"
)

// TestUseLimit: a token with max_uses carries lapse_max_uses; IntrospectUse
// counts each active answer, the use past the limit is inactive and puts
// the token on the feed, and Introspect (Lapse's own checks) counts nothing.
func TestUseLimit(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	if !c.CountsUses() {
		t.Fatal("the token target does not count uses")
	}
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	req := grantReq(id, clk.Now().Add(10*time.Minute), nil)
	req.MaxUses = 3
	g := mustGrant(t, c, req)
	raw := g.Secret["token"]
	claims, _, err := verifyAgainstJWKS(c.JWKS(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := claims[token.ClaimMaxUses].(float64); !ok || n != 3 {
		t.Errorf("claim %s = %v, want 3", token.ClaimMaxUses, claims[token.ClaimMaxUses])
	}
	if g.Info["max_uses"] != "3" {
		t.Errorf("info max_uses = %q", g.Info["max_uses"])
	}
	// Lapse's own introspections are not uses.
	for range 5 {
		if in, err := c.Introspect(ctx, raw); err != nil || !in.Active || in.Uses != 0 || in.MaxUses != 3 {
			t.Fatalf("Introspect = %+v, %v", in, err)
		}
	}
	for use := int64(1); use <= 3; use++ {
		in, err := c.IntrospectUse(ctx, raw)
		if err != nil || !in.Active || in.Uses != use || in.MaxUses != 3 || in.UseLimitReached {
			t.Fatalf("use %d: %+v, %v", use, in, err)
		}
	}
	in, err := c.IntrospectUse(ctx, raw)
	if err != nil || in.Active || !in.UseLimitReached || in.GrantID != id || in.Jti != "" {
		t.Fatalf("use 4: %+v, %v; want inactive with the limit reached", in, err)
	}
	feed, err := c.Feed(ctx, 0, 0)
	if err != nil || len(feed) != 1 || feed[0].TokenID != id || !feed[0].ExpiresAt.Equal(req.ExpiresAt.Truncate(time.Second)) {
		t.Fatalf("feed = %+v, %v", feed, err)
	}
	// Inactive from now on, everywhere, and the limit is reported once.
	for _, fn := range []func(context.Context, string) (*token.Introspection, error){c.IntrospectUse, c.Introspect} {
		if in, err := fn(ctx, raw); err != nil || in.Active || in.UseLimitReached {
			t.Errorf("after the limit: %+v, %v", in, err)
		}
	}
	// The revocation that follows finds the same feed entry and verifies.
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	if feed, _ := c.Feed(ctx, 0, 0); len(feed) != 1 {
		t.Errorf("revoking after the limit added a feed entry: %+v", feed)
	}
	v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
	if err != nil || len(v.Checkpoints) != 1 || !v.Checkpoints[0].Gone {
		t.Errorf("Verify = %+v, %v", v, err)
	}

	// Without max_uses nothing is counted.
	free := mustGrant(t, c, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(10*time.Minute), nil))
	claims, _, _ = verifyAgainstJWKS(c.JWKS(), free.Secret["token"])
	if _, ok := claims[token.ClaimMaxUses]; ok {
		t.Error("a token without a limit carries lapse_max_uses")
	}
	for range 5 {
		if in, err := c.IntrospectUse(ctx, free.Secret["token"]); err != nil || !in.Active || in.Uses != 0 || in.MaxUses != 0 {
			t.Fatalf("unlimited token: %+v, %v", in, err)
		}
	}
	// A spec cannot set the claim.
	if err := c.ValidateSpec(map[string]any{"claims": map[string]any{token.ClaimMaxUses: 1000}}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("spec setting %s: %v", token.ClaimMaxUses, err)
	}
}

// TestUseLimitConcurrent: two replicas of one target introspect the same
// token at once; exactly max_uses answers are active, and exactly one
// reports the limit reached.
func TestUseLimitConcurrent(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	a := f.open(t, f.config())
	b := f.open(t, f.config()) // same data dir: the same key, another replica
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	req := grantReq(id, clk.Now().Add(10*time.Minute), nil)
	req.MaxUses = 10
	raw := mustGrant(t, a, req).Secret["token"]
	var mu sync.Mutex
	var active, reached int
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a
			if i%2 == 1 {
				c = b
			}
			in, err := c.IntrospectUse(ctx, raw)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if in.Active {
				active++
			}
			if in.UseLimitReached {
				reached++
			}
		}()
	}
	wg.Wait()
	if active != 10 || reached < 1 {
		t.Errorf("%d active answers (want 10), %d reported the limit (want at least 1)", active, reached)
	}
}
