package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/authn/workload/workloadtest"
	"github.com/lapsehq/lapse/config"
)

// machineConfig trusts one OIDC issuer ({{ISSUER}}, found by discovery)
// and offers service entitlements on the token target and on a fake
// target (which hands out a user and password like a database).
const machineConfig = `data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
workload:
  issuers:
    - name: test
      issuer: {{ISSUER}}
      discovery: true
      audiences: [lapse]
      leeway: 5s
      principal: '"svc:" + claims.sub'
      groups: '["ci"]'
targets:
  demo-api:
    kind: token
    config:
      issuer: http://127.0.0.1:8700
      audience: demo-api
      generate_key: true
  scratch:
    kind: fake
entitlements:
  - name: demo-api/deploy
    target: demo-api
    lanes: [service]
    requesters: ["group:ci"]
    default_duration: 10m
    max_duration: 1h
    approval: {auto: true}
    spec:
      scopes: ["demo:deploy"]
  - name: scratch/use
    target: scratch
    lanes: [service]
    max_duration: 10m
    approval: {auto: true}
  - name: scratch/admin
    target: scratch
    lanes: [service]
    max_duration: 10m
    approval:
      required: 1
      approvers: [bob]
  - name: demo-api/read
    target: demo-api
    lanes: [human]
    max_duration: 1h
    approval: {auto: true}
`

// machineLapse is a running server with a trusted test issuer, an admin
// key (to count requests and grants) and an introspection key.
type machineLapse struct {
	*running
	issuer     *workloadtest.Issuer
	admin      string
	introspect string
}

func startMachineLapse(t testing.TB) *machineLapse {
	t.Helper()
	is := workloadtest.NewIssuer(t)
	path := writeServerConfig(t, strings.ReplaceAll(machineConfig, "{{ISSUER}}", is.URL))
	key := func(args ...string) string {
		stdout, _, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", path}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(stdout)
	}
	m := &machineLapse{issuer: is}
	m.admin = key("--principal", "ops", "--scope", "admin")
	m.introspect = key("--principal", "api-gw", "--kind", "service", "--scope", "introspect")
	m.running = startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "info")
	return m
}

// token returns a valid workload token for sub, signed with the issuer's
// key kid.
func (m *machineLapse) token(sub, kid string) string {
	return m.issuer.Token(kid, m.issuer.Claims(sub, "lapse", time.Now(), 5*time.Minute))
}

