package broker

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// The engine acts on durable deadlines. Its work list is the store itself:
// every grant that is not revoked has a DueAt, and the engine claims due
// grants with a lease (ClaimDueGrants), so a restart, a crash or another
// replica taking over loses nothing — an unfinished claim simply lapses and
// the grant is claimed again. The pipeline for one batch:
//
//	claim and write intent for the whole batch (one transaction; the claim
//	statement itself moves expired grants to revoking) → per-target workers
//	call the connector, bounded by the target's concurrency → one committer
//	writes results in batches (group commit) → grants that need another
//	step are dispatched again.
//
// On a store with one writer (SQLite) the committer holds results while a
// wave of deadlines is still being claimed, so that the claims, which let
// connector calls start, do not queue behind result commits (commitLoop).
//
// Every write is compare-and-swap on the grant's version; the claim bumped
// the version and the fence, so a process whose lease was taken over cannot
// write, and it checks its lease before every connector call so it does not
// act either.

type action int

const (
	actNone action = iota
	actProvision
	actRevoke
	actVerify
	actExpire // a reserved expiry's deadline came (reserve.go)
)

// target is one connector instance with its concurrency limit and pacing.
type target struct {
	name     string
	kind     string
	conn     connector.Connector
	sem      chan struct{}
	overdue  *rate.Limiter
	inflight atomic.Int64
	// callNanos is an exponentially weighted moving average of connector
	// call durations, used to size claims so claimed work fits in a lease.
	callNanos atomic.Int64
	batch     int
	lease     time.Duration
}

func newTarget(name string, t Target, cfg EngineConfig) *target {
	n := t.Concurrency
	if n <= 0 {
		n = 16
	}
	tg := &target{
		name: name, kind: t.Kind, conn: t.Connector,
		sem:     make(chan struct{}, n),
		overdue: rate.NewLimiter(rate.Limit(cfg.OverdueRate), max(1, int(cfg.OverdueRate/10))),
		batch:   cfg.BatchSize,
		lease:   cfg.Lease,
	}
	tg.callNanos.Store(int64(5 * time.Millisecond))
	return tg
}

// capacity is how many grants of this target may be claimed and in flight
// at once: as many as the target can get through in half a lease at its
// observed speed, at least its concurrency, at most two batches.
func (t *target) capacity() int {
	per := time.Duration(t.callNanos.Load())
	if per <= 0 {
		per = time.Millisecond
	}
	n := int(int64(cap(t.sem)) * int64(t.lease/2) / int64(per))
	return min(max(n, cap(t.sem)), 2*t.batch)
}

func (t *target) observe(d time.Duration) {
	old := t.callNanos.Load()
	t.callNanos.Store(old + (int64(d)-old)/8)
}

type engine struct {
	b         *Broker
	results   chan *result
	inflight  sync.WaitGroup // one per grant from dispatch until its last result is committed
	mu        sync.Mutex
	active    int // users of the committer (Run, Tick)
	done      chan struct{}
	lastSweep time.Time
	lastCount time.Time

	// Claims first (commitLoop). serial: the store runs one write
	// transaction at a time (lapse.SerialWriter). claiming: a wave is
	// being claimed — set by a claim that took grants, cleared by a cycle
	// in which no claim came back full. noHold counts callers waiting for
	// every result to be written (Tick, stop); while it is above zero
	// nothing is held. kick wakes the committer to look again.
	serial   bool
	claiming atomic.Bool
	noHold   atomic.Int32
	kick     chan struct{}

	// reserved: expiries claimed ahead of their deadline (reserve.go);
	// lastReserve and reserveMore pace the reservations (engine.reserve).
	reserved    reservations
	lastReserve time.Time
	reserveMore bool
	// noReserve: this run could not take the store's engine lock, so
	// another engine might free its leases; it reserves nothing.
	noReserve atomic.Bool
}

// Bounds on how long the committer holds results (commitLoop).
const (
	// maxHeldBatches: the committer writes once it holds this many
	// batches (BatchSize results each).
	maxHeldBatches = 16
	// holdRecheck is how often a holding committer looks at the clock
	// when no result arrives. The hold limit is measured on the engine's
	// clock, which need not be the wall clock (tests move a fake one).
	holdRecheck = 10 * time.Millisecond
	// dueRecheck is how soon the engine looks again when a grant is due
	// that it could not claim (nextWait).
	dueRecheck = 25 * time.Millisecond
	// commitLinger is how long the committer on a store with one writer
	// waits for a batch to fill before writing it (linger).
	commitLinger = 5 * time.Millisecond
)

// result is the outcome of one connector step on one claimed grant, to be
// written by the committer.
type result struct {
	t           *target
	g           *lapse.Grant
	checkpoints []*lapse.Checkpoint
	events      []*lapse.Event
	next        action // dispatch again after the commit
	fence       int64
	leaseUntil  time.Time // the end of the lease the step ran under
}

func newEngine(b *Broker) *engine {
	e := &engine{b: b, kick: make(chan struct{}, 1)}
	if sw, ok := b.store.(lapse.SerialWriter); ok {
		e.serial = sw.SerialWrites()
	}
	return e
}

