package token_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/goccy/go-yaml"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/token"
	"github.com/lapsehq/lapse/connector/token/follower"
	"github.com/lapsehq/lapse/connector/token/internal/feedtest"
)

const (
	issuer   = "https://lapse.example.test"
	audience = "payments-api"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Date(2031, 5, 4, 10, 0, 0, 250_000_000, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fixture is one token target under test with its store and data dir.
type fixture struct {
	store lapse.Store
	clock lapse.Clock
	dir   string
	name  string
}

func newFixture(t testing.TB, clock lapse.Clock) *fixture {
	t.Helper()
	return &fixture{
		store: feedtest.OpenStore(t),
		clock: clock,
		dir:   t.TempDir(),
		name:  "payments-" + strings.ToLower(rand.Text()[:8]),
	}
}

func (f *fixture) env() connector.Env {
	return connector.Env{Name: f.name, Clock: f.clock, Store: f.store, DataDir: f.dir}
}

func (f *fixture) config(consumers ...string) token.Config {
	return token.Config{Issuer: issuer, Audience: audience, GenerateKey: true, Consumers: consumers}
}

func (f *fixture) open(t testing.TB, cfg token.Config) *token.Conn {
	t.Helper()
	c, err := token.New(f.env(), cfg)
	if err != nil {
		t.Fatalf("token.New: %v", err)
	}
	return c
}

// verifyAgainstJWKS checks raw as a consumer would: signature by the JWKS
// key named in the header, algorithm EdDSA. It returns the claims.
func verifyAgainstJWKS(jwks jose.JSONWebKeySet, raw string) (map[string]any, *jose.Header, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return nil, nil, err
	}
	keys := jwks.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return nil, nil, fmt.Errorf("kid %q not in JWKS", tok.Headers[0].KeyID)
	}
	var claims map[string]any
	if err := tok.Claims(keys[0].Key, &claims); err != nil {
		return nil, nil, err
	}
	return claims, &tok.Headers[0], nil
}

// consumerSync is the token target as the suite sees it when a consumer
// (an API server with a follower) applies the feed right after each
// revocation, so consumer checkpoints can verify at once.
type consumerSync struct {
	*token.Conn
	f *follower.Follower
}

func (c *consumerSync) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	resp, err := c.Conn.Revoke(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := c.f.Sync(ctx); err != nil {
		return nil, fmt.Errorf("consumer sync: %w", err)
	}
	return resp, nil
}

func harness(f *fixture, primary *token.Conn, open func(t *testing.T) connector.Connector, fol *follower.Follower) connectortest.Harness {
	h := connectortest.Harness{
		Open: open,
		Spec: map[string]any{
			"scopes": []any{"payments:refund", "payments:read"},
			"claims": map[string]any{"tenant": "acme", "tier": 2, "beta": true, "regions": []any{"eu", "us"}},
		},
		BadSpecs: []map[string]any{
			{"claims": map[string]any{"sub": "root"}},
			{"claims": map[string]any{"aud": "other-api"}},
			{"claims": map[string]any{"exp": 4102444800}},
			{"scopes": []any{"a b"}},
			{"scopes": "payments:refund"},
			{"claims": map[string]any{"nested": map[string]any{"x": 1}}},
			{"audience": "other-api"},
		},
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			raw := g.Secret["token"]
			if _, _, err := verifyAgainstJWKS(primary.JWKS(), raw); err != nil {
				return fmt.Errorf("JWKS verification: %w", err)
			}
			in, err := primary.Introspect(ctx, raw)
			if err != nil {
				return err
			}
			if !in.Active {
				return errors.New("introspection says inactive")
			}
			return nil
		},
		Principal: lapse.Principal{ID: "svc-billing", Kind: lapse.KindService},
	}
	if fol != nil {
		// A session is a request an API server accepted earlier: it can go
		// on acting while the server's follower does not list the token.
		h.Hold = func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			claims, _, err := verifyAgainstJWKS(primary.JWKS(), g.Secret["token"])
			if err != nil {
				return nil, nil, err
			}
			jti, _ := claims["jti"].(string)
			probe := func(ctx context.Context) error {
				if err := fol.Sync(ctx); err != nil {
					return err
				}
				if fol.Revoked(jti) {
					return errors.New("the API server refuses the revoked token")
				}
				return nil
			}
			return probe, func() {}, nil
		}
	}
	return h
}

func TestContract(t *testing.T) {
	f := newFixture(t, lapse.SystemClock{})
	cfg := func() token.Config { return f.config("api-1") }
	primary := f.open(t, cfg())
	srv := feedtest.NewServer(t, primary, map[string]string{"key-api-1": "api-1"})
	fol, err := follower.New(follower.Config{BaseURL: srv.URL, Target: f.name, Consumer: "api-1", APIKey: "key-api-1"})
	if err != nil {
		t.Fatal(err)
	}
	first := true
	open := func(t *testing.T) connector.Connector {
		c := primary
		if !first { // a restarted broker: same store and data dir, new process state
			c = f.open(t, cfg())
		}
		first = false
		return &consumerSync{Conn: c, f: fol}
	}
	connectortest.Run(t, harness(f, primary, open, fol))
}

