package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/connector/token"
)

// machineService is the Service side of the token endpoints: a catalog
// with an auto-approved token entitlement, an auto-approved database
// entitlement and one that needs a human; it records what it is asked.
type machineService struct {
	*fakeService
	mu        sync.Mutex
	creates   []lapse.RequestInput
	cancels   []string
	releases  []string
	createErr error
	pending   bool             // CreateRequest files a pending request
	release   lapse.GrantState // the state Release returns (default revoked)
	owner     string           // Release answers ENOTFOUND to anyone else
	principal *lapse.Principal // the caller of the last call
	sponsor   *lapse.Principal // the sponsor it acted for, under delegation
	channel   string
}

func (m *machineService) note(ctx context.Context) {
	m.principal, m.sponsor, m.channel = lapse.FromContext(ctx), lapse.SponsorFrom(ctx), lapse.ChannelFrom(ctx)
}

func (m *machineService) Entitlements(ctx context.Context) ([]*lapse.Entitlement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.note(ctx)
	auto := lapse.ApprovalRule{Auto: true}
	return []*lapse.Entitlement{
		{Name: "api/read", Target: "api", Lanes: []lapse.PrincipalKind{lapse.KindService}, Approval: auto},
		{Name: "prod-db/read", Target: "prod-db", Lanes: []lapse.PrincipalKind{lapse.KindService}, Approval: auto},
		{Name: "prod-db/admin", Target: "prod-db", Lanes: []lapse.PrincipalKind{lapse.KindService}, Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"bob"}}},
	}, nil
}

func (m *machineService) CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.note(ctx)
	m.creates = append(m.creates, in)
	if m.createErr != nil {
		return nil, m.createErr
	}
	req := fakeRequest(lapse.NewID(lapse.PrefixRequest, t0))
	if m.pending {
		return &lapse.RequestResult{Request: req}, nil
	}
	req.State = lapse.RequestApproved
	g := fakeGrant(lapse.NewID(lapse.PrefixGrant, t0))
	g.Target = strings.Split(in.Entitlement, "/")[0]
	creds := &lapse.Credentials{GrantID: g.ID, Target: g.Target, ExpiresAt: g.ExpiresAt, Info: map[string]string{"user": "lapse_x"}}
	if g.Target == "api" {
		creds.Secret = map[string]string{"token": "h.p.s"}
	} else {
		creds.Secret = map[string]string{"password": "pw-secret"}
	}
	return &lapse.RequestResult{Request: req, Grant: g, Credentials: creds}, nil
}

func (m *machineService) ReviewRequest(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error) {
	return nil, lapse.Errorf(lapse.ECONFLICT, "not break-glass")
}

func (m *machineService) CancelRequest(ctx context.Context, id string) (*lapse.Request, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cancels = append(m.cancels, id)
	return fakeRequest(id), nil
}

func (m *machineService) Release(ctx context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.note(ctx)
	if !in.Wait {
		return nil, lapse.Errorf(lapse.EINTERNAL, "release without wait")
	}
	if p := lapse.FromContext(ctx); m.owner != "" && (p == nil || p.ID != m.owner) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no grant %s", id)
	}
	m.releases = append(m.releases, id)
	g := fakeGrant(id)
	g.State = lapse.GrantRevoked
	if m.release != "" {
		g.State = m.release
	}
	return g, nil
}

// fakeWorkload accepts "svc-token" (service deployer), "human-token" (a
// human) and "down" (issuer unreachable); anything else is refused.
type fakeWorkload struct{}

func (fakeWorkload) Authenticate(ctx context.Context, tok string) (*lapse.Principal, error) {
	switch tok {
	case "svc-token":
		return &lapse.Principal{ID: "svc:deployer", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest}, CredentialID: "workload:test"}, nil
	case "svc2-token":
		return &lapse.Principal{ID: "svc:other", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest}}, nil
	case "human-token":
		return &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest}}, nil
	case "agent-token": // a workload mapped to an agent (kind: agent)
		return &lapse.Principal{ID: "agent:coder", Kind: lapse.KindAgent, Scopes: []string{lapse.ScopeRequest}, CredentialID: "workload:test"}, nil
	case "down":
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "keys not available")
	}
	return nil, &lapse.Error{Code: lapse.EUNAUTHORIZED, Reason: "token_expired", Message: "the subject token has expired"}
}

