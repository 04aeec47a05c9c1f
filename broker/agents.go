package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// The agent lane (DESIGN.md §3, docs/agents.md). An AI agent asks for a
// human sponsor and never gets more than the sponsor could: an agent's
// request is decided on the sponsor's eligibility intersected with the
// agent's ceiling, and recorded as the agent's, acting for the sponsor
// (Principal.Act = [sponsor]). The sponsor is known in one of two ways:
//
//   - a mandate: the sponsor gave the agent, earlier, the right to ask for
//     some entitlements, each grant at most so long, until an expiry. The
//     decision uses the sponsor as recorded in the mandate.
//   - RFC 8693 delegation at the token endpoint: the sponsor's credential
//     (subject) and the agent's (actor) arrive in the same call
//     (lapse.WithSponsor). The decision uses the sponsor as authenticated
//     now; the agent's live mandates from that sponsor, if it has any,
//     narrow it further.
//
// Either way only the current actor (the agent) and the sponsor count:
// an agent acting for an agent, or a sponsor that is not a person, is
// refused. Whether a human must approve is the entitlement's rule for the
// agent lane (Entitlement.RuleFor), and the sponsor never counts as an
// approver of what the agent asked for them (mayDecide).

// agentRequest is how one agent request is decided.
type agentRequest struct {
	// actor is the agent with Act = [sponsor ID]: the requester recorded.
	actor *lapse.Principal
	// sponsor is the person the decision is made for.
	sponsor *lapse.Principal
	// mandates are the live mandates the request rests on: every one of
	// them covers the entitlement for this sponsor. Empty under delegation
	// when the agent holds no mandate from the sponsor.
	mandates []*lapse.Mandate
	// delegated says the sponsor authenticated in this call (RFC 8693).
	delegated bool
	// ceiling bounds the grant's duration beyond the entitlement's
	// maximum; 0 when no mandate sets one.
	ceiling time.Duration
}

// liveMandates returns the mandates of agent (from sponsor, if set) in
// force now.
func (b *Broker) liveMandates(ctx context.Context, agent, sponsor string) ([]*lapse.Mandate, error) {
	ms, err := b.store.ListMandates(ctx, lapse.MandateFilter{AgentID: agent, SponsorID: sponsor, LiveAt: b.clock.Now(), Limit: lapse.MaxListLimit})
	if err != nil {
		return nil, storeErr("list mandates", err)
	}
	return ms, nil
}

// forSponsor decides who an agent's request is for and what bounds it, or
// refuses it. p is the calling agent; onBehalfOf the sponsor it names, if
// any (normalised).
func (b *Broker) forSponsor(ctx context.Context, p *lapse.Principal, e *lapse.Entitlement, onBehalfOf string) (*agentRequest, error) {
	if !e.AllowsLane(lapse.KindAgent) {
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "entitlement %s is not available to agent principals", e.Name)
	}
	if s := lapse.SponsorFrom(ctx); s != nil {
		return b.delegatedRequest(ctx, p, s, e, onBehalfOf)
	}
	if len(p.Act) > 0 {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "agent %s already acts for %s: an agent asks only for its own human sponsor, never for another agent", p.ID, strings.Join(p.Act, ", "))
	}
	all, err := b.liveMandates(ctx, p.ID, "")
	if err != nil {
		return nil, err
	}
	var fit []*lapse.Mandate
	var sponsors []string
	for _, m := range all {
		if !m.Covers(e.Name) || (onBehalfOf != "" && m.Sponsor.ID != onBehalfOf) {
			continue
		}
		// The sponsor as recorded in the mandate: a person, and one who
		// could ask for this entitlement themselves.
		if m.Sponsor.Kind != lapse.KindHuman || len(m.Sponsor.Act) > 0 || b.mayRequest(e, &m.Sponsor) != nil {
			continue
		}
		fit = append(fit, m)
		if !slices.Contains(sponsors, m.Sponsor.ID) {
			sponsors = append(sponsors, m.Sponsor.ID)
		}
	}
	switch {
	case len(fit) == 0 && onBehalfOf != "":
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "on_behalf_of", "agent %s has no live mandate from %s that covers %s (or %s may not request it)", p.ID, onBehalfOf, e.Name, onBehalfOf)
	case len(fit) == 0:
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "agent %s has no live mandate that covers %s: an agent asks only on behalf of a human sponsor, who must first give it a mandate for %s (lapse mandate create)", p.ID, e.Name, e.Name)
	case len(sponsors) > 1:
		slices.Sort(sponsors)
		return nil, lapse.FieldErrorf(lapse.EINVALID, "on_behalf_of", "mandates of several sponsors (%s) cover %s: name the one you ask for in on_behalf_of", strings.Join(sponsors, ", "), e.Name)
	}
	ar := &agentRequest{mandates: fit}
	sponsor := fit[0].Sponsor // the newest mandate's record of the sponsor
	ar.sponsor = &sponsor
	for _, m := range fit {
		ar.ceiling = max(ar.ceiling, m.MaxDuration.D())
	}
	ar.actor = actingFor(p, sponsor.ID)
	return ar, nil
}

