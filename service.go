package lapse

import "context"

// Service is what Lapse offers its callers: the broker implements it on top
// of the store and the connectors, the HTTP API serves it, and the API client
// implements it again over HTTP so the CLI speaks the same interface. The
// caller is the principal in ctx (see NewContext).
type Service interface {
	// Whoami returns the authenticated caller.
	// Returns EUNAUTHORIZED if there is none.
	Whoami(ctx context.Context) (*Principal, error)
	// Entitlements returns the catalog entries the caller may request.
	Entitlements(ctx context.Context) ([]*Entitlement, error)

	// CreateRequest files a request. If the entitlement is auto-approved the
	// grant is created and provisioned before it returns, and the returned
	// result carries the credentials.
	// Returns EINVALID (with the field) for bad input, ENOTFOUND for an
	// unknown entitlement, EFORBIDDEN if the caller may not request it,
	// EUNAVAILABLE if no privilege can be issued right now.
	CreateRequest(ctx context.Context, in RequestInput) (*RequestResult, error)
	// GetRequest returns a request the caller may see.
	// Returns ENOTFOUND if it does not exist or is not visible to the caller.
	GetRequest(ctx context.Context, id string) (*Request, error)
	// ListRequests returns the requests the caller may see.
	ListRequests(ctx context.Context, f RequestFilter) ([]*Request, error)
	// Approve records the caller's approval. When quorum is reached the
	// request becomes approved and its grant is created.
	// Returns EFORBIDDEN if the caller is the requester or not an eligible
	// approver, ECONFLICT if the request is decided or the caller already
	// decided it, or if RequestHash does not match.
	Approve(ctx context.Context, id string, in DecisionInput) (*Request, error)
	// Deny records the caller's denial, which decides the request.
	// Same errors as Approve.
	Deny(ctx context.Context, id string, in DecisionInput) (*Request, error)
	// CancelRequest withdraws the caller's own pending request.
	// Returns ECONFLICT if it is no longer pending.
	CancelRequest(ctx context.Context, id string) (*Request, error)
	// ReviewRequest records the post-review of a break-glass request by
	// someone other than its requester (scope approve); a rejection ends
	// its grant if still active.
	// Returns EFORBIDDEN for the requester or a caller who is not a
	// reviewer, ECONFLICT if it is not break-glass or already reviewed.
	ReviewRequest(ctx context.Context, id string, in ReviewInput) (*Request, error)

	// GetGrant returns a grant with its checkpoints and history.
	// Returns ENOTFOUND if it does not exist or is not visible to the caller.
	GetGrant(ctx context.Context, id string) (*Grant, error)
	// ListGrants returns the grants the caller may see.
	ListGrants(ctx context.Context, f GrantFilter) ([]*Grant, error)
	// ClaimCredentials returns the grant's credentials to its grantee, once.
	// Returns EGONE if they were already claimed, ECONFLICT if the grant is
	// not active yet or any more.
	ClaimCredentials(ctx context.Context, grantID string) (*Credentials, error)
	// Release ends the caller's own grant now.
	Release(ctx context.Context, grantID string, in ReleaseInput) (*Grant, error)
	// Revoke ends any grant now (scope revoke).
	Revoke(ctx context.Context, grantID string, in RevokeInput) (*Grant, error)
	// ExtendGrant asks for more time on the caller's own active grant: a
	// request that extends it (Request.Extends), approved at once or by
	// the entitlement's stages per its extension rule; once approved the
	// grant's deadline moves. Returns EFORBIDDEN when the entitlement or
	// its target cannot extend, EINVALID (field duration) beyond the
	// rule's maximum, ECONFLICT when the grant is not active.
	ExtendGrant(ctx context.Context, grantID string, in ExtendInput) (*RequestResult, error)

	// CreateMandate gives an agent a mandate to ask for access on the
	// caller's behalf (docs/agents.md). The caller is the sponsor: a human
	// with scope request who may request every entitlement named.
	// Returns EINVALID (with the field) for bad input, ENOTFOUND for an
	// unknown entitlement, EFORBIDDEN if the caller is not a human or may
	// not request an entitlement, or an entitlement is closed to agents.
	CreateMandate(ctx context.Context, in MandateInput) (*Mandate, error)
	// ListMandates returns the mandates the caller may see: those it gave
	// or that name it as the agent, or all of them for a caller with scope
	// admin, approve or revoke.
	ListMandates(ctx context.Context, f MandateFilter) ([]*Mandate, error)
	// RevokeMandate ends a mandate now, and with it the grants its agent
	// holds under it; only its sponsor or an administrator may. Revoking a
	// revoked mandate changes nothing.
	// Returns ENOTFOUND if it does not exist or is not visible to the caller.
	RevokeMandate(ctx context.Context, id string) (*Mandate, error)

	// CreateAPIKey creates a key (scope admin); the secret is returned once.
	CreateAPIKey(ctx context.Context, in APIKeyInput) (*NewAPIKey, error)
	// ListAPIKeys lists keys (scope admin).
	ListAPIKeys(ctx context.Context) ([]*APIKey, error)
	// RevokeAPIKey revokes a key (scope admin).
	RevokeAPIKey(ctx context.Context, prefix string) (*APIKey, error)
}

// RequestResult is a filed request and, when it was decided at once (auto
// approval), its grant and the grant's credentials.
type RequestResult struct {
	Request     *Request     `json:"request"`
	Grant       *Grant       `json:"grant,omitempty"`
	Credentials *Credentials `json:"credentials,omitempty"`
}
