package broker

import (
	"context"
	"time"

	"github.com/lapsehq/lapse"
)

// The canary is the broker's own test of a target (DESIGN.md §5,
// "Session-level tests"): package zsp grants an entitlement to the canary
// principal, uses it, holds a session, releases it and checks that access
// is gone. Its grants skip the request lanes and human approval, so the
// bypass is kept narrow:
//
//   - CanaryGrant is not part of lapse.Service. The HTTP API, the MCP
//     server and the CLI's client commands reach the broker only through
//     that interface, so no caller of theirs can reach it, whatever its
//     credential or scopes. Only code in the process that holds the store
//     and the sealing key (lapse server's scheduled canary, `lapse zsp
//     test` run with the configuration) can call it — and that code could
//     write any grant into the store anyway.
//   - The grantee is always CanaryPrincipal; the caller cannot choose who
//     receives the privilege, so it cannot be used to give anyone else
//     access without approval.
//   - The grant is short (at most MaxCanaryDuration, never more than the
//     entitlement's own maximum) and is provisioned inline: its
//     credentials go to the caller and are never stored, so there is
//     nothing for anyone to claim.
//   - It is an administrative act on the record: the request, its
//     decision ("canary", no approval) and the grant are events like any
//     other, on channel system, with the canary principal as actor, and
//     the audit gate applies (no canary grant while the log is degraded).

// CanaryPrincipal is the grantee of every canary grant.
var CanaryPrincipal = lapse.Principal{ID: "lapse:canary", Kind: lapse.KindService, Name: "Lapse zero-standing-privilege canary"}

// Canary grant durations.
const (
	DefaultCanaryDuration = 2 * time.Minute
	MaxCanaryDuration     = 10 * time.Minute
)

// CanaryInput asks for one canary grant.
type CanaryInput struct {
	// Entitlement names the catalog entry to grant.
	Entitlement string
	// Duration is the grant's length; 0 means DefaultCanaryDuration. It is
	// capped by MaxCanaryDuration and by the entitlement's max_duration.
	Duration time.Duration
	// Reason is recorded on the request.
	Reason string
}

// canaryContext is ctx acting as the canary principal on channel system.
func canaryContext(ctx context.Context) (context.Context, *lapse.Principal) {
	p := CanaryPrincipal
	p.Scopes = []string{lapse.ScopeRequest, lapse.ScopeRead}
	return lapse.NewContext(lapse.WithChannel(ctx, lapse.ChannelSystem), &p), &p
}

