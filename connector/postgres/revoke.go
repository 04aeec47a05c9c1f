package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Revoke steps that a test may leave out (export_test.go) to show that
// Verify notices.
const (
	stepFence     = "fence"
	stepTerminate = "terminate"
	stepDrop      = "drop"
)

// revokeInputs is what Revoke and Verify know about a grant apart from the
// catalog: names derived from the grant ID, and what State and Spec add.
// Neither State nor Spec is required; a bad one is ignored rather than
// allowed to block revocation.
//
// Spec comes from the catalog (policy); State comes back from Lapse's store
// and is not trusted. Whenever the spec is valid it alone decides the mode
// and the elevated account. State's account is only a candidate
// (stateAccount), used to finish an interrupted elevation revocation of a
// grant whose entitlement left the catalog, and only once
// resolveStateAccount has checked it against the server.
type revokeInputs struct {
	login, elevation string
	mode             string   // modeEphemeral, modeElevation or "" (unknown)
	oids             []uint32 // from State
	accounts         []string // elevated accounts: the spec's, or State's once checked
	stateAccount     string   // State's account, not yet checked (resolveStateAccount)
	groups           []string // entitled roles named by State or Spec
	notes            []string // why an input was ignored
}

// grantRoleRE matches names of the form the connector gives grants' roles
// under any valid prefix (a login or elevation role of another grant, or of
// this one made before the prefix changed): never an elevated account.
var grantRoleRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,25}h?[0-9a-hjkmnp-tv-z]{26}$`)

func (c *Conn) inputs(grantID string, rawState []byte, rawSpec map[string]any) (*revokeInputs, error) {
	login, elev, err := roleNames(c.cfg.Prefix, grantID)
	if err != nil {
		return nil, err
	}
	in := &revokeInputs{login: login, elevation: elev}
	st, err := c.parseState(rawState, login, elev)
	if err != nil {
		in.notes = append(in.notes, "state ignored: "+lapse.ErrorMessage(err))
		st = nil
	}
	var spec *Spec
	if rawSpec != nil {
		spec, err = parseSpec(rawSpec, c.cfg.Prefix)
		if err != nil {
			in.notes = append(in.notes, "spec ignored: "+lapse.ErrorMessage(err))
			spec = nil
		}
	}
	if spec != nil {
		in.mode = modeEphemeral
		if spec.elevation() {
			in.mode = modeElevation
			in.accounts = []string{spec.Account}
		}
		in.groups = append(in.groups, spec.Roles...)
	}
	if st == nil {
		return in, nil
	}
	if spec == nil {
		in.mode = st.Mode
	} else if st.Mode != in.mode {
		in.notes = append(in.notes, "state mode "+st.Mode+" ignored: the catalog's spec selects "+in.mode+" mode")
	}
	if st.OID != 0 {
		in.oids = append(in.oids, st.OID)
	}
	for _, g := range st.Roles {
		in.groups = appendNew(in.groups, g)
	}
	if st.Account == "" || (spec != nil && spec.Account == st.Account) {
		return in, nil
	}
	// The account State names (and the spec does not) is never trusted
	// as it is: a State altered in the store could name any role.
	switch {
	case spec != nil:
		in.notes = append(in.notes, "state account "+st.Account+" ignored: the catalog's spec decides the account")
	case st.Mode != modeElevation:
		in.notes = append(in.notes, "state account "+st.Account+" ignored: an ephemeral grant has no account")
	case st.Account == c.adminUser:
		in.notes = append(in.notes, "state account "+st.Account+" ignored: it is the connector's own role")
	case grantRoleRE.MatchString(st.Account):
		in.notes = append(in.notes, "state account "+st.Account+" ignored: it is named like a grant's role")
	default:
		in.stateAccount = st.Account
	}
	return in, nil
}

// resolveStateAccount decides whether State's account may be used: only
// to finish an interrupted elevation revocation, that is while the grant's
// per-grant role still exists and no other role is a member of it (after
// the fence, the account's membership is gone and State is the only record
// of it), and never for a superuser. It moves the account to in.accounts,
// or records why it was ignored.
func (c *Conn) resolveStateAccount(ctx context.Context, in *revokeInputs) error {
	account := in.stateAccount
	if account == "" {
		return nil
	}
	in.stateAccount = ""
	var super, exists, others bool
	err := c.pool.QueryRow(ctx, `
