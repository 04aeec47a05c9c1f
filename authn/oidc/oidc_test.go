package oidc_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/oidc"
	"github.com/lapsehq/lapse/authn/oidc/oidctest"
	"github.com/lapsehq/lapse/internal/fakeclock"
)

const clientID = "lapse-cli"

// testProvider is a running provider with the people the tests sign in.
func testProvider(t *testing.T) *oidctest.Provider {
	t.Helper()
	p := oidctest.New(t, oidctest.Options{IDTokenLifetime: 10 * time.Minute})
	p.AddClient(clientID)
	p.AddClient("other-app")
	p.AddUser(oidctest.User{ID: "u-alice", Email: "Alice@Example.com", EmailVerified: true, Name: "Alice Liddell", Groups: []string{"Developers", "approvers", "has space"}})
	p.AddUser(oidctest.User{ID: "u-mallory", Email: "ceo@example.com", EmailVerified: false, Name: "Not The CEO"})
	return p
}

func issuerConfig(p *oidctest.Provider) oidc.IssuerConfig {
	return oidc.IssuerConfig{
		Name:       "corp",
		Issuer:     p.URL,
		Audiences:  []string{clientID},
		ScopeRules: []oidc.ScopeRule{{Group: "approvers", Scopes: []string{lapse.ScopeApprove}}},
	}
}

// newVerifier builds a verifier whose clock starts now: the provider
// signs with the real time.
func newVerifier(t *testing.T, issuers ...oidc.IssuerConfig) (*oidc.Verifier, *fakeclock.Clock) {
	t.Helper()
	clock := fakeclock.New(time.Now())
	v, err := oidc.New(issuers, oidc.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return v, clock
}

func wantRefused(t *testing.T, p *lapse.Principal, err error, code, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted as %+v; want %s (%s)", p, code, reason)
	}
	if lapse.ErrorCode(err) != code || (reason != "" && lapse.ErrorReason(err) != reason) {
		t.Fatalf("error %v: code %q reason %q; want %q %q", err, lapse.ErrorCode(err), lapse.ErrorReason(err), code, reason)
	}
}

// TestOIDCValidTokenMapsClaims: an ID token from the provider signs the
// person in, with their verified email as the ID, normalised, their valid
// groups, the issuer's scopes and the scopes of their groups' rules.
func TestOIDCValidTokenMapsClaims(t *testing.T) {
	p := testProvider(t)
	v, _ := newVerifier(t, issuerConfig(p))
	tok := p.IDToken(t, clientID, "u-alice")
	got, err := v.Authenticate(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "alice@example.com" || got.Kind != lapse.KindHuman || got.Name != "Alice Liddell" {
		t.Errorf("principal = %+v", got)
	}
	if !slices.Equal(got.Groups, []string{"developers", "approvers"}) {
		t.Errorf("groups = %q; want the valid ones, normalised", got.Groups)
	}
	if !slices.Equal(got.Scopes, []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove}) {
		t.Errorf("scopes = %q", got.Scopes)
	}
	if !strings.HasPrefix(got.CredentialID, "oidc:corp:") || strings.Contains(got.CredentialID, tok) || strings.Contains(tok, strings.TrimPrefix(got.CredentialID, "oidc:corp:")) {
		t.Errorf("credential ID %q must name the token without being part of it", got.CredentialID)
	}
	again, err := v.Authenticate(context.Background(), tok)
	if err != nil || again.CredentialID != got.CredentialID {
		t.Errorf("the same token again: %v, %q; want the same credential ID", err, again)
	}
}