// wakeCommitter makes the committer re-check whether it may hold results.
func (e *engine) wakeCommitter() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// start launches the committer if it is not running.
func (e *engine) start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active++
	if e.active > 1 {
		return
	}
	e.results = make(chan *result, 4*e.b.cfg.BatchSize)
	e.done = make(chan struct{})
	go e.commitLoop(e.results, e.done)
}

// stop waits for in-flight work to be written, then stops the committer.
// Nothing is held while it waits.
func (e *engine) stop() {
	e.noHold.Add(1)
	e.wakeCommitter()
	e.inflight.Wait()
	e.noHold.Add(-1)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active--
	if e.active > 0 {
		return
	}
	close(e.results)
	<-e.done
}

// Run is the lifecycle engine: it acts on every due grant until ctx ends,
// then waits for in-flight connector calls and writes to finish, so a
// graceful shutdown leaves nothing half done.
func (b *Broker) Run(ctx context.Context) error {
	e := b.engine
	unlock, locked := b.holdLeases(ctx)
	defer unlock() // after everything below is written
	e.noReserve.Store(!locked)
	e.start()
	b.running.Store(true)
	defer func() {
		b.running.Store(false)
		e.claiming.Store(false)
		e.releaseReservations(context.WithoutCancel(ctx))
		e.stop()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-b.wake:
		}
		cycleAt := b.clock.Now()
		e.fireReserved(cycleAt)
		claimed, err := e.cycle(ctx)
		if err != nil && ctx.Err() == nil {
			b.log.Warn("engine cycle failed; retrying", "err", err)
		}
		reserved, more, err := e.reserve(ctx, b.clock.Now())
		if err != nil && ctx.Err() == nil {
			b.log.Warn("reserving expiries failed; retrying", "err", err)
		}
		e.fireReserved(b.clock.Now()) // a deadline may have come meanwhile
		e.sweepRequests(ctx)
		wait := e.nextWait(claimed > 0 || more, reserved > 0, cycleAt)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// nextWait is how long the engine loop may sleep: until the next due
// grant, the next reserved deadline, or the moment the next deadline comes
// within ClaimAhead, and at most PollInterval. busy (a claim came back
// full: more may be due now) and reserved (expiries were just reserved:
// their deadlines are near) bring it back soon. cycleAt is when the cycle
// that just ran looked at the clock.
func (e *engine) nextWait(busy, reserved bool, cycleAt time.Time) time.Duration {
	b := e.b
	if busy {
		return 2 * time.Millisecond
	}
	now := b.clock.Now()
	wait := b.cfg.PollInterval
	if next, ok, err := b.store.NextDueAt(context.Background()); err == nil && ok {
		d := next.Sub(now)
		if !next.After(cycleAt) {
			// Due when the cycle ran, and not claimed: its target is not
			// configured here, or at capacity until results come back.
			// Look again soon, but do not spin.
			d = min(b.cfg.PollInterval, dueRecheck)
		}
		if ahead := b.cfg.ClaimAhead; ahead > 0 && e.reserveRoom() {
			if d > ahead {
				d -= ahead
			} else {
				// Within the window but not reservable (not active, say):
				// look again after the pause between reservations.
				d = min(d, e.reservePause())
			}
		}
		wait = min(wait, d)
	}
	if next, ok := e.reserved.next(); ok {
		wait = min(wait, next.Sub(now))
	}
	if reserved {
		wait = min(wait, 2*time.Millisecond)
	}
	return max(wait, 0)
}

// Tick runs the engine synchronously until nothing is due at the clock's
// current time and all work is written. Tests use it with a fake clock.
// It waits for every result after each cycle, so the committer holds
// nothing meanwhile (noHold): a hold bounded on a fake clock that does not
// move would never end.
func (b *Broker) Tick(ctx context.Context) error {
	e := b.engine
	e.start()
	e.noHold.Add(1)
	e.wakeCommitter()
	defer e.noHold.Add(-1) // after stop, which runs first
	defer e.stop()
	for {
		n, err := e.cycle(ctx)
		if err != nil {
			return err
		}
		e.inflight.Wait()
		e.sweepRequests(ctx)
		if n == 0 {
			return nil
		}
	}
}

// cycle claims due grants for every target with free capacity and
// dispatches them. It returns how many grants it claimed. A cycle in which
// no claim came back full (nothing more was due, or every target was at
// capacity) ends the wave for the committer (e.claiming), which then writes
// what it holds.
//
// It claims without first counting what is due: during a wave of deadlines
// a count per cycle would scan every due grant again and again, while a
// claim that finds nothing costs one index probe. Grants of targets that
// are not configured are counted only once per poll interval, for the
// metric that makes them visible.
func (e *engine) cycle(ctx context.Context) (int, error) {
	b := e.b
	now := b.clock.Now()
	e.countUnknownTargets(ctx, now)
	claimed := 0
	full := false // some claim took all it asked for: more may be due
	for _, t := range b.targetList {
		limit := min(t.capacity()-int(t.inflight.Load()), b.cfg.BatchSize)
		if limit <= 0 {
			continue
		}
		n, err := e.claim(ctx, t, now, limit)
		claimed += n
		if err != nil {
			return claimed, err
		}
		full = full || n == limit
	}
	if !full && e.claiming.Swap(false) {
		e.wakeCommitter()
	}
	return claimed, nil
}

// countUnknownTargets sets the gauge of due grants whose target is not
// configured (nothing here can act on them), at most once per poll interval.
func (e *engine) countUnknownTargets(ctx context.Context, now time.Time) {
	b := e.b
	if !e.lastCount.IsZero() && now.Sub(e.lastCount) < b.cfg.PollInterval && now.After(e.lastCount) {
		return
	}
	e.lastCount = now
	due, err := b.store.DueCounts(ctx, now)
	if err != nil {
		return
	}
	for name, n := range due {
		if b.targets[name] == nil {
			b.metrics.unknownTarget(name, n)
		}
	}
}

// claim leases up to limit due grants of t and records, in the same
// transaction, what will be done with each: the claim itself moves expired
// active grants to revoking (ClaimInput.Expire), and plan decides the rest.
// Only after the commit are the connector steps dispatched, so the intent
// is durable before any connector is called.
func (e *engine) claim(ctx context.Context, t *target, now time.Time, limit int) (int, error) {
	type planned struct {
		g   *lapse.Grant
		act action
	}
	var dispatch []planned
	var claimedIDs []string
	claimed := 0
	err := e.b.store.Update(ctx, func(tx lapse.Tx) error {
		dispatch = dispatch[:0]
		gs, err := tx.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: e.b.cfg.Owner, Now: now, Lease: e.b.cfg.Lease, Limit: limit, Target: t.name, Expire: true})
		if err != nil {
			return err
		}
		claimed = len(gs)
		claimedIDs = claimedIDs[:0]
		for _, g := range gs {
			claimedIDs = append(claimedIDs, g.ID)
		}
		// Fenced grants about to start: their pairs are locked here, before
		// any event is appended (fence.go).
		waiting, err := e.fences(ctx, tx, gs, now)
		if err != nil {
			return err
		}
		for _, g := range gs {
			if prev := waiting[g.ID]; prev != nil {
				ev := e.fenceWait(g, prev, now)
				if err := tx.UpdateGrant(ctx, g); err != nil {
					return err
				}
				if ev != nil {
					if err := tx.AppendEvent(ctx, ev); err != nil {
						return err
					}
				}
				continue
			}
			if expiredByClaim(g, now) {
				ev := e.b.grantEvent(context.Background(), lapse.EventGrantRevokeStarted, g, string(g.EndReason), map[string]any{"note": "deadline reached"})
				if err := tx.AppendEvent(ctx, ev); err != nil {
					return err
				}
				dispatch = append(dispatch, planned{g, actRevoke})
				continue
			}
			if cancelled, err := e.recheck(ctx, tx, g, now); err != nil {
				return err
			} else if cancelled {
				dispatch = append(dispatch, planned{g, actRevoke})
				continue
			}
			g2, act, ev := e.plan(g, now)
			if g2 != nil {
				// The claim locked the grant and returned its current
				// version, so this write cannot lose a race.
				if err := tx.UpdateGrant(ctx, g2); err != nil {
					return err
				}
			}
			if ev != nil {
				if err := tx.AppendEvent(ctx, ev); err != nil {
					return err
				}
			}
			if act != actNone {
				dispatch = append(dispatch, planned{g, act})
			}
		}
		return nil
	})
	if err != nil {
		// Nothing was written: the grants stay unclaimed and due.
		return 0, err
	}
	for _, id := range claimedIDs {
		// An ordinary claim supersedes a reservation of the same grant.
		e.unreserve(id)
	}
	if claimed > 0 && e.serial {
		// Before the dispatch, so the committer holds these grants'
		// results too.
		e.claiming.Store(true)
	}
	for _, d := range dispatch {
		e.dispatch(t, d.g, d.act, d.g.Fence, overdueSince(d.g).Before(now.Add(-e.b.cfg.OverdueGrace)))
	}
	return claimed, nil
}

