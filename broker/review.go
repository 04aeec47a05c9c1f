package broker

import (
	"context"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// ReviewRequest records the post-review of a break-glass request; see
// lapse.Service. The reviewers are the break-glass rule's, or the
// entitlement's approvers when it names none; the requester, and anyone
// they acted for, never reviews their own. A review is written once. A
// rejection needs a comment (it is the finding an auditor reads) and ends
// the grant if it is still active.
func (b *Broker) ReviewRequest(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error) {
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
	switch in.Outcome {
	case lapse.ReviewAccepted, lapse.ReviewRejected:
	default:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "outcome", "outcome must be %s or %s", lapse.ReviewAccepted, lapse.ReviewRejected)
	}
	if err := checkText("comment", in.Comment, lapse.MaxCommentLength); err != nil {
		return nil, err
	}
	if in.Outcome == lapse.ReviewRejected && in.Comment == "" {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "comment", "a rejection needs a comment saying what was wrong")
	}
	var out *lapse.Request
	err = b.store.Update(ctx, func(tx lapse.Tx) error {
		r, err := tx.GetRequest(ctx, id)
		if err != nil {
			return err
		}
		if !r.BreakGlass || r.Review == nil {
			return lapse.Errorf(lapse.ECONFLICT, "request %s is not a break-glass request; it has no post-review", id)
		}
		if err := b.mayReview(r, p); err != nil {
			return err
		}
		if r.Review.State != lapse.ReviewPending {
			return lapse.Errorf(lapse.ECONFLICT, "request %s was already reviewed: %s by %s", id, r.Review.State, r.Review.Reviewer)
		}
		now := b.clock.Now()
		r.Review = &lapse.Review{State: in.Outcome, DueAt: r.Review.DueAt, Reviewer: p.ID, Comment: in.Comment, At: now}
		if err := tx.UpdateRequest(ctx, r); err != nil {
			return err
		}
		out = r
		if err := appendEvent(ctx, tx, b.requestEvent(ctx, p, lapse.EventRequestReviewed, r, in.Outcome, map[string]any{
			"comment": in.Comment, "late": now.After(r.Review.DueAt),
		})); err != nil {
			return err
		}
		if in.Outcome != lapse.ReviewRejected || r.GrantID == "" {
			return nil
		}
		// The rejection ends the grant in the same write: it is never
		// recorded while the grant it ends lives on.
		g, err := tx.GetGrant(ctx, r.GrantID)
		if err != nil {
			return err
		}
		return b.startEnd(ctx, tx, g, lapse.EndRevoked, "break-glass review rejected: "+in.Comment)
	})
	if err != nil {
		return nil, storeErr("review request", err)
	}
	if in.Outcome == lapse.ReviewRejected && out.GrantID != "" {
		b.nudge()
	}
	return out, nil
}

// mayReview says whether p may review the break-glass request r.
func (b *Broker) mayReview(r *lapse.Request, p *lapse.Principal) error {
	if policy.Self(&r.Requester, p.ID) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you cannot review your own break-glass request")
	}
	if p.Kind != lapse.KindHuman {
		return lapse.Errorf(lapse.EFORBIDDEN, "only humans review break-glass requests")
	}
	pol := b.policy()
	e := pol.Entitlement(r.Entitlement)
	if e == nil || e.BreakGlass == nil {
		// The rule is gone from the policy: an administrator still
		// closes the review.
		if p.HasScope(lapse.ScopeAdmin) {
			return nil
		}
		return lapse.Errorf(lapse.EFORBIDDEN, "%s no longer has a break-glass rule; an administrator reviews it", r.Entitlement)
	}
	reviewers := e.BreakGlass.Reviewers
	if len(reviewers) == 0 {
		reviewers = e.RuleFor(r.Requester.Kind).AllApprovers()
	}
	if !pol.Matches(reviewers, p) {
		return lapse.Errorf(lapse.EFORBIDDEN, "you are not a reviewer of break-glass requests for %s", r.Entitlement)
	}
	return nil
}
