package fake

import (
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// CheckpointMap implements connector.Mapper: the account and its sessions,
// both ended by Revoke (the account removed, every session killed) and
// checked by Verify, so nothing outlives revocation; Revoke takes the
// configured latency.
func (c *Conn) CheckpointMap(spec map[string]any) *connector.PathMap {
	privs, _ := parseSpec(spec)
	held := "the entitlement"
	if len(privs) > 0 {
		held = "privileges " + strings.Join(privs, ", ")
	}
	where := "memory of this process"
	if c.opts.Dir != "" {
		where = "directory " + c.opts.Dir
	}
	return &connector.PathMap{
		RevocationLatency: c.opts.Latency,
		Paths: []lapse.CheckpointPath{
			{
				Name:       CheckpointAccount,
				Kind:       lapse.CheckpointTarget,
				CreatedAt:  "account " + userPrefix + "<grant> in the " + where + " with " + held,
				ConsumedAt: "logins to the fake target",
				Kill:       "remove the account",
				Verify:     "no account of the grant, and a login with the grant's password fails",
			},
			{
				Name:       CheckpointSessions,
				Kind:       lapse.CheckpointSessions,
				CreatedAt:  "each session opened with the account",
				ConsumedAt: "open sessions of this process",
				Kill:       "kill every session of the grant",
				Verify:     "no live session of the grant",
			},
		},
	}
}

var _ connector.Mapper = (*Conn)(nil)
