package broker

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// caller returns the authenticated principal or EUNAUTHORIZED.
func caller(ctx context.Context) (*lapse.Principal, error) {
	p := lapse.FromContext(ctx)
	if p == nil || p.ID == "" {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "authentication required")
	}
	return p, nil
}

func requireScope(p *lapse.Principal, scope string) error {
	if !p.HasScope(scope) {
		return lapse.Errorf(lapse.EFORBIDDEN, "credential lacks scope %q", scope)
	}
	return nil
}

// subject is the principal as recorded on requests and grants: identity and
// groups, without the credential's scopes.
func subject(p *lapse.Principal) lapse.Principal {
	return lapse.Principal{ID: p.ID, Kind: p.Kind, Name: p.Name, Groups: p.Groups, CredentialID: p.CredentialID, Act: p.Act}
}

// Whoami returns the caller.
func (b *Broker) Whoami(ctx context.Context) (*lapse.Principal, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	out := *p
	return &out, nil
}

// Entitlements returns the catalog entries the caller could request, or
// all of them for a caller with the approve, revoke or admin scope.
func (b *Broker) Entitlements(ctx context.Context) ([]*lapse.Entitlement, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if p.Kind == lapse.KindAgent {
		return b.agentEntitlements(ctx, p) // agents.go
	}
	c := b.catalog.Load()
	seeAll := p.HasScope(lapse.ScopeApprove) || p.HasScope(lapse.ScopeRevoke)
	var out []*lapse.Entitlement
	for _, name := range c.names {
		e := c.byName[name]
		if seeAll || b.mayRequest(e, p) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// mayRequest checks the lanes and requesters of e for p, with groups as
// the policy in force sees them.
func (b *Broker) mayRequest(e *lapse.Entitlement, p *lapse.Principal) error {
	return b.policy().MayRequest(e, p)
}

var entitlementName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$`)

// checkText is lapse.CheckText.
func checkText(field, s string, max int) error { return lapse.CheckText(field, s, max) }

// CreateRequest files a request; see lapse.Service.
func (b *Broker) CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeRequest); err != nil {
		return nil, err
	}
	if in.Entitlement == "" {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "entitlement", "entitlement is required")
	}
	if len(in.Entitlement) > lapse.MaxIDLength || !entitlementName.MatchString(in.Entitlement) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "entitlement", "not a valid entitlement name")
	}
	// One policy decides the whole request (updateUnder).
	c := b.catalog.Load()
	pol := c.policy
	e := pol.Entitlement(in.Entitlement)
	if e == nil {
		return nil, lapse.FieldErrorf(lapse.ENOTFOUND, "entitlement", "no entitlement named %s", in.Entitlement)
	}
	// An agent asks for a human sponsor and never gets more than the
	// sponsor could (agents.go): from here on it acts for the sponsor.
	var (
		agent   *agentRequest
		sponsor *lapse.Principal
	)
	if p.Kind == lapse.KindAgent {
		onBehalfOf, err := normalizeOnBehalfOf(in.OnBehalfOf)
		if err != nil {
			return nil, err
		}
		if agent, err = b.forSponsor(ctx, p, e, onBehalfOf); err != nil {
			return nil, err
		}
		p, sponsor = agent.actor, agent.sponsor
		ctx = lapse.NewContext(ctx, p)
	} else if in.OnBehalfOf != "" {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "on_behalf_of", "only an agent acts on behalf of a sponsor")
	}
	if err := exposureRefused(e); err != nil {
		return nil, err
	}
	explicit := in.Duration != 0
	now := b.clock.Now()
	dec := pol.DecideFor(p, sponsor, &in, policy.Filing{Channel: lapse.ChannelFrom(ctx)}, now)
	if dec.Outcome == policy.Refused {
		return nil, dec.Err
	}
	d := dec.Duration
	if agent != nil {
		if d, err = agent.applyCeiling(d, explicit, e); err != nil {
			return nil, err
		}
	}
	rule := e.RuleFor(p.Kind)
	decidedNow := dec.Outcome == policy.AutoApproved || dec.Outcome == policy.BreakGlass
	if decidedNow {
		// Deciding and granting at once: refused whole, nothing stored,
		// while the audit log cannot record it under a signature.
		if err := b.auditOpen(ctx); err != nil {
			return nil, err
		}
	}

	pending := e.PendingTimeout.D()
	if pending <= 0 {
		pending = DefaultPendingTimeout
	}
	r := &lapse.Request{
		ID:          lapse.NewID(lapse.PrefixRequest, now),
		Requester:   subject(p),
		Entitlement: e.Name,
		Duration:    lapse.Duration(d),
		Reason:      in.Reason,
		Ticket:      in.Ticket,
		TaskID:      in.TaskID,
		BreakGlass:  in.BreakGlass,
		StartsAt:    in.StartsAt,
		Channel:     lapse.ChannelFrom(ctx),
		State:       lapse.RequestPending,
		Required:    rule.TotalRequired(),
		CreatedAt:   now,
		ExpiresAt:   now.Add(pending),
	}
	if _, end := policy.GrantWindow(e, r, now); e.ClockStart == lapse.ClockAtRequest && end.Before(r.ExpiresAt) {
		// Its clock runs from the request: once the window has passed,
		// an approval could only make a grant that has already ended.
		r.ExpiresAt = end
	}
	r.Privilege = e.PrivilegeHash()
	if agent != nil {
		r.Delegation = lapse.DelegationMandate
		if agent.delegated {
			r.Delegation = lapse.DelegationTokenExchange
		}
	}
	r.Hash = r.ComputeHash()

	var g *lapse.Grant
	if decidedNow {
		r.Required = 0
		r.State = lapse.RequestApproved
		r.DecidedAt = now
		switch dec.Rule {
		case "break_glass":
			r.DecisionNote = "break glass: approved by the requester; review due"
			r.Review = &lapse.Review{State: lapse.ReviewPending, DueAt: now.Add(e.BreakGlass.ReviewWithin.D())}
		case "auto_when":
			r.DecisionNote = "auto-approved by policy (auto_when)"
		default:
			r.DecisionNote = "auto-approved by policy"
		}
		g = b.newGrant(r, e, now) // provisioned inline unless fenced or scheduled: inlineOrScheduled
		// The request names its grant, as one approved by votes does:
		// a break-glass review's rejection ends the grant it names.
		r.GrantID = g.ID
	}
	fenced := false
	err = b.updateUnder(ctx, c, func(tx lapse.Tx) error {
		data := withExposure(e, map[string]any{
			"entitlement": r.Entitlement, "duration": r.Duration.String(), "reason": r.Reason, "ticket": r.Ticket, "task_id": r.TaskID, "hash": r.Hash,
		})
		if agent != nil {
			m, err := agent.recheck(ctx, tx, d, now)
			if err != nil {
				return err
			}
			data = agent.eventData(data, m)
		}
		var err error
		if fenced, err = b.fence(ctx, tx, e, r.Requester.ID, g != nil); err != nil {
			return err
		}
		if g != nil {
			inlineOrScheduled(g, fenced, b.cfg, now)
		}
		if r.BreakGlass {
			data["break_glass"] = true
		}
		if !r.StartsAt.IsZero() {
			data["starts_at"] = r.StartsAt
		}
		if err := tx.InsertRequest(ctx, r); err != nil {
			return err
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestCreated, r, "pending", data)); err != nil {
			return err
		}
		if g == nil {
			return nil
		}
		if err := tx.InsertGrant(ctx, g); err != nil {
			return err
		}
		if r.BreakGlass {
			skipped := rule.AllApprovers()
			for _, rv := range e.BreakGlass.Reviewers {
				if !slices.Contains(skipped, rv) {
					skipped = append(skipped, rv)
				}
			}
			if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestBreakGlass, r, "self_approved", map[string]any{
				"reason": r.Reason, "skipped_approvers": skipped, "review_due": r.Review.DueAt,
			})); err != nil {
				return err
			}
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestDecided, r, string(lapse.RequestApproved), map[string]any{"rule": dec.Rule})); err != nil {
			return err
		}
		return appendEvent(ctx, tx, b.grantEvent(ctx, lapse.EventGrantCreated, g, string(g.State), map[string]any{"expires_at": g.ExpiresAt}))
	})
	if err != nil {
		return nil, storeErr("create request", err)
	}
	res := &lapse.RequestResult{Request: r}
	if g == nil {
		return res, nil
	}
	if fenced || g.State == lapse.GrantScheduled {
		// An earlier grant is not revoked yet, or the grant starts later:
		// it waits, scheduled, and its credentials are claimed once the
		// engine provisions it.
		res.Grant = g
		b.nudge()
		return res, nil
	}
	g, creds, err := b.provisionInline(ctx, g)
	res.Grant = g
	res.Credentials = creds
	if err != nil {
		return res, err
	}
	return res, nil
}

// newGrant makes the grant of r, decided at now, for the window the policy
// gives it (policy.GrantWindow).
func (b *Broker) newGrant(r *lapse.Request, e *lapse.Entitlement, now time.Time) *lapse.Grant {
	start, end := policy.GrantWindow(e, r, now)
	return &lapse.Grant{
		ID:          lapse.NewID(lapse.PrefixGrant, now),
		RequestID:   r.ID,
		RequestHash: r.Hash,
		Principal:   r.Requester,
		Entitlement: e.Name,
		Target:      e.Target,
		TaskID:      r.TaskID,
		State:       lapse.GrantScheduled,
		StartsAt:    start,
		ExpiresAt:   end,
		DueAt:       start,
		CreatedAt:   now,
	}
}

// GetRequest returns a request the caller may see: their own, or any for a
// caller who may approve or revoke.
func (b *Broker) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixRequest, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a request ID")
	}
	r, err := b.store.GetRequest(ctx, id)
	if err != nil {
		return nil, storeErr("get request", err)
	}
	if r.Requester.ID != p.ID && !slices.Contains(r.Requester.Act, p.ID) && !p.HasScope(lapse.ScopeApprove) && !p.HasScope(lapse.ScopeRevoke) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no request %s", id)
	}
	return r, nil
}

// ListRequests returns the requests the caller may see. Callers without the
// approve scope see only their own.
func (b *Broker) ListRequests(ctx context.Context, f lapse.RequestFilter) ([]*lapse.Request, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if f.Limit < 0 || f.Limit > lapse.MaxListLimit {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit must be between 1 and %d", lapse.MaxListLimit)
	}
	privileged := p.HasScope(lapse.ScopeApprove) || p.HasScope(lapse.ScopeRevoke)
	if !privileged {
		f.RequesterID = p.ID
	}
	if f.Approvable {
		if !p.HasScope(lapse.ScopeApprove) {
			return []*lapse.Request{}, nil
		}
		f.State = lapse.RequestPending
		want := f.Limit
		if want == 0 {
			want = lapse.DefaultListLimit
		}
		f.Limit = lapse.MaxListLimit
		all, err := b.store.ListRequests(ctx, f)
		if err != nil {
			return nil, storeErr("list requests", err)
		}
		out := make([]*lapse.Request, 0, len(all))
		for _, r := range all {
			if len(out) == want {
				break
			}
			if b.mayDecide(r, p, lapse.DecisionApprove) == nil && !votedBy(r, p.ID) {
				out = append(out, r)
			}
		}
		return out, nil
	}
	rs, err := b.store.ListRequests(ctx, f)
	if err != nil {
		return nil, storeErr("list requests", err)
	}
	return rs, nil
}

// votedBy reports whether the human id has already decided r, under any
// spelling of their identity.
func votedBy(r *lapse.Request, id string) bool {
	for _, a := range r.Approvals {
		if lapse.SameHuman(a.Approver.ID, id) {
			return true
		}
	}
	return false
}

// mayDecide says whether p may cast decision d on r under the policy in
// force. The requester is never eligible, whatever their groups or
// scopes and however their identity is spelled, and neither is anyone the
// requester acted for: a request an agent filed for its sponsor is the
// sponsor's own request, which someone else must approve. Only humans
// decide. An approval must count for the stage the request is in
// (policy.MayApprove); a denial may come from any eligible approver.
func (b *Broker) mayDecide(r *lapse.Request, p *lapse.Principal, d lapse.Decision) error {
	return mayDecideUnder(b.policy(), r, p, d)
}

// mayDecideUnder is mayDecide under the policy pol.
func mayDecideUnder(pol *policy.Policy, r *lapse.Request, p *lapse.Principal, d lapse.Decision) error {
	if lapse.SameHuman(p.ID, r.Requester.ID) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you cannot decide your own request")
	}
	if policy.Self(&r.Requester, p.ID) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you cannot decide a request filed on your behalf")
	}
	if p.Kind != lapse.KindHuman {
		return lapse.Errorf(lapse.EFORBIDDEN, "only humans approve or deny requests")
	}
	e := pol.Entitlement(r.Entitlement)
	if e == nil {
		return lapse.Errorf(lapse.ECONFLICT, "entitlement %s is no longer in the catalog", r.Entitlement)
	}
	rule := e.RuleFor(r.Requester.Kind)
	if d == lapse.DecisionDeny {
		return pol.MayDeny(rule, r, p)
	}
	return pol.MayApprove(rule, r, p)
}

// Approve records the caller's approval; see lapse.Service.
func (b *Broker) Approve(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	return b.decide(ctx, id, in, lapse.DecisionApprove)
}

// Deny records the caller's denial, which decides the request at once.
func (b *Broker) Deny(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	return b.decide(ctx, id, in, lapse.DecisionDeny)
}

func (b *Broker) decide(ctx context.Context, id string, in lapse.DecisionInput, d lapse.Decision) (*lapse.Request, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := requireScope(p, lapse.ScopeApprove); err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixRequest, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a request ID")
	}
	if err := checkText("comment", in.Comment, lapse.MaxCommentLength); err != nil {
		return nil, err
	}
	if d == lapse.DecisionApprove {
		// Every approval vote, not only the one that reaches quorum: an
		// approval is itself a decision the log must be able to record.
		// Denials stay possible, as they take privilege away.
		if err := b.auditOpen(ctx); err != nil {
			return nil, err
		}
	}
	var mandates []string
	if d == lapse.DecisionApprove {
		// An agent's request is approved only while a mandate still
		// covers it (agents.go); the transaction re-checks these.
		if mandates, _, err = b.approvalMandates(ctx, id); err != nil {
			return nil, err
		}
	}
	var (
		out      *lapse.Request
		expired  bool
		created  *lapse.Grant
		extended *lapse.Grant
	)
	// One policy checks, counts and records the vote (updateUnder); a
	// denial takes privilege away and is never refused for a reload.
	c := b.catalog.Load()
	check := c
	if d == lapse.DecisionDeny {
		check = nil
	}
	err = b.updateUnder(ctx, check, func(tx lapse.Tx) error {
		expired, created, extended = false, nil, nil
		r, err := tx.GetRequest(ctx, id)
		if err != nil {
			return err
		}
		now := b.clock.Now()
		if r.State == lapse.RequestPending && !now.Before(r.ExpiresAt) {
			// The request timed out before this decision: record that, and
			// refuse the decision after the commit.
			r.State = lapse.RequestExpired
			r.DecidedAt = now
			r.DecisionNote = "no decision before the pending timeout"
			if err := tx.UpdateRequest(ctx, r); err != nil {
				return err
			}
			expired = true
			out = r
			return appendEvent(ctx, tx, b.requestEvent(ctx, nil, lapse.EventRequestExpired, r, "expired", nil))
		}
		if r.State != lapse.RequestPending {
			return lapse.Errorf(lapse.ECONFLICT, "request is already %s", r.State)
		}
		if votedBy(r, p.ID) {
			// Before eligibility: a second vote by the same human is
			// "already decided", whatever the stage now needs.
			if err := mayDecideUnder(c.policy, r, p, lapse.DecisionDeny); err != nil {
				return err
			}
			return lapse.Errorf(lapse.ECONFLICT, "you already decided this request")
		}
		if err := mayDecideUnder(c.policy, r, p, d); err != nil {
			return err
		}
		if d == lapse.DecisionApprove {
			if err := exposureRefused(c.byName[r.Entitlement]); err != nil {
				return err
			}
			if e := c.byName[r.Entitlement]; r.Privilege != "" && e != nil && e.PrivilegeHash() != r.Privilege {
				// Approvers would approve a privilege the requester never
				// asked for: the request is filed again instead.
				return lapse.Errorf(lapse.ECONFLICT, "what %s grants changed since this request was filed; it must be filed again", r.Entitlement)
			}
			if r.Requester.Kind == lapse.KindAgent {
				if err := mandateStillCovers(ctx, tx, r, mandates, now); err != nil {
					return err
				}
			}
		}
		if in.RequestHash != "" && in.RequestHash != r.Hash {
			return lapse.FieldErrorf(lapse.ECONFLICT, "request_hash", "the request is not the one you reviewed")
		}
		a := &lapse.Approval{
			RequestID: r.ID, Approver: subject(p), Decision: d, Comment: in.Comment,
			RequestHash: r.Hash, Channel: lapse.ChannelFrom(ctx), CreatedAt: now,
		}
		if err := tx.InsertApproval(ctx, a); err != nil {
			return err
		}
		r.Approvals = append(r.Approvals, a)
		evType := lapse.EventRequestApproved
		if d == lapse.DecisionDeny {
			evType = lapse.EventRequestDenied
		}
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, evType, r, string(d), map[string]any{"comment": in.Comment, "request_hash": r.Hash})); err != nil {
			return err
		}
		switch {
		case d == lapse.DecisionDeny:
			// A deny that lands before quorum decides the request.
			r.State = lapse.RequestDenied
			r.DecidedAt = now
			r.DecisionNote = "denied by " + p.ID
		case passed(c.policy, r):
			r.State = lapse.RequestApproved
			r.DecidedAt = now
			r.DecisionNote = "every approval stage passed"
			if r.Extends != "" {
				// An extension moves the deadline of the grant it extends.
				if extended, err = b.applyExtension(ctx, tx, c, r, now); err != nil {
					return err
				}
				r.GrantID = extended.ID
				break
			}
			created = b.newGrant(r, c.byName[r.Entitlement], now)
			r.GrantID = created.ID
		}
		if err := tx.UpdateRequest(ctx, r); err != nil {
			return err
		}
		if r.State != lapse.RequestPending {
			if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestDecided, r, string(r.State), map[string]any{"approvals": approvalsCount(r), "required": r.Required})); err != nil {
				return err
			}
		}
		if created != nil {
			if err := tx.InsertGrant(ctx, created); err != nil {
				return err
			}
			if err := appendEvent(ctx, tx, b.grantEvent(ctx, lapse.EventGrantCreated, created, "scheduled", map[string]any{"starts_at": created.StartsAt, "expires_at": created.ExpiresAt})); err != nil {
				return err
			}
		}
		out = r
		return nil
	})
	if err != nil {
		return nil, storeErr("decide request", err)
	}
	if expired {
		return out, lapse.Errorf(lapse.ECONFLICT, "request expired before it was decided")
	}
	if extended != nil {
		b.extendOnTarget(ctx, extended)
	}
	if created != nil {
		b.nudge()
	}
	return out, nil
}

// passed reports whether r's approvals pass every stage of its
// entitlement under pol.
func passed(pol *policy.Policy, r *lapse.Request) bool {
	e := pol.Entitlement(r.Entitlement)
	return e != nil && pol.Progress(e.RuleFor(r.Requester.Kind), &r.Requester, r.Approvals).Done
}

// updateUnder runs fn in a transaction that commits only while c, the
// policy the operation decided under, is still in force (any c when nil).
// A reload that lands in the middle of a decision would otherwise have it
// checked by one policy and counted, applied or recorded under another
// (the events carry the version in force when they are written). The
// caller is told to try again, under the new policy.
func (b *Broker) updateUnder(ctx context.Context, c *catalog, fn func(tx lapse.Tx) error) error {
	return b.store.Update(ctx, func(tx lapse.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if c != nil && b.catalog.Load() != c {
			return lapse.Errorf(lapse.ECONFLICT, "the policy changed while this was decided; nothing was changed, try again")
		}
		return nil
	})
}

// approvalsCount counts distinct approving humans. Distinctness is also
// enforced by the store (one row per approver), so this is belt and braces.
func approvalsCount(r *lapse.Request) int {
	seen := make(map[string]bool, len(r.Approvals))
	for _, a := range r.Approvals {
		if a.Decision == lapse.DecisionApprove && !lapse.SameHuman(a.Approver.ID, r.Requester.ID) {
			seen[lapse.HumanKey(a.Approver.ID)] = true
		}
	}
	return len(seen)
}

// CancelRequest withdraws the caller's own pending request.
func (b *Broker) CancelRequest(ctx context.Context, id string) (*lapse.Request, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !lapse.ValidID(lapse.PrefixRequest, id) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "id", "not a request ID")
	}
	var out *lapse.Request
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		r, err := tx.GetRequest(ctx, id)
		if err != nil {
			return err
		}
		if r.Requester.ID != p.ID && !slices.Contains(r.Requester.Act, p.ID) {
			return lapse.Errorf(lapse.ENOTFOUND, "no request %s", id)
		}
		if r.State != lapse.RequestPending {
			return lapse.Errorf(lapse.ECONFLICT, "request is already %s", r.State)
		}
		r.State = lapse.RequestCancelled
		r.DecidedAt = b.clock.Now()
		r.DecisionNote = "cancelled by the requester"
		if r.Requester.ID != p.ID {
			r.DecisionNote = "cancelled by the sponsor " + p.ID
		}
		if err := tx.UpdateRequest(ctx, r); err != nil {
			return err
		}
		out = r
		return appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestCancelled, r, "cancelled", nil))
	})
	if err != nil {
		return nil, storeErr("cancel request", err)
	}
	return out, nil
}

// storeErr passes application errors through and turns anything else into
// EUNAVAILABLE: the store could not be used, so nothing was granted.
func storeErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if code := lapse.ErrorCode(err); code != lapse.EINTERNAL {
		return err
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the store is unavailable; nothing was changed", Err: err}
}

func appendEvent(ctx context.Context, tx lapse.Tx, e *lapse.Event) error {
	return tx.AppendEvent(ctx, e)
}

func (b *Broker) requestEvent(ctx context.Context, actor *lapse.Principal, typ string, r *lapse.Request, outcome string, data map[string]any) *lapse.Event {
	e := &lapse.Event{Time: b.clock.Now(), Type: typ, Channel: lapse.ChannelFrom(ctx), RequestID: r.ID, GrantID: r.GrantID, Outcome: outcome,
		RequestHash: r.Hash, PolicyVersion: b.catalog.Load().version}
	if actor != nil {
		e.ActorID, e.ActorKind, e.Act = actor.ID, actor.Kind, actor.Act
	} else {
		e.ActorID, e.ActorKind, e.Channel = "lapse", "", lapse.ChannelEngine
	}
	e.Data = eventData(data)
	return e
}

func (b *Broker) grantEvent(ctx context.Context, typ string, g *lapse.Grant, outcome string, data map[string]any) *lapse.Event {
	e := &lapse.Event{Time: b.clock.Now(), Type: typ, Channel: lapse.ChannelEngine, ActorID: "lapse", RequestID: g.RequestID, GrantID: g.ID, Outcome: outcome,
		RequestHash: g.RequestHash, PolicyVersion: b.catalog.Load().version}
	if p := lapse.FromContext(ctx); p != nil {
		e.ActorID, e.ActorKind, e.Act, e.Channel = p.ID, p.Kind, p.Act, lapse.ChannelFrom(ctx)
	}
	e.Data = eventData(data)
	return e
}

// eventData encodes event details. Callers pass only non-secret values.
func eventData(data map[string]any) json.RawMessage {
	if len(data) == 0 {
		return nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return json.RawMessage(`{"error":"unencodable event data"}`)
	}
	return b
}
