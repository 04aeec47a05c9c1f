package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// Polling of request --wait: start fast, because auto-provisioning and an
// approver at the keyboard are quick, and back off to a modest cap so a wait
// of half an hour costs the server little.
const (
	pollFirst    = 250 * time.Millisecond
	pollMax      = 2 * time.Second
	redrawPeriod = 125 * time.Millisecond
	claimTimeout = 30 * time.Second
)

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// waiter shows the progress of request --wait: a live line redrawn in place
// on a terminal, or one line per state change otherwise.
type waiter struct {
	cr       *clientRun
	live     bool
	start    time.Time
	deadline time.Time
	timeout  time.Duration
	status   string // what is being waited for, without spinner and elapsed time
	printed  string // the last status printed in line mode
	trouble  string // the last transient error, shown until a poll succeeds
	frame    int
	drawn    bool
}

// errWaitTimeout ends a wait that reached --timeout.
var errWaitTimeout = errors.New("timeout")

// waitForCredentials follows a filed request until its grant is active, then
// claims the credentials. It returns the request result completed with the
// grant and the credentials.
func (cr *clientRun) waitForCredentials(ctx context.Context, res *lapse.RequestResult, timeout time.Duration) (*lapse.RequestResult, error) {
	parent := ctx
	ctx, stop := cr.d.interrupt(ctx)
	defer stop()
	now := cr.d.clock.Now()
	w := &waiter{cr: cr, live: cr.d.isTerminal(cr.stderr), start: now, deadline: now.Add(timeout), timeout: timeout}
	defer w.clear()

	req := res.Request
	if req == nil {
		return nil, lapse.Errorf(lapse.EINTERNAL, "the server returned no request")
	}
	// Wait for the decision, and for the grant that an approval creates.
	backoff := pollFirst
	for req.State == lapse.RequestPending || (req.State == lapse.RequestApproved && req.GrantID == "") {
		w.set(requestStatus(req))
		if err := w.pause(ctx, backoff); err != nil {
			return nil, w.stopped(err, req, nil)
		}
		r, err := cr.svc.GetRequest(ctx, req.ID)
		if err != nil {
			if ctx.Err() != nil {
				return nil, w.stopped(ctx.Err(), req, nil)
			}
			if !transient(err) {
				return nil, err
			}
			w.problem(err)
			backoff = nextBackoff(backoff)
			continue
		}
		w.problem(nil)
		if requestStatus(r) != requestStatus(req) {
			backoff = pollFirst
		} else {
			backoff = nextBackoff(backoff)
		}
		req = r
	}
	res.Request = req
	if req.State != lapse.RequestApproved {
		w.set(requestStatus(req))
		w.clear()
		return nil, decidedError(req)
	}
	w.set(requestStatus(req))

	// Wait for the grant to become active.
	g := res.Grant
	if g == nil || g.ID != req.GrantID {
		g = &lapse.Grant{ID: req.GrantID, State: lapse.GrantScheduled}
	}
	backoff = pollFirst
	for first := true; ; first = false {
		if !first || res.Grant == nil {
			ng, err := cr.svc.GetGrant(ctx, g.ID)
			switch {
			case err != nil && ctx.Err() != nil:
				return nil, w.stopped(ctx.Err(), req, g)
			case err != nil && transient(err):
				w.problem(err)
				backoff = nextBackoff(backoff)
			case err != nil:
				return nil, err
			default:
				w.problem(nil)
				if ng.State != g.State {
					backoff = pollFirst
				} else {
					backoff = nextBackoff(backoff)
				}
				g = ng
			}
		}
		w.set(grantStatus(g))
		if g.State == lapse.GrantActive {
			break
		}
		if g.State != lapse.GrantScheduled && g.State != lapse.GrantProvisioning {
			w.clear()
			return nil, grantEndedError(g)
		}
		if err := w.pause(ctx, backoff); err != nil {
			return nil, w.stopped(err, req, g)
		}
	}
	res.Grant = g
	if w.live {
		w.clear()
		fmt.Fprintf(cr.stderr, "✓ %s — waited %s\n", clean(requestStatus(req)+" "+string(g.State)),
			humanDuration(cr.d.clock.Now().Sub(w.start).Truncate(time.Second)))
	}

	// The claim is not interrupted: once it has reached the server the
	// credentials cannot be claimed again, so dropping the answer on Ctrl-C
	// would lose them.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(parent), claimTimeout)
	defer cancel()
	creds, err := cr.svc.ClaimCredentials(cctx, g.ID)
	if err != nil {
		return nil, err
	}
	res.Credentials = creds
	return res, nil
}

// requestStatus describes a request for the status line.
func requestStatus(r *lapse.Request) string {
	s := r.ID + " " + string(r.State)
	if r.Required > 0 {
		s += " — " + fmt.Sprintf("%d/%d approvals", countApprovals(r), r.Required)
	}
	if r.GrantID != "" {
		s += " — grant " + r.GrantID
	}
	return s
}

