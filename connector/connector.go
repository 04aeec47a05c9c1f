// Package connector is the contract between the broker and the systems it
// grants privileges on. A connector provisions and revokes one kind of
// privilege on one target; it knows nothing of requests, approvals or the
// store. Each implementation lives in its own subpackage, passes the
// contract suite in connectortest against its real server, and is listed in
// the registry package — the one file that names all code that can touch a
// production system.
package connector

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/lapsehq/lapse"
)

// Connector is the core contract every target implements.
//
// Idempotence is the rule that makes crash recovery work: the broker writes
// its intent to the store before each call and repeats the call after a
// crash, so Grant, Revoke and Verify may each be called more than once for
// the same grant, and Revoke may be called for a grant whose Grant never
// returned (State is then nil). Names a connector creates on the target must
// therefore be derived from GrantID, so Revoke can find them without State.
type Connector interface {
	// Grant creates the privilege for req.GrantID. Calling it again for the
	// same grant must not create a second privilege.
	Grant(ctx context.Context, req *GrantRequest) (*GrantResponse, error)
	// Revoke removes the privilege and everything that carries it: live
	// sessions, cached credentials, objects and grants the principal made.
	// It succeeds if there was nothing to remove.
	Revoke(ctx context.Context, req *RevokeRequest) (*RevokeResponse, error)
	// Verify checks, read-only and independently of what Revoke did, that
	// the privilege is gone on every checkpoint, and returns the evidence.
	// A residue is reported in the result, not as an error; an error means
	// the check itself could not run.
	Verify(ctx context.Context, req *VerifyRequest) (*VerifyResponse, error)
	// Discover lists the principals on the target that carry privileges of
	// the kind this connector grants, for drift detection.
	Discover(ctx context.Context, req *DiscoverRequest) (*DiscoverResponse, error)
}

// SpecValidator is implemented by connectors that check an entitlement's
// Spec when the catalog is loaded, so a bad catalog fails at start and not
// at the first grant.
type SpecValidator interface {
	ValidateSpec(spec map[string]any) error
}

// UseLimiter is implemented by connectors that count each use of a grant
// and end the grant when an entitlement's MaxUses is exceeded (the token
// target: every active RFC 7662 introspection is a use). The broker
// refuses an entitlement with MaxUses on a target whose connector is not
// one, because such a limit would silently not hold.
type UseLimiter interface {
	// CountsUses reports that the connector enforces MaxUses.
	CountsUses() bool
}

// Mapper is implemented by connectors that know their part of an
// entitlement's checkpoint map (DESIGN.md §5, docs/zsp.md): every place
// their privilege is created or consumed, how Revoke kills it and Verify
// proves it gone there, and how long it can outlive revocation there. The
// broker completes it with the paths the configuration adds and refuses
// (or escalates) grants whose worst-case exposure exceeds policy's limit.
// spec has passed ValidateSpec; the call does no I/O.
type Mapper interface {
	CheckpointMap(spec map[string]any) *PathMap
}

// PathMap is a connector's checkpoint map for one entitlement.
type PathMap struct {
	// Paths are the places the privilege is created or consumed. Source
	// is filled in by the caller.
	Paths []lapse.CheckpointPath
	// RevocationLatency bounds how long Revoke itself may take to end the
	// access (waiting for killed sessions to go), if the connector has
	// such a bound; it is added to the exposure bound.
	RevocationLatency time.Duration
}

// Exposure returns e's exposure as the broker enforces it: the connector's
// paths (when c is a Mapper) completed with e's configured paths and
// policy, and the bound for grants of at most e.MaxDuration.
func Exposure(c Connector, e *lapse.Entitlement) *lapse.Exposure {
	var m *PathMap
	if mp, ok := c.(Mapper); ok {
		m = mp.CheckpointMap(e.Spec)
	}
	if m == nil {
		m = &PathMap{}
	}
	return e.Exposure.Complete(m.Paths, m.RevocationLatency, e.MaxDuration.D())
}

// Closer is implemented by connectors that hold resources (pools, clients).
type Closer interface {
	Close() error
}

// GrantRequest asks a connector to create a privilege.
type GrantRequest struct {
	GrantID     string
	Principal   lapse.Principal
	Entitlement string
	Spec        map[string]any
	// MaxUses is the entitlement's use limit (0: none). Only a UseLimiter
	// is ever asked for a grant with one.
	MaxUses int
	// ExpiresAt is the grant's deadline. Connectors set it as the target's
	// own expiry wherever the target has one (defence in depth).
	ExpiresAt time.Time
}

// GrantResponse is what a connector made.
type GrantResponse struct {
	// Secret holds the credential's secret parts (password, token). The
	// broker seals them and hands them to the grantee once.
	Secret map[string]string
	// Info holds non-secret parts (user name, host, audience).
	Info map[string]string
	// State is opaque to the broker and handed back on Revoke and Verify.
	// It must not contain a secret.
	State json.RawMessage
	// Checkpoints names every system that accepted the privilege and must
	// confirm its revocation.
	Checkpoints []CheckpointSpec
	// Probe is secret material that lets Verify attempt a real login with
	// the grant's own credentials (usually the same password as Secret).
	// The broker keeps it encrypted with its sealing key, hands it back in
	// VerifyRequest.Probe, and erases it once revocation is verified. It is
	// never shown, logged or stored in clear.
	Probe map[string]string
}

