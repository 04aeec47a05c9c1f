package redis_test

import (
	"context"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// Through the broker, a revoke that only switches the user off (what other
// brokers do: held connections keep working) ends in revoke_failed with the
// residue, retries continue, and the repaired revoke is verified.
func TestSabotagedRevokeThroughBroker(t *testing.T) {
	nodes := sharedNodes(t)
	clock := connectortest.NewClock()
	cfg := lredis.Config{}
	for _, n := range nodes {
		cfg.Nodes = append(cfg.Nodes, n.config())
	}
	c, err := lredis.New(context.Background(), cfg, connector.Env{Name: "cache", Clock: clock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	connectortest.RunThroughBroker(t, connectortest.BrokerCase{
		Target: "cache", Kind: "redis", Conn: c, Clock: clock, Spec: testSpec(),
		Sabotage: func(on bool) {
			if on {
				lredis.SabotageRevoke(c, "skip", func(string) bool { return true })
			} else {
				lredis.RestoreRevoke(c)
			}
		},
		Login: func(ctx context.Context, creds *lapse.Credentials) error {
			cl := newClient(nodes[0].addr, creds.Info["username"], creds.Secret["password"])
			defer cl.Close()
			return cl.Ping(ctx).Err()
		},
	})
}
