package api

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/authn/workload"
)

// The machine lane's endpoints (DESIGN.md §3, docs/machine-lane.md):
// OAuth 2.0 Token Exchange (RFC 8693) at POST /v1/token turns a verified
// workload token into a grant and its credentials in one call, by policy
// and with no human; RFC 7009 revocation at POST /v1/token/revoke gives the
// grant back and answers once the revocation is verified. With an
// actor_token the same call is the agent lane's delegation
// (docs/agents.md): the subject token is a person's (the sponsor's)
// credential, the actor token an agent's, and the agent gets what the
// sponsor could, within its own ceiling, acting for the sponsor. They speak
// OAuth's wire format (form bodies, {"error": "..."} answers), not the JSON
// API's, so that OAuth client libraries work unchanged.

// Token types and the grant type of RFC 8693, and Lapse's own.
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	// TokenTypeAPIKey is a Lapse API key of a service principal presented
	// as the subject token, for machines without a platform identity.
	TokenTypeAPIKey = "urn:lapse:params:oauth:token-type:api-key"
	// TokenTypeGrant is what the token endpoint issues for targets other
	// than token targets: access_token is then the grant ID, a handle to
	// revoke with, and the credentials are in lapse_credentials.
	TokenTypeGrant = "urn:lapse:params:oauth:token-type:grant"
	// EntitlementURNPrefix lets resource carry an entitlement as an
	// absolute URI (RFC 8707): urn:lapse:entitlement:prod-db/read.
	EntitlementURNPrefix = "urn:lapse:entitlement:"
)

// OAuth error codes (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 7009 §2.2.1).
const (
	OAuthInvalidRequest         = "invalid_request"
	OAuthInvalidClient          = "invalid_client"
	OAuthInvalidGrant           = "invalid_grant"
	OAuthUnauthorizedClient     = "unauthorized_client"
	OAuthUnsupportedGrantType   = "unsupported_grant_type"
	OAuthInvalidScope           = "invalid_scope"
	OAuthInvalidTarget          = "invalid_target"
	OAuthAccessDenied           = "access_denied"
	OAuthServerError            = "server_error"
	OAuthTemporarilyUnavailable = "temporarily_unavailable"
)

// TokenResponse is the answer of a successful token exchange (RFC 8693
// §2.2.1) with Lapse's extensions.
type TokenResponse struct {
	// AccessToken is the token target's signed JWT, or, for other targets,
	// the grant ID (IssuedTokenType TokenTypeGrant).
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	// TokenType is "Bearer" for a token target's JWT, "N_A" otherwise.
	TokenType string `json:"token_type"`
	// ExpiresIn is the seconds until the grant's deadline.
	ExpiresIn int64  `json:"expires_in"`
	GrantID   string `json:"lapse_grant_id"`
	// Credentials are the grant's credentials for targets other than token
	// targets (a database's user, password, host), shown once.
	Credentials *lapse.Credentials `json:"lapse_credentials,omitempty"`
}

// OAuthError is the error answer of the OAuth endpoints (RFC 6749 §5.2).
// Description is safe to show: it never quotes a token or a secret.
type OAuthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// Guard: the workload verifier is what Server.Workload takes.
var _ Authenticator = (*workload.Verifier)(nil)

// Limits of the OAuth endpoints.
const (
	// maxSubjectToken bounds a subject token or a bearer credential, here
	// and in the JSON API: platform tokens and ID tokens are 1–2 KiB.
	maxSubjectToken = workload.MaxTokenLength
	// revokeWait bounds how long a revocation call waits for verification,
	// inside the HTTP server's write timeout.
	revokeWait = 90 * time.Second
)

// oauthFailure is an OAuth error answer with its status and, for the log,
// its cause.
type oauthFailure struct {
	status int
	body   OAuthError
	cause  error
}

func oauthErr(status int, code, desc string, cause error) *oauthFailure {
	return &oauthFailure{status: status, body: OAuthError{Error: code, Description: desc}, cause: cause}
}

