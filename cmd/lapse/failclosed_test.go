package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/audit"
)

// checkpointWitness is an HTTP checkpoint sink that can be made to refuse.
type checkpointWitness struct {
	refuse  atomic.Bool
	largest atomic.Uint64 // tree size of the largest checkpoint accepted
	key     string        // the log's verifier key, to open what it receives
}

func (w *checkpointWitness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if w.refuse.Load() {
		http.Error(rw, "witness down", http.StatusServiceUnavailable)
		return
	}
	note, _ := io.ReadAll(r.Body)
	if w.key != "" {
		v, err := audit.NewVerifier(w.key)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		cp, err := audit.OpenCheckpoint(note, v)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		for {
			cur := w.largest.Load()
			if cp.Size <= cur || w.largest.CompareAndSwap(cur, cp.Size) {
				break
			}
		}
	}
	rw.WriteHeader(http.StatusNoContent)
}

// TestServerFailsClosedWhenTheAuditLogIsDegraded runs lapse server with an
// HTTP checkpoint sink that goes down: from then on no approval and no
// auto-approved grant is made (503, reason audit_degraded, nothing stored),
// while filing requests and releasing a live grant go on; health, readiness
// and metrics say degraded. When the sink is back, approvals work again and
// every event made meanwhile — the release included — is under a
// checkpoint the sink accepted.
func TestServerFailsClosedWhenTheAuditLogIsDegraded(t *testing.T) {
	witness := &checkpointWitness{}
	sink := httptest.NewServer(witness)
	defer sink.Close()
	src := strings.Replace(serverConfig, "targets:", "audit:\n  checkpoint_url: "+sink.URL+"\n  interval: 20ms\ntargets:", 1)
	path := writeServerConfig(t, src)
	key := func(principal, scopes string) string {
		out, _, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", principal, "--scope", scopes)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	alice, bob := key("alice", "read,request"), key("bob", "read,approve")
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	witness.key = readKey(t, strings.TrimSuffix(path, "lapse.yaml")+"data/audit.pub")

	var live lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/read"}, &live); code != 201 || live.Grant == nil {
		t.Fatalf("auto-approved request while healthy: %d", code)
	}

	witness.refuse.Store(true)
	var pending lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "scratch/use", Reason: "fix the cache"}, &pending); code != 201 {
		t.Fatalf("filing a request must go on while degraded: %d", code)
	}
	waitHealth(t, r.url, "degraded")

	var ready struct{ Status, Degraded string }
	if code := call(t, "GET", r.url+"/readyz", "", nil, &ready); code != 200 || ready.Status != "degraded" || ready.Degraded == "" {
		t.Errorf("readyz while degraded = %d %+v; want 200, status degraded, a reason", code, ready)
	}
	if m := metricsText(t, r.url); !strings.Contains(m, "\nlapse_audit_degraded 1\n") {
		t.Error("metrics do not say lapse_audit_degraded 1")
	}

	refused := func(what string, code int, body api.ErrorBody) {
		t.Helper()
		if code != http.StatusServiceUnavailable || body.Error.Code != lapse.EUNAVAILABLE || body.Error.Reason != lapse.ReasonAuditDegraded {
			t.Errorf("%s while degraded = %d %+v; want 503 unavailable/audit_degraded", what, code, body.Error)
		}
	}
	var eb api.ErrorBody
	code := call(t, "POST", r.url+"/v1/requests/"+pending.Request.ID+"/approve", bob, lapse.DecisionInput{RequestHash: pending.Request.Hash}, &eb)
	refused("approve", code, eb)
	eb = api.ErrorBody{}
	code = call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/read"}, &eb)
	refused("auto-approved request", code, eb)

	var grants struct{ Grants []*lapse.Grant }
	call(t, "GET", r.url+"/v1/grants", alice, nil, &grants)
	if len(grants.Grants) != 1 {
		t.Errorf("%d grants exist; the refused request must have stored none", len(grants.Grants))
	}
	var req lapse.Request
	if call(t, "GET", r.url+"/v1/requests/"+pending.Request.ID, bob, nil, &req); req.State != lapse.RequestPending || len(req.Approvals) != 0 {
		t.Errorf("the refused approval changed the request: %s, %d approvals", req.State, len(req.Approvals))
	}

	var g lapse.Grant
	if code := call(t, "POST", r.url+"/v1/grants/"+live.Grant.ID+"/release", alice, lapse.ReleaseInput{Wait: true}, &g); code != 200 || g.State != lapse.GrantRevoked {
		t.Fatalf("release while degraded = %d, state %s; revocations must go on", code, g.State)
	}

	witness.refuse.Store(false)
	waitHealth(t, r.url, "ok")
	if code := call(t, "POST", r.url+"/v1/requests/"+pending.Request.ID+"/approve", bob, lapse.DecisionInput{RequestHash: pending.Request.Hash}, nil); code != 200 {
		t.Errorf("approve after recovery = %d", code)
	}
	// Every event so far, including those of the release made while the
	// sink was down, ends up under a checkpoint the sink accepted.
	var shown lapse.Grant
	call(t, "GET", r.url+"/v1/grants/"+live.Grant.ID, alice, nil, &shown)
	var revoked int64
	for _, ev := range shown.Events {
		if ev.Type == lapse.EventGrantRevoked && ev.GrantID == live.Grant.ID {
			revoked = ev.Seq
		}
	}
	if revoked == 0 {
		t.Fatalf("no grant.revoked event among the grant's %d", len(shown.Events))
	}
	deadline := time.Now().Add(10 * time.Second)
	for witness.largest.Load() < uint64(revoked) {
		if time.Now().After(deadline) {
			t.Fatalf("the sink's largest checkpoint covers %d entries; the release's grant.revoked is entry %d", witness.largest.Load(), revoked)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// waitHealth polls /healthz until its status is want; the audit log
// reports on its own schedule.
func waitHealth(t *testing.T, url, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var h struct{ Status, Degraded string }
		call(t, "GET", url+"/healthz", "", nil, &h)
		if h.Status == want {
			if want == "degraded" && h.Degraded == "" {
				t.Error("degraded health without a reason")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz status %q, want %q", h.Status, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func metricsText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