// jwtTarget is a token target whose active tokens are "h.p.s" (jti a
// grant of svc:deployer).
type jwtTarget struct {
	*fakeTarget
	jti string
}

func (j *jwtTarget) IntrospectUse(ctx context.Context, tok string) (*token.Introspection, error) {
	return j.Introspect(ctx, tok)
}

func (j *jwtTarget) Introspect(ctx context.Context, tok string) (*token.Introspection, error) {
	if tok == "h.p.s" {
		return &token.Introspection{Active: true, Jti: j.jti}, nil
	}
	return &token.Introspection{Active: false}, nil
}

type machineEnv struct {
	svc     *machineService
	handler http.Handler
	logs    *syncBuffer
	keys    map[string]string
	jti     string
}

func newMachineEnv(t *testing.T) *machineEnv {
	t.Helper()
	e := &machineEnv{svc: &machineService{fakeService: &fakeService{}}, logs: &syncBuffer{}, keys: map[string]string{}, jti: lapse.NewID(lapse.PrefixGrant, t0)}
	ks := &keyStore{keys: map[string]*lapse.APIKey{}}
	for name, p := range map[string]lapse.Principal{
		"ci":      {ID: "svc:ci", Kind: lapse.KindService},
		"alice":   {ID: "alice", Kind: lapse.KindHuman, Groups: []string{"dev"}},
		"helper":  {ID: "helper", Kind: lapse.KindAgent},
		"chained": {ID: "chained", Kind: lapse.KindAgent, Act: []string{"bob"}},
	} {
		k, secret, err := authn.GenerateAPIKey(p, []string{lapse.ScopeRequest}, name, t0, 0)
		if err != nil {
			t.Fatal(err)
		}
		ks.keys[k.Prefix] = k
		e.keys[name] = secret
	}
	s := &api.Server{
		Service:  e.svc,
		Auth:     &authn.APIKeys{Keys: ks, Clock: &fakeClock{now: t0}},
		Workload: fakeWorkload{},
		Tokens:   map[string]api.TokenTarget{"api": &jwtTarget{fakeTarget: newFakeTarget(t), jti: e.jti}},
		Logger:   slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	e.handler = s.Handler()
	return e
}

type oauthResponse struct {
	status int
	header http.Header
	body   []byte
}

func (e *machineEnv) post(t *testing.T, path, auth, contentType, body string) oauthResponse {
	t.Helper()
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	return oauthResponse{rec.Code, rec.Header(), rec.Body.Bytes()}
}

const form = "application/x-www-form-urlencoded"

func exchangeForm(kv ...string) string {
	v := url.Values{
		"grant_type":         {api.GrantTypeTokenExchange},
		"subject_token":      {"svc-token"},
		"subject_token_type": {api.TokenTypeJWT},
		"audience":           {"api/read"},
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "-" {
			v.Del(kv[i])
		} else {
			v.Set(kv[i], kv[i+1])
		}
	}
	return v.Encode()
}

func wantOAuth(t *testing.T, r oauthResponse, status int, code string) api.OAuthError {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	var oe api.OAuthError
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&oe); err != nil {
		t.Fatalf("not an OAuth error: %s (%v)", r.body, err)
	}
	if oe.Error != code || oe.Description == "" {
		t.Fatalf("error %+v, want %q with a description", oe, code)
	}
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
		t.Errorf("caching headers %v", r.header)
	}
	return oe
}

