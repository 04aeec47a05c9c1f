package notify_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/notify"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

const testSecret = "whsec-0123456789abcdef-do-not-log"

// call is one request a receiver got.
type call struct {
	header http.Header
	body   []byte
}

// receiver is a webhook receiver on an httptest server. answer decides the
// status of the n-th call (from 1); nil answers 204.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	calls  []call
	answer func(n int, w http.ResponseWriter, r *http.Request) int
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.calls = append(rc.calls, call{header: r.Header.Clone(), body: body})
		n := len(rc.calls)
		rc.mu.Unlock()
		status := http.StatusNoContent
		if rc.answer != nil {
			status = rc.answer(n, w, r)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) got() []call {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.calls)
}

// notifications decodes the json bodies of every call.
func (rc *receiver) notifications(t *testing.T) []notify.Notification {
	t.Helper()
	var out []notify.Notification
	for _, c := range rc.got() {
		var n notify.Notification
		if err := json.Unmarshal(c.body, &n); err != nil {
			t.Fatalf("body %q: %v", c.body, err)
		}
		out = append(out, n)
	}
	return out
}

// syncBuffer collects log output written concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// world is a real store, a fake clock, a cursor file and captured logs.
type world struct {
	t     *testing.T
	store notify.Store
	raw   lapse.Store
	clock *fakeclock.Clock
	state string
	logs  *syncBuffer
	reg   *prometheus.Registry

	mu     sync.Mutex
	sleeps []time.Duration
}

var epoch = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func newWorld(t *testing.T, st lapse.Store) *world {
	return &world{t: t, store: st, raw: st, clock: fakeclock.New(epoch), state: filepath.Join(t.TempDir(), "notify-state.json"), logs: &syncBuffer{}}
}

func sqliteWorld(t *testing.T) *world { return newWorld(t, sqltest.OpenSQLite(t)) }

// cfg is the configuration tests start from: every retry sleeps on the
// fake clock, so back-off costs no time and is recorded.
func (w *world) cfg(hooks ...notify.Webhook) notify.Config {
	w.reg = prometheus.NewRegistry()
	return notify.Config{
		Store:         w.store,
		Webhooks:      hooks,
		ExpiryWarning: 15 * time.Minute,
		StateFile:     w.state,
		Clock:         w.clock,
		Logger:        slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:    w.reg,
		RetryBase:     time.Second,
		RetryMax:      time.Minute,
		Sleep: func(ctx context.Context, d time.Duration) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			w.mu.Lock()
			w.sleeps = append(w.sleeps, d)
			w.mu.Unlock()
			w.clock.Advance(d)
			return nil
		},
	}
}

func (w *world) notifier(cfg notify.Config) *notify.Notifier {
	w.t.Helper()
	n, err := notify.New(context.Background(), cfg)
	if err != nil {
		w.t.Fatalf("notify.New: %v", err)
	}
	return n
}

func (w *world) sync(n *notify.Notifier) {
	w.t.Helper()
	if err := n.Sync(context.Background()); err != nil {
		w.t.Fatalf("Sync: %v", err)
	}
}

func (w *world) update(fn func(tx lapse.Tx) error) {
	w.t.Helper()
	if err := w.raw.Update(context.Background(), fn); err != nil {
		w.t.Fatal(err)
	}
}

