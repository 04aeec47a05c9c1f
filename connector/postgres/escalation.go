package postgres

import (
	"context"
	"strconv"

	"github.com/lapsehq/lapse/connector"
)

// Admin powers (connector.EscalationChecker). A grantee can use everything
// its entitled roles can, and everything the roles they are members of can
// — through INHERIT or after SET ROLE — so the check looks at the entitled
// roles and every role they reach (closureSQL). It counts as admin powers:
//
//   - SUPERUSER: everything, including every other role's privileges.
//   - CREATEROLE: creating, altering and dropping roles, and granting
//     memberships: accounts that outlive the grant.
//   - ADMIN OPTION on a role: granting that role to anyone.
//   - BYPASSRLS: ignoring every row-level security policy, which is how
//     PostgreSQL separates tenants and users in one table.
//   - REPLICATION: streaming every row of every database of the cluster
//     and creating replication slots, whatever the table privileges say.
//   - membership in pg_execute_server_program, pg_write_server_files or
//     pg_read_server_files: running programs, writing or reading files as
//     the server's operating-system user (a superuser in all but name:
//     the data directory, its configuration and its keys are such files).
//
// CREATEDB does not count: it lets the holder create databases that it
// owns, which costs space but gives no power over roles, over other
// databases or over their data (a new database cannot copy another one
// unless the holder owns that one or it is a template). Revoke already
// drops what the role owns, and Verify reports what it cannot.

// escalationSQL lists the admin powers of the entitled roles ($1) and the
// roles they reach, each with the entitled role it was reached from. A
// superuser's other attributes are not repeated: it has every power.
var escalationSQL = closureSQL + `
SELECT h.via, h.holder, 'is a superuser' FROM h WHERE h.rolsuper
UNION ALL
SELECT h.via, h.holder, 'has CREATEROLE' FROM h WHERE h.rolcreaterole AND NOT h.rolsuper
UNION ALL
SELECT h.via, h.holder, 'has BYPASSRLS (it ignores every row-level security policy)'
  FROM h JOIN pg_catalog.pg_roles r ON r.oid = h.oid WHERE r.rolbypassrls AND NOT h.rolsuper
UNION ALL
SELECT h.via, h.holder, 'has REPLICATION (it can stream every row of the cluster)'
  FROM h JOIN pg_catalog.pg_roles r ON r.oid = h.oid WHERE r.rolreplication AND NOT h.rolsuper
UNION ALL
SELECT h.via, h.holder, 'holds ADMIN OPTION on role ' || g.rolname::text
  FROM h JOIN pg_catalog.pg_auth_members am ON am.member = h.oid AND am.admin_option
  JOIN pg_catalog.pg_roles g ON g.oid = am.roleid
UNION ALL
SELECT h.via, h.holder, CASE h.holder
    WHEN 'pg_execute_server_program' THEN 'runs programs as the server''s operating-system user'
    WHEN 'pg_write_server_files' THEN 'writes files as the server''s operating-system user'
    ELSE 'reads files as the server''s operating-system user' END
  FROM h WHERE h.holder IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files')
ORDER BY 1, 2, 3
LIMIT ` + strconv.Itoa(maxRisksFetched+1)

// AdminPowers implements connector.EscalationChecker: the admin powers
// (see above) that membership in the spec's entitled roles carries, in
// both modes (in elevation mode the account's own attributes are not the
// grant's, only what the entitled roles add). Entitled roles that do not
// exist carry nothing; Grant refuses them. Returns EINVALID for a bad spec
// and EUNAVAILABLE if the server cannot be read.
func (c *Conn) AdminPowers(ctx context.Context, spec map[string]any) ([]string, error) {
	s, err := parseSpec(spec, c.cfg.Prefix)
	if err != nil {
		return nil, err
	}
	rows, err := c.pool.Query(ctx, escalationSQL, s.Roles)
	if err != nil {
		return nil, dbError("check the entitled roles for admin powers", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r grantOptionRisk
		if err := rows.Scan(&r.role, &r.holder, &r.what); err != nil {
			return nil, dbError("check the entitled roles for admin powers", err)
		}
		if len(out) == maxRisksFetched {
			out = append(out, "and more")
			break
		}
		out = append(out, printable("role "+r.String()))
	}
	if err := rows.Err(); err != nil {
		return nil, dbError("check the entitled roles for admin powers", err)
	}
	return out, nil
}

var _ connector.EscalationChecker = (*Conn)(nil)
