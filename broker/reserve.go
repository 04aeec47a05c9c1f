package broker

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/lapsehq/lapse"
)

// Reserved expiries.
//
// When thousands of deadlines fall in the same second, claiming them after
// the deadline puts every claim — one write per grant, on SQLite's single
// writer one after the other — between the deadline and the connector
// calls, and the last grant of the wave is revoked only when the last
// claim has been written. So the engine claims an active grant's expiry
// ahead, EngineConfig.ClaimAhead before its deadline (Store.ClaimExpiring):
// the grant stays active, and the lease, which runs from the deadline, makes
// this process the only one that acts on it. When the deadline comes, the
// engine revokes it at once (fireReserved), and the step's result records
// the start of the revocation and its outcome together.
//
// Why the intent is still durable before the connector is called
// (DESIGN §2): an expiry's intent is the deadline itself, in the store
// since the grant became active. If this process dies at any point after
// the deadline, the grant is active and past its deadline in the store, and
// whoever claims it when the lease ends revokes it (Revoke is idempotent).
//
// What may change a reserved grant before its deadline, and how:
//   - a release, a revocation or a mandate's end supersedes the reservation
//     (supersedeReservation): the lease is freed so the grant is claimed at
//     once; the ordinary claim of a reserved grant drops the reservation
//     (unreserve), and on another replica the reserver's write fails its
//     compare-and-swap;
//   - an extension is refused: the expiry is already scheduled
//     (extend.go);
//   - from the deadline on, the expiry is under way and is the grant's end:
//     a release or revocation then adds nothing.
//
// A graceful stop frees the reservations that have not fired
// (releaseReservations), so a restart does not wait for their leases.

// reservations are the expiries this process reserved and has not fired,
// per target in deadline order.
type reservations struct {
	mu    sync.Mutex
	byTgt map[*target][]*lapse.Grant
	live  map[string]bool // the IDs in byTgt not dropped since
}

// maxReservedBatches bounds how many grants a target may have reserved at
// once, in batches (BatchSize each): they are held in memory until their
// deadline.
const maxReservedBatches = 32

func (r *reservations) add(t *target, gs []*lapse.Grant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byTgt == nil {
		r.byTgt, r.live = map[*target][]*lapse.Grant{}, map[string]bool{}
	}
	list := append(r.byTgt[t], gs...)
	// Each claim returns its grants in deadline order, but a grant made
	// with a short duration may fall before one reserved earlier.
	slices.SortStableFunc(list, func(a, b *lapse.Grant) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	r.byTgt[t] = list
	for _, g := range gs {
		r.live[g.ID] = true
	}
}

// drop forgets a reservation: the grant was claimed or its end was asked
// for, so the reservation no longer stands. It reports whether there was
// one.
func (r *reservations) drop(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.live[id] {
		return false
	}
	delete(r.live, id)
	return true
}

// count is how many grants t has reserved, dropped ones included until
// their deadline passes.
func (r *reservations) count(t *target) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byTgt[t])
}

// due removes the reservations whose deadline is at or before now and
// returns, per target, those that were not dropped.
func (r *reservations) due(now time.Time) (out map[*target][]*lapse.Grant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for t, list := range r.byTgt {
		i := 0
		for i < len(list) && !list[i].ExpiresAt.After(now) {
			if g := list[i]; r.live[g.ID] {
				if out == nil {
					out = map[*target][]*lapse.Grant{}
				}
				out[t] = append(out[t], g)
				delete(r.live, g.ID)
			}
			i++
		}
		clear(list[:i])
		r.byTgt[t] = list[i:]
	}
	return out
}

// next is the earliest deadline reserved, or ok=false when none is.
func (r *reservations) next() (t time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, list := range r.byTgt {
		if len(list) > 0 && (!ok || list[0].ExpiresAt.Before(t)) {
			t, ok = list[0].ExpiresAt, true
		}
	}
	return t, ok
}

// takeAll removes and returns every reservation not dropped.
func (r *reservations) takeAll() []*lapse.Grant {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*lapse.Grant
	for t, list := range r.byTgt {
		for _, g := range list {
			if r.live[g.ID] {
				out = append(out, g)
			}
		}
		delete(r.byTgt, t)
	}
	clear(r.live)
	return out
}

