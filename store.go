package lapse

import (
	"context"
	"time"
)

// Store is Lapse's durable state: requests, approvals, grants, checkpoints,
// events, API keys, agents' mandates and token revocations. The sqlstore package implements it
// on SQLite and on PostgreSQL; storetest is the conformance suite both pass.
//
// Consistency rule: every change goes through Update, whose transaction
// either commits entirely or not at all. Requests and grants carry a Version;
// Tx.UpdateRequest and Tx.UpdateGrant succeed only if the stored version is
// the one the caller read (compare-and-swap), so two concurrent transitions
// on one object end in exactly one outcome on both databases.
type Store interface {
	// Update runs fn in a read-write transaction and commits if fn returns
	// nil. The store may run fn more than once if the database reports a
	// serialisation failure, so fn must not have side effects outside tx.
	Update(ctx context.Context, fn func(tx Tx) error) error

	// GetRequest returns a request with its approvals.
	// Returns ENOTFOUND if it does not exist.
	GetRequest(ctx context.Context, id string) (*Request, error)
	// ListRequests returns requests, newest first. Approvable is not
	// interpreted by the store (it is a broker concern) and is ignored.
	ListRequests(ctx context.Context, f RequestFilter) ([]*Request, error)
	// GetGrant returns a grant with its checkpoints (not its events).
	// Returns ENOTFOUND if it does not exist.
	GetGrant(ctx context.Context, id string) (*Grant, error)
	// ListGrants returns grants, newest first, without checkpoints.
	ListGrants(ctx context.Context, f GrantFilter) ([]*Grant, error)
	// CountGrantsByState returns the number of grants in each state.
	CountGrantsByState(ctx context.Context) (map[GrantState]int, error)
	// ListEvents returns events in sequence order.
	ListEvents(ctx context.Context, f EventFilter) ([]*Event, error)

	// ClaimDueGrants leases up to in.Limit grants whose DueAt is at or
	// before in.Now and whose lease is free or expired, oldest DueAt first.
	// Each claimed grant's LeaseOwner, LeaseUntil, Fence (incremented) and
	// Version (incremented) are updated and returned, and its DueAt becomes
	// LeaseUntil: unless the claimer writes it back sooner, the grant is due
	// again when the lease ends. The claimed grants are the oldest due;
	// they are returned in deadline (ExpiresAt) order. Two concurrent
	// callers never receive the same grant while its lease is valid.
	ClaimDueGrants(ctx context.Context, in ClaimInput) ([]*Grant, error)
	// ClaimExpiring reserves the expiry of grants ahead of their deadline.
	// It leases up to in.Limit grants of in.Target (required) that are
	// active, whose deadline (ExpiresAt, which is their DueAt) falls after
	// in.Now and no later than in.Now+in.Ahead, and whose lease is free
	// or expired, earliest deadline first, returned in deadline order with
	// their checkpoints. Each stays active; its LeaseOwner becomes
	// in.Owner, its LeaseUntil and DueAt its ExpiresAt plus in.Lease, and
	// its Fence and Version are incremented. The claimer alone then acts
	// on the deadline when it comes; if it dies, the grant is due again
	// when that lease ends. Returns EINVALID if Owner, Now, Lease, Limit,
	// Ahead or Target is missing.
	ClaimExpiring(ctx context.Context, in ClaimInput) ([]*Grant, error)
	// NextDueAt returns the earliest DueAt of any grant that is not revoked,
	// or ok=false when there is none.
	NextDueAt(ctx context.Context) (t time.Time, ok bool, err error)
	// DueCounts returns, per target, how many grants are due at or before now.
	DueCounts(ctx context.Context, now time.Time) (map[string]int, error)

	// GetMandate returns a mandate.
	// Returns ENOTFOUND if it does not exist.
	GetMandate(ctx context.Context, id string) (*Mandate, error)
	// ListMandates returns mandates, newest first.
	ListMandates(ctx context.Context, f MandateFilter) ([]*Mandate, error)

	// GetAPIKey returns the key with this prefix.
	// Returns ENOTFOUND if none exists.
	GetAPIKey(ctx context.Context, prefix string) (*APIKey, error)
	// ListAPIKeys returns all keys, newest first, without hashes.
	ListAPIKeys(ctx context.Context) ([]*APIKey, error)

	// TokenRevocations returns the revocation feed of a token target: the
	// entries after seq, in order, at most limit.
	TokenRevocations(ctx context.Context, target string, afterSeq int64, limit int) ([]*TokenRevocation, error)
	// TokenRevoked reports whether the token with this ID was revoked on the
	// target.
	TokenRevoked(ctx context.Context, target, tokenID string) (bool, error)
	// ConsumerAcks returns, per consumer of a token target, the highest feed
	// sequence it acknowledged.
	ConsumerAcks(ctx context.Context, target string) (map[string]int64, error)

	Close() error
}