// recheck checks, as a scheduled grant is about to start, that its
// request's decision still holds under the policy in force now
// (policy.Recheck): the policy may have changed since the approvals, an
// approver may have left their group, the requester may no longer be
// allowed. When it does not hold, nothing is provisioned: the grant goes
// to revoking with the reason recorded (a Revoke and Verify of a
// principal that was never made, so that the grant still ends with
// verified evidence), and recheck reports true. Grants the broker made
// itself (the canary's) have no decision to check.
func (e *engine) recheck(ctx context.Context, tx lapse.Tx, g *lapse.Grant, now time.Time) (bool, error) {
	if g.State != lapse.GrantScheduled || now.Before(g.StartsAt) || !now.Before(g.ExpiresAt) || g.RequestID == "" {
		return false, nil
	}
	r, err := tx.GetRequest(ctx, g.RequestID)
	if err != nil {
		if lapse.ErrorCode(err) != lapse.ENOTFOUND {
			return false, err
		}
		r = nil
	}
	// The cancellation records the version of the policy that refused.
	c := e.b.catalog.Load()
	var reason string
	switch {
	case r == nil:
		reason = "the grant's request is not in the store"
	case r.Channel == lapse.ChannelSystem:
		return false, nil
	case r.Hash != g.RequestHash || r.ComputeHash() != r.Hash:
		reason = "the grant's request does not match the hash it was approved under"
	default:
		if err := c.policy.Recheck(r, now); err != nil {
			reason = lapse.ErrorMessage(err)
		} else if err := e.b.sponsorStillAllows(ctx, c.policy, r, now); err != nil {
			if lapse.ErrorCode(err) == lapse.EUNAVAILABLE {
				return false, err
			}
			reason = lapse.ErrorMessage(err)
		}
	}
	if reason == "" {
		return false, nil
	}
	g.State = lapse.GrantRevoking
	g.EndReason = lapse.EndCancelled
	g.LastError = "not provisioned: " + reason
	g.RevokeStartedAt = now
	if err := tx.UpdateGrant(ctx, g); err != nil {
		return false, err
	}
	ev := e.b.grantEvent(context.Background(), lapse.EventGrantCancelled, g, "not_provisioned", map[string]any{"reason": reason})
	ev.PolicyVersion = c.version
	if err := tx.AppendEvent(ctx, ev); err != nil {
		return false, err
	}
	return true, nil
}