func TestContractWithoutConsumers(t *testing.T) {
	f := newFixture(t, lapse.SystemClock{})
	primary := f.open(t, f.config())
	first := true
	open := func(t *testing.T) connector.Connector {
		if first {
			first = false
			return primary
		}
		return f.open(t, f.config())
	}
	connectortest.Run(t, harness(f, primary, open, nil))
}

func grantReq(id string, expires time.Time, spec map[string]any) *connector.GrantRequest {
	return &connector.GrantRequest{
		GrantID:     id,
		Principal:   lapse.Principal{ID: "agent-7", Kind: lapse.KindAgent},
		Entitlement: "payments/refund",
		Spec:        spec,
		ExpiresAt:   expires,
	}
}

func mustGrant(t *testing.T, c *token.Conn, req *connector.GrantRequest) *connector.GrantResponse {
	t.Helper()
	g, err := c.Grant(context.Background(), req)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return g
}

func TestClaimsAreExact(t *testing.T) {
	clk := newClock() // 10:00:00.25
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	deadline := clk.Now().Add(15*time.Minute + 500*time.Millisecond)
	spec := map[string]any{
		"scopes": []string{"payments:refund", "payments:read"},
		"claims": map[string]any{"tenant": "acme", "tier": uint64(2), "ratio": 0.5, "beta": true, "regions": []any{"eu", "us"}},
	}
	g := mustGrant(t, c, grantReq(id, deadline, spec))

	claims, hdr, err := verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if err != nil {
		t.Fatalf("token does not verify against the JWKS: %v", err)
	}
	if hdr.Algorithm != "EdDSA" || hdr.KeyID != c.KeyID() || hdr.KeyID == "" {
		t.Errorf("header alg=%q kid=%q, want EdDSA and %q", hdr.Algorithm, hdr.KeyID, c.KeyID())
	}
	if typ := hdr.ExtraHeaders[jose.HeaderType]; typ != "JWT" {
		t.Errorf("typ header = %v, want JWT", typ)
	}
	iat := float64(clk.Now().Unix())
	want := map[string]any{
		"iss":        issuer,
		"sub":        "agent-7",
		"aud":        audience, // exactly one audience, as a string
		"jti":        id,
		"iat":        iat,
		"nbf":        iat,
		"exp":        float64(deadline.Unix()), // truncated down, never after the deadline
		"lapse_kind": "agent",
		"ent":        "payments/refund",
		"scope":      "payments:refund payments:read",
		"tenant":     "acme",
		"tier":       float64(2),
		"ratio":      0.5,
		"beta":       true,
		"regions":    []any{"eu", "us"},
	}
	for k, v := range want {
		if got, _ := json.Marshal(claims[k]); string(got) != mustJSON(t, v) {
			t.Errorf("claim %s = %s, want %s", k, got, mustJSON(t, v))
		}
	}
	for k := range claims {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected claim %s", k)
		}
	}
	if exp := time.Unix(int64(claims["exp"].(float64)), 0); exp.After(deadline) {
		t.Errorf("exp %v is after the deadline %v", exp, deadline)
	}
	if g.Info["audience"] != audience || g.Info["issuer"] != issuer || g.Info["jti"] != id || g.Info["scope"] != "payments:refund payments:read" {
		t.Errorf("Info = %v", g.Info)
	}
	var st map[string]any
	if err := json.Unmarshal(g.State, &st); err != nil {
		t.Fatal(err)
	}
	if st["jti"] != id || st["exp"] != float64(deadline.Unix()) {
		t.Errorf("State = %s", g.State)
	}
}