// delegatedRequest decides an agent's request whose sponsor authenticated
// in the same call.
func (b *Broker) delegatedRequest(ctx context.Context, p, s *lapse.Principal, e *lapse.Entitlement, onBehalfOf string) (*agentRequest, error) {
	if s.Kind != lapse.KindHuman || len(s.Act) > 0 {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "an agent acts only for a person: the sponsor %s is a %s", s.ID, s.Kind)
	}
	if len(p.Act) != 1 || p.Act[0] != s.ID {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "agent %s may act for its sponsor %s only, and for no one through someone else", p.ID, s.ID)
	}
	if onBehalfOf != "" && onBehalfOf != s.ID {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "on_behalf_of", "on_behalf_of names %s, but the sponsor who authenticated is %s", onBehalfOf, s.ID)
	}
	if !s.HasScope(lapse.ScopeRequest) {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "the sponsor's credential lacks scope %q", lapse.ScopeRequest)
	}
	if err := b.mayRequest(e, s); err != nil {
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "your sponsor %s may not request %s, so neither may you", s.ID, e.Name)
	}
	ar := &agentRequest{actor: actingFor(p, s.ID), sponsor: s, delegated: true}
	ms, err := b.liveMandates(ctx, p.ID, s.ID)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return ar, nil
	}
	// The sponsor gave this agent mandates: they are the agent's ceiling
	// for this sponsor, also when the sponsor's credential is presented.
	for _, m := range ms {
		if m.Covers(e.Name) {
			ar.mandates = append(ar.mandates, m)
			ar.ceiling = max(ar.ceiling, m.MaxDuration.D())
		}
	}
	if len(ar.mandates) == 0 {
		return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlement", "the mandates %s gave agent %s do not cover %s", s.ID, p.ID, e.Name)
	}
	return ar, nil
}

// actingFor returns a copy of the agent p acting for sponsor.
func actingFor(p *lapse.Principal, sponsor string) *lapse.Principal {
	a := *p
	a.Act = []string{sponsor}
	return &a
}

// applyCeiling bounds the request's duration d by the agent's ceiling: an
// omitted duration is cut to it, an explicit one beyond it is refused.
func (ar *agentRequest) applyCeiling(d time.Duration, explicit bool, e *lapse.Entitlement) (time.Duration, error) {
	if ar.ceiling <= 0 || d <= ar.ceiling {
		return d, nil
	}
	if !explicit {
		return ar.ceiling, nil
	}
	return 0, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration exceeds the ceiling of %s that %s's mandate sets for %s", lapse.Duration(ar.ceiling), ar.sponsor.ID, e.Name)
}

// recheck confirms, inside the transaction that files the request, that a
// mandate it rests on is still in force and allows duration d: a mandate
// revoked since it was looked up refuses the request. It locks the
// mandates it reads, so a concurrent revocation either comes first (and
// the request is refused) or sees the request's grant (and ends it). It
// returns the mandate the request is filed under; nil under delegation.
func (ar *agentRequest) recheck(ctx context.Context, tx lapse.Tx, d time.Duration, now time.Time) (*lapse.Mandate, error) {
	if ar.delegated {
		// The sponsor is here in person; mandates only narrowed the
		// ceiling, which a revocation cannot widen.
		if len(ar.mandates) > 0 {
			return ar.mandates[0], nil
		}
		return nil, nil
	}
	ids := make([]string, 0, len(ar.mandates))
	for _, m := range ar.mandates {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids) // a fixed order, so two such transactions cannot deadlock
	for _, id := range ids {
		m, err := tx.GetMandate(ctx, id)
		if err != nil {
			return nil, err
		}
		if m.Live(now) && d <= m.MaxDuration.D() {
			return m, nil
		}
	}
	return nil, lapse.Errorf(lapse.EFORBIDDEN, "the mandate %s gave this agent was revoked or has expired", ar.sponsor.ID)
}