// CanaryGrant grants in.Entitlement to CanaryPrincipal without approval and
// provisions it at once, returning the grant and its credentials (never
// stored). See the comment at the top of this file for why this bypass is
// safe.
// Returns ENOTFOUND for an unknown entitlement, EINVALID for a bad
// duration, EUNAVAILABLE (possibly with reason audit_degraded) if nothing
// can be granted now; on a provisioning failure the grant is returned
// with the error and is being revoked (see SettleCanary).
func (b *Broker) CanaryGrant(ctx context.Context, in CanaryInput) (*lapse.Grant, *lapse.Credentials, error) {
	e := b.entitlement(in.Entitlement)
	if e == nil {
		return nil, nil, lapse.FieldErrorf(lapse.ENOTFOUND, "entitlement", "no entitlement named %s", in.Entitlement)
	}
	d := in.Duration
	if d == 0 {
		d = DefaultCanaryDuration
	}
	if d < time.Second || d > MaxCanaryDuration {
		return nil, nil, lapse.FieldErrorf(lapse.EINVALID, "duration", "a canary grant lasts between 1s and %s", MaxCanaryDuration)
	}
	d = min(d, e.MaxDuration.D())
	reason := in.Reason
	if reason == "" {
		reason = "zero-standing-privilege canary (lapse zsp)"
	}
	if err := checkText("reason", reason, lapse.MaxReasonLength); err != nil {
		return nil, nil, err
	}
	if err := b.auditOpen(ctx); err != nil {
		return nil, nil, err
	}
	ctx, p := canaryContext(ctx)
	now := b.clock.Now()
	r := &lapse.Request{
		ID:           lapse.NewID(lapse.PrefixRequest, now),
		Requester:    subject(p),
		Entitlement:  e.Name,
		Duration:     lapse.Duration(d),
		Reason:       reason,
		Channel:      lapse.ChannelSystem,
		State:        lapse.RequestApproved,
		CreatedAt:    now,
		ExpiresAt:    now,
		DecidedAt:    now,
		DecisionNote: "canary: an administrative act of the broker; no approval",
	}
	r.Hash = r.ComputeHash()
	g := b.newGrant(r, e, now)
	r.GrantID = g.ID
	g.State = lapse.GrantProvisioning
	g.LeaseOwner = b.cfg.Owner
	g.LeaseUntil = now.Add(b.cfg.Lease)
	g.DueAt = g.LeaseUntil
	err := b.store.Update(ctx, func(tx lapse.Tx) error {
		if err := tx.InsertRequest(ctx, r); err != nil {
			return err
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestCreated, r, "pending", map[string]any{
			"entitlement": r.Entitlement, "duration": r.Duration.String(), "reason": r.Reason, "hash": r.Hash, "canary": true,
		})); err != nil {
			return err
		}
		if err := tx.InsertGrant(ctx, g); err != nil {
			return err
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestDecided, r, string(lapse.RequestApproved), map[string]any{"rule": "canary"})); err != nil {
			return err
		}
		return appendEvent(ctx, tx, b.grantEvent(ctx, lapse.EventGrantCreated, g, "provisioning", map[string]any{"expires_at": g.ExpiresAt, "canary": true}))
	})
	if err != nil {
		return nil, nil, storeErr("create canary grant", err)
	}
	return b.provisionInline(ctx, g)
}

// ReleaseCanary ends a canary grant and carries out its revocation in the
// caller, returning once one attempt to revoke and verify has finished:
// the grant is then revoked, or revoke_failed with the residue in its
// last error (the engine keeps retrying it, as any other). It does the
// work itself rather than waiting for the engine, so that `lapse zsp
// test` needs no engine of its own: an engine would act on every due
// grant of the store, with whatever connector configuration the test was
// given. It acts only while it holds the grant's lease, so an engine that
// claimed the grant first does the work instead, and ReleaseCanary waits
// for it.
// Returns ENOTFOUND if id is not a canary grant.
func (b *Broker) ReleaseCanary(ctx context.Context, id string) (*lapse.Grant, error) {
	cctx, p := canaryContext(ctx)
	g, err := b.end(cctx, p, id, lapse.EndReleased, "", false, true)
	if err != nil {
		return nil, err
	}
	return b.SettleCanary(ctx, g.ID)
}

