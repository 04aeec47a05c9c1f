package feedtest

import (
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// OpenStore returns the store the token target's tests run on: the real
// SQLite store in a temporary directory.
func OpenStore(t testing.TB) lapse.Store {
	t.Helper()
	return sqltest.OpenSQLite(t)
}
