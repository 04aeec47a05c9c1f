package redis

import (
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// CheckpointMap implements connector.Mapper, from what Revoke and Verify
// do (redis.go): Redis does not replicate ACLs, so the user exists on every
// node and is deleted from every node, with its connections closed in the
// same MULTI/EXEC; each node is one command away (at most timeout), which
// is the revocation latency. Nothing on a node outlives it. A proxy in
// front of the nodes (one that keeps authenticated upstream connections)
// is a path only the configuration knows.
func (c *Conn) CheckpointMap(spec map[string]any) *connector.PathMap {
	m := &connector.PathMap{RevocationLatency: c.cfg.Timeout.D()}
	rules := "the spec's rules"
	if s, err := parseSpec(spec); err == nil {
		rules = strings.Join(s.privileges(), " ")
	}
	for _, n := range c.nodes {
		m.Paths = append(m.Paths,
			lapse.CheckpointPath{
				Name:       n.name + "/acl",
				Kind:       lapse.CheckpointTarget,
				CreatedAt:  "ACL user " + c.cfg.Prefix + "<grant> on node " + n.name + " (" + n.addr + "), " + rules,
				ConsumedAt: "AUTH on node " + n.name + " (" + n.addr + ")",
				Kill:       "ACL DELUSER on node " + n.name + " (not ACL SETUSER off, which leaves connections working)",
				Verify:     "ACL GETUSER is nil on node " + n.name + ", and AUTH with the grant's password fails",
			},
			lapse.CheckpointPath{
				Name:       n.name + "/sessions",
				Kind:       lapse.CheckpointSessions,
				CreatedAt:  "each AUTH of the user on node " + n.name,
				ConsumedAt: "connections of the user on node " + n.name + ", blocked or subscribed ones included",
				Kill:       "CLIENT KILL USER and ACL DELUSER in one MULTI/EXEC on node " + n.name,
				Verify:     "CLIENT LIST on node " + n.name + " has no client of the user",
			})
	}
	return m
}

var _ connector.Mapper = (*Conn)(nil)
