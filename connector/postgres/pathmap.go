package postgres

import (
	"fmt"
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// CheckpointGrantOptions names the path that exists only when a spec sets
// accept_grant_option_risk: privileges passed on with an entitled role's
// grant options, which Revoke cannot take back.
const CheckpointGrantOptions = "grant-options"

// CheckpointMap implements connector.Mapper, from what Revoke and Verify
// do (revoke.go, verify.go): the role and its memberships, and every
// backend whose session user is the role, are ended by Revoke itself, so
// nothing on the server outlives it; Revoke may take up to terminate_wait
// to see killed backends go, which is the revocation latency. With
// accept_grant_option_risk, privileges the grantee passed on with a grant
// option are recorded under the entitled role and outlive every
// revocation: an unbounded path. A connection pooler in front of the
// server, which keeps server connections open for its clients, is a path
// only the configuration knows.
func (c *Conn) CheckpointMap(spec map[string]any) *connector.PathMap {
	m := &connector.PathMap{RevocationLatency: c.cfg.TerminateWait.D()}
	s, err := parseSpec(spec, c.cfg.Prefix)
	if err != nil {
		return m
	}
	where := fmt.Sprintf("%s:%d/%s", c.host, c.port, c.database)
	roles := strings.Join(s.Roles, ", ")
	probe := "; a login with the grant's password is refused"
	if c.cfg.NoLoginProbe {
		probe = " (no login probe: no_login_probe is set)"
	}
	cleanup := "DROP OWNED BY in every database where it owns or holds something, then DROP ROLE"
	if c.cfg.Owned == OwnedReassign {
		cleanup = "REASSIGN OWNED BY … TO " + c.cfg.ReassignTo + " and DROP OWNED BY in every database where it owns or holds something, then DROP ROLE"
	}
	role := lapse.CheckpointPath{
		Name:       CheckpointRole,
		Kind:       lapse.CheckpointTarget,
		CreatedAt:  fmt.Sprintf("login role %s<grant> on %s, member of %s, VALID UNTIL the deadline", c.cfg.Prefix, where, roles),
		ConsumedAt: "new logins to " + where + " and SET ROLE to " + roles,
		Kill:       "ALTER ROLE … NOLOGIN, REVOKE its memberships, " + cleanup,
		Verify:     "pg_roles, pg_auth_members and pg_shdepend hold nothing of the role" + probe,
	}
	sessions := lapse.CheckpointPath{
		Name:       CheckpointSessions,
		Kind:       lapse.CheckpointSessions,
		CreatedAt:  "each login of the role",
		ConsumedAt: "backends of the role in every database of " + fmt.Sprintf("%s:%d", c.host, c.port) + ", including those that ran SET ROLE",
		Kill:       "pg_terminate_backend for every backend whose session user is the role, until none is left (at most terminate_wait " + c.cfg.TerminateWait.String() + ")",
		Verify:     "pg_stat_activity has no backend of the role",
	}
	if s.elevation() {
		role.CreatedAt = fmt.Sprintf("membership of %s in %s through role %se_<grant> on %s", s.Account, roles, c.cfg.Prefix, where)
		role.ConsumedAt = "sessions of " + s.Account + " that use " + roles
		role.Kill = "REVOKE the per-grant role from " + s.Account + ", " + cleanup
		role.Verify = "pg_roles, pg_auth_members and pg_shdepend hold nothing of the per-grant role"
		sessions.CreatedAt = "each session of " + s.Account + " while it holds the membership"
		sessions.ConsumedAt = "every session of " + s.Account + " (PostgreSQL does not show which ran SET ROLE)"
		sessions.Kill = "pg_terminate_backend for every session of " + s.Account + ", unless it reaches " + roles + " another way"
		sessions.Verify = "pg_stat_activity has no session of " + s.Account + " (unless it reaches " + roles + " another way)"
	}
	m.Paths = []lapse.CheckpointPath{role, sessions}
	if s.AcceptGrantOptionRisk {
		m.Paths = append(m.Paths, lapse.CheckpointPath{
			Name:       CheckpointGrantOptions,
			Kind:       lapse.CheckpointTarget,
			CreatedAt:  "GRANT … run by the grantee with a grant option, ownership or ADMIN OPTION of " + roles,
			ConsumedAt: "the roles the grantee passed privileges to",
			Kill:       "none: recorded with the entitled role as grantor; remove by hand (\\dp, grantor = the entitled role)",
			Verify:     "not verifiable: nothing ties such a privilege to the grant",
			Unbounded:  true,
		})
	}
	return m
}

var _ connector.Mapper = (*Conn)(nil)
