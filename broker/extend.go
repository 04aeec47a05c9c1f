package broker

import (
	"context"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/policy"
)

// ExtendGrant asks for more time on the caller's active grant; see
// lapse.Service. The extension is a request of its own (Request.Extends):
// decided by the entitlement's stages again when its extension rule says
// reapprove, at once otherwise (or when the policy approves the request at
// once anyway). The grant's whole length, extensions included, never
// exceeds the rule's max_total, checked when the extension is filed and
// again when it is applied.
func (b *Broker) ExtendGrant(ctx context.Context, id string, in lapse.ExtendInput) (*lapse.RequestResult, error) {
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
	if p.Kind == lapse.KindAgent {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "an agent asks for a new grant instead of extending one")
	}
	g, err := b.store.GetGrant(ctx, id)
	if err != nil {
		return nil, storeErr("get grant", err)
	}
	if g.Principal.ID != p.ID {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no grant %s", id)
	}
	// One policy decides the extension (updateUnder).
	c := b.catalog.Load()
	pol := c.policy
	e := pol.Entitlement(g.Entitlement)
	switch {
	case e == nil:
		return nil, lapse.Errorf(lapse.ECONFLICT, "entitlement %s is no longer in the policy", g.Entitlement)
	case e.Extension == nil:
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "id", "grants of %s cannot be extended; ask for a new grant", e.Name)
	case g.State != lapse.GrantActive:
		return nil, lapse.Errorf(lapse.ECONFLICT, "grant %s is %s; only an active grant is extended", id, g.State)
	}
	if t := b.targets[g.Target]; t == nil {
		return nil, lapse.Errorf(lapse.ECONFLICT, "target %s is not configured", g.Target)
	} else if _, ok := t.conn.(connector.Extender); !ok {
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "id", "grants on %s (kind %s) cannot be extended: their credentials carry their deadline; ask for a new grant", g.Target, t.kind)
	}
	if in.Duration <= 0 {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration is required: how much longer, like 30m")
	}
	now := b.clock.Now()
	d := in.Duration.D()
	bg, err := breakGlassGrant(ctx, b.store.GetRequest, g)
	if err != nil {
		return nil, err
	}
	if err := extensionFits(e, g, d, bg); err != nil {
		return nil, err
	}
	req := lapse.RequestInput{Entitlement: e.Name, Duration: in.Duration, Reason: in.Reason}
	dec := pol.DecideFor(p, nil, &req, policy.Filing{Channel: lapse.ChannelFrom(ctx), Extends: g.ID}, now)
	if dec.Outcome == policy.Refused {
		return nil, dec.Err
	}
	auto := !e.Extension.Reapprove || dec.Outcome == policy.AutoApproved
	if auto {
		if err := b.auditOpen(ctx); err != nil {
			return nil, err
		}
	}
	rule := e.RuleFor(p.Kind)
	pending := e.PendingTimeout.D()
	if pending <= 0 {
		pending = DefaultPendingTimeout
	}
	r := &lapse.Request{
		ID: lapse.NewID(lapse.PrefixRequest, now), Requester: subject(p), Entitlement: e.Name, Duration: lapse.Duration(d),
		Reason: req.Reason, Extends: g.ID, Channel: lapse.ChannelFrom(ctx), State: lapse.RequestPending,
		Required: rule.TotalRequired(), CreatedAt: now,
		// A pending extension is moot once the grant has ended.
		ExpiresAt: minTime(now.Add(pending), g.ExpiresAt),
	}
	r.Privilege = e.PrivilegeHash()
	r.Hash = r.ComputeHash()
	var extended *lapse.Grant
	err = b.updateUnder(ctx, c, func(tx lapse.Tx) error {
		extended = nil
		if auto {
			r.Required, r.State, r.DecidedAt, r.GrantID = 0, lapse.RequestApproved, now, g.ID
			r.DecisionNote = "extension approved by policy"
		}
		if err := tx.InsertRequest(ctx, r); err != nil {
			return err
		}
		data := map[string]any{"entitlement": r.Entitlement, "duration": r.Duration.String(), "reason": r.Reason, "extends": g.ID, "hash": r.Hash}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestCreated, r, "pending", data)); err != nil {
			return err
		}
		if !auto {
			return nil
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestDecided, r, string(lapse.RequestApproved), map[string]any{"rule": "extension"})); err != nil {
			return err
		}
		var err error
		extended, err = b.applyExtension(ctx, tx, c, r, now)
		return err
	})
	if err != nil {
		return nil, storeErr("extend grant", err)
	}
	res := &lapse.RequestResult{Request: r}
	if extended != nil {
		res.Grant = b.extendOnTarget(ctx, extended)
	}
	return res, nil
}

