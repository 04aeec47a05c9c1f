package lapse

import "time"

// GrantState is where a grant is in its lifecycle (DESIGN.md §2).
type GrantState string

// Grant states.
//
//	scheduled ─▶ provisioning ─▶ active ─▶ revoking ─▶ verifying ─▶ revoked
//	                 │                                     │
//	                 └─(failure: undo)─▶ revoking          └─▶ revoke_failed ─(retry)─▶ revoking
//
// revoke_failed is not terminal: the engine retries it forever with capped
// exponential back-off. Only revoked is terminal.
const (
	GrantScheduled    GrantState = "scheduled"
	GrantProvisioning GrantState = "provisioning"
	GrantActive       GrantState = "active"
	GrantRevoking     GrantState = "revoking"
	GrantVerifying    GrantState = "verifying"
	GrantRevoked      GrantState = "revoked"
	GrantRevokeFailed GrantState = "revoke_failed"
)

// AllGrantStates lists every state, for metrics and validation.
var AllGrantStates = []GrantState{GrantScheduled, GrantProvisioning, GrantActive, GrantRevoking, GrantVerifying, GrantRevoked, GrantRevokeFailed}

// Terminal reports whether the grant is finished (revocation verified).
func (s GrantState) Terminal() bool { return s == GrantRevoked }

// Live reports whether the privilege may exist on the target: everything
// from provisioning until revocation is verified.
func (s GrantState) Live() bool { return s != GrantScheduled && s != GrantRevoked }

// EndReason says why a grant ended.
type EndReason string

// End reasons.
const (
	EndExpired         EndReason = "expired"          // the deadline passed
	EndReleased        EndReason = "released"         // the grantee gave it back
	EndRevoked         EndReason = "revoked"          // an operator revoked it
	EndProvisionFailed EndReason = "provision_failed" // provisioning failed; what was made is undone
	EndCancelled       EndReason = "cancelled"        // the request was cancelled before the grant started
)

// Grant is a materialised privilege: one principal, one entitlement, one
// target, from StartsAt until ExpiresAt at the latest.
type Grant struct {
	ID        string `json:"id"`
	RequestID string `json:"request_id"`
	// RequestHash is the hash of the request the grant was made for, so
	// every event of the grant names the exact request it carries out.
	RequestHash string     `json:"request_hash,omitempty"`
	Principal   Principal  `json:"principal"`
	Entitlement string     `json:"entitlement"`
	Target      string     `json:"target"`
	TaskID      string     `json:"task_id,omitempty"`
	State       GrantState `json:"state"`
	EndReason   EndReason  `json:"end_reason,omitempty"`
	StartsAt    time.Time  `json:"starts_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	// DueAt is when the engine must next act on the grant: StartsAt while
	// scheduled, ExpiresAt while active, the next retry while revoke_failed,
	// immediately while provisioning, revoking or verifying. Zero when
	// revoked. It is the durable deadline: the engine finds its work by it.
	DueAt time.Time `json:"due_at,omitzero"`

	// ConnectorState is the connector's opaque state (e.g. the generated
	// role name), kept by the store and handed back on Revoke and Verify.
	// It never holds a secret.
	ConnectorState []byte `json:"-"`
	// Info is non-secret information about the credentials (a user name, a
	// host, a token's audience) that may be shown at any time.
	Info map[string]string `json:"info,omitempty"`
	// SealedCredentials holds the credentials, encrypted, until the grantee
	// claims them once; then it is cleared.
	SealedCredentials  []byte `json:"-"`
	CredentialsClaimed bool   `json:"credentials_claimed"`
	// SealedProbe holds the connector's probe material (see
	// connector.GrantResponse.Probe), encrypted, until revocation is
	// verified; then it is cleared.
	SealedProbe []byte `json:"-"`

	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error,omitempty"`

	// Lease: the engine process that owns the grant's in-flight work and
	// until when, and the fencing token it received with the claim. A
	// process whose lease was taken over cannot write (the version moved).
	LeaseOwner string    `json:"-"`
	LeaseUntil time.Time `json:"-"`
	Fence      int64     `json:"-"`

	CreatedAt       time.Time `json:"created_at"`
	ActivatedAt     time.Time `json:"activated_at,omitzero"`
	RevokeStartedAt time.Time `json:"revoke_started_at,omitzero"`
	RevokedAt       time.Time `json:"revoked_at,omitzero"`
	Version         int64     `json:"version"`

	Checkpoints []*Checkpoint `json:"checkpoints,omitempty"`
	Events      []*Event      `json:"events,omitempty"`
}

// GrantFilter selects grants. Zero fields do not filter.
type GrantFilter struct {
	State       GrantState `json:"state,omitempty"`
	PrincipalID string     `json:"principal_id,omitempty"`
	Target      string     `json:"target,omitempty"`
	Entitlement string     `json:"entitlement,omitempty"`
	RequestID   string     `json:"request_id,omitempty"`
	// Live selects grants whose privilege may exist (not scheduled, not revoked).
	Live  bool `json:"live,omitempty"`
	Limit int  `json:"limit,omitempty"`
}

// Credentials are what the grantee uses: shown once, never stored in clear,
// never logged. Secret holds the secret values (a token, a password); Info
// the rest.
type Credentials struct {
	GrantID   string            `json:"grant_id"`
	Target    string            `json:"target"`
	ExpiresAt time.Time         `json:"expires_at"`
	Secret    map[string]string `json:"secret"`
	Info      map[string]string `json:"info,omitempty"`
}

// ReleaseInput is what a grantee sends to give a grant back.
type ReleaseInput struct {
	// Wait makes the call return only once revocation is verified (or the
	// context ends).
	Wait bool `json:"wait,omitempty"`
}

// RevokeInput is what an operator sends to revoke a grant.
type RevokeInput struct {
	Reason string `json:"reason,omitempty"`
	Wait   bool   `json:"wait,omitempty"`
}
