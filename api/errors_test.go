package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/authn"
)

// TestErrorStatusTable: every code the Service may return becomes its one
// status, with code, field and message intact; internal failures say only
// "internal error".
func TestErrorStatusTable(t *testing.T) {
	e := newEnv(t)
	alice := e.secrets["alice"]
	cases := []struct {
		err              error
		status           int
		code, field, msg string
	}{
		{lapse.FieldErrorf(lapse.EINVALID, "reason", "reason required"), 400, lapse.EINVALID, "reason", "reason required"},
		{lapse.Errorf(lapse.EFORBIDDEN, "not yours"), 403, lapse.EFORBIDDEN, "", "not yours"},
		{lapse.Errorf(lapse.ENOTFOUND, "no such request"), 404, lapse.ENOTFOUND, "", "no such request"},
		{lapse.Errorf(lapse.ECONFLICT, "already decided"), 409, lapse.ECONFLICT, "", "already decided"},
		{lapse.Errorf(lapse.EGONE, "already claimed"), 410, lapse.EGONE, "", "already claimed"},
		{lapse.FieldErrorf(lapse.ETOOLARGE, "reason", "too long"), 413, lapse.ETOOLARGE, "reason", "too long"},
		{lapse.Errorf(lapse.ERATELIMITED, "slow down"), 429, lapse.ERATELIMITED, "", "slow down"},
		{lapse.Errorf(lapse.EUNAVAILABLE, "store down"), 503, lapse.EUNAVAILABLE, "", "store down"},
		{fmt.Errorf("wrapped: %w", lapse.Errorf(lapse.ECONFLICT, "version moved")), 409, lapse.ECONFLICT, "", "version moved"},
		// Internal errors never show their text.
		{lapse.Internal("store: insert", errors.New("pq: password authentication failed for hunter2")), 500, lapse.EINTERNAL, "", "internal error"},
		{errors.New("dial tcp: secret-host:5432"), 500, lapse.EINTERNAL, "", "internal error"},
		{lapse.FieldErrorf(lapse.EINTERNAL, "x", "leaky detail hunter2"), 500, lapse.EINTERNAL, "", "internal error"},
		{lapse.Errorf("made_up_code", "leaky detail hunter2"), 500, lapse.EINTERNAL, "", "internal error"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.status, " ", tc.err), func(t *testing.T) {
			e.svc.setFail(tc.err)
			defer e.svc.setFail(nil)
			r := e.do(t, "GET", "/v1/whoami", alice, "", nil)
			eb := wantError(t, r, tc.status, tc.code, tc.field)
			if eb.Error.Message != tc.msg {
				t.Errorf("message = %q, want %q", eb.Error.Message, tc.msg)
			}
			if strings.Contains(string(r.body), "hunter2") || strings.Contains(string(r.body), "secret-host") {
				t.Errorf("error body leaks internals: %s", r.body)
			}
			// The client gets the same code and field back.
			_, err := e.client("alice").Whoami(context.Background())
			wantCode(t, err, tc.code, tc.field)
		})
	}
	// An unauthenticated Service answer (a key deleted mid-request) is the
	// uniform 401.
	e.svc.setFail(lapse.Errorf(lapse.EUNAUTHORIZED, "principal disabled"))
	r := e.do(t, "GET", "/v1/whoami", alice, "", nil)
	wantError(t, r, 401, lapse.EUNAUTHORIZED, "")
	if r.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	// Internal failures are logged with their cause for the operator.
	if !strings.Contains(e.logs.String(), "password authentication failed") {
		t.Error("internal error cause not logged")
	}
}

func TestStatusCode(t *testing.T) {
	for code, want := range map[string]int{
		lapse.EINVALID: 400, lapse.EUNAUTHORIZED: 401, lapse.EFORBIDDEN: 403, lapse.ENOTFOUND: 404,
		lapse.ECONFLICT: 409, lapse.EGONE: 410, lapse.ETOOLARGE: 413, lapse.ERATELIMITED: 429,
		lapse.EUNAVAILABLE: 503, lapse.EINTERNAL: 500, "": 500, "nonsense": 500,
	} {
		if got := api.StatusCode(code); got != want {
			t.Errorf("StatusCode(%q) = %d, want %d", code, got, want)
		}
	}
}

