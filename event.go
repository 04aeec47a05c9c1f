package lapse

import (
	"encoding/json"
	"time"
)

// Event is one entry of the append-only audit log: one step of one request
// or grant, or one administrative act. Data never holds a secret.
type Event struct {
	Seq       int64         `json:"seq"`
	Time      time.Time     `json:"time"`
	Type      string        `json:"type"`
	ActorID   string        `json:"actor_id,omitempty"`
	ActorKind PrincipalKind `json:"actor_kind,omitempty"`
	Channel   string        `json:"channel,omitempty"`
	RequestID string        `json:"request_id,omitempty"`
	GrantID   string        `json:"grant_id,omitempty"`
	Outcome   string        `json:"outcome,omitempty"`
	// Act is the actor's delegation chain (Principal.Act) when it acted
	// for someone else.
	Act []string `json:"act,omitempty"`
	// RequestHash is the hash of the immutable request this event is
	// about (Request.Hash), when it is about one: approvals bind to it.
	RequestHash string `json:"request_hash,omitempty"`
	// PolicyVersion identifies the policy in force when the event was
	// written: a content hash of the entitlement catalog.
	PolicyVersion string          `json:"policy_version,omitempty"`
	Data          json.RawMessage `json:"data,omitempty"`
}

// Event types. Names are stable: SIEM rules match on them.
const (
	EventRequestCreated       = "request.created"
	EventRequestApproved      = "request.approved" // one approval vote
	EventRequestDenied        = "request.denied"
	EventRequestDecided       = "request.decided" // the request reached a terminal state
	EventRequestCancelled     = "request.cancelled"
	EventRequestExpired       = "request.expired"
	EventGrantCreated         = "grant.created"
	EventGrantProvisioned     = "grant.provisioned"
	EventGrantProvisionFailed = "grant.provision_failed"
	EventCredentialsClaimed   = "grant.credentials_claimed"
	EventGrantRevokeStarted   = "grant.revoke_started"
	EventGrantRevokeFailed    = "grant.revoke_failed"
	EventGrantVerified        = "grant.verified"
	EventGrantVerifyFailed    = "grant.verify_failed"
	EventGrantRevoked         = "grant.revoked"
	EventAPIKeyCreated        = "apikey.created"
	EventAPIKeyRevoked        = "apikey.revoked"
	// EventMandateCreated and EventMandateRevoked record a human sponsor
	// giving an AI agent a mandate, and its revocation by the sponsor or
	// an administrator (docs/agents.md). Data names the mandate, the
	// agent, the entitlements and the ceiling.
	EventMandateCreated = "mandate.created"
	EventMandateRevoked = "mandate.revoked"
	// EventGrantFenced records that a grant waits, unprovisioned, until an
	// earlier grant of the same principal and entitlement is revoked and
	// verified (the entitlement's fence). Written once per wait.
	EventGrantFenced = "grant.fenced"
	// EventReceiptIssued records that the audit log signed a revocation
	// receipt for a grant: a use of the signing key.
	EventReceiptIssued = "receipt.issued"
	// EventCheckpointRequested records that someone asked the audit log
	// to sign a checkpoint now.
	EventCheckpointRequested = "audit.checkpoint_requested"
	// EventServerRoleGranted records that `lapse admin grant-server-role`
	// set a database role's privileges on the store.
	EventServerRoleGranted = "store.server_role_granted"
	// EventDriftChecked records one pass of the drift reconciler over the
	// targets (docs/zsp.md): what it looked at and how much drift it found.
	EventDriftChecked = "zsp.drift_checked"
	// EventDriftFound records one privilege on a target that no active
	// grant explains: an orphaned Lapse-made principal or a standing one.
	EventDriftFound = "zsp.drift_found"
	// EventDriftRemoved records the removal of an orphaned principal found
	// by the reconciler (Revoke, then Verify) and its outcome.
	EventDriftRemoved = "zsp.drift_removed"
	// EventCanaryPassed and EventCanaryFailed record one session-level
	// test of a target (`lapse zsp test`, or the scheduled canary): grant,
	// use, hold a session, release, and check that a new login and the
	// held session are both refused. Data holds the measured times; the
	// event belongs to the canary grant's history when there was one.
	EventCanaryPassed = "zsp.canary_passed"
	EventCanaryFailed = "zsp.canary_failed"
	// EventRequestBreakGlass records a break-glass request: self-approved
	// with its mandatory reason, granted at once. Data lists the approvers
	// the policy would have asked ("skipped_approvers"), every one of whom
	// is notified, and the post-review deadline ("review_due").
	EventRequestBreakGlass = "request.break_glass"
	// EventRequestReviewed records the mandatory post-review of a
	// break-glass request by someone other than its requester: outcome is
	// "accepted" or "rejected".
	EventRequestReviewed = "request.reviewed"
	// EventGrantExtended records that a grant's end moved out after an
	// approved extension request; data holds the old and new expiry.
	EventGrantExtended = "grant.extended"
	// EventGrantCancelled records that a scheduled grant was never
	// provisioned because the decision no longer held at provision time
	// (the policy now denies, an approver is no longer eligible, the
	// request is past its window); data holds the reason.
	EventGrantCancelled = "grant.cancelled"
	// EventPolicyLoaded records that the server put a policy in force,
	// at start or on reload; data holds its version and files.
	EventPolicyLoaded = "policy.loaded"
)

// Channels through which an action arrived.
const (
	ChannelAPI     = "api"
	ChannelCLI     = "cli"
	ChannelMCP     = "mcp"     // lapse mcp: an AI agent's tool calls
	ChannelMachine = "machine" // POST /v1/token: a workload, by policy, with no human
	ChannelEngine  = "engine"
	ChannelSystem  = "system"
)

// EventFilter selects events. Zero fields do not filter.
type EventFilter struct {
	RequestID string `json:"request_id,omitempty"`
	GrantID   string `json:"grant_id,omitempty"`
	AfterSeq  int64  `json:"after_seq,omitempty"`
	Limit     int    `json:"limit,omitempty"`
}
