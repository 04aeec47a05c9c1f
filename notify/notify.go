// Package notify sends webhooks about what the broker does: new requests,
// decisions, grants that start, grants about to expire, verified
// revocations, and break-glass requests (to every webhook, naming every
// approver the request skipped).
//
// The notifier is a consumer of the audit log, not a part of the broker:
// each webhook tails the store's events after its own durable cursor (a
// small JSON file, written atomically), so the broker never waits for a
// receiver, a receiver that is down delays only its own webhook, and a
// restart resumes where it stopped. Delivery is at least once, with the
// event's sequence as idempotency key; calls are signed with HMAC-SHA256
// (Sign, Verify), retried with capped, jittered exponential back-off, never
// follow a redirect, and never connect to a private, loopback, link-local,
// unspecified or multicast address unless the webhook allows private
// addresses: the check runs on the address being dialled, after DNS, so
// DNS rebinding cannot get around it. docs/notifications.md is the
// receiver's guide.
package notify

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
)

// Reasons refine the codes of delivery and verification errors.
const (
	// ReasonAddressRefused: the webhook's address (dialled, after DNS) is
	// one it may not reach (EFORBIDDEN).
	ReasonAddressRefused = "address_refused"
	// ReasonRedirect: the receiver answered with a redirect, which is not
	// followed and counts as a failure (EUNAVAILABLE).
	ReasonRedirect = "redirect"
	// ReasonStatus: the receiver answered with a status other than 2xx
	// (EUNAVAILABLE).
	ReasonStatus = "bad_status"
	// ReasonBadSignature: Verify found no matching signature
	// (EUNAUTHORIZED).
	ReasonBadSignature = "bad_signature"
	// ReasonStale: Verify found the signature's timestamp outside the
	// replay window (EUNAUTHORIZED).
	ReasonStale = "stale_timestamp"
)

// Defaults for the zero values of Config.
const (
	DefaultPollInterval = time.Second
	DefaultTimeout      = 10 * time.Second
	DefaultRetryBase    = time.Second
	DefaultRetryMax     = 5 * time.Minute
	DefaultGiveUpAfter  = 24 * time.Hour
	// MinSecretLength is the shortest webhook secret accepted, in bytes.
	MinSecretLength = 16
	// MaxNameLength bounds webhook names, which label metrics.
	MaxNameLength = 64
	batchSize     = 100
	storeTimeout  = 30 * time.Second
	// maxScanInterval bounds how long an expiry warning can be late.
	maxScanInterval = time.Minute
)

// NameRE is what a webhook's name looks like.
var NameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Store is what the notifier reads; *sqlstore.Store has it.
type Store interface {
	ListEvents(ctx context.Context, f lapse.EventFilter) ([]*lapse.Event, error)
	ListGrants(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error)
	GetGrant(ctx context.Context, id string) (*lapse.Grant, error)
	GetRequest(ctx context.Context, id string) (*lapse.Request, error)
}

// Webhook is one receiver.
type Webhook struct {
	// Name identifies the webhook in logs, metrics and the cursor file.
	Name string
	// URL is where notifications are POSTed. It is a secret reference
	// because some URLs are credentials (a Slack incoming webhook's); it
	// is never logged, only its host.
	URL lapse.SecretRef
	// Secret keys the HMAC-SHA256 signature of every call. Required for
	// the json format; optional for slack, whose URL is its credential.
	Secret lapse.SecretRef
	// Format is FormatJSON (the default) or FormatSlack.
	Format string
	// Events are the kinds sent (Kinds); empty means all. Break-glass is
	// sent whatever it says: its broadcast to the skipped approvers is
	// part of what makes break-glass acceptable.
	Events []string
	// Entitlements, when set, limits notifications to entitlements that
	// match one of these path.Match patterns ("prod-db/*").
	Entitlements []string
	// AllowPrivate allows private, loopback and link-local addresses (and
	// plain http), for receivers on an internal network.
	AllowPrivate bool
}

