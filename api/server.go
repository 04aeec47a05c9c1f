// Package api serves Lapse over HTTP: the JSON API under /v1 that carries
// lapse.Service, the endpoints of token targets (JWKS, RFC 7662
// introspection, the revocation feed), health, readiness, metrics and the
// OpenAPI document that describes all of it (openapi.yaml). The client
// subpackage speaks the same contract.
//
// The HTTP layer authenticates the caller, validates the shape of every
// input (sizes, JSON strictness, path and query syntax) and maps error codes
// to statuses in one table (errors.go); every decision about what the caller
// may do belongs to the Service.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/connector/token"
)

// Authenticator turns a presented bearer secret into the calling principal.
// *authn.APIKeys implements it, and *authn.Chain, which also takes OIDC ID
// tokens. Every credential failure must be EUNAUTHORIZED; EUNAVAILABLE
// when the check cannot run.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (*lapse.Principal, error)
}

// TokenTarget is what the API needs from a token target (the token
// connector): its public keys, RFC 7662 introspection and the revocation
// feed with its acknowledgements. *token.Conn implements it.
type TokenTarget interface {
	JWKS() jose.JSONWebKeySet
	Introspect(ctx context.Context, token string) (*token.Introspection, error)
	// IntrospectUse is Introspect for a consumer asking before it serves a
	// request: it counts one use of a token with a use limit, and reports
	// UseLimitReached for the use past it.
	IntrospectUse(ctx context.Context, token string) (*token.Introspection, error)
	Feed(ctx context.Context, afterSeq int64, limit int) ([]*lapse.TokenRevocation, error)
	Ack(ctx context.Context, consumer string, seq int64) error
}

var (
	_ Authenticator = (*authn.APIKeys)(nil)
	_ TokenTarget   = (*token.Conn)(nil)
)

// Server serves the HTTP API. Fill the fields, then mount Handler.
type Server struct {
	// Service does the work; the server only translates HTTP.
	Service lapse.Service
	// Auth authenticates bearer credentials.
	Auth Authenticator
	// Workload authenticates workload tokens (*workload.Verifier) at the
	// machine lane's token endpoints; nil means no issuer is trusted.
	Workload Authenticator
	// Tokens are the token targets by name.
	Tokens map[string]TokenTarget
	// Gatherer, when set, is served at /metrics.
	Gatherer prometheus.Gatherer
	// Ready reports whether the server can serve (store reachable, engine
	// running); nil means always ready.
	Ready func(context.Context) error
	// Degraded reports why the server refuses new approvals and grants
	// while still serving (the audit log cannot sign or publish); health
	// and readiness then say "degraded". nil means never degraded.
	Degraded func(context.Context) error
	// Logger receives one line per request; nil discards.
	Logger *slog.Logger
	// Audit serves checkpoints, proofs and receipts; nil answers 503.
	Audit AuditLog
}

// Header names of the wire contract.
const (
	// HeaderChannel tells the server which surface a call came through;
	// "cli", "mcp" and "api" are accepted, anything else counts as "api".
	HeaderChannel   = "X-Lapse-Channel"
	headerRequestID = "X-Request-Id"
)

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// handlerFunc is an endpoint: it writes its success response itself and
// returns errors for the server to answer.
type handlerFunc func(s *Server, w http.ResponseWriter, r *http.Request) error

// access says who may call a route.
type access int

const (
	public     access = iota // no credential
	authed                   // a valid credential; the Service decides the rest
	introspect               // a valid credential with scope introspect
)

// route is one entry of the routing table. Handler registers exactly these,
// and the OpenAPI test checks the document against exactly these.
type route struct {
	method, path string
	access       access
	handle       handlerFunc
}

