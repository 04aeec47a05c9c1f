package lapse

import (
	"context"
	"slices"
	"time"
)

// Mandate is a human sponsor's standing permission for one AI agent to ask
// for access on the sponsor's behalf (DESIGN.md §3, docs/agents.md): which
// entitlements, for at most how long per grant, until when. It grants
// nothing by itself. An agent's request under a mandate is decided on the
// sponsor as recorded here (the sponsor's eligibility) intersected with the
// mandate (the agent's ceiling), and recorded as the agent's, acting for
// the sponsor (Principal.Act). A mandate ends at ExpiresAt or when its
// sponsor or an administrator revokes it.
type Mandate struct {
	ID string `json:"id"`
	// AgentID is the normalised ID of the agent principal the mandate is for.
	AgentID string `json:"agent_id"`
	// Sponsor is the human who gave the mandate, as they authenticated when
	// they gave it: ID, kind (always human), name and groups. Requests
	// under the mandate are checked against this principal, so a later
	// change of the sponsor's groups does not widen an existing mandate.
	Sponsor Principal `json:"sponsor"`
	// Entitlements are the names the agent may ask for, in the order given.
	Entitlements []string `json:"entitlements"`
	// MaxDuration is the ceiling of each grant asked for under the mandate.
	MaxDuration Duration  `json:"max_duration"`
	Channel     string    `json:"channel,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	// RevokedBy is the ID of who revoked it: the sponsor or an administrator.
	RevokedBy string `json:"revoked_by,omitempty"`
}

// Live reports whether the mandate is in force at now: not revoked and not
// expired.
func (m *Mandate) Live(now time.Time) bool {
	return m.RevokedAt.IsZero() && now.Before(m.ExpiresAt)
}

// Covers reports whether the mandate names entitlement.
func (m *Mandate) Covers(entitlement string) bool {
	return slices.Contains(m.Entitlements, entitlement)
}

// MandateInput is what a sponsor sends to give an agent a mandate.
type MandateInput struct {
	// AgentID is the agent principal's ID (normalised like every ID).
	AgentID string `json:"agent_id"`
	// Entitlements are the entitlement names the agent may ask for: each
	// must be open to the agent lane and one the sponsor may request.
	Entitlements []string `json:"entitlements"`
	// MaxDuration is the ceiling of each grant (required).
	MaxDuration Duration `json:"max_duration"`
	// ExpiresIn is how long the mandate lasts (required, at most
	// MaxMandateLifetime).
	ExpiresIn Duration `json:"expires_in"`
}

// MandateFilter selects mandates. Zero fields do not filter.
type MandateFilter struct {
	AgentID   string `json:"agent_id,omitempty"`
	SponsorID string `json:"sponsor_id,omitempty"`
	// Live selects the mandates in force now. The store does not read it:
	// the broker turns it into LiveAt on its own clock.
	Live bool `json:"live,omitempty"`
	// LiveAt, when set, selects the mandates in force at that time.
	LiveAt time.Time `json:"live_at,omitzero"`
	Limit  int       `json:"limit,omitempty"`
}

// Limits of mandates.
const (
	// MaxMandateLifetime bounds how long a mandate may last: an agent's
	// standing permission is renewed by a person at least monthly.
	MaxMandateLifetime = 31 * 24 * time.Hour
	// MaxMandateEntitlements bounds how many entitlements one mandate names.
	MaxMandateEntitlements = 32
)

type sponsorKey struct{}

// WithSponsor returns a context in which the caller, an agent, acts for
// sponsor, who authenticated in the same call: RFC 8693 delegation, where
// the sponsor's credential is the subject token and the agent's the actor
// token. The caller's Act must be exactly [sponsor.ID]. The broker then
// decides on the sponsor as authenticated now (and on the agent's
// mandates from that sponsor, if it has any) instead of on a mandate
// alone.
func WithSponsor(ctx context.Context, sponsor *Principal) context.Context {
	return context.WithValue(ctx, sponsorKey{}, sponsor)
}

// SponsorFrom returns the sponsor set by WithSponsor, or nil.
func SponsorFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(sponsorKey{}).(*Principal)
	return p
}