// overdueSince is when the work on g fell due, for pacing a backlog: the
// start of a scheduled grant, the deadline of an expiring one, the start of
// any other revocation. (DueAt cannot say: the claim moved it to the lease
// end.)
func overdueSince(g *lapse.Grant) time.Time {
	switch {
	case g.State == lapse.GrantScheduled || g.State == lapse.GrantProvisioning:
		return g.StartsAt
	case g.EndReason != lapse.EndExpired && !g.RevokeStartedAt.IsZero():
		return g.RevokeStartedAt
	default:
		return g.ExpiresAt
	}
}

// expiredByClaim reports whether the claim at now is what moved g from
// active to revoking (ClaimInput.Expire). Only that claim leaves a grant in
// revoking with EndReason expired, no attempt yet and RevokeStartedAt equal
// to its own now: a grant cannot be claimed twice at one instant (the first
// claim's lease holds until after it), and every other path that starts a
// revocation (release, revoke, a provisioning failure, plan) records its
// own event.
func expiredByClaim(g *lapse.Grant, now time.Time) bool {
	return g.State == lapse.GrantRevoking && g.EndReason == lapse.EndExpired && g.Attempts == 0 && g.RevokeStartedAt.Equal(now)
}

// plan decides what to do with a claimed grant at time now. It returns the
// grant to write first (nil if nothing needs writing before the action), the
// connector step to take, and the event that records the intent.
func (e *engine) plan(g *lapse.Grant, now time.Time) (*lapse.Grant, action, *lapse.Event) {
	b := e.b
	ev := func(typ, outcome string, data map[string]any) *lapse.Event {
		return b.grantEvent(context.Background(), typ, g, outcome, data)
	}
	startRevoke := func(reason lapse.EndReason, note string) (*lapse.Grant, action, *lapse.Event) {
		g.State = lapse.GrantRevoking
		if g.EndReason == "" {
			g.EndReason = reason
		}
		if g.RevokeStartedAt.IsZero() {
			g.RevokeStartedAt = now
		}
		// DueAt stays at the lease end the claim set: due again only if
		// this process does not finish.
		return g, actRevoke, ev(lapse.EventGrantRevokeStarted, string(g.EndReason), map[string]any{"note": note})
	}
	switch g.State {
	case lapse.GrantScheduled:
		if b.entitlement(g.Entitlement) == nil {
			g.LastError = "entitlement is no longer in the catalog"
			return startRevoke(lapse.EndProvisionFailed, g.LastError)
		}
		if !now.Before(g.ExpiresAt) {
			return startRevoke(lapse.EndExpired, "deadline passed before provisioning")
		}
		if now.Before(g.StartsAt) {
			g.DueAt, g.LeaseOwner, g.LeaseUntil = g.StartsAt, "", time.Time{}
			return g, actNone, nil
		}
		g.State = lapse.GrantProvisioning
		g.DueAt = g.LeaseUntil
		return g, actProvision, ev("grant.provision_started", "provisioning", nil)
	case lapse.GrantProvisioning:
		if !now.Before(g.ExpiresAt) {
			return startRevoke(lapse.EndExpired, "deadline passed during provisioning")
		}
		// A claim found it provisioning: a previous attempt did not finish.
		// Grant is idempotent, so try again.
		return nil, actProvision, nil
	case lapse.GrantActive:
		if now.Before(g.ExpiresAt) {
			g.DueAt, g.LeaseOwner, g.LeaseUntil = g.ExpiresAt, "", time.Time{}
			return g, actNone, nil
		}
		return startRevoke(lapse.EndExpired, "deadline reached")
	case lapse.GrantRevoking, lapse.GrantRevokeFailed:
		return nil, actRevoke, nil
	case lapse.GrantVerifying:
		return nil, actVerify, nil
	default: // revoked: nothing to do; drop the lease
		g.DueAt, g.LeaseOwner, g.LeaseUntil = time.Time{}, "", time.Time{}
		return g, actNone, nil
	}
}

func (e *engine) dispatch(t *target, g *lapse.Grant, act action, fence int64, overdue bool) {
	e.inflight.Add(1)
	t.inflight.Add(1)
	go func() {
		if overdue {
			// A backlog after downtime: pace it so the target is not hit by
			// a stampede. The lease check below still applies. The
			// reservation reads the injected clock, so the pacing is
			// deterministic under a fake one.
			now := e.b.clock.Now()
			e.b.pause(t.overdue.ReserveN(now, 1).DelayFrom(now))
		}
		t.sem <- struct{}{}
		res := e.step(t, g, act, fence)
		<-t.sem
		t.inflight.Add(-1)
		if res == nil {
			e.inflight.Done()
			return
		}
		e.results <- res
	}()
}