// request files a pending request and its request.created event.
func (w *world) request(ent, requester string) (*lapse.Request, int64) {
	w.t.Helper()
	now := w.clock.Now()
	r := &lapse.Request{ID: lapse.NewID(lapse.PrefixRequest, now), Requester: lapse.Principal{ID: requester, Kind: lapse.KindHuman},
		Entitlement: ent, Duration: lapse.Duration(time.Hour), State: lapse.RequestPending, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	r.Hash = r.ComputeHash()
	ev := &lapse.Event{Time: now, Type: lapse.EventRequestCreated, ActorID: requester, RequestID: r.ID, Outcome: "pending",
		Data: json.RawMessage(`{"entitlement":"` + ent + `","duration":"1h0m0s","reason":"incident 7"}`)}
	w.update(func(tx lapse.Tx) error {
		if err := tx.InsertRequest(context.Background(), r); err != nil {
			return err
		}
		return tx.AppendEvent(context.Background(), ev)
	})
	return r, ev.Seq
}

// grant stores an active grant of ent lasting d from now, and its
// grant.provisioned event.
func (w *world) grant(ent, principal string, d time.Duration) (*lapse.Grant, int64) {
	w.t.Helper()
	now := w.clock.Now()
	g := &lapse.Grant{ID: lapse.NewID(lapse.PrefixGrant, now), RequestID: lapse.NewID(lapse.PrefixRequest, now),
		Principal: lapse.Principal{ID: principal, Kind: lapse.KindHuman}, Entitlement: ent, Target: strings.Split(ent, "/")[0],
		State: lapse.GrantActive, StartsAt: now, ActivatedAt: now, ExpiresAt: now.Add(d), DueAt: now.Add(d), CreatedAt: now}
	ev := &lapse.Event{Time: now, Type: lapse.EventGrantProvisioned, ActorID: "lapse", Channel: lapse.ChannelEngine,
		RequestID: g.RequestID, GrantID: g.ID, Outcome: "active", Data: json.RawMessage(`{"checkpoints":1}`)}
	w.update(func(tx lapse.Tx) error {
		if err := tx.InsertGrant(context.Background(), g); err != nil {
			return err
		}
		return tx.AppendEvent(context.Background(), ev)
	})
	return g, ev.Seq
}

// event appends ev as it is and returns its sequence.
func (w *world) event(ev *lapse.Event) int64 {
	w.t.Helper()
	if ev.Time.IsZero() {
		ev.Time = w.clock.Now()
	}
	w.update(func(tx lapse.Tx) error { return tx.AppendEvent(context.Background(), ev) })
	return ev.Seq
}

// metric returns the value of a counter or gauge series.
func (w *world) metric(name string, labels map[string]string) float64 {
	w.t.Helper()
	mfs, err := w.reg.Gather()
	if err != nil {
		w.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	w.t.Fatalf("no series %s %v", name, labels)
	return 0
}

func hook(name, url string) notify.Webhook {
	return notify.Webhook{Name: name, URL: lapse.SecretRef{Value: url}, Secret: lapse.SecretRef{Value: testSecret}, AllowPrivate: true}
}

func wantReason(t *testing.T, err error, code, reason string) {
	t.Helper()
	if lapse.ErrorCode(err) != code || lapse.ErrorReason(err) != reason {
		t.Fatalf("error %v: code %q reason %q, want %q %q", err, lapse.ErrorCode(err), lapse.ErrorReason(err), code, reason)
	}
}

// TestSignatureVerifiable: a receiver holding the secret verifies a call
// with Verify, and also by following the documented scheme by hand; the
// body says what happened and the idempotency key is the event's.
func TestSignatureVerifiable(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	n := w.notifier(w.cfg(hook("ops", rc.srv.URL)))
	r, seq := w.request("prod-db/read", "alice")
	w.sync(n)

	calls := rc.got()
	if len(calls) != 1 {
		t.Fatalf("%d calls, want 1", len(calls))
	}
	c := calls[0]
	sig := c.header.Get(notify.SignatureHeader)
	if err := notify.Verify([]byte(testSecret), sig, c.body, w.clock.Now(), 0); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// By hand, as docs/notifications.md describes it.
	var ts, v1 string
	for _, part := range strings.Split(sig, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write([]byte(ts + "." + string(c.body)))
	if want := hex.EncodeToString(m.Sum(nil)); v1 != want {
		t.Errorf("v1 = %s, want HMAC-SHA256(secret, t.body) = %s", v1, want)
	}
	if sec, _ := strconv.ParseInt(ts, 10, 64); sec != w.clock.Now().Unix() {
		t.Errorf("t = %s, want the send time %d", ts, w.clock.Now().Unix())
	}
	if got, want := c.header.Get(notify.IdempotencyHeader), "event-"+strconv.FormatInt(seq, 10); got != want {
		t.Errorf("idempotency key %q, want %q", got, want)
	}
	if got := c.header.Get(notify.EventHeader); got != lapse.EventRequestCreated {
		t.Errorf("event header %q", got)
	}
	if ct := c.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	got := rc.notifications(t)[0]
	if got.ID != "event-"+strconv.FormatInt(seq, 10) || got.Type != lapse.EventRequestCreated || got.Seq != seq || got.RequestID != r.ID ||
		got.Entitlement != "prod-db/read" || got.PrincipalID != "alice" || got.Outcome != "pending" || !got.Time.Equal(w.clock.Now()) {
		t.Errorf("notification = %+v", got)
	}
	if !strings.Contains(got.Text, "alice requested prod-db/read for 1h0m0s") {
		t.Errorf("text %q", got.Text)
	}
	// The request's reason is the requester's words, not the notifier's
	// to broadcast.
	if strings.Contains(string(c.body), "incident 7") {
		t.Errorf("the body carries the request's reason: %s", c.body)
	}
}

// TestVerifyRefuses: tampering, the wrong key, a malformed header and a
// timestamp outside the replay window are refused; a second signature (a
// rotation) and a timestamp inside the window are accepted.
func TestVerifyRefuses(t *testing.T) {
	secret := []byte(testSecret)
	body := []byte(`{"id":"event-1"}`)
	now := epoch
	good := notify.Sign(secret, now, body)
	if err := notify.Verify(secret, good, body, now.Add(4*time.Minute), 0); err != nil {
		t.Errorf("4 minutes old: %v", err)
	}
	other := notify.Sign([]byte("another-secret-0123456789"), now, body)
	_, otherV1, _ := strings.Cut(other, ",")
	if err := notify.Verify(secret, good+","+otherV1, body, now, 0); err != nil {
		t.Errorf("two signatures, one good: %v", err)
	}
	for _, tt := range []struct {
		name   string
		secret []byte
		header string
		body   []byte
		now    time.Time
		reason string
	}{
		{"tampered body", secret, good, []byte(`{"id":"event-2"}`), now, notify.ReasonBadSignature},
		{"wrong secret", []byte("not-the-secret-0123456789"), good, body, now, notify.ReasonBadSignature},
		{"only the other key's signature", secret, other, body, now, notify.ReasonBadSignature},
		{"malformed", secret, "v1=abc", body, now, notify.ReasonBadSignature},
		{"empty", secret, "", body, now, notify.ReasonBadSignature},
		{"replayed after the window", secret, good, body, now.Add(notify.DefaultTolerance + time.Second), notify.ReasonStale},
		{"from the future", secret, good, body, now.Add(-notify.DefaultTolerance - time.Second), notify.ReasonStale},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantReason(t, notify.Verify(tt.secret, tt.header, tt.body, tt.now, 0), lapse.EUNAUTHORIZED, tt.reason)
		})
	}
	// A tighter window is the receiver's choice.
	wantReason(t, notify.Verify(secret, good, body, now.Add(time.Minute), 30*time.Second), lapse.EUNAUTHORIZED, notify.ReasonStale)
}

// TestRetriesWithBackoff: a receiver that fails five times is retried
// until it accepts, with the same idempotency key, a fresh signature per
// attempt, and waits that double up to the cap, jittered into their upper
// half.
func TestRetriesWithBackoff(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n <= 5 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	cfg := w.cfg(hook("ops", rc.srv.URL))
	cfg.RetryBase, cfg.RetryMax = time.Second, 3*time.Second
	n := w.notifier(cfg)
	_, seq := w.request("prod-db/read", "alice")
	w.sync(n)

	calls := rc.got()
	if len(calls) != 6 {
		t.Fatalf("%d calls, want 6", len(calls))
	}
	for i, c := range calls {
		if k := c.header.Get(notify.IdempotencyHeader); k != "event-"+strconv.FormatInt(seq, 10) {
			t.Errorf("attempt %d: key %q", i+1, k)
		}
		if a := c.header.Get(notify.AttemptHeader); a != strconv.Itoa(i+1) {
			t.Errorf("attempt %d: attempt header %q", i+1, a)
		}
	}
	// The last attempt was signed when it was sent, after the waits.
	if err := notify.Verify([]byte(testSecret), calls[5].header.Get(notify.SignatureHeader), calls[5].body, w.clock.Now(), 0); err != nil {
		t.Errorf("last attempt's signature: %v", err)
	}
	caps := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}
	if len(w.sleeps) != len(caps) {
		t.Fatalf("waits %v, want %d", w.sleeps, len(caps))
	}
	for i, d := range w.sleeps {
		if d < caps[i]/2 || d > caps[i] {
			t.Errorf("wait %d = %s, want between %s and %s", i+1, d, caps[i]/2, caps[i])
		}
	}
	if v := w.metric("lapse_notify_attempt_failures_total", map[string]string{"webhook": "ops"}); v != 5 {
		t.Errorf("attempt failures = %v, want 5", v)
	}
	if v := w.metric("lapse_notify_deliveries_total", map[string]string{"webhook": "ops", "outcome": "delivered"}); v != 1 {
		t.Errorf("delivered = %v, want 1", v)
	}
	if v := w.metric("lapse_notify_failing", map[string]string{"webhook": "ops"}); v != 0 {
		t.Errorf("failing = %v after the delivery, want 0", v)
	}
	if !strings.Contains(w.logs.String(), `"msg":"webhook delivery failed; will retry"`) {
		t.Errorf("no warning logged:\n%s", w.logs)
	}
}

