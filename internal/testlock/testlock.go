// Package testlock keeps tests in different packages (which go test runs
// as parallel processes) from changing a shared server at the same time,
// where one of them needs the server to stand still: the MariaDB hostile
// input test compares the whole server catalog before and after, and a
// role another package's test creates in between would read as damage.
//
// A test that creates or changes MariaDB accounts, roles or schemas takes
// the lock for its whole run. Within one process the lock is shared
// (tests of one package either run one after another or share fixtures
// by design), so nesting never deadlocks.
package testlock

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"
)

// lockName is the MariaDB user lock (GET_LOCK) the test processes share.
const lockName = "lapse_test_catalog"

// wait bounds how long a test waits for another package's tests to finish
// with the server; they take seconds.
const wait = 5 * time.Minute

var (
	mu   sync.Mutex
	held int
	conn *sql.Conn
)

// MariaDB holds the lock on the server of admin until t and every other
// holder in this process end. admin must stay open until then.
func MariaDB(t testing.TB, admin *sql.DB) {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if held == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
		defer cancel()
		c, err := admin.Conn(ctx)
		if err != nil {
			t.Fatalf("testlock: %v", err)
		}
		var got sql.NullInt64
		if err := c.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?)", lockName, int(wait.Seconds())).Scan(&got); err != nil || got.Int64 != 1 {
			c.Close()
			t.Fatalf("testlock: could not take the MariaDB test lock within %s (%v, %v)", wait, got, err)
		}
		conn = c
	}
	held++
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if held--; held == 0 {
			_, _ = conn.ExecContext(context.Background(), "SELECT RELEASE_LOCK(?)", lockName)
			conn.Close()
			conn = nil
		}
	})
}