// leaseMargin is how much of a lease must remain for a connector call to
// start; calls are cut off at the margin, before another process may claim.
func (e *engine) leaseMargin() time.Duration { return e.b.cfg.Lease / 10 }

// step performs one connector step on a claimed grant and returns the
// result to commit, or nil if the lease no longer allows acting.
func (e *engine) step(t *target, g *lapse.Grant, act action, fence int64) *result {
	b := e.b
	now := b.clock.Now()
	deadline := g.LeaseUntil.Add(-e.leaseMargin())
	if g.LeaseOwner != b.cfg.Owner || !now.Before(deadline) {
		// Our claim is over (or was never ours): whoever claims next acts.
		b.metrics.fenced.Inc()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline.Sub(now))
	defer cancel()
	res := &result{t: t, g: g, fence: fence, leaseUntil: g.LeaseUntil}
	switch act {
	case actProvision:
		e.provision(ctx, t, res)
	case actRevoke:
		e.revoke(ctx, t, res, true)
	case actVerify:
		e.revoke(ctx, t, res, false)
	case actExpire:
		e.expire(ctx, t, res)
	}
	return res
}

func (e *engine) spec(g *lapse.Grant) map[string]any {
	if ent := e.b.entitlement(g.Entitlement); ent != nil {
		return ent.Spec
	}
	return nil
}

// maxUses is the use limit of g's entitlement in the catalog in force.
func (e *engine) maxUses(g *lapse.Grant) int {
	if ent := e.b.entitlement(g.Entitlement); ent != nil {
		return ent.MaxUses
	}
	return 0
}

// provision calls Grant and records the outcome in res.
func (e *engine) provision(ctx context.Context, t *target, res *result) {
	b := e.b
	g := res.g
	start := time.Now()
	resp, err := t.conn.Grant(ctx, &connector.GrantRequest{GrantID: g.ID, Principal: g.Principal, Entitlement: g.Entitlement, Spec: e.spec(g), MaxUses: e.maxUses(g), ExpiresAt: g.ExpiresAt})
	t.observe(time.Since(start))
	b.metrics.call(t.name, "grant", err, time.Since(start))
	now := b.clock.Now()
	if err == nil {
		err = e.applyGrant(g, res, resp, now)
	}
	if err != nil {
		// Undo whatever was made: revocation runs next, through the same
		// verified path as any other.
		g.Attempts++
		g.LastError = safeError(err)
		g.State = lapse.GrantRevoking
		g.EndReason = lapse.EndProvisionFailed
		g.RevokeStartedAt = now
		g.DueAt = now
		res.events = append(res.events, b.grantEvent(context.Background(), lapse.EventGrantProvisionFailed, g, "failed", map[string]any{"error": g.LastError}))
		res.next = actRevoke
		b.log.Warn("provisioning failed; undoing", "grant", g.ID, "target", t.name, "err", g.LastError)
		return
	}
	res.events = append(res.events, b.grantEvent(context.Background(), lapse.EventGrantProvisioned, g, "active", map[string]any{"checkpoints": len(res.checkpoints), "expires_at": g.ExpiresAt}))
}

// applyGrant moves g to active with the connector's response.
func (e *engine) applyGrant(g *lapse.Grant, res *result, resp *connector.GrantResponse, now time.Time) error {
	b := e.b
	if len(resp.Checkpoints) == 0 {
		return errors.New("connector named no checkpoints; revocation could never be verified")
	}
	creds, err := b.sealer.seal(g.ID, purposeCredentials, resp.Secret)
	if err != nil {
		return err
	}
	probe, err := b.sealer.seal(g.ID, purposeProbe, resp.Probe)
	if err != nil {
		return err
	}
	g.State = lapse.GrantActive
	g.ActivatedAt = now
	g.ConnectorState = resp.State
	g.Info = resp.Info
	g.SealedCredentials = creds
	g.SealedProbe = probe
	g.LastError = ""
	g.DueAt = g.ExpiresAt
	g.LeaseOwner, g.LeaseUntil = "", time.Time{}
	res.checkpoints = res.checkpoints[:0]
	for _, c := range resp.Checkpoints {
		res.checkpoints = append(res.checkpoints, &lapse.Checkpoint{GrantID: g.ID, Name: c.Name, Kind: c.Kind, CreatedAt: now})
	}
	g.Checkpoints = res.checkpoints
	return nil
}

