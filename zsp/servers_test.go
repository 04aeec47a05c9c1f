package zsp_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
	"github.com/lapsehq/lapse/connector/postgres"
	lredis "github.com/lapsehq/lapse/connector/redis"
	"github.com/lapsehq/lapse/connector/token"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
	"github.com/lapsehq/lapse/zsp"
	"github.com/lapsehq/lapse/zsp/zsptest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// target is one connector on a real server with an entitlement spec whose
// resources exist only for this test.
type target struct {
	name, kind string
	conn       connector.Connector
	spec       map[string]any
}

// postgresTarget makes a group role and a connector with a prefix of the
// test's own; cleanup removes every role with them.
func postgresTarget(t *testing.T, name string) target {
	t.Helper()
	f := zsptest.NewPostgres(t)
	c, err := postgres.New(ctxT(t), postgres.Config{DSN: lapse.SecretRef{Value: f.DSN}, Prefix: f.Prefix}, connector.Env{Name: name, Clock: lapse.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return target{name: name, kind: "postgres", conn: c, spec: map[string]any{"roles": []any{f.Group}}}
}

// mariadbTarget makes a role and a connector with a prefix of the test's
// own; cleanup kills and drops every user with it, and the role.
func mariadbTarget(t *testing.T, name string, unsafe bool) target {
	t.Helper()
	f := zsptest.NewMariaDB(t)
	c, err := mariadb.New(ctxT(t), mariadb.Config{DSN: lapse.SecretRef{Value: f.DSN}, Prefix: f.Prefix, UnsafeSkipSessionKill: unsafe},
		connector.Env{Name: name, Clock: lapse.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return target{name: name, kind: "mariadb", conn: c, spec: map[string]any{"roles": []any{f.Role}}}
}

// redisTarget opens a connector on the shared server with a prefix of the
// test's own; cleanup deletes every user with it.
func redisTarget(t *testing.T, name string) target {
	t.Helper()
	f := zsptest.NewRedis(t)
	c, err := lredis.New(ctxT(t), lredis.Config{Prefix: f.Prefix, Nodes: []lredis.NodeConfig{{Name: "main", Addr: f.Addr}}}, connector.Env{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return target{name: name, kind: "redis", conn: c, spec: map[string]any{"commands": []any{"get"}, "keys": []any{"lapsetest:*"}}}
}

func tokenTarget(t *testing.T, name string, store lapse.Store) target {
	t.Helper()
	c, err := token.New(connector.Env{Name: name, Store: store, DataDir: t.TempDir()},
		token.Config{Issuer: "https://lapse.test", Audience: "api", GenerateKey: true})
	if err != nil {
		t.Fatal(err)
	}
	return target{name: name, kind: "token", conn: c, spec: map[string]any{}}
}

// tester wires targets into a broker on a SQLite store, with one
// entitlement per target that needs a human approval (the canary skips
// it), and returns the tester.
func tester(t *testing.T, store lapse.Store, targets ...target) *zsp.SessionTester {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var catalog []*lapse.Entitlement
	bt := map[string]broker.Target{}
	conns := map[string]connector.Connector{}
	for _, tg := range targets {
		catalog = append(catalog, &lapse.Entitlement{
			Name: tg.name + "/read", Target: tg.name, Lanes: []lapse.PrincipalKind{lapse.KindHuman},
			DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}}, Spec: tg.spec,
		})
		bt[tg.name] = broker.Target{Kind: tg.kind, Connector: tg.conn}
		conns[tg.name] = tg.conn
	}
	b, err := broker.New(broker.Config{Store: store, SealingKey: key, Catalog: catalog, Targets: bt,
		Engine: broker.EngineConfig{Owner: "zsp-test", Lease: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	return &zsp.SessionTester{Broker: b, Connectors: conns, Catalog: catalog, Poll: 5 * time.Millisecond, Timeout: time.Minute}
}

func openStore(t *testing.T) lapse.Store { return sqltest.OpenSQLite(t) }