// TestResponseHeaders checks the headers every response carries, success or
// error, authenticated or public.
func TestResponseHeaders(t *testing.T) {
	e := newEnv(t)
	alice := e.secrets["alice"]
	grant := "/v1/grants/" + lapse.NewID(lapse.PrefixGrant, t0)
	seen := map[string]bool{}
	for _, tc := range []struct {
		method, path, secret, ctype, body string
		status                            int
		cache                             string
		json                              bool
	}{
		{"POST", "/v1/requests", alice, "application/json", `{"entitlement":"x"}`, 201, "no-store", true},
		{"POST", grant + "/credentials", alice, "", "", 200, "no-store", true},
		{"GET", "/v1/whoami", alice, "", "", 200, "no-store", true},
		{"GET", "/v1/whoami", "", "", "", 401, "no-store", true},
		{"GET", "/v1/requests?limit=0", alice, "", "", 400, "no-store", true},
		{"GET", "/nothing", "", "", "", 404, "no-store", true},
		{"GET", "/healthz", "", "", "", 200, "no-store", true},
		{"GET", "/readyz", "", "", "", 200, "no-store", true},
		{"GET", "/v1/targets/api/jwks.json", "", "", "", 200, "public, max-age=60", true},
		{"GET", "/v1/openapi.yaml", "", "", "", 200, "public, max-age=300", false},
		{"GET", "/metrics", "", "", "", 200, "no-store", false},
	} {
		var body *strings.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		var r response
		if body != nil {
			r = e.do(t, tc.method, tc.path, tc.secret, tc.ctype, body)
		} else {
			r = e.do(t, tc.method, tc.path, tc.secret, tc.ctype, nil)
		}
		name := tc.method + " " + tc.path
		if r.status != tc.status {
			t.Errorf("%s: status %d, want %d (%s)", name, r.status, tc.status, r.body)
		}
		if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options = %q", name, got)
		}
		if got := r.header.Get("Cache-Control"); got != tc.cache {
			t.Errorf("%s: Cache-Control = %q, want %q", name, got, tc.cache)
		}
		if tc.json {
			if got := r.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("%s: Content-Type = %q", name, got)
			}
			if !json.Valid(r.body) {
				t.Errorf("%s: body is not JSON: %s", name, r.body)
			}
		}
		id := r.header.Get("X-Request-Id")
		if id == "" || seen[id] {
			t.Errorf("%s: X-Request-Id %q missing or reused", name, id)
		}
		seen[id] = true
	}
	r := e.do(t, "GET", "/metrics", "", "", nil)
	if !strings.Contains(string(r.body), "lapse_test_total 3") {
		t.Errorf("metrics do not serve the gatherer:\n%s", r.body)
	}
}

func TestNoMetricsWithoutGatherer(t *testing.T) {
	r := serve(t, &api.Server{}, "GET", "/metrics", "", "", "")
	wantError(t, r, 404, lapse.ENOTFOUND, "")
}

func TestPanicIsInternalError(t *testing.T) {
	e := newEnv(t)
	var buf syncBuffer
	srv := &api.Server{Service: panicService{e.svc}, Auth: &authn.APIKeys{Keys: e.keys, Clock: e.clock}, Logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	r := serve(t, srv, "GET", "/v1/whoami", "Bearer "+e.secrets["alice"], "", "")
	eb := wantError(t, r, 500, lapse.EINTERNAL, "")
	if strings.Contains(eb.Error.Message, "boom") {
		t.Fatalf("panic value shown to the caller: %s", r.body)
	}
	if !strings.Contains(buf.String(), "boom") {
		t.Fatal("panic not logged")
	}
}

type panicService struct{ *fakeService }

func (panicService) Whoami(context.Context) (*lapse.Principal, error) { panic("boom") }

// TestLogging: one line per request with the request ID, method, route
// pattern, status, duration and caller, and no credential anywhere.
func TestLogging(t *testing.T) {
	e := newEnv(t)
	alice := e.secrets["alice"]
	id := lapse.NewID(lapse.PrefixRequest, t0)
	// In memory: the log line is written before ServeHTTP returns.
	r := e.mem(t, "POST", "/v1/requests/"+id+"/approve", alice, "application/json", `{"comment":"body-secret-comment"}`)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	firstID := r.header.Get("X-Request-Id")
	e.mem(t, "GET", "/v1/whoami", "lapse_aaaaaaaaaaaa_"+strings.Repeat("Z", 43), "", "")
	e.mem(t, "POST", "/v1/targets/api/introspect", e.secrets["consumer"], "application/x-www-form-urlencoded", "token=token-under-test")
	e.mem(t, "GET", "/v1/requests?requester=query-value-x", alice, "", "")
	r = e.mem(t, "POST", "/v1/apikeys", e.secrets["admin"], "application/json", `{"principal_id":"ci","principal_kind":"service","scopes":["read"]}`)
	var created lapse.NewAPIKey
	if err := json.Unmarshal(r.body, &created); err != nil || created.Secret == "" {
		t.Fatalf("create key: %d %s", r.status, r.body)
	}

	logs := e.logs.String()
	for _, secret := range []string{alice, e.secrets["consumer"], e.secrets["admin"], "ZZZZZZZZZZ", "body-secret-comment", "token-under-test", "query-value-x", created.Secret, "Bearer"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q:\n%s", secret, logs)
		}
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == "http request" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 5 {
		t.Fatalf("%d request log lines, want 5:\n%s", len(lines), logs)
	}
	first := lines[0]
	want := map[string]any{"method": "POST", "route": "POST /v1/requests/{id}/approve", "status": float64(200), "principal": "alice", "request_id": firstID}
	for k, v := range want {
		if first[k] != v {
			t.Errorf("log %s = %v, want %v (line %v)", k, first[k], v, first)
		}
	}
	if _, ok := first["duration"]; !ok {
		t.Errorf("log line has no duration: %v", first)
	}
	if lines[1]["status"] != float64(http.StatusUnauthorized) || lines[1]["principal"] != "" {
		t.Errorf("unauthenticated request logged as %v", lines[1])
	}
}