// SerialWriter is implemented by a Store that may say its write
// transactions run one at a time (SQLite's single writer). A broker's engine
// then orders its own writes during a wave of deadlines: it writes the
// intent of the grants it claims before the results of the grants it has
// already acted on, so later claims do not queue behind result commits for
// the one writer and their connector calls do not start late. A store that
// does not implement it, or answers false, runs writers in parallel
// (PostgreSQL) and its writes are not reordered.
type SerialWriter interface {
	// SerialWrites reports whether the store runs one write transaction at
	// a time.
	SerialWrites() bool
}

// EngineLocker is implemented by a Store that can tell an engine whether it
// is the only one running on the database. SQLite serves one node, but any
// process may open its file: a server restarted after a crash finds the
// leases of the process that died, which no one else can hold. LockEngine
// is called as an engine starts and holds until unlock is called. When no
// other engine holds it, every lease in the store was left by an engine that
// has ended, and LockEngine frees them all: their grants are due again at
// once — an active grant whose expiry was reserved, at its deadline — and
// their fence and version move, so nothing written under an old lease can
// land. It returns how many it freed. When unlock is not nil the lock is
// held, even if err says that freeing the leases failed. On a store whose
// engines run side by side (PostgreSQL replicas) it returns a nil unlock
// and no error, and does nothing: there a lease is taken over only when it
// ends.
type EngineLocker interface {
	LockEngine(ctx context.Context, now time.Time) (freed int, unlock func(), err error)
}