// postForm posts a form with an optional bearer credential and returns
// the status and body.
func postForm(t testing.TB, u, bearer string, form url.Values) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func exchangeValues(subject, entitlement string) url.Values {
	return url.Values{
		"grant_type":         {api.GrantTypeTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {api.TokenTypeJWT},
		"audience":           {entitlement},
	}
}

func (m *machineLapse) exchange(t testing.TB, subject, entitlement string, extra ...string) (int, []byte) {
	t.Helper()
	v := exchangeValues(subject, entitlement)
	for i := 0; i+1 < len(extra); i += 2 {
		v.Set(extra[i], extra[i+1])
	}
	return postForm(t, m.url+"/v1/token", "", v)
}

func (m *machineLapse) introspectToken(t *testing.T, tok string) bool {
	t.Helper()
	code, body := postForm(t, m.url+"/v1/targets/demo-api/introspect", m.introspect, url.Values{"token": {tok}})
	var in struct{ Active bool }
	if code != 200 || json.Unmarshal(body, &in) != nil {
		t.Fatalf("introspect: %d %s", code, body)
	}
	return in.Active
}

// counts returns how many requests and grants the store holds.
func (m *machineLapse) counts(t *testing.T) (requests, grants int) {
	t.Helper()
	var rs struct{ Requests []*lapse.Request }
	var gs struct{ Grants []*lapse.Grant }
	if code := call(t, "GET", m.url+"/v1/requests?limit=1000", m.admin, nil, &rs); code != 200 {
		t.Fatalf("list requests: %d", code)
	}
	if code := call(t, "GET", m.url+"/v1/grants?limit=1000", m.admin, nil, &gs); code != 200 {
		t.Fatalf("list grants: %d", code)
	}
	return len(rs.Requests), len(gs.Grants)
}

// TestMachineLaneOneCall: a workload with a valid token gets a credential
// in one call, without any approval, and loses it on release before the
// release call returns.
func TestMachineLaneOneCall(t *testing.T) {
	m := startMachineLapse(t)
	subject := m.token("deployer", workloadtest.KidEd25519)
	code, body := m.exchange(t, subject, "demo-api/deploy", "lapse_task_id", "deploy-42", "lapse_duration", "5m")
	if code != 200 {
		t.Fatalf("exchange: %d %s", code, body)
	}
	var tr api.TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.TokenType != "Bearer" || tr.IssuedTokenType != api.TokenTypeAccessToken || tr.ExpiresIn < 299 || tr.ExpiresIn > 300 ||
		strings.Count(tr.AccessToken, ".") != 2 || !lapse.ValidID(lapse.PrefixGrant, tr.GrantID) {
		t.Fatalf("token response %s", body)
	}
	if !m.introspectToken(t, tr.AccessToken) {
		t.Fatal("the issued token is not active")
	}
	var g lapse.Grant
	if code := call(t, "GET", m.url+"/v1/grants/"+tr.GrantID, m.admin, nil, &g); code != 200 {
		t.Fatalf("get grant: %d", code)
	}
	if g.State != lapse.GrantActive || g.Principal.ID != "svc:deployer" || g.Principal.Kind != lapse.KindService || g.TaskID != "deploy-42" {
		t.Errorf("grant %+v", g)
	}
	var req lapse.Request
	if code := call(t, "GET", m.url+"/v1/requests/"+g.RequestID, m.admin, nil, &req); code != 200 {
		t.Fatalf("get request: %d", code)
	}
	if req.State != lapse.RequestApproved || len(req.Approvals) != 0 || req.Required != 0 || req.Channel != lapse.ChannelMachine {
		t.Errorf("request %+v: want auto-approved on the machine channel, no approval", req)
	}

	code, body = postForm(t, m.url+"/v1/token/revoke", subject, url.Values{"token": {tr.AccessToken}, "token_type_hint": {"access_token"}})
	if code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	// Right after the call returns, not eventually.
	if m.introspectToken(t, tr.AccessToken) {
		t.Error("the token is still active after the revocation call returned")
	}
	if code := call(t, "GET", m.url+"/v1/grants/"+tr.GrantID, m.admin, nil, &g); code != 200 || g.State != lapse.GrantRevoked || g.EndReason != lapse.EndReleased {
		t.Errorf("grant after revocation: %d %s %s", code, g.State, g.EndReason)
	}

	// A target other than a token target: the credentials come in
	// lapse_credentials, and access_token is the grant ID to revoke with.
	code, body = m.exchange(t, m.token("deployer", workloadtest.KidES256), "scratch/use")
	tr = api.TokenResponse{}
	if err := json.Unmarshal(body, &tr); err != nil || code != 200 {
		t.Fatalf("exchange scratch/use: %d %s", code, body)
	}
	if tr.TokenType != "N_A" || tr.AccessToken != tr.GrantID || tr.Credentials == nil || tr.Credentials.Secret["password"] == "" {
		t.Fatalf("response %s", body)
	}
	code, _ = postForm(t, m.url+"/v1/token/revoke", m.token("deployer", workloadtest.KidRSA), url.Values{"token": {tr.AccessToken}})
	if code != 200 {
		t.Fatalf("revoke scratch: %d", code)
	}
	if code := call(t, "GET", m.url+"/v1/grants/"+tr.GrantID, m.admin, nil, &g); code != 200 || g.State != lapse.GrantRevoked {
		t.Errorf("scratch grant after revocation: %d %s", code, g.State)
	}
	if logs := m.stderr.String(); strings.Contains(logs, subject) || strings.Contains(logs, tr.Credentials.Secret["password"]) {
		t.Error("a token or a credential appears in the logs")
	}
}

// TestMachineLaneRefusals: every bad token, and every entitlement policy
// does not grant without a human, is refused with the right OAuth error,
// and nothing is granted or even filed. One workload cannot revoke
// another's grant.
func TestMachineLaneRefusals(t *testing.T) {
	m := startMachineLapse(t)
	is := m.issuer
	stranger := workloadtest.NewIssuer(t)
	now := time.Now()
	good := func() map[string]any { return is.Claims("deployer", "lapse", now, 5*time.Minute) }
	with := func(k string, v any) map[string]any { c := good(); c[k] = v; return c }
	without := func(k string) map[string]any { c := good(); delete(c, k); return c }
	hdr := func(kid string, kv ...any) map[string]any {
		h := map[string]any{"alg": "EdDSA", "kid": kid, "typ": "JWT"}
		for i := 0; i+1 < len(kv); i += 2 {
			h[kv[i].(string)] = kv[i+1]
		}
		return h
	}
	pub, _ := x509.MarshalPKIXPublicKey(&is.RSA.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	signed := is.Token(workloadtest.KidEd25519, good())
	forged := signed[:strings.LastIndexByte(signed, '.')+1] + strings.Split(workloadtest.Sign("EdDSA", attacker, hdr(workloadtest.KidEd25519), good()), ".")[2]

	// A grant the other workload must not be able to revoke.
	code, body := m.exchange(t, m.token("deployer", workloadtest.KidEd25519), "demo-api/deploy")
	var mine api.TokenResponse
	if err := json.Unmarshal(body, &mine); err != nil || code != 200 {
		t.Fatalf("exchange: %d %s", code, body)
	}
	reqs, grants := m.counts(t)

	tests := []struct {
		name, subject, entitlement string
		status                     int
		code                       string
	}{
		{"alg none", workloadtest.Sign("none", nil, map[string]any{"alg": "none", "kid": workloadtest.KidEd25519}, good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"HMAC signed with the public key", workloadtest.Sign("HS256", pubPEM, map[string]any{"alg": "HS256", "kid": workloadtest.KidRSA}, good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"jku header", workloadtest.Sign("EdDSA", attacker, hdr("evil", "jku", stranger.URL+"/jwks"), good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"x5u header", workloadtest.Sign("EdDSA", is.Ed25519, hdr(workloadtest.KidEd25519, "x5u", stranger.URL+"/c.pem"), good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"embedded jwk", workloadtest.Sign("EdDSA", attacker, hdr(workloadtest.KidEd25519, "jwk", workloadtest.PublicJWK(attacker, workloadtest.KidEd25519)), good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"missing audience", is.Token(workloadtest.KidEd25519, without("aud")), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"wrong audience", is.Token(workloadtest.KidEd25519, with("aud", "kubernetes")), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"expired", is.Token(workloadtest.KidEd25519, with("exp", now.Add(-time.Minute).Unix())), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"not yet valid", is.Token(workloadtest.KidEd25519, with("nbf", now.Add(time.Minute).Unix())), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"issuer not configured", stranger.Token(workloadtest.KidEd25519, stranger.Claims("deployer", "lapse", now, time.Minute)), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"kid not in the JWKS", workloadtest.Sign("EdDSA", is.Ed25519, hdr("not-published"), good()), "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"bad signature", forged, "demo-api/deploy", 400, api.OAuthInvalidRequest},
		{"needs human approval", signed, "scratch/admin", 400, api.OAuthInvalidTarget},
		{"human lane only", signed, "demo-api/read", 400, api.OAuthInvalidTarget},
		{"unknown entitlement", signed, "nope/read", 400, api.OAuthInvalidTarget},
		{"longer than the maximum", signed, "demo-api/deploy", 400, api.OAuthInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var extra []string
			if tt.name == "longer than the maximum" {
				extra = []string{"lapse_duration", "2h"}
			}
			code, body := m.exchange(t, tt.subject, tt.entitlement, extra...)
			var oe api.OAuthError
			if err := json.Unmarshal(body, &oe); err != nil || code != tt.status || oe.Error != tt.code || oe.Description == "" {
				t.Fatalf("status %d %s; want %d %s", code, body, tt.status, tt.code)
			}
			if strings.Contains(string(body), tt.subject) {
				t.Error("the answer quotes the token")
			}
		})
	}
	if r, g := m.counts(t); r != reqs || g != grants {
		t.Errorf("refused exchanges left %d requests and %d grants behind", r-reqs, g-grants)
	}

	// Another workload cannot revoke the deployer's grant: 200 (RFC 7009),
	// and the grant stays active.
	code, body = postForm(t, m.url+"/v1/token/revoke", m.token("intruder", workloadtest.KidEd25519), url.Values{"token": {mine.GrantID}})
	if code != 200 {
		t.Fatalf("revoke by another workload: %d %s", code, body)
	}
	if !m.introspectToken(t, mine.AccessToken) {
		t.Error("another workload revoked the deployer's grant")
	}
	// Revocation needs a valid caller.
	code, body = postForm(t, m.url+"/v1/token/revoke", forged, url.Values{"token": {mine.GrantID}})
	if code != 401 || !strings.Contains(string(body), api.OAuthInvalidClient) {
		t.Errorf("revoke with a forged token: %d %s", code, body)
	}
	if !m.introspectToken(t, mine.AccessToken) {
		t.Error("a forged caller revoked the grant")
	}
}

// BenchmarkTokenExchange measures the machine lane end to end: a real
// lapse server (SQLite store, the token target, an auto-approved service
// entitlement) answers POST /v1/token from 1 and 16 concurrent clients.
// Every call verifies the workload JWT (EdDSA, key from the issuer's
// JWKS, cached after discovery), maps its claims with CEL, checks the
// catalog, stores a request and a grant with their events, provisions
// (one Ed25519 signature) and returns the token. The bare Ed25519 work —
// one verify and one sign — is measured in the same run for the ratio.
// Run:
//
//	go test ./cmd/lapse -run '^$' -bench TokenExchange -benchtime 4000x
func BenchmarkTokenExchange(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run("api/clients="+strconv.Itoa(clients), func(b *testing.B) {
			m := startMachineLapse(b)
			subject := m.issuer.Token(workloadtest.KidEd25519, m.issuer.Claims("deployer", "lapse", time.Now(), time.Hour))
			body := exchangeValues(subject, "demo-api/deploy")
			body.Set("lapse_duration", "5m")
			enc := body.Encode()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
			exchange := func() error {
				req, _ := http.NewRequest("POST", m.url+"/v1/token", strings.NewReader(enc))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var tr api.TokenResponse
				if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
					return err
				}
				if resp.StatusCode != http.StatusOK || strings.Count(tr.AccessToken, ".") != 2 {
					return &lapse.Error{Code: lapse.EINTERNAL, Message: "no token issued: status " + resp.Status}
				}
				return nil
			}
			benchConcurrently(b, clients, exchange)
			client.CloseIdleConnections()
			if err := m.stop(); err != nil {
				b.Fatal(err)
			}
		})
	}
	b.Run("bare-ed25519-verify+sign", func(b *testing.B) {
		_, subjectKey, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		_, tokenKey, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		subject := []byte(`eyJhbGciOiJFZERTQSIsImtpZCI6ImVkLTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJsYXBzZSIsImV4cCI6MTc2NzMyNjEwMCwiaWF0IjoxNzY3MzIyNTAwLCJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjQxMjM0IiwibmJmIjoxNzY3MzIyNTAwLCJzdWIiOiJkZXBsb3llciJ9`)
		sig := ed25519.Sign(subjectKey, subject)
		pub := subjectKey.Public().(ed25519.PublicKey)
		msg := []byte(`{"aud":"demo-api","exp":1767322800,"iat":1767322500,"iss":"http://127.0.0.1:8700","jti":"gr_06f3ahcwtdabzqa3fvcv98rvmw","scope":"demo:deploy","sub":"svc:deployer"}`)
		b.ResetTimer()
		for b.Loop() {
			if !ed25519.Verify(pub, subject, sig) {
				b.Fatal("verify")
			}
			_ = ed25519.Sign(tokenKey, msg)
		}
	})
}

// TestMachineLaneKeyFileError: a key file that cannot be read stops the
// server at start, with the file, line and field of the issuer's option.
func TestMachineLaneKeyFileError(t *testing.T) {
	src := strings.Replace(machineConfig, "      discovery: true\n", "      jwks_file: missing-jwks.json\n", 1)
	path := writeServerConfig(t, strings.ReplaceAll(src, "{{ISSUER}}", "https://issuer.example.com"))
	_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Path != "workload.issuers[0].jwks_file" || ce.Line != 8 {
		t.Fatalf("error %v; want one at line 8, workload.issuers[0].jwks_file", err)
	}
}