// TestTokenExchangeRefusesBadInput: malformed calls are refused with
// OAuth's codes before any credential is checked or anything is filed.
func TestTokenExchangeRefusesBadInput(t *testing.T) {
	e := newMachineEnv(t)
	tests := []struct {
		name, path, auth, ctype, body string
		status                        int
		code                          string
	}{
		{"parameters in the URL", "/v1/token?subject_token=svc-token", "", form, exchangeForm(), 400, api.OAuthInvalidRequest},
		{"an Authorization header too", "/v1/token", "Bearer " + "x", form, exchangeForm(), 400, api.OAuthInvalidRequest},
		{"JSON body", "/v1/token", "", "application/json", `{"grant_type":"x"}`, 400, api.OAuthInvalidRequest},
		{"too large", "/v1/token", "", form, exchangeForm("lapse_reason", strings.Repeat("x", api.MaxFormBody)), 413, api.OAuthInvalidRequest},
		{"a parameter twice", "/v1/token", "", form, exchangeForm() + "&audience=api/read", 400, api.OAuthInvalidRequest},
		{"an unknown lapse parameter", "/v1/token", "", form, exchangeForm("lapse_durtion", "5m"), 400, api.OAuthInvalidRequest},
		{"no grant_type", "/v1/token", "", form, exchangeForm("grant_type", "-"), 400, api.OAuthInvalidRequest},
		{"another grant_type", "/v1/token", "", form, exchangeForm("grant_type", "client_credentials"), 400, api.OAuthUnsupportedGrantType},
		{"an actor token without its type", "/v1/token", "", form, exchangeForm("actor_token", "x"), 400, api.OAuthInvalidRequest},
		{"an actor token type without the token", "/v1/token", "", form, exchangeForm("actor_token_type", api.TokenTypeJWT), 400, api.OAuthInvalidRequest},
		{"an unknown actor token type", "/v1/token", "", form, exchangeForm("actor_token", "agent-token", "actor_token_type", "urn:x"), 400, api.OAuthInvalidRequest},
		{"no subject token", "/v1/token", "", form, exchangeForm("subject_token", "-"), 400, api.OAuthInvalidRequest},
		{"an unknown subject token type", "/v1/token", "", form, exchangeForm("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"), 400, api.OAuthInvalidRequest},
		{"no entitlement", "/v1/token", "", form, exchangeForm("audience", "-"), 400, api.OAuthInvalidTarget},
		{"audience and resource disagree", "/v1/token", "", form, exchangeForm("resource", "prod-db/read"), 400, api.OAuthInvalidTarget},
		{"two scopes", "/v1/token", "", form, exchangeForm("audience", "-", "scope", "api/read prod-db/read"), 400, api.OAuthInvalidScope},
		{"a bad duration", "/v1/token", "", form, exchangeForm("lapse_duration", "forever"), 400, api.OAuthInvalidRequest},
		{"a negative duration", "/v1/token", "", form, exchangeForm("lapse_duration", "-5m"), 400, api.OAuthInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantOAuth(t, e.post(t, tt.path, tt.auth, tt.ctype, tt.body), tt.status, tt.code)
		})
	}
	if len(e.svc.creates) != 0 {
		t.Errorf("the service filed %d requests", len(e.svc.creates))
	}
	// Unknown parameters that are not Lapse's are ignored (RFC 6749 §3.2),
	// and empty ones count as absent.
	r := e.post(t, "/v1/token", "", form, exchangeForm("client_id", "anything", "scope", ""))
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
}

