package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/postgres"
)

// Through the broker, a revoke that silently leaves the role and its
// sessions in place ends in revoke_failed with the residue, retries
// continue, and the repaired revoke is verified.
func TestSabotagedRevokeThroughBroker(t *testing.T) {
	f := newFixture(t)
	clock := connectortest.NewClock()
	c, err := postgres.New(bg(t), f.config(), connector.Env{Name: "pg-test", Clock: clock})
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	connectortest.RunThroughBroker(t, connectortest.BrokerCase{
		Target: "pg-test", Kind: "postgres", Conn: c, Clock: clock, Spec: f.spec(),
		Sabotage: func(on bool) {
			if on {
				postgres.SkipRevokeSteps(c, postgres.StepTerminate+","+postgres.StepDrop)
			} else {
				postgres.SkipRevokeSteps(c, "")
			}
		},
		Login: func(ctx context.Context, creds *lapse.Credentials) error {
			conn, err := pgx.ConnectConfig(ctx, loginConfig(t, &connector.GrantResponse{Secret: creds.Secret}, ""))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, "SELECT 1")
			return err
		},
	})
}