// reserve claims ahead the expiries that fall within ClaimAhead of now,
// for every target with room. It reports how many it reserved and whether
// a claim came back full (more may be waiting).
//
// A reservation is a write even when it finds nothing, and on SQLite every
// write waits for the one writer, so an engine that found nothing looks
// again only after reservePause: a deadline is then reserved at least
// seven eighths of ClaimAhead before it comes, unless the whole grant is
// shorter than the pause.
func (e *engine) reserve(ctx context.Context, now time.Time) (n int, more bool, err error) {
	b := e.b
	if b.cfg.ClaimAhead <= 0 || e.noReserve.Load() {
		return 0, false, nil
	}
	if !e.reserveMore && !e.lastReserve.IsZero() && now.After(e.lastReserve) && now.Sub(e.lastReserve) < e.reservePause() {
		return 0, false, nil
	}
	e.lastReserve = now
	defer func() { e.reserveMore = more }()
	for _, t := range b.targetList {
		limit := min(e.reserveLimit(t)-e.reserved.count(t), b.cfg.BatchSize)
		if limit <= 0 {
			continue
		}
		gs, err := b.store.ClaimExpiring(ctx, lapse.ClaimInput{
			Owner: b.cfg.Owner, Now: now, Lease: b.cfg.Lease, Limit: limit, Target: t.name, Ahead: b.cfg.ClaimAhead,
		})
		if err != nil {
			return n, more, err
		}
		e.reserved.add(t, gs)
		b.metrics.reservedGrants.Add(float64(len(gs)))
		n += len(gs)
		more = more || len(gs) == limit
	}
	return n, more, nil
}

// unreserve drops the reservation of a grant, if this process holds one:
// the grant was claimed, or its end was asked for here.
func (e *engine) unreserve(id string) {
	if e.reserved.drop(id) {
		e.b.metrics.reservedGrants.Dec()
	}
}

// reservePause is the least time between two reservations that found
// nothing more: an eighth of ClaimAhead, at most PollInterval.
func (e *engine) reservePause() time.Duration {
	return min(e.b.cfg.ClaimAhead/8, e.b.cfg.PollInterval)
}

// reserveLimit is how many grants of t may be reserved at once: as many
// expiries as t gets through in half a lease at its observed speed — each
// is two connector calls, Revoke and Verify; all of them start at their
// deadline, and a step that has not started when its lease nears its end
// is left to the next claim — at least its concurrency, at most
// maxReservedBatches batches. A wave larger than that is claimed at its
// deadline, paced by the target's capacity, as before reservations.
func (e *engine) reserveLimit(t *target) int {
	per := time.Duration(t.callNanos.Load())
	if per <= 0 {
		per = time.Millisecond
	}
	n := int(int64(cap(t.sem)) * int64(e.b.cfg.Lease/2) / int64(2*per))
	return min(max(n, cap(t.sem)), maxReservedBatches*e.b.cfg.BatchSize)
}

// reserveRoom reports whether some target may reserve more.
func (e *engine) reserveRoom() bool {
	if e.b.cfg.ClaimAhead <= 0 || e.noReserve.Load() {
		return false
	}
	for _, t := range e.b.targetList {
		if e.reserved.count(t) < e.reserveLimit(t) {
			return true
		}
	}
	return false
}

// fireReserved starts the revocation of every reserved grant whose
// deadline has come. It reports how many.
func (e *engine) fireReserved(now time.Time) int {
	n := 0
	for t, gs := range e.reserved.due(now) {
		for _, g := range gs {
			e.dispatch(t, g, actExpire, g.Fence, overdueSince(g).Before(now.Add(-e.b.cfg.OverdueGrace)))
		}
		n += len(gs)
	}
	if n > 0 {
		e.b.metrics.reservedGrants.Sub(float64(n))
	}
	return n
}