// TestOIDCClaimMappings: sub (prefixed by the issuer's name), another
// claim with a prefix, fixed scopes, prefixed groups.
func TestOIDCClaimMappings(t *testing.T) {
	p := testProvider(t)
	tok := p.IDToken(t, clientID, "u-alice")
	for _, tc := range []struct {
		name   string
		edit   func(*oidc.IssuerConfig)
		id     string
		groups []string
		scopes []string
	}{
		{"sub", func(c *oidc.IssuerConfig) { c.IDClaim = oidc.ClaimSub }, "corp:u-alice", []string{"developers", "approvers"}, []string{"read", "request", "approve"}},
		{"other claim with prefix", func(c *oidc.IssuerConfig) { c.IDClaim, c.IDPrefix = "name", "x:" }, "", nil, nil},
		{"groups prefix, rule on the prefixed name", func(c *oidc.IssuerConfig) {
			c.GroupsPrefix = "corp:"
			c.ScopeRules = []oidc.ScopeRule{{Group: "corp:approvers", Scopes: []string{"approve", "revoke"}}}
		}, "alice@example.com", []string{"corp:developers", "corp:approvers"}, []string{"read", "request", "approve", "revoke"}},
		{"fixed scopes none", func(c *oidc.IssuerConfig) { c.Scopes, c.ScopeRules = []string{}, nil }, "alice@example.com", []string{"developers", "approvers"}, []string{}},
		{"another groups claim", func(c *oidc.IssuerConfig) { c.GroupsClaim = "roles" }, "alice@example.com", nil, []string{"read", "request"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := issuerConfig(p)
			tc.edit(&cfg)
			v, _ := newVerifier(t, cfg)
			got, err := v.Authenticate(context.Background(), tok)
			if tc.id == "" {
				// "Alice Liddell" holds a space: not an identifier.
				wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonMapping)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tc.id || !slices.Equal(got.Groups, tc.groups) || !slices.Equal(got.Scopes, tc.scopes) {
				t.Errorf("got %q %q %q; want %q %q %q", got.ID, got.Groups, got.Scopes, tc.id, tc.groups, tc.scopes)
			}
		})
	}
}

