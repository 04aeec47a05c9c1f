package workload_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/workload"
	"github.com/lapsehq/lapse/authn/workload/workloadtest"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func leeway(d time.Duration) *workload.Leeway { l := workload.Leeway(d); return &l }

// discoveryIssuer is the configuration of a test issuer found by discovery.
func discoveryIssuer(is *workloadtest.Issuer) workload.IssuerConfig {
	return workload.IssuerConfig{
		Name:      "test",
		Issuer:    is.URL,
		Discovery: true,
		Audiences: []string{"lapse"},
		Leeway:    leeway(10 * time.Second),
		Principal: `"svc:" + claims.sub`,
	}
}

func newVerifier(t *testing.T, clock lapse.Clock, issuers ...workload.IssuerConfig) *workload.Verifier {
	t.Helper()
	v, err := workload.New(issuers, workload.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantRefused(t *testing.T, p *lapse.Principal, err error, code, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted as %+v; want %s (%s)", p, code, reason)
	}
	if lapse.ErrorCode(err) != code || lapse.ErrorReason(err) != reason {
		t.Fatalf("error %v: code %q reason %q; want %q %q", err, lapse.ErrorCode(err), lapse.ErrorReason(err), code, reason)
	}
}

// TestDiscoveryEveryKeyType: a token signed with each of the issuer's key
// types verifies through discovery and maps to its principal.
func TestDiscoveryEveryKeyType(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	clock := &fakeClock{now: t0}
	cfg := discoveryIssuer(is)
	cfg.Groups = `["ci", "team:" + claims.team]`
	cfg.DisplayName = `"Deployer " + claims.sub`
	v := newVerifier(t, clock, cfg)
	for _, kid := range []string{workloadtest.KidEd25519, workloadtest.KidES256, workloadtest.KidRSA} {
		t.Run(kid, func(t *testing.T) {
			c := is.Claims("deployer", "lapse", t0, 5*time.Minute)
			c["team"] = "Payments"
			p, err := v.Authenticate(context.Background(), is.Token(kid, c))
			if err != nil {
				t.Fatal(err)
			}
			want := lapse.Principal{ID: "svc:deployer", Kind: lapse.KindService, Name: "Deployer deployer",
				Groups: []string{"ci", "team:payments"}, Scopes: []string{lapse.ScopeRequest}, CredentialID: "workload:test"}
			if p.ID != want.ID || p.Kind != want.Kind || p.Name != want.Name || !slices.Equal(p.Groups, want.Groups) ||
				!slices.Equal(p.Scopes, want.Scopes) || p.CredentialID != want.CredentialID {
				t.Errorf("principal %+v, want %+v", p, want)
			}
		})
	}
}

// TestAgentIssuer: an issuer configured with kind agent maps its tokens to
// agent principals (the actor of a delegation); an unknown kind, or human,
// is refused in the configuration.
func TestAgentIssuer(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	cfg := discoveryIssuer(is)
	cfg.Kind = lapse.KindAgent
	cfg.Principal = `"agent:" + claims.sub`
	v := newVerifier(t, &fakeClock{now: t0}, cfg)
	p, err := v.Authenticate(context.Background(), is.Token(workloadtest.KidEd25519, is.Claims("coder", "lapse", t0, 5*time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "agent:coder" || p.Kind != lapse.KindAgent || len(p.Act) != 0 {
		t.Errorf("principal %+v, want agent:coder of kind agent acting for nobody yet", p)
	}
	for _, kind := range []lapse.PrincipalKind{lapse.KindHuman, "robot"} {
		cfg.Kind = kind
		errs := cfg.Validate()
		if len(errs) != 1 || lapse.ErrorField(errs[0]) != "kind" {
			t.Errorf("kind %q: errors %v, want one naming kind", kind, errs)
		}
	}
}

// TestKubernetesServiceAccountToken maps the claims of a projected
// service-account token (namespace and service account under
// kubernetes.io), fetched from jwks_url as a cluster publishes it.
func TestKubernetesServiceAccountToken(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	clock := &fakeClock{now: t0}
	v := newVerifier(t, clock, workload.IssuerConfig{
		Name:       "k8s",
		Issuer:     is.URL,
		JWKSURL:    is.URL + "/jwks",
		Audiences:  []string{"lapse", "https://lapse.example.com"},
		Algorithms: []string{"RS256"},
		Principal:  `"k8s:" + claims["kubernetes.io"].namespace + "/" + claims["kubernetes.io"].serviceaccount.name`,
		Groups:     `["k8s-ns:" + claims["kubernetes.io"].namespace]`,
	})
	c := is.Claims("system:serviceaccount:payments:deployer", "", t0, time.Hour)
	c["aud"] = []string{"https://lapse.example.com"}
	c["kubernetes.io"] = map[string]any{
		"namespace":      "payments",
		"serviceaccount": map[string]any{"name": "deployer", "uid": "7c4b7f3e"},
		"pod":            map[string]any{"name": "deployer-7d9f", "uid": "a1b2"},
	}
	p, err := v.Authenticate(context.Background(), is.Token(workloadtest.KidRSA, c))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "k8s:payments/deployer" || !slices.Equal(p.Groups, []string{"k8s-ns:payments"}) {
		t.Errorf("principal %+v", p)
	}
	// The same token signed with EdDSA is refused: this issuer allows RS256 only.
	_, err = v.Authenticate(context.Background(), is.Token(workloadtest.KidEd25519, c))
	wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonAlgorithm)
}

// TestCIToken maps GitHub-Actions-like claims and enforces require, the
// rule that keeps other tenants of a shared CI issuer out.
func TestCIToken(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	clock := &fakeClock{now: t0}
	cfg := discoveryIssuer(is)
	cfg.Name = "github"
	cfg.Principal = `"ci:" + claims.repository + "@" + claims.ref.split("/")[2]`
	cfg.Require = `claims.repository_owner == "acme" && claims.ref_type == "branch"`
	v := newVerifier(t, clock, cfg)
	ci := func(owner string) map[string]any {
		c := is.Claims("repo:"+owner+"/app:ref:refs/heads/main", "lapse", t0, 5*time.Minute)
		c["repository"] = owner + "/app"
		c["repository_owner"] = owner
		c["ref"] = "refs/heads/main"
		c["ref_type"] = "branch"
		c["run_id"] = 12345678901
		return c
	}
	p, err := v.Authenticate(context.Background(), is.Token(workloadtest.KidES256, ci("acme")))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "ci:acme/app@main" {
		t.Errorf("principal %q", p.ID)
	}
	_, err = v.Authenticate(context.Background(), is.Token(workloadtest.KidES256, ci("evil")))
	wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonRequire)
	// A token lacking a claim the mapping reads is refused, not mapped to
	// a half-empty ID.
	c := ci("acme")
	delete(c, "repository")
	_, err = v.Authenticate(context.Background(), is.Token(workloadtest.KidES256, c))
	wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonMapping)
}

// TestSPIFFEJWTSVID verifies JWT-SVIDs without iss against a SPIFFE trust
// bundle file (whose X.509 authorities are skipped), routed by the trust
// domain of their SPIFFE ID.
func TestSPIFFEJWTSVID(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := workloadtest.PublicJWK(key, "spire-1")
	jwk["use"] = "jwt-svid"
	other := workloadtest.PublicJWK(workloadtest.NewIssuer(t).EC, "x509-authority")
	other["use"] = "x509-svid"
	bundle, _ := json.Marshal(map[string]any{"keys": []any{other, jwk}, "spiffe_sequence": 7, "spiffe_refresh_hint": 300})
	path := filepath.Join(t.TempDir(), "bundle.json")
	if err := os.WriteFile(path, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: t0}
	v := newVerifier(t, clock, workload.IssuerConfig{
		Name:              "spire",
		SPIFFETrustDomain: "example.org",
		JWKSFile:          path,
		Audiences:         []string{"lapse"},
		Principal:         `claims.sub`,
	})
	svid := func(sub string) string {
		return workloadtest.Sign("EdDSA", key, map[string]any{"alg": "EdDSA", "kid": "spire-1", "typ": "JWT"},
			map[string]any{"sub": sub, "aud": []string{"lapse"}, "exp": t0.Add(5 * time.Minute).Unix(), "iat": t0.Unix()})
	}
	p, err := v.Authenticate(context.Background(), svid("spiffe://example.org/ns/payments/sa/deployer"))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "spiffe://example.org/ns/payments/sa/deployer" || p.Kind != lapse.KindService {
		t.Errorf("principal %+v", p)
	}
	for _, sub := range []string{"spiffe://other.org/ns/x", "spiffe://example.org/../x", "spiffe://example.org/", "https://example.org/x"} {
		_, err := v.Authenticate(context.Background(), svid(sub))
		wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonIssuer)
	}
}

