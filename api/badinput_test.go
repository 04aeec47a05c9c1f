package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/authn"
)

// TestAuthFailuresLookAlike: every way of not being authenticated gets the
// same 401 body with WWW-Authenticate, and never reaches the Service.
func TestAuthFailuresLookAlike(t *testing.T) {
	e := newEnv(t)
	e.clock.Advance(2 * time.Hour) // past the "expiring" key's TTL
	alice := e.secrets["alice"]
	wrongSecret := alice[:len(alice)-4] + "AAAA"
	if wrongSecret == alice {
		wrongSecret = alice[:len(alice)-4] + "BBBB"
	}
	cases := map[string]func(r *http.Request){
		"missing":      func(r *http.Request) {},
		"empty bearer": func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") },
		"no scheme":    func(r *http.Request) { r.Header.Set("Authorization", alice) },
		"basic":        func(r *http.Request) { r.SetBasicAuth("alice", alice) },
		"malformed":    func(r *http.Request) { r.Header.Set("Authorization", "Bearer lapse_not-a-key") },
		"garbage":      func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+strings.Repeat("x", 5000)) },
		"unknown": func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer lapse_aaaaaaaaaaaa_"+alice[len(alice)-43:])
		},
		"wrong secret": func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+wrongSecret) },
		"expired":      func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+e.secrets["expiring"]) },
		"revoked":      func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+e.secrets["revoked"]) },
		"two headers": func(r *http.Request) {
			r.Header.Add("Authorization", "Bearer "+alice)
			r.Header.Add("Authorization", "Bearer "+alice)
		},
		"trailing garbage": func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+alice+" x") },
	}
	var first []byte
	for name, set := range cases {
		t.Run(name, func(t *testing.T) {
			for _, path := range []string{"/v1/whoami", "/v1/targets/api/revocations"} {
				req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
				set(req)
				resp, err := e.srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				r := response{resp.StatusCode, resp.Header, body}
				wantError(t, r, 401, lapse.EUNAUTHORIZED, "")
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("WWW-Authenticate = %q", got)
				}
				if first == nil {
					first = body
				} else if !bytes.Equal(first, body) {
					t.Errorf("401 bodies differ:\n%s\n%s", first, body)
				}
			}
		})
	}
	if n := e.svc.count(); n != 0 {
		t.Fatalf("service called %d times by unauthenticated requests", n)
	}
	// The same key works before it expires: the failures above are the
	// key's state, not a broken setup.
	e2 := newEnv(t)
	if _, err := e2.client("expiring").Whoami(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestAuthUnavailable: when the credential cannot be checked (the store is
// down) the caller gets 503, not 401: its key may be fine.
func TestAuthUnavailable(t *testing.T) {
	e := newEnv(t)
	srv := &api.Server{Service: e.svc, Auth: &authn.APIKeys{Keys: failingLookup{errors.New("connection refused")}, Clock: e.clock}}
	r := serve(t, srv, "GET", "/v1/whoami", "Bearer "+e.secrets["alice"], "", "")
	wantError(t, r, 503, lapse.EUNAVAILABLE, "")
	if e.svc.count() != 0 {
		t.Fatal("the Service was called without an authenticated caller")
	}
}

// TestBadInput sends malformed input to every kind of endpoint: each gets a
// 4xx with a stable code and the offending field, and none reaches the
// Service.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	alice := e.secrets["alice"]
	req := "/v1/requests/" + lapse.NewID(lapse.PrefixRequest, t0)
	gr := "/v1/grants/" + lapse.NewID(lapse.PrefixGrant, t0)
	deep := `{"entitlement":"x","reason":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`
	veryDeep := strings.Repeat("[", 60000)
	deepObj := `{"entitlement":` + strings.Repeat(`{"a":`, 33) + `1` + strings.Repeat("}", 33) + `}`
	cases := []struct {
		name, method, path, ctype, body string
		status                          int
		code, field                     string
	}{
		// Durations are decoded strictly: zero, negative, absurd and
		// malformed values are refused with the field the caller sent.
		{"negative duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":"-5m"}`, 400, lapse.EINVALID, "duration"},
		{"absurd duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":"9999999h"}`, 400, lapse.EINVALID, "duration"},
		{"zero duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":"0s"}`, 400, lapse.EINVALID, "duration"},
		{"overflowing duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":"99999999999999999999h"}`, 400, lapse.EINVALID, "duration"},
		{"word duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":"forever"}`, 400, lapse.EINVALID, "duration"},
		{"empty duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":""}`, 400, lapse.EINVALID, "duration"},
		{"numeric duration", "POST", "/v1/requests", "application/json", `{"entitlement":"x","duration":300}`, 400, lapse.EINVALID, "duration"},
		{"negative ttl", "POST", "/v1/apikeys", "application/json", `{"principal_id":"ci","principal_kind":"service","scopes":["read"],"ttl":"-1h"}`, 400, lapse.EINVALID, "ttl"},
		{"absurd ttl", "POST", "/v1/apikeys", "application/json", `{"principal_id":"ci","principal_kind":"service","scopes":["read"],"ttl":"100000h"}`, 400, lapse.EINVALID, "ttl"},

		// A mandate has two durations; a bad one is named by its member.
		{"bad mandate ceiling", "POST", "/v1/mandates", "application/json", `{"agent_id":"a","entitlements":["x"],"max_duration":"-5m","expires_in":"8h"}`, 400, lapse.EINVALID, "max_duration"},
		{"bad mandate expiry", "POST", "/v1/mandates", "application/json", `{"agent_id":"a","entitlements":["x"],"max_duration":"5m","expires_in":"forever"}`, 400, lapse.EINVALID, "expires_in"},
		{"mandate entitlements not a list", "POST", "/v1/mandates", "application/json", `{"agent_id":"a","entitlements":"x"}`, 400, lapse.EINVALID, "entitlements"},
		{"unknown mandate field", "POST", "/v1/mandates", "application/json", `{"agent_id":"a","sponsor":"bob"}`, 400, lapse.EINVALID, "sponsor"},
		{"mandate without body", "POST", "/v1/mandates", "application/json", ``, 400, lapse.EINVALID, "body"},
		{"not a mandate ID", "DELETE", "/v1/mandates/gr_x", "", "", 400, lapse.EINVALID, "id"},
		{"unknown mandate filter", "GET", "/v1/mandates?state=live", "", "", 400, lapse.EINVALID, "state"},
		{"bad live filter", "GET", "/v1/mandates?live=yes", "", "", 400, lapse.EINVALID, "live"},
		{"on_behalf_of of the wrong type", "POST", "/v1/requests", "application/json", `{"entitlement":"x","on_behalf_of":["bob"]}`, 400, lapse.EINVALID, "on_behalf_of"},

		// Strict JSON.
		{"unknown field", "POST", "/v1/requests", "application/json", `{"entitlement":"x","admin":true}`, 400, lapse.EINVALID, "admin"},
		{"field in other case", "POST", "/v1/requests", "application/json", `{"Entitlement":"x"}`, 400, lapse.EINVALID, "Entitlement"},
		{"escaped unknown field", "POST", "/v1/requests", "application/json", `{"entitlement":"x","\u0061dmin":1}`, 400, lapse.EINVALID, "admin"},
		{"duplicate field", "POST", "/v1/requests", "application/json", `{"entitlement":"a","reason":"r","entitlement":"b"}`, 400, lapse.EINVALID, "entitlement"},
		{"duplicate via escape", "POST", "/v1/requests", "application/json", `{"entitlement":"a","\u0065ntitlement":"b"}`, 400, lapse.EINVALID, "entitlement"},
		{"trailing object", "POST", "/v1/requests", "application/json", `{"entitlement":"x"} {"entitlement":"y"}`, 400, lapse.EINVALID, "body"},
		{"trailing garbage", "POST", "/v1/requests", "application/json", `{"entitlement":"x"}x`, 400, lapse.EINVALID, "body"},
		{"nested too deep", "POST", "/v1/requests", "application/json", deep, 400, lapse.EINVALID, "body"},
		{"nested objects too deep", "POST", "/v1/requests", "application/json", deepObj, 400, lapse.EINVALID, "body"},
		{"unterminated nesting", "POST", "/v1/requests", "application/json", `{"reason":` + veryDeep, 400, lapse.EINVALID, "body"},
		{"array body", "POST", "/v1/requests", "application/json", `[{"entitlement":"x"}]`, 400, lapse.EINVALID, "body"},
		{"null body", "POST", "/v1/requests", "application/json", `null`, 400, lapse.EINVALID, "body"},
		{"string body", "POST", "/v1/requests", "application/json", `"x"`, 400, lapse.EINVALID, "body"},
		{"truncated", "POST", "/v1/requests", "application/json", `{"entitlement":"x"`, 400, lapse.EINVALID, "body"},
		{"unterminated string", "POST", "/v1/requests", "application/json", `{"entitlement":"x}`, 400, lapse.EINVALID, "body"},
		{"bad literal", "POST", "/v1/requests", "application/json", `{"entitlement":nope}`, 400, lapse.EINVALID, "body"},
		{"invalid utf-8", "POST", "/v1/requests", "application/json", "{\"entitlement\":\"\xff\xfe\"}", 400, lapse.EINVALID, "body"},
		{"wrong type", "POST", "/v1/requests", "application/json", `{"entitlement":5}`, 400, lapse.EINVALID, "entitlement"},
		{"object for string", "POST", "/v1/requests", "application/json", `{"entitlement":"x","reason":{"a":1}}`, 400, lapse.EINVALID, "reason"},
		{"string for bool", "POST", "/v1/grants/" + lapse.NewID(lapse.PrefixGrant, t0) + "/release", "application/json", `{"wait":"yes"}`, 400, lapse.EINVALID, "wait"},
		{"empty body", "POST", "/v1/requests", "application/json", ``, 400, lapse.EINVALID, "body"},
		{"unknown field on optional body", "POST", req + "/approve", "application/json", `{"comment":"ok","approver":"alice"}`, 400, lapse.EINVALID, "approver"},
		{"body where none is taken", "POST", req + "/cancel", "application/json", `{"force":true}`, 400, lapse.EINVALID, "force"},
		{"body on claim", "POST", gr + "/credentials", "application/json", `{"again":true}`, 400, lapse.EINVALID, "again"},

		// Content types.
		{"text body", "POST", "/v1/requests", "text/plain", `{"entitlement":"x"}`, 400, lapse.EINVALID, "Content-Type"},
		{"no content type", "POST", "/v1/requests", "", `{"entitlement":"x"}`, 400, lapse.EINVALID, "Content-Type"},
		{"form for json", "POST", "/v1/requests", "application/x-www-form-urlencoded", `entitlement=x`, 400, lapse.EINVALID, "Content-Type"},
		{"latin1 charset", "POST", "/v1/requests", "application/json; charset=latin1", `{"entitlement":"x"}`, 400, lapse.EINVALID, "Content-Type"},

		// Path IDs.
		{"bad request id", "GET", "/v1/requests/42", "", "", 400, lapse.EINVALID, "id"},
		{"grant id as request id", "GET", "/v1/requests/" + lapse.NewID(lapse.PrefixGrant, t0), "", "", 400, lapse.EINVALID, "id"},
		{"request id as grant id", "POST", "/v1/grants/" + lapse.NewID(lapse.PrefixRequest, t0) + "/revoke", "", "", 400, lapse.EINVALID, "id"},
		{"escaped traversal", "GET", "/v1/grants/..%2F..%2Fapikeys", "", "", 400, lapse.EINVALID, "id"},
		{"long id", "GET", "/v1/grants/gr_" + strings.Repeat("a", 500), "", "", 400, lapse.EINVALID, "id"},
		{"upper-case key prefix", "DELETE", "/v1/apikeys/ABCDEFGHIJKM", "", "", 400, lapse.EINVALID, "prefix"},
		{"short key prefix", "DELETE", "/v1/apikeys/abc", "", "", 400, lapse.EINVALID, "prefix"},
		{"target name with space", "GET", "/v1/targets/a%20b/jwks.json", "", "", 400, lapse.EINVALID, "name"},
		{"unknown target", "GET", "/v1/targets/nope/revocations", "", "", 404, lapse.ENOTFOUND, "name"},

		// Query parameters.
		{"unknown state", "GET", "/v1/requests?state=approvedish", "", "", 400, lapse.EINVALID, "state"},
		{"grant state on requests", "GET", "/v1/requests?state=active", "", "", 400, lapse.EINVALID, "state"},
		{"unknown grant state", "GET", "/v1/grants?state=pending", "", "", 400, lapse.EINVALID, "state"},
		{"zero limit", "GET", "/v1/requests?limit=0", "", "", 400, lapse.EINVALID, "limit"},
		{"negative limit", "GET", "/v1/grants?limit=-1", "", "", 400, lapse.EINVALID, "limit"},
		{"huge limit", "GET", "/v1/grants?limit=1000000", "", "", 400, lapse.EINVALID, "limit"},
		{"word limit", "GET", "/v1/grants?limit=all", "", "", 400, lapse.EINVALID, "limit"},
		{"empty limit", "GET", "/v1/grants?limit=", "", "", 400, lapse.EINVALID, "limit"},
		{"unknown parameter", "GET", "/v1/requests?stat=pending", "", "", 400, lapse.EINVALID, "stat"},
		{"repeated parameter", "GET", "/v1/requests?state=pending&state=denied", "", "", 400, lapse.EINVALID, "state"},
		{"bad boolean", "GET", "/v1/requests?approvable=yes", "", "", 400, lapse.EINVALID, "approvable"},
		{"bad live", "GET", "/v1/grants?live=1", "", "", 400, lapse.EINVALID, "live"},
		{"bad request filter", "GET", "/v1/grants?request=gr_x", "", "", 400, lapse.EINVALID, "request"},
		{"control char principal", "GET", "/v1/grants?principal=a%00b", "", "", 400, lapse.EINVALID, "principal"},
		{"bad target filter", "GET", "/v1/grants?target=a%22b", "", "", 400, lapse.EINVALID, "target"},
		{"query on whoami", "GET", "/v1/whoami?as=root", "", "", 400, lapse.EINVALID, "as"},
		{"malformed query", "GET", "/v1/requests?state=%zz", "", "", 400, lapse.EINVALID, "query"},
		{"negative after", "GET", "/v1/targets/api/revocations?after=-1", "", "", 400, lapse.EINVALID, "after"},
		{"word after", "GET", "/v1/targets/api/revocations?after=x", "", "", 400, lapse.EINVALID, "after"},

		// Introspection and acknowledgements.
		{"introspect json", "POST", "/v1/targets/api/introspect", "application/json", `{"token":"good-token"}`, 400, lapse.EINVALID, "Content-Type"},
		{"introspect without token", "POST", "/v1/targets/api/introspect", "application/x-www-form-urlencoded", `token_type_hint=access_token`, 400, lapse.EINVALID, "token"},
		{"introspect token in URL", "POST", "/v1/targets/api/introspect?token=good-token", "application/x-www-form-urlencoded", `token=good-token`, 400, lapse.EINVALID, "query"},
		{"introspect two tokens", "POST", "/v1/targets/api/introspect", "application/x-www-form-urlencoded", `token=a&token=b`, 400, lapse.EINVALID, "token"},
		{"introspect extra parameter", "POST", "/v1/targets/api/introspect", "application/x-www-form-urlencoded", `token=a&client_secret=s`, 400, lapse.EINVALID, "client_secret"},
		{"introspect big form", "POST", "/v1/targets/api/introspect", "application/x-www-form-urlencoded", "token=" + strings.Repeat("a", 20<<10), 413, lapse.ETOOLARGE, "body"},
		{"ack without seq", "POST", "/v1/targets/api/revocations/ack", "application/json", `{"consumer":"alice"}`, 400, lapse.EINVALID, "seq"},
		{"ack without consumer", "POST", "/v1/targets/api/revocations/ack", "application/json", `{"seq":1}`, 400, lapse.EINVALID, "consumer"},
		{"ack string seq", "POST", "/v1/targets/api/revocations/ack", "application/json", `{"consumer":"alice","seq":"1"}`, 400, lapse.EINVALID, "seq"},
		{"ack fractional seq", "POST", "/v1/targets/api/revocations/ack", "application/json", `{"consumer":"alice","seq":1.5}`, 400, lapse.EINVALID, "seq"},

		// Routing.
		{"wrong method", "PUT", "/v1/requests", "application/json", `{}`, 405, "method_not_allowed", ""},
		{"delete a grant", "DELETE", gr, "", "", 405, "method_not_allowed", ""},
		{"unknown path", "GET", "/v1/nothing", "", "", 404, lapse.ENOTFOUND, ""},
		{"unknown version", "GET", "/v2/whoami", "", "", 404, lapse.ENOTFOUND, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.svc.count()
			e.target.mu.Lock()
			targetBefore := e.target.calls
			e.target.mu.Unlock()
			secret := alice
			if strings.HasPrefix(tc.path, "/v1/targets/") {
				secret = e.secrets["admin"] // has scope introspect
			}
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r := e.do(t, tc.method, tc.path, secret, tc.ctype, body)
			wantError(t, r, tc.status, tc.code, tc.field)
			if e.svc.count() != before {
				t.Errorf("bad input reached the Service: %+v", e.svc.last(t))
			}
			e.target.mu.Lock()
			defer e.target.mu.Unlock()
			if e.target.calls != targetBefore {
				t.Errorf("bad input reached the token target")
			}
		})
	}
}

