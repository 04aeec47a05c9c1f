package postgres

import (
	"context"
	"errors"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// extendLockClass is the first key of the advisory lock that serialises
// extensions of one role ("laps" in ASCII). The two-key form keeps Lapse's
// locks apart from anyone's single-key ones in the same database.
const extendLockClass = 0x6c617073

// Extend implements connector.Extender.
//
// Ephemeral mode: the server enforces the role's VALID UNTIL, so Extend
// moves it to req.ExpiresAt with ALTER ROLE … VALID UNTIL, and only ever
// later: the current value is read under a per-role advisory lock in the
// same transaction, so two extensions racing cannot leave the earlier
// deadline in force. The statement carries no password. It commits as
// Grant does (Config.GrantCommit): a lost asynchronous extension leaves
// the earlier deadline, a grant that ends early, never one that outlives
// its revocation.
//
// Elevation mode: the membership of the account has no deadline on the
// server (only the broker's revocation ends it), so there is nothing to
// move; Extend checks that the membership still exists and returns nil.
//
// The mode comes from the spec, or State when the spec is missing or
// invalid (as for Revoke), or else from which of the grant's roles exists.
// Returns ENOTFOUND if the grant's role or membership is not on the server
// (revoked, or being revoked), EINVALID for a bad grant ID or a missing
// deadline, EFORBIDDEN if the connector's account may not alter the role,
// and EUNAVAILABLE if the server cannot be reached.
func (c *Conn) Extend(ctx context.Context, req *connector.ExtendRequest) error {
	if req.ExpiresAt.IsZero() {
		return lapse.FieldErrorf(lapse.EINVALID, "expires_at", "an extension needs a deadline")
	}
	in, err := c.inputs(req.GrantID, req.State, req.Spec)
	if err != nil {
		return err
	}
	mode := in.mode
	if mode == "" {
		// Neither spec nor State says; the two modes' role names differ, so
		// the catalog does.
		if mode, err = c.modeOnServer(ctx, in); err != nil {
			return err
		}
	}
	if mode == modeElevation {
		return c.checkElevation(ctx, req.GrantID, in)
	}
	return c.extendLogin(ctx, req.GrantID, in.login, req.ExpiresAt)
}

// modeOnServer returns the mode of the grant whose role exists.
func (c *Conn) modeOnServer(ctx context.Context, in *revokeInputs) (string, error) {
	var login, elev bool
	err := c.pool.QueryRow(ctx, `
SELECT
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1),
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2)`, in.login, in.elevation).Scan(&login, &elev)
	switch {
	case err != nil:
		return "", dbError("extend: look up the grant's role", err)
	case login:
		return modeEphemeral, nil
	case elev:
		return modeElevation, nil
	}
	return "", lapse.Errorf(lapse.ENOTFOUND, "the grant has no role on the PostgreSQL target")
}

// extendLogin moves the VALID UNTIL of the ephemeral role to until, if
// that is later than the role's current one.
func (c *Conn) extendLogin(ctx context.Context, grantID, role string, until time.Time) error {
	until = until.UTC().Truncate(time.Microsecond) // the server's precision
	lit, err := validUntilLiteral(until)
	if err != nil {
		return err
	}
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return dbError("extend role "+role, err)
	}
	// After Commit this is a no-op; on any early return it ends the
	// transaction and releases the lock.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// The commit mode and the lock in one round trip (no parameters: the
	// simple protocol, which runs both inside the transaction).
	lock := c.commitMode() + "SELECT pg_catalog.pg_advisory_xact_lock(" + strconv.Itoa(extendLockClass) + ", " + strconv.Itoa(int(extendLockKey(role))) + ")"
	if _, err := tx.Exec(ctx, lock); err != nil {
		return dbError("extend: lock role "+role, err)
	}
	// Read after the lock, in a statement of its own: under READ
	// COMMITTED it sees what an extension that held the lock before
	// committed.
	var (
		current  pgtype.Timestamptz
		canLogin bool
	)
	err = tx.QueryRow(ctx, "SELECT rolvaliduntil, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1", role).Scan(&current, &canLogin)
	if errors.Is(err, pgx.ErrNoRows) {
		return lapse.Errorf(lapse.ENOTFOUND, "the grant's role %s does not exist on the PostgreSQL target", role)
	}
	if err != nil {
		return dbError("extend: read role "+role, err)
	}
	if !canLogin {
		// Revoke's first step (the fence) ran: the grant is ending, and a
		// later VALID UNTIL would not make the role usable again anyway.
		return lapse.Errorf(lapse.ENOTFOUND, "the grant's role %s is being revoked", role)
	}
	if !laterThan(until, current) {
		return nil // idempotent, and never shorter
	}
	if _, err := tx.Exec(ctx, "ALTER ROLE "+quoteIdent(role)+" VALID UNTIL "+lit); err != nil {
		if pgCode(err) == sqlstateUndefinedObject {
			// Dropped by a Revoke after the read above.
			return lapse.Errorf(lapse.ENOTFOUND, "the grant's role %s does not exist on the PostgreSQL target", role)
		}
		return grantError("extend role "+role, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return dbError("extend role "+role, err)
	}
	c.logger.Info("postgres: extended", "role", role, "grant_id", grantID, "valid_until", until.Format(time.RFC3339))
	return nil
}

// laterThan reports whether until is later than the role's current VALID
// UNTIL. NULL and infinity mean no deadline, which nothing is later than.
func laterThan(until time.Time, current pgtype.Timestamptz) bool {
	switch {
	case !current.Valid || current.InfinityModifier == pgtype.Infinity:
		return false
	case current.InfinityModifier == pgtype.NegativeInfinity:
		return true
	}
	return until.After(current.Time)
}

// validUntilLiteral quotes a deadline as Grant writes it in roleAttributes:
// microseconds, UTC, through the literal allow-list.
func validUntilLiteral(t time.Time) (string, error) {
	lit, err := quoteLiteral(t.UTC().Format("2006-01-02 15:04:05.999999") + "+00")
	if err != nil {
		return "", lapse.Internal("postgres: quote deadline", err)
	}
	return lit, nil
}

// extendLockKey is the second key of a role's extension lock. Two roles
// that share it only wait for each other.
func extendLockKey(role string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(role))
	return int32(h.Sum32())
}

// checkElevation checks that the grant's per-grant role still carries the
// account's membership: the account State or the spec names, or, when
// neither does, any member.
func (c *Conn) checkElevation(ctx context.Context, grantID string, in *revokeInputs) error {
	account := in.stateAccount
	if len(in.accounts) > 0 {
		account = in.accounts[0]
	}
	// Read-only, with the account as a parameter: even a name from an
	// untrusted State can only make the check answer "no".
	var member bool
	err := c.pool.QueryRow(ctx, `
SELECT EXISTS (
  SELECT 1 FROM pg_catalog.pg_auth_members am
    JOIN pg_catalog.pg_roles r ON r.oid = am.roleid
    JOIN pg_catalog.pg_roles m ON m.oid = am.member
  WHERE r.rolname = $1 AND ($2::text = '' OR m.rolname = $2::text))`, in.elevation, account).Scan(&member)
	if err != nil {
		return dbError("extend: check the membership of "+in.elevation, err)
	}
	if !member {
		return lapse.Errorf(lapse.ENOTFOUND, "the grant's membership (role %s) is not on the PostgreSQL target", in.elevation)
	}
	c.logger.Info("postgres: extension needs no change: the membership has no deadline on the server", "role", in.elevation, "grant_id", grantID)
	return nil
}

var _ connector.Extender = (*Conn)(nil)