// TestOIDCRefusals: every token that must not sign anybody in is refused
// with EUNAUTHORIZED and the reason of the check that failed.
func TestOIDCRefusals(t *testing.T) {
	p := testProvider(t)
	other := oidctest.New(t, oidctest.Options{})
	other.AddClient(clientID)
	other.AddUser(oidctest.User{ID: "u-alice", Email: "alice@example.com", EmailVerified: true})
	good := p.IDToken(t, clientID, "u-alice")

	t.Run("wrong audience", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		got, err := v.Authenticate(context.Background(), p.IDToken(t, "other-app", "u-alice"))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonAudience)
	})
	t.Run("issuer not trusted", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		got, err := v.Authenticate(context.Background(), other.IDToken(t, clientID, "u-alice"))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonIssuer)
	})
	t.Run("another issuer's key under a trusted iss", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		claims := payload(t, good)
		got, err := v.Authenticate(context.Background(), sign(t, jose.RS256, other.Key, p.KeyID, claims))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonSignature)
	})
	t.Run("expired", func(t *testing.T) {
		v, clock := newVerifier(t, issuerConfig(p))
		clock.Advance(10*time.Minute + oidc.DefaultClockSkew)
		got, err := v.Authenticate(context.Background(), good)
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonExpired)
	})
	t.Run("within the clock skew", func(t *testing.T) {
		v, clock := newVerifier(t, issuerConfig(p))
		clock.Advance(10*time.Minute + oidc.DefaultClockSkew/2)
		if _, err := v.Authenticate(context.Background(), good); err != nil {
			t.Fatalf("a token just past exp, within the skew: %v", err)
		}
	})
	t.Run("issued in the future", func(t *testing.T) {
		v, clock := newVerifier(t, issuerConfig(p))
		clock.Advance(-time.Minute)
		got, err := v.Authenticate(context.Background(), good)
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonNotYetValid)
	})
	t.Run("older than max_age", func(t *testing.T) {
		cfg := issuerConfig(p)
		cfg.MaxAge = 2 * time.Minute
		v, clock := newVerifier(t, cfg)
		clock.Advance(3 * time.Minute)
		got, err := v.Authenticate(context.Background(), good)
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonTooOld)
	})
	t.Run("HS256", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		secret := make([]byte, 32)
		rand.Read(secret)
		got, err := v.Authenticate(context.Background(), sign(t, jose.HS256, secret, "", payload(t, good)))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonAlgorithm)
	})
	t.Run("none", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		parts := strings.Split(good, ".")
		none := b64(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + parts[1] + "."
		got, err := v.Authenticate(context.Background(), none)
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, "")
		got, err = v.Authenticate(context.Background(), none+parts[2])
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonAlgorithm)
	})
	t.Run("alg not in the issuer's list", func(t *testing.T) {
		cfg := issuerConfig(p)
		cfg.Algorithms = []string{"ES256"}
		v, _ := newVerifier(t, cfg)
		got, err := v.Authenticate(context.Background(), good)
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonAlgorithm)
	})
	t.Run("tampered signature", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		parts := strings.Split(good, ".")
		sig := []byte(parts[2])
		sig[10] = map[bool]byte{true: 'B', false: 'A'}[sig[10] == 'A']
		got, err := v.Authenticate(context.Background(), parts[0]+"."+parts[1]+"."+string(sig))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonSignature)
	})
	t.Run("tampered claims", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		parts := strings.Split(good, ".")
		claims := payload(t, good)
		claims["email"] = "admin@example.com"
		got, err := v.Authenticate(context.Background(), parts[0]+"."+b64(t, claims)+"."+parts[2])
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonSignature)
	})
	t.Run("unverified email", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		got, err := v.Authenticate(context.Background(), p.IDToken(t, clientID, "u-mallory"))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonEmailNotVerified)
	})
	t.Run("no email scope", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		got, err := v.Authenticate(context.Background(), p.IDToken(t, clientID, "u-alice", "openid"))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonMapping)
	})
	t.Run("key named in the header", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		parts := strings.Split(good, ".")
		h := map[string]any{"alg": "RS256", "kid": p.KeyID, "jku": "https://attacker.example/keys"}
		got, err := v.Authenticate(context.Background(), b64(t, h)+"."+parts[1]+"."+parts[2])
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonKeyHeader)
	})
	t.Run("access token", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		parts := strings.Split(good, ".")
		h := map[string]any{"alg": "RS256", "kid": p.KeyID, "typ": "at+jwt"}
		got, err := v.Authenticate(context.Background(), b64(t, h)+"."+parts[1]+"."+parts[2])
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonNotIDToken)
	})
	t.Run("unknown key", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		got, err := v.Authenticate(context.Background(), sign(t, jose.RS256, p.Key, "rotated-away", payload(t, good)))
		wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonUnknownKey)
	})
	t.Run("garbage", func(t *testing.T) {
		v, _ := newVerifier(t, issuerConfig(p))
		for _, s := range []string{"", "a.b.c", "lapse_abc", strings.Repeat("a", oidc.MaxTokenLength+1)} {
			got, err := v.Authenticate(context.Background(), s)
			wantRefused(t, got, err, lapse.EUNAUTHORIZED, oidc.ReasonMalformed)
		}
	})
}

// TestOIDCNoTokenInErrors: no refusal's message or cause quotes the token
// or its signature.
func TestOIDCNoTokenInErrors(t *testing.T) {
	p := testProvider(t)
	v, clock := newVerifier(t, issuerConfig(p))
	tok := p.IDToken(t, "other-app", "u-alice")
	clock.Advance(time.Hour)
	sig := tok[strings.LastIndex(tok, ".")+1:]
	_, err := v.Authenticate(context.Background(), tok)
	if err == nil || strings.Contains(err.Error(), sig) || strings.Contains(lapse.ErrorMessage(err), sig) {
		t.Fatalf("error %v quotes the token", err)
	}
}

// TestOIDCUnreachableIssuer: an identity provider that is down when keys
// are first needed makes its tokens EUNAVAILABLE, not refused; building
// the verifier needs no network at all.
func TestOIDCUnreachableIssuer(t *testing.T) {
	p := testProvider(t)
	tok := p.IDToken(t, clientID, "u-alice")
	v, clock := newVerifier(t, issuerConfig(p))
	p.Server.Close()
	got, err := v.Authenticate(context.Background(), tok)
	wantRefused(t, got, err, lapse.EUNAVAILABLE, "")

	// Keys fetched once stay usable while the provider is down.
	q := testProvider(t)
	tok = q.IDToken(t, clientID, "u-alice")
	v, clock = newVerifier(t, issuerConfig(q))
	if _, err := v.Authenticate(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	q.Server.Close()
	clock.Advance(oidc.DefaultKeyMaxAge + time.Second)
	if _, err := v.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("with the keys it had: %v", err)
	}
}