// TestMethodNotAllowedNamesMethods checks the Allow header of a 405.
func TestMethodNotAllowedNamesMethods(t *testing.T) {
	e := newEnv(t)
	r := e.doJSON(t, "PATCH", "/v1/requests", e.secrets["alice"], `{}`)
	wantError(t, r, 405, "method_not_allowed", "")
	if got := r.header.Get("Allow"); got != "POST, GET, HEAD" {
		t.Fatalf("Allow = %q", got)
	}
}

// TestTooLarge: a 10 MB reason is refused with 413 without being read,
// whether the client declares the length or streams it chunked.
func TestTooLarge(t *testing.T) {
	e := newEnv(t)
	big := `{"entitlement":"x","reason":"` + strings.Repeat("a", 10<<20) + `"}`
	t.Run("declared length", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/requests", e.secrets["alice"], "application/json", strings.NewReader(big))
		wantError(t, r, 413, lapse.ETOOLARGE, "body")
	})
	t.Run("chunked", func(t *testing.T) {
		// An io.Reader of unknown length makes the client send chunks, so
		// the server must stop at its limit while reading.
		counter := &countingReader{r: strings.NewReader(big)}
		r := e.do(t, "POST", "/v1/requests", e.secrets["alice"], "application/json", struct{ io.Reader }{counter})
		wantError(t, r, 413, lapse.ETOOLARGE, "body")
	})
	t.Run("just over the limit", func(t *testing.T) {
		body := `{"entitlement":"x","reason":"` + strings.Repeat("a", api.MaxJSONBody) + `"}`
		r := e.do(t, "POST", "/v1/requests", e.secrets["alice"], "application/json", strings.NewReader(body))
		wantError(t, r, 413, lapse.ETOOLARGE, "body")
	})
	t.Run("optional body", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/requests/"+lapse.NewID(lapse.PrefixRequest, t0)+"/approve", e.secrets["alice"], "application/json", strings.NewReader(big))
		wantError(t, r, 413, lapse.ETOOLARGE, "body")
	})
	t.Run("not read", func(t *testing.T) {
		// In memory, so what the handler read can be counted exactly.
		srv := &api.Server{Service: e.svc, Auth: &authn.APIKeys{Keys: e.keys, Clock: e.clock}}
		for _, declared := range []bool{true, false} {
			counter := &countingReader{r: strings.NewReader(big)}
			req := httptest.NewRequest("POST", "/v1/requests", counter)
			req.ContentLength = -1
			if declared {
				req.ContentLength = int64(len(big))
			}
			req.Header.Set("Authorization", "Bearer "+e.secrets["alice"])
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			srv.Handler().ServeHTTP(rec, req)
			if rec.Code != 413 {
				t.Fatalf("declared=%v: status %d", declared, rec.Code)
			}
			limit := 0
			if !declared {
				limit = 2 * api.MaxJSONBody
			}
			if counter.n > limit {
				t.Fatalf("declared=%v: the handler read %d bytes of a %d-byte body", declared, counter.n, len(big))
			}
		}
	})
	if n := e.svc.count(); n != 0 {
		t.Fatalf("oversized bodies reached the Service %d times", n)
	}
	// A body just under the limit is read and decoded.
	ok := `{"entitlement":"x","reason":"` + strings.Repeat("a", api.MaxJSONBody-64) + `"}`
	r := e.do(t, "POST", "/v1/requests", e.secrets["alice"], "application/json", strings.NewReader(ok))
	if r.status != 201 {
		t.Fatalf("status = %d, body %s", r.status, r.body)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestAcceptedVariants: inputs that are unusual but valid are accepted.
func TestAcceptedVariants(t *testing.T) {
	e := newEnv(t)
	alice := e.secrets["alice"]
	reqPath := "/v1/requests/" + lapse.NewID(lapse.PrefixRequest, t0)
	for _, tc := range []struct {
		name, method, path, ctype, body string
		status                          int
	}{
		{"charset utf-8", "POST", "/v1/requests", "application/json; charset=UTF-8", `{"entitlement":"x"}`, 201},
		{"whitespace around", "POST", "/v1/requests", "application/json", " \n\t{\"entitlement\":\"x\"}\r\n ", 201},
		{"arrays inside are fine", "POST", "/v1/apikeys", "application/json", `{"principal_id":"ci","principal_kind":"service","scopes":["read"]}`, 201},
		{"braces inside strings do not nest", "POST", "/v1/requests", "application/json", `{"entitlement":"x","reason":"` + strings.Repeat("[{", 100) + `\"}"}`, 201},
		{"no body on approve", "POST", reqPath + "/approve", "", "", 200},
		{"empty object on cancel", "POST", reqPath + "/cancel", "application/json", `{}`, 200},
		{"no body on cancel", "POST", reqPath + "/cancel", "", "", 200},
		{"introspect with hint", "POST", "/v1/targets/api/introspect", "application/x-www-form-urlencoded", `token=good-token&token_type_hint=access_token`, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secret := alice
			if strings.HasPrefix(tc.path, "/v1/targets/") {
				secret = e.secrets["consumer"]
			}
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r := e.do(t, tc.method, tc.path, secret, tc.ctype, body)
			if r.status != tc.status {
				t.Fatalf("status = %d, want %d; body %s", r.status, tc.status, r.body)
			}
		})
	}
}
