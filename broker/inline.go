package broker

import (
	"context"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// provisionInline provisions an auto-approved grant in the caller's request,
// so a machine or a person gets credentials in one round trip. The grant was
// inserted already in state provisioning with this process's lease; if this
// process dies here, the lease lapses and the engine finishes the work.
// Credentials go straight to the caller and are never stored.
func (b *Broker) provisionInline(ctx context.Context, g *lapse.Grant) (*lapse.Grant, *lapse.Credentials, error) {
	t := b.targets[g.Target]
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		b.handOver(g, "request cancelled before provisioning")
		return g, nil, lapse.Errorf(lapse.EUNAVAILABLE, "request cancelled before provisioning; the grant will be cleaned up")
	}
	t.inflight.Add(1)
	now := b.clock.Now()
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.LeaseUntil.Add(-b.engine.leaseMargin()).Sub(now))
	start := time.Now()
	resp, err := t.conn.Grant(callCtx, &connector.GrantRequest{GrantID: g.ID, Principal: g.Principal, Entitlement: g.Entitlement, Spec: b.engine.spec(g), MaxUses: b.engine.maxUses(g), ExpiresAt: g.ExpiresAt})
	cancel()
	t.observe(time.Since(start))
	b.metrics.call(t.name, "grant", err, time.Since(start))
	<-t.sem
	t.inflight.Add(-1)

	res := &result{t: t, g: g, fence: g.Fence}
	if err == nil {
		// Credentials are handed over now, so nothing is sealed for later.
		secret := resp.Secret
		resp.Secret = nil
		err = b.engine.applyGrant(g, res, resp, b.clock.Now())
		if err == nil {
			g.CredentialsClaimed = true
			res.events = append(res.events, b.grantEvent(context.Background(), lapse.EventGrantProvisioned, g, "active", map[string]any{"checkpoints": len(res.checkpoints), "expires_at": g.ExpiresAt, "inline": true}))
			werr := b.writeResult(ctx, res)
			if werr == nil {
				creds := &lapse.Credentials{GrantID: g.ID, Target: g.Target, ExpiresAt: g.ExpiresAt, Secret: secret, Info: g.Info}
				return g, creds, nil
			}
			// The privilege exists but its record could not be written:
			// hand it to the engine to revoke, and tell the caller nothing
			// was granted.
			clear(secret)
			b.handOver(g, "could not record the grant: "+safeError(werr))
			return g, nil, lapse.Errorf(lapse.EUNAVAILABLE, "the grant could not be recorded; it is being revoked")
		}
	}
	b.handOver(g, safeError(err))
	return g, nil, lapse.Errorf(lapse.EUNAVAILABLE, "target %s could not provision the grant; nothing was left behind", g.Target)
}

// writeResult commits one inline result.
func (b *Broker) writeResult(ctx context.Context, res *result) error {
	v := res.g.Version
	return b.store.Update(context.WithoutCancel(ctx), func(tx lapse.Tx) error {
		res.g.Version = v
		if err := tx.UpdateGrant(ctx, res.g); err != nil {
			return err
		}
		for _, c := range res.checkpoints {
			if err := tx.PutCheckpoint(ctx, c); err != nil {
				return err
			}
		}
		for _, ev := range res.events {
			if err := tx.AppendEvent(ctx, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// handOver records that an inline provisioning failed and releases the
// grant to the engine for a verified revocation of whatever was made. If
// even that write fails, the lease lapses and the engine finds the grant in
// provisioning past its lease, and revokes it then.
func (b *Broker) handOver(g *lapse.Grant, why string) {
	ctx := context.Background()
	for attempt := 0; attempt < 3; attempt++ {
		err := b.store.Update(ctx, func(tx lapse.Tx) error {
			cur, err := tx.GetGrant(ctx, g.ID)
			if err != nil {
				return err
			}
			now := b.clock.Now()
			cur.Attempts++
			cur.LastError = why
			cur.State = lapse.GrantRevoking
			cur.EndReason = lapse.EndProvisionFailed
			cur.RevokeStartedAt = now
			cur.DueAt = now
			cur.LeaseOwner, cur.LeaseUntil = "", time.Time{}
			if err := tx.UpdateGrant(ctx, cur); err != nil {
				return err
			}
			*g = *cur
			return tx.AppendEvent(ctx, b.grantEvent(ctx, lapse.EventGrantProvisionFailed, cur, "failed", map[string]any{"error": why}))
		})
		if err == nil {
			b.nudge()
			return
		}
	}
	b.log.Error("could not hand a failed grant to the engine; it will be revoked when its lease lapses", "grant", g.ID)
}
