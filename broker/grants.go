package broker

import (
	"context"
	"slices"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
)

// mayView reports whether p may see grant g: its grantee, the sponsor an
// agent grantee acts for, or anyone who may approve or revoke.
func mayView(p *lapse.Principal, g *lapse.Grant) bool {
	return g.Principal.ID == p.ID || slices.Contains(g.Principal.Act, p.ID) || p.HasScope(lapse.ScopeApprove) || p.HasScope(lapse.ScopeRevoke)
}

// GetGrant returns a grant with its checkpoints and its history.
func (b *Broker) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a grant ID")
	}
	g, err := b.store.GetGrant(ctx, id)
	if err != nil {
		return nil, storeErr("get grant", err)
	}
	if !mayView(p, g) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no grant %s", id)
	}
	g.Events, err = b.store.ListEvents(ctx, lapse.EventFilter{GrantID: id, Limit: lapse.MaxListLimit})
	if err != nil {
		return nil, storeErr("list grant events", err)
	}
	return g, nil
}

// ListGrants returns the grants the caller may see; callers who may neither
// approve nor revoke see only their own.
func (b *Broker) ListGrants(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if f.Limit < 0 || f.Limit > lapse.MaxListLimit {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit must be between 1 and %d", lapse.MaxListLimit)
	}
	if !p.HasScope(lapse.ScopeApprove) && !p.HasScope(lapse.ScopeRevoke) {
		f.PrincipalID = p.ID
	}
	gs, err := b.store.ListGrants(ctx, f)
	if err != nil {
		return nil, storeErr("list grants", err)
	}
	return gs, nil
}

// ClaimCredentials hands the grantee their credentials once.
func (b *Broker) ClaimCredentials(ctx context.Context, id string) (*lapse.Credentials, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeRequest); err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a grant ID")
	}
	var creds *lapse.Credentials
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		creds = nil
		g, err := tx.GetGrant(ctx, id)
		if err != nil {
			return err
		}
		if g.Principal.ID != p.ID {
			return lapse.Errorf(lapse.ENOTFOUND, "no grant %s", id)
		}
		if g.CredentialsClaimed {
			return lapse.Errorf(lapse.EGONE, "credentials were already claimed; they are shown once")
		}
		if g.State != lapse.GrantActive {
			return lapse.Errorf(lapse.ECONFLICT, "grant is %s, not active", g.State)
		}
		if !b.clock.Now().Before(g.ExpiresAt) {
			// Its revocation is due or under way (a reserved expiry stays
			// active in the store until its result is written).
			return lapse.Errorf(lapse.ECONFLICT, "grant reached its deadline at %s", g.ExpiresAt.Format(time.RFC3339))
		}
		secret, err := b.sealer.open(g.ID, purposeCredentials, g.SealedCredentials)
		if err != nil {
			return lapse.Internal("open sealed credentials", err)
		}
		g.SealedCredentials = nil
		g.CredentialsClaimed = true
		if err := tx.UpdateGrant(ctx, g); err != nil {
			return err
		}
		creds = &lapse.Credentials{GrantID: g.ID, Target: g.Target, ExpiresAt: g.ExpiresAt, Secret: secret, Info: g.Info}
		return appendEvent(ctx, tx, b.grantEvent(ctx, lapse.EventCredentialsClaimed, g, "claimed", nil))
	})
	if err != nil {
		return nil, storeErr("claim credentials", err)
	}
	return creds, nil
}

// Release ends the caller's own grant now.
func (b *Broker) Release(ctx context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeRequest); err != nil {
		return nil, err
	}
	return b.end(ctx, p, id, lapse.EndReleased, "", in.Wait, true)
}

// Revoke ends any grant now; it needs the revoke scope.
func (b *Broker) Revoke(ctx context.Context, id string, in lapse.RevokeInput) (*lapse.Grant, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeRevoke); err != nil {
		return nil, err
	}
	if err := checkText("reason", in.Reason, lapse.MaxReasonLength); err != nil {
		return nil, err
	}
	return b.end(ctx, p, id, lapse.EndRevoked, in.Reason, in.Wait, false)
}