func badRequest(desc string) *oauthFailure {
	return oauthErr(http.StatusBadRequest, OAuthInvalidRequest, desc, nil)
}

// writeOAuth answers with f and logs why: a refusal at info, a server
// failure at error, never a token.
func (s *Server) writeOAuth(w http.ResponseWriter, r *http.Request, f *oauthFailure) {
	level := slog.LevelInfo
	if f.status >= 500 {
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.String("request_id", w.Header().Get(headerRequestID)),
		// No route: the request's own log line has it, under the same ID.
		slog.String("oauth_error", f.body.Error),
	}
	if f.cause != nil {
		attrs = append(attrs, slog.String("reason", lapse.ErrorReason(f.cause)), slog.String("cause", f.cause.Error()))
	}
	s.logger().LogAttrs(r.Context(), level, "oauth request refused", attrs...)
	if f.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="lapse"`)
	}
	if f.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	if f.status == http.StatusInternalServerError {
		f.body.Description = "internal error"
	}
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, f.status, &f.body)
}

// fromError maps a Service error to an OAuth answer. badCode is the OAuth
// code for a refusal of what was asked (invalid_target for an
// entitlement, invalid_request for a revocation).
func fromError(err error, badCode string) *oauthFailure {
	msg := lapse.ErrorMessage(err)
	switch lapse.ErrorCode(err) {
	case lapse.EINVALID, lapse.ETOOLARGE, lapse.ECONFLICT:
		if f := lapse.ErrorField(err); f != "" {
			msg = f + ": " + msg
		}
		return oauthErr(http.StatusBadRequest, OAuthInvalidRequest, msg, err)
	case lapse.ENOTFOUND:
		return oauthErr(http.StatusBadRequest, badCode, msg, err)
	case lapse.EFORBIDDEN:
		return oauthErr(http.StatusForbidden, OAuthAccessDenied, msg, err)
	case lapse.EUNAUTHORIZED:
		return oauthErr(http.StatusBadRequest, OAuthInvalidGrant, msg, err)
	case lapse.EUNAVAILABLE, lapse.ERATELIMITED:
		return oauthErr(http.StatusServiceUnavailable, OAuthTemporarilyUnavailable, msg, err)
	}
	return oauthErr(http.StatusInternalServerError, OAuthServerError, "internal error", err)
}

// oauthForm reads an OAuth form: only in the body, each known parameter at
// most once. Parameters sent empty count as absent and unknown parameters
// are ignored, as RFC 6749 §3.2 requires, except Lapse's own (lapse_*),
// where a typo must not pass silently.
func oauthForm(w http.ResponseWriter, r *http.Request, known ...string) (url.Values, *oauthFailure) {
	if r.URL.RawQuery != "" {
		// A token in a URL ends up in access logs.
		return nil, badRequest("parameters go in the form body, never in the URL")
	}
	form, err := readForm(w, r)
	if err != nil {
		status := StatusCode(lapse.ErrorCode(err))
		return nil, oauthErr(status, OAuthInvalidRequest, lapse.ErrorMessage(err), err)
	}
	out := url.Values{}
	for k, v := range form {
		isKnown := false
		for _, n := range known {
			isKnown = isKnown || n == k
		}
		if !isKnown {
			if strings.HasPrefix(k, "lapse_") {
				return nil, badRequest("unknown parameter " + k)
			}
			continue
		}
		if len(v) > 1 {
			return nil, badRequest("parameter " + k + " is given more than once")
		}
		if v[0] != "" {
			out.Set(k, v[0])
		}
	}
	return out, nil
}

// tokenExchange implements RFC 8693 for the machine lane.
func (s *Server) tokenExchange(w http.ResponseWriter, r *http.Request) error {
	if f := s.exchange(w, r); f != nil {
		s.writeOAuth(w, r, f)
	}
	return nil
}

func (s *Server) exchange(w http.ResponseWriter, r *http.Request) *oauthFailure {
	if len(r.Header.Values("Authorization")) > 0 {
		// Two credentials in one call would leave it unclear who asks.
		return badRequest("send no Authorization header: the subject_token is the credential")
	}
	form, f := oauthForm(w, r, "grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type",
		"requested_token_type", "resource", "audience", "scope",
		"lapse_duration", "lapse_task_id", "lapse_reason", "lapse_ticket")
	if f != nil {
		return f
	}
	switch gt := form.Get("grant_type"); gt {
	case GrantTypeTokenExchange:
	case "":
		return badRequest("grant_type is required")
	default:
		return oauthErr(http.StatusBadRequest, OAuthUnsupportedGrantType, "grant_type must be "+GrantTypeTokenExchange, nil)
	}
	subject, subjectType := form.Get("subject_token"), form.Get("subject_token_type")
	if subject == "" || subjectType == "" {
		return badRequest("subject_token and subject_token_type are required")
	}
	actor, actorType := form.Get("actor_token"), form.Get("actor_token_type")
	delegated := actor != "" || actorType != ""
	if delegated && (actor == "" || actorType == "") {
		return badRequest("actor_token and actor_token_type go together")
	}
	name, fromScope, f := entitlementParam(form)
	if f != nil {
		return f
	}
	in := lapse.RequestInput{
		Entitlement: name,
		TaskID:      form.Get("lapse_task_id"),
		Reason:      form.Get("lapse_reason"),
		Ticket:      form.Get("lapse_ticket"),
	}
	if d := form.Get("lapse_duration"); d != "" {
		v, err := lapse.ParseDuration(d)
		if err != nil || v <= 0 {
			return badRequest("lapse_duration must be a positive duration like 15m")
		}
		in.Duration = lapse.Duration(v)
	}

	ctx := r.Context()
	var p *lapse.Principal
	if delegated {
		var sponsor *lapse.Principal
		if p, sponsor, f = s.delegation(ctx, subject, subjectType, actor, actorType); f != nil {
			return f
		}
		ctx = lapse.WithSponsor(ctx, sponsor)
	} else if p, f = s.subject(ctx, subject, subjectType); f != nil {
		return f
	}
	if rec, ok := w.(*recorder); ok {
		rec.principal = p.ID
	}
	ctx = lapse.WithChannel(lapse.NewContext(ctx, p), lapse.ChannelMachine)

	// Policy decides before anything is filed: an entitlement this
	// service may not request, or one that needs a human, is refused with
	// no request or grant row left behind.
	badTarget := OAuthInvalidTarget
	if fromScope {
		badTarget = OAuthInvalidScope
	}
	list, err := s.Service.Entitlements(ctx)
	if err != nil {
		return fromError(err, badTarget)
	}
	var e *lapse.Entitlement
	for _, x := range list {
		if x.Name == name {
			e = x
		}
	}
	if e == nil {
		return oauthErr(http.StatusBadRequest, badTarget, "no entitlement "+name+" that this service may request", nil)
	}
	if !e.Approval.Auto {
		return oauthErr(http.StatusBadRequest, badTarget, "entitlement "+name+" needs human approval; the token endpoint grants only what policy approves automatically (file a request at /v1/requests instead)", nil)
	}
	_, isToken := s.Tokens[e.Target]
	issued := TokenTypeGrant
	if isToken {
		issued = TokenTypeAccessToken
	}
	if rt := form.Get("requested_token_type"); rt != "" && rt != issued && !(isToken && rt == TokenTypeJWT) {
		return badRequest("requested_token_type " + rt + " cannot be issued for " + name + "; it issues " + issued)
	}

	res, err := s.Service.CreateRequest(ctx, in)
	if err != nil {
		// A failed inline provisioning has already handed the grant to
		// the engine, which revokes whatever was made.
		return fromError(err, badTarget)
	}
	if res.Grant == nil || res.Credentials == nil {
		// The catalog changed between the check and the filing and the
		// request now waits for a human: withdraw it, as promised.
		if res.Request != nil && res.Request.State == lapse.RequestPending {
			if _, err := s.Service.CancelRequest(ctx, res.Request.ID); err != nil {
				s.logger().WarnContext(ctx, "cannot withdraw a token-exchange request that needs approval", "request", res.Request.ID, "err", err.Error())
			}
		}
		return oauthErr(http.StatusBadRequest, badTarget, "entitlement "+name+" needs human approval; the token endpoint grants only what policy approves automatically", nil)
	}
	g, creds := res.Grant, res.Credentials
	out := TokenResponse{IssuedTokenType: issued, TokenType: "N_A", GrantID: g.ID, ExpiresIn: expiresIn(g)}
	if isToken {
		out.AccessToken, out.TokenType = creds.Secret["token"], "Bearer"
		if out.AccessToken == "" {
			return oauthErr(http.StatusInternalServerError, OAuthServerError, "", lapse.Errorf(lapse.EINTERNAL, "token target %s returned no token", g.Target))
		}
	} else {
		out.AccessToken, out.Credentials = g.ID, creds
	}
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, &out)
	return nil
}

// entitlementParam reads the one entitlement asked for. It may be named by
// audience (the natural fit: a logical name), resource (also as
// urn:lapse:entitlement:NAME) or scope (one scope token). When several are
// sent they must name the same entitlement: nothing is silently ignored.
// fromScope says it was named by scope only.
func entitlementParam(form url.Values) (name string, fromScope bool, f *oauthFailure) {
	type named struct{ param, value string }
	var got []named
	for _, p := range []string{"audience", "resource", "scope"} {
		v := form.Get(p)
		if v == "" {
			continue
		}
		if p == "resource" {
			v = strings.TrimPrefix(v, EntitlementURNPrefix)
		}
		if p == "scope" && strings.ContainsAny(v, " \t") {
			return "", false, oauthErr(http.StatusBadRequest, OAuthInvalidScope, "scope names one entitlement; ask for one per call", nil)
		}
		got = append(got, named{p, v})
	}
	if len(got) == 0 {
		return "", false, oauthErr(http.StatusBadRequest, OAuthInvalidTarget, "name the entitlement in audience (or resource or scope)", nil)
	}
	for _, n := range got[1:] {
		if n.value != got[0].value {
			return "", false, oauthErr(http.StatusBadRequest, OAuthInvalidTarget, got[0].param+" and "+n.param+" name different entitlements; ask for one per call", nil)
		}
	}
	if !validName(got[0].value) {
		return "", false, oauthErr(http.StatusBadRequest, OAuthInvalidTarget, got[0].param+" is not an entitlement name", nil)
	}
	return got[0].value, len(got) == 1 && got[0].param == "scope", nil
}

// subject authenticates the subject token. A machine-lane subject must be
// a service: people request at /v1/requests, agents act for a sponsor.
func (s *Server) subject(ctx context.Context, token, typ string) (*lapse.Principal, *oauthFailure) {
	p, f := s.credential(ctx, token, typ, "subject")
	if f != nil {
		return nil, f
	}
	if p.Kind != lapse.KindService {
		return nil, oauthErr(http.StatusBadRequest, OAuthUnauthorizedClient, "the token endpoint is the machine lane: its subject must be a service (an agent sends its own credential as actor_token and its sponsor's as subject_token)", nil)
	}
	return p, nil
}

// delegation authenticates an RFC 8693 delegation: the subject token is
// the sponsor's credential (a person's API key), the actor token the
// agent's (an API key of kind agent, or a workload token mapped to an
// agent). It returns the agent acting for the sponsor (Act = [sponsor]),
// and the sponsor. Only the current actor and the sponsor count: a chain
// (either credential already acting for someone) is refused.
func (s *Server) delegation(ctx context.Context, subject, subjectType, actor, actorType string) (agent, sponsor *lapse.Principal, f *oauthFailure) {
	if sponsor, f = s.credential(ctx, subject, subjectType, "subject"); f != nil {
		return nil, nil, f
	}
	if agent, f = s.credential(ctx, actor, actorType, "actor"); f != nil {
		return nil, nil, f
	}
	switch {
	case sponsor.Kind != lapse.KindHuman:
		return nil, nil, oauthErr(http.StatusBadRequest, OAuthUnauthorizedClient, "with an actor_token, the subject is the sponsor: a person's credential, not a "+string(sponsor.Kind)+"'s", nil)
	case agent.Kind != lapse.KindAgent:
		return nil, nil, oauthErr(http.StatusBadRequest, OAuthUnauthorizedClient, "the actor must be an agent, not a "+string(agent.Kind), nil)
	case len(sponsor.Act) > 0 || len(agent.Act) > 0:
		return nil, nil, oauthErr(http.StatusBadRequest, OAuthUnauthorizedClient, "delegation chains are refused: an agent acts only for its own sponsor", nil)
	}
	a := *agent
	a.Act = []string{sponsor.ID}
	return &a, sponsor, nil
}

// credential authenticates a token of type typ presented as param
// ("subject" or "actor"): a workload token or a Lapse API key.
func (s *Server) credential(ctx context.Context, token, typ, param string) (*lapse.Principal, *oauthFailure) {
	var (
		p   *lapse.Principal
		err error
	)
	switch typ {
	case TokenTypeJWT:
		if s.Workload == nil {
			return nil, oauthErr(http.StatusBadRequest, OAuthInvalidRequest, "this server trusts no workload token issuer", nil)
		}
		p, err = s.Workload.Authenticate(ctx, token)
	case TokenTypeAPIKey:
		if s.Auth == nil {
			return nil, oauthErr(http.StatusServiceUnavailable, OAuthTemporarilyUnavailable, "authentication is not configured", nil)
		}
		p, err = s.Auth.Authenticate(ctx, token)
		if err != nil && lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
			// Whatever the key store said, the caller learns only this.
			err = lapse.Errorf(lapse.EUNAUTHORIZED, "invalid, expired or revoked credential")
		}
	default:
		return nil, badRequest(param + "_token_type must be " + TokenTypeJWT + " (or " + TokenTypeAPIKey + ")")
	}
	switch {
	case err == nil && p != nil:
	case lapse.ErrorCode(err) == lapse.EUNAVAILABLE:
		return nil, oauthErr(http.StatusServiceUnavailable, OAuthTemporarilyUnavailable, "the "+param+" token cannot be checked now; retry", err)
	default:
		msg := "the " + param + " token is not valid"
		if e := lapse.ErrorMessage(err); err != nil && lapse.ErrorCode(err) == lapse.EUNAUTHORIZED {
			msg = e
		}
		return nil, oauthErr(http.StatusBadRequest, OAuthInvalidRequest, msg, err)
	}
	return p, nil
}

// expiresIn is the grant's remaining lifetime in whole seconds, measured
// on the broker's clock (from activation), at least 1.
func expiresIn(g *lapse.Grant) int64 {
	from := g.ActivatedAt
	if from.IsZero() {
		from = g.StartsAt
	}
	return max(int64(g.ExpiresAt.Sub(from)/time.Second), 1)
}

// tokenRevoke implements RFC 7009 for the machine lane: token is the
// access token the exchange issued (a token target's JWT, or the grant ID)
// or a grant ID; the caller authenticates with its workload token or a
// service API key as "Authorization: Bearer". Only the caller's own grant
// is released, and the answer comes once its revocation is verified. An
// unknown, inactive or someone else's token is answered 200 and changes
// nothing (RFC 7009 §2.2).
func (s *Server) tokenRevoke(w http.ResponseWriter, r *http.Request) error {
	if f := s.revokeToken(w, r); f != nil {
		s.writeOAuth(w, r, f)
	}
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) *oauthFailure {
	p, f := s.bearerCaller(r)
	if f != nil {
		return f
	}
	if rec, ok := w.(*recorder); ok {
		rec.principal = p.ID
	}
	form, f := oauthForm(w, r, "token", "token_type_hint")
	if f != nil {
		return f
	}
	tok := form.Get("token")
	if tok == "" {
		return badRequest("token is required")
	}
	if len(tok) > maxSubjectToken {
		// Longer than anything this server issues: not one of its tokens.
		writeRevoked(w)
		return nil
	}
	ctx := lapse.WithChannel(lapse.NewContext(r.Context(), p), lapse.ChannelMachine)
	grantID, err := s.grantOf(ctx, tok)
	if err != nil {
		return fromError(err, OAuthInvalidRequest)
	}
	if grantID == "" {
		writeRevoked(w)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, revokeWait)
	defer cancel()
	g, err := s.Service.Release(wctx, grantID, lapse.ReleaseInput{Wait: true})
	switch {
	case lapse.ErrorCode(err) == lapse.ENOTFOUND:
		// Not the caller's grant (or none): nothing to do, and nothing
		// said about whose it is.
		writeRevoked(w)
		return nil
	case err != nil:
		return fromError(err, OAuthInvalidRequest)
	case g.State != lapse.GrantRevoked:
		return oauthErr(http.StatusServiceUnavailable, OAuthTemporarilyUnavailable,
			"revocation has started but is not verified yet (grant "+g.ID+" is "+string(g.State)+"); it is retried until it is; call again to wait", nil)
	}
	writeRevoked(w)
	return nil
}

func writeRevoked(w http.ResponseWriter) {
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, struct{}{})
}

// grantOf returns the grant a presented token belongs to: a grant ID as
// is, a token target's JWT by its jti when introspection says it is
// active. "" means not a token of this server, or no longer active.
func (s *Server) grantOf(ctx context.Context, tok string) (string, error) {
	if lapse.ValidID(lapse.PrefixGrant, tok) {
		return tok, nil
	}
	if strings.Count(tok, ".") != 2 {
		return "", nil
	}
	names := make([]string, 0, len(s.Tokens))
	for n := range s.Tokens {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		in, err := s.Tokens[n].Introspect(ctx, tok)
		if err != nil {
			return "", err
		}
		if in.Active && lapse.ValidID(lapse.PrefixGrant, in.Jti) {
			return in.Jti, nil
		}
	}
	return "", nil
}

// bearerCaller authenticates "Authorization: Bearer" with a service API
// key or a workload token. Failures are invalid_client (401), as RFC 7009
// §2.2.1 asks for a client that fails to authenticate.
func (s *Server) bearerCaller(r *http.Request) (*lapse.Principal, *oauthFailure) {
	deny := oauthErr(http.StatusUnauthorized, OAuthInvalidClient, "authenticate with your workload token or API key as Authorization: Bearer", nil)
	hs := r.Header.Values("Authorization")
	if len(hs) != 1 {
		return nil, deny
	}
	scheme, secret, ok := strings.Cut(hs[0], " ")
	secret = strings.TrimLeft(secret, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" || len(secret) > maxSubjectToken || strings.ContainsAny(secret, " \t") {
		return nil, deny
	}
	var (
		p   *lapse.Principal
		err error
	)
	if _, isKey := authn.ParseAPIKey(secret); isKey && s.Auth != nil {
		p, err = s.Auth.Authenticate(r.Context(), secret)
	} else if s.Workload != nil {
		p, err = s.Workload.Authenticate(r.Context(), secret)
	} else {
		return nil, deny
	}
	switch {
	case err == nil && p != nil:
	case lapse.ErrorCode(err) == lapse.EUNAVAILABLE:
		return nil, oauthErr(http.StatusServiceUnavailable, OAuthTemporarilyUnavailable, "the credential cannot be checked now; retry", err)
	default:
		deny.cause = err
		return nil, deny
	}
	if p.Kind != lapse.KindService && p.Kind != lapse.KindAgent {
		return nil, oauthErr(http.StatusBadRequest, OAuthUnauthorizedClient, "the token endpoint is for services and agents: the caller must be one", nil)
	}
	return p, nil
}