// CheckpointSpec names one system that must confirm revocation.
type CheckpointSpec struct {
	Name string
	Kind lapse.CheckpointKind
}

// RevokeRequest asks a connector to remove a privilege.
type RevokeRequest struct {
	GrantID   string
	Principal lapse.Principal
	Spec      map[string]any
	// State is what Grant returned, or nil if Grant never returned.
	State json.RawMessage
}

// RevokeResponse reports what Revoke did, for the audit trail.
type RevokeResponse struct {
	// Actions are short human-readable lines ("dropped role lapse_x",
	// "terminated 2 sessions"). No secrets.
	Actions []string
}

// VerifyRequest asks a connector to prove a privilege is gone.
type VerifyRequest struct {
	GrantID   string
	Principal lapse.Principal
	Spec      map[string]any
	State     json.RawMessage
	// Probe is what Grant returned in GrantResponse.Probe (nil if Grant
	// never returned); Verify uses it for a real login attempt that must
	// fail.
	Probe map[string]string
}

// VerifyResponse carries one result per checkpoint.
type VerifyResponse struct {
	Checkpoints []CheckpointResult
}

// Gone reports whether every checkpoint confirmed revocation.
func (r *VerifyResponse) Gone() bool {
	if len(r.Checkpoints) == 0 {
		return false
	}
	for _, c := range r.Checkpoints {
		if !c.Gone {
			return false
		}
	}
	return true
}

// CheckpointResult is what verification observed on one checkpoint.
type CheckpointResult struct {
	Name string
	Kind lapse.CheckpointKind
	// Gone is true when the privilege was observed absent.
	Gone bool
	// Evidence records what was checked and what was seen (JSON-encodable,
	// no secrets).
	Evidence map[string]any
	// Residue lists what remains, when Gone is false.
	Residue []string
}

// DiscoverRequest asks a connector to list privileges present on the target.
type DiscoverRequest struct {
	// Specs are the catalog's entitlement specs for this target, so the
	// connector knows which roles or groups are "entitled".
	Specs []map[string]any
}

// DiscoverResponse lists what is present on the target.
type DiscoverResponse struct {
	Principals []DiscoveredPrincipal
}

// DiscoveredPrincipal is one account or token holder found on a target.
type DiscoveredPrincipal struct {
	// Name is the target's own name for it (a role, a user, a token ID).
	Name string
	// Ephemeral is true for principals Lapse made; GrantID then names the
	// grant they belong to, when the connector can tell.
	Ephemeral bool
	GrantID   string
	// Privileges lists the entitled privileges it holds.
	Privileges []string
}

// Env is what a connector receives from the process that opens it.
type Env struct {
	// Name is the target's configured name.
	Name   string
	Clock  lapse.Clock
	Store  lapse.Store
	Logger *slog.Logger
	// DataDir is where the connector may keep files (keys).
	DataDir string
}

// Factory opens a connector from its configuration block. decode strictly
// decodes that block (unknown keys are errors that name file and line) into
// the connector's own Config type.
type Factory func(env Env, decode func(v any) error) (Connector, error)

// Exerciser is implemented by connectors whose grants can be used for real
// the way a grantee would use them: a login and a statement, an AUTH and a
// command, a token presented to an API server. `lapse zsp test` and the
// scheduled canary use it to check, independently of Verify, that revoked
// access really stops working, including a session that was opened while
// the grant was active (DESIGN.md §5, "Session-level tests").
//
// Both methods use the real client library of the target, with the grant's
// credentials only; neither changes anything on the target beyond what a
// grantee's login does.
type Exerciser interface {
	// Use opens a new session with the grant's credentials, uses it once
	// and closes it. It returns nil if the target accepted the credentials,
	// an error wrapping ErrDenied if the target refused them, and any other
	// error if it could not tell (the target is unreachable): a check that
	// could not run never counts as a denial.
	Use(ctx context.Context, req *ExerciseRequest) error
	// Hold opens a session with the grant's credentials and keeps it open,
	// as a long-lived client (a connection pool, an API server that caches
	// a token) would. The caller closes it.
	Hold(ctx context.Context, req *ExerciseRequest) (HeldSession, error)
}

// ExerciseRequest is what an Exerciser needs to act as the grantee.
type ExerciseRequest struct {
	GrantID string
	// Secret and Info are the grant's credentials, as Grant returned them.
	Secret map[string]string
	Info   map[string]string
	Spec   map[string]any
}

// HeldSession is a session opened by Exerciser.Hold.
type HeldSession interface {
	// Check uses the session again. It returns nil while the session still
	// works, an error wrapping ErrDenied once it has ended or been refused,
	// and any other error if it could not tell. A held session never
	// reconnects: once its one connection is gone, it stays ended.
	Check(ctx context.Context) error
	// Describe names the session for a report (a backend PID, a connection
	// ID, a client ID and the node); it never holds a secret.
	Describe() string
	// Close ends the session on the client side.
	Close() error
}

// ErrDenied is wrapped by the errors of Exerciser.Use and HeldSession.Check
// when the target refused the grant's credentials or ended the session.
var ErrDenied = errors.New("access denied")

// Denied reports whether err says the target refused access.
func Denied(err error) bool { return errors.Is(err, ErrDenied) }