// TestDelegatedClaims: an agent acting for its sponsor gets an RFC 8693
// token: sub is the sponsor, act the agent (earlier actors nested), and
// jti and exp follow the grant as for any token; introspection reports
// the same act.
func TestDelegatedClaims(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	deadline := clk.Now().Add(10*time.Minute + 700*time.Millisecond)
	req := grantReq(id, deadline, nil)
	req.Principal = lapse.Principal{ID: "agent-7", Kind: lapse.KindAgent, Act: []string{"alice"}}
	g := mustGrant(t, c, req)
	claims, _, err := verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"sub": "alice", "act": map[string]any{"sub": "agent-7"}, "lapse_kind": "agent",
		"jti": id, "exp": float64(deadline.Unix()),
	} {
		if got, _ := json.Marshal(claims[k]); string(got) != mustJSON(t, want) {
			t.Errorf("claim %s = %s, want %s", k, got, mustJSON(t, want))
		}
	}
	in, err := c.Introspect(ctx, g.Secret["token"])
	if err != nil || !in.Active || in.Sub != "alice" || in.Act == nil || in.Act.Sub != "agent-7" || in.Act.Act != nil || in.Jti != id {
		t.Fatalf("introspection = %+v (act %+v), %v", in, in.Act, err)
	}

	// A longer chain nests the earlier actors inside the current one (the
	// broker refuses such chains; the claim still says them right).
	req.GrantID = lapse.NewID(lapse.PrefixGrant, clk.Now())
	req.Principal.Act = []string{"helper", "alice"}
	g = mustGrant(t, c, req)
	claims, _, err = verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := mustJSON(t, claims["act"]), `{"act":{"sub":"helper"},"sub":"agent-7"}`; got != want || claims["sub"] != "alice" {
		t.Errorf("chain: sub %v act %s, want alice and %s", claims["sub"], got, want)
	}

	// Without a chain there is no act claim.
	req.GrantID = lapse.NewID(lapse.PrefixGrant, clk.Now())
	req.Principal.Act = nil
	g = mustGrant(t, c, req)
	claims, _, _ = verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if _, ok := claims["act"]; ok || claims["sub"] != "agent-7" {
		t.Errorf("undelegated token: sub %v act %v", claims["sub"], claims["act"])
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNoScopeClaimWithoutScopes(t *testing.T) {
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	g := mustGrant(t, c, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(time.Hour), nil))
	claims, _, err := verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := claims["scope"]; ok {
		t.Error("scope claim present without scopes in the spec")
	}
}

func TestDeadlineTooClose(t *testing.T) {
	clk := newClock() // 10:00:00.25
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	for _, d := range []time.Duration{-time.Hour, 0, 500 * time.Millisecond, 749 * time.Millisecond} {
		// Each deadline truncates to 10:00:00 or earlier: not after iat.
		_, err := c.Grant(context.Background(), grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(d), nil))
		if lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("deadline now%+v: code %q, want %q", d, lapse.ErrorCode(err), lapse.EINVALID)
		}
	}
	g := mustGrant(t, c, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(750*time.Millisecond), nil))
	claims, _, _ := verifyAgainstJWKS(c.JWKS(), g.Secret["token"])
	if claims["exp"].(float64)-claims["iat"].(float64) != 1 {
		t.Errorf("exp-iat = %v, want 1", claims["exp"].(float64)-claims["iat"].(float64))
	}
}

func TestGrantRejectsBadInput(t *testing.T) {
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	exp := clk.Now().Add(time.Hour)
	for name, req := range map[string]*connector.GrantRequest{
		"empty grant ID":  grantReq("", exp, nil),
		"grant ID quotes": grantReq(`gr_"x`, exp, nil),
		"no principal":    {GrantID: "gr_x", ExpiresAt: exp},
		"bad kind":        {GrantID: "gr_x", ExpiresAt: exp, Principal: lapse.Principal{ID: "x", Kind: "robot"}},
	} {
		if _, err := c.Grant(context.Background(), req); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("%s: code %q, want %q", name, lapse.ErrorCode(err), lapse.EINVALID)
		}
	}
}

func TestValidateSpecRejects(t *testing.T) {
	f := newFixture(t, newClock())
	c := f.open(t, f.config())
	many := map[string]any{}
	for i := range 33 {
		many[fmt.Sprintf("c%d", i)] = "x"
	}
	bad := map[string]map[string]any{
		"unknown key":       {"role": "admin"},
		"scopes not list":   {"scopes": "a"},
		"scope not string":  {"scopes": []any{1}},
		"scope with space":  {"scopes": []any{"a b"}},
		"scope with quote":  {"scopes": []any{`a"b`}},
		"scope empty":       {"scopes": []any{""}},
		"scope too long":    {"scopes": []any{strings.Repeat("a", 65)}},
		"scope duplicate":   {"scopes": []any{"a", "a"}},
		"claims not map":    {"claims": []any{"a"}},
		"claim map value":   {"claims": map[string]any{"x": map[string]any{}}},
		"claim mixed list":  {"claims": map[string]any{"x": []any{"a", 1}}},
		"claim NaN":         {"claims": map[string]any{"x": nan()}},
		"claim control chr": {"claims": map[string]any{"x": "a\x00b"}},
		"claim bidi":        {"claims": map[string]any{"x": "a\u202eb"}},
		"claim bad name":    {"claims": map[string]any{"a b": "x"}},
		"claim empty name":  {"claims": map[string]any{"": "x"}},
		"claim long string": {"claims": map[string]any{"x": strings.Repeat("a", 1025)}},
		"claim nil":         {"claims": map[string]any{"x": nil}},
		"too many claims":   {"claims": many},
	}
	for _, r := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "ent", "lapse_kind", "act", "cnf", "client_id"} {
		bad["override "+r] = map[string]any{"claims": map[string]any{r: "x"}}
	}
	for name, spec := range bad {
		err := c.ValidateSpec(spec)
		if lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("%s: code %q, want %q", name, lapse.ErrorCode(err), lapse.EINVALID)
			continue
		}
		if !strings.HasPrefix(lapse.ErrorField(err), "spec") {
			t.Errorf("%s: field %q does not name the spec", name, lapse.ErrorField(err))
		}
	}
	good := []map[string]any{
		nil,
		{"scopes": []string{"read", "https://api.example/x:y"}},
		{"claims": map[string]any{"n": int64(-3), "u": uint64(7), "f": 1.5, "s": "ü", "l": []string{"a"}, "b": false}},
	}
	for _, spec := range good {
		if err := c.ValidateSpec(spec); err != nil {
			t.Errorf("ValidateSpec(%v) = %v", spec, err)
		}
	}
}