var routes = []route{
	{"GET", "/healthz", public, (*Server).healthz},
	{"GET", "/readyz", public, (*Server).readyz},
	{"GET", "/metrics", public, nil}, // served by promhttp, see Handler
	{"GET", "/v1/openapi.yaml", public, (*Server).openapi},

	{"GET", "/v1/whoami", authed, (*Server).whoami},
	{"GET", "/v1/entitlements", authed, (*Server).entitlements},
	{"POST", "/v1/requests", authed, (*Server).createRequest},
	{"GET", "/v1/requests", authed, (*Server).listRequests},
	{"GET", "/v1/requests/{id}", authed, (*Server).getRequest},
	{"POST", "/v1/requests/{id}/approve", authed, (*Server).approve},
	{"POST", "/v1/requests/{id}/deny", authed, (*Server).deny},
	{"POST", "/v1/requests/{id}/cancel", authed, (*Server).cancelRequest},
	{"POST", "/v1/requests/{id}/review", authed, (*Server).reviewRequest},
	{"GET", "/v1/grants", authed, (*Server).listGrants},
	{"GET", "/v1/grants/{id}", authed, (*Server).getGrant},
	{"POST", "/v1/grants/{id}/credentials", authed, (*Server).claimCredentials},
	{"POST", "/v1/grants/{id}/release", authed, (*Server).release},
	{"POST", "/v1/grants/{id}/revoke", authed, (*Server).revoke},
	{"POST", "/v1/grants/{id}/extend", authed, (*Server).extend},
	{"POST", "/v1/apikeys", authed, (*Server).createAPIKey},
	{"GET", "/v1/apikeys", authed, (*Server).listAPIKeys},
	{"DELETE", "/v1/apikeys/{prefix}", authed, (*Server).revokeAPIKey},
	{"POST", "/v1/mandates", authed, (*Server).createMandate},
	{"GET", "/v1/mandates", authed, (*Server).listMandates},
	{"DELETE", "/v1/mandates/{id}", authed, (*Server).revokeMandate},
	{"GET", "/v1/grants/{id}/receipt", authed, (*Server).grantReceipt},
	{"GET", "/v1/audit/checkpoint", authed, (*Server).auditCheckpoint},
	{"POST", "/v1/audit/checkpoint", authed, (*Server).signCheckpoint},
	{"GET", "/v1/audit/proof/inclusion", authed, (*Server).inclusionProof},
	{"GET", "/v1/audit/proof/consistency", authed, (*Server).consistencyProof},

	// The machine lane (token_exchange.go): the subject token or bearer
	// is checked by the handlers, which answer in OAuth's format.
	{"POST", "/v1/token", public, (*Server).tokenExchange},
	{"POST", "/v1/token/revoke", public, (*Server).tokenRevoke},

	{"GET", "/v1/targets/{name}/jwks.json", public, (*Server).jwks},
	{"POST", "/v1/targets/{name}/introspect", introspect, (*Server).introspect},
	{"GET", "/v1/targets/{name}/revocations", introspect, (*Server).feed},
	{"POST", "/v1/targets/{name}/revocations/ack", introspect, (*Server).ack},
}

// Routes returns every route the API serves, as "METHOD /path" with
// ServeMux wildcards ("GET /v1/requests/{id}"). /metrics is served only
// when the Server has a Gatherer.
func Routes() []string {
	out := make([]string, len(routes))
	for i, rt := range routes {
		out[i] = rt.method + " " + rt.path
	}
	return out
}

// Handler returns the HTTP handler of the whole API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	allowed := map[string][]string{}
	var paths []string
	for _, rt := range routes {
		var h http.Handler
		switch {
		case rt.path == "/metrics":
			if s.Gatherer == nil {
				continue
			}
			h = promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{})
		default:
			h = s.endpoint(rt)
		}
		mux.Handle(rt.method+" "+rt.path, h)
		if _, ok := allowed[rt.path]; !ok {
			paths = append(paths, rt.path)
		}
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	// A known path with another method gets a JSON 405 naming the allowed
	// methods; an unknown path a JSON 404. ServeMux's own answers are text.
	for _, p := range paths {
		allow := strings.Join(allowed[p], ", ")
		if strings.Contains(allow, "GET") {
			allow += ", HEAD"
		}
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			s.writeError(w, r, errMethodNotAllowed)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, lapse.Errorf(lapse.ENOTFOUND, "no such endpoint"))
	})
	return s.middleware(mux)
}

