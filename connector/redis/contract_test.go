package redis_test

import (
	"context"
	"fmt"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
)

// harness describes the connector on nodes to the contract suite. Use and
// Hold log in on every node, so "the privilege works" and "the privilege
// is gone" are checked where each node serves clients.
func harness(nodes []node) connectortest.Harness {
	return connectortest.Harness{
		Open: func(t *testing.T) connector.Connector { return openConn(t, nodes) },
		Spec: testSpec(),
		BadSpecs: []map[string]any{
			{},
			{"commands": []any{"get"}, "unknown": true},
			{"commands": []any{"get nopass"}},
			{"commands": []any{"acl"}},
			{"categories": []any{"all"}},
			{"commands": []any{"get"}, "keys": []any{"*"}},
			{"commands": []any{"get"}, "keys": []any{"a b"}},
		},
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			for _, n := range nodes {
				c := newClient(n.addr, g.Info["username"], g.Secret["password"])
				err := c.Get(ctx, "lapsetest:use").Err()
				c.Close()
				if err != goredis.Nil {
					return fmt.Errorf("node %s: GET as the grant's user: %v", n.name, err)
				}
			}
			return nil
		},
		Hold: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			var conns []*goredis.Conn
			var clients []*goredis.Client
			release := func() {
				for _, c := range conns {
					c.Close()
				}
				for _, c := range clients {
					c.Close()
				}
			}
			for _, n := range nodes {
				c := newClient(n.addr, g.Info["username"], g.Secret["password"])
				clients = append(clients, c)
				cn := c.Conn()
				conns = append(conns, cn)
				if err := cn.Ping(ctx).Err(); err != nil {
					release()
					return nil, nil, err
				}
			}
			probe := func(ctx context.Context) error {
				for i, cn := range conns {
					if err := cn.Get(ctx, "lapsetest:hold").Err(); err != goredis.Nil {
						return fmt.Errorf("node %s: %v", nodes[i].name, err)
					}
				}
				return nil
			}
			return probe, release, nil
		},
	}
}

// TestContractSharedServer runs the contract suite on the machine's Redis
// as a one-node deployment.
func TestContractSharedServer(t *testing.T) {
	connectortest.Run(t, harness(sharedNodes(t)))
}

// TestContractReplicated runs the contract suite on a primary with two
// replicas, each configured as a node.
func TestContractReplicated(t *testing.T) {
	connectortest.Run(t, harness(startTopology(t)))
}