// TestRefusals: every kind of bad token is refused, for its own reason.
func TestRefusals(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	stranger := workloadtest.NewIssuer(t) // same shape, not configured
	clock := &fakeClock{now: t0}
	v := newVerifier(t, clock, discoveryIssuer(is))
	good := func() map[string]any { return is.Claims("deployer", "lapse", t0, 5*time.Minute) }
	with := func(k string, x any) map[string]any { c := good(); c[k] = x; return c }
	without := func(k string) map[string]any { c := good(); delete(c, k); return c }
	hdr := func(kid string, extra ...any) map[string]any {
		h := map[string]any{"alg": "EdDSA", "kid": kid, "typ": "JWT"}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i].(string)] = extra[i+1]
		}
		return h
	}
	rsaPub, _ := x509.MarshalPKIXPublicKey(&is.RSA.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	signed := is.Token(workloadtest.KidEd25519, good())
	dot := strings.LastIndexByte(signed, '.')
	other := is.Token(workloadtest.KidEd25519, with("sub", "other"))
	tampered := workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519), good())
	tampered = tampered[:strings.IndexByte(tampered, '.')+1] + strings.Split(is.Token(workloadtest.KidEd25519, with("sub", "admin")), ".")[1] + tampered[strings.LastIndexByte(tampered, '.'):]

	tests := []struct {
		name, token, reason string
	}{
		{"alg none", workloadtest.Sign("none", nil, map[string]any{"alg": "none", "kid": workloadtest.KidEd25519}, good()), workload.ReasonAlgorithm},
		{"alg none, signature stripped", signed[:dot+1], workload.ReasonMalformed},
		{"HMAC keyed with the RSA public key (alg confusion)", workloadtest.Sign("HS256", rsaPEM, map[string]any{"alg": "HS256", "kid": workloadtest.KidRSA}, good()), workload.ReasonAlgorithm},
		{"HMAC keyed with the Ed25519 public key", workloadtest.Sign("HS256", []byte(is.Ed25519.Public().(ed25519.PublicKey)), map[string]any{"alg": "HS256", "kid": workloadtest.KidEd25519}, good()), workload.ReasonAlgorithm},
		{"jku header", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "jku", stranger.URL+"/jwks"), good()), workload.ReasonKeyHeader},
		{"x5u header", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "x5u", stranger.URL+"/cert.pem"), good()), workload.ReasonKeyHeader},
		{"embedded jwk of the attacker's key", workloadtest.Sign("EdDSA", attacker, hdr(workloadtest.KidEd25519, "jwk", workloadtest.PublicJWK(attacker, workloadtest.KidEd25519)), good()), workload.ReasonKeyHeader},
		{"embedded jwk, validly signed", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "jwk", workloadtest.PublicJWK(is.Ed25519, workloadtest.KidEd25519)), good()), workload.ReasonKeyHeader},
		{"x5c header", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "x5c", []string{"MIIB"}), good()), workload.ReasonKeyHeader},
		{"crit header", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "crit", []string{"exp"}, "exp", 1), good()), workload.ReasonKeyHeader},
		{"no audience", is.Token(workloadtest.KidEd25519, without("aud")), workload.ReasonAudience},
		{"wrong audience", is.Token(workloadtest.KidEd25519, with("aud", "vault")), workload.ReasonAudience},
		{"wrong audiences", is.Token(workloadtest.KidEd25519, with("aud", []string{"vault", "sts"})), workload.ReasonAudience},
		{"expired beyond the leeway", is.Token(workloadtest.KidEd25519, with("exp", t0.Add(-11*time.Second).Unix())), workload.ReasonExpired},
		{"expiring exactly at the end of the leeway", is.Token(workloadtest.KidEd25519, with("exp", t0.Add(-10*time.Second).Unix())), workload.ReasonExpired},
		{"not valid yet beyond the leeway", is.Token(workloadtest.KidEd25519, with("nbf", t0.Add(11*time.Second).Unix())), workload.ReasonNotYetValid},
		{"issued in the future", is.Token(workloadtest.KidEd25519, with("iat", t0.Add(time.Minute).Unix())), workload.ReasonNotYetValid},
		{"no expiry", is.Token(workloadtest.KidEd25519, without("exp")), workload.ReasonNoExpiry},
		{"issuer not configured", stranger.Token(workloadtest.KidEd25519, stranger.Claims("deployer", "lapse", t0, time.Minute)), workload.ReasonIssuer},
		{"no issuer", is.Token(workloadtest.KidEd25519, without("iss")), workload.ReasonIssuer},
		{"issuer not a string", is.Token(workloadtest.KidEd25519, with("iss", 42)), workload.ReasonIssuer},
		{"kid not in the JWKS", workloadtest.Sign("EdDSA", is.Ed25519, hdr("ed-unknown"), good()), workload.ReasonUnknownKey},
		{"kid of a key of another type", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidES256), good()), workload.ReasonUnknownKey},
		{"signed by the stranger under a trusted kid", workloadtest.Sign("EdDSA", stranger.Ed25519, hdr(workloadtest.KidEd25519), good()), workload.ReasonSignature},
		{"payload changed after signing", tampered, workload.ReasonSignature},
		{"signature of another token", signed[:dot] + other[strings.LastIndexByte(other, '.'):], workload.ReasonSignature},
		{"not a JWT", "lapse_abcdefghijkm_xyz", workload.ReasonMalformed},
		{"JSON serialization", `{"payload":"e30","signatures":[]}`, workload.ReasonMalformed},
		{"empty", "", workload.ReasonMalformed},
		{"too long", signed + strings.Repeat("A", workload.MaxTokenLength), workload.ReasonMalformed},
		{"padding in a segment", strings.Replace(signed, ".", "=.", 1), workload.ReasonMalformed},
		{"principal not an ID", is.Token(workloadtest.KidEd25519, with("sub", "two words")), workload.ReasonMapping},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := v.Authenticate(context.Background(), tt.token)
			wantRefused(t, p, err, lapse.EUNAUTHORIZED, tt.reason)
			if strings.Contains(err.Error(), tt.token) && tt.token != "" {
				t.Error("the error quotes the token")
			}
		})
	}
	// Without a kid, the one key of the token's algorithm is used; with
	// two such keys the token is ambiguous and refused.
	noKid := workloadtest.Sign("EdDSA", is.Ed25519, map[string]any{"alg": "EdDSA"}, good())
	if _, err := v.Authenticate(context.Background(), noKid); err != nil {
		t.Errorf("no kid, one EdDSA key: %v", err)
	}
	is.Rotate("ed-2", false)
	clock.Advance(workload.DefaultKeyMaxAge)
	c := is.Claims("deployer", "lapse", clock.Now(), 5*time.Minute)
	_, err := v.Authenticate(context.Background(), workloadtest.Sign("EdDSA", is.Ed25519, map[string]any{"alg": "EdDSA"}, c))
	wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonUnknownKey)
	clock.Advance(-workload.DefaultKeyMaxAge)

	// The leeway also accepts: a token that expired 9s ago, or starts in 9s.
	for _, c := range []map[string]any{with("exp", t0.Add(-9*time.Second).Unix()), with("nbf", t0.Add(9*time.Second).Unix())} {
		if _, err := v.Authenticate(context.Background(), is.Token(workloadtest.KidEd25519, c)); err != nil {
			t.Errorf("within the leeway: %v", err)
		}
	}
}

