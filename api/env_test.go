package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/api/client"
	"github.com/lapsehq/lapse/authn"
)

// syncBuffer is a log sink that the server's goroutines may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// env is one API server over the fakes, with a set of real API keys.
type env struct {
	svc    *fakeService
	target *fakeTarget
	keys   *keyStore
	clock  *fakeClock
	srv    *httptest.Server
	// handler is srv's handler, for in-memory requests: ServeHTTP returns
	// only after the request's log line is written, which over a real
	// connection may come after the client has its answer.
	handler http.Handler
	logs    *syncBuffer

	readyMu sync.Mutex
	ready   error
	// secrets by name: "alice" (request, read, approve), "admin",
	// "consumer" (introspect, principal "api-gw"), "expiring" (1h TTL),
	// "revoked".
	secrets map[string]string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{
		svc:     &fakeService{},
		target:  newFakeTarget(t),
		keys:    &keyStore{keys: map[string]*lapse.APIKey{}},
		clock:   &fakeClock{now: t0},
		logs:    &syncBuffer{},
		secrets: map[string]string{},
	}
	add := func(name string, p lapse.Principal, scopes []string, ttl time.Duration) *lapse.APIKey {
		k, secret, err := authn.GenerateAPIKey(p, scopes, name, e.clock.Now(), ttl)
		if err != nil {
			t.Fatal(err)
		}
		e.keys.keys[k.Prefix] = k
		e.secrets[name] = secret
		return k
	}
	alice := lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Name: "Alice", Groups: []string{"dev"}}
	add("alice", alice, []string{lapse.ScopeRequest, lapse.ScopeRead, lapse.ScopeApprove}, 0)
	add("admin", lapse.Principal{ID: "root", Kind: lapse.KindHuman}, []string{lapse.ScopeAdmin}, 0)
	add("consumer", lapse.Principal{ID: "api-gw", Kind: lapse.KindService}, []string{lapse.ScopeIntrospect}, 0)
	add("expiring", alice, []string{lapse.ScopeRead}, time.Hour)
	rk := add("revoked", alice, []string{lapse.ScopeRead}, 0)
	rk.RevokedAt = t0

	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "lapse_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Add(3)

	s := &api.Server{
		Service:  e.svc,
		Auth:     &authn.APIKeys{Keys: e.keys, Clock: e.clock},
		Tokens:   map[string]api.TokenTarget{"api": e.target},
		Gatherer: reg,
		Ready: func(context.Context) error {
			e.readyMu.Lock()
			defer e.readyMu.Unlock()
			return e.ready
		},
		Logger: slog.New(slog.NewJSONHandler(e.logs, nil)),
	}
	e.handler = s.Handler()
	e.srv = httptest.NewServer(e.handler)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) setReady(err error) {
	e.readyMu.Lock()
	defer e.readyMu.Unlock()
	e.ready = err
}

// client returns an API client authenticated as the named key.
func (e *env) client(name string) *client.Client {
	c := client.New(e.srv.URL, e.secrets[name])
	c.HTTPClient = e.srv.Client()
	return c
}

// response is a raw HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a raw request; secret "" sends no Authorization header.
func (e *env) do(t testing.TB, method, path, secret, contentType string, body io.Reader) response {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// mem serves one request in memory; secret "" sends no Authorization.
func (e *env) mem(t testing.TB, method, path, secret, contentType, body string) response {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	return response{rec.Code, rec.Header(), rec.Body.Bytes()}
}

// doJSON sends body as application/json.
func (e *env) doJSON(t testing.TB, method, path, secret, body string) response {
	t.Helper()
	return e.do(t, method, path, secret, "application/json", strings.NewReader(body))
}

// wantError checks that r is an error response with status, code and field.
func wantError(t testing.TB, r response, status int, code, field string) api.ErrorBody {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var eb api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil {
		t.Fatalf("error body %s: %v", r.body, err)
	}
	if eb.Error.Code != code || eb.Error.Field != field {
		t.Fatalf("error = %+v, want code %q field %q", eb.Error, code, field)
	}
	if eb.Error.Message == "" {
		t.Errorf("error has no message: %s", r.body)
	}
	return eb
}

// wantCode checks a client error's code and field.
func wantCode(t testing.TB, err error, code, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want code %q", code)
	}
	if lapse.ErrorCode(err) != code || lapse.ErrorField(err) != field {
		t.Fatalf("err = %v (code %q field %q), want code %q field %q", err, lapse.ErrorCode(err), lapse.ErrorField(err), code, field)
	}
}

// sameJSON fails unless got and want encode to the same JSON.
func sameJSON(t testing.TB, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Fatalf("got  %s\nwant %s", g, w)
	}
}

// failingLookup is a key store that cannot be reached.
type failingLookup struct{ err error }

func (f failingLookup) GetAPIKey(context.Context, string) (*lapse.APIKey, error) { return nil, f.err }

// serve runs one request through srv's handler in memory.
func serve(t testing.TB, srv *api.Server, method, path, authorization, contentType, body string) response {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	return response{rec.Code, rec.Header(), rec.Body.Bytes()}
}