// end writes the intent to end a grant (state revoking, due now) and, if
// wait is set, waits until the engine has verified the revocation. It keeps
// any lease in place: only the lease holder calls connectors, and it picks
// up the new intent on its next write.
func (b *Broker) end(ctx context.Context, p *lapse.Principal, id string, reason lapse.EndReason, note string, wait, ownOnly bool) (*lapse.Grant, error) {
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a grant ID")
	}
	var ch chan struct{}
	if wait {
		ch = b.waitChan(id)
		defer b.dropWaiter(id, ch)
	}
	var out *lapse.Grant
	err := b.store.Update(ctx, func(tx lapse.Tx) error {
		g, err := tx.GetGrant(ctx, id)
		if err != nil {
			return err
		}
		// A sponsor may end what an agent holds on their behalf.
		if ownOnly && g.Principal.ID != p.ID && !slices.Contains(g.Principal.Act, p.ID) {
			return lapse.Errorf(lapse.ENOTFOUND, "no grant %s", id)
		}
		out = g
		return b.startEnd(ctx, tx, g, reason, note)
	})
	if err != nil {
		return nil, storeErr("end grant", err)
	}
	if out.State != lapse.GrantActive {
		// Ending, by this call or before it: a reservation of its expiry
		// that this process holds no longer stands (reserve.go). An active
		// grant here is one whose reserved expiry is under way.
		b.engine.unreserve(out.ID)
	}
	b.nudge()
	if !wait || out.State == lapse.GrantRevoked {
		return out, nil
	}
	// Wait for the engine to settle the grant. Another replica may do the
	// work, so poll the store as well as listening for the local signal.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ch:
			ch = b.waitChan(id) // re-arm: revoke_failed is not final
		case <-tick.C:
		case <-ctx.Done():
			return b.store.GetGrant(context.WithoutCancel(ctx), id)
		}
		g, err := b.store.GetGrant(ctx, id)
		if err != nil {
			return nil, storeErr("get grant", err)
		}
		if g.State == lapse.GrantRevoked || (g.State == lapse.GrantRevokeFailed && g.Attempts > 0) {
			return g, nil
		}
	}
}

// startEnd writes, in tx, the intent to end g (state revoking, due now)
// and its event, unless g is already ending.
func (b *Broker) startEnd(ctx context.Context, tx lapse.Tx, g *lapse.Grant, reason lapse.EndReason, note string) error {
	switch g.State {
	case lapse.GrantRevoked, lapse.GrantRevoking, lapse.GrantVerifying, lapse.GrantRevokeFailed:
		return nil // already ending; nothing to add
	}
	now := b.clock.Now()
	if supersedeReservation(g, now) {
		return nil // its reserved expiry is under way (reserve.go)
	}
	g.State = lapse.GrantRevoking
	g.EndReason = reason
	g.RevokeStartedAt = now
	g.DueAt = now
	if err := tx.UpdateGrant(ctx, g); err != nil {
		return err
	}
	var data map[string]any
	if note != "" {
		data = map[string]any{"reason": note}
	}
	return appendEvent(ctx, tx, b.grantEvent(ctx, lapse.EventGrantRevokeStarted, g, string(reason), data))
}

// CreateAPIKey creates a scoped key for a principal; scope admin.
func (b *Broker) CreateAPIKey(ctx context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeAdmin); err != nil {
		return nil, err
	}
	k, secret, err := NewAPIKey(in, b.clock.Now(), p.ID)
	if err != nil {
		return nil, err
	}
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		if err := tx.InsertAPIKey(ctx, k); err != nil {
			return err
		}
		return tx.AppendEvent(ctx, &lapse.Event{Time: b.clock.Now(), Type: lapse.EventAPIKeyCreated, ActorID: p.ID, ActorKind: p.Kind,
			Channel: lapse.ChannelFrom(ctx), Outcome: "created",
			Data: eventData(map[string]any{"prefix": k.Prefix, "principal": k.Principal.ID, "scopes": k.Scopes, "expires_at": k.ExpiresAt})})
	})
	if err != nil {
		return nil, storeErr("create api key", err)
	}
	return &lapse.NewAPIKey{APIKey: *k, Secret: secret}, nil
}

