package postgres

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// verifySQL reads, in one snapshot, everything Verify checks in the
// catalog and the activity view. $1: elevated accounts; $2: entitled
// roles; $3: the grant's role names; $4: OIDs State recorded.
const verifySQL = uncoveredSQL + `, r AS (
  SELECT oid, rolname::text AS name, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = ANY($3::text[])
), renamed AS (
  SELECT oid, rolname::text AS name FROM pg_catalog.pg_roles WHERE oid = ANY($4::oid[]) AND NOT (rolname = ANY($3::text[]))
), ids AS (
  SELECT oid FROM r
  UNION
  SELECT o FROM unnest($4::oid[]) o WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE oid = o)
)
SELECT
  coalesce((SELECT array_agg(name || CASE WHEN rolcanlogin THEN ' (LOGIN)' ELSE ' (NOLOGIN)' END ORDER BY name) FROM r), '{}'),
  (SELECT count(*) FROM pg_catalog.pg_auth_members m
     WHERE m.roleid IN (SELECT oid FROM ids) OR m.member IN (SELECT oid FROM ids) OR m.grantor IN (SELECT oid FROM ids)),
  (SELECT count(*) FROM pg_catalog.pg_shdepend s
     WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid IN (SELECT oid FROM ids) AND s.deptype <> 'p'),
  coalesce((SELECT array_agg(DISTINCT coalesce(d.datname::text, '(shared objects)')) FROM pg_catalog.pg_shdepend s
     LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
     WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid IN (SELECT oid FROM ids) AND s.deptype <> 'p'), '{}'),
  (SELECT count(*) FROM pg_catalog.pg_stat_activity
     WHERE usename = ANY($3::text[]) OR (usesysid IN (SELECT oid FROM ids) AND usename IS NULL)),
  coalesce((SELECT array_agg(name ORDER BY name) FROM uncovered), '{}'),
  (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usesysid IN (SELECT oid FROM uncovered)),
  coalesce((SELECT array_agg(a.rolname::text ORDER BY 1) FROM pg_catalog.pg_roles a
     WHERE a.rolname = ANY($1::text[]) AND a.oid NOT IN (SELECT oid FROM uncovered)), '{}'),
  coalesce((SELECT array_agg(name || ' (OID ' || oid || ')' ORDER BY 1) FROM renamed), '{}')
`

// verifyBatchSQL is verifySQL for many grants without elevated accounts
// (ephemeral grants, or grants whose mode is unknown), one row per grant,
// all from one snapshot. $1: item index; $2, $3: the login and elevation
// role names; $4: the OID State recorded, or 0.
//
// It is written set-wise, so its cost grows with the batch and not with
// the batch times the catalog: each role is found once (ids); memberships
// in which it is the role or the member come from pg_auth_members' two
// indexes, those it granted from one hash join (the grantor has no index);
// sessions are matched by session user OID straight from
// pg_stat_get_activity, without the activity view's join of every role.
// A session counts when its session user's OID is one of the grant's
// roles: the role found by name (a session of a role that exists has its
// OID, so this is the same as matching the name) or, when no role has it
// any more, the OID State recorded (the session of a dropped role).
const verifyBatchSQL = `
WITH g(i, login, elev, soid) AS (
  SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::oid[])
), named AS MATERIALIZED (
  SELECT g.i, r.oid, r.rolname::text AS name, r.rolcanlogin
  FROM g JOIN pg_catalog.pg_roles r ON r.rolname IN (g.login, g.elev)
), ids AS MATERIALIZED (
  SELECT i, oid FROM named
  UNION
  SELECT g.i, g.soid FROM g WHERE g.soid <> 0 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = g.soid)
), mem AS (
  SELECT i, count(*) AS n FROM (
    SELECT ids.i, m.ctid FROM ids JOIN pg_catalog.pg_auth_members m ON m.roleid = ids.oid
    UNION
    SELECT ids.i, m.ctid FROM ids JOIN pg_catalog.pg_auth_members m ON m.member = ids.oid
    UNION
    SELECT ids.i, m.ctid FROM ids JOIN pg_catalog.pg_auth_members m ON m.grantor = ids.oid
  ) x GROUP BY i
), dep AS (
  SELECT ids.i, count(*) AS n, array_agg(DISTINCT coalesce(d.datname::text, '(shared objects)')) AS dbs
  FROM ids JOIN pg_catalog.pg_shdepend s
    ON s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid = ids.oid AND s.deptype <> 'p'
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
  GROUP BY ids.i
), act AS (
  SELECT ids.i, count(*) AS n
  FROM ids JOIN pg_catalog.pg_stat_get_activity(NULL::integer) a ON a.usesysid = ids.oid
  GROUP BY ids.i
)
SELECT g.i,
  coalesce((SELECT array_agg(n.name || CASE WHEN n.rolcanlogin THEN ' (LOGIN)' ELSE ' (NOLOGIN)' END ORDER BY 1)
            FROM named n WHERE n.i = g.i), '{}'),
  coalesce(mem.n, 0),
  coalesce(dep.n, 0),
  coalesce(dep.dbs, '{}'),
  coalesce(act.n, 0),
  coalesce((SELECT array_agg(r.rolname::text || ' (OID ' || r.oid || ')' ORDER BY 1) FROM pg_catalog.pg_roles r
     WHERE g.soid <> 0 AND r.oid = g.soid AND r.rolname NOT IN (g.login, g.elev)), '{}')
FROM g LEFT JOIN mem ON mem.i = g.i LEFT JOIN dep ON dep.i = g.i LEFT JOIN act ON act.i = g.i
`

