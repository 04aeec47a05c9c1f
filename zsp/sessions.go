package zsp

// This file is the session-level tests (DESIGN.md §5, docs/zsp.md
// "Session-level tests").

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
)

// Session-test results.
const (
	ResultPassed  = "passed"
	ResultFailed  = "failed"
	ResultSkipped = "skipped"
)

// Defaults of a SessionTester.
const (
	DefaultSessionPoll    = 25 * time.Millisecond
	DefaultSessionTimeout = 2 * time.Minute
)

// SessionTester runs session-level tests: for each target, grant its
// canary entitlement to the canary principal (broker.CanaryGrant), use
// it, hold an extra session open, release it and carry out the verified
// revocation (broker.ReleaseCanary), and then check, with the target's
// real client library, that a new login is refused and that the held
// session has ended. While the revocation runs, both are retried every
// Poll, which measures how long each took to be denied.
//
// The test relies on nothing the connector's Verify says: a connector
// whose Verify misses a surviving session (a weakened configuration)
// passes its own verification and fails this test, which names the
// session that survived.
type SessionTester struct {
	Broker *broker.Broker
	// Connectors are the targets' connectors by target name, as opened
	// (not wrapped by the broker); each must implement
	// connector.Exerciser to be tested.
	Connectors map[string]connector.Connector
	// Catalog is the entitlement catalog in file order.
	Catalog []*lapse.Entitlement
	// Entitlements names the canary entitlement of targets, one per
	// target at most (the first listed wins); a target without one uses
	// the first entitlement of the catalog on it.
	Entitlements []string
	// Duration of each canary grant; 0 means broker.DefaultCanaryDuration.
	Duration time.Duration
	// Poll is how often a new login and the held session are retried
	// during revocation; 0 means DefaultSessionPoll.
	Poll time.Duration
	// Timeout bounds the test of one target; 0 means DefaultSessionTimeout.
	Timeout time.Duration
	// Metrics, when set, receives every result.
	Metrics *CanaryMetrics
	Logger  *slog.Logger // nil discards
}

// SessionResult is the outcome of the session-level test of one target.
type SessionResult struct {
	Target      string    `json:"target"`
	Entitlement string    `json:"entitlement,omitempty"`
	Result      string    `json:"result"` // passed, failed or skipped
	Started     time.Time `json:"started"`
	GrantID     string    `json:"grant_id,omitempty"`
	// GrantState is the canary grant's state when the test ended
	// (revoked when its revocation was verified).
	GrantState lapse.GrantState `json:"grant_state,omitempty"`
	// HeldSession names the session opened while the grant was active.
	HeldSession string  `json:"held_session,omitempty"`
	Timings     Timings `json:"timings"`
	// Surviving names what still worked after the verified revocation:
	// the held session, or a new login.
	Surviving []string `json:"surviving,omitempty"`
	// Problems says why the test failed or was skipped.
	Problems []string `json:"problems,omitempty"`
}

// Passed reports whether the test passed.
func (r *SessionResult) Passed() bool { return r.Result == ResultPassed }

// Timings are the measured times of one test, in milliseconds; a nil
// field was not measured.
type Timings struct {
	// GrantMS is how long the grant took to provision.
	GrantMS *float64 `json:"grant_ms,omitempty"`
	// VerifiedMS is from the release until the revocation was verified.
	VerifiedMS *float64 `json:"revocation_verified_ms,omitempty"`
	// LoginDeniedMS is from the release until a new login was first
	// refused; SessionEndedMS until the held session first failed.
	LoginDeniedMS  *float64 `json:"login_denied_ms,omitempty"`
	SessionEndedMS *float64 `json:"session_ended_ms,omitempty"`
}

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

// Validate checks that every named canary entitlement exists. Returns
// EINVALID naming the entitlement.
func (t *SessionTester) Validate() error {
	for _, name := range t.Entitlements {
		if t.entitlement(name) == nil {
			return lapse.FieldErrorf(lapse.EINVALID, "zsp.canary.entitlements", "no entitlement named %s in the catalog", name)
		}
	}
	return nil
}

