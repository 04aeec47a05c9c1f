package mariadb_test

import (
	"context"
	"testing"

	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
)

// TestContract runs the shared connector contract suite against the real
// MariaDB server, with the server's own Go client as the grantee.
func TestContract(t *testing.T) {
	f := newFixture(t)
	connectortest.Run(t, connectortest.Harness{
		Open: func(t *testing.T) connector.Connector { return f.open(t) },
		Spec: f.spec(),
		BadSpecs: []map[string]any{
			{},
			{"roles": []any{"x`; DROP DATABASE mysql; --"}},
			{"roles": []any{f.role}, "grants": []any{map[string]any{"database": f.db, "privileges": []any{"SUPER"}}}},
			{"roles": []any{f.role}, "unknown": true},
		},
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			return login(ctx, g, "SELECT COUNT(*) FROM `"+f.db+"`.items")
		},
		Hold: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			db := grantee(t, g)
			db.SetMaxOpenConns(1)
			conn, err := db.Conn(ctx)
			if err != nil {
				return nil, nil, err
			}
			// An open transaction with a write in it: the awkward kind of
			// session that must still be ended.
			if _, err := conn.ExecContext(ctx, "START TRANSACTION"); err != nil {
				conn.Close()
				return nil, nil, err
			}
			probe := func(ctx context.Context) error {
				var n int
				return conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM `"+f.db+"`.items").Scan(&n)
			}
			return probe, func() { conn.Close() }, nil
		},
	})
}