// expire is the step of a reserved grant at its deadline: it records the
// start of the revocation in the result, which is written with the
// outcome, and revokes.
func (e *engine) expire(ctx context.Context, t *target, res *result) {
	g := res.g
	g.State = lapse.GrantRevoking
	if g.EndReason == "" {
		g.EndReason = lapse.EndExpired
	}
	if g.RevokeStartedAt.IsZero() {
		g.RevokeStartedAt = e.b.clock.Now()
	}
	res.events = append(res.events, e.b.grantEvent(context.Background(), lapse.EventGrantRevokeStarted, g, string(g.EndReason),
		map[string]any{"note": "deadline reached", "reserved": true}))
	e.revoke(ctx, t, res, true)
}

// releaseReservations frees the reservations that have not fired, so that
// whoever runs next claims those grants at their deadline rather than when
// the leases end. A grant that changed since it was reserved is left as it
// is (its version moved). Failing here loses nothing: the leases end.
func (e *engine) releaseReservations(ctx context.Context) {
	b := e.b
	gs := e.reserved.takeAll()
	b.metrics.reservedGrants.Set(0)
	for lo := 0; lo < len(gs); lo += b.cfg.BatchSize {
		batch := gs[lo:min(lo+b.cfg.BatchSize, len(gs))]
		err := b.store.Update(ctx, func(tx lapse.Tx) error {
			for _, g := range batch {
				free := *g
				free.LeaseOwner, free.LeaseUntil, free.DueAt = "", time.Time{}, g.ExpiresAt
				if err := tx.UpdateGrant(ctx, &free); err != nil && lapse.ErrorCode(err) != lapse.ECONFLICT && lapse.ErrorCode(err) != lapse.ENOTFOUND {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.log.Warn("could not free reserved expiries; they are claimed when their leases end", "grants", len(batch), "err", err)
		}
	}
}

// supersedeReservation prepares an active grant for an end asked for
// before its deadline (a release, a revocation, a mandate's end) when its
// expiry may be reserved. Before the deadline the new end supersedes the
// reservation: the lease is freed so that the grant is claimed at once.
// From the deadline on, a reserved expiry is under way and is the grant's
// end: supersedeReservation reports true, and the caller adds nothing.
func supersedeReservation(g *lapse.Grant, now time.Time) (underWay bool) {
	if !reservedExpiry(g, now) {
		return false
	}
	if !now.Before(g.ExpiresAt) {
		return true
	}
	g.LeaseOwner, g.LeaseUntil = "", time.Time{}
	return false
}

// reservedExpiry reports whether g's expiry is reserved by a live lease.
func reservedExpiry(g *lapse.Grant, now time.Time) bool {
	return g.State == lapse.GrantActive && g.LeaseOwner != "" && now.Before(g.LeaseUntil)
}

// holdLeases takes the store's engine lock (lapse.EngineLocker) for as
// long as this process may hold leases, and returns the function that
// releases it. It reports false when the store has such a lock and it
// could not be taken: another process starting then could free this one's
// leases as a dead process's, so such a process must not reserve
// expiries. On a store without the lock (PostgreSQL) it reports true.
func (b *Broker) holdLeases(ctx context.Context) (unlock func(), locked bool) {
	l, ok := b.store.(lapse.EngineLocker)
	if !ok {
		return func() {}, true
	}
	freed, unlock, err := l.LockEngine(ctx, b.clock.Now())
	switch {
	case unlock == nil && err != nil:
		b.log.Warn("engine lock not taken: expiries are claimed at their deadline, not reserved ahead", "err", err)
		return func() {}, false
	case unlock == nil:
		return func() {}, true
	case err != nil:
		b.log.Warn("engine lock taken, but the leases an ended process left could not be freed; they are claimed when they end", "err", err)
	case freed > 0:
		b.log.Info("no other engine runs on this store: freed the leases an ended process left", "grants", freed)
	}
	return unlock, true
}

// HoldLeases takes the store's engine lock for a process that holds
// leases without running the engine (lapse zsp test): while it is held, no
// engine that starts frees those leases as a dead process's. Call the
// returned function when done. Run takes the lock itself.
func (b *Broker) HoldLeases(ctx context.Context) (release func()) {
	release, _ = b.holdLeases(ctx)
	return release
}