func (t *SessionTester) entitlement(name string) *lapse.Entitlement {
	for _, e := range t.Catalog {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// CanaryEntitlement returns the canary entitlement of target, or "".
func (t *SessionTester) CanaryEntitlement(target string) string {
	for _, name := range t.Entitlements {
		if e := t.entitlement(name); e != nil && e.Target == target {
			return e.Name
		}
	}
	for _, e := range t.Catalog {
		if e.Target == target {
			return e.Name
		}
	}
	return ""
}

// Targets returns the configured target names, sorted.
func (t *SessionTester) Targets() []string {
	names := make([]string, 0, len(t.Connectors))
	for n := range t.Connectors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (t *SessionTester) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Logger
}

// Run tests the named targets, or every target when names is empty, one
// after the other, and returns one result per target. A named target
// that cannot be tested fails; when every target is tested, those that
// cannot be (no Exerciser, no entitlement) are skipped. Returns EINVALID
// for an unknown target name.
func (t *SessionTester) Run(ctx context.Context, names []string) ([]*SessionResult, error) {
	explicit := len(names) > 0
	if !explicit {
		names = t.Targets()
	}
	for _, n := range names {
		if _, ok := t.Connectors[n]; !ok {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "target", "no target named %s (configured: %s)", n, strings.Join(t.Targets(), ", "))
		}
	}
	out := make([]*SessionResult, 0, len(names))
	for _, n := range names {
		r := t.RunTarget(ctx, n, t.CanaryEntitlement(n))
		if r.Result == ResultSkipped && explicit {
			r.Result = ResultFailed
		}
		t.finish(ctx, r)
		out = append(out, r)
	}
	return out, nil
}

// finish records r in the metrics and the log of events.
func (t *SessionTester) finish(ctx context.Context, r *SessionResult) {
	if t.Metrics != nil {
		t.Metrics.observe(r)
	}
	log := t.logger().With("target", r.Target, "entitlement", r.Entitlement, "grant", r.GrantID)
	switch r.Result {
	case ResultPassed:
		log.Info("zsp: session-level test passed", "verified_ms", deref(r.Timings.VerifiedMS), "login_denied_ms", deref(r.Timings.LoginDeniedMS), "session_ended_ms", deref(r.Timings.SessionEndedMS))
	case ResultSkipped:
		log.Warn("zsp: session-level test skipped", "why", strings.Join(r.Problems, "; "))
	default:
		log.Error("zsp: session-level test FAILED", "surviving", strings.Join(r.Surviving, "; "), "problems", strings.Join(r.Problems, "; "))
	}
	if r.Result == ResultSkipped {
		return
	}
	typ := lapse.EventCanaryPassed
	if r.Result != ResultPassed {
		typ = lapse.EventCanaryFailed
	}
	if err := t.Broker.RecordCanary(context.WithoutCancel(ctx), typ, r.GrantID, r.eventData()); err != nil {
		log.Error("zsp: cannot record the session-level test in the log", "err", err)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// eventData is what the log records of a result. No secrets: names,
// identifiers and times only.
func (r *SessionResult) eventData() map[string]any {
	d := map[string]any{
		"target":      r.Target,
		"entitlement": r.Entitlement,
		"result":      r.Result,
		"grant_state": r.GrantState,
		"timings":     r.Timings,
	}
	if r.HeldSession != "" {
		d["held_session"] = r.HeldSession
	}
	if len(r.Surviving) > 0 {
		d["surviving"] = r.Surviving
	}
	if len(r.Problems) > 0 {
		d["problems"] = r.Problems
	}
	return d
}

// RunTarget tests one target with entitlement; it does not record the
// result (Run does).
func (t *SessionTester) RunTarget(ctx context.Context, target, entitlement string) *SessionResult {
	r := &SessionResult{Target: target, Entitlement: entitlement, Started: time.Now().UTC(), Result: ResultFailed}
	fail := func(format string, args ...any) *SessionResult {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		return r
	}
	ex, ok := t.Connectors[target].(connector.Exerciser)
	if !ok {
		r.Result = ResultSkipped
		return fail("the connector of target %s cannot exercise grants (it does not implement connector.Exerciser)", target)
	}
	if entitlement == "" {
		r.Result = ResultSkipped
		return fail("no entitlement on target %s to test with", target)
	}
	e := t.entitlement(entitlement)
	if e == nil || e.Target != target {
		return fail("entitlement %s is not an entitlement of target %s", entitlement, target)
	}
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = DefaultSessionTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	start := time.Now()
	g, creds, err := t.Broker.CanaryGrant(ctx, broker.CanaryInput{Entitlement: entitlement, Duration: t.Duration})
	if g != nil {
		r.GrantID, r.GrantState = g.ID, g.State
	}
	if err != nil {
		fail("grant: %v", lapse.ErrorMessage(err))
		if g != nil {
			t.settle(ctx, r)
		}
		return r
	}
	r.Timings.GrantMS = ms(time.Since(start))
	req := &connector.ExerciseRequest{GrantID: g.ID, Secret: creds.Secret, Info: creds.Info, Spec: e.Spec}
	defer clear(creds.Secret)

	// While the grant is active, both kinds of access must work, or the
	// test proves nothing.
	if err := ex.Use(ctx, req); err != nil {
		fail("the canary could not use its active grant: %v", err)
		t.release(ctx, r)
		return r
	}
	held, err := ex.Hold(ctx, req)
	if err != nil {
		fail("the canary could not open a session with its active grant: %v", err)
		t.release(ctx, r)
		return r
	}
	defer held.Close()
	r.HeldSession = held.Describe()
	if err := held.Check(ctx); err != nil {
		fail("the held session did not work while the grant was active: %v", err)
		t.release(ctx, r)
		return r
	}

	// Release, and watch both kinds of access while the revocation runs.
	poll := t.Poll
	if poll <= 0 {
		poll = DefaultSessionPoll
	}
	released := time.Now()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loginDenied, sessionEnded time.Duration
	wg.Add(2)
	go func() {
		defer wg.Done()
		loginDenied = watch(watchCtx, poll, released, func(ctx context.Context) error { return ex.Use(ctx, req) })
	}()
	go func() {
		defer wg.Done()
		sessionEnded = watch(watchCtx, poll, released, held.Check)
	}()
	final, err := t.Broker.ReleaseCanary(ctx, g.ID)
	verified := time.Since(released)
	stopWatch()
	wg.Wait()
	if err != nil {
		return fail("release: %v", lapse.ErrorMessage(err))
	}
	r.GrantState = final.State
	if final.State != lapse.GrantRevoked {
		fail("revocation was not verified: the grant is %s (%s)", final.State, final.LastError)
	} else {
		r.Timings.VerifiedMS = ms(verified)
	}

	// The assertions: after the verified revocation, a new login is
	// refused and the held session has ended — now, not eventually.
	if err := ex.Use(ctx, req); err == nil {
		r.Surviving = append(r.Surviving, "a new login with the grant's credentials was accepted")
		fail("a new login with the grant's credentials still works after the revocation")
	} else if !connector.Denied(err) {
		fail("could not check that a new login is refused: %v", err)
	} else if loginDenied == 0 {
		loginDenied = time.Since(released)
	}
	if err := held.Check(ctx); err == nil {
		r.Surviving = append(r.Surviving, held.Describe())
		fail("held session still works after the revocation: %s", held.Describe())
	} else if !connector.Denied(err) {
		fail("could not check that the held session ended: %v", err)
	} else if sessionEnded == 0 {
		sessionEnded = time.Since(released)
	}
	if loginDenied > 0 {
		r.Timings.LoginDeniedMS = ms(loginDenied)
	}
	if sessionEnded > 0 {
		r.Timings.SessionEndedMS = ms(sessionEnded)
	}
	if len(r.Problems) == 0 {
		r.Result = ResultPassed
	}
	return r
}

// watch calls check every poll until it reports a denial or ctx ends, and
// returns how long after since the first denial was seen (0 if none).
//
// A check in progress is never cancelled when ctx ends, only bounded by
// its own timeout: the client libraries close a connection whose command
// is cancelled, and that would end the held session on the client's side
// and pass the test for the wrong reason.
func watch(ctx context.Context, poll time.Duration, since time.Time, check func(context.Context) error) time.Duration {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := check(cctx)
		cancel()
		if connector.Denied(err) {
			return time.Since(since)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
}

// release ends the canary grant after a failed step, so the test leaves
// nothing behind.
func (t *SessionTester) release(ctx context.Context, r *SessionResult) {
	g, err := t.Broker.ReleaseCanary(context.WithoutCancel(ctx), r.GrantID)
	if err != nil {
		r.Problems = append(r.Problems, "release: "+lapse.ErrorMessage(err))
		return
	}
	r.GrantState = g.State
}

// settle carries out the revocation of a canary grant whose provisioning
// failed.
func (t *SessionTester) settle(ctx context.Context, r *SessionResult) {
	g, err := t.Broker.SettleCanary(context.WithoutCancel(ctx), r.GrantID)
	if err != nil {
		r.Problems = append(r.Problems, "clean up: "+lapse.ErrorMessage(err))
		return
	}
	r.GrantState = g.State
}

// RunEvery runs the session-level test of every target every interval
// (jittered by up to a tenth, so replicas drift apart) until ctx ends. It
// is the scheduled canary of lapse server.
func (t *SessionTester) RunEvery(ctx context.Context, interval time.Duration) {
	log := t.logger()
	log.Info("zsp: scheduled canary started", "interval", interval.String(), "targets", t.Targets())
	for {
		wait := interval + rand.N(interval/10+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if _, err := t.Run(ctx, nil); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("zsp: scheduled canary run failed", "err", err)
		}
	}
}