// eventData records the delegation on the request's creation event.
func (ar *agentRequest) eventData(data map[string]any, m *lapse.Mandate) map[string]any {
	data["sponsor"] = ar.sponsor.ID
	if ar.delegated {
		data["delegation"] = "token_exchange"
	} else {
		data["delegation"] = "mandate"
	}
	if m != nil {
		data["mandate"] = m.ID
	}
	if ar.ceiling > 0 {
		data["ceiling"] = lapse.Duration(ar.ceiling).String()
	}
	return data
}

// agentEntitlements returns what the calling agent may request, each as it
// applies to the agent: its approval rule for the agent lane, and its
// durations within the agent's ceiling.
func (b *Broker) agentEntitlements(ctx context.Context, p *lapse.Principal) ([]*lapse.Entitlement, error) {
	c := b.catalog.Load()
	ceilings := map[string]time.Duration{} // entitlement → ceiling (0: none beyond it)
	switch s := lapse.SponsorFrom(ctx); {
	case s != nil:
		if s.Kind != lapse.KindHuman || len(p.Act) != 1 || p.Act[0] != s.ID {
			return []*lapse.Entitlement{}, nil
		}
		ms, err := b.liveMandates(ctx, p.ID, s.ID)
		if err != nil {
			return nil, err
		}
		for _, name := range c.names {
			e := c.byName[name]
			if !e.AllowsLane(lapse.KindAgent) || b.mayRequest(e, s) != nil {
				continue
			}
			if len(ms) == 0 {
				ceilings[name] = 0
				continue
			}
			for _, m := range ms {
				if m.Covers(name) {
					ceilings[name] = max(ceilings[name], m.MaxDuration.D())
				}
			}
		}
	case len(p.Act) > 0:
		return []*lapse.Entitlement{}, nil
	default:
		ms, err := b.liveMandates(ctx, p.ID, "")
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.Sponsor.Kind != lapse.KindHuman {
				continue
			}
			for _, name := range m.Entitlements {
				e := c.byName[name]
				if e == nil || !e.AllowsLane(lapse.KindAgent) || b.mayRequest(e, &m.Sponsor) != nil {
					continue
				}
				ceilings[name] = max(ceilings[name], m.MaxDuration.D())
			}
		}
	}
	out := []*lapse.Entitlement{}
	for _, name := range c.names {
		ceiling, ok := ceilings[name]
		if !ok {
			continue
		}
		v := *c.byName[name]
		v.Approval = v.RuleFor(lapse.KindAgent)
		if ceiling > 0 && ceiling < v.MaxDuration.D() {
			v.MaxDuration = lapse.Duration(ceiling)
			v.DefaultDuration = min(v.DefaultDuration, v.MaxDuration)
		}
		out = append(out, &v)
	}
	return out, nil
}

// approvalMandates returns, for an approval of an agent's request, the
// IDs of the live mandates that still cover it; the transaction that
// records the approval locks and re-checks them (mandateStillCovers). nil
// when r is not an agent's request.
func (b *Broker) approvalMandates(ctx context.Context, id string) ([]string, bool, error) {
	r, err := b.store.GetRequest(ctx, id)
	if err != nil || r.Requester.Kind != lapse.KindAgent {
		return nil, false, nil // the transaction reports a missing request
	}
	if len(r.Requester.Act) != 1 {
		return nil, true, nil
	}
	e := b.entitlement(r.Entitlement)
	if e == nil {
		return nil, true, nil
	}
	ms, err := b.liveMandates(ctx, r.Requester.ID, r.Requester.Act[0])
	if err != nil {
		return nil, true, err
	}
	var ids []string
	for _, m := range ms {
		if m.Covers(r.Entitlement) && r.Duration.D() <= m.MaxDuration.D() && b.mayRequest(e, &m.Sponsor) == nil {
			ids = append(ids, m.ID)
		}
	}
	slices.Sort(ids)
	return ids, true, nil
}

