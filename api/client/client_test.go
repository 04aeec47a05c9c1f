package client_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api/client"
)

// The end-to-end round trips against the real server are in package api's
// tests; these cover what the client does with answers no Lapse server
// gives: proxies, truncation, garbage.

func stub(t *testing.T, h http.HandlerFunc) *client.Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return client.New(srv.URL+"/", "lapse_secretsecret")
}

func wantCode(t *testing.T, err error, code, field string) {
	t.Helper()
	if lapse.ErrorCode(err) != code || lapse.ErrorField(err) != field {
		t.Fatalf("err = %v (code %q field %q), want %q %q", err, lapse.ErrorCode(err), lapse.ErrorField(err), code, field)
	}
}

func TestErrorsFromForeignResponses(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		code   string
	}{
		{502, "<html>Bad Gateway</html>", lapse.EUNAVAILABLE},
		{503, "", lapse.EUNAVAILABLE},
		{504, "upstream timed out", lapse.EUNAVAILABLE},
		{404, "404 page not found", lapse.ENOTFOUND},
		{401, "", lapse.EUNAUTHORIZED},
		{500, "oops", lapse.EINTERNAL},
		{418, "teapot", lapse.EINTERNAL},
		{400, `{"error":{}}`, lapse.EINVALID},
	} {
		c := stub(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			w.Write([]byte(tc.body))
		})
		_, err := c.Whoami(context.Background())
		wantCode(t, err, tc.code, "")
		if strings.Contains(err.Error(), "secretsecret") {
			t.Fatalf("error leaks the token: %v", err)
		}
	}
}

func TestLapseErrorBody(t *testing.T) {
	c := stub(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(409)
		w.Write([]byte(`{"error":{"code":"conflict","message":"already decided","field":"request_hash"}}`))
	})
	_, err := c.Approve(context.Background(), "req_x", lapse.DecisionInput{})
	wantCode(t, err, lapse.ECONFLICT, "request_hash")
	if lapse.ErrorMessage(err) != "already decided" {
		t.Fatalf("message = %q", lapse.ErrorMessage(err))
	}
}

func TestMalformedSuccessIsUnavailable(t *testing.T) {
	c := stub(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"id":`))
	})
	_, err := c.Whoami(context.Background())
	wantCode(t, err, lapse.EUNAVAILABLE, "")
}

// TestRequestShape: the client sends the documented method, path, headers
// and body, and credentials only where they are needed.
func TestRequestShape(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	var bodies []string
	c := stub(t, func(w http.ResponseWriter, r *http.Request) {
		b := new(strings.Builder)
		if r.Body != nil {
			buf := make([]byte, 1024)
			n, _ := r.Body.Read(buf)
			b.Write(buf[:n])
		}
		mu.Lock()
		got = append(got, r)
		bodies = append(bodies, b.String())
		mu.Unlock()
		switch {
		case r.URL.Path == "/v1/requests":
			w.WriteHeader(201)
			w.Write([]byte(`{"request":{"id":"req_1"}}`))
		case strings.HasSuffix(r.URL.Path, "jwks.json"):
			w.Write([]byte(`{"keys":[]}`))
		default:
			w.Write([]byte(`{"status":"ok"}`))
		}
	})
	c.Channel = lapse.ChannelCLI
	c.UserAgent = "lapse-cli/test"
	ctx := context.Background()
	if _, err := c.CreateRequest(ctx, lapse.RequestInput{Entitlement: "db/read"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.JWKS(ctx, "api"); err != nil {
		t.Fatal(err)
	}
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetGrant(ctx, "gr_a/../b"); err != nil {
		t.Fatal(err)
	}

	create, jwks, health, grant := got[0], got[1], got[2], got[3]
	if create.Method != "POST" || create.Header.Get("Authorization") != "Bearer lapse_secretsecret" ||
		create.Header.Get("Content-Type") != "application/json" || create.Header.Get(client.HeaderChannel) != "cli" ||
		create.Header.Get("User-Agent") != "lapse-cli/test" {
		t.Errorf("create request: %s %s %v", create.Method, create.URL, create.Header)
	}
	if bodies[0] != `{"entitlement":"db/read"}` {
		t.Errorf("create body = %s", bodies[0])
	}
	if jwks.Header.Get("Authorization") != "" || health.Header.Get("Authorization") != "" {
		t.Error("credentials sent to a public endpoint")
	}
	if grant.URL.EscapedPath() != "/v1/grants/gr_a%2F..%2Fb" {
		t.Errorf("grant ID not escaped: %q", grant.URL.EscapedPath())
	}
}
