package postgres

import (
	"context"
	"slices"

	"github.com/lapsehq/lapse/connector"
)

// Discover lists the roles Lapse made (by prefix, mapped back to grant IDs
// where the name carries one) with the roles they are members of, and every
// role that holds an entitled role of specs as standing privilege: a member
// directly or through roles Lapse did not make. Memberships that pass
// through a Lapse role are a grant's, not standing privilege. Superusers,
// which bypass every privilege check, are not listed. A Lapse role that is
// a member of an entitled role carrying a grant-option risk (grant
// options, ownership, ADMIN OPTION, CREATEROLE or SUPERUSER, accepted by
// the spec or added since) also lists each risk, as "grant option risk:
// …". Returns EINVALID for a bad spec and EUNAVAILABLE if the server
// cannot be reached.
func (c *Conn) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	var entitled []string
	for _, m := range req.Specs {
		spec, err := parseSpec(m, c.cfg.Prefix)
		if err != nil {
			return nil, err
		}
		for _, r := range spec.Roles {
			entitled = appendNew(entitled, r)
		}
	}
	resp := &connector.DiscoverResponse{}
	risks := map[string][]string{} // entitled role -> its risks, described
	if len(entitled) > 0 {
		found, truncated, err := c.grantOptionRisks(ctx, entitled)
		if err != nil {
			return nil, err
		}
		for i, r := range found {
			if len(risks[r.role]) < maxRisksListed {
				risks[r.role] = append(risks[r.role], "grant option risk: "+printable(r.String()))
			}
			if truncated && i == len(found)-1 {
				risks[r.role] = append(risks[r.role], "grant option risk: and more")
			}
		}
	}

	rows, err := c.pool.Query(ctx, `
SELECT r.rolname::text,
  ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles g ON g.oid = am.roleid
        WHERE am.member = r.oid ORDER BY 1)
FROM pg_catalog.pg_roles r
WHERE starts_with(r.rolname::text, $1)
ORDER BY 1`, c.cfg.Prefix)
	if err != nil {
		return nil, dbError("discover lapse roles", err)
	}
	for rows.Next() {
		var p connector.DiscoveredPrincipal
		if err := rows.Scan(&p.Name, &p.Privileges); err != nil {
			rows.Close()
			return nil, dbError("discover lapse roles", err)
		}
		p.Ephemeral = true
		p.GrantID, _, _ = parseRoleName(c.cfg.Prefix, p.Name)
		for _, g := range slices.Clone(p.Privileges) {
			p.Privileges = append(p.Privileges, risks[g]...)
		}
		resp.Principals = append(resp.Principals, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, dbError("discover lapse roles", err)
	}
	if len(entitled) == 0 {
		return resp, nil
	}

	// Members of the entitled roles, following nested memberships but not
	// through Lapse-made roles.
	rows, err = c.pool.Query(ctx, `
WITH RECURSIVE chain(member, entitled) AS (
    SELECT am.member, g.rolname::text
    FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles g ON g.oid = am.roleid
    WHERE g.rolname = ANY($1::text[])
  UNION
    SELECT am.member, c.entitled
    FROM chain c
    JOIN pg_catalog.pg_roles via ON via.oid = c.member
    JOIN pg_catalog.pg_auth_members am ON am.roleid = c.member
    WHERE NOT starts_with(via.rolname::text, $2)
)
SELECT r.rolname::text, array_agg(DISTINCT c.entitled ORDER BY c.entitled)
FROM chain c JOIN pg_catalog.pg_roles r ON r.oid = c.member
WHERE NOT starts_with(r.rolname::text, $2)
GROUP BY r.rolname
ORDER BY 1`, entitled, c.cfg.Prefix)
	if err != nil {
		return nil, dbError("discover standing members", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p connector.DiscoveredPrincipal
		if err := rows.Scan(&p.Name, &p.Privileges); err != nil {
			return nil, dbError("discover standing members", err)
		}
		resp.Principals = append(resp.Principals, p)
	}
	if err := rows.Err(); err != nil {
		return nil, dbError("discover standing members", err)
	}
	return resp, nil
}