// Tx is one read-write transaction (see Store.Update).
type Tx interface {
	// GetRequest reads a request and its approvals, locking it against
	// concurrent writers until the transaction ends.
	// Returns ENOTFOUND if it does not exist.
	GetRequest(ctx context.Context, id string) (*Request, error)
	// InsertRequest stores a new request with Version 1.
	// Returns ECONFLICT if the ID exists.
	InsertRequest(ctx context.Context, r *Request) error
	// UpdateRequest writes r if the stored version equals r.Version, then
	// increments r.Version. Approvals are not written (see InsertApproval).
	// Returns ECONFLICT on a version mismatch, ENOTFOUND if r does not exist.
	UpdateRequest(ctx context.Context, r *Request) error
	// InsertApproval records one decision.
	// Returns ECONFLICT if this approver already decided this request.
	InsertApproval(ctx context.Context, a *Approval) error

	// GetGrant reads a grant with its checkpoints, locking it.
	// Returns ENOTFOUND if it does not exist.
	GetGrant(ctx context.Context, id string) (*Grant, error)
	// InsertGrant stores a new grant (and its checkpoints) with Version 1.
	// Returns ECONFLICT if the ID exists.
	InsertGrant(ctx context.Context, g *Grant) error
	// UpdateGrant writes g (not its checkpoints) if the stored version
	// equals g.Version, then increments g.Version.
	// Returns ECONFLICT on a version mismatch, ENOTFOUND if g does not exist.
	UpdateGrant(ctx context.Context, g *Grant) error
	// PutCheckpoint inserts or replaces the checkpoint (GrantID, Name).
	PutCheckpoint(ctx context.Context, c *Checkpoint) error
	// ClaimDueGrants is Store.ClaimDueGrants inside this transaction, so
	// that the claimer can record what it intends in the same commit.
	ClaimDueGrants(ctx context.Context, in ClaimInput) ([]*Grant, error)
	// LockGrantsOf holds the lock of the pair (principal, entitlement)
	// until the transaction ends: transactions that take the same pair's
	// lock run one after the other, so what one decides from
	// UnrevokedGrants (to start a grant, or to file one) the next one
	// sees. It locks no row. Take it before any row lock in the
	// transaction, or after the rows a claim locked, and take several
	// pairs' locks in a fixed order.
	LockGrantsOf(ctx context.Context, principalID, entitlement string) error
	// UnrevokedGrants returns the grants of principal for entitlement that
	// are not revoked (scheduled ones included), without checkpoints,
	// oldest first.
	UnrevokedGrants(ctx context.Context, principalID, entitlement string) ([]*Grant, error)

	// GetMandate reads a mandate, locking it.
	// Returns ENOTFOUND if it does not exist.
	GetMandate(ctx context.Context, id string) (*Mandate, error)
	// InsertMandate stores a new mandate.
	// Returns ECONFLICT if the ID exists.
	InsertMandate(ctx context.Context, m *Mandate) error
	// UpdateMandate writes RevokedAt and RevokedBy of an existing mandate;
	// nothing else about a mandate changes.
	// Returns ENOTFOUND if it does not exist.
	UpdateMandate(ctx context.Context, m *Mandate) error

	// AppendEvent appends e to the log and sets e.Seq. Sequence numbers are
	// gap-free and strictly increasing in commit order.
	AppendEvent(ctx context.Context, e *Event) error

	// GetAPIKey reads a key, locking it against concurrent writers until
	// the transaction ends. Returns ENOTFOUND if no key has the prefix.
	GetAPIKey(ctx context.Context, prefix string) (*APIKey, error)
	// InsertAPIKey stores a new key. Returns ECONFLICT if the prefix exists.
	InsertAPIKey(ctx context.Context, k *APIKey) error
	// UpdateAPIKey writes RevokedAt and LastUsedAt of an existing key.
	// Returns ENOTFOUND if it does not exist.
	UpdateAPIKey(ctx context.Context, k *APIKey) error

	// AddTokenRevocation appends a token to a target's revocation feed and
	// returns its feed sequence. Adding the same token again returns the
	// existing sequence and changes nothing.
	AddTokenRevocation(ctx context.Context, r *TokenRevocation) (int64, error)
	// CountTokenUse records one use of a token on a target and returns
	// how many uses it has had, this one included (1 for the first).
	// Concurrent callers, on one replica or many, each get a distinct
	// count: no use is lost or counted twice.
	CountTokenUse(ctx context.Context, target, tokenID string) (int64, error)
	// AckTokenRevocations records that consumer has applied the feed of
	// target up to seq. Acknowledgements only move forward.
	AckTokenRevocations(ctx context.Context, target, consumer string, seq int64) error
}

// ClaimInput parameterises Store.ClaimDueGrants.
type ClaimInput struct {
	Owner string
	Now   time.Time
	Lease time.Duration
	Limit int
	// Target, when set, restricts the claim to one target.
	Target string
	// Expire, when set, also starts the revocation of every claimed grant
	// that is active and whose ExpiresAt is at or before Now, in the claim
	// itself: State becomes revoking, EndReason expired (unless one is
	// set), RevokeStartedAt Now (unless set). The intent to revoke is then
	// durable before the claimer acts, without a second write per grant —
	// the difference between one and two row writes per grant when
	// thousands of deadlines fall in the same second.
	Expire bool
	// Ahead is how far past Now ClaimExpiring looks for deadlines; the
	// other claims ignore it.
	Ahead time.Duration
}

// TokenRevocation is one entry of a token target's revocation feed.
type TokenRevocation struct {
	Target    string    `json:"target"`
	Seq       int64     `json:"seq"`
	TokenID   string    `json:"jti"`
	GrantID   string    `json:"grant_id"`
	ExpiresAt time.Time `json:"exp"`
	RevokedAt time.Time `json:"revoked_at"`
}
