package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/notify"
)

// TestNotifyWebhookEndToEnd runs lapse server with a webhook pointing at
// a local receiver (allow_private, since it listens on the loopback): a
// request filed and approved through the API reaches the receiver as
// request.created and request.decided, each signed with the webhook's
// secret, and the secret appears in no log.
func TestNotifyWebhookEndToEnd(t *testing.T) {
	const secret = "e2e-webhook-secret-0123456789abcdef"
	var mu sync.Mutex
	type delivery struct {
		n   notify.Notification
		err error // the signature check's
	}
	var got []delivery
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var n notify.Notification
		if err := json.Unmarshal(body, &n); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		err := notify.Verify([]byte(secret), r.Header.Get(notify.SignatureHeader), body, time.Now(), 0)
		if err == nil && r.Header.Get(notify.IdempotencyHeader) != n.ID {
			err = lapse.Errorf(lapse.EINVALID, "idempotency key %q is not the notification's ID %q", r.Header.Get(notify.IdempotencyHeader), n.ID)
		}
		mu.Lock()
		got = append(got, delivery{n, err})
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rc.Close()

	path := writeServerConfig(t, serverConfig+`notify:
  webhooks:
    - name: ops
      url: `+rc.URL+`/lapse
      secret: {file: webhook.secret}
      events: [request.created, request.decided]
      allow_private: true
`)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "webhook.secret"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := func(args ...string) string {
		out, _, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", path}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	alice := key("--principal", "alice", "--scope", "read,request")
	bob := key("--principal", "bob", "--scope", "read,approve")
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "debug")

	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "scratch/use", Reason: "e2e"}, &res); code != 201 || res.Request == nil {
		t.Fatalf("request: status %d %+v", code, res)
	}
	id := res.Request.ID
	if code := call(t, "POST", r.url+"/v1/requests/"+id+"/approve", bob, lapse.DecisionInput{}, nil); code != 200 {
		t.Fatalf("approve: status %d", code)
	}

	want := []string{lapse.EventRequestCreated, lapse.EventRequestDecided}
	deadline := time.Now().Add(startupTimeout) // a guard against a hang, not a performance bound
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %d notifications, want %d\nstderr:\n%s", n, len(want), r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("the receiver got %d notifications, want %d: %+v", len(got), len(want), got)
	}
	for i, d := range got {
		if d.err != nil {
			t.Errorf("notification %d: %v", i, d.err)
		}
		n := d.n
		if n.Type != want[i] || n.RequestID != id || n.Entitlement != "scratch/use" || n.PrincipalID != "alice" || n.Text == "" {
			t.Errorf("notification %d = %+v, want %s of request %s", i, n, want[i], id)
		}
	}
	if d := got[1].n; d.Outcome != string(lapse.RequestApproved) || d.ActorID != "bob" || !strings.Contains(d.Text, "decided by bob") {
		t.Errorf("decision = %+v", d)
	}
	if m := metricsText(t, r.url); !strings.Contains(m, `lapse_notify_deliveries_total{outcome="delivered",webhook="ops"} 2`) {
		t.Errorf("metrics lack two deliveries:\n%s", m)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if logs := r.stderr.String(); strings.Contains(logs, secret) || strings.Contains(logs, rc.URL+"/lapse") {
		t.Errorf("the webhook's secret or URL appears in the logs:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), "data", notifyStateFile)); err != nil {
		t.Errorf("no cursor file in the data directory: %v", err)
	}
}

// TestNotifyStartErrorPositioned: a webhook URL that can only be read when
// the server starts (here an unset environment variable) stops the server
// before it serves, with an error at the webhook's line and field that
// names the source.
func TestNotifyStartErrorPositioned(t *testing.T) {
	const env = "LAPSE_TEST_SURELY_UNSET_WEBHOOK_URL"
	path := writeServerConfig(t, serverConfig+`notify:
  webhooks:
    - name: ops
      url: {env: `+env+`}
      format: slack
`)
	_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a configuration error", err, err)
	}
	if ce.File != path || ce.Line != 29 || ce.Path != "notify.webhooks[0].url" || !strings.Contains(err.Error(), env) {
		t.Errorf("error at %s:%d %q, want line 29 notify.webhooks[0].url naming %s: %v", ce.File, ce.Line, ce.Path, env, err)
	}
}