// revoke calls Revoke (unless only verification is pending) and then Verify,
// and records the outcome in res. A grant becomes revoked only when Verify
// confirms every checkpoint.
func (e *engine) revoke(ctx context.Context, t *target, res *result, doRevoke bool) {
	b := e.b
	g := res.g
	spec := e.spec(g)
	var actions []string
	if doRevoke {
		start := time.Now()
		resp, err := t.conn.Revoke(ctx, &connector.RevokeRequest{GrantID: g.ID, Principal: g.Principal, Spec: spec, State: g.ConnectorState})
		t.observe(time.Since(start))
		b.metrics.call(t.name, "revoke", err, time.Since(start))
		if err != nil {
			e.retryLater(res, lapse.GrantRevokeFailed, "revoke: "+safeError(err), lapse.EventGrantRevokeFailed, nil)
			return
		}
		actions = resp.Actions
		now := b.clock.Now()
		for _, c := range g.Checkpoints {
			if c.RevokedAt.IsZero() {
				c.RevokedAt = now
			}
		}
	}
	probe, err := b.sealer.open(g.ID, purposeProbe, g.SealedProbe)
	if err != nil {
		b.log.Error("probe material does not open; verifying without a login probe", "grant", g.ID)
		probe = nil
	}
	start := time.Now()
	vr, err := t.conn.Verify(ctx, &connector.VerifyRequest{GrantID: g.ID, Principal: g.Principal, Spec: spec, State: g.ConnectorState, Probe: probe})
	clear(probe)
	t.observe(time.Since(start))
	b.metrics.call(t.name, "verify", err, time.Since(start))
	if err != nil {
		e.retryLater(res, lapse.GrantVerifying, "verify: "+safeError(err), lapse.EventGrantVerifyFailed, map[string]any{"actions": actions})
		return
	}
	now := b.clock.Now()
	unreported := e.mergeCheckpoints(res, vr, now)
	if !vr.Gone() || len(unreported) > 0 {
		var residue []string
		for _, c := range vr.Checkpoints {
			if !c.Gone {
				residue = append(residue, c.Name+": "+strings.Join(c.Residue, "; "))
			}
		}
		for _, name := range unreported {
			residue = append(residue, name+": not verified (the connector's Verify did not report this checkpoint)")
		}
		e.retryLater(res, lapse.GrantRevokeFailed, "verification found residue: "+strings.Join(residue, "; "), lapse.EventGrantVerifyFailed,
			map[string]any{"actions": actions, "residue": residue})
		return
	}
	g.State = lapse.GrantRevoked
	g.RevokedAt = now
	g.DueAt = time.Time{}
	g.LeaseOwner, g.LeaseUntil = "", time.Time{}
	g.LastError = ""
	g.SealedProbe = nil
	g.SealedCredentials = nil
	res.events = append(res.events, b.grantEvent(context.Background(), lapse.EventGrantRevoked, g, "verified", map[string]any{
		"actions": actions, "checkpoints": len(g.Checkpoints), "end_reason": g.EndReason,
		// Binds a receipt's evidence to this entry (audit.VerifyReceipt).
		"evidence_digest": lapse.EvidenceDigest(g.Checkpoints),
	}))
}

// retryLater puts g into a retryable state with capped, jittered
// exponential back-off. There is no attempt limit.
func (e *engine) retryLater(res *result, state lapse.GrantState, msg, evType string, data map[string]any) {
	b := e.b
	g := res.g
	g.Attempts++
	g.State = state
	g.LastError = msg
	now := b.clock.Now()
	g.DueAt = now.Add(backoff(b.cfg.RetryBase, b.cfg.RetryMax, g.Attempts))
	g.LeaseOwner, g.LeaseUntil = "", time.Time{}
	if data == nil {
		data = map[string]any{}
	}
	data["error"] = msg
	data["attempt"] = g.Attempts
	data["next_attempt_at"] = g.DueAt
	res.events = append(res.events, b.grantEvent(context.Background(), evType, g, string(state), data))
	b.metrics.revokeFailures.WithLabelValues(res.t.name).Inc()
	b.log.Warn("revocation not verified; will retry", "grant", g.ID, "target", res.t.name, "attempt", g.Attempts, "next", g.DueAt, "err", msg)
}