// TestGivesUpAndMovesOn: a receiver that never accepts is retried until
// the notification is older than the give-up horizon; then it is counted
// and dropped, and the webhook goes on with the next one.
func TestGivesUpAndMovesOn(t *testing.T) {
	w := sqliteWorld(t)
	var down sync.Mutex
	broken := true
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		down.Lock()
		defer down.Unlock()
		if broken {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	cfg := w.cfg(hook("ops", rc.srv.URL))
	cfg.GiveUpAfter = time.Hour
	n := w.notifier(cfg)
	w.request("prod-db/read", "alice")
	w.sync(n)
	if v := w.metric("lapse_notify_deliveries_total", map[string]string{"webhook": "ops", "outcome": "gave_up"}); v != 1 {
		t.Errorf("gave_up = %v, want 1", v)
	}
	if !strings.Contains(w.logs.String(), "webhook notification dropped after retrying") {
		t.Error("the drop is not logged")
	}
	down.Lock()
	broken = false
	down.Unlock()
	before := len(rc.got())
	_, seq := w.request("prod-db/read", "bob")
	w.sync(n)
	got := rc.notifications(t)[before:]
	if len(got) != 1 || got[0].Seq != seq {
		t.Errorf("after recovery: %+v, want only event %d", got, seq)
	}
}

// TestRedirectNotFollowed: a redirect is a failure, and its target never
// sees the call (nor the signed body).
func TestRedirectNotFollowed(t *testing.T) {
	w := sqliteWorld(t)
	target := newReceiver(t, nil)
	rc := newReceiver(t, func(_ int, rw http.ResponseWriter, _ *http.Request) int {
		rw.Header().Set("Location", target.srv.URL+"/elsewhere")
		return http.StatusTemporaryRedirect
	})
	cfg := w.cfg(hook("ops", rc.srv.URL))
	cfg.GiveUpAfter = time.Minute
	n := w.notifier(cfg)
	wantReason(t, n.Ping(context.Background(), "ops"), lapse.EUNAVAILABLE, notify.ReasonRedirect)

	w.request("prod-db/read", "alice")
	w.sync(n)
	if len(target.got()) != 0 {
		t.Errorf("the redirect was followed: %d calls at its target", len(target.got()))
	}
	if v := w.metric("lapse_notify_attempt_failures_total", map[string]string{"webhook": "ops"}); v < 1 {
		t.Errorf("attempt failures = %v, want the redirect counted", v)
	}
	if v := w.metric("lapse_notify_deliveries_total", map[string]string{"webhook": "ops", "outcome": "delivered"}); v != 0 {
		t.Errorf("delivered = %v, want 0", v)
	}
	if !strings.Contains(w.logs.String(), `"reason":"redirect"`) {
		t.Errorf("the log does not say why:\n%s", w.logs)
	}
}

// TestPrivateAddressesRefused: a loopback receiver is refused unless the
// webhook allows private addresses: an IP literal when the notifier
// starts, and a hostname that resolves to 127.0.0.1 at the moment it is
// dialled (so a name whose answer changes, DNS rebinding, cannot get
// through). The receiver never sees the call.
func TestPrivateAddressesRefused(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	_, port, _ := strings.Cut(strings.TrimPrefix(rc.srv.URL, "http://"), ":")

	// An IP literal is refused before anything is sent.
	cfg := w.cfg(notify.Webhook{Name: "ops", URL: lapse.SecretRef{Value: "https://127.0.0.1:" + port}, Secret: lapse.SecretRef{Value: testSecret}})
	_, err := notify.New(context.Background(), cfg)
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "webhooks[0].url" {
		t.Fatalf("loopback literal: %v, want invalid webhooks[0].url", err)
	}

	// A name that resolves to loopback passes every check that looks at
	// the name, and is refused when the address is dialled.
	dns := startFakeDNS(t, netip.MustParseAddr("127.0.0.1"))
	for _, allow := range []bool{false, true} {
		scheme := "https"
		if allow {
			scheme = "http"
		}
		wh := notify.Webhook{Name: "ops", URL: lapse.SecretRef{Value: scheme + "://hooks.rebind.test:" + port + "/in"}, Secret: lapse.SecretRef{Value: testSecret}, AllowPrivate: allow}
		cfg := w.cfg(wh)
		cfg.Resolver = dns.resolver()
		n := w.notifier(cfg)
		err := n.Ping(context.Background(), "ops")
		if !allow {
			wantReason(t, err, lapse.EFORBIDDEN, notify.ReasonAddressRefused)
			if !strings.Contains(lapse.ErrorMessage(err), "127.0.0.1 is loopback") {
				t.Errorf("message %q does not name the address", lapse.ErrorMessage(err))
			}
			if len(rc.got()) != 0 {
				t.Fatalf("the receiver got %d calls", len(rc.got()))
			}
		} else if err != nil {
			t.Fatalf("allow_private: %v", err)
		}
	}
	if len(rc.got()) != 1 {
		t.Errorf("the receiver got %d calls, want 1 (with allow_private)", len(rc.got()))
	}
}

// TestCheckURL: the address classes and URL shapes refused, with and
// without allow_private.
func TestCheckURL(t *testing.T) {
	for _, tt := range []struct {
		url                string
		strict, permissive bool // accepted without / with allow_private
	}{
		{"https://hooks.example.com/x", true, true},
		{"https://93.184.215.14/x", true, true},
		{"https://[2606:4700::1111]/x", true, true},
		{"http://hooks.example.com/x", false, true},
		{"https://127.0.0.1/x", false, true},
		{"https://[::1]/x", false, true},
		{"https://localhost:8443/x", false, true},
		{"https://10.1.2.3/x", false, true},
		{"https://172.16.0.1/x", false, true},
		{"https://192.168.1.1/x", false, true},
		{"https://100.64.0.1/x", false, true},
		{"https://169.254.169.254/latest", false, true},
		{"https://[fe80::1]/x", false, true},
		{"https://[fd00::1]/x", false, true},
		{"https://[::ffff:127.0.0.1]/x", false, true},
		{"https://[64:ff9b::7f00:1]/x", false, true},
		{"https://0.0.0.0/x", false, false},
		{"https://[::]/x", false, false},
		{"https://224.0.0.1/x", false, false},
		{"https://[ff02::1]/x", false, false},
		{"https://255.255.255.255/x", false, false},
		{"https://user:pass@hooks.example.com/x", false, false},
		{"ftp://hooks.example.com/x", false, false},
		{"https:///x", false, false},
		{"", false, false},
	} {
		for _, allow := range []bool{false, true} {
			want := tt.strict
			if allow {
				want = tt.permissive
			}
			err := notify.CheckURL(tt.url, allow)
			if (err == nil) != want {
				t.Errorf("CheckURL(%q, allow_private=%v) = %v, want accepted=%v", tt.url, allow, err, want)
			}
			if err != nil && (lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "url") {
				t.Errorf("CheckURL(%q): %v, want invalid url", tt.url, err)
			}
		}
	}
	// The message never repeats the URL: its path may be a credential.
	if err := notify.CheckURL("http://hooks.example.com/services/T0/B0/SECRETPATH", false); strings.Contains(err.Error(), "SECRETPATH") {
		t.Errorf("the error repeats the URL: %v", err)
	}
}

// TestRestartResumesFromCursor: history before the first start is not
// replayed; events while the notifier is down are sent after it restarts;
// nothing delivered is delivered again; a notification cut off by a
// shutdown is sent by the next process. On SQLite and on PostgreSQL.
func TestRestartResumesFromCursor(t *testing.T) {
	for _, tt := range []struct {
		name string
		open func(t *testing.T) lapse.Store
	}{
		{"sqlite", func(t *testing.T) lapse.Store { return sqltest.OpenSQLite(t) }},
		{"postgres", func(t *testing.T) lapse.Store { return sqltest.OpenPostgres(t) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, tt.open(t))
			var mu sync.Mutex
			failing := false
			accepted := map[int64]int{}
			rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
				mu.Lock()
				defer mu.Unlock()
				if failing {
					return http.StatusBadGateway
				}
				seq, _ := strconv.ParseInt(strings.TrimPrefix(r.Header.Get(notify.IdempotencyHeader), "event-"), 10, 64)
				accepted[seq]++
				return http.StatusOK
			})
			var want []int64
			w.request("prod-db/read", "old-1")
			w.request("prod-db/read", "old-2")

			n1 := w.notifier(w.cfg(hook("ops", rc.srv.URL)))
			for range 3 {
				_, s := w.request("prod-db/read", "alice")
				want = append(want, s)
			}
			w.sync(n1)
			w.sync(n1) // nothing new: nothing sent

			// Down: events pile up in the store.
			for range 2 {
				_, s := w.request("prod-db/read", "bob")
				want = append(want, s)
			}
			n2 := w.notifier(w.cfg(hook("ops", rc.srv.URL)))
			w.sync(n2)

			// A shutdown in the middle of retrying: the event stays.
			_, s := w.request("prod-db/read", "carol")
			want = append(want, s)
			mu.Lock()
			failing = true
			mu.Unlock()
			ctx, cancel := context.WithCancel(context.Background())
			cfg := w.cfg(hook("ops", rc.srv.URL))
			cfg.Sleep = func(context.Context, time.Duration) error { cancel(); return context.Canceled }
			n3 := w.notifier(cfg)
			if err := n3.Sync(ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("Sync cut off: %v", err)
			}
			mu.Lock()
			failing = false
			mu.Unlock()
			n4 := w.notifier(w.cfg(hook("ops", rc.srv.URL)))
			w.sync(n4)

			mu.Lock()
			defer mu.Unlock()
			for _, s := range want {
				if accepted[s] != 1 {
					t.Errorf("event %d accepted %d times, want once", s, accepted[s])
				}
			}
			if len(accepted) != len(want) {
				t.Errorf("accepted %v, want exactly %v (history before the first start is not replayed)", accepted, want)
			}
		})
	}
}

