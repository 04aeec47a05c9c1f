package mariadb

import (
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// CheckpointMap implements connector.Mapper, from what Revoke and Verify
// do (revoke.go, verify.go). DROP USER alone leaves the user's open
// connections working, so Revoke kills them and waits up to kill_wait for
// them to leave the process list: that is the revocation latency, and
// nothing on the server outlives it. Two settings make access outlive
// revocation without bound, and the map says so: grant_option in a spec
// (database-level and global privileges the user passed on have no
// grantor to find them by) and unsafe_skip_session_kill on the target
// (open sessions are left running). A proxy or pooler in front of the
// server is a path only the configuration knows.
func (c *Conn) CheckpointMap(spec map[string]any) *connector.PathMap {
	m := &connector.PathMap{RevocationLatency: c.cfg.KillWait.D()}
	s, err := c.ParseSpec(spec)
	if err != nil {
		return m
	}
	var held []string
	for _, r := range s.Roles {
		held = append(held, "role "+r)
	}
	for _, g := range s.Grants {
		on := g.Database + ".*"
		if g.Table != "" && g.Table != "*" {
			on = g.Database + "." + g.Table
		}
		held = append(held, strings.Join(g.Privileges, ", ")+" on "+on)
	}
	created := "user " + c.cfg.Prefix + "<grant>@'" + c.cfg.AccountHost + "' on " + c.cfg.Address + " with " + strings.Join(held, "; ")
	if c.cfg.ExpiryEventSchema != "" {
		created += "; an event in " + c.cfg.ExpiryEventSchema + " drops it at the deadline"
	}
	definers := "drops the objects it is DEFINER of"
	switch c.cfg.Definers {
	case DefinerReassign:
		definers = "re-creates the objects it is DEFINER of with definer " + c.cfg.DefinerReassignTo
	case DefinerKeep:
		definers = "keeps the objects it is DEFINER of"
	}
	probe := "; a login with the grant's password is refused"
	m.Paths = append(m.Paths, lapse.CheckpointPath{
		Name:       c.name + ":" + checkpointAccount,
		Kind:       lapse.CheckpointTarget,
		CreatedAt:  created,
		ConsumedAt: "new logins to " + c.cfg.Address,
		Kill:       "DROP USER for every host of the user, " + definers + ", revokes the table and routine privileges it granted",
		Verify:     "no row of the user in mysql.global_priv, roles_mapping, db, tables_priv, columns_priv, procs_priv, proxies_priv; no DEFINER object or grant it made" + probe,
	})
	sessions := lapse.CheckpointPath{
		Name:       c.name + ":" + checkpointSessions,
		Kind:       lapse.CheckpointSessions,
		CreatedAt:  "each login of the user",
		ConsumedAt: "connections of the user to " + c.cfg.Address + " (DROP USER does not end them)",
		Kill:       "KILL HARD CONNECTION USER until the process list has none (at most kill_wait " + c.cfg.KillWait.String() + ")",
		Verify:     "SHOW PROCESSLIST has no connection of the user",
	}
	if c.cfg.UnsafeSkipSessionKill {
		sessions.Kill = "none: unsafe_skip_session_kill is set, open connections keep their privileges"
		sessions.Verify = "none: Verify does not look at sessions"
		sessions.Unbounded = true
	}
	m.Paths = append(m.Paths, sessions)
	if s.GrantOption && len(s.Grants) > 0 {
		m.Paths = append(m.Paths, lapse.CheckpointPath{
			Name:       c.name + ":grant-option",
			Kind:       lapse.CheckpointTarget,
			CreatedAt:  "GRANT … run by the user WITH GRANT OPTION (grant_option: true)",
			ConsumedAt: "the accounts the user passed database-level or global privileges to",
			Kill:       "none for database-level and global grants: MariaDB records no grantor (table and routine grants are revoked)",
			Verify:     "not verifiable; Discover lists the holders as standing privilege",
			Unbounded:  true,
		})
	}
	return m
}

var _ connector.Mapper = (*Conn)(nil)