// extensionFits checks that g, extended by d, stays within the rule.
// breakGlass says g was self-approved under the break-glass rule: then
// its whole length stays within the break-glass maximum too, as the extra
// time would be self-approved again, without the broadcast and the review
// that a new break-glass request brings.
func extensionFits(e *lapse.Entitlement, g *lapse.Grant, d time.Duration, breakGlass bool) error {
	if d > e.MaxDuration.D() {
		return lapse.FieldErrorf(lapse.EINVALID, "duration", "an extension of %s exceeds the maximum of %s for %s", lapse.Duration(d), e.MaxDuration, e.Name)
	}
	if breakGlass {
		if bg := e.BreakGlass; bg == nil || g.ExpiresAt.Sub(g.StartsAt)+d > bg.MaxDuration.D() {
			return lapse.FieldErrorf(lapse.EINVALID, "duration", "a break-glass grant of %s lasts at most its break-glass maximum; for more time, break glass again or ask for an approved grant", e.Name)
		}
	}
	if total := g.ExpiresAt.Sub(g.StartsAt) + d; e.Extension == nil || total > e.Extension.MaxTotal.D() {
		max := lapse.Duration(0)
		if e.Extension != nil {
			max = e.Extension.MaxTotal
		}
		return lapse.FieldErrorf(lapse.EINVALID, "duration", "the grant would last %s in all, more than the %s that %s allows with extensions", lapse.Duration(total), max, e.Name)
	}
	return nil
}

// applyExtension moves the deadline of r's grant by r's duration, in tx,
// once r is approved. The grant must still be active and the extension
// still fit the policy c, the one in force.
func (b *Broker) applyExtension(ctx context.Context, tx lapse.Tx, c *catalog, r *lapse.Request, now time.Time) (*lapse.Grant, error) {
	g, err := tx.GetGrant(ctx, r.Extends)
	if err != nil {
		return nil, err
	}
	if g.State != lapse.GrantActive || !now.Before(g.ExpiresAt) {
		return nil, lapse.Errorf(lapse.ECONFLICT, "grant %s is no longer active; the extension does not apply", g.ID)
	}
	if reservedExpiry(g, now) {
		// The engine has scheduled the revocation for the deadline and
		// will not look at the store again before acting (reserve.go).
		return nil, lapse.Errorf(lapse.ECONFLICT, "grant %s expires in %s and its revocation is already scheduled; request a new grant",
			g.ID, g.ExpiresAt.Sub(now).Round(time.Millisecond))
	}
	e := c.byName[g.Entitlement]
	if e == nil {
		return nil, lapse.Errorf(lapse.ECONFLICT, "entitlement %s is no longer in the policy", g.Entitlement)
	}
	bg, err := breakGlassGrant(ctx, tx.GetRequest, g)
	if err != nil {
		return nil, err
	}
	if err := extensionFits(e, g, r.Duration.D(), bg); err != nil {
		return nil, lapse.Errorf(lapse.ECONFLICT, "%s", lapse.ErrorMessage(err))
	}
	old := g.ExpiresAt
	g.ExpiresAt = old.Add(r.Duration.D())
	if g.LeaseOwner == "" {
		// Active and idle: due at its deadline (a leased grant's DueAt is
		// the lease's end, and the engine's next plan moves it).
		g.DueAt = g.ExpiresAt
	}
	if err := tx.UpdateGrant(ctx, g); err != nil {
		return nil, err
	}
	ev := b.grantEvent(ctx, lapse.EventGrantExtended, g, "extended", map[string]any{"request_id": r.ID, "from": old, "to": g.ExpiresAt})
	ev.RequestID = r.ID
	if err := appendEvent(ctx, tx, ev); err != nil {
		return nil, err
	}
	return g, nil
}

// extendOnTarget moves the target's own deadline of g after the extension
// is recorded. A failure leaves the target's earlier deadline, which fails
// closed; it is logged and recorded, and g is returned either way.
func (b *Broker) extendOnTarget(ctx context.Context, g *lapse.Grant) *lapse.Grant {
	t := b.targets[g.Target]
	x, ok := t.conn.(connector.Extender)
	if !ok {
		return g
	}
	e := b.entitlement(g.Entitlement)
	var spec map[string]any
	if e != nil {
		spec = e.Spec
	}
	err := x.Extend(ctx, &connector.ExtendRequest{GrantID: g.ID, Principal: g.Principal, Entitlement: g.Entitlement, Spec: spec, State: g.ConnectorState, ExpiresAt: g.ExpiresAt})
	if err == nil {
		return g
	}
	msg := strings.TrimSpace(lapse.ErrorMessage(err))
	b.log.Warn("extension recorded, but the target keeps the earlier deadline", "grant_id", g.ID, "target", g.Target, "err", msg)
	ev := b.grantEvent(ctx, lapse.EventGrantExtended, g, "target_not_extended", map[string]any{"error": msg})
	if uerr := b.store.Update(context.WithoutCancel(ctx), func(tx lapse.Tx) error { return appendEvent(ctx, tx, ev) }); uerr != nil {
		b.log.Error("could not record the target's failed extension", "grant_id", g.ID, "err", uerr)
	}
	return g
}

// breakGlassGrant reports whether g was made for a break-glass request,
// read with get. A grant whose request cannot be found is not extended.
func breakGlassGrant(ctx context.Context, get func(context.Context, string) (*lapse.Request, error), g *lapse.Grant) (bool, error) {
	if g.RequestID == "" {
		return false, nil
	}
	r, err := get(ctx, g.RequestID)
	if lapse.ErrorCode(err) == lapse.ENOTFOUND {
		return false, lapse.Errorf(lapse.ECONFLICT, "the request of grant %s is not in the store; it cannot be extended", g.ID)
	}
	if err != nil {
		return false, storeErr("get request", err)
	}
	return r.BreakGlass, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