// TestDamagedStateFile: a cursor file that cannot be read is set aside,
// logged, and the webhooks start at the end of the log rather than
// replaying it.
func TestDamagedStateFile(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	w.request("prod-db/read", "old")
	if err := os.WriteFile(w.state, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := w.notifier(w.cfg(hook("ops", rc.srv.URL)))
	w.sync(n)
	if len(rc.got()) != 0 {
		t.Errorf("history replayed: %d calls", len(rc.got()))
	}
	aside, _ := filepath.Glob(w.state + ".damaged-*")
	if len(aside) != 1 {
		t.Errorf("set aside: %v", aside)
	}
	if !strings.Contains(w.logs.String(), `"level":"ERROR"`) {
		t.Error("not logged as an error")
	}
	_, seq := w.request("prod-db/read", "new")
	w.sync(n)
	if got := rc.notifications(t); len(got) != 1 || got[0].Seq != seq {
		t.Errorf("after the reset: %+v", got)
	}
}

// TestExpiryWarningOnce: an active grant is warned about once when its
// expiry comes within the window, not again on the next pass nor after a
// restart, and again when an extension moves its expiry. Grants that last
// no longer than the window and grants outside a webhook's filter are not
// warned about.
func TestExpiryWarningOnce(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	wh := hook("ops", rc.srv.URL)
	wh.Events = []string{notify.KindGrantExpiring}
	wh.Entitlements = []string{"prod-db/*"}
	n := w.notifier(w.cfg(wh))
	g, _ := w.grant("prod-db/read", "alice", time.Hour)
	w.grant("prod-db/read", "bob", 10*time.Minute) // shorter than the window
	w.grant("cache/flush", "carol", time.Hour)     // not this webhook's
	w.sync(n)
	if len(rc.got()) != 0 {
		t.Fatalf("warned an hour ahead: %+v", rc.notifications(t))
	}

	w.clock.Advance(50 * time.Minute)
	w.sync(n)
	w.sync(n)
	got := rc.notifications(t)
	if len(got) != 1 {
		t.Fatalf("%d warnings, want 1: %+v", len(got), got)
	}
	x := got[0]
	if x.Type != notify.KindGrantExpiring || x.GrantID != g.ID || x.Entitlement != "prod-db/read" || x.PrincipalID != "alice" ||
		!x.ExpiresAt.Equal(g.ExpiresAt) || !strings.Contains(x.Text, "expires in 10m0s") {
		t.Errorf("warning = %+v", x)
	}
	if k := rc.got()[0].header.Get(notify.IdempotencyHeader); k != x.ID || !strings.HasPrefix(k, "expiring-"+g.ID+"-") {
		t.Errorf("key %q, id %q", k, x.ID)
	}

	// A restart remembers.
	n = w.notifier(w.cfg(wh))
	w.sync(n)
	if len(rc.got()) != 1 {
		t.Fatalf("warned again after a restart: %+v", rc.notifications(t))
	}

	// An extension moves the expiry: one new warning when it nears.
	w.update(func(tx lapse.Tx) error {
		cur, err := tx.GetGrant(context.Background(), g.ID)
		if err != nil {
			return err
		}
		cur.ExpiresAt = cur.ExpiresAt.Add(30 * time.Minute)
		cur.DueAt = cur.ExpiresAt
		return tx.UpdateGrant(context.Background(), cur)
	})
	w.sync(n)
	if len(rc.got()) != 1 {
		t.Fatalf("warned 40 minutes ahead")
	}
	w.clock.Advance(30 * time.Minute)
	w.sync(n)
	w.sync(n)
	if got := rc.notifications(t); len(got) != 2 || !got[1].ExpiresAt.Equal(g.ExpiresAt.Add(30*time.Minute)) || got[1].ID == got[0].ID {
		t.Fatalf("after the extension: %+v", got)
	}

	// Once the expiry has passed, the marker is pruned.
	w.clock.Advance(time.Hour)
	w.sync(n)
	b, err := os.ReadFile(w.state)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), g.ID) {
		t.Errorf("the cursor file still remembers the ended grant:\n%s", b)
	}
}