// TestTokenExchangeSubject: bad subject tokens are invalid_request (RFC 8693
// §2.2.2) and never quoted; only services may use the machine lane; an issuer that cannot be
// reached is temporarily_unavailable.
func TestTokenExchangeSubject(t *testing.T) {
	e := newMachineEnv(t)
	oe := wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("subject_token", "expired.jwt.value")), 400, api.OAuthInvalidRequest)
	if strings.Contains(oe.Description, "expired.jwt.value") || strings.Contains(e.logs.String(), "expired.jwt.value") {
		t.Error("the token is echoed or logged")
	}
	if !strings.Contains(e.logs.String(), `"reason":"token_expired"`) {
		t.Errorf("the refusal's reason is not logged:\n%s", e.logs)
	}
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("subject_token", "human-token")), 400, api.OAuthUnauthorizedClient)
	r := e.post(t, "/v1/token", "", form, exchangeForm("subject_token", "down"))
	wantOAuth(t, r, 503, api.OAuthTemporarilyUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	// API keys: a service's key is a subject; a human's is not; a bad key
	// is invalid_request like any bad token.
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("subject_token", e.keys["alice"], "subject_token_type", api.TokenTypeAPIKey)), 400, api.OAuthUnauthorizedClient)
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("subject_token", e.keys["ci"]+"x", "subject_token_type", api.TokenTypeAPIKey)), 400, api.OAuthInvalidRequest)
	r = e.post(t, "/v1/token", "", form, exchangeForm("subject_token", e.keys["ci"], "subject_token_type", api.TokenTypeAPIKey))
	if r.status != 200 || e.svc.principal.ID != "svc:ci" {
		t.Fatalf("service API key: %d %s", r.status, r.body)
	}
	if len(e.svc.creates) != 1 {
		t.Errorf("%d requests filed; want only the good one", len(e.svc.creates))
	}
}

// TestTokenExchangeGrants: the one call for a token target and for a
// database target, and the policy refusals that file nothing.
func TestTokenExchangeGrants(t *testing.T) {
	e := newMachineEnv(t)
	r := e.post(t, "/v1/token", "", form, exchangeForm("lapse_task_id", "deploy-42", "lapse_duration", "5m", "lapse_reason", "deploy"))
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var tr api.TokenResponse
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tr); err != nil {
		t.Fatal(err)
	}
	if tr.AccessToken != "h.p.s" || tr.TokenType != "Bearer" || tr.IssuedTokenType != api.TokenTypeAccessToken ||
		tr.ExpiresIn != int64((15*time.Minute)/time.Second) || !lapse.ValidID(lapse.PrefixGrant, tr.GrantID) || tr.Credentials != nil {
		t.Errorf("token response %+v", tr)
	}
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
		t.Errorf("caching headers %v", r.header)
	}
	in := e.svc.creates[0]
	if in.Entitlement != "api/read" || in.TaskID != "deploy-42" || in.Duration.D() != 5*time.Minute || in.Reason != "deploy" {
		t.Errorf("request input %+v", in)
	}
	if e.svc.principal.ID != "svc:deployer" || e.svc.channel != lapse.ChannelMachine {
		t.Errorf("called as %+v on channel %q", e.svc.principal, e.svc.channel)
	}
	if strings.Contains(e.logs.String(), "h.p.s") {
		t.Error("the issued token is logged")
	}

	// A database target: the credentials come in lapse_credentials and
	// access_token is the grant ID. resource may carry the entitlement URN.
	r = e.post(t, "/v1/token", "", form, exchangeForm("audience", "-", "resource", api.EntitlementURNPrefix+"prod-db/read", "requested_token_type", api.TokenTypeGrant))
	tr = api.TokenResponse{}
	if err := json.Unmarshal(r.body, &tr); err != nil || r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if tr.TokenType != "N_A" || tr.IssuedTokenType != api.TokenTypeGrant || tr.AccessToken != tr.GrantID ||
		tr.Credentials == nil || tr.Credentials.Secret["password"] != "pw-secret" || tr.Credentials.Info["user"] != "lapse_x" {
		t.Errorf("database response %s", r.body)
	}

	n := len(e.svc.creates)
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("audience", "prod-db/admin")), 400, api.OAuthInvalidTarget)
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("audience", "nope/read")), 400, api.OAuthInvalidTarget)
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("audience", "-", "scope", "nope/read")), 400, api.OAuthInvalidScope)
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("requested_token_type", api.TokenTypeGrant)), 400, api.OAuthInvalidRequest)
	if len(e.svc.creates) != n {
		t.Errorf("refused exchanges filed %d requests", len(e.svc.creates)-n)
	}

	// A catalog that changed between the check and the filing: the
	// pending request is withdrawn.
	e.svc.pending = true
	wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm()), 400, api.OAuthInvalidTarget)
	if len(e.svc.cancels) != 1 {
		t.Errorf("pending request not withdrawn: %v", e.svc.cancels)
	}
	e.svc.pending = false

	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{lapse.Errorf(lapse.EFORBIDDEN, "credential lacks scope"), 403, api.OAuthAccessDenied},
		{lapse.FieldErrorf(lapse.EINVALID, "duration", "too long"), 400, api.OAuthInvalidRequest},
		{lapse.Errorf(lapse.EUNAVAILABLE, "target down"), 503, api.OAuthTemporarilyUnavailable},
		{lapse.Internal("boom", context.Canceled), 500, api.OAuthServerError},
	} {
		e.svc.createErr = c.err
		oe := wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm()), c.status, c.code)
		if c.status == 500 && oe.Description != "internal error" {
			t.Errorf("500 says %q", oe.Description)
		}
	}
}

