// Package oidctest runs a real OpenID Connect provider inside a test: the
// provider of github.com/zitadel/oidc (discovery, authorization code flow
// with PKCE, refresh tokens, the device authorization grant, JWKS) on
// 127.0.0.1, over a small in-memory storage with the users and clients a
// test adds. Its login page signs in whoever the test says, without a
// form, so that a test can play the browser by following redirects.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
)

// User is a person the provider knows.
type User struct {
	// ID is the subject (sub).
	ID            string
	Email         string
	EmailVerified bool
	Name          string
	// Groups are sent in the "groups" claim when the groups scope is asked.
	Groups []string
}

// LoopbackRedirect is the redirect URI every client is registered with:
// as RFC 8252 §7.3 asks, the provider accepts it on any port.
const LoopbackRedirect = "http://127.0.0.1/callback"

// Provider is a running provider.
type Provider struct {
	// URL is the issuer identifier (its iss) and the base of discovery.
	URL    string
	Server *httptest.Server
	// Key signs the ID tokens (RS256, key ID KeyID).
	Key   *rsa.PrivateKey
	KeyID string

	op      *op.Provider
	storage *storage
}

// Options configure a provider. Zero values get defaults.
type Options struct {
	// IDTokenLifetime is how long its ID tokens live (default 1h).
	IDTokenLifetime time.Duration
	// NoDevice leaves the device authorization endpoint out of discovery.
	NoDevice bool
}

// New starts a provider on 127.0.0.1; it stops when the test ends.
func New(t testing.TB, opts Options) *Provider {
	t.Helper()
	if opts.IDTokenLifetime == 0 {
		opts.IDTokenLifetime = time.Hour
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &Provider{Key: key, KeyID: randomString(8)}
	p.storage = newStorage(key, p.KeyID, opts.IDTokenLifetime)
	mux := http.NewServeMux()
	p.Server = httptest.NewServer(mux)
	t.Cleanup(p.Server.Close)
	p.URL = p.Server.URL
	p.storage.loginURL = p.URL + "/login?id="

	var cryptoKey [32]byte
	if _, err := rand.Read(cryptoKey[:]); err != nil {
		t.Fatal(err)
	}
	cfg := &op.Config{
		CryptoKey:             cryptoKey,
		CodeMethodS256:        true,
		GrantTypeRefreshToken: true,
		SupportedScopes:       []string{"openid", "profile", "email", "offline_access", "groups"},
		DeviceAuthorization: op.DeviceAuthorizationConfig{
			Lifetime: 5 * time.Minute,
			// The shortest interval RFC 8628 clients poll at.
			PollInterval: time.Second,
			UserFormPath: "/device",
			UserCode:     op.UserCodeBase20,
		},
	}
	p.op, err = op.NewProvider(cfg, p.storage, op.StaticIssuer(p.URL), op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("GET /login", p.login)
	if opts.NoDevice {
		mux.HandleFunc("GET /.well-known/openid-configuration", p.discoveryWithoutDevice)
	}
	mux.Handle("/", p.op)
	return p
}

// discoveryWithoutDevice serves the provider's discovery document without
// its device_authorization_endpoint, like a provider without RFC 8628.
func (p *Provider) discoveryWithoutDevice(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	p.op.ServeHTTP(rec, r)
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	delete(doc, "device_authorization_endpoint")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}

// AddUser adds or replaces a user.
func (p *Provider) AddUser(u User) {
	p.storage.mu.Lock()
	defer p.storage.mu.Unlock()
	p.storage.users[u.ID] = &u
}

// AddClient registers a public native client (no secret, PKCE required)
// with the code, refresh token and device code grants, redirecting to
// LoopbackRedirect.
func (p *Provider) AddClient(id string) {
	p.storage.mu.Lock()
	defer p.storage.mu.Unlock()
	p.storage.clients[id] = &client{id: id, loginURL: p.storage.loginURL, idTokenLifetime: p.storage.idTokenLifetime}
}

// SignInAs makes the login page sign in user when an authorization
// request carries no login_hint: the person at the browser.
func (p *Provider) SignInAs(userID string) {
	p.storage.mu.Lock()
	defer p.storage.mu.Unlock()
	p.storage.browserUser = userID
}

// ApproveDevice is the person entering userCode at the verification page
// and approving it as userID.
func (p *Provider) ApproveDevice(userCode, userID string) error {
	return p.storage.approveDevice(userCode, userID)
}

// login is the provider's login page: it signs in the login_hint of the
// authorization request, or the browser's user, and sends the browser on
// to the provider's callback, which redirects to the client.
func (p *Provider) login(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if err := p.storage.signIn(id); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, p.op.AuthorizationEndpoint().Absolute(p.URL)+"/callback?id="+url.QueryEscape(id), http.StatusFound)
}

// Endpoint is the provider's OAuth 2.0 endpoints.
func (p *Provider) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:       p.op.AuthorizationEndpoint().Absolute(p.URL),
		TokenURL:      p.op.TokenEndpoint().Absolute(p.URL),
		DeviceAuthURL: p.op.DeviceAuthorizationEndpoint().Absolute(p.URL),
	}
}

// IDToken signs userID in to clientID with the authorization code flow
// and PKCE, as a browser and a client would, and returns the ID token.
// scopes default to openid, email, profile and groups.
func (p *Provider) IDToken(t testing.TB, clientID, userID string, scopes ...string) string {
	t.Helper()
	if len(scopes) == 0 {
		scopes = []string{"openid", "email", "profile", "groups"}
	}
	tok, err := p.CodeFlow(context.Background(), clientID, userID, scopes)
	if err != nil {
		t.Fatalf("sign %s in to %s: %v", userID, clientID, err)
	}
	return tok.Extra("id_token").(string)
}

// CodeFlow runs the authorization code flow for userID and returns the
// token response.
func (p *Provider) CodeFlow(ctx context.Context, clientID, userID string, scopes []string) (*oauth2.Token, error) {
	conf := &oauth2.Config{ClientID: clientID, Endpoint: p.Endpoint(), RedirectURL: LoopbackRedirect, Scopes: scopes}
	verifier := oauth2.GenerateVerifier()
	state := randomString(16)
	authURL := conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", userID))
	browser := &http.Client{CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), LoopbackRedirect) {
			return http.ErrUseLastResponse // arrived at the client: stop here
		}
		return nil
	}}
	resp, err := browser.Get(authURL)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		return nil, fmt.Errorf("the provider answered %s without redirecting to the client: %s", resp.Status, body)
	}
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return nil, fmt.Errorf("authorization failed: %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return nil, fmt.Errorf("state %q came back as %q", state, q.Get("state"))
	}
	return conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
}

// Refresh redeems a refresh token of clientID.
func (p *Provider) Refresh(ctx context.Context, clientID, refreshToken string) (*oauth2.Token, error) {
	conf := &oauth2.Config{ClientID: clientID, Endpoint: p.Endpoint()}
	return conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func opaqueID(prefix string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	return prefix + hex.EncodeToString(sum[:12])
}