// TestSlackFormat: the slack format is {"text": ...} with optional
// blocks; names cannot inject Slack markup.
func TestSlackFormat(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	wh := notify.Webhook{Name: "slack", URL: lapse.SecretRef{Value: rc.srv.URL + "/services/T0/B0/X"}, Format: notify.FormatSlack, AllowPrivate: true}
	n := w.notifier(w.cfg(wh))
	w.request("prod-db/read", "<!channel>")
	w.sync(n)
	calls := rc.got()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(calls[0].body, &msg); err != nil {
		t.Fatal(err)
	}
	for k := range msg {
		if k != "text" && k != "blocks" {
			t.Errorf("unexpected key %q in %s", k, calls[0].body)
		}
	}
	var text string
	if err := json.Unmarshal(msg["text"], &text); err != nil {
		t.Fatalf("text: %v", err)
	}
	if !strings.Contains(text, "&lt;!channel&gt; requested prod-db/read") || strings.Contains(string(calls[0].body), "<!channel>") {
		t.Errorf("text %q: want the markup escaped", text)
	}
	var blocks []struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(msg["blocks"], &blocks); err != nil || len(blocks) == 0 || blocks[0].Type != "section" {
		t.Errorf("blocks %s: %v", msg["blocks"], err)
	}
	if calls[0].header.Get(notify.SignatureHeader) != "" {
		t.Error("signed without a secret")
	}
}