SELECT
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1 AND rolsuper),
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2),
  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members am
            JOIN pg_catalog.pg_roles r ON r.oid = am.roleid
            JOIN pg_catalog.pg_roles m ON m.oid = am.member
          WHERE r.rolname = $2 AND m.rolname <> $1)`, account, in.elevation).Scan(&super, &exists, &others)
	if err != nil {
		return dbError("check the account of the state", err)
	}
	switch {
	case super:
		in.notes = append(in.notes, "state account "+account+" ignored: it is a superuser")
	case !exists:
		in.notes = append(in.notes, "state account "+account+" ignored: the grant's elevation role is gone, so no revocation is left to finish")
	case others:
		in.notes = append(in.notes, "state account "+account+" ignored: another role is the member of the grant's elevation role")
	default:
		in.accounts = []string{account}
	}
	return nil
}

// skipped reports whether a test asked Revoke to leave out step.
func (c *Conn) skipped(step string) bool {
	return c.skip != "" && slices.Contains(strings.Split(c.skip, ","), step)
}

func (in *revokeInputs) names() []string { return []string{in.login, in.elevation} }

// foundRole is a role of the grant as the catalog shows it.
type foundRole struct {
	oid      uint32
	name     string
	canLogin bool
	members  []string // roles that are members of it (elevated accounts)
	groups   []string // roles it is a member of
}

// Revoke removes the grant's role and everything that carries it:
//
//  1. fence: ALTER ROLE … NOLOGIN and REVOKE it from its members, so no
//     new session can start or switch to it (committed asynchronously: it
//     is visible at once, and the final DROP's synchronous commit makes it
//     durable);
//  2. terminate every backend whose session user is the role (by OID and
//     name, so sessions that ran SET ROLE are included), and of every
//     member that no longer reaches the entitled roles by another path,
//     and wait until they are gone;
//  3. DROP ROLE; if the role still owns or holds something, DROP OWNED (or
//     REASSIGN OWNED) in each database the catalog names, then DROP ROLE.
//
// Every step tolerates what an earlier, interrupted Revoke already did.
// Returns EINVALID for a bad grant ID, EUNAVAILABLE if the server cannot be
// reached or sessions do not end in time, ECONFLICT if the role owns
// something the connector may not clean.
func (c *Conn) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	in, err := c.inputs(req.GrantID, req.State, req.Spec)
	if err != nil {
		return nil, err
	}
	if err := c.resolveStateAccount(ctx, in); err != nil {
		return nil, err
	}
	it := &revokeItem{in: in}
	if err := c.revokes.Do(ctx, it); err != nil {
		return nil, dbError("revoke", err)
	}
	if it.resp != nil {
		it.resp.Actions = append(slices.Clone(in.notes), it.resp.Actions...)
	}
	if it.err == nil {
		c.logger.Info("postgres: revoked", "grant_id", req.GrantID, "actions", len(it.resp.Actions))
	}
	return it.resp, it.err
}

// revokeItem is one Revoke in a batch.
type revokeItem struct {
	in    *revokeInputs
	roles []foundRole
	resp  *connector.RevokeResponse
	err   error
}

// revokeBatch revokes a batch of grants. Ephemeral roles that nobody else
// is a member of — the common case, and the one that comes in thousands
// when many grants expire together — are handled set-wise: one lookup, one
// fence, one termination pass, one DROP ROLE for all (one synchronous
// commit). Anything else (elevation, a role granted on to others, a role
// that owns objects) takes the per-grant path.
func (c *Conn) revokeBatch(ctx context.Context, items []*revokeItem) {
	var names []string
	for _, it := range items {
		it.resp = &connector.RevokeResponse{}
		names = append(names, it.in.names()...)
	}
	found, err := c.lookupRoles(ctx, names)
	if err != nil {
		for _, it := range items {
			it.err = err
		}
		return
	}
	var fast []*revokeItem
	for _, it := range items {
		simple := len(it.in.accounts) == 0
		for _, r := range found {
			if slices.Contains(it.in.names(), r.name) {
				it.roles = append(it.roles, r)
				simple = simple && len(r.members) == 0
			}
		}
		if simple {
			fast = append(fast, it)
		} else {
			it.err = c.revokeOne(ctx, it)
		}
	}
	if len(fast) > 0 {
		c.revokeFast(ctx, fast)
	}
}

// revokeFast is the set-wise path of revokeBatch: items have no accounts
// and their roles have no members.
func (c *Conn) revokeFast(ctx context.Context, items []*revokeItem) {
	fail := func(err error) {
		for _, it := range items {
			if it.err == nil {
				it.err = err
			}
		}
	}
	var roles []foundRole
	var names []string
	var oids []uint32
	for _, it := range items {
		names = append(names, it.in.names()...)
		oids = append(oids, it.in.oids...)
		roles = append(roles, it.roles...)
	}
	for _, r := range roles {
		oids = appendNew(oids, r.oid)
	}
	var signalled victims
	if c.skip == "" && len(roles) > 0 {
		var err error
		signalled, err = c.revokeInOneTrip(ctx, roles, oids, names)
		if err == nil {
			c.finishOneTrip(ctx, items, oids, names, signalled)
			return
		}
		// Anything unusual (a role that owns objects, a role dropped
		// meanwhile by a concurrent Revoke): the steps one by one, each of
		// which tolerates what the trip already did. The sessions it
		// signalled are counted there.
		c.logger.Debug("postgres: one-trip revoke fell back to steps", "roles", len(roles), "err", err)
	}
	if !c.skipped(stepFence) {
		if err := c.fence(ctx, roles); err != nil {
			fail(err)
			return
		}
		for _, it := range items {
			for _, r := range it.roles {
				if r.canLogin {
					it.resp.Actions = append(it.resp.Actions, "set role "+r.name+" NOLOGIN")
				}
			}
		}
	}
	if !c.skipped(stepTerminate) {
		victims, err := c.terminate(ctx, oids, names, nil)
		if err != nil {
			fail(err)
			return
		}
		victims = signalled.merge(victims)
		for _, it := range items {
			if n := victims.of(it.in.names(), it.in.oids, it.roles); n > 0 {
				it.resp.Actions = append(it.resp.Actions, fmt.Sprintf("terminated %d sessions", n))
			}
		}
	}
	if !c.skipped(stepDrop) && len(roles) > 0 {
		err := c.execCatalog(ctx, dropRolesSQL(roles))
		switch {
		case err == nil:
			for _, it := range items {
				for _, r := range it.roles {
					it.resp.Actions = append(it.resp.Actions, "dropped role "+r.name)
				}
			}
		case pgCode(err) == sqlstateDependentObjects:
			// Some role owns or holds something: clean and drop one by one.
			for _, it := range items {
				for _, r := range it.roles {
					acts, err := c.dropRole(ctx, r)
					it.resp.Actions = append(it.resp.Actions, acts...)
					if err != nil {
						it.err = err
						break
					}
				}
			}
		default:
			fail(dbError("drop roles", err))
			return
		}
	}
	for _, it := range items {
		if len(it.roles) == 0 {
			it.resp.Actions = append(it.resp.Actions, "no role of the grant left to drop")
		}
	}
}

// dropRolesSQL is one DROP ROLE IF EXISTS for every role of roles.
func dropRolesSQL(roles []foundRole) string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = r.name
	}
	return "DROP ROLE IF EXISTS " + quoteIdents(names)
}

// revokeInOneTrip does the set-wise revocation's three steps in one
// round trip, as one simple-protocol query:
//
//	BEGIN; ALTER ROLE … NOLOGIN; …; COMMIT;     -- the fence, committed
//	WITH victims … pg_terminate_backend(pid);   -- signal every session
//	DROP ROLE IF EXISTS …                       -- synchronous commit
//
// The fence commits before the signal is sent, as in the stepwise path, so
// no new session can start once sessions are signalled. The drop then
// follows without waiting for the signalled backends to exit: they are
// left without a role (usename NULL), still matched by OID, and
// finishOneTrip waits for them. A concurrent session cannot give the role
// something to own in between: recording an owner locks the role and
// checks that it still exists. Every value in the query is a validated
// role name or a number, quoted by quoteIdent and quoteLiteral.
//
// It returns the sessions it signalled. On any error (a role that owns
// objects refuses DROP ROLE, a role dropped by a concurrent Revoke aborts
// the fence) the caller takes the stepwise path, which tolerates whatever
// part of this already happened.
func (c *Conn) revokeInOneTrip(ctx context.Context, roles []foundRole, oids []uint32, names []string) (victims, error) {
	var b strings.Builder
	fence := false
	for _, r := range roles {
		if r.canLogin {
			if !fence {
				b.WriteString("BEGIN;\nSET LOCAL synchronous_commit = off;\n")
				fence = true
			}
			b.WriteString("ALTER ROLE " + quoteIdent(r.name) + " NOLOGIN;\n")
		}
	}
	if fence {
		b.WriteString("COMMIT;\n")
	}
	nameLits := make([]string, len(names))
	for i, n := range names {
		lit, err := quoteLiteral(n)
		if err != nil {
			return nil, err
		}
		nameLits[i] = lit
	}
	oidLits := make([]string, len(oids))
	for i, o := range oids {
		oidLits[i] = strconv.FormatUint(uint64(o), 10)
	}
	b.WriteString(victimsCTE("ARRAY["+strings.Join(oidLits, ",")+"]::oid[]", "ARRAY["+strings.Join(nameLits, ",")+"]::text[]", "'{}'::text[]"))
	b.WriteString("SELECT pid, usename, usesysid FROM victims WHERE pg_catalog.pg_terminate_backend(pid);\n")
	b.WriteString(dropRolesSQL(roles))

	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	results, err := pc.Exec(ctx, b.String()).ReadAll()
	if pc.TxStatus() == 'E' {
		// The fence failed inside its BEGIN: end that transaction so the
		// connection goes back to the pool clean.
		_ = pc.Exec(ctx, "ROLLBACK").Close()
	}
	var out victims
	for _, r := range results {
		if r.Err != nil {
			return out, r.Err
		}
		if len(r.FieldDescriptions) != 3 {
			continue
		}
		for _, row := range r.Rows {
			pid, err1 := strconv.ParseInt(string(row[0]), 10, 32)
			oid, err2 := strconv.ParseUint(string(row[2]), 10, 32)
			if err1 != nil || err2 != nil {
				return out, fmt.Errorf("postgres: unreadable session row")
			}
			out = append(out, victim{pid: int32(pid), name: string(row[1]), oid: uint32(oid)})
		}
	}
	return out, err
}

// finishOneTrip waits for the sessions revokeInOneTrip signalled to exit
// (terminate signals again whatever is left, matched by OID now that the
// roles are gone) and records the actions.
func (c *Conn) finishOneTrip(ctx context.Context, items []*revokeItem, oids []uint32, names []string, signalled victims) {
	all := signalled
	if len(signalled) > 0 {
		more, err := c.terminate(ctx, oids, names, nil)
		if err != nil {
			for _, it := range items {
				it.err = err
			}
			return
		}
		all = signalled.merge(more)
	}
	for _, it := range items {
		for _, r := range it.roles {
			if r.canLogin {
				it.resp.Actions = append(it.resp.Actions, "set role "+r.name+" NOLOGIN")
			}
		}
		if n := all.of(it.in.names(), it.in.oids, it.roles); n > 0 {
			it.resp.Actions = append(it.resp.Actions, fmt.Sprintf("terminated %d sessions", n))
		}
		for _, r := range it.roles {
			it.resp.Actions = append(it.resp.Actions, "dropped role "+r.name)
		}
		if len(it.roles) == 0 {
			it.resp.Actions = append(it.resp.Actions, "no role of the grant left to drop")
		}
	}
}

// revokeOne is the per-grant path: elevation (accounts whose sessions may
// have to end), or roles that others are members of.
func (c *Conn) revokeOne(ctx context.Context, it *revokeItem) error {
	in, roles, resp := it.in, it.roles, it.resp
	if !c.skipped(stepFence) {
		if err := c.fence(ctx, roles); err != nil {
			return err
		}
		for _, r := range roles {
			if r.canLogin {
				resp.Actions = append(resp.Actions, "set role "+r.name+" NOLOGIN")
			}
			if len(r.members) > 0 {
				resp.Actions = append(resp.Actions, fmt.Sprintf("revoked %s from %s", r.name, strings.Join(r.members, ", ")))
			}
		}
	}

	// Sessions: the grant's roles as session user, and members (elevated
	// accounts, or roles the grantee granted its role to) unless they still
	// reach every entitled role another way.
	names := in.names()
	oids := slices.Clone(in.oids)
	accounts := slices.Clone(in.accounts)
	groups := slices.Clone(in.groups)
	for _, r := range roles {
		oids = appendNew(oids, r.oid)
		for _, m := range r.members {
			accounts = appendNew(accounts, m)
		}
		for _, g := range r.groups {
			groups = appendNew(groups, g)
		}
	}
	if !c.skipped(stepTerminate) {
		uncovered, err := c.uncoveredAccounts(ctx, accounts, groups)
		if err != nil {
			return err
		}
		victims, err := c.terminate(ctx, oids, names, uncovered)
		if err != nil {
			return err
		}
		if len(victims) > 0 {
			resp.Actions = append(resp.Actions, fmt.Sprintf("terminated %d sessions", len(victims)))
		}
		if covered := without(accounts, uncovered); len(covered) > 0 {
			resp.Actions = append(resp.Actions, "kept sessions of "+strings.Join(covered, ", ")+": they still hold the entitled roles through another grant or membership")
		}
	}

	if !c.skipped(stepDrop) {
		for _, r := range roles {
			acts, err := c.dropRole(ctx, r)
			resp.Actions = append(resp.Actions, acts...)
			if err != nil {
				return err
			}
		}
	}
	if len(roles) == 0 {
		resp.Actions = append(resp.Actions, "no role of the grant left to drop")
	}
	return nil
}

// lookupRoles reads the grant's roles by their derived names. An OID from
// State is never used to pick a role to change: a tampered State could name
// any role.
func (c *Conn) lookupRoles(ctx context.Context, names []string) ([]foundRole, error) {
	rows, err := c.pool.Query(ctx, `