func nan() float64 { var z float64; return z / z }

func TestConfigValidation(t *testing.T) {
	f := newFixture(t, newClock())
	cases := map[string]func(c *token.Config){
		"no issuer":          func(c *token.Config) { c.Issuer = "" },
		"relative issuer":    func(c *token.Config) { c.Issuer = "/lapse" },
		"ftp issuer":         func(c *token.Config) { c.Issuer = "ftp://x" },
		"issuer w/ query":    func(c *token.Config) { c.Issuer = "https://x/?a=b" },
		"no audience":        func(c *token.Config) { c.Audience = "" },
		"no key":             func(c *token.Config) { c.GenerateKey = false },
		"key and generate":   func(c *token.Config) { c.SigningKeyFile = "k.pem" },
		"duplicate consumer": func(c *token.Config) { c.Consumers = []string{"api", " API "} },
		"bad consumer":       func(c *token.Config) { c.Consumers = []string{"a b"} },
		"negative leeway": func(c *token.Config) {
			d := lapse.Duration(-time.Second)
			c.ConsumerLeeway = &d
		},
	}
	for name, mutate := range cases {
		cfg := f.config()
		mutate(&cfg)
		if _, err := token.New(f.env(), cfg); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("%s: code %q, want %q", name, lapse.ErrorCode(err), lapse.EINVALID)
		}
	}
	env := f.env()
	env.Store = nil
	if _, err := token.New(env, f.config()); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("no store: code %q", lapse.ErrorCode(err))
	}
	env = f.env()
	env.DataDir = ""
	if _, err := token.New(env, f.config()); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("generate_key without data dir: code %q", lapse.ErrorCode(err))
	}
}

func TestOpenDecodesStrictly(t *testing.T) {
	f := newFixture(t, newClock())
	decoder := func(src string) func(v any) error {
		return func(v any) error { return yaml.UnmarshalWithOptions([]byte(src), v, yaml.Strict()) }
	}
	conn, err := token.Open(f.env(), decoder("issuer: https://lapse.example\naudience: api\ngenerate_key: true\nconsumers: [api-1]\nconsumer_leeway: 30s\n"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if c := conn.(*token.Conn); c.Issuer() != "https://lapse.example" || c.Audience() != "api" {
		t.Errorf("Issuer/Audience = %q/%q", c.Issuer(), c.Audience())
	}
	if _, err := token.Open(f.env(), decoder("issuer: https://x\naudience: api\ngenerate_key: true\nsigning_kye_file: x\n")); err == nil {
		t.Error("Open accepted an unknown key")
	}
}

func TestKeyGeneratedOnceAndKept(t *testing.T) {
	clk := newClock()
	f := newFixture(t, clk)
	a := f.open(t, f.config())
	files, _ := filepath.Glob(filepath.Join(f.dir, "*"))
	if len(files) != 1 {
		t.Fatalf("data dir holds %v, want one key file", files)
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	g := mustGrant(t, a, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(time.Hour), nil))

	b := f.open(t, f.config()) // a restart
	if a.KeyID() != b.KeyID() {
		t.Fatalf("kid changed across reopen: %s → %s", a.KeyID(), b.KeyID())
	}
	if _, _, err := verifyAgainstJWKS(b.JWKS(), g.Secret["token"]); err != nil {
		t.Errorf("a token from before the restart does not verify: %v", err)
	}
	in, err := b.Introspect(context.Background(), g.Secret["token"])
	if err != nil || !in.Active {
		t.Errorf("introspection after restart: %+v, %v", in, err)
	}
	// The JWKS carries the public key only.
	for _, k := range b.JWKS().Keys {
		if !k.IsPublic() || k.Algorithm != "EdDSA" || k.Use != "sig" {
			t.Errorf("JWKS key %+v: want a public EdDSA signing key", k)
		}
	}
	js, _ := json.Marshal(b.JWKS())
	if strings.Contains(string(js), `"d"`) {
		t.Errorf("JWKS leaks private key material: %s", js)
	}
}

func TestConcurrentKeyGeneration(t *testing.T) {
	f := newFixture(t, newClock())
	const n = 6
	kids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := token.New(f.env(), f.config())
			if err != nil {
				t.Error(err)
				return
			}
			kids[i] = c.KeyID()
		}()
	}
	wg.Wait()
	for _, k := range kids[1:] {
		if k != kids[0] {
			t.Fatalf("processes starting together got different keys: %v", kids)
		}
	}
}