// TestFiltersAndBreakGlass: a webhook gets the kinds and entitlements it
// asks for, and every break-glass request on its entitlements whatever its
// kinds say, with every skipped approver named.
func TestFiltersAndBreakGlass(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, nil)
	wh := hook("db-team", rc.srv.URL)
	wh.Events = []string{notify.KindGrantStarted}
	wh.Entitlements = []string{"prod-db/*"}
	n := w.notifier(w.cfg(wh))

	w.request("prod-db/read", "alice")                        // not a kind it takes
	g, started := w.grant("prod-db/read", "alice", time.Hour) // yes
	w.grant("cache/flush", "alice", time.Hour)                // not its entitlement
	bg, _ := w.request("prod-db/admin", "dana")
	review := w.clock.Now().Add(24 * time.Hour)
	breakGlass := w.event(&lapse.Event{Type: lapse.EventRequestBreakGlass, ActorID: "dana", RequestID: bg.ID, Outcome: "approved",
		Data: json.RawMessage(`{"skipped_approvers":["bob","group:dba-leads"],"review_due":"` + review.Format(time.RFC3339) + `","reason":"prod down"}`)})
	other, _ := w.request("cache/flush", "erin")
	w.event(&lapse.Event{Type: lapse.EventRequestBreakGlass, ActorID: "erin", RequestID: other.ID, Outcome: "approved",
		Data: json.RawMessage(`{"skipped_approvers":["frank"]}`)})
	w.event(&lapse.Event{Type: lapse.EventGrantVerifyFailed, GrantID: g.ID}) // never notified
	w.sync(n)

	got := rc.notifications(t)
	if len(got) != 2 || got[0].Seq != started || got[1].Seq != breakGlass {
		t.Fatalf("got %+v, want events %d and %d", got, started, breakGlass)
	}
	if got[0].Type != lapse.EventGrantProvisioned || got[0].GrantID != g.ID || !got[0].ExpiresAt.Equal(g.ExpiresAt) || got[0].PrincipalID != "alice" {
		t.Errorf("grant start = %+v", got[0])
	}
	b := got[1]
	if b.Type != lapse.EventRequestBreakGlass || b.PrincipalID != "dana" || b.Entitlement != "prod-db/admin" ||
		!slices.Equal(b.SkippedApprovers, []string{"bob", "group:dba-leads"}) || !b.ReviewDue.Equal(review) {
		t.Errorf("break-glass = %+v", b)
	}
	for _, want := range []string{"BREAK-GLASS", "dana", "bob, group:dba-leads", "Post-review due"} {
		if !strings.Contains(b.Text, want) {
			t.Errorf("text %q lacks %q", b.Text, want)
		}
	}
}