// NewAPIKey validates in and generates a key (not yet stored). It is shared
// by the API and by `lapse admin`, which writes to the store directly.
func NewAPIKey(in lapse.APIKeyInput, now time.Time, createdBy string) (*lapse.APIKey, string, error) {
	id, err := lapse.NormalizeID(in.PrincipalID)
	if err != nil {
		return nil, "", lapse.FieldErrorf(lapse.EINVALID, "principal_id", "%s", lapse.ErrorMessage(err))
	}
	if !in.PrincipalKind.Valid() {
		return nil, "", lapse.FieldErrorf(lapse.EINVALID, "principal_kind", "must be human, service or agent")
	}
	groups := make([]string, 0, len(in.Groups))
	for _, g := range in.Groups {
		n, err := lapse.NormalizeID(g)
		if err != nil {
			return nil, "", lapse.FieldErrorf(lapse.EINVALID, "groups", "%s", lapse.ErrorMessage(err))
		}
		groups = append(groups, n)
	}
	if len(in.Scopes) == 0 {
		return nil, "", lapse.FieldErrorf(lapse.EINVALID, "scopes", "at least one scope is required")
	}
	for _, s := range in.Scopes {
		known := false
		for _, k := range lapse.AllScopes {
			known = known || s == k
		}
		if !known {
			return nil, "", lapse.FieldErrorf(lapse.EINVALID, "scopes", "unknown scope %q", s)
		}
	}
	if err := checkText("name", in.Name, 128); err != nil {
		return nil, "", err
	}
	k, secret, err := authn.GenerateAPIKey(lapse.Principal{ID: id, Kind: in.PrincipalKind, Name: in.PrincipalID, Groups: groups}, in.Scopes, in.Name, now, in.TTL.D())
	if err != nil {
		return nil, "", err
	}
	k.CreatedBy = createdBy
	return k, secret, nil
}

// ListAPIKeys lists keys; scope admin.
func (b *Broker) ListAPIKeys(ctx context.Context) ([]*lapse.APIKey, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeAdmin); err != nil {
		return nil, err
	}
	ks, err := b.store.ListAPIKeys(ctx)
	return ks, storeErr("list api keys", err)
}

// RevokeAPIKey revokes a key; scope admin. Revoking a revoked key is a no-op.
func (b *Broker) RevokeAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeAdmin); err != nil {
		return nil, err
	}
	var out *lapse.APIKey
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		out, err = RevokeAPIKeyIn(ctx, tx, prefix, b.clock.Now(), *p)
		return err
	})
	if err != nil {
		return nil, storeErr("revoke api key", err)
	}
	return out, nil
}

// RevokeAPIKeyIn revokes the key with prefix in tx at now and records
// apikey.revoked by actor; a key already revoked is returned unchanged. It
// reads the key under the transaction's lock, so of two concurrent
// revocations one writes and the other sees it done. RevokeAPIKey and
// lapse admin (which works on the store directly) both revoke through it.
func RevokeAPIKeyIn(ctx context.Context, tx lapse.Tx, prefix string, now time.Time, actor lapse.Principal) (*lapse.APIKey, error) {
	k, err := tx.GetAPIKey(ctx, prefix)
	if err != nil || !k.RevokedAt.IsZero() {
		return k, err
	}
	k.RevokedAt = now
	if err := tx.UpdateAPIKey(ctx, k); err != nil {
		return nil, err
	}
	ev := &lapse.Event{Time: now, Type: lapse.EventAPIKeyRevoked, ActorID: actor.ID, ActorKind: actor.Kind,
		Channel: lapse.ChannelFrom(ctx), Outcome: "revoked", Data: eventData(map[string]any{"prefix": k.Prefix, "principal": k.Principal.ID})}
	if err := tx.AppendEvent(ctx, ev); err != nil {
		return nil, err
	}
	return k, nil
}
