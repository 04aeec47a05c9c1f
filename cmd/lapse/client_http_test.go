package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
)

// TestHTTPServiceWire runs a command through the real API client against a
// stand-in server and checks what reaches the wire: the API key as a bearer
// token, the CLI channel header, and the error JSON turned back into a code
// and field.
func TestHTTPServiceWire(t *testing.T) {
	var gotAuth, gotChannel string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotChannel = r.Header.Get("Authorization"), r.Header.Get("X-Lapse-Channel")
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/whoami":
			json.NewEncoder(w).Encode(alice)
		case "/v1/requests":
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":{"code":"invalid","message":"duration exceeds the maximum of 1h","field":"duration"}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	c := newCLI(t)
	deps := c.deps()
	deps.newService = newHTTPService
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return c.runWith(deps, args...)
	}

	stdout, stderr, code := run("whoami", "--server", srv.URL, "-o", "json")
	if code != 0 {
		t.Fatalf("whoami: exit %d: %s", code, stderr)
	}
	assertJSON(t, stdout, alice)
	if gotAuth != "Bearer "+testToken {
		t.Error("the API key was not sent as a bearer token")
	}
	if gotChannel != lapse.ChannelCLI {
		t.Errorf("channel header = %q, want %q", gotChannel, lapse.ChannelCLI)
	}

	_, stderr, code = run("request", "prod-db/read", "--for", "8h", "--server", srv.URL)
	if code != exitError || stderr != "lapse: duration exceeds the maximum of 1h (code: invalid, field: duration)\n" {
		t.Errorf("server error: exit %d, stderr %q", code, stderr)
	}

	srv.Close()
	_, stderr, code = run("whoami", "--server", srv.URL)
	if code != exitError || !strings.Contains(stderr, "cannot reach the lapse server: ") || !strings.Contains(stderr, "(code: unavailable)") {
		t.Errorf("server down: exit %d, stderr %q", code, stderr)
	}
}
