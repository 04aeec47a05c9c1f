package postgres_test

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/postgres"
)

// serverLog finds the file the server writes its log to and returns a
// reader of what was appended after the call. With logging_collector on it
// is pg_current_logfile(); without, the server's stderr, which a backend
// inherits from the postmaster and can read as /proc/self/fd/2 (Linux).
func (f *fixture) serverLog(t *testing.T) (read func() []byte) {
	t.Helper()
	ctx := bg(t)
	var path string
	var current *string
	if err := f.admin.QueryRow(ctx, "SELECT pg_current_logfile()").Scan(&current); err == nil && current != nil {
		path = *current
	} else {
		path = "/proc/self/fd/2"
	}
	var size int64
	if err := f.admin.QueryRow(ctx, "SELECT size FROM pg_stat_file($1)", path).Scan(&size); err != nil {
		t.Skipf("SKIPPING: the server log is not readable through pg_read_file (%v); the statement text check in TestStatementsCarryNoPassword still runs", err)
	}
	return func() []byte {
		var b []byte
		if err := f.admin.QueryRow(ctx, "SELECT pg_read_binary_file($1, $2, (SELECT size FROM pg_stat_file($1)) - $2)", path, size).Scan(&b); err != nil {
			t.Fatalf("read server log: %v", err)
		}
		return b
	}
}

// TestPasswordNeverReachesServerLog logs every statement of the connector's
// admin sessions (log_statement=all, stricter than the 'ddl'), makes
// and revokes a grant, and reads the server's own log: the statements are
// there, the verifier is there, the password is not, in any encoding.
func TestPasswordNeverReachesServerLog(t *testing.T) {
	f := newFixture(t)
	read := f.serverLog(t)
	u, err := url.Parse(adminDSN())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("log_statement", "all") // a startup parameter of the admin sessions (superuser only)
	u.RawQuery = q.Encode()
	c := f.open(t, func(cfg *postgres.Config) { cfg.DSN = lapse.SecretRef{Value: u.String()} })

	id, g := grant(t, c, f.spec())
	role, password := g.Info["user"], g.Secret["password"]
	revoke(t, c, id, f.spec(), g)
	verify(t, c, id, f.spec(), g)
	log := read()

	if !bytes.Contains(log, []byte("CREATE ROLE \""+role+"\"")) {
		t.Fatalf("the server log does not show the CREATE ROLE statement for %s: the log is not where this test looks", role)
	}
	if !bytes.Contains(log, []byte("PASSWORD 'SCRAM-SHA-256$")) {
		t.Error("the CREATE ROLE statement in the log does not carry a SCRAM verifier")
	}
	for _, form := range []string{password, base64.StdEncoding.EncodeToString([]byte(password)), url.QueryEscape(password)} {
		if bytes.Contains(log, []byte(form)) {
			t.Fatal("the password appears in the server log")
		}
	}
}

// TestStatementsCarryNoPassword checks what the server stored: the verifier
// Lapse computed, taken as is (had it been malformed, PostgreSQL would have
// hashed it as if it were a plaintext password), with Lapse's iteration
// count, and nothing that contains the password.
func TestStatementsCarryNoPassword(t *testing.T) {
	f := newFixture(t)
	c := f.open(t, func(cfg *postgres.Config) { cfg.SCRAMIterations = 17 })
	id, g := grant(t, c, f.spec())
	var stored string
	mustScan(t, f.admin.QueryRow(bg(t), "SELECT rolpassword FROM pg_authid WHERE rolname = $1", g.Info["user"]), &stored)
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$17:") {
		t.Errorf("stored secret does not have Lapse's iteration count: %.20s…", stored)
	}
	if strings.Contains(stored, g.Secret["password"]) {
		t.Error("the stored secret contains the password")
	}
	revoke(t, c, id, f.spec(), g)
}