// Config configures a Notifier. Zero values take the defaults.
type Config struct {
	Store    Store
	Webhooks []Webhook
	// ExpiryWarning is how long before a grant's expiry it is warned
	// about; zero sends no warnings. Grants that last no longer than it
	// are not warned about: the start notification already said when
	// they end.
	ExpiryWarning time.Duration
	// StateFile is the cursor file (required).
	StateFile string
	Clock     lapse.Clock  // nil: the system clock
	Logger    *slog.Logger // nil: discard
	// Registerer receives the notifier's metrics; nil registers none.
	Registerer prometheus.Registerer
	// PollInterval is how often each webhook looks for new events.
	PollInterval time.Duration
	// Timeout bounds each call to a receiver.
	Timeout time.Duration
	// RetryBase and RetryMax shape the back-off: attempt n waits
	// min(RetryMax, RetryBase·2^(n-1)), jittered into its upper half.
	RetryBase, RetryMax time.Duration
	// GiveUpAfter is how old a notification may grow while it is retried
	// before it is dropped (counted and logged), so a receiver that was
	// gone for days is not flooded with stale news and its webhook moves
	// on. An expiry warning is dropped once the grant has expired.
	GiveUpAfter time.Duration
	// Sleep waits between attempts; nil waits on a timer. Tests inject
	// one that advances a fake clock.
	Sleep func(ctx context.Context, d time.Duration) error
	// Resolver resolves receivers' names; nil is the system's.
	Resolver *net.Resolver
	// RootCAs verify receivers' certificates; nil is the system's pool.
	RootCAs *x509.CertPool
}

// Notifier delivers notifications to webhooks. Create it with New, then
// call Run (or Sync).
type Notifier struct {
	cfg     Config
	log     *slog.Logger
	hooks   []*hook
	byName  map[string]*hook
	state   *state
	metrics *metrics
}

// hook is one webhook with what it needs at run time.
type hook struct {
	n            *Notifier
	name         string
	url          string
	host         string
	format       string
	secret       []byte
	events       map[string]bool // nil: every kind
	entitlements []string
	client       *http.Client
	log          *slog.Logger

	mu          sync.Mutex // one pass at a time
	lastScan    time.Time
	scanWarned  bool // logged that the active grants were truncated
	stateFailed bool // logged that the cursor file cannot be written
}

// New checks the webhooks, resolves their URLs and secrets, and reads the
// cursor file. A webhook new to the file starts at the current end of the
// audit log: turning notifications on does not replay history.
//
// Returns EINVALID with Field "webhooks[i].<field>" for a bad webhook
// (config.Config.NotifyError positions it in the file).
func New(ctx context.Context, cfg Config) (*Notifier, error) {
	if cfg.Store == nil {
		return nil, lapse.Errorf(lapse.EINVALID, "notify: no store")
	}
	if cfg.StateFile == "" {
		return nil, lapse.Errorf(lapse.EINVALID, "notify: no state file")
	}
	if cfg.Clock == nil {
		cfg.Clock = lapse.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.PollInterval, DefaultPollInterval)
	def(&cfg.Timeout, DefaultTimeout)
	def(&cfg.RetryBase, DefaultRetryBase)
	def(&cfg.RetryMax, DefaultRetryMax)
	def(&cfg.GiveUpAfter, DefaultGiveUpAfter)
	cfg.RetryMax = max(cfg.RetryMax, cfg.RetryBase)
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	if cfg.ExpiryWarning < 0 {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expiry_warning", "must not be negative")
	}
	n := &Notifier{cfg: cfg, log: cfg.Logger.With("component", "notify"), byName: map[string]*hook{}}
	names := map[string]bool{}
	for i := range cfg.Webhooks {
		h, err := n.newHook(i, &cfg.Webhooks[i])
		if err != nil {
			return nil, err
		}
		if names[h.name] {
			return nil, lapse.FieldErrorf(lapse.EINVALID, fmt.Sprintf("webhooks[%d].name", i), "webhook %q is listed twice", h.name)
		}
		names[h.name] = true
		n.hooks = append(n.hooks, h)
		n.byName[h.name] = h
	}
	var err error
	hookNames := make([]string, len(n.hooks))
	for i, h := range n.hooks {
		hookNames[i] = h.name
	}
	if n.metrics, err = newMetrics(cfg.Registerer, hookNames); err != nil {
		return nil, fmt.Errorf("notify: register metrics: %w", err)
	}
	st, aside, err := loadState(cfg.StateFile, cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	if aside != "" {
		n.log.Error("the notification cursor file could not be read; it was set aside and every webhook starts at the end of the audit log (notifications since the last good write are not sent)",
			"file", cfg.StateFile, "moved_to", aside)
	}
	n.state = st
	st.keepOnly(names)
	var head int64
	headKnown := false
	for _, h := range n.hooks {
		if _, ok := st.hook(h.name); ok {
			continue
		}
		if !headKnown {
			if head, err = lastSeq(ctx, cfg.Store); err != nil {
				return nil, fmt.Errorf("notify: find the end of the audit log: %w", err)
			}
			headKnown = true
		}
		st.setCursor(h.name, head)
		h.log.Info("webhook starts at the end of the audit log", "after_seq", head)
	}
	if err := st.save(); err != nil {
		return nil, err
	}
	for _, h := range n.hooks {
		n.metrics.cursor.WithLabelValues(h.name).Set(float64(st.cursor(h.name)))
	}
	return n, nil
}

func (n *Notifier) newHook(i int, w *Webhook) (*hook, error) {
	field := func(f string) string { return fmt.Sprintf("webhooks[%d].%s", i, f) }
	bad := func(f, format string, args ...any) error {
		return lapse.FieldErrorf(lapse.EINVALID, field(f), format, args...)
	}
	if len(w.Name) > MaxNameLength || !NameRE.MatchString(w.Name) {
		return nil, bad("name", "webhook names are lowercase letters, digits, - and _ (at most %d)", MaxNameLength)
	}
	h := &hook{n: n, name: w.Name, format: w.Format, log: n.log.With("webhook", w.Name)}
	switch h.format {
	case "":
		h.format = FormatJSON
	case FormatJSON, FormatSlack:
	default:
		return nil, bad("format", "must be json or slack")
	}
	u, err := w.URL.Resolve()
	if err != nil {
		return nil, bad("url", "%v", err)
	}
	if err := CheckURL(u, w.AllowPrivate); err != nil {
		return nil, bad("url", "%s", lapse.ErrorMessage(err))
	}
	pu, _ := url.Parse(u) // CheckURL parsed it
	h.url, h.host = u, pu.Host
	h.log = h.log.With("host", h.host)
	if w.Secret.IsZero() {
		if h.format == FormatJSON {
			return nil, bad("secret", "required: the key receivers verify signatures with (at least %d bytes)", MinSecretLength)
		}
	} else {
		s, err := w.Secret.Resolve()
		if err != nil {
			return nil, bad("secret", "%v", err)
		}
		if len(s) < MinSecretLength {
			return nil, bad("secret", "%s is shorter than %d bytes", w.Secret, MinSecretLength)
		}
		h.secret = []byte(s)
	}
	for j, e := range w.Events {
		if !slices.Contains(Kinds, e) {
			return nil, bad(fmt.Sprintf("events[%d]", j), "unknown kind %q", e)
		}
		if h.events == nil {
			h.events = map[string]bool{}
		}
		h.events[e] = true
	}
	for j, p := range w.Entitlements {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, bad(fmt.Sprintf("entitlements[%d]", j), "not an entitlement name or pattern")
		}
	}
	h.entitlements = w.Entitlements
	h.client = newClient(w.AllowPrivate, n.cfg.Timeout, n.cfg.Resolver, n.cfg.RootCAs)
	return h, nil
}