SELECT r.oid, r.rolname::text, r.rolcanlogin,
  ARRAY(SELECT m.rolname::text FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles m ON m.oid = am.member WHERE am.roleid = r.oid ORDER BY 1),
  ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles g ON g.oid = am.roleid WHERE am.member = r.oid ORDER BY 1)
FROM pg_catalog.pg_roles r
WHERE r.rolname = ANY($1::text[])`, names)
	if err != nil {
		return nil, dbError("look up roles", err)
	}
	defer rows.Close()
	var out []foundRole
	for rows.Next() {
		var r foundRole
		if err := rows.Scan(&r.oid, &r.name, &r.canLogin, &r.members, &r.groups); err != nil {
			return nil, dbError("read roles", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, dbError("read roles", err)
	}
	return out, nil
}

// fence stops new use of the roles: no login, no member can switch to
// them. It is committed asynchronously: other sessions see it at once, and
// the DROP ROLE that follows commits synchronously, which flushes it too; if
// the server crashes before that, the repeated Revoke fences again.
func (c *Conn) fence(ctx context.Context, roles []foundRole) error {
	var b strings.Builder
	for _, r := range roles {
		if r.canLogin {
			b.WriteString("ALTER ROLE " + quoteIdent(r.name) + " NOLOGIN;\n")
		}
		if len(r.members) > 0 {
			b.WriteString("REVOKE " + quoteIdent(r.name) + " FROM " + quoteIdents(r.members) + ";\n")
		}
	}
	if b.Len() == 0 {
		return nil
	}
	// One implicit transaction (simple protocol): all or nothing.
	if err := c.execCatalog(ctx, "SET LOCAL synchronous_commit = off;\n"+b.String()); err != nil {
		if pgCode(err) != sqlstateUndefinedObject {
			return dbError("fence roles", err)
		}
		// A role was dropped meanwhile by a concurrent Revoke, which
		// aborted the whole transaction: fence the others one by one.
		if len(roles) > 1 {
			for _, r := range roles {
				if err := c.fence(ctx, []foundRole{r}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// uncoveredAccounts returns the accounts that do not reach every entitled
// role through another path: their sessions may hold a privilege only the
// revoked grant gave (a session that ran SET ROLE keeps the role's
// privileges after the membership is gone, and PostgreSQL does not show
// which sessions did), so they must end. An account that still reaches
// every entitled role loses nothing its sessions could use.
func (c *Conn) uncoveredAccounts(ctx context.Context, accounts, groups []string) ([]string, error) {
	if len(accounts) == 0 {
		return nil, nil
	}
	// Never nil: pgx sends a nil slice as SQL NULL, for which uncoveredSQL
	// would find every account covered (and keep its sessions), while
	// Verify, which sends an empty array, finds it uncovered.
	rows, err := c.pool.Query(ctx, uncoveredSQL+"SELECT name FROM uncovered", nonNil(accounts), nonNil(groups))
	if err != nil {
		return nil, dbError("check remaining memberships", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, dbError("read remaining memberships", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, dbError("read remaining memberships", err)
	}
	return out, nil
}

// uncoveredSQL defines the CTE "uncovered" over $1 (accounts) and $2
// (entitled roles). An account is covered only if there is at least one
// entitled role and it reaches each existing one.
const uncoveredSQL = `
WITH uncovered AS (
  SELECT a.oid, a.rolname::text AS name FROM pg_catalog.pg_roles a
  WHERE a.rolname = ANY($1::text[])
    AND (cardinality($2::text[]) = 0 OR EXISTS (
      SELECT 1 FROM pg_catalog.pg_roles g
      WHERE g.rolname = ANY($2::text[]) AND NOT pg_catalog.pg_has_role(a.oid, g.oid, 'MEMBER')))
)
`

// terminate ends every backend whose session user is one of the roles
// (by OID or name) or one of accounts, and waits until they have exited.
// It first signals all of them, then waits on each (they die in parallel),
// and repeats until none is left, so a session that was still starting is
// caught too. It returns how many backends it signalled.
func (c *Conn) terminate(ctx context.Context, oids []uint32, names, accounts []string) (victims, error) {
	// A backend matches by OID only when its role no longer exists (usename
	// is NULL): the orphaned session of a dropped role. Never by the OID of
	// an existing role, which a tampered State could set to anyone's.
	// The victims are chosen in a materialised CTE before any signal is
	// sent: in a plain WHERE clause the planner may evaluate quals in any
	// order, and pg_terminate_backend must never see a row that does not
	// match.
	match := victimsCTE("$1::oid[]", "$2::text[]", "$3::text[]")
	signal := match + `SELECT pid, usename, usesysid FROM victims WHERE pg_catalog.pg_terminate_backend(pid)`
	// pg_terminate_backend(pid, timeout) waits until that backend has
	// exited (PostgreSQL 14+). Every victim was signalled already, so they
	// exit in parallel and the waits overlap. The victims are matched
	// again rather than taken from the list, so a PID reused meanwhile by
	// another backend is never touched.
	wait := match + `SELECT count(*) FROM victims WHERE pg_catalog.pg_terminate_backend(pid, $4)`
	deadline := time.Now().Add(c.cfg.TerminateWait.D())
	seen := make(map[int32]bool)
	var out victims
	for {
		rows, err := c.pool.Query(ctx, signal, oidArray(oids), nonNil(names), nonNil(accounts))
		if err != nil {
			return out, dbError("terminate sessions", err)
		}
		n := 0
		for rows.Next() {
			var v victim
			if err := rows.Scan(&v.pid, &v.name, &v.oid); err != nil {
				rows.Close()
				return out, dbError("terminate sessions", err)
			}
			n++
			if !seen[v.pid] {
				seen[v.pid] = true
				out = append(out, v)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return out, dbError("terminate sessions", err)
		}
		if n == 0 {
			return out, nil
		}
		if time.Now().After(deadline) {
			return out, lapse.Errorf(lapse.EUNAVAILABLE, "%d sessions did not end within %s", n, c.cfg.TerminateWait)
		}
		ms := max(min(time.Until(deadline), time.Second), time.Millisecond).Milliseconds()
		if _, err := c.pool.Exec(ctx, wait, oidArray(oids), nonNil(names), nonNil(accounts), ms); err != nil {
			return out, dbError("wait for sessions to end", err)
		}
	}
}

// execCatalog runs a statement that changes the grant's roles. Two
// revocations of the same role may meet (a release and a deadline, or a
// Revoke repeated while the first still runs): PostgreSQL then refuses the
// second change with "tuple concurrently updated" or "tuple concurrently
// deleted" (SQLSTATE XX000) instead of waiting. The statement is
// idempotent, so it is simply run again, a few times, after the other
// change has committed.
func (c *Conn) execCatalog(ctx context.Context, sql string) error {
	var err error
	for range 4 {
		if _, err = c.pool.Exec(ctx, sql); !concurrentCatalogChange(err) {
			return err
		}
	}
	return err
}

// concurrentCatalogChange reports whether err is PostgreSQL's refusal of a
// catalog change that met a concurrent one on the same row.
func concurrentCatalogChange(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "XX000" && strings.HasPrefix(pe.Message, "tuple concurrently ")
}

// victimsCTE defines the CTE "victims": the backends whose session user
// is one of names or accounts, or whose role is gone and whose OID is one of
// oids. The arguments are SQL array expressions (parameters or literals).
//
// It reads pg_stat_get_activity, which pg_stat_activity wraps, and looks
// the few roles up by name and by OID through pg_roles' indexes: the view
// would join every role in the cluster to name every backend, a scan of the
// whole role catalog for each revocation batch.
func victimsCTE(oids, names, accounts string) string {
	return `