// backoff returns the wait before attempt n (n ≥ 1): min(max, base·2^(n-1)),
// jittered uniformly into its upper half so retries of many grants spread.
func backoff(base, maxWait time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// mergeCheckpoints folds a verification into the grant's checkpoints. It
// returns the names of the grant's checkpoints that this verification did
// not report: a grant is revoked only when every system that accepted the
// privilege was checked, so a checkpoint the connector declared at Grant
// and then left out of Verify is as good as residue.
func (e *engine) mergeCheckpoints(res *result, vr *connector.VerifyResponse, now time.Time) (unreported []string) {
	g := res.g
	byName := make(map[string]*lapse.Checkpoint, len(g.Checkpoints))
	for _, c := range g.Checkpoints {
		byName[c.Name] = c
	}
	res.checkpoints = res.checkpoints[:0]
	for _, r := range vr.Checkpoints {
		c := byName[r.Name]
		if c == nil {
			c = &lapse.Checkpoint{GrantID: g.ID, Name: r.Name, Kind: r.Kind, CreatedAt: now}
			g.Checkpoints = append(g.Checkpoints, c)
			byName[r.Name] = c
		}
		if c.RevokedAt.IsZero() {
			c.RevokedAt = now
		}
		ev, err := json.Marshal(r.Evidence)
		if err != nil {
			ev = []byte(`{"error":"evidence is not JSON-encodable"}`)
		}
		c.Evidence = ev
		c.Residue = r.Residue
		if r.Gone {
			c.VerifiedAt = now
		} else {
			c.VerifiedAt = time.Time{}
		}
		res.checkpoints = append(res.checkpoints, c)
	}
	reported := make(map[string]bool, len(vr.Checkpoints))
	for _, r := range vr.Checkpoints {
		reported[r.Name] = true
	}
	for _, c := range g.Checkpoints {
		if reported[c.Name] {
			continue
		}
		// An earlier round's verification does not count: the grant is
		// revoked when one verification saw every checkpoint gone.
		c.VerifiedAt = time.Time{}
		c.Residue = []string{"not reported by the connector's Verify"}
		res.checkpoints = append(res.checkpoints, c)
		unreported = append(unreported, c.Name)
	}
	return unreported
}

// commitLoop writes results in batches until results is closed.
//
// Claims first. A store with one writer (SQLite; lapse.SerialWriter) runs
// the claims of a wave of deadlines and the commits of its results one
// after the other, so a claim that queues behind result commits starts its
// connector calls late. While a wave is being claimed (e.claiming), the
// committer on such a store therefore holds results instead of writing
// them at once, and writes everything it holds when claiming has caught up
// (a cycle in which no claim came back full), when it holds maxHeldBatches
// batches, or when a held result reaches its hold limit (holdLimit: Lease/10
// after it arrived, or Lease/20 before its lease ends if that is sooner, so
// that it is written while the lease holds). Tick and stop hold nothing
// (e.noHold). On a store whose writers run in parallel (PostgreSQL) nothing
// is held: each result is written at once, as before.
//
// The trade-off: a grant's revoked state in the store, its metrics, its
// receipt, the callers waiting for it and the fenced grants it wakes, and
// the dispatch of a follow-up step, may come up to one hold later than its
// Verify. Its RevokedAt is still the moment Verify confirmed.
func (e *engine) commitLoop(results chan *result, done chan struct{}) {
	defer close(done)
	bs := e.b.cfg.BatchSize
	held := make([]*result, 0, bs)
	var limit time.Time // the earliest hold limit of the held results
	hold := func(r *result) {
		l := e.holdLimit(e.b.clock.Now(), r.leaseUntil)
		if len(held) == 0 || l.Before(limit) {
			limit = l
		}
		held = append(held, r)
	}
	flush := func() {
		for start := 0; start < len(held); start += bs {
			e.commit(held[start:min(start+bs, len(held))])
		}
		clear(held)
		held = held[:0]
	}
	recheck := time.NewTimer(holdRecheck)
	defer recheck.Stop()
	for {
		if len(held) == 0 {
			select {
			case r, ok := <-results:
				if !ok {
					return
				}
				hold(r)
			case <-e.kick:
				continue
			}
		} else {
			select {
			case r, ok := <-results:
				if !ok {
					flush()
					return
				}
				hold(r)
			case <-e.kick:
			case <-recheck.C:
			}
		}
		// Take what else has arrived: up to one batch when writing at
		// once, up to the hold's bound when holding.
		holding := e.holding()
		most := bs
		if holding {
			most = maxHeldBatches * bs
		}
		closed := false
	fill:
		for len(held) < most {
			select {
			case r, ok := <-results:
				if !ok {
					closed = true
					break fill
				}
				hold(r)
			default:
				break fill
			}
		}
		if !closed && !holding && e.serial && len(held) < most && e.noHold.Load() == 0 {
			closed = e.linger(results, hold, most-len(held))
		}
		now := e.b.clock.Now()
		if closed || e.shouldFlush(len(held), limit, now, holding) {
			flush()
			if closed {
				return
			}
			continue
		}
		recheck.Reset(max(min(limit.Sub(now), holdRecheck), 0))
	}
}

// linger waits, on a store with one writer, up to commitLinger of wall
// time for at most room more results to join a batch that is not full, and
// reports whether results was closed. When results trickle in from a slow target,
// committing each as it comes costs SQLite a transaction — WAL frames for
// the same index pages — per result or two; a few milliseconds gather them.
// It never delays a grant's RevokedAt (set when Verify confirmed), only its
// stored state by at most commitLinger.
func (e *engine) linger(results chan *result, hold func(*result), room int) (closed bool) {
	t := time.NewTimer(commitLinger)
	defer t.Stop()
	for ; room > 0; room-- {
		select {
		case r, ok := <-results:
			if !ok {
				return true
			}
			hold(r)
		case <-t.C:
			return false
		case <-e.kick:
			return false
		}
	}
	return false
}

// holding reports whether the committer may hold results now: the store
// has one writer, a wave is being claimed, and no one waits for every
// result to be written.
func (e *engine) holding() bool {
	return e.serial && e.claiming.Load() && e.noHold.Load() == 0
}

// holdLimit is the latest time a result that reached the committer at
// arrived may stay held: Lease/10 after it arrived, and no later than
// Lease/20 before the end of the lease its step ran under. (A step starts
// only with more than Lease/10 of its lease left, but a connector may
// overrun its deadline; then the limit has passed and the result is
// written at once.) A held result is thus written while its lease holds.
func (e *engine) holdLimit(arrived, leaseUntil time.Time) time.Time {
	l := arrived.Add(e.b.cfg.Lease / 10)
	if end := leaseUntil.Add(-e.b.cfg.Lease / 20); end.Before(l) {
		l = end
	}
	return l
}

// shouldFlush decides whether the committer writes the held results now
// (see commitLoop): always unless holding; while holding, once held
// reaches maxHeldBatches batches or now reaches limit, the earliest hold
// limit of the held results.
func (e *engine) shouldFlush(held int, limit, now time.Time, holding bool) bool {
	return !holding || held >= maxHeldBatches*e.b.cfg.BatchSize || !now.Before(limit)
}

// commit writes a batch of results in one transaction, retrying while the
// store is unavailable (revocation is never dropped: if this process gives
// up, the leases lapse and the work is claimed again), then dispatches the
// next steps.
func (e *engine) commit(batch []*result) {
	b := e.b
	versions := make([]int64, len(batch))
	for i, r := range batch {
		versions[i] = r.g.Version
	}
	conflict := make([]bool, len(batch))
	var err error
	for attempt := 1; ; attempt++ {
		err = b.store.Update(context.Background(), func(tx lapse.Tx) error {
			ctx := context.Background()
			for i, r := range batch {
				r.g.Version = versions[i]
				conflict[i] = false
				if err := tx.UpdateGrant(ctx, r.g); err != nil {
					if c := lapse.ErrorCode(err); c == lapse.ECONFLICT || c == lapse.ENOTFOUND {
						conflict[i] = true
						continue
					}
					return err
				}
				for _, c := range r.checkpoints {
					if err := tx.PutCheckpoint(ctx, c); err != nil {
						return err
					}
				}
				for _, ev := range r.events {
					if err := tx.AppendEvent(ctx, ev); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err == nil {
			break
		}
		// Give up only when every lease in the batch has lapsed: someone
		// else (or this process, later) will claim the grants again.
		if !b.clock.Now().Before(batch[0].g.LeaseUntil) && attempt > 3 {
			b.log.Error("cannot write results; leaving the grants to be claimed again", "grants", len(batch), "err", err)
			for range batch {
				e.inflight.Done()
			}
			return
		}
		b.log.Error("cannot write results; retrying", "grants", len(batch), "attempt", attempt, "err", err)
		time.Sleep(backoff(50*time.Millisecond, 5*time.Second, attempt))
	}
	for i, r := range batch {
		if conflict[i] {
			e.reconcile(r)
			continue
		}
		g := r.g
		switch g.State {
		case lapse.GrantRevoked:
			b.metrics.revoked(g, b.clock.Now())
			b.settled(g.ID)
			e.wakeFenced(g) // fence.go
		case lapse.GrantActive, lapse.GrantRevokeFailed, lapse.GrantVerifying:
			b.settled(g.ID)
		}
		if r.next != actNone {
			e.dispatch(r.t, g, r.next, r.fence, false)
		}
		e.inflight.Done()
	}
}

// reconcile handles a result whose write lost the compare-and-swap: someone
// wrote intent (a release, a revoke) while the connector was called. If the
// lease is still ours the fresh grant is planned again — a provision that
// raced a release is followed by its revocation — otherwise the new owner
// acts and this result is dropped.
func (e *engine) reconcile(r *result) {
	defer e.inflight.Done()
	b := e.b
	fresh, err := b.store.GetGrant(context.Background(), r.g.ID)
	if err != nil {
		return // the lease lapses and the grant is claimed again
	}
	if fresh.LeaseOwner != b.cfg.Owner || fresh.Fence != r.fence {
		b.metrics.fenced.Inc()
		return
	}
	if fresh.State == lapse.GrantScheduled {
		// Starting it needs the fence check of a claim: leave it to the
		// next one, when this lease ends.
		return
	}
	now := b.clock.Now()
	g2, act, ev := e.plan(fresh, now)
	if g2 != nil {
		err := b.store.Update(context.Background(), func(tx lapse.Tx) error {
			if err := tx.UpdateGrant(context.Background(), g2); err != nil {
				return err
			}
			if ev != nil {
				return tx.AppendEvent(context.Background(), ev)
			}
			return nil
		})
		if err != nil {
			return
		}
	} else {
		g2 = fresh
	}
	if act != actNone {
		e.dispatch(r.t, g2, act, r.fence, false)
	}
}

// sweepRequests expires pending requests whose wait is over. It runs at
// most once per poll interval.
func (e *engine) sweepRequests(ctx context.Context) {
	b := e.b
	now := b.clock.Now()
	if now.Sub(e.lastSweep) < b.cfg.PollInterval && !e.lastSweep.IsZero() && now.After(e.lastSweep) {
		return
	}
	e.lastSweep = now
	rs, err := b.store.ListRequests(ctx, lapse.RequestFilter{State: lapse.RequestPending, Limit: lapse.MaxListLimit})
	if err != nil {
		return
	}
	for _, r := range rs {
		if now.Before(r.ExpiresAt) {
			continue
		}
		_ = b.store.Update(ctx, func(tx lapse.Tx) error {
			r, err := tx.GetRequest(ctx, r.ID)
			if err != nil || r.State != lapse.RequestPending {
				return err
			}
			r.State = lapse.RequestExpired
			r.DecidedAt = now
			r.DecisionNote = "no decision before the pending timeout"
			if err := tx.UpdateRequest(ctx, r); err != nil {
				return err
			}
			return tx.AppendEvent(ctx, b.requestEvent(ctx, nil, lapse.EventRequestExpired, r, "expired", nil))
		})
	}
}

// safeError returns an error's text for the grant record and the log.
// Connectors must not put secrets in errors (the contract suite checks); the
// text is also bounded so a runaway message cannot bloat the store.
func safeError(err error) string {
	s := err.Error()
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
