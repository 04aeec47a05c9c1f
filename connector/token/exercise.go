package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/token/follower"
)

// canaryConsumer is the consumer ID of the cache that Hold runs. It is not
// one of the target's configured consumers, so its acknowledgements are
// not recorded and never count toward a revocation's verification.
const canaryConsumer = "lapse:canary"

// Use presents the token the way an API server receives it: it verifies
// the signature against the target's published JWKS, checks iss, aud, exp
// and nbf, and then asks introspection (which consults the revocation
// feed). A token that fails any of these is a denial; a store that cannot
// be asked is an error.
func (c *Conn) Use(ctx context.Context, req *connector.ExerciseRequest) error {
	raw := req.Secret["token"]
	if raw == "" {
		return lapse.Errorf(lapse.EINVALID, "token: the grant carries no token; it cannot be exercised")
	}
	jti, _, err := c.verifyWithJWKS(raw)
	if err != nil {
		return err
	}
	in, err := c.Introspect(ctx, raw)
	if err != nil {
		return err
	}
	if !in.Active {
		return fmt.Errorf("token: introspection says token %s is inactive: %w", jti, connector.ErrDenied)
	}
	return nil
}

// verifyWithJWKS checks raw against the JWKS as a consumer would, and
// returns its jti and expiry.
func (c *Conn) verifyWithJWKS(raw string) (string, time.Time, error) {
	if len(raw) > maxTokenLength {
		return "", time.Time{}, fmt.Errorf("token: token is too long: %w", connector.ErrDenied)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 {
		return "", time.Time{}, fmt.Errorf("token: not a signed JWT: %w", connector.ErrDenied)
	}
	jwks := c.JWKS()
	keys := jwks.Key(tok.Headers[0].KeyID)
	if len(keys) == 0 {
		return "", time.Time{}, fmt.Errorf("token: no key %q in the JWKS: %w", tok.Headers[0].KeyID, connector.ErrDenied)
	}
	var std jwt.Claims
	if err := tok.Claims(keys[0].Key, &std); err != nil {
		return "", time.Time{}, fmt.Errorf("token: signature does not verify against the JWKS: %w", connector.ErrDenied)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: c.issuer, AnyAudience: jwt.Audience{c.audience}, Time: c.clock.Now()}, 0); err != nil {
		return "", time.Time{}, fmt.Errorf("token: claims refused (%v): %w", err, connector.ErrDenied)
	}
	if std.Expiry == nil || std.ID == "" {
		return "", time.Time{}, fmt.Errorf("token: token lacks exp or jti: %w", connector.ErrDenied)
	}
	return std.ID, std.Expiry.Time(), nil
}

// Hold is an API server that caches the token: it verifies it once against
// the JWKS and from then on accepts it until exp unless its revocation
// feed says otherwise. The feed is followed with the real follower
// (package follower), over HTTP from a loopback server in this process
// that serves this target's feed as the Lapse API does.
func (c *Conn) Hold(ctx context.Context, req *connector.ExerciseRequest) (connector.HeldSession, error) {
	raw := req.Secret["token"]
	if raw == "" {
		return nil, lapse.Errorf(lapse.EINVALID, "token: the grant carries no token; it cannot be exercised")
	}
	jti, exp, err := c.verifyWithJWKS(raw)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, lapse.Internal("token: listen for the held consumer's feed", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/targets/{name}/revocations", func(w http.ResponseWriter, r *http.Request) {
		after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		if err != nil || r.PathValue("name") != c.name {
			http.Error(w, `{"code":"invalid"}`, http.StatusBadRequest)
			return
		}
		page, err := c.FeedPage(r.Context(), after, 0)
		if err != nil {
			http.Error(w, `{"code":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	})
	mux.HandleFunc("POST /v1/targets/{name}/revocations/ack", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent) // not a configured consumer: nothing to record
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	f, err := follower.New(follower.Config{
		BaseURL:  "http://" + ln.Addr().String(),
		Target:   c.name,
		Consumer: canaryConsumer,
		Now:      c.clock.Now,
	})
	if err != nil {
		_ = srv.Close()
		return nil, lapse.Internal("token: start the held consumer", err)
	}
	h := &heldToken{c: c, jti: jti, exp: exp, f: f, srv: srv}
	if err := f.Sync(ctx); err != nil {
		_ = h.Close()
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the held consumer cannot read the revocation feed", Err: err}
	}
	if f.Revoked(jti) {
		_ = h.Close()
		return nil, fmt.Errorf("token: %s is already on the revocation feed: %w", jti, connector.ErrDenied)
	}
	return h, nil
}

// heldToken is a consumer's cached acceptance of one token.
type heldToken struct {
	mu  sync.Mutex
	c   *Conn
	jti string
	exp time.Time
	f   *follower.Follower
	srv *http.Server
}

// Check syncs the consumer's feed and asks whether it would still accept
// the cached token.
func (h *heldToken) Check(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.c.clock.Now().Before(h.exp) {
		return fmt.Errorf("token: cached token %s has expired: %w", h.jti, connector.ErrDenied)
	}
	if err := h.f.Sync(ctx); err != nil {
		return fmt.Errorf("token: the held consumer cannot read the revocation feed: %w", err)
	}
	if h.f.Revoked(h.jti) {
		return fmt.Errorf("token: the held consumer refuses token %s (revoked on its feed at seq %d): %w", h.jti, h.f.Seq(), connector.ErrDenied)
	}
	return nil
}

// Describe implements connector.HeldSession.
func (h *heldToken) Describe() string {
	return fmt.Sprintf("token consumer cache of %s holding token %s (following the revocation feed)", h.c.name, h.jti)
}

// Close implements connector.HeldSession.
func (h *heldToken) Close() error {
	err := h.srv.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

var _ connector.Exerciser = (*Conn)(nil)