// sponsorStillAllows checks, as an agent's grant is about to start, the
// sponsor's side of its decision under pol: for a request that rests on a
// mandate, a mandate from the sponsor to the agent is still live, covers
// the entitlement and the duration, and the sponsor may still request the
// entitlement (an agent never gets more than its sponsor could, now). A
// request made by token exchange had its sponsor present in the call;
// Lapse keeps no credential of theirs to ask about their groups again, so
// only the agent's side (policy.Recheck) applies to it.
func (b *Broker) sponsorStillAllows(ctx context.Context, pol *policy.Policy, r *lapse.Request, now time.Time) error {
	if r.Requester.Kind != lapse.KindAgent || r.Delegation != lapse.DelegationMandate {
		return nil
	}
	if len(r.Requester.Act) != 1 {
		return lapse.Errorf(lapse.ECONFLICT, "the agent's request names no single sponsor")
	}
	e := pol.Entitlement(r.Entitlement)
	if e == nil {
		return lapse.Errorf(lapse.ECONFLICT, "entitlement %s is no longer in the policy", r.Entitlement)
	}
	ms, err := b.liveMandates(ctx, r.Requester.ID, r.Requester.Act[0])
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Live(now) && m.Covers(r.Entitlement) && r.Duration.D() <= m.MaxDuration.D() && pol.MayRequest(e, &m.Sponsor) == nil {
			return nil
		}
	}
	return lapse.Errorf(lapse.ECONFLICT, "no live mandate of %s covers this request any more, or %s may no longer request %s", r.Requester.Act[0], r.Requester.Act[0], r.Entitlement)
}

// mandateStillCovers refuses an approval of an agent's request when no
// mandate it could rest on is in force any more: a sponsor who revoked
// the mandate has withdrawn the request's basis.
func mandateStillCovers(ctx context.Context, tx lapse.Tx, r *lapse.Request, ids []string, now time.Time) error {
	for _, id := range ids {
		m, err := tx.GetMandate(ctx, id)
		if err != nil {
			return err
		}
		if m.Live(now) && m.Covers(r.Entitlement) && len(r.Requester.Act) == 1 && m.Sponsor.ID == r.Requester.Act[0] && m.AgentID == r.Requester.ID {
			return nil
		}
	}
	sponsor := "its sponsor"
	if len(r.Requester.Act) > 0 {
		sponsor = r.Requester.Act[0]
	}
	return lapse.Errorf(lapse.ECONFLICT, "no mandate from %s covers this agent's request any more (revoked or expired); it cannot be approved", sponsor)
}

