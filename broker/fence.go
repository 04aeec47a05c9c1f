package broker

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// The task fence (docs/agents.md): with `fence: wait` or `fence: fail` an
// entitlement allows a principal one grant at a time, and the next one
// only once the previous grant's revocation is verified — access
// disappears before the next task can begin. A new grant waits, scheduled
// and not provisioned (wait), or the request is refused with ECONFLICT and
// reason lapse.ReasonFenced (fail; and always for the machine lane, which
// never waits).
//
// The rule, applied under the pair's lock (Tx.LockGrantsOf) wherever a
// grant could start — filing an auto-approved request, and the engine
// taking a scheduled grant to provisioning: a grant may start only when no
// other grant of the same principal and entitlement is live (provisioning
// up to revoke_failed) and none created before it is still scheduled. The
// earliest waiting grant therefore goes first, and two grants of one pair
// are never live at once, on one replica or many.

// fenceRecheck is how often a waiting grant looks at its fence again when
// nothing woke it: a fallback, as a verified revocation wakes the grants it
// fenced (wakeFenced).
const fenceRecheck = 5 * time.Second

// fencedNote starts the LastError of a grant that waits at its fence.
const fencedNote = "fenced: "

// fence is the fence check when a request for e by principal is filed:
// whether an unrevoked grant of the pair exists that a new grant must wait
// for. It returns ECONFLICT for fence fail, and for an auto-approved
// request from the machine lane, which cannot wait. It takes the pair's
// lock for the rest of the transaction.
func (b *Broker) fence(ctx context.Context, tx lapse.Tx, e *lapse.Entitlement, principal string, auto bool) (bool, error) {
	if e.Fence == lapse.FenceNone {
		return false, nil
	}
	if err := tx.LockGrantsOf(ctx, principal, e.Name); err != nil {
		return false, err
	}
	gs, err := tx.UnrevokedGrants(ctx, principal, e.Name)
	if err != nil || len(gs) == 0 {
		return false, err
	}
	if e.Fence == lapse.FenceFail || (auto && lapse.ChannelFrom(ctx) == lapse.ChannelMachine) {
		return false, fencedError(e, gs[0])
	}
	return true, nil
}

// inlineOrScheduled sets up a new auto-approved grant: provisioned in the
// caller's request, holding the lease from the start (the caller gets
// credentials in one round trip, and if this process dies the lease lapses
// and the engine finishes or undoes the work) — or, when its fence holds
// it, scheduled for the engine, which provisions it once the fence opens.
func inlineOrScheduled(g *lapse.Grant, fenced bool, cfg EngineConfig, now time.Time) {
	if fenced || g.StartsAt.After(now) {
		// Waiting for a fence, or for its scheduled start: the engine
		// takes it from here.
		g.State = lapse.GrantScheduled
		g.LeaseOwner, g.LeaseUntil = "", time.Time{}
		g.DueAt = now
		if g.StartsAt.After(now) {
			g.DueAt = g.StartsAt
		}
		return
	}
	g.State = lapse.GrantProvisioning
	g.LeaseOwner = cfg.Owner
	g.LeaseUntil = now.Add(cfg.Lease)
	g.DueAt = g.LeaseUntil
}

// fenceStarts reports whether the engine would take the claimed grant g to
// provisioning now, through a fence.
func (e *engine) fenceStarts(g *lapse.Grant, now time.Time) bool {
	if g.State != lapse.GrantScheduled || now.Before(g.StartsAt) || !now.Before(g.ExpiresAt) {
		return false
	}
	ent := e.b.entitlement(g.Entitlement)
	return ent != nil && ent.Fence != lapse.FenceNone
}