// grantStatus describes a grant for the status line.
func grantStatus(g *lapse.Grant) string {
	return g.ID + " " + string(g.State)
}

// set records what is being waited for; in line mode a change prints a line.
func (w *waiter) set(status string) {
	w.status = status
	w.draw()
}

// problem records a transient error (nil clears it).
func (w *waiter) problem(err error) {
	if err == nil {
		w.trouble = ""
		return
	}
	w.trouble = "retrying: " + formatError(err)
	w.draw()
}

func (w *waiter) draw() {
	line := w.status
	if w.trouble != "" {
		line += " — " + w.trouble
	}
	if !w.live {
		if line != w.printed {
			fmt.Fprintln(w.cr.stderr, clean(line))
			w.printed = line
		}
		return
	}
	elapsed := w.cr.d.clock.Now().Sub(w.start).Truncate(time.Second)
	fmt.Fprintf(w.cr.stderr, "\r\x1b[2K%s %s — waiting %s", spinner[w.frame%len(spinner)], clean(line), humanDuration(elapsed))
	w.frame++
	w.drawn = true
}

// clear removes the live line, so what follows starts on a clean line.
func (w *waiter) clear() {
	if w.live && w.drawn {
		fmt.Fprint(w.cr.stderr, "\r\x1b[2K")
		w.drawn = false
	}
}

// pause waits d, redrawing the live line meanwhile. It returns
// errWaitTimeout when --timeout is reached and ctx's error when the wait
// was interrupted.
func (w *waiter) pause(ctx context.Context, d time.Duration) error {
	for d > 0 {
		left := w.deadline.Sub(w.cr.d.clock.Now())
		if left <= 0 {
			return errWaitTimeout
		}
		step := min(d, left)
		if w.live {
			step = min(step, redrawPeriod)
		}
		if err := w.cr.d.sleep(ctx, step); err != nil {
			return err
		}
		d -= step
		if w.live {
			w.draw()
		}
	}
	if !w.deadline.After(w.cr.d.clock.Now()) {
		return errWaitTimeout
	}
	return nil
}

// stopped explains an ended wait: the request (and grant) stay as they are.
func (w *waiter) stopped(err error, req *lapse.Request, g *lapse.Grant) error {
	w.clear()
	var what string
	switch {
	case g != nil:
		what = fmt.Sprintf("request %s is approved and grant %s is %s; claim its credentials later with \"lapse credentials %s\"",
			req.ID, g.ID, g.State, g.ID)
	case req.State == lapse.RequestApproved:
		what = fmt.Sprintf("request %s is approved; find its grant with \"lapse grants --mine\"", req.ID)
	default:
		what = fmt.Sprintf("request %s is still %s and was not cancelled; withdraw it with \"lapse cancel %s\"",
			req.ID, req.State, req.ID)
	}
	if errors.Is(err, errWaitTimeout) {
		return fmt.Errorf("gave up waiting after %s: %s", humanDuration(w.timeout), what)
	}
	return &interruptedError{msg: "stopped waiting: " + what}
}

// transient reports whether a polling error may go away by itself: the
// server or the network is unavailable or busy. An error about the request
// or the caller (not found, forbidden, unauthorized) ends the wait.
func transient(err error) bool {
	var le *lapse.Error
	if !errors.As(err, &le) {
		return true // a transport error: connection refused, reset, timeout
	}
	switch le.Code {
	case lapse.EUNAVAILABLE, lapse.ERATELIMITED, lapse.EINTERNAL:
		return true
	}
	return false
}

func nextBackoff(d time.Duration) time.Duration {
	return min(d*2, pollMax)
}

// decidedError explains why a request will not be granted.
func decidedError(r *lapse.Request) error {
	var b strings.Builder
	fmt.Fprintf(&b, "request %s was %s", r.ID, r.State)
	note := r.DecisionNote
	switch r.State {
	case lapse.RequestDenied:
		for _, a := range r.Approvals {
			if a != nil && a.Decision == lapse.DecisionDeny {
				fmt.Fprintf(&b, " by %s", principalName(a.Approver))
				if a.Comment != "" {
					fmt.Fprintf(&b, ": %q", a.Comment)
				}
				note = "" // the server's note says no more than the vote
				break
			}
		}
	case lapse.RequestExpired:
		fmt.Fprintf(&b, " without a decision (%d of %d approvals)", countApprovals(r), r.Required)
	}
	if note != "" {
		fmt.Fprintf(&b, " (%s)", note)
	}
	return errors.New(b.String())
}

// grantEndedError explains a grant that ended before it became active.
func grantEndedError(g *lapse.Grant) error {
	var b strings.Builder
	fmt.Fprintf(&b, "grant %s ended before it became active: it is %s", g.ID, g.State)
	if g.EndReason != "" {
		fmt.Fprintf(&b, " (%s)", g.EndReason)
	}
	if g.LastError != "" {
		fmt.Fprintf(&b, ": %s", g.LastError)
	}
	return errors.New(b.String())
}