// TestSecretNeverLeaks: neither the secret nor the URL's path (a
// credential for some receivers) appears in logs, errors or bodies, even
// while calls fail; errors about a secret name its source only.
func TestSecretNeverLeaks(t *testing.T) {
	w := sqliteWorld(t)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	const pathToken = "T0PSECRETPATHTOKEN"
	n := w.notifier(w.cfg(hook("ops", rc.srv.URL+"/hooks/"+pathToken)))
	w.request("prod-db/read", "alice")
	w.grant("prod-db/read", "alice", time.Hour)
	w.sync(n)
	var errs []string
	if err := n.Ping(context.Background(), "ops"); err != nil {
		errs = append(errs, err.Error())
	}
	rc.srv.Close() // now every call fails at the network
	if err := n.Ping(context.Background(), "ops"); err != nil {
		errs = append(errs, err.Error())
	} else {
		t.Error("a call to a closed server succeeded")
	}
	missing := hook("ops", "https://hooks.example.com/x")
	missing.Secret = lapse.SecretRef{File: filepath.Join(t.TempDir(), "missing-secret-file")}
	if _, err := notify.New(context.Background(), w.cfg(missing)); lapse.ErrorField(err) != "webhooks[0].secret" || !strings.Contains(err.Error(), "missing-secret-file") {
		t.Errorf("missing secret file: %v, want the file named", err)
	}
	short := hook("ops", "https://hooks.example.com/x")
	short.Secret = lapse.SecretRef{Value: "short-secret"}
	if _, err := notify.New(context.Background(), w.cfg(short)); lapse.ErrorField(err) != "webhooks[0].secret" || strings.Contains(err.Error(), "short-secret") {
		t.Errorf("short secret: %v", err)
	} else {
		errs = append(errs, err.Error())
	}

	logs := w.logs.String()
	if !strings.Contains(logs, "will retry") {
		t.Fatalf("no failure logged:\n%s", logs)
	}
	var bodies strings.Builder
	for _, c := range rc.got() {
		bodies.Write(c.body)
		for k, v := range c.header {
			if k != notify.SignatureHeader {
				bodies.WriteString(k + ": " + strings.Join(v, ",") + "\n")
			}
		}
	}
	for what, text := range map[string]string{"logs": logs, "errors": strings.Join(errs, "\n"), "bodies and headers": bodies.String()} {
		for _, secret := range []string{testSecret, pathToken} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain %q:\n%s", what, secret, text)
			}
		}
	}
}