WITH victims AS MATERIALIZED (
  SELECT a.pid, coalesce(u.rolname::text, '') AS usename, a.usesysid
  FROM pg_catalog.pg_stat_get_activity(NULL::integer) a
  LEFT JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
  WHERE (a.usesysid IN (SELECT r.oid FROM pg_catalog.pg_roles r
                        WHERE r.rolname = ANY(` + names + `) OR r.rolname = ANY(` + accounts + `))
         OR (a.usesysid = ANY(` + oids + `) AND u.oid IS NULL))
    AND a.pid <> pg_catalog.pg_backend_pid()
)
`
}

// victim is a backend that terminate signalled.
type victim struct {
	pid  int32
	name string // session user; "" if its role no longer exists
	oid  uint32
}

type victims []victim

// merge returns vs with the victims of more that it does not hold already.
func (vs victims) merge(more victims) victims {
	out := slices.Clone(vs)
	for _, v := range more {
		if !slices.ContainsFunc(out, func(w victim) bool { return w.pid == v.pid }) {
			out = append(out, v)
		}
	}
	return out
}

// of counts the victims that belong to a grant: by session user name, or
// by OID for sessions whose role is gone.
func (vs victims) of(names []string, oids []uint32, roles []foundRole) int {
	n := 0
	for _, v := range vs {
		mine := slices.Contains(names, v.name) || slices.Contains(oids, v.oid)
		for _, r := range roles {
			mine = mine || r.oid == v.oid
		}
		if mine {
			n++
		}
	}
	return n
}

// dropRole drops r, first cleaning what it owns or holds in each database
// if the plain DROP ROLE is refused for that.
func (c *Conn) dropRole(ctx context.Context, r foundRole) ([]string, error) {
	drop := "DROP ROLE IF EXISTS " + quoteIdent(r.name)
	err := c.execCatalog(ctx, drop)
	if err == nil {
		return []string{"dropped role " + r.name}, nil
	}
	if pgCode(err) != sqlstateDependentObjects {
		return nil, dbError("drop role "+r.name, err)
	}
	deps, err := c.dependencies(ctx, r.oid)
	if err != nil {
		return nil, err
	}
	if len(deps.sharedOwned) > 0 {
		// DROP OWNED leaves databases and tablespaces alone, and dropping
		// one is not Lapse's to decide.
		return nil, &lapse.Error{Code: lapse.ECONFLICT,
			Message: "the role owns " + strings.Join(deps.sharedOwned, ", ") + "; Lapse does not drop databases or tablespaces",
			Err:     fmt.Errorf("postgres: drop role %s: owns %s", r.name, strings.Join(deps.sharedOwned, ", "))}
	}
	var actions []string
	gone := false
	for _, db := range deps.dbs {
		if !c.databaseAllowed(db.name) || !db.allowConn {
			return actions, &lapse.Error{Code: lapse.ECONFLICT, Message: "the role owns or holds objects in a database the connector may not clean", Err: fmt.Errorf("postgres: drop role %s: objects in database %s", r.name, db.name)}
		}
		pool, err := c.dbPool(ctx, db.name)
		if err != nil {
			return actions, err
		}
		script := "DROP OWNED BY " + quoteIdent(r.name)
		verb := "dropped objects and privileges of " + r.name + " in database " + db.name
		if c.cfg.Owned == OwnedReassign {
			script = "REASSIGN OWNED BY " + quoteIdent(r.name) + " TO " + quoteIdent(c.cfg.ReassignTo) + ";\n" + script
			verb = "reassigned objects of " + r.name + " to " + c.cfg.ReassignTo + " and dropped its privileges in database " + db.name
		}
		if _, err := pool.Exec(ctx, script); err != nil {
			if pgCode(err) == sqlstateUndefinedObject {
				gone = true // dropped meanwhile by a concurrent Revoke
				break
			}
			return actions, dbError("clean up role "+r.name+" in database "+db.name, err)
		}
		actions = append(actions, verb)
	}
	if len(deps.sharedHeld) > 0 && !gone {
		// DROP OWNED in any database also revokes the privileges on
		// shared objects (databases, tablespaces, parameters). If no
		// database holds anything else of the role, it runs in the
		// connector's own database, where it then has nothing to drop.
		if len(deps.dbs) == 0 {
			if _, err := c.pool.Exec(ctx, "DROP OWNED BY "+quoteIdent(r.name)); err != nil && pgCode(err) != sqlstateUndefinedObject {
				return actions, dbError("revoke privileges of role "+r.name+" on shared objects", err)
			}
		}
		actions = append(actions, "revoked privileges of "+r.name+" on "+strings.Join(deps.sharedHeld, ", "))
	}
	if _, err := c.pool.Exec(ctx, drop); err != nil {
		return actions, dbError("drop role "+r.name, err)
	}
	return append(actions, "dropped role "+r.name), nil
}

type dependencyDB struct {
	name      string
	allowConn bool
}

// roleDependencies is what pg_shdepend records of a role.
type roleDependencies struct {
	// dbs are the databases with an object owned by, a privilege granted
	// to, or a default privilege of the role.
	dbs []dependencyDB
	// sharedOwned describes the shared objects (databases, tablespaces)
	// the role owns: a conflict.
	sharedOwned []string
	// sharedHeld describes the shared objects the role holds privileges on
	// (CONNECT on a database, CREATE on a tablespace, SET on a parameter),
	// which DROP OWNED in any database revokes.
	sharedHeld []string
}

// dependencies reads what the catalog records of the role (pg_shdepend is
// cluster-wide, so one query answers for all databases). Ownership of a
// shared object is told apart from a privilege on one: only the first
// stops the role from being dropped. Dependencies on role memberships
// (pg_auth_members, in which the role is grantor) are removed by DROP
// OWNED, like privileges.
func (c *Conn) dependencies(ctx context.Context, oid uint32) (*roleDependencies, error) {
	rows, err := c.pool.Query(ctx, `