// verifyItem is one Verify's catalog check in a batch.
type verifyItem struct {
	in  *revokeInputs
	ob  observation
	err error
}

// verifyBatch reads the catalog observations of a batch of grants with one
// query.
func (c *Conn) verifyBatch(ctx context.Context, items []*verifyItem) {
	n := len(items)
	idx, logins, elevs, oids := make([]int32, n), make([]string, n), make([]string, n), make([]uint32, n)
	for i, it := range items {
		idx[i], logins[i], elevs[i] = int32(i), it.in.login, it.in.elevation
		if len(it.in.oids) > 0 {
			oids[i] = it.in.oids[0]
		}
	}
	fail := func(err error) {
		for _, it := range items {
			it.err = dbError("verify", err)
		}
	}
	rows, err := c.pool.Query(ctx, verifyBatchSQL, idx, logins, elevs, oids)
	if err != nil {
		fail(err)
		return
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var i int32
		var ob observation
		if err := rows.Scan(&i, &ob.roles, &ob.memberships, &ob.dependencies, &ob.depDatabases, &ob.sessions, &ob.renamed); err != nil {
			fail(err)
			return
		}
		if i < 0 || int(i) >= n {
			fail(fmt.Errorf("row for unknown item %d", i))
			return
		}
		items[i].ob = ob
		seen++
	}
	if err := rows.Err(); err != nil {
		fail(err)
		return
	}
	if seen != n {
		fail(fmt.Errorf("%d rows for %d grants", seen, n))
	}
}

// observation is what verifySQL returned.
type observation struct {
	roles        []string
	memberships  int64
	dependencies int64
	depDatabases []string
	sessions     int64
	uncovered    []string
	accountSess  int64
	covered      []string
	renamed      []string
}