// SettleCanary carries out the pending revocation of a canary grant (one
// whose provisioning failed, or that ReleaseCanary ended), as
// ReleaseCanary does.
// Returns ENOTFOUND if id is not a canary grant.
func (b *Broker) SettleCanary(ctx context.Context, id string) (*lapse.Grant, error) {
	start, err := b.store.GetGrant(ctx, id)
	if err != nil {
		return nil, storeErr("get grant", err)
	}
	if start.Principal.ID != CanaryPrincipal.ID {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no canary grant %s", id)
	}
	attempts := start.Attempts
	for {
		g, claimed, err := b.claimOne(ctx, id, attempts)
		if err != nil {
			return nil, err
		}
		switch {
		case g.State == lapse.GrantRevoked:
			return g, nil
		case g.State == lapse.GrantRevokeFailed && g.Attempts > attempts:
			return g, nil
		case !g.State.Live() || g.State == lapse.GrantActive || g.State == lapse.GrantProvisioning && !claimed:
			// Nothing to revoke yet (not ended, or still being
			// provisioned by someone else): wait for it.
		case claimed:
			if err := b.revokeClaimed(ctx, g); err != nil {
				b.log.Warn("canary revocation step not written; retrying", "grant", id, "err", err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return b.store.GetGrant(context.WithoutCancel(ctx), id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// claimOne takes the lease of one grant that is ending, if its lease is
// free or has lapsed, exactly as a claim by the engine would (a new fence,
// due again when the lease ends). A grant in revoke_failed is taken only
// if it has failed no more than attempts times (this run has not tried
// yet). It returns the grant as read, and whether it is now this
// process's to act on.
func (b *Broker) claimOne(ctx context.Context, id string, attempts int) (*lapse.Grant, bool, error) {
	var out *lapse.Grant
	claimed := false
	err := b.store.Update(ctx, func(tx lapse.Tx) error {
		claimed = false
		g, err := tx.GetGrant(ctx, id)
		if err != nil {
			return err
		}
		out = g
		now := b.clock.Now()
		switch {
		case g.State == lapse.GrantRevoking, g.State == lapse.GrantVerifying:
		case g.State == lapse.GrantRevokeFailed && g.Attempts <= attempts:
		default:
			return nil // nothing to do, or this run's attempt already failed
		}
		if g.LeaseOwner != "" && now.Before(g.LeaseUntil) {
			return nil // someone (perhaps this process's engine) is acting
		}
		g.LeaseOwner = b.cfg.Owner
		g.LeaseUntil = now.Add(b.cfg.Lease)
		g.DueAt = g.LeaseUntil
		g.Fence++
		if err := tx.UpdateGrant(ctx, g); err != nil {
			return err
		}
		claimed = true
		return nil
	})
	if err != nil {
		return nil, false, storeErr("claim canary grant", err)
	}
	if claimed {
		b.engine.unreserve(id) // this claim supersedes a reservation here (reserve.go)
	}
	return out, claimed, nil
}

// revokeClaimed runs one revocation step on a grant whose lease this
// process holds and writes its result, as the engine's step and committer
// do.
func (b *Broker) revokeClaimed(ctx context.Context, g *lapse.Grant) error {
	t := b.targets[g.Target]
	if t == nil {
		return lapse.Errorf(lapse.EUNAVAILABLE, "target %s is not configured here", g.Target)
	}
	e := b.engine
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	t.inflight.Add(1)
	now := b.clock.Now()
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.LeaseUntil.Add(-e.leaseMargin()).Sub(now))
	res := &result{t: t, g: g, fence: g.Fence}
	e.revoke(callCtx, t, res, g.State != lapse.GrantVerifying)
	cancel()
	<-t.sem
	t.inflight.Add(-1)
	if err := b.writeResult(ctx, res); err != nil {
		return err
	}
	if g.State == lapse.GrantRevoked {
		b.metrics.revoked(g, b.clock.Now())
	}
	b.settled(g.ID)
	return nil
}

// RecordCanary appends the outcome of one canary run to the log: typ is
// lapse.EventCanaryPassed or lapse.EventCanaryFailed, grantID the canary
// grant ("" if none was made; the event then belongs to no grant's
// history), data the measurements (no secrets).
func (b *Broker) RecordCanary(ctx context.Context, typ, grantID string, data map[string]any) error {
	ctx, p := canaryContext(ctx)
	outcome := "passed"
	if typ == lapse.EventCanaryFailed {
		outcome = "failed"
	}
	ev := &lapse.Event{Time: b.clock.Now(), Type: typ, ActorID: p.ID, ActorKind: p.Kind, Channel: lapse.ChannelSystem,
		Outcome: outcome, PolicyVersion: b.catalog.Load().version, Data: eventData(data)}
	if grantID != "" {
		g, err := b.store.GetGrant(ctx, grantID)
		if err != nil {
			return storeErr("record canary", err)
		}
		if g.Principal.ID != CanaryPrincipal.ID {
			return lapse.Errorf(lapse.ENOTFOUND, "no canary grant %s", grantID)
		}
		ev.GrantID, ev.RequestID, ev.RequestHash = g.ID, g.RequestID, g.RequestHash
	}
	err := b.store.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, ev) })
	return storeErr("record canary", err)
}
