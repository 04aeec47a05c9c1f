package mariadb_test

import (
	"context"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// Through the broker, a revoke that silently leaves the user in place ends
// in revoke_failed with the residue, retries continue, and the repaired
// revoke is verified.
func TestSabotagedRevokeThroughBroker(t *testing.T) {
	f := newFixture(t)
	clock := connectortest.NewClock()
	cc, err := mariadb.New(context.Background(), f.config(), connector.Env{Name: "testdb", Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	connectortest.RunThroughBroker(t, connectortest.BrokerCase{
		Target: "testdb", Kind: "mariadb", Conn: cc, Clock: clock, Spec: f.spec(),
		Sabotage: func(on bool) {
			mariadb.Sabotage(cc, "kill", on)
			mariadb.Sabotage(cc, "drop", on)
		},
		Login: func(ctx context.Context, creds *lapse.Credentials) error {
			return login(ctx, &connector.GrantResponse{Secret: creds.Secret, Info: creds.Info}, "SELECT 1")
		},
	})
}