// TestTokenExchangeDelegation: RFC 8693 delegation. The subject is the
// sponsor (a person's API key), the actor the agent (an agent's API key or
// a workload token mapped to an agent); the service is asked as the agent
// acting for the sponsor, with the sponsor as authenticated now. Any other
// pairing, and any chain, is refused before anything is filed.
func TestTokenExchangeDelegation(t *testing.T) {
	e := newMachineEnv(t)
	delegate := func(subject, subjectType, actor, actorType string, kv ...string) oauthResponse {
		return e.post(t, "/v1/token", "", form, exchangeForm(append([]string{
			"subject_token", subject, "subject_token_type", subjectType, "actor_token", actor, "actor_token_type", actorType,
		}, kv...)...))
	}
	for name, actor := range map[string][2]string{
		"agent API key":        {e.keys["helper"], api.TokenTypeAPIKey},
		"agent workload token": {"agent-token", api.TokenTypeJWT},
	} {
		t.Run(name, func(t *testing.T) {
			n := len(e.svc.creates)
			r := delegate(e.keys["alice"], api.TokenTypeAPIKey, actor[0], actor[1], "lapse_task_id", "task-7")
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			p, s := e.svc.principal, e.svc.sponsor
			if p == nil || p.Kind != lapse.KindAgent || len(p.Act) != 1 || p.Act[0] != "alice" {
				t.Fatalf("asked as %+v, want the agent acting for alice", p)
			}
			if s == nil || s.ID != "alice" || s.Kind != lapse.KindHuman || len(s.Groups) != 1 || !s.HasScope(lapse.ScopeRequest) {
				t.Fatalf("sponsor %+v, want alice as her key authenticates", s)
			}
			if e.svc.channel != lapse.ChannelMachine || len(e.svc.creates) != n+1 || e.svc.creates[n].TaskID != "task-7" {
				t.Fatalf("channel %q, creates %v", e.svc.channel, e.svc.creates)
			}
		})
	}
	n := len(e.svc.creates)
	for _, c := range []struct {
		name                                   string
		subject, subjectType, actor, actorType string
		status                                 int
		code                                   string
	}{
		{"the subject is a service", e.keys["ci"], api.TokenTypeAPIKey, e.keys["helper"], api.TokenTypeAPIKey, 400, api.OAuthUnauthorizedClient},
		{"the subject is an agent (an agent acting for an agent)", e.keys["helper"], api.TokenTypeAPIKey, "agent-token", api.TokenTypeJWT, 400, api.OAuthUnauthorizedClient},
		{"the actor is a service", e.keys["alice"], api.TokenTypeAPIKey, e.keys["ci"], api.TokenTypeAPIKey, 400, api.OAuthUnauthorizedClient},
		{"the actor is a person", e.keys["alice"], api.TokenTypeAPIKey, "human-token", api.TokenTypeJWT, 400, api.OAuthUnauthorizedClient},
		{"the actor already acts for someone", e.keys["alice"], api.TokenTypeAPIKey, e.keys["chained"], api.TokenTypeAPIKey, 400, api.OAuthUnauthorizedClient},
		{"a bad actor token", e.keys["alice"], api.TokenTypeAPIKey, "expired.jwt", api.TokenTypeJWT, 400, api.OAuthInvalidRequest},
		{"a bad actor key", e.keys["alice"], api.TokenTypeAPIKey, e.keys["helper"] + "x", api.TokenTypeAPIKey, 400, api.OAuthInvalidRequest},
		{"a bad sponsor key", e.keys["alice"] + "x", api.TokenTypeAPIKey, e.keys["helper"], api.TokenTypeAPIKey, 400, api.OAuthInvalidRequest},
		{"the actor's issuer is down", e.keys["alice"], api.TokenTypeAPIKey, "down", api.TokenTypeJWT, 503, api.OAuthTemporarilyUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			oe := wantOAuth(t, delegate(c.subject, c.subjectType, c.actor, c.actorType), c.status, c.code)
			if strings.Contains(oe.Description, "lapse_") {
				t.Errorf("a credential is quoted: %q", oe.Description)
			}
		})
	}
	if len(e.svc.creates) != n {
		t.Errorf("refused delegations filed %d requests", len(e.svc.creates)-n)
	}
	// An agent alone is not the machine lane's subject: it says how to
	// delegate.
	oe := wantOAuth(t, e.post(t, "/v1/token", "", form, exchangeForm("subject_token", "agent-token")), 400, api.OAuthUnauthorizedClient)
	if !strings.Contains(oe.Description, "actor_token") {
		t.Errorf("description %q does not say how an agent asks", oe.Description)
	}
}