// endpoint wraps one route with authentication, the channel and the scope
// check the Service cannot make.
func (s *Server) endpoint(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rt.access != public {
			p, err := s.authenticate(r)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			if rec, ok := w.(*recorder); ok {
				rec.principal = p.ID
			}
			if rt.access == introspect && !p.HasScope(lapse.ScopeIntrospect) {
				s.writeError(w, r, lapse.Errorf(lapse.EFORBIDDEN, "this endpoint needs a credential with scope %s", lapse.ScopeIntrospect))
				return
			}
			ctx := lapse.NewContext(r.Context(), p)
			ctx = lapse.WithChannel(ctx, channel(r.Header.Get(HeaderChannel)))
			r = r.WithContext(ctx)
		}
		if err := rt.handle(s, w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func channel(h string) string {
	switch h {
	case lapse.ChannelCLI, lapse.ChannelMCP:
		return h
	}
	return lapse.ChannelAPI
}

// authenticate reads "Authorization: Bearer <secret>" and asks Auth.
// Anything but exactly one well-formed bearer header is EUNAUTHORIZED
// without calling Auth.
func (s *Server) authenticate(r *http.Request) (*lapse.Principal, error) {
	deny := lapse.Errorf(lapse.EUNAUTHORIZED, "missing, invalid, expired or revoked credential")
	hs := r.Header.Values("Authorization")
	if len(hs) != 1 {
		return nil, deny
	}
	scheme, secret, ok := strings.Cut(hs[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, deny
	}
	secret = strings.TrimLeft(secret, " ")
	// The bound fits an OIDC ID token (1–2 KiB, more with many groups)
	// as well as an API key.
	if secret == "" || len(secret) > maxSubjectToken || strings.ContainsAny(secret, " \t") {
		return nil, deny
	}
	if s.Auth == nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "authentication is not configured")
	}
	p, err := s.Auth.Authenticate(r.Context(), secret)
	switch {
	case err == nil && p != nil:
		return p, nil
	case lapse.ErrorCode(err) == lapse.EUNAVAILABLE:
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "cannot check credentials now")
	default:
		// Whatever Auth said, the caller learns only "unauthorized".
		return nil, deny
	}
}

// recorder remembers what the logging middleware reports.
type recorder struct {
	http.ResponseWriter
	status    int
	bytes     int64
	principal string
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (flush, deadlines).
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

var (
	requestIDPrefix = func() string {
		var b [6]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	requestCounter atomic.Uint64
)

// newRequestID returns a process-unique request ID: a random per-process
// prefix and a counter, which is cheaper than randomness per request and
// still cannot collide between replicas in practice.
func newRequestID() string {
	var b [32]byte
	out := append(b[:0], requestIDPrefix...)
	out = append(out, '-')
	out = strconv.AppendUint(out, requestCounter.Add(1), 10)
	return string(out)
}

// middleware sets the common headers and the request ID, recovers panics
// and logs one line per request. It never logs bodies, headers or query
// strings: any of them may carry a credential.
func (s *Server) middleware(next http.Handler) http.Handler {
	log := s.logger()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := newRequestID()
		h := w.Header()
		h.Set(headerRequestID, id)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		rec := &recorder{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.LogAttrs(r.Context(), slog.LevelError, "panic serving request",
					slog.String("request_id", id),
					slog.String("route", r.Pattern),
					slog.Any("panic", v),
					slog.String("stack", string(debug.Stack())))
				if rec.status == 0 {
					s.writeError(rec, r, lapse.Errorf(lapse.EINTERNAL, "internal error"))
				}
			}
			level := slog.LevelInfo
			if rec.status >= 500 {
				level = slog.LevelError
			}
			log.LogAttrs(r.Context(), level, "http request",
				slog.String("request_id", id),
				slog.String("method", r.Method),
				slog.String("route", r.Pattern),
				slog.Int("status", rec.status),
				slog.Duration("duration", time.Since(start)),
				slog.Int64("bytes", rec.bytes),
				slog.String("principal", rec.principal))
		}()
		next.ServeHTTP(rec, r)
	})
}
