// Package feedtest holds test helpers shared by the token target's tests
// and the follower's: an HTTP server that serves a token target's
// revocation feed the way the Lapse API does, and a store wrapper that can
// be switched off to test behaviour when the store is down.
package feedtest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/token"
)

// Server serves GET /v1/targets/{name}/revocations?after=N and POST
// /v1/targets/{name}/revocations/ack for one token target, authenticating
// bearer keys from Keys (key → principal ID).
type Server struct {
	*httptest.Server
	Conn *token.Conn
	// Keys maps a bearer key to the principal it authenticates.
	Keys map[string]string
	// PageSize is passed to Feed as the limit (0: the default).
	PageSize int
	// Down makes every request answer 503.
	Down atomic.Bool
	// Requests counts requests served.
	Requests atomic.Int64
}

// NewServer starts a feed server for c, closed at cleanup.
func NewServer(t *testing.T, c *token.Conn, keys map[string]string) *Server {
	t.Helper()
	s := &Server{Conn: c, Keys: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/targets/{name}/revocations", s.feed)
	mux.HandleFunc("POST /v1/targets/{name}/revocations/ack", s.ack)
	s.Server = httptest.NewServer(s.auth(mux))
	t.Cleanup(s.Close)
	return s
}

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Requests.Add(1)
		if s.Down.Load() {
			writeError(w, lapse.Errorf(lapse.EUNAVAILABLE, "down for the test"))
			return
		}
		key, ok := cutBearer(r.Header.Get("Authorization"))
		id, known := s.Keys[key]
		if !ok || !known {
			writeError(w, lapse.Errorf(lapse.EUNAUTHORIZED, "bad credential"))
			return
		}
		p := &lapse.Principal{ID: id, Kind: lapse.KindService, Scopes: []string{lapse.ScopeIntrospect}}
		next.ServeHTTP(w, r.WithContext(lapse.NewContext(r.Context(), p)))
	})
}

func cutBearer(h string) (string, bool) {
	const prefix = "Bearer "
	if len(h) <= len(prefix) || h[:len(prefix)] != prefix {
		return "", false
	}
	return h[len(prefix):], true
}

func (s *Server) feed(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("name") != s.Conn.Name() {
		writeError(w, lapse.Errorf(lapse.ENOTFOUND, "no such target"))
		return
	}
	after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	if err != nil {
		writeError(w, lapse.FieldErrorf(lapse.EINVALID, "after", "after must be an integer"))
		return
	}
	page, err := s.Conn.FeedPage(r.Context(), after, s.PageSize)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("name") != s.Conn.Name() {
		writeError(w, lapse.Errorf(lapse.ENOTFOUND, "no such target"))
		return
	}
	var in token.AckRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil {
		writeError(w, lapse.Errorf(lapse.EINVALID, "bad body"))
		return
	}
	if err := s.Conn.Ack(r.Context(), in.Consumer, in.Seq); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

var statuses = map[string]int{
	lapse.EINVALID:      http.StatusBadRequest,
	lapse.EUNAUTHORIZED: http.StatusUnauthorized,
	lapse.EFORBIDDEN:    http.StatusForbidden,
	lapse.ENOTFOUND:     http.StatusNotFound,
	lapse.EUNAVAILABLE:  http.StatusServiceUnavailable,
}

func writeError(w http.ResponseWriter, err error) {
	code := lapse.ErrorCode(err)
	status, ok := statuses[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, map[string]any{"code": code, "message": lapse.ErrorMessage(err)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrDown is what a switched-off store returns.
var ErrDown = errors.New("feedtest: store is down")

// SwitchableStore wraps a store; while Down is set, every read and Update
// fails with ErrDown, as a store whose database is unreachable does.
type SwitchableStore struct {
	lapse.Store
	Down atomic.Bool
}

func (s *SwitchableStore) Update(ctx context.Context, fn func(tx lapse.Tx) error) error {
	if s.Down.Load() {
		return ErrDown
	}
	return s.Store.Update(ctx, fn)
}

func (s *SwitchableStore) TokenRevocations(ctx context.Context, target string, afterSeq int64, limit int) ([]*lapse.TokenRevocation, error) {
	if s.Down.Load() {
		return nil, ErrDown
	}
	return s.Store.TokenRevocations(ctx, target, afterSeq, limit)
}

func (s *SwitchableStore) TokenRevoked(ctx context.Context, target, tokenID string) (bool, error) {
	if s.Down.Load() {
		return false, ErrDown
	}
	return s.Store.TokenRevoked(ctx, target, tokenID)
}

func (s *SwitchableStore) ConsumerAcks(ctx context.Context, target string) (map[string]int64, error) {
	if s.Down.Load() {
		return nil, ErrDown
	}
	return s.Store.ConsumerAcks(ctx, target)
}

func (s *SwitchableStore) ListGrants(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error) {
	if s.Down.Load() {
		return nil, ErrDown
	}
	return s.Store.ListGrants(ctx, f)
}