// fences returns, for the claimed grants that would start now through a
// fence, the grant each must wait for (those that may start are absent).
// It takes the pairs' locks in a fixed order, before the claim transaction
// appends any event.
func (e *engine) fences(ctx context.Context, tx lapse.Tx, gs []*lapse.Grant, now time.Time) (map[string]*lapse.Grant, error) {
	type pair struct{ principal, entitlement string }
	var starting []*lapse.Grant
	var pairs []pair
	for _, g := range gs {
		if e.fenceStarts(g, now) {
			starting = append(starting, g)
			pairs = append(pairs, pair{g.Principal.ID, g.Entitlement})
		}
	}
	if len(starting) == 0 {
		return nil, nil
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		return cmp.Or(strings.Compare(a.principal, b.principal), strings.Compare(a.entitlement, b.entitlement))
	})
	pairs = slices.Compact(pairs)
	others := make(map[pair][]*lapse.Grant, len(pairs))
	for _, p := range pairs {
		if err := tx.LockGrantsOf(ctx, p.principal, p.entitlement); err != nil {
			return nil, err
		}
		list, err := tx.UnrevokedGrants(ctx, p.principal, p.entitlement)
		if err != nil {
			return nil, err
		}
		others[p] = list
	}
	out := map[string]*lapse.Grant{}
	for _, g := range starting {
		if b := blocker(g, others[pair{g.Principal.ID, g.Entitlement}]); b != nil {
			out[g.ID] = b
		}
	}
	return out, nil
}

// blocker returns the grant that g must wait for: any other grant of the
// pair that is live, or one created before g that is still scheduled.
func blocker(g *lapse.Grant, pair []*lapse.Grant) *lapse.Grant {
	for _, o := range pair {
		if o.ID == g.ID {
			continue
		}
		if o.State != lapse.GrantScheduled {
			return o
		}
		if o.CreatedAt.Before(g.CreatedAt) || (o.CreatedAt.Equal(g.CreatedAt) && o.ID < g.ID) {
			return o
		}
	}
	return nil
}

// fenceWait keeps the claimed grant g scheduled behind prev: due again at
// the recheck (or its deadline, whichever is first), its lease released.
// It returns the event that records the wait the first time, else nil.
func (e *engine) fenceWait(g, prev *lapse.Grant, now time.Time) *lapse.Event {
	first := !strings.HasPrefix(g.LastError, fencedNote)
	g.LastError = fmt.Sprintf("%swaits until grant %s is revoked and verified (it is %s)", fencedNote, prev.ID, prev.State)
	g.DueAt = now.Add(fenceRecheck)
	if g.ExpiresAt.Before(g.DueAt) {
		g.DueAt = g.ExpiresAt // then the deadline ends the wait
	}
	g.LeaseOwner, g.LeaseUntil = "", time.Time{}
	if !first {
		return nil
	}
	return e.b.grantEvent(context.Background(), lapse.EventGrantFenced, g, "waiting", map[string]any{"waits_for": prev.ID, "its_state": prev.State})
}

// wakeFenced makes the grants that wait behind the now revoked grant g due
// at once, so the next one starts without waiting for its recheck. It
// takes no pair lock: the claim that starts a woken grant decides under
// the lock.
func (e *engine) wakeFenced(g *lapse.Grant) {
	b := e.b
	ent := b.entitlement(g.Entitlement)
	if ent == nil || ent.Fence == lapse.FenceNone {
		return
	}
	ctx := context.Background()
	woke := false
	err := b.store.Update(ctx, func(tx lapse.Tx) error {
		woke = false
		now := b.clock.Now()
		gs, err := tx.UnrevokedGrants(ctx, g.Principal.ID, g.Entitlement)
		if err != nil {
			return err
		}
		for _, w := range gs {
			if w.State != lapse.GrantScheduled || !w.DueAt.After(now) || now.Before(w.StartsAt) || now.Before(w.LeaseUntil) {
				continue
			}
			w.DueAt = now
			switch err := tx.UpdateGrant(ctx, w); lapse.ErrorCode(err) {
			case "":
				woke = true
			case lapse.ECONFLICT, lapse.ENOTFOUND:
				// Claimed meanwhile: whoever holds it decides.
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.log.Warn("cannot wake the grants a revoked grant fenced; they look again at their recheck", "grant", g.ID, "err", err)
		return
	}
	if woke {
		b.nudge()
	}
}