// wants reports whether the webhook takes notifications of kind.
func (h *hook) wants(kind string) bool {
	return h.events == nil || h.events[kind] || kind == KindBreakGlass
}

// matches reports whether the webhook takes notifications about ent.
func (h *hook) matches(ent string) bool {
	if len(h.entitlements) == 0 {
		return true
	}
	for _, p := range h.entitlements {
		if ok, _ := path.Match(p, ent); ok {
			return true
		}
	}
	return false
}

// Run delivers until ctx ends, each webhook on its own so that a slow or
// failing receiver delays nobody else. It returns nil when ctx ends; what
// was in flight is sent again after a restart.
func (n *Notifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, h := range n.hooks {
		wg.Go(func() { h.loop(ctx) })
	}
	wg.Wait()
	return nil
}

func (h *hook) loop(ctx context.Context) {
	for {
		if err := h.pass(ctx, false); err != nil && ctx.Err() == nil {
			h.log.Warn("notification pass failed; will retry", "err", err)
		}
		t := time.NewTimer(h.n.cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Sync makes one pass for every webhook in turn: every event up to the
// current end of the log, then the expiry warnings. It returns when all
// are delivered or given up on, or the first error (a store error, or ctx
// ending). It is for tests and tools; a server calls Run.
func (n *Notifier) Sync(ctx context.Context) error {
	for _, h := range n.hooks {
		if err := h.pass(ctx, true); err != nil {
			return fmt.Errorf("webhook %s: %w", h.name, err)
		}
	}
	return nil
}

// Ping sends one test notification to the named webhook, once, without
// retrying, and returns what went wrong. Returns ENOTFOUND for an unknown
// webhook, and the delivery error otherwise (EFORBIDDEN with reason
// ReasonAddressRefused, EUNAVAILABLE with ReasonRedirect or ReasonStatus, or
// EUNAVAILABLE for a network failure).
func (n *Notifier) Ping(ctx context.Context, webhook string) error {
	h, ok := n.byName[webhook]
	if !ok {
		return lapse.Errorf(lapse.ENOTFOUND, "no webhook named %q", webhook)
	}
	now := n.cfg.Clock.Now()
	return h.send(ctx, &Notification{
		ID: "test-" + strconv.FormatInt(now.UnixNano(), 10), Type: KindTest, Time: now,
		Text: "Test notification from Lapse to webhook " + h.name,
	}, 1)
}

// pass delivers what is due: the events after the cursor, then the expiry
// warnings if the scan is due (always when force).
func (h *hook) pass(ctx context.Context, force bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.n
	for {
		after := n.state.cursor(h.name)
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		evs, err := n.cfg.Store.ListEvents(sctx, lapse.EventFilter{AfterSeq: after, Limit: batchSize})
		cancel()
		if err != nil {
			return fmt.Errorf("list events after %d: %w", after, err)
		}
		moved := false
		for _, ev := range evs {
			sent, err := h.handle(ctx, ev)
			if err != nil {
				h.save(moved)
				return err
			}
			n.state.setCursor(h.name, ev.Seq)
			n.metrics.cursor.WithLabelValues(h.name).Set(float64(ev.Seq))
			moved = true
			if sent {
				// At least once: the cursor moves past a delivered
				// notification as soon as it can, so a crash repeats
				// at most the one in flight.
				h.save(true)
				moved = false
			}
		}
		h.save(moved)
		if len(evs) < batchSize {
			break
		}
	}
	if n.cfg.ExpiryWarning <= 0 {
		return nil
	}
	now := n.cfg.Clock.Now()
	if !force && !h.lastScan.IsZero() && now.Sub(h.lastScan) < min(n.cfg.ExpiryWarning/4, maxScanInterval) {
		return nil
	}
	if err := h.scanExpiring(ctx, now); err != nil {
		return err
	}
	h.lastScan = now
	return nil
}

// save writes the cursor file if something changed. A failed write is
// logged and counted, not returned: delivery goes on, and the next write
// catches up.
func (h *hook) save(changed bool) {
	if !changed {
		return
	}
	if err := h.n.state.save(); err != nil {
		h.n.metrics.stateWrites.Inc()
		if !h.stateFailed {
			h.log.Error("cannot write the notification cursor file; a restart may send some notifications again", "err", err)
		}
		h.stateFailed = true
		return
	}
	h.stateFailed = false
}

// handle delivers the notification of ev if the webhook takes it, and
// reports whether it sent one. An error leaves the event to the next pass.
func (h *hook) handle(ctx context.Context, ev *lapse.Event) (bool, error) {
	if !relevant(ev.Type) || !h.wants(ev.Type) {
		return false, nil
	}
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	n, err := eventNotification(sctx, h.n.cfg.Store, ev)
	cancel()
	if err != nil {
		return false, err
	}
	if !h.matches(n.Entitlement) {
		return false, nil
	}
	if err := h.deliver(ctx, n); err != nil {
		return false, err
	}
	return true, nil
}

// scanExpiring warns, once per grant and expiry, about active grants that
// end within the window.
func (h *hook) scanExpiring(ctx context.Context, now time.Time) error {
	n := h.n
	if n.state.pruneWarned(h.name, now) {
		h.save(true)
	}
	if !h.wants(KindGrantExpiring) {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	gs, err := n.cfg.Store.ListGrants(sctx, lapse.GrantFilter{State: lapse.GrantActive, Limit: lapse.MaxListLimit})
	cancel()
	if err != nil {
		return fmt.Errorf("list active grants: %w", err)
	}
	if len(gs) >= lapse.MaxListLimit && !h.scanWarned {
		h.log.Warn("more active grants than one listing returns; expiry warnings cover the newest only", "limit", lapse.MaxListLimit)
		h.scanWarned = true
	}
	// Soonest first: when a receiver is slow, the most urgent go first.
	slices.SortFunc(gs, func(a, b *lapse.Grant) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	window := n.cfg.ExpiryWarning
	for _, g := range gs {
		left := g.ExpiresAt.Sub(now)
		start := g.ActivatedAt
		if start.IsZero() {
			start = g.StartsAt
		}
		if left <= 0 || left > window || g.ExpiresAt.Sub(start) <= window || !h.matches(g.Entitlement) ||
			n.state.warned(h.name, g.ID, g.ExpiresAt) {
			continue
		}
		if err := h.deliver(ctx, expiringNotification(g, now)); err != nil {
			return err
		}
		n.state.markWarned(h.name, g.ID, g.ExpiresAt)
		h.save(true)
	}
	return nil
}

// deliver sends n until it is delivered or too old to matter. It returns
// nil when the notification is done with either way, and ctx's error when
// ctx ends first (the notification is then sent again on the next pass).
func (h *hook) deliver(ctx context.Context, n *Notification) error {
	m := h.n.metrics
	for attempt := 1; ; attempt++ {
		err := h.send(ctx, n, attempt)
		if err == nil {
			m.deliveries.WithLabelValues(h.name, outcomeDelivered).Inc()
			m.failing.WithLabelValues(h.name).Set(0)
			h.log.Debug("webhook notification delivered", "type", n.Type, "id", n.ID, "attempt", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m.failures.WithLabelValues(h.name).Inc()
		m.failing.WithLabelValues(h.name).Set(float64(attempt))
		if h.tooOld(n) {
			m.deliveries.WithLabelValues(h.name, outcomeGaveUp).Inc()
			m.failing.WithLabelValues(h.name).Set(0)
			h.log.Error("webhook notification dropped after retrying", "type", n.Type, "id", n.ID, "attempt", attempt,
				"code", lapse.ErrorCode(err), "reason", lapse.ErrorReason(err), "err", err.Error())
			return nil
		}
		wait := backoff(h.n.cfg.RetryBase, h.n.cfg.RetryMax, attempt)
		h.log.Warn("webhook delivery failed; will retry", "type", n.Type, "id", n.ID, "attempt", attempt, "retry_in", wait.String(),
			"code", lapse.ErrorCode(err), "reason", lapse.ErrorReason(err), "err", err.Error())
		if err := h.n.cfg.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// tooOld reports whether a failing notification is no longer worth
// retrying.
func (h *hook) tooOld(n *Notification) bool {
	now := h.n.cfg.Clock.Now()
	if n.Type == KindGrantExpiring {
		return !now.Before(n.ExpiresAt)
	}
	return now.Sub(n.Time) > h.n.cfg.GiveUpAfter
}

// send makes one call. Its errors never carry the URL (it may be a
// credential) or the secret, only the webhook's name and host.
func (h *hook) send(ctx context.Context, n *Notification, attempt int) error {
	body, err := encode(h.format, n)
	if err != nil {
		return lapse.Internal("encode notification", err)
	}
	ctx, cancel := context.WithTimeout(ctx, h.n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return lapse.Errorf(lapse.EINVALID, "webhook %s: the URL cannot be used", h.name)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Lapse-Webhook/1")
	req.Header.Set(IdempotencyHeader, n.ID)
	req.Header.Set(EventHeader, n.Type)
	req.Header.Set(AttemptHeader, strconv.Itoa(attempt))
	if h.secret != nil {
		req.Header.Set(SignatureHeader, Sign(h.secret, h.n.cfg.Clock.Now(), body))
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return h.transportError(ctx, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c >= 300 && c < 400:
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Reason: ReasonRedirect,
			Message: fmt.Sprintf("webhook %s answered %d, a redirect, which is not followed", h.name, c)}
	default:
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Reason: ReasonStatus, Message: fmt.Sprintf("webhook %s answered %d", h.name, c)}
	}
}

// transportError turns a client error into one that names the webhook and
// not its URL: *url.Error repeats the URL, so only its cause is kept.
func (h *hook) transportError(ctx context.Context, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var le *lapse.Error
	if errors.As(err, &le) {
		return &lapse.Error{Code: le.Code, Reason: le.Reason, Message: fmt.Sprintf("webhook %s: %s", h.name, le.Message)}
	}
	if timedOut := ue != nil && ue.Timeout(); timedOut || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: fmt.Sprintf("webhook %s did not answer within %s", h.name, h.n.cfg.Timeout)}
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: fmt.Sprintf("webhook %s: cannot post to %s", h.name, h.host), Err: err}
}

// lastSeq returns the sequence of the last event, 0 when there is none.
// It asks "is there an event after s?", which is monotonic in s, so a
// doubling then a bisection finds the end in a few dozen one-row reads
// whatever the log's size.
func lastSeq(ctx context.Context, st Store) (int64, error) {
	after := func(s int64) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, storeTimeout)
		defer cancel()
		evs, err := st.ListEvents(ctx, lapse.EventFilter{AfterSeq: s, Limit: 1})
		return len(evs) > 0, err
	}
	if ok, err := after(0); err != nil || !ok {
		return 0, err
	}
	lo, hi := int64(0), int64(1) // an event after lo; is there one after hi?
	for {
		ok, err := after(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 { // an event after lo, none after hi
		mid := lo + (hi-lo)/2
		ok, err := after(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// backoff returns the wait before attempt n+1 after n failures:
// min(max, base·2^(n-1)), jittered uniformly into its upper half so that
// the retries of many notifications spread.
func backoff(base, maxWait time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