// TestSlowReceiverBlocksNobody: while one receiver hangs (each call ends
// at the timeout) another webhook's notifications go out, and Run stops
// when asked.
func TestSlowReceiverBlocksNobody(t *testing.T) {
	w := sqliteWorld(t)
	release := make(chan struct{})
	hung := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return http.StatusOK
	})
	defer close(release) // before the server's Close waits for its handlers
	fine := newReceiver(t, nil)
	cfg := w.cfg(hook("hung", hung.srv.URL), hook("fine", fine.srv.URL))
	cfg.Timeout = 50 * time.Millisecond
	cfg.PollInterval = 5 * time.Millisecond
	cfg.Sleep = func(ctx context.Context, d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
			return nil
		}
	}
	n := w.notifier(cfg)
	_, seq := w.request("prod-db/read", "alice")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()

	deadline := time.After(time.Minute) // a guard against a hang, not a performance bound
	for len(fine.got()) == 0 || w.metric("lapse_notify_attempt_failures_total", map[string]string{"webhook": "hung"}) == 0 {
		select {
		case <-deadline:
			t.Fatalf("fine got %d calls; hung failed %v times", len(fine.got()), w.metric("lapse_notify_attempt_failures_total", map[string]string{"webhook": "hung"}))
		case <-time.After(5 * time.Millisecond):
		}
	}
	if got := fine.notifications(t); got[0].Seq != seq {
		t.Errorf("fine got %+v", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not stop")
	}
	if !strings.Contains(w.logs.String(), "did not answer within") {
		t.Errorf("the timeout is not logged:\n%s", w.logs)
	}
}

// TestNewRejects: webhooks that cannot work are refused with the field at
// fault.
func TestNewRejects(t *testing.T) {
	w := sqliteWorld(t)
	base := hook("ops", "https://hooks.example.com/x")
	for _, tt := range []struct {
		name  string
		edit  func(*notify.Webhook)
		field string
	}{
		{"bad name", func(h *notify.Webhook) { h.Name = "Ops Team" }, "webhooks[0].name"},
		{"bad format", func(h *notify.Webhook) { h.Format = "xml" }, "webhooks[0].format"},
		{"unknown kind", func(h *notify.Webhook) { h.Events = []string{"grant.created"} }, "webhooks[0].events[0]"},
		{"bad pattern", func(h *notify.Webhook) { h.Entitlements = []string{"prod-db/["} }, "webhooks[0].entitlements[0]"},
		{"no secret for json", func(h *notify.Webhook) { h.Secret = lapse.SecretRef{} }, "webhooks[0].secret"},
		{"unset env URL", func(h *notify.Webhook) { h.URL = lapse.SecretRef{Env: "LAPSE_TEST_SURELY_UNSET_WEBHOOK_URL"} }, "webhooks[0].url"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := base
			tt.edit(&h)
			_, err := notify.New(context.Background(), w.cfg(h))
			if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != tt.field {
				t.Errorf("%v, want invalid %s", err, tt.field)
			}
		})
	}
	_, err := notify.New(context.Background(), w.cfg(base, base))
	if lapse.ErrorField(err) != "webhooks[1].name" {
		t.Errorf("duplicate name: %v", err)
	}
	// A URL from the environment is checked like an inline one.
	t.Setenv("LAPSE_TEST_WEBHOOK_URL", "http://hooks.example.com/x")
	h := base
	h.URL = lapse.SecretRef{Env: "LAPSE_TEST_WEBHOOK_URL"}
	h.AllowPrivate = false
	if _, err := notify.New(context.Background(), w.cfg(h)); lapse.ErrorField(err) != "webhooks[0].url" {
		t.Errorf("http URL from the environment: %v", err)
	}
}