func writePEM(t *testing.T, path string, key any) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSigningKeyFile(t *testing.T) {
	f := newFixture(t, newClock())
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	path := filepath.Join(t.TempDir(), "key.pem")
	writePEM(t, path, priv)
	cfg := f.config()
	cfg.GenerateKey, cfg.SigningKeyFile = false, path
	c := f.open(t, cfg)
	pub := c.JWKS().Keys[0].Key.(ed25519.PublicKey)
	if !pub.Equal(priv.Public()) {
		t.Fatal("JWKS does not hold the configured key's public half")
	}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(p string){
		"missing": func(p string) {},
		"garbage": func(p string) { os.WriteFile(p, []byte("not a key"), 0o600) },
		"rsa":     func(p string) { writePEM(t, p, rsaKey) },
		"wrong block": func(p string) {
			os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}}), 0o600)
		},
	}
	for name, write := range bad {
		p := filepath.Join(t.TempDir(), "key.pem")
		write(p)
		cfg.SigningKeyFile = p
		if _, err := token.New(f.env(), cfg); lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "signing_key_file" {
			t.Errorf("%s key file: code %q field %q, want %q signing_key_file", name, lapse.ErrorCode(err), lapse.ErrorField(err), lapse.EINVALID)
		}
	}
}

// signWith signs claims with key under kid, for forged and odd tokens.
func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestIntrospectInactive(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	path := filepath.Join(t.TempDir(), "key.pem")
	writePEM(t, path, priv)
	cfg := f.config()
	cfg.GenerateKey, cfg.SigningKeyFile = false, path
	c := f.open(t, cfg)
	now := clk.Now().Unix()
	valid := func() map[string]any {
		return map[string]any{"iss": issuer, "sub": "alice", "aud": audience, "jti": "gr_valid", "iat": now, "nbf": now, "exp": now + 600}
	}
	// Our own key with valid claims: the control case.
	control := signWith(t, jose.EdDSA, priv, c.KeyID(), valid())
	if in, err := c.Introspect(ctx, control); err != nil || !in.Active {
		t.Fatalf("control token inactive: %+v %v", in, err)
	}

	g := mustGrant(t, c, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(time.Hour), nil))
	real := g.Secret["token"]
	parts := strings.Split(real, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tamperedPayload := strings.Replace(string(payload), `"agent-7"`, `"agent-8"`, 1)
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[0] ^= 1

	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	claims := func(mut func(m map[string]any)) map[string]any { m := valid(); mut(m); return m }
	hmacKey := []byte(c.JWKS().Keys[0].Key.(ed25519.PublicKey))

	cases := map[string]string{
		"empty":            "",
		"garbage":          "not.a.token",
		"huge":             strings.Repeat("a", 20000),
		"tampered payload": parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(tamperedPayload)) + "." + parts[2],
		"tampered sig":     parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig),
		"no signature":     parts[0] + "." + parts[1] + ".",
		"alg none":         base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"`+c.KeyID()+`"}`)) + "." + parts[1] + ".",
		"alg HS256 w/ pub": signWith(t, jose.HS256, hmacKey, c.KeyID(), valid()),
		"other key":        signWith(t, jose.EdDSA, otherKey, c.KeyID(), valid()),
		"unknown kid":      signWith(t, jose.EdDSA, priv, "other-kid", valid()),
		"wrong issuer":     signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { m["iss"] = "https://evil" })),
		"wrong audience":   signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { m["aud"] = "other-api" })),
		"two audiences":    signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { m["aud"] = []string{audience, "other-api"} })),
		"expired":          signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { m["exp"] = now })),
		"no exp":           signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { delete(m, "exp") })),
		"not yet valid":    signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { m["nbf"] = now + 10 })),
		"no jti":           signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { delete(m, "jti") })),
		"no sub":           signWith(t, jose.EdDSA, priv, c.KeyID(), claims(func(m map[string]any) { delete(m, "sub") })),
	}
	for name, raw := range cases {
		in, err := c.Introspect(ctx, raw)
		if err != nil {
			t.Errorf("%s: error %v, want inactive without error", name, err)
			continue
		}
		if in.Active || in.Sub != "" || in.Jti != "" {
			t.Errorf("%s: %+v, want a bare inactive answer", name, in)
		}
	}

	// The grant's own token: active, then expired by the clock.
	in, err := c.Introspect(ctx, real)
	if err != nil || !in.Active {
		t.Fatalf("real token: %+v %v", in, err)
	}
	if in.Sub != "agent-7" || in.Aud != audience || in.Iss != issuer || in.Jti != g.Info["jti"] || in.TokenType != "Bearer" || in.Exp == 0 || in.Iat == 0 || in.Nbf == 0 || in.Kind != "agent" || in.Entitlement != "payments/refund" {
		t.Errorf("active introspection = %+v", in)
	}
	clk.Add(time.Hour)
	if in, err := c.Introspect(ctx, real); err != nil || in.Active {
		t.Errorf("expired real token: %+v %v", in, err)
	}
}

func TestRevokeMakesIntrospectionInactive(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	g := mustGrant(t, c, grantReq(id, clk.Now().Add(time.Hour), nil))
	g2 := mustGrant(t, c, grantReq(id, clk.Now().Add(time.Hour), nil)) // a repeated Grant
	for _, raw := range []string{g.Secret["token"], g2.Secret["token"]} {
		if in, _ := c.Introspect(ctx, raw); !in.Active {
			t.Fatal("fresh token inactive")
		}
	}
	r1, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Actions[0] != r2.Actions[0] {
		t.Errorf("a repeated Revoke made another feed entry: %q vs %q", r1.Actions, r2.Actions)
	}
	for _, raw := range []string{g.Secret["token"], g2.Secret["token"]} {
		if in, err := c.Introspect(ctx, raw); err != nil || in.Active {
			t.Errorf("revoked token: %+v %v", in, err)
		}
	}
	feed, err := c.Feed(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(feed) != 1 || feed[0].TokenID != id || feed[0].GrantID != id || feed[0].Target != f.name ||
		!feed[0].ExpiresAt.Equal(time.Unix(clk.Now().Add(time.Hour).Unix(), 0)) || !feed[0].RevokedAt.Equal(clk.Now()) {
		t.Errorf("feed = %+v", feed)
	}
}

func TestRevokeWithoutStateKeepsEntryLong(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
		t.Fatal(err)
	}
	feed, _ := c.Feed(ctx, 0, 0)
	if len(feed) != 1 || feed[0].ExpiresAt.Before(clk.Now().Add(lapse.MaxAnyDuration-time.Second)) {
		t.Errorf("feed = %+v: an unknown expiry must be kept for the longest grant", feed)
	}
}

func checkpoint(t *testing.T, v *connector.VerifyResponse, name string) connector.CheckpointResult {
	t.Helper()
	for _, c := range v.Checkpoints {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no checkpoint %s in %+v", name, v.Checkpoints)
	return connector.CheckpointResult{}
}

func TestVerifyWaitsForEveryConsumer(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config("api-1", "api-2"))
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	g := mustGrant(t, c, grantReq(id, clk.Now().Add(time.Hour), nil))
	if len(g.Checkpoints) != 3 || g.Checkpoints[1].Name != "consumer:api-1" || g.Checkpoints[1].Kind != lapse.CheckpointConsumer {
		t.Fatalf("checkpoints = %+v", g.Checkpoints)
	}
	// An earlier revocation, so this grant's entry is not seq 1.
	other := lapse.NewID(lapse.PrefixGrant, clk.Now())
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: other}); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, "api-1", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	verify := func(c *token.Conn) *connector.VerifyResponse {
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := verify(c)
	tok := checkpoint(t, v, "token")
	if !tok.Gone || tok.Evidence["seq"] != int64(2) || tok.Evidence["revoked_at"] == nil || tok.Evidence["introspection"] != "inactive" {
		t.Errorf("token checkpoint = %+v", tok)
	}
	for _, name := range []string{"consumer:api-1", "consumer:api-2"} {
		cp := checkpoint(t, v, name)
		if cp.Gone || len(cp.Residue) == 0 || !strings.Contains(cp.Residue[0], strings.TrimPrefix(name, "consumer:")) {
			t.Errorf("%s before ack = %+v, want residue naming it", name, cp)
		}
	}
	if v.Gone() {
		t.Fatal("gone before any consumer acknowledged")
	}
	if err := c.Ack(ctx, "api-1", 2); err != nil {
		t.Fatal(err)
	}
	v = verify(c)
	if !checkpoint(t, v, "consumer:api-1").Gone || checkpoint(t, v, "consumer:api-2").Gone || v.Gone() {
		t.Errorf("after api-1 acked: %+v", v.Checkpoints)
	}
	if err := c.Ack(ctx, "API-2", 2); err != nil { // IDs are normalised
		t.Fatal(err)
	}
	// A restarted connector has no cached seqs and must find them in the
	// store.
	v = verify(f.open(t, f.config("api-1", "api-2")))
	if !v.Gone() {
		t.Errorf("after both acked (fresh connector): %+v", v.Checkpoints)
	}
	// Acknowledgements never move back.
	if err := c.Ack(ctx, "api-2", 1); err != nil {
		t.Fatal(err)
	}
	if v := verify(c); !v.Gone() {
		t.Errorf("an older ack undid verification: %+v", v.Checkpoints)
	}
}

func TestVerifyCountsExpiryWithLeeway(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config("api-1"))
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	g := mustGrant(t, c, grantReq(id, clk.Now().Add(10*time.Minute), nil))
	req := &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe}
	v, _ := c.Verify(ctx, req)
	if checkpoint(t, v, "token").Gone {
		t.Fatal("token checkpoint gone while active and not revoked")
	}
	clk.Add(10 * time.Minute) // exp passed, within the consumer leeway
	v, err := c.Verify(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if tok := checkpoint(t, v, "token"); !tok.Gone || tok.Evidence["expired"] != true {
		t.Errorf("token checkpoint after exp = %+v", tok)
	}
	if checkpoint(t, v, "consumer:api-1").Gone {
		t.Error("consumer checkpoint gone within its clock-skew leeway without an ack")
	}
	clk.Add(token.DefaultConsumerLeeway)
	v, _ = c.Verify(ctx, req)
	if !v.Gone() {
		t.Errorf("not gone after exp + leeway: %+v", v.Checkpoints)
	}
}

func TestVerifyFindsSeqBeyondOnePage(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	a := f.open(t, f.config("api-1"))
	var last *connector.GrantResponse
	var lastID string
	for i := range token.MaxFeedLimit + 5 {
		id := fmt.Sprintf("gr_%05d", i)
		g := mustGrant(t, a, grantReq(id, clk.Now().Add(time.Hour), nil))
		if _, err := a.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
			t.Fatal(err)
		}
		last, lastID = g, id
	}
	if err := a.Ack(ctx, "api-1", int64(token.MaxFeedLimit+5)); err != nil {
		t.Fatal(err)
	}
	b := f.open(t, f.config("api-1"))
	v, err := b.Verify(ctx, &connector.VerifyRequest{GrantID: lastID, State: last.State})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Gone() || checkpoint(t, v, "token").Evidence["seq"] != int64(token.MaxFeedLimit+5) {
		t.Errorf("verify on a fresh connector: %+v", v.Checkpoints)
	}
}

func TestAck(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config("api-1"))
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: "gr_one"}); err != nil {
		t.Fatal(err)
	}
	as := func(id string) context.Context {
		return lapse.NewContext(ctx, &lapse.Principal{ID: id, Kind: lapse.KindService})
	}
	for name, tc := range map[string]struct {
		ctx      context.Context
		consumer string
		seq      int64
		code     string
	}{
		"unknown consumer":   {ctx, "api-9", 1, lapse.EFORBIDDEN},
		"not a principal id": {ctx, "", 1, lapse.EFORBIDDEN},
		"for another":        {as("api-2"), "api-1", 1, lapse.EFORBIDDEN},
		"negative":           {ctx, "api-1", -1, lapse.EINVALID},
		"beyond feed":        {ctx, "api-1", 2, lapse.EINVALID},
		"ok":                 {ctx, "api-1", 1, ""},
		"ok as itself":       {as("api-1"), "api-1", 1, ""},
		"zero":               {ctx, "api-1", 0, ""},
	} {
		err := c.Ack(tc.ctx, tc.consumer, tc.seq)
		if lapse.ErrorCode(err) != tc.code {
			t.Errorf("%s: code %q, want %q (%v)", name, lapse.ErrorCode(err), tc.code, err)
		}
	}
	acks, err := f.store.ConsumerAcks(ctx, f.name)
	if err != nil {
		t.Fatal(err)
	}
	if acks["api-1"] != 1 {
		t.Errorf("acks = %v", acks)
	}
}

func TestFeedPaging(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	for i := range 5 {
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: fmt.Sprintf("gr_%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	after := int64(0)
	for {
		page, err := c.FeedPage(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Revocations) > 2 {
			t.Fatalf("page of %d with limit 2", len(page.Revocations))
		}
		if len(page.Revocations) == 0 {
			if page.Next != after {
				t.Errorf("empty page next = %d, want %d", page.Next, after)
			}
			break
		}
		for _, r := range page.Revocations {
			got = append(got, r.TokenID)
		}
		after = page.Next
	}
	if strings.Join(got, ",") != "gr_0,gr_1,gr_2,gr_3,gr_4" {
		t.Errorf("feed = %v", got)
	}
	if _, err := c.Feed(ctx, -1, 0); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("negative after: code %q", lapse.ErrorCode(err))
	}
	b, _ := json.Marshal(token.FeedResponse{Revocations: []*lapse.TokenRevocation{}, Next: 3})
	if string(b) != `{"revocations":[],"next":3}` {
		t.Errorf("wire format = %s", b)
	}
}

func TestStoreDown(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	sw := &feedtest.SwitchableStore{Store: f.store}
	f.store = sw
	c := f.open(t, f.config("api-1"))
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	g := mustGrant(t, c, grantReq(id, clk.Now().Add(time.Hour), nil))
	sw.Down.Store(true)
	if in, err := c.Introspect(ctx, g.Secret["token"]); lapse.ErrorCode(err) != lapse.EUNAVAILABLE || in == nil || in.Active {
		t.Errorf("introspect with the store down: %+v, code %q; want inactive and %q", in, lapse.ErrorCode(err), lapse.EUNAVAILABLE)
	}
	// A bad token needs no store: still a plain inactive answer.
	if in, err := c.Introspect(ctx, "garbage"); err != nil || in.Active {
		t.Errorf("bad token with the store down: %+v %v", in, err)
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err == nil {
		t.Error("Revoke succeeded without the store")
	}
	if _, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: g.State}); err == nil {
		t.Error("Verify succeeded without the store")
	}
	if _, err := c.Feed(ctx, 0, 0); lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Errorf("Feed: code %q", lapse.ErrorCode(err))
	}
	if err := c.Ack(ctx, "api-1", 0); lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Errorf("Ack: code %q", lapse.ErrorCode(err))
	}
	if _, err := c.Discover(ctx, &connector.DiscoverRequest{}); err == nil {
		t.Error("Discover succeeded without the store")
	}
	sw.Down.Store(false)
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
}

func TestDiscoverSeesGrantsOfOtherReplicas(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	a := f.open(t, f.config())
	id := lapse.NewID(lapse.PrefixGrant, clk.Now())
	g := mustGrant(t, a, grantReq(id, clk.Now().Add(time.Hour), map[string]any{"scopes": []any{"read"}}))
	// The broker's rows: this grant, one of another target, and one still
	// provisioning (no state, so no token the broker knows of).
	insertGrant(t, f.store, clk, id, f.name, lapse.GrantActive, g.State)
	insertGrant(t, f.store, clk, lapse.NewID(lapse.PrefixGrant, clk.Now()), "elsewhere", lapse.GrantActive, g.State)
	insertGrant(t, f.store, clk, lapse.NewID(lapse.PrefixGrant, clk.Now()), f.name, lapse.GrantProvisioning, nil)

	b := f.open(t, f.config()) // another replica: nothing in memory
	d, err := b.Discover(ctx, &connector.DiscoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Principals) != 1 || d.Principals[0].GrantID != id || d.Principals[0].Name != id || !d.Principals[0].Ephemeral ||
		strings.Join(d.Principals[0].Privileges, ",") != "aud:"+audience+",ent:payments/refund,scope:read" {
		t.Fatalf("Discover = %+v", d.Principals)
	}
	if _, err := a.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	if d, _ := b.Discover(ctx, &connector.DiscoverRequest{}); len(d.Principals) != 0 {
		t.Errorf("Discover lists a revoked token: %+v", d.Principals)
	}
}

func TestDiscoverSkipsExpired(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	f := newFixture(t, clk)
	c := f.open(t, f.config())
	mustGrant(t, c, grantReq(lapse.NewID(lapse.PrefixGrant, clk.Now()), clk.Now().Add(time.Minute), nil))
	if d, _ := c.Discover(ctx, &connector.DiscoverRequest{}); len(d.Principals) != 1 {
		t.Fatalf("Discover = %+v, want the active token", d.Principals)
	}
	clk.Add(time.Minute)
	if d, _ := c.Discover(ctx, &connector.DiscoverRequest{}); len(d.Principals) != 0 {
		t.Errorf("Discover lists an expired token: %+v", d.Principals)
	}
}

// insertGrant writes a grant row (and the request it needs) as the broker
// would.
func insertGrant(t *testing.T, store lapse.Store, clk lapse.Clock, id, target string, state lapse.GrantState, connState []byte) {
	t.Helper()
	now := clk.Now()
	p := lapse.Principal{ID: "agent-7", Kind: lapse.KindAgent}
	req := &lapse.Request{
		ID: lapse.NewID(lapse.PrefixRequest, now), Requester: p, Entitlement: "payments/refund",
		Duration: lapse.Duration(time.Hour), State: lapse.RequestApproved, CreatedAt: now, ExpiresAt: now.Add(time.Hour),
	}
	req.Hash = req.ComputeHash()
	g := &lapse.Grant{
		ID: id, RequestID: req.ID, Principal: p, Entitlement: "payments/refund", Target: target, State: state,
		StartsAt: now, ExpiresAt: now.Add(time.Hour), DueAt: now.Add(time.Hour), ConnectorState: connState, CreatedAt: now,
	}
	err := store.Update(context.Background(), func(tx lapse.Tx) error {
		if err := tx.InsertRequest(context.Background(), req); err != nil {
			return err
		}
		return tx.InsertGrant(context.Background(), g)
	})
	if err != nil {
		t.Fatalf("insert grant: %v", err)
	}
}
