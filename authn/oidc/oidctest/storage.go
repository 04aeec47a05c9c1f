package oidctest

import (
	"context"
	"crypto/rsa"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// storage is what the provider needs to keep: users, clients, authorization
// requests and their codes, access and refresh tokens, device
// authorizations and the signing key. Everything is in memory.
type storage struct {
	key             *rsa.PrivateKey
	keyID           string
	idTokenLifetime time.Duration
	loginURL        string

	mu            sync.Mutex
	users         map[string]*User
	clients       map[string]*client
	browserUser   string
	authRequests  map[string]*authRequest // by ID
	codes         map[string]string       // code → auth request ID
	accessTokens  map[string]*grant       // by token ID
	refreshTokens map[string]*grant       // by refresh token
	devices       map[string]*device      // by device code
	userCodes     map[string]string       // user code → device code
}

// grant is what a token was issued for.
type grant struct {
	clientID string
	subject  string
	audience []string
	scopes   []string
	amr      []string
	authTime time.Time
	expires  time.Time
}

type device struct {
	state op.DeviceAuthorizationState
}

func newStorage(key *rsa.PrivateKey, keyID string, idTokenLifetime time.Duration) *storage {
	return &storage{
		key: key, keyID: keyID, idTokenLifetime: idTokenLifetime,
		users:         map[string]*User{},
		clients:       map[string]*client{},
		authRequests:  map[string]*authRequest{},
		codes:         map[string]string{},
		accessTokens:  map[string]*grant{},
		refreshTokens: map[string]*grant{},
		devices:       map[string]*device{},
		userCodes:     map[string]string{},
	}
}

var (
	_ op.Storage                    = (*storage)(nil)
	_ op.DeviceAuthorizationStorage = (*storage)(nil)
	_ op.CanSetUserinfoFromRequest  = (*storage)(nil)
)

var errNotFound = errors.New("not found")

func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &authRequest{id: opaqueID("ar_"), req: *req}
	s.authRequests[a.id] = a
	return a, nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[id]
	if !ok {
		return nil, errNotFound
	}
	return a, nil
}

func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[s.codes[code]]
	if !ok {
		return nil, errNotFound
	}
	return a, nil
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authRequests, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
		}
	}
	return nil
}

// signIn marks an authorization request as done by its login_hint, or by
// the browser's user.
func (s *storage) signIn(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[id]
	if !ok {
		return errNotFound
	}
	user := a.req.LoginHint
	if user == "" {
		user = s.browserUser
	}
	if _, ok := s.users[user]; !ok {
		return errors.New("no such user: " + user)
	}
	a.subject, a.authTime, a.done = user, time.Now(), true
	return nil
}

// grantOf is what a token request is for.
func grantOf(req op.TokenRequest) *grant {
	g := &grant{subject: req.GetSubject(), audience: req.GetAudience(), scopes: req.GetScopes(), expires: time.Now().Add(5 * time.Minute)}
	if r, ok := req.(op.IDTokenRequest); ok {
		g.clientID, g.amr, g.authTime = r.GetClientID(), r.GetAMR(), r.GetAuthTime()
	}
	return g
}

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, g := opaqueID("at_"), grantOf(req)
	s.accessTokens[id] = g
	return id, g.expires, nil
}

func (s *storage) CreateAccessAndRefreshTokens(_ context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if current != "" {
		if _, ok := s.refreshTokens[current]; !ok {
			return "", "", time.Time{}, op.ErrInvalidRefreshToken
		}
		delete(s.refreshTokens, current) // rotated: a refresh token works once
	}
	id, g := opaqueID("at_"), grantOf(req)
	s.accessTokens[id] = g
	rt := opaqueID("rt_")
	rg := *g
	rg.expires = time.Now().Add(24 * time.Hour)
	s.refreshTokens[rt] = &rg
	return id, rt, g.expires, nil
}

func (s *storage) TokenRequestByRefreshToken(_ context.Context, rt string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.refreshTokens[rt]
	if !ok || time.Now().After(g.expires) {
		return nil, op.ErrInvalidRefreshToken
	}
	return &refreshRequest{g: *g}, nil
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(_ context.Context, token, _, _ string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.accessTokens, token)
	delete(s.refreshTokens, token)
	return nil
}

func (s *storage) GetRefreshTokenInfo(_ context.Context, _ string, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.refreshTokens[token]
	if !ok {
		return "", "", op.ErrInvalidRefreshToken
	}
	return g.subject, token, nil
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	return signingKey{s.key, s.keyID}, nil
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key, s.keyID}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, errNotFound
	}
	return c, nil
}

func (s *storage) AuthorizeClientIDSecret(context.Context, string, string) error {
	return errors.New("clients are public: they have no secret")
}

// SetUserinfoFromScopes is deprecated in op; SetUserinfoFromRequest does
// the work.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.userinfo(info, req.GetSubject(), scopes)
}

func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	g, ok := s.accessTokens[tokenID]
	s.mu.Unlock()
	if !ok || time.Now().After(g.expires) {
		return errors.New("invalid access token")
	}
	return s.userinfo(info, subject, g.scopes)
}