// CreateMandate gives an agent a mandate; see lapse.Service.
func (b *Broker) CreateMandate(ctx context.Context, in lapse.MandateInput) (*lapse.Mandate, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeRequest); err != nil {
		return nil, err
	}
	if p.Kind != lapse.KindHuman || len(p.Act) > 0 {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "only a person acting for themselves can sponsor an agent")
	}
	agent, err := lapse.NormalizeID(in.AgentID)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "agent_id", "%s", lapse.ErrorMessage(err))
	}
	if agent == p.ID {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "agent_id", "a sponsor cannot give a mandate to themselves")
	}
	switch n := len(in.Entitlements); {
	case n == 0:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "entitlements", "name at least one entitlement")
	case n > lapse.MaxMandateEntitlements:
		return nil, lapse.FieldErrorf(lapse.ETOOLARGE, "entitlements", "a mandate names at most %d entitlements", lapse.MaxMandateEntitlements)
	}
	ents := make([]string, 0, len(in.Entitlements))
	for _, name := range in.Entitlements {
		if len(name) > lapse.MaxIDLength || !entitlementName.MatchString(name) {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "entitlements", "%q is not a valid entitlement name", truncateText(name, 64))
		}
		if slices.Contains(ents, name) {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "entitlements", "%s is named twice", name)
		}
		e := b.entitlement(name)
		if e == nil {
			return nil, lapse.FieldErrorf(lapse.ENOTFOUND, "entitlements", "no entitlement named %s", name)
		}
		if !e.AllowsLane(lapse.KindAgent) {
			return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlements", "entitlement %s is not available to agents", name)
		}
		if err := b.mayRequest(e, p); err != nil {
			return nil, lapse.FieldErrorf(lapse.EFORBIDDEN, "entitlements", "you may not request %s, so you cannot give an agent a mandate for it", name)
		}
		ents = append(ents, name)
	}
	switch d := in.MaxDuration.D(); {
	case d == 0:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "max_duration", "max_duration is required: the longest grant the agent may ask for, like 15m")
	case d < time.Second:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "max_duration", "max_duration must be at least 1s")
	}
	switch d := in.ExpiresIn.D(); {
	case d == 0:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_in", "expires_in is required: how long the mandate lasts, like 8h")
	case d < time.Minute:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_in", "expires_in must be at least 1m")
	case d > lapse.MaxMandateLifetime:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_in", "a mandate lasts at most %s; renew it when it ends", lapse.Duration(lapse.MaxMandateLifetime))
	}
	now := b.clock.Now()
	m := &lapse.Mandate{
		ID:           lapse.NewID(lapse.PrefixMandate, now),
		AgentID:      agent,
		Sponsor:      subject(p),
		Entitlements: ents,
		MaxDuration:  in.MaxDuration,
		Channel:      lapse.ChannelFrom(ctx),
		CreatedAt:    now,
		ExpiresAt:    now.Add(in.ExpiresIn.D()),
	}
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		if err := tx.InsertMandate(ctx, m); err != nil {
			return err
		}
		return tx.AppendEvent(ctx, b.mandateEvent(ctx, p, lapse.EventMandateCreated, m, "created", map[string]any{
			"mandate": m.ID, "agent": m.AgentID, "sponsor": m.Sponsor.ID, "entitlements": m.Entitlements,
			"max_duration": m.MaxDuration.String(), "expires_at": m.ExpiresAt,
		}))
	})
	if err != nil {
		return nil, storeErr("create mandate", err)
	}
	return m, nil
}

// mayManageAll reports whether p sees every mandate.
func mayManageAll(p *lapse.Principal) bool {
	return p.HasScope(lapse.ScopeAdmin) || p.HasScope(lapse.ScopeApprove) || p.HasScope(lapse.ScopeRevoke)
}

// ListMandates returns the mandates the caller may see; see lapse.Service.
func (b *Broker) ListMandates(ctx context.Context, f lapse.MandateFilter) ([]*lapse.Mandate, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if f.Limit < 0 || f.Limit > lapse.MaxListLimit {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit must be between 1 and %d", lapse.MaxListLimit)
	}
	if f.Live {
		f.LiveAt = b.clock.Now()
	}
	if !mayManageAll(p) {
		// One's own: as the agent, or as the sponsor.
		if p.Kind == lapse.KindAgent {
			f.AgentID = p.ID
		} else {
			f.SponsorID = p.ID
		}
	}
	ms, err := b.store.ListMandates(ctx, f)
	if err != nil {
		return nil, storeErr("list mandates", err)
	}
	if ms == nil {
		ms = []*lapse.Mandate{}
	}
	return ms, nil
}