// Verify checks, read-only and without trusting what Revoke reported, that
// the grant's role is gone: no role by its name or recorded OID, no
// membership in which it is the role, the member or the grantor, nothing it
// owns or holds in any database (pg_shdepend), no backend with it as session
// user in any database, and — for ephemeral roles — that a real login with
// the grant's password is refused. For elevation it also requires that no
// session of the account remains that could still hold an entitled role,
// unless the account reaches every entitled role through another path.
// A residue is reported per checkpoint, not as an error. Returns EINVALID
// for a bad grant ID and EUNAVAILABLE if a check cannot run.
func (c *Conn) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	in, err := c.inputs(req.GrantID, req.State, req.Spec)
	if err != nil {
		return nil, err
	}
	if err := c.resolveStateAccount(ctx, in); err != nil {
		return nil, err
	}
	checkedAt := c.clock.Now().UTC().Format(time.RFC3339Nano)
	// The login probe starts a backend on the server, which costs more
	// than everything else Verify does; it runs while the catalog is read.
	// Both only observe, and both start after Revoke returned.
	var probe loginProbe
	if in.mode != modeElevation && !c.cfg.NoLoginProbe {
		probe.start(ctx, c, in.login, req.Probe["password"])
		defer probe.wait()
	}
	var ob observation
	if len(in.accounts) > 0 {
		err = c.pool.QueryRow(ctx, verifySQL, nonNil(in.accounts), nonNil(in.groups), in.names(), oidArray(in.oids)).Scan(
			&ob.roles, &ob.memberships, &ob.dependencies, &ob.depDatabases, &ob.sessions, &ob.uncovered, &ob.accountSess, &ob.covered, &ob.renamed)
		if err != nil {
			return nil, dbError("verify", err)
		}
	} else {
		it := &verifyItem{in: in}
		if err := c.verifies.Do(ctx, it); err != nil {
			return nil, dbError("verify", err)
		}
		if it.err != nil {
			return nil, it.err
		}
		ob = it.ob
	}

	mode := in.mode
	if mode == "" {
		mode = "unknown"
	}
	// Role checkpoint: the catalog, then the login probe.
	role := connector.CheckpointResult{Name: CheckpointRole, Kind: lapse.CheckpointTarget}
	role.Evidence = map[string]any{
		"checked_at":           checkedAt,
		"mode":                 mode,
		"role_names":           in.names(),
		"queried":              "pg_roles, pg_auth_members, pg_shdepend (cluster-wide: all databases)",
		"roles_found":          ob.roles,
		"memberships":          ob.memberships,
		"dependencies":         ob.dependencies,
		"dependency_databases": ob.depDatabases,
	}
	if len(in.oids) > 0 {
		role.Evidence["oids"] = in.oids
	}
	if len(in.notes) > 0 {
		role.Evidence["notes"] = in.notes
	}
	for _, r := range ob.roles {
		role.Residue = append(role.Residue, "role "+r+" exists")
	}
	for _, r := range ob.renamed {
		// The OID State recorded now has another name: the grant's role was
		// renamed, or State does not belong here. Either way an operator
		// must look; the connector never acts on a role by OID.
		role.Residue = append(role.Residue, "the grant's role OID is now role "+r)
	}
	if ob.memberships > 0 {
		role.Residue = append(role.Residue, fmt.Sprintf("%d role memberships involve the grant's role", ob.memberships))
	}
	if ob.dependencies > 0 {
		role.Residue = append(role.Residue, fmt.Sprintf("%d objects, privileges or default privileges of the grant's role in: %s", ob.dependencies, strings.Join(ob.depDatabases, ", ")))
	}
	if mode == modeElevation {
		role.Evidence["accounts"] = in.accounts
		role.Evidence["entitled_roles"] = in.groups
		role.Evidence["accounts_entitled_by_other_paths"] = ob.covered
		role.Evidence["login_probe"] = "not applicable: elevation hands out no credential; the account's path through the grant's role is checked in pg_auth_members"
	} else if c.cfg.NoLoginProbe {
		role.Evidence["login_probe"] = "disabled by configuration (no_login_probe); the role's absence from pg_authid is the evidence"
	} else {
		evidence, accepted, err := probe.wait()
		if err != nil {
			return nil, err
		}
		role.Evidence["login_probe"] = evidence
		if accepted {
			role.Residue = append(role.Residue, "login as "+in.login+" succeeded")
		}
	}
	role.Gone = len(role.Residue) == 0

	// Sessions checkpoint.
	sess := connector.CheckpointResult{Name: CheckpointSessions, Kind: lapse.CheckpointSessions}
	sess.Evidence = map[string]any{
		"checked_at": checkedAt,
		"queried":    "pg_stat_activity (all databases)",
		"matched_by": "session user (usesysid or usename), so sessions that ran SET ROLE are included",
		"sessions":   ob.sessions,
	}
	if ob.sessions > 0 {
		sess.Residue = append(sess.Residue, fmt.Sprintf("%d sessions with the grant's role as session user", ob.sessions))
	}
	if len(in.accounts) > 0 {
		sess.Evidence["accounts"] = in.accounts
		sess.Evidence["accounts_entitled_by_other_paths"] = ob.covered
		sess.Evidence["account_sessions_without_other_path"] = ob.accountSess
		if ob.accountSess > 0 {
			sess.Residue = append(sess.Residue, fmt.Sprintf("%d sessions of %s, which may still hold an entitled role through SET ROLE", ob.accountSess, strings.Join(ob.uncovered, ", ")))
		}
	}
	sess.Gone = len(sess.Residue) == 0
	return &connector.VerifyResponse{Checkpoints: []connector.CheckpointResult{role, sess}}, nil
}

// loginProbe is a probeLogin running beside the rest of Verify.
type loginProbe struct {
	done     chan struct{}
	evidence map[string]any
	accepted bool
	err      error
}

// start runs probeLogin in the background. The password is read here, not
// in the goroutine: the caller clears its probe material once Verify
// returns.
func (p *loginProbe) start(ctx context.Context, c *Conn, user, password string) {
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		p.evidence, p.accepted, p.err = c.probeLogin(ctx, user, password)
	}()
}

// wait returns the probe's outcome once it has finished. Verify waits for
// it on every path, so no probe outlives the call that started it.
func (p *loginProbe) wait() (map[string]any, bool, error) {
	if p.done == nil {
		return nil, false, nil
	}
	<-p.done
	return p.evidence, p.accepted, p.err
}

// probeLogin attempts a real login as user. With the grant's password it is
// the grantee's own login; without one (Grant never returned) it uses a
// random password, which still shows whether the role can log in where the
// server does not check passwords. accepted is true if the server let it
// in. The password never appears in the evidence.
func (c *Conn) probeLogin(ctx context.Context, user, password string) (evidence map[string]any, accepted bool, err error) {
	credential := "the grant's password"
	if password == "" {
		var b [passwordBytes]byte
		_, _ = rand.Read(b[:])
		password = base64.RawURLEncoding.EncodeToString(b[:])
		credential = "none kept (a random password)"
	}
	cfg := c.probeBase.Copy()
	cfg.User, cfg.Password = user, password
	evidence = map[string]any{
		"user":       user,
		"host":       c.host,
		"port":       c.port,
		"database":   c.database,
		"credential": credential,
		"client":     "pgx/v5 pgconn",
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout.D())
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		_ = conn.Close(ctx)
		evidence["outcome"] = "accepted"
		return evidence, true, nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && strings.HasPrefix(pe.Code, sqlstateInvalidAuthPrefix) {
		evidence["outcome"] = "rejected"
		evidence["sqlstate"] = pe.Code
		evidence["server_message"] = pe.Message
		return evidence, false, nil
	}
	// Anything else (unreachable, too many connections, a TLS failure)
	// says nothing about the role: the check could not run.
	return nil, false, dbError("login probe as "+user, err)
}