// TestTokenRevoke: RFC 7009 — authenticated, own grants only, 200 for
// anything else, and an answer only once revocation is verified.
func TestTokenRevoke(t *testing.T) {
	e := newMachineEnv(t)
	e.svc.owner = "svc:deployer"
	gid := lapse.NewID(lapse.PrefixGrant, t0)
	revoke := func(auth, tok string) oauthResponse {
		return e.post(t, "/v1/token/revoke", auth, form, url.Values{"token": {tok}}.Encode())
	}
	r := revoke("", gid)
	wantOAuth(t, r, 401, api.OAuthInvalidClient)
	if r.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	wantOAuth(t, revoke("Bearer bad-token", gid), 401, api.OAuthInvalidClient)
	wantOAuth(t, revoke("Bearer human-token", gid), 400, api.OAuthUnauthorizedClient)
	wantOAuth(t, e.post(t, "/v1/token/revoke", "Bearer svc-token", form, ""), 400, api.OAuthInvalidRequest)

	ok := func(r oauthResponse) {
		t.Helper()
		if r.status != 200 || strings.TrimSpace(string(r.body)) != "{}" {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	}
	ok(revoke("Bearer svc-token", gid))
	ok(revoke("Bearer svc-token", "h.p.s")) // the JWT, by its jti
	if len(e.svc.releases) != 2 || e.svc.releases[0] != gid || e.svc.releases[1] != e.jti || e.svc.channel != lapse.ChannelMachine {
		t.Errorf("releases %v on %q", e.svc.releases, e.svc.channel)
	}
	// Another workload's grant, an inactive token and garbage: 200, and
	// nothing released.
	ok(revoke("Bearer svc2-token", gid))
	ok(revoke("Bearer svc-token", "x.y.z"))
	ok(revoke("Bearer svc-token", "garbage"))
	if len(e.svc.releases) != 2 {
		t.Errorf("releases %v", e.svc.releases)
	}
	// A service API key authenticates too (its grants are its own).
	e.svc.owner = "svc:ci"
	ok(revoke("Bearer "+e.keys["ci"], gid))
	// Not verified in time: 503, retry.
	e.svc.release = lapse.GrantRevokeFailed
	wantOAuth(t, revoke("Bearer "+e.keys["ci"], gid), 503, api.OAuthTemporarilyUnavailable)
}