// TestKeyRotation: a token signed with a key the issuer published after
// the cache was filled verifies (the set is fetched again), while garbage
// kids cannot make the verifier fetch more than once per refresh interval.
func TestKeyRotation(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	clock := &fakeClock{now: t0}
	v := newVerifier(t, clock, discoveryIssuer(is))
	ctx := context.Background()
	if _, err := v.Authenticate(ctx, is.Token(workloadtest.KidEd25519, is.Claims("a", "lapse", t0, time.Minute))); err != nil {
		t.Fatal(err)
	}
	before := is.JWKSFetches.Load()
	for range 20 {
		_, err := v.Authenticate(ctx, workloadtest.Sign("EdDSA", is.Ed25519, map[string]any{"alg": "EdDSA", "kid": "garbage"}, is.Claims("a", "lapse", t0, time.Minute)))
		wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonUnknownKey)
	}
	if n := is.JWKSFetches.Load() - before; n > 1 {
		t.Errorf("20 unknown kids fetched the JWKS %d times; want at most 1", n)
	}
	clock.Advance(workload.DefaultKeyMinRefresh)
	is.Rotate("ed-2", true)
	now := clock.Now()
	p, err := v.Authenticate(ctx, is.Token("ed-2", is.Claims("a", "lapse", now, time.Minute)))
	if err != nil || p.ID != "svc:a" {
		t.Fatalf("token with the rotated key: %v %v", p, err)
	}
	// The withdrawn key stops being trusted once the cache ages out.
	clock.Advance(workload.DefaultKeyMaxAge)
	now = clock.Now()
	old := workloadtest.Sign("EdDSA", is.Ed25519, map[string]any{"alg": "EdDSA", "kid": workloadtest.KidEd25519}, is.Claims("a", "lapse", now, time.Minute))
	_, err = v.Authenticate(ctx, old)
	wantRefused(t, nil, err, lapse.EUNAUTHORIZED, workload.ReasonUnknownKey)
}