func (s *storage) userinfo(info *oidc.UserInfo, subject string, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[subject]
	if !ok {
		return errNotFound
	}
	for _, scope := range scopes {
		switch scope {
		case oidc.ScopeOpenID:
			info.Subject = u.ID
		case oidc.ScopeEmail:
			info.Email = u.Email
			info.EmailVerified = oidc.Bool(u.EmailVerified)
			if !u.EmailVerified {
				info.AppendClaims("email_verified", false)
			}
		case oidc.ScopeProfile:
			info.Name = u.Name
		case "groups":
			info.AppendClaims("groups", slices.Clone(u.Groups))
		}
	}
	return nil
}

func (s *storage) SetIntrospectionFromToken(_ context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	s.mu.Lock()
	g, ok := s.accessTokens[tokenID]
	s.mu.Unlock()
	if !ok || time.Now().After(g.expires) {
		return errors.New("invalid access token")
	}
	resp.Active, resp.Subject, resp.ClientID, resp.Scope = true, subject, clientID, g.scopes
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("JWT profile is not supported")
}

func (s *storage) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}

func (s *storage) Health(context.Context) error { return nil }

func (s *storage) StoreDeviceAuthorization(_ context.Context, clientID, deviceCode, userCode string, expires time.Time, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.userCodes[userCode]; dup {
		return op.ErrDuplicateUserCode
	}
	s.devices[deviceCode] = &device{state: op.DeviceAuthorizationState{ClientID: clientID, Scopes: scopes, Expires: expires}}
	s.userCodes[userCode] = deviceCode
	return nil
}

func (s *storage) GetDeviceAuthorizatonState(_ context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceCode]
	if !ok || d.state.ClientID != clientID {
		return nil, errNotFound
	}
	state := d.state
	if state.Done {
		// A device code is exchanged once.
		delete(s.devices, deviceCode)
	}
	return &state, nil
}

func (s *storage) approveDevice(userCode, userID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[s.userCodes[userCode]]
	if !ok {
		return errors.New("no device authorization with user code " + userCode)
	}
	if _, ok := s.users[userID]; !ok {
		return errors.New("no such user: " + userID)
	}
	d.state.Done, d.state.Subject, d.state.AuthTime, d.state.AMR = true, userID, time.Now(), []string{"pwd"}
	delete(s.userCodes, userCode)
	return nil
}

// authRequest is an authorization request and, once the person signed in,
// who they are.
type authRequest struct {
	id       string
	req      oidc.AuthRequest
	done     bool
	subject  string
	authTime time.Time
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string                      { return a.id }
func (a *authRequest) GetACR() string                     { return "" }
func (a *authRequest) GetAMR() []string                   { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string              { return []string{a.req.ClientID} }
func (a *authRequest) GetAuthTime() time.Time             { return a.authTime }
func (a *authRequest) GetClientID() string                { return a.req.ClientID }
func (a *authRequest) GetNonce() string                   { return a.req.Nonce }
func (a *authRequest) GetRedirectURI() string             { return a.req.RedirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType { return a.req.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode { return a.req.ResponseMode }
func (a *authRequest) GetScopes() []string                { return a.req.Scopes }
func (a *authRequest) GetState() string                   { return a.req.State }
func (a *authRequest) GetSubject() string                 { return a.subject }
func (a *authRequest) Done() bool                         { return a.done }

func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.req.CodeChallenge == "" {
		return nil
	}
	return &oidc.CodeChallenge{Challenge: a.req.CodeChallenge, Method: a.req.CodeChallengeMethod}
}

// refreshRequest is the grant a refresh token stands for.
type refreshRequest struct{ g grant }

var _ op.RefreshTokenRequest = (*refreshRequest)(nil)

func (r *refreshRequest) GetAMR() []string            { return r.g.amr }
func (r *refreshRequest) GetAudience() []string       { return r.g.audience }
func (r *refreshRequest) GetAuthTime() time.Time      { return r.g.authTime }
func (r *refreshRequest) GetClientID() string         { return r.g.clientID }
func (r *refreshRequest) GetScopes() []string         { return r.g.scopes }
func (r *refreshRequest) GetSubject() string          { return r.g.subject }
func (r *refreshRequest) SetCurrentScopes(s []string) { r.g.scopes = s }

// client is a public native client: no secret, PKCE, loopback redirect.
type client struct {
	id              string
	loginURL        string
	idTokenLifetime time.Duration
}

var _ op.Client = (*client)(nil)

func (c *client) GetID() string                       { return c.id }
func (c *client) RedirectURIs() []string              { return []string{LoopbackRedirect} }
func (c *client) PostLogoutRedirectURIs() []string    { return nil }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeNative }
func (c *client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodNone }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken, oidc.GrantTypeDeviceCode}
}
func (c *client) LoginURL(id string) string           { return c.loginURL + id }
func (c *client) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeBearer }
func (c *client) IDTokenLifetime() time.Duration      { return c.idTokenLifetime }
func (c *client) DevMode() bool                       { return false }
func (c *client) IsScopeAllowed(scope string) bool    { return scope == "groups" }
func (c *client) ClockSkew() time.Duration            { return 0 }

// IDTokenUserinfoClaimsAssertion puts email, profile and groups claims in
// the ID token itself, as most providers do, rather than only at the
// userinfo endpoint.
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return true }

func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

type signingKey struct {
	key *rsa.PrivateKey
	id  string
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct {
	key *rsa.PrivateKey
	id  string
}

func (k publicKey) ID() string                         { return k.id }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }
