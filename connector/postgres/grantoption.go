package postgres

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// A principal that may use an entitled role — directly, through INHERIT, or
// after SET ROLE — may also use every grant option of that role and of the
// roles it is a member of. A privilege it passes on with one is recorded
// with that role, not the principal, as grantor: DROP OWNED BY and DROP
// ROLE of the principal leave it in place, and nothing in the catalog ties
// it to the grant. Lapse therefore refuses such entitled roles unless the
// spec accepts the risk (Spec.AcceptGrantOptionRisk).

// Bounds on what a grant-option check reports.
const (
	// maxRisksFetched bounds the rows one query returns: enough to name
	// the problem, not a listing of every table an owner role owns.
	maxRisksFetched = 64
	// maxRisksListed bounds how many risks an error, Info or Discover
	// names.
	maxRisksListed = 10
	// maxRiskText bounds one description.
	maxRiskText = 300
	// validateTimeout bounds ValidateSpec's look at the server.
	validateTimeout = 10 * time.Second
	// grantOptionCheckAge is how old a check Grant may rely on. The check
	// costs the server a few catalog queries (one per database that holds
	// something of the roles), several times the cost of the grant itself;
	// grants for the same roles within this time share one. The check
	// only ever describes a moment — a grant option given just after a
	// Grant is not seen by it either — so reusing it for a second changes
	// nothing that matters, and Discover reports risks as they are now.
	grantOptionCheckAge = time.Second
	// maxRiskChecks bounds the remembered checks (one per distinct set of
	// entitled roles in the catalog).
	maxRiskChecks = 1024
)

// riskCheck is a grant-option check, remembered or under way: done is
// closed once at, risks, truncated and err are set.
type riskCheck struct {
	done      chan struct{}
	at        time.Time
	risks     []grantOptionRisk
	truncated bool
	err       error
	renewing  bool // a replacement is being made (guarded by riskMu)
}

// grantOptionRisk is one way the entitled roles let a principal pass a
// privilege on beyond the grant's end.
type grantOptionRisk struct {
	role   string // the entitled role
	holder string // the role that holds it: role itself, or one role is a member of
	what   string // "holds SELECT WITH GRANT OPTION on table s.t", "owns schema s", …
	db     string // the database, "" for cluster-wide facts
}

func (r grantOptionRisk) String() string {
	s := r.role
	if r.holder != r.role {
		s += " (through its membership in " + r.holder + ")"
	}
	s += " " + r.what
	if r.db != "" {
		s += " in database " + r.db
	}
	return s
}

// closureSQL is the entitled roles ($1) and every role they are members
// of, directly or not, each with the entitled role it was reached from.
// Memberships are followed whatever their INHERIT setting: SET ROLE reaches
// a role whose privileges are not inherited.
const closureSQL = `WITH RECURSIVE closure(oid, via) AS (
    SELECT r.oid, r.rolname::text FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1::text[])
  UNION
    SELECT am.roleid, c.via FROM closure c JOIN pg_catalog.pg_auth_members am ON am.member = c.oid
), h AS (
  SELECT c.via, c.oid, r.rolname::text AS holder, r.rolsuper, r.rolcreaterole
  FROM closure c JOIN pg_catalog.pg_roles r ON r.oid = c.oid
)`

// sharedRiskSQL reads what the shared catalogs show: attributes and ADMIN
// OPTION that let a role hand out memberships, ownership and grant options
// on databases, tablespaces (and parameters, see paramACLRiskSQL), and the
// databases whose own catalogs must be looked at (pg_shdepend records every
// object a role owns or is named in the ACL of, cluster-wide). Rows with a
// database name and no description are those databases.
const sharedRiskSQL = closureSQL + `
SELECT via, holder, 'is a superuser', NULL::text, NULL::bool FROM h WHERE rolsuper
UNION ALL
SELECT via, holder, 'has CREATEROLE', NULL, NULL FROM h WHERE rolcreaterole AND NOT rolsuper
UNION ALL
SELECT h.via, h.holder, 'holds ADMIN OPTION on role ' || g.rolname::text, NULL, NULL
  FROM h JOIN pg_catalog.pg_auth_members am ON am.member = h.oid AND am.admin_option
  JOIN pg_catalog.pg_roles g ON g.oid = am.roleid
UNION ALL
SELECT h.via, h.holder, 'owns database ' || pg_catalog.quote_ident(d.datname::text) || ' (an owner holds every grant option)', NULL, NULL
  FROM h JOIN pg_catalog.pg_database d ON d.datdba = h.oid
UNION ALL
SELECT h.via, h.holder, 'owns tablespace ' || pg_catalog.quote_ident(t.spcname::text) || ' (an owner holds every grant option)', NULL, NULL
  FROM h JOIN pg_catalog.pg_tablespace t ON t.spcowner = h.oid
UNION ALL
SELECT h.via, h.holder, 'holds ' || string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) || ' WITH GRANT OPTION on database ' || pg_catalog.quote_ident(d.datname::text), NULL, NULL
  FROM pg_catalog.pg_database d CROSS JOIN LATERAL pg_catalog.aclexplode(d.datacl) a JOIN h ON h.oid = a.grantee
  WHERE a.is_grantable GROUP BY h.via, h.holder, d.datname
UNION ALL
SELECT h.via, h.holder, 'holds ' || string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) || ' WITH GRANT OPTION on tablespace ' || pg_catalog.quote_ident(t.spcname::text), NULL, NULL
  FROM pg_catalog.pg_tablespace t CROSS JOIN LATERAL pg_catalog.aclexplode(t.spcacl) a JOIN h ON h.oid = a.grantee
  WHERE a.is_grantable GROUP BY h.via, h.holder, t.spcname
`

// paramACLRiskSQL adds grant options on parameters (PostgreSQL 15 and
// later, where pg_parameter_acl exists).
const paramACLRiskSQL = `UNION ALL
SELECT h.via, h.holder, 'holds ' || string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) || ' WITH GRANT OPTION on parameter ' || p.parname, NULL, NULL
  FROM pg_catalog.pg_parameter_acl p CROSS JOIN LATERAL pg_catalog.aclexplode(p.paracl) a JOIN h ON h.oid = a.grantee
  WHERE a.is_grantable GROUP BY h.via, h.holder, p.parname
`

// riskDatabasesSQL ends sharedRiskSQL: the databases to look into.
const riskDatabasesSQL = `UNION ALL
SELECT DISTINCT h.via, h.holder, NULL, d.datname::text, d.datallowconn
  FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid JOIN h ON h.oid = s.refobjid
  WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.deptype IN ('a', 'o')
`

// databaseRiskSQL reads, in the database it runs in, the objects the
// roles own (an owner holds every grant option on its object) and the
// privileges they hold WITH GRANT OPTION on tables, columns, sequences,
// views, schemas, functions, types, languages, foreign-data wrappers,
// foreign servers and large objects, and in default privileges (which give
// grant options on objects not made yet). pg_shdepend names exactly the
// objects to look at, so the cost does not grow with the database. Objects
// are named by pg_identify_object, always schema-qualified.
var databaseRiskSQL = closureSQL + `, dep AS (
  SELECT DISTINCT s.classid, s.objid, s.objsubid, s.deptype, s.refobjid
  FROM pg_catalog.pg_shdepend s
  WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
    AND s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.deptype IN ('a', 'o')
    AND s.refobjid IN (SELECT oid FROM h)
), acl AS (
  SELECT d.classid, d.objid, d.objsubid, d.refobjid,
    CASE d.classid
      WHEN 'pg_catalog.pg_class'::regclass THEN CASE WHEN d.objsubid = 0
        THEN (SELECT relacl FROM pg_catalog.pg_class WHERE oid = d.objid)
        ELSE (SELECT attacl FROM pg_catalog.pg_attribute WHERE attrelid = d.objid AND attnum = d.objsubid) END
      WHEN 'pg_catalog.pg_namespace'::regclass THEN (SELECT nspacl FROM pg_catalog.pg_namespace WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_proc'::regclass THEN (SELECT proacl FROM pg_catalog.pg_proc WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_type'::regclass THEN (SELECT typacl FROM pg_catalog.pg_type WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_language'::regclass THEN (SELECT lanacl FROM pg_catalog.pg_language WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_foreign_data_wrapper'::regclass THEN (SELECT fdwacl FROM pg_catalog.pg_foreign_data_wrapper WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_foreign_server'::regclass THEN (SELECT srvacl FROM pg_catalog.pg_foreign_server WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_largeobject_metadata'::regclass THEN (SELECT lomacl FROM pg_catalog.pg_largeobject_metadata WHERE oid = d.objid)
      WHEN 'pg_catalog.pg_default_acl'::regclass THEN (SELECT defaclacl FROM pg_catalog.pg_default_acl WHERE oid = d.objid)
    END AS acl
  FROM dep d WHERE d.deptype = 'a'
), granted AS (
  SELECT a.classid, a.objid, a.objsubid, a.refobjid, string_agg(e.privilege_type, ', ' ORDER BY e.privilege_type) AS privs
  FROM acl a CROSS JOIN LATERAL pg_catalog.aclexplode(a.acl) e
  WHERE e.grantee = a.refobjid AND e.is_grantable
  GROUP BY 1, 2, 3, 4
)
SELECT h.via, h.holder,
  'owns ' || coalesce((SELECT o.type || ' ' || o.identity FROM pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) o), 'an object') || ' (an owner holds every grant option)'
FROM dep d JOIN h ON h.oid = d.refobjid
WHERE d.deptype = 'o' AND d.classid <> 'pg_catalog.pg_default_acl'::regclass
UNION ALL
SELECT h.via, h.holder,
  CASE WHEN g.classid = 'pg_catalog.pg_default_acl'::regclass
    THEN 'receives ' || g.privs || ' WITH GRANT OPTION from ' || coalesce(pg_catalog.pg_describe_object(g.classid, g.objid, g.objsubid), 'default privileges')
    ELSE 'holds ' || g.privs || ' WITH GRANT OPTION on ' || coalesce((SELECT o.type || ' ' || o.identity FROM pg_catalog.pg_identify_object(g.classid, g.objid, g.objsubid) o), 'an object') END
FROM granted g JOIN h ON h.oid = g.refobjid
ORDER BY 1, 2, 3
LIMIT ` + strconv.Itoa(maxRisksFetched+1)

// grantOptionRisks finds everything through which a principal holding the
// entitled roles could pass a privilege on that would outlive its grant:
// in the entitled roles and every role they are members of, SUPERUSER or
// CREATEROLE, ADMIN OPTION on a role, ownership of an object, and any
// privilege held WITH GRANT OPTION (in every database where pg_shdepend
// records something of those roles, and in default privileges). A
// database the connector may not visit (outside Databases, or not
// accepting connections) is itself reported: what it holds cannot be
// shown harmless. truncated says more were found than returned.
func (c *Conn) grantOptionRisks(ctx context.Context, roles []string) (risks []grantOptionRisk, truncated bool, err error) {
	q := sharedRiskSQL
	if c.paramACL {
		q += paramACLRiskSQL
	}
	q += riskDatabasesSQL + "ORDER BY 1, 2, 3, 4"
	rows, err := c.pool.Query(ctx, q, roles)
	if err != nil {
		return nil, false, dbError("check the entitled roles for grant options", err)
	}
	type target struct {
		name      string
		allowConn bool
		holders   []grantOptionRisk
	}
	var dbs []*target
	byName := map[string]*target{}
	for rows.Next() {
		var via, holder string
		var what, db *string
		var allowConn *bool
		if err := rows.Scan(&via, &holder, &what, &db, &allowConn); err != nil {
			rows.Close()
			return nil, false, dbError("check the entitled roles for grant options", err)
		}
		r := grantOptionRisk{role: via, holder: holder}
		if what != nil {
			r.what = *what
			risks = append(risks, r)
			continue
		}
		if db == nil {
			continue
		}
		t := byName[*db]
		if t == nil {
			t = &target{name: *db, allowConn: allowConn != nil && *allowConn}
			byName[*db] = t
			dbs = append(dbs, t)
		}
		t.holders = append(t.holders, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, dbError("check the entitled roles for grant options", err)
	}
	for _, db := range dbs {
		if len(risks) > maxRisksFetched {
			return risks, true, nil
		}
		if !c.databaseAllowed(db.name) || !db.allowConn {
			for _, r := range db.holders {
				r.what, r.db = "owns or holds objects the connector may not inspect (outside databases, or no connections allowed)", db.name
				risks = append(risks, r)
			}
			continue
		}
		pool, err := c.dbPool(ctx, db.name)
		if err != nil {
			return nil, false, err
		}
		rows, err := pool.Query(ctx, databaseRiskSQL, roles)
		if err != nil {
			return nil, false, dbError("check the entitled roles for grant options in database "+db.name, err)
		}
		n := 0
		for rows.Next() {
			r := grantOptionRisk{db: db.name}
			if err := rows.Scan(&r.role, &r.holder, &r.what); err != nil {
				rows.Close()
				return nil, false, dbError("check the entitled roles for grant options in database "+db.name, err)
			}
			if n++; n > maxRisksFetched {
				truncated = true
				break
			}
			risks = append(risks, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, false, dbError("check the entitled roles for grant options in database "+db.name, err)
		}
	}
	return risks, truncated, nil
}

// riskSummary describes at most maxRisksListed risks in one line, safe to
// show: catalog text with control characters replaced and each part
// bounded.
func riskSummary(risks []grantOptionRisk, truncated bool) string {
	parts := make([]string, 0, min(len(risks), maxRisksListed)+1)
	for i, r := range risks {
		if i == maxRisksListed {
			break
		}
		parts = append(parts, printable(r.String()))
	}
	switch more := len(risks) - len(parts); {
	case truncated:
		parts = append(parts, "and more")
	case more > 0:
		parts = append(parts, fmt.Sprintf("and %d more", more))
	}
	return strings.Join(parts, "; ")
}

// printable bounds s and replaces control characters, so that catalog text
// (object names may hold anything) cannot break a message or a log line.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= maxRiskText {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// riskCheck returns a check of roles (key: their sorted names) made less
// than grantOptionCheckAge ago, or under way — concurrent Grants for the
// same roles share one — or, if there is none or fresh is set, makes one.
// A failed check is not remembered: those that waited for it try again.
func (c *Conn) riskCheck(ctx context.Context, key string, roles []string, fresh bool) (*riskCheck, error) {
	for {
		c.riskMu.Lock()
		rc := c.riskChecks[key]
		if rc != nil && !fresh {
			select {
			case <-rc.done:
				// time.Now, not the connector's clock: this is a cache, and
				// a test clock that stands still must not make it permanent.
				switch age := time.Since(rc.at); {
				case age >= grantOptionCheckAge:
					rc = nil
				case age >= grantOptionCheckAge/2 && !rc.renewing:
					// Half its life gone: one caller makes the next check
					// in the background while this one still serves, so
					// a steady stream of Grants never waits for a check.
					rc.renewing = true
					c.renewRiskCheck(key, roles)
				}
			default: // under way
			}
		} else {
			rc = nil
		}
		if rc == nil {
			rc = &riskCheck{done: make(chan struct{}), at: time.Now()}
			if len(c.riskChecks) >= maxRiskChecks {
				clear(c.riskChecks)
			}
			c.riskChecks[key] = rc
			c.riskMu.Unlock()
			rc.risks, rc.truncated, rc.err = c.grantOptionRisks(ctx, roles)
			if rc.err != nil {
				c.riskMu.Lock()
				if c.riskChecks[key] == rc {
					delete(c.riskChecks, key)
				}
				c.riskMu.Unlock()
			}
			close(rc.done)
			if rc.err != nil {
				return nil, rc.err
			}
			return rc, nil
		}
		c.riskMu.Unlock()
		select {
		case <-rc.done:
		case <-ctx.Done():
			return nil, dbError("check the entitled roles for grant options", ctx.Err())
		}
		if rc.err == nil {
			return rc, nil
		}
	}
}

// renewRiskCheck makes a new check of roles in the background and, if it
// succeeds, puts it in place of the old one. A failure leaves the old one
// to expire, after which Grants wait for a check of their own and see the
// error. Called with riskMu held.
func (c *Conn) renewRiskCheck(key string, roles []string) {
	next := &riskCheck{done: make(chan struct{}), at: time.Now()}
	c.renewals.Add(1)
	go func() {
		defer c.renewals.Done()
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		defer cancel()
		next.risks, next.truncated, next.err = c.grantOptionRisks(ctx, roles)
		close(next.done)
		if next.err != nil {
			return
		}
		c.riskMu.Lock()
		c.riskChecks[key] = next
		c.riskMu.Unlock()
	}()
}

// checkGrantOptions looks at the spec's entitled roles and refuses them if
// they carry a risk the spec does not accept. It returns the accepted
// risks' summary ("" if there are none). Unless fresh, it may reuse a
// check of the same roles made less than grantOptionCheckAge ago.
func (c *Conn) checkGrantOptions(ctx context.Context, spec *Spec, fresh bool) (string, error) {
	key := strings.Join(slices.Sorted(slices.Values(spec.Roles)), ",")
	rc, err := c.riskCheck(ctx, key, spec.Roles, fresh)
	if err != nil {
		return "", err
	}
	risks, truncated := rc.risks, rc.truncated
	if len(risks) == 0 {
		return "", nil
	}
	summary := riskSummary(risks, truncated)
	if !spec.AcceptGrantOptionRisk {
		return "", lapse.FieldErrorf(lapse.EINVALID, "spec.roles",
			"a grantee could pass privileges on through the entitled roles, and Revoke could not take them back (PostgreSQL records the entitled role, not the grantee, as grantor): %s. Remove the grant options, ownership, ADMIN OPTION, CREATEROLE or SUPERUSER from the entitled roles, or set accept_grant_option_risk: true in the spec to accept the risk",
			summary)
	}
	return summary, nil
}
