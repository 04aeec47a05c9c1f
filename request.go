package lapse

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// RequestState is where a request is in its lifecycle (DESIGN.md §2).
type RequestState string

// Request states. Only pending is not terminal.
const (
	RequestPending   RequestState = "pending"
	RequestApproved  RequestState = "approved"
	RequestDenied    RequestState = "denied"
	RequestCancelled RequestState = "cancelled"
	RequestExpired   RequestState = "expired"
)

// Terminal reports whether no further decision can change the request.
func (s RequestState) Terminal() bool { return s != RequestPending }

// Request is a principal asking for one entitlement for a duration. The
// fields that describe what is asked are immutable once filed; Hash covers
// them, and every approval binds to that hash.
type Request struct {
	ID          string    `json:"id"`
	Requester   Principal `json:"requester"`
	Entitlement string    `json:"entitlement"`
	Duration    Duration  `json:"duration"`
	Reason      string    `json:"reason,omitempty"`
	Ticket      string    `json:"ticket,omitempty"`
	TaskID      string    `json:"task_id,omitempty"`
	Channel     string    `json:"channel,omitempty"`
	Hash        string    `json:"hash"`
	// BreakGlass is set on a request its requester approved themselves
	// under the entitlement's break-glass rule.
	BreakGlass bool `json:"break_glass,omitempty"`
	// StartsAt, when set, is the scheduled start the requester asked for.
	StartsAt time.Time `json:"starts_at,omitzero"`
	// Extends, when set, names the active grant this request asks to
	// extend by Duration.
	Extends string `json:"extends,omitempty"`
	// Privilege is the entitlement's PrivilegeHash when the request was
	// filed: approvals bind to it through Hash.
	Privilege string `json:"privilege,omitempty"`
	// Delegation says how an agent's request names its sponsor:
	// DelegationMandate or DelegationTokenExchange; empty for others.
	Delegation string       `json:"delegation,omitempty"`
	State      RequestState `json:"state"`
	Approvals  []*Approval  `json:"approvals,omitempty"`
	// Review is the post-review of a break-glass request.
	Review *Review `json:"review,omitempty"`
	// Required is the number of approvals the policy demanded when the
	// request was filed (0 for auto-approval).
	Required     int       `json:"required"`
	GrantID      string    `json:"grant_id,omitempty"`
	DecisionNote string    `json:"decision_note,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	ExpiresAt    time.Time `json:"expires_at"` // when a pending request times out
	DecidedAt    time.Time `json:"decided_at,omitzero"`
	Version      int64     `json:"version"`
}

// ComputeHash returns the SHA-256 of the request's immutable fields in a
// canonical JSON encoding. Approvals carry this hash, so an approval can never
// be replayed against a request that says something else.
func (r *Request) ComputeHash() string {
	canon := struct {
		ID          string        `json:"id"`
		Requester   string        `json:"requester"`
		Kind        PrincipalKind `json:"kind"`
		Act         []string      `json:"act,omitempty"` // on whose behalf: part of who asked
		Entitlement string        `json:"entitlement"`
		Duration    int64         `json:"duration_ns"`
		Reason      string        `json:"reason"`
		Ticket      string        `json:"ticket"`
		TaskID      string        `json:"task_id"`
		CreatedAt   int64         `json:"created_at_unix_nano"`
		// Added later, omitted when unset so that older requests keep
		// their hashes.
		BreakGlass bool   `json:"break_glass,omitempty"`
		StartsAt   int64  `json:"starts_at_unix_nano,omitempty"`
		Extends    string `json:"extends,omitempty"`
		Privilege  string `json:"privilege,omitempty"`
		Delegation string `json:"delegation,omitempty"`
	}{r.ID, r.Requester.ID, r.Requester.Kind, r.Requester.Act, r.Entitlement, int64(r.Duration), r.Reason, r.Ticket, r.TaskID, r.CreatedAt.UnixNano(),
		r.BreakGlass, unixNanoOrZero(r.StartsAt), r.Extends, r.Privilege, r.Delegation}
	b, _ := json.Marshal(canon) // a fixed struct of strings and ints cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Delegations of an agent's request (Request.Delegation).
const (
	// DelegationMandate: a mandate the sponsor gave earlier covers it.
	DelegationMandate = "mandate"
	// DelegationTokenExchange: the sponsor authenticated in the same call
	// (RFC 8693 with an actor token).
	DelegationTokenExchange = "token_exchange"
)

// Review states of a break-glass request's post-review.
const (
	ReviewPending  = "pending"
	ReviewAccepted = "accepted"
	ReviewRejected = "rejected"
)

// Review is the mandatory post-review of a break-glass request: someone
// other than the requester looks at what was done and accepts or rejects
// it. A rejection does not undo anything; it is the finding an auditor
// reads, and it ends the grant if it is still active.
type Review struct {
	State    string    `json:"state"`
	DueAt    time.Time `json:"due_at"`
	Reviewer string    `json:"reviewer,omitempty"`
	Comment  string    `json:"comment,omitempty"`
	At       time.Time `json:"at,omitzero"`
}

// ReviewInput is what a reviewer sends: outcome is ReviewAccepted or
// ReviewRejected.
type ReviewInput struct {
	Outcome string `json:"outcome"`
	Comment string `json:"comment,omitempty"`
}

// ExtendInput asks for more time on an active grant.
type ExtendInput struct {
	Duration Duration `json:"duration"`
	Reason   string   `json:"reason,omitempty"`
}

// Decision is an approver's verdict.
type Decision string

// Decisions.
const (
	DecisionApprove Decision = "approve"
	DecisionDeny    Decision = "deny"
)

// Approval is one human's decision on one request. At most one per
// (request, approver): a second vote by the same person is refused.
type Approval struct {
	RequestID   string    `json:"request_id"`
	Approver    Principal `json:"approver"`
	Decision    Decision  `json:"decision"`
	Comment     string    `json:"comment,omitempty"`
	RequestHash string    `json:"request_hash"`
	Channel     string    `json:"channel,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// RequestInput is what a caller sends to file a request.
type RequestInput struct {
	Entitlement string   `json:"entitlement"`
	Duration    Duration `json:"duration,omitempty"`
	Reason      string   `json:"reason,omitempty"`
	Ticket      string   `json:"ticket,omitempty"`
	TaskID      string   `json:"task_id,omitempty"`
	// BreakGlass asks for the entitlement's break-glass path: approved by
	// the requester, with a mandatory reason, reviewed afterwards.
	BreakGlass bool `json:"break_glass,omitempty"`
	// StartsAt asks for the grant to start later (the entitlement's
	// max_schedule_ahead bounds how much later).
	StartsAt time.Time `json:"starts_at,omitzero"`
	// OnBehalfOf names the sponsor an agent asks for, when live mandates
	// of several sponsors cover the request (docs/agents.md). Only agents
	// send it; it must name the sponsor of a mandate that covers the
	// request.
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
}

// DecisionInput is what an approver sends with approve or deny. RequestHash,
// when set, must equal the request's hash: the approver saw what they approve.
type DecisionInput struct {
	Comment     string `json:"comment,omitempty"`
	RequestHash string `json:"request_hash,omitempty"`
}

// RequestFilter selects requests. Zero fields do not filter.
type RequestFilter struct {
	State       RequestState `json:"state,omitempty"`
	RequesterID string       `json:"requester_id,omitempty"`
	// Approvable selects pending requests that the caller may decide.
	Approvable bool `json:"approvable,omitempty"`
	// ReviewPending selects break-glass requests whose post-review is not
	// recorded yet.
	ReviewPending bool `json:"review_pending,omitempty"`
	Limit         int  `json:"limit,omitempty"`
}

// Input limits, enforced before anything is stored.
const (
	MaxReasonLength  = 2048
	MaxTicketLength  = 128
	MaxTaskIDLength  = 128
	MaxCommentLength = 2048
	DefaultListLimit = 100
	MaxListLimit     = 1000
)