// TestOIDCConfigValidation: every mistake names its field.
func TestOIDCConfigValidation(t *testing.T) {
	good := oidc.IssuerConfig{Name: "corp", Issuer: "https://login.example.com", Audiences: []string{"lapse"}}
	for _, tc := range []struct {
		edit  func(*oidc.IssuerConfig)
		field string
	}{
		{func(c *oidc.IssuerConfig) { c.Name = "Corp" }, "name"},
		{func(c *oidc.IssuerConfig) { c.Issuer = "http://login.example.com" }, "issuer"},
		{func(c *oidc.IssuerConfig) { c.Issuer = "" }, "issuer"},
		{func(c *oidc.IssuerConfig) { c.Audiences = nil }, "audiences"},
		{func(c *oidc.IssuerConfig) { c.Audiences = []string{"a", "a"} }, "audiences[1]"},
		{func(c *oidc.IssuerConfig) { c.Algorithms = []string{"RS256", "HS256"} }, "algorithms[1]"},
		{func(c *oidc.IssuerConfig) { c.Algorithms = []string{"none"} }, "algorithms[0]"},
		{func(c *oidc.IssuerConfig) { c.ClockSkew = time.Hour }, "clock_skew"},
		{func(c *oidc.IssuerConfig) { c.MaxAge = time.Second }, "max_age"},
		{func(c *oidc.IssuerConfig) { c.IDClaim = "has space" }, "id_claim"},
		{func(c *oidc.IssuerConfig) { c.IDClaim, c.IDPrefix = "sub", "x:" }, "id_prefix"},
		{func(c *oidc.IssuerConfig) { c.GroupsPrefix = "Corp:" }, "groups_prefix"},
		{func(c *oidc.IssuerConfig) { c.Scopes = []string{"read", "sudo"} }, "scopes[1]"},
		{func(c *oidc.IssuerConfig) {
			c.ScopeRules = []oidc.ScopeRule{{Group: "Approvers", Scopes: []string{"approve"}}}
		}, "scope_rules[0].group"},
		{func(c *oidc.IssuerConfig) { c.ScopeRules = []oidc.ScopeRule{{Group: "approvers"}} }, "scope_rules[0].scopes"},
		{func(c *oidc.IssuerConfig) {
			c.ScopeRules = []oidc.ScopeRule{{Group: "approvers", Scopes: []string{"x"}}}
		}, "scope_rules[0].scopes[0]"},
	} {
		c := good
		tc.edit(&c)
		errs := c.Validate()
		if len(errs) != 1 || lapse.ErrorCode(errs[0]) != lapse.EINVALID || lapse.ErrorField(errs[0]) != tc.field {
			t.Errorf("%+v: errors %v; want one naming %s", c, errs, tc.field)
		}
	}
	if errs := good.Validate(); len(errs) != 0 {
		t.Errorf("valid configuration: %v", errs)
	}
	errs := oidc.ValidateAll([]oidc.IssuerConfig{good, good})
	if len(errs) != 2 || lapse.ErrorField(errs[0]) != "name" || lapse.ErrorField(errs[1]) != "issuer" {
		t.Errorf("duplicates: %v", errs)
	}
	if _, err := oidc.New([]oidc.IssuerConfig{{Name: "x"}}, oidc.Options{}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("New with a bad issuer: %v", err)
	}
	bad := good
	bad.CAFile = "/nonexistent/ca.pem"
	if _, err := oidc.New([]oidc.IssuerConfig{bad}, oidc.Options{}); lapse.ErrorField(err) != "ca_file" {
		t.Errorf("New with a missing CA file: %v", err)
	}
}

// payload decodes a token's claims.
func payload(t *testing.T, tok string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func b64(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// sign signs claims with key, as a forger would.
func sign(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}