// RevokeMandate ends a mandate and the grants its agent holds under it;
// see lapse.Service.
func (b *Broker) RevokeMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixMandate, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a mandate ID")
	}
	var (
		out   *lapse.Mandate
		ended []string
	)
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		ended = ended[:0]
		m, err := tx.GetMandate(ctx, id)
		if err != nil {
			return err
		}
		admin := p.HasScope(lapse.ScopeAdmin)
		if !admin && (m.Sponsor.ID != p.ID || !p.HasScope(lapse.ScopeRequest)) {
			if mayManageAll(p) || m.AgentID == p.ID {
				return lapse.Errorf(lapse.EFORBIDDEN, "only the sponsor %s or an administrator may revoke mandate %s", m.Sponsor.ID, id)
			}
			return lapse.Errorf(lapse.ENOTFOUND, "no mandate %s", id)
		}
		out = m
		if !m.RevokedAt.IsZero() {
			return nil
		}
		now := b.clock.Now()
		m.RevokedAt, m.RevokedBy = now, p.ID
		if err := tx.UpdateMandate(ctx, m); err != nil {
			return err
		}
		// End what the agent holds for this sponsor under the mandate's
		// entitlements since it was given. Every grant row is locked and
		// written before any event is appended (the event counter is the
		// last lock any transaction takes).
		var evs []*lapse.Event
		for _, name := range m.Entitlements {
			gs, err := tx.UnrevokedGrants(ctx, m.AgentID, name)
			if err != nil {
				return err
			}
			for _, g := range gs {
				if len(g.Principal.Act) == 0 || g.Principal.Act[0] != m.Sponsor.ID || g.CreatedAt.Before(m.CreatedAt) {
					continue
				}
				cur, err := tx.GetGrant(ctx, g.ID)
				if err != nil {
					return err
				}
				switch cur.State {
				case lapse.GrantScheduled, lapse.GrantProvisioning, lapse.GrantActive:
				default:
					continue // already ending
				}
				if supersedeReservation(cur, now) {
					continue // its reserved expiry is under way (reserve.go)
				}
				cur.State = lapse.GrantRevoking
				cur.EndReason = lapse.EndRevoked
				cur.RevokeStartedAt = now
				cur.DueAt = now
				if err := tx.UpdateGrant(ctx, cur); err != nil {
					return err
				}
				ended = append(ended, cur.ID)
				evs = append(evs, b.grantEvent(ctx, lapse.EventGrantRevokeStarted, cur, string(lapse.EndRevoked), map[string]any{"reason": "mandate " + m.ID + " was revoked"}))
			}
		}
		if err := tx.AppendEvent(ctx, b.mandateEvent(ctx, p, lapse.EventMandateRevoked, m, "revoked", map[string]any{
			"mandate": m.ID, "agent": m.AgentID, "sponsor": m.Sponsor.ID, "grants_ended": len(ended),
		})); err != nil {
			return err
		}
		for _, ev := range evs {
			if err := tx.AppendEvent(ctx, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, storeErr("revoke mandate", err)
	}
	for _, id := range ended {
		b.engine.unreserve(id) // the end supersedes a reservation here (reserve.go)
	}
	if len(ended) > 0 {
		b.nudge()
	}
	return out, nil
}

func (b *Broker) mandateEvent(ctx context.Context, actor *lapse.Principal, typ string, m *lapse.Mandate, outcome string, data map[string]any) *lapse.Event {
	return &lapse.Event{
		Time: b.clock.Now(), Type: typ, ActorID: actor.ID, ActorKind: actor.Kind, Act: actor.Act,
		Channel: lapse.ChannelFrom(ctx), Outcome: outcome, PolicyVersion: b.catalog.Load().version,
		Data: eventData(data),
	}
}

// truncateText shortens s for an error message.
func truncateText(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// fencedError is the refusal of a grant that an unrevoked earlier grant
// of the same entitlement to the same principal fences.
func fencedError(e *lapse.Entitlement, prev *lapse.Grant) error {
	return &lapse.Error{Code: lapse.ECONFLICT, Reason: lapse.ReasonFenced, Message: fmt.Sprintf(
		"grant %s of %s is not revoked and verified yet (it is %s): %s allows a new grant only once the previous one's revocation is verified",
		prev.ID, e.Name, prev.State, e.Name)}
}

// normalizeOnBehalfOf reads RequestInput.OnBehalfOf: empty, or a
// principal ID.
func normalizeOnBehalfOf(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	id, err := lapse.NormalizeID(s)
	if err != nil {
		return "", lapse.FieldErrorf(lapse.EINVALID, "on_behalf_of", "%s", lapse.ErrorMessage(err))
	}
	return id, nil
}

// checkAgentRules validates an entitlement's agent lane rule and fence.
func checkAgentRules(e *lapse.Entitlement) error {
	switch e.Fence {
	case lapse.FenceNone, lapse.FenceWait, lapse.FenceFail:
	default:
		return fmt.Errorf("broker: entitlement %s: fence must be wait or fail, not %q", e.Name, e.Fence)
	}
	if e.Agents == nil {
		return nil
	}
	switch e.Agents.Approval {
	case lapse.AgentApprovalPolicy:
	case lapse.AgentApprovalHuman:
		if len(e.RuleFor(lapse.KindAgent).AllApprovers()) == 0 {
			return fmt.Errorf("broker: entitlement %s: agents need a human approval, but approval names no approvers", e.Name)
		}
	default:
		return fmt.Errorf("broker: entitlement %s: agents.approval must be policy or human, not %q", e.Name, e.Agents.Approval)
	}
	return nil
}