// TestIssuerUnreachable: a server whose issuer is down starts; its tokens
// are refused as unavailable (not as bad tokens), and the verifier does
// not retry on every token.
func TestIssuerUnreachable(t *testing.T) {
	is := workloadtest.NewIssuer(t)
	clock := &fakeClock{now: t0}
	cfg := discoveryIssuer(is)
	tok := is.Token(workloadtest.KidEd25519, is.Claims("a", "lapse", t0, time.Minute))
	is.Server.Close()
	v := newVerifier(t, clock, cfg)
	_, err := v.Authenticate(context.Background(), tok)
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Fatalf("error %v, want unavailable", err)
	}
}

// TestValidate: configuration mistakes are reported against their option.
func TestValidate(t *testing.T) {
	ok := workload.IssuerConfig{Name: "k8s", Issuer: "https://k8s.example.com", Discovery: true, Audiences: []string{"lapse"}, Principal: `"svc:" + claims.sub`}
	tests := []struct {
		name  string
		edit  func(c *workload.IssuerConfig)
		field string
	}{
		{"no name", func(c *workload.IssuerConfig) { c.Name = "" }, "name"},
		{"bad name", func(c *workload.IssuerConfig) { c.Name = "K8s Prod" }, "name"},
		{"no issuer", func(c *workload.IssuerConfig) { c.Issuer = "" }, "issuer"},
		{"http issuer", func(c *workload.IssuerConfig) { c.Issuer = "http://k8s.example.com" }, "issuer"},
		{"no key source", func(c *workload.IssuerConfig) { c.Discovery = false }, "jwks_url"},
		{"two key sources", func(c *workload.IssuerConfig) { c.JWKSFile = "/x.json" }, "jwks_url"},
		{"http jwks", func(c *workload.IssuerConfig) { c.Discovery, c.JWKSURL = false, "http://keys.example.com/jwks" }, "jwks_url"},
		{"no audience", func(c *workload.IssuerConfig) { c.Audiences = nil }, "audiences"},
		{"duplicate audience", func(c *workload.IssuerConfig) { c.Audiences = []string{"a", "a"} }, "audiences[1]"},
		{"HS256", func(c *workload.IssuerConfig) { c.Algorithms = []string{"RS256", "HS256"} }, "algorithms[1]"},
		{"none", func(c *workload.IssuerConfig) { c.Algorithms = []string{"none"} }, "algorithms[0]"},
		{"leeway too large", func(c *workload.IssuerConfig) { c.Leeway = leeway(time.Hour) }, "leeway"},
		{"bad trust domain", func(c *workload.IssuerConfig) { c.SPIFFETrustDomain = "spiffe://Example.org" }, "spiffe_trust_domain"},
		{"no principal", func(c *workload.IssuerConfig) { c.Principal = "" }, "principal"},
		{"principal does not compile", func(c *workload.IssuerConfig) { c.Principal = `"svc:" + claim.sub` }, "principal"},
		{"principal is a bool", func(c *workload.IssuerConfig) { c.Principal = `claims.sub == "x"` }, "principal"},
		{"groups is a string", func(c *workload.IssuerConfig) { c.Groups = `"ops"` }, "groups"},
		{"require is a string", func(c *workload.IssuerConfig) { c.Require = `claims.sub + "x"` }, "require"},
		{"display name is a list", func(c *workload.IssuerConfig) { c.DisplayName = `[claims.sub]` }, "display_name"},
	}
	if errs := ok.Validate(); len(errs) != 0 {
		t.Fatalf("valid config: %v", errs)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			c.Audiences = slices.Clone(ok.Audiences)
			tt.edit(&c)
			errs := c.Validate()
			if len(errs) == 0 {
				t.Fatal("accepted")
			}
			if lapse.ErrorCode(errs[0]) != lapse.EINVALID || lapse.ErrorField(errs[0]) != tt.field {
				t.Errorf("errors %v; want the first at field %q", errs, tt.field)
			}
		})
	}
	dup := []workload.IssuerConfig{ok, ok}
	dup[1].Name = "other"
	errs := workload.ValidateAll(dup)
	var ie *workload.IssuerError
	if len(errs) != 1 || !errors.As(errs[0], &ie) || ie.Index != 1 || lapse.ErrorField(errs[0]) != "issuer" {
		t.Errorf("duplicate issuer: %v", errs)
	}
}