SELECT DISTINCT s.dbid = 0,
  s.dbid = 0 AND s.deptype = 'o' AND s.classid <> 'pg_catalog.pg_auth_members'::regclass,
  coalesce(d.datname::text, ''), coalesce(d.datallowconn, false),
  CASE WHEN s.dbid = 0 THEN coalesce(pg_catalog.pg_describe_object(s.classid, s.objid, s.objsubid), 'a shared object') ELSE '' END
FROM pg_catalog.pg_shdepend s LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid = $1 AND s.deptype <> 'p'
ORDER BY 1, 2, 3, 5`, oid)
	if err != nil {
		return nil, dbError("find databases to clean", err)
	}
	defer rows.Close()
	deps := &roleDependencies{}
	for rows.Next() {
		var isShared, owned bool
		var db dependencyDB
		var object string
		if err := rows.Scan(&isShared, &owned, &db.name, &db.allowConn, &object); err != nil {
			return nil, dbError("find databases to clean", err)
		}
		switch {
		case owned:
			deps.sharedOwned = appendNew(deps.sharedOwned, object)
		case isShared:
			deps.sharedHeld = appendNew(deps.sharedHeld, object)
		default:
			if !slices.ContainsFunc(deps.dbs, func(d dependencyDB) bool { return d.name == db.name }) {
				deps.dbs = append(deps.dbs, db)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, dbError("find databases to clean", err)
	}
	return deps, nil
}

func (c *Conn) databaseAllowed(db string) bool {
	return len(c.cfg.Databases) == 0 || slices.Contains(c.cfg.Databases, db)
}

// dbPool returns a small pool connected to database db, as the admin.
func (c *Conn) dbPool(ctx context.Context, db string) (*pgxpool.Pool, error) {
	if db == c.poolConfig.ConnConfig.Database {
		return c.pool, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "connector is closed")
	}
	if p, ok := c.dbPools[db]; ok {
		return p, nil
	}
	cfg := c.poolConfig.Copy()
	cfg.ConnConfig.Database = db
	cfg.MaxConns = DefaultDatabaseConns
	cfg.MinConns = 0
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, dbError("connect to database "+db, err)
	}
	c.dbPools[db] = p
	return p, nil
}

func appendNew[T comparable](s []T, v T) []T {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

func without(s, remove []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(remove, v) {
			out = append(out, v)
		}
	}
	return out
}

// oidArray returns a non-nil slice, which pgx encodes as an empty array.
func oidArray(o []uint32) []uint32 {
	if o == nil {
		return []uint32{}
	}
	return o
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
