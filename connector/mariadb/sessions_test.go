package mariadb_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// session is one grantee connection held open in some state.
type session struct {
	name string
	conn *sql.Conn
	// running, if set, receives the result of a statement that was still
	// running when Revoke started.
	running chan error
}

// openSessions opens one connection in each awkward state a revoke must
// end: idle, running a long SELECT SLEEP, inside an open transaction with
// an uncommitted write, after SET ROLE to a role (and back), holding a
// table lock, and waiting for a row lock held by another of its own
// sessions.
func openSessions(t *testing.T, f *fixture, g *connector.GrantResponse) []*session {
	t.Helper()
	ctx := context.Background()
	db := grantee(t, g)
	get := func(name string) *session {
		t.Helper()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("grantee login (%s): %v", name, err)
		}
		t.Cleanup(func() { conn.Close() })
		return &session{name: name, conn: conn}
	}
	exec := func(s *session, q string) {
		t.Helper()
		if _, err := s.conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %s: %v", s.name, q, err)
		}
	}
	table := "`" + f.db + "`.items"

	idle := get("idle")
	exec(idle, "SELECT 1")

	tx := get("in-transaction")
	exec(tx, "START TRANSACTION")
	exec(tx, "INSERT INTO "+table+" VALUES (100, 'uncommitted')")

	role := get("after-set-role")
	exec(role, "SET ROLE NONE")
	exec(role, "SET ROLE `"+f.role+"`")

	locked := get("lock-tables")
	exec(locked, "LOCK TABLES `"+f.db+"`.locked WRITE")

	rowLocker := get("row-lock-holder")
	exec(rowLocker, "START TRANSACTION")
	exec(rowLocker, "SELECT * FROM "+table+" WHERE id = 1 FOR UPDATE")

	sleeping := get("running-sleep")
	sleeping.running = make(chan error, 1)
	go func() {
		var x int
		sleeping.running <- sleeping.conn.QueryRowContext(ctx, "SELECT SLEEP(600)").Scan(&x)
	}()

	waiting := get("waiting-for-row-lock")
	exec(waiting, "SET SESSION innodb_lock_wait_timeout = 600")
	waiting.running = make(chan error, 1)
	go func() {
		_, err := waiting.conn.ExecContext(ctx, "UPDATE "+table+" SET name = 'x' WHERE id = 1")
		waiting.running <- err
	}()

	// Wait until the two running statements are inside the server.
	user := g.Info["user"]
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := f.admin.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND COMMAND = 'Query'`, user).Scan(&n); err != nil {
			t.Fatalf("read process list: %v", err)
		}
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running sessions never showed up in the process list (%d seen)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return []*session{idle, tx, role, locked, rowLocker, sleeping, waiting}
}

// TestRevokeEndsEveryAwkwardSession grants, logs in with the server's Go
// client, opens sessions in every awkward state, and checks that Revoke
// ends all of them, that a new login fails, that the uncommitted write is
// rolled back, and that Verify's evidence shows it.
func TestRevokeEndsEveryAwkwardSession(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := f.grant(t, c, f.spec())
	ctx := context.Background()
	if err := login(ctx, g, "SELECT COUNT(*) FROM `"+f.db+"`.items"); err != nil {
		t.Fatalf("login with fresh credentials: %v", err)
	}
	sessions := openSessions(t, f, g)

	active := mustVerify(t, c, id, g)
	if active.Gone() {
		t.Fatal("Verify reports gone while the grant is active")
	}
	if got := len(residueOf(active, lapse.CheckpointSessions)); got < len(sessions) {
		t.Errorf("Verify lists %d connections while %d are open", got, len(sessions))
	}
	if probe := checkpoint(t, active, lapse.CheckpointTarget).Evidence["login_probe"]; !strings.HasPrefix(probe.(string), "accepted") {
		t.Errorf("login probe while active = %v, want accepted", probe)
	}

	r := mustRevoke(t, c, id, g)
	t.Logf("revoke actions: %v", r.Actions)

	for _, s := range sessions {
		if s.running != nil {
			select {
			case err := <-s.running:
				if err == nil {
					t.Errorf("%s: the running statement completed normally after Revoke", s.name)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%s: the running statement is still running after Revoke", s.name)
			}
			continue
		}
		var x int
		if err := s.conn.QueryRowContext(ctx, "SELECT 1").Scan(&x); err == nil {
			t.Errorf("%s: session can still run a query after Revoke", s.name)
		}
	}
	err := login(ctx, g, "SELECT 1")
	if err == nil {
		t.Fatal("a new login succeeds after Revoke")
	}
	if n := mysqlErrno(err); n != 1045 && n != 1698 {
		t.Errorf("new login after Revoke failed with %v, want access denied", err)
	}
	var uncommitted int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM `" + f.db + "`.items WHERE id = 100").Scan(&uncommitted); err != nil {
		t.Fatal(err)
	}
	if uncommitted != 0 {
		t.Error("the killed transaction's write was committed")
	}

	v := mustVerify(t, c, id, g)
	if !v.Gone() {
		t.Fatalf("Verify after Revoke: not gone: %+v", v.Checkpoints)
	}
	acct := checkpoint(t, v, lapse.CheckpointTarget)
	if p, _ := acct.Evidence["login_probe"].(string); !strings.HasPrefix(p, "denied") {
		t.Errorf("evidence login_probe = %q, want denied", p)
	}
	for _, k := range []string{"accounts", "role_grants", "database_grants", "table_grants", "definer_objects"} {
		if n, ok := acct.Evidence[k].(int); !ok || n != 0 {
			t.Errorf("evidence %s = %v, want 0", k, acct.Evidence[k])
		}
	}
	sess := checkpoint(t, v, lapse.CheckpointSessions)
	if n, ok := sess.Evidence["connections"].(int); !ok || n != 0 {
		t.Errorf("evidence connections = %v, want 0", sess.Evidence["connections"])
	}
}

// TestDropUserAloneLeavesSessions pins down the server behaviour that makes
// the kill step necessary: DROP USER leaves the user's connections running
// with their privileges. If a future server changes this, the test says so.
func TestDropUserAloneLeavesSessions(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	_, g := f.grant(t, c, f.spec())
	db := grantee(t, g)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer conn.Close()
	f.exec(t, "DROP USER `"+g.Info["user"]+"`@`"+g.Info["account_host"]+"`")
	var n int
	if err := conn.QueryRowContext(context.Background(), "SELECT COUNT(*) FROM `"+f.db+"`.items").Scan(&n); err != nil {
		t.Skipf("this server ends a dropped user's sessions itself: %v", err)
	}
	t.Log("as expected, a session of a dropped user keeps reading: Revoke must kill connections")
}

// TestRevokeWithoutStateEndsSessions is the crash case: the broker never
// received Grant's response, and Revoke must still find and end the
// sessions from the grant ID alone.
func TestRevokeWithoutStateEndsSessions(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := f.grant(t, c, f.spec())
	sessions := openSessions(t, f, g)
	other := f.open(t, func(cfg *mariadb.Config) {})
	mustRevoke(t, other, id, nil)
	for _, s := range sessions {
		if s.running != nil {
			if err := <-s.running; err == nil {
				t.Errorf("%s: statement completed normally", s.name)
			}
			continue
		}
		var x int
		if err := s.conn.QueryRowContext(context.Background(), "SELECT 1").Scan(&x); err == nil {
			t.Errorf("%s: session survives a Revoke without State", s.name)
		}
	}
	if v := mustVerify(t, other, id, nil); !v.Gone() {
		t.Errorf("not gone: %+v", v.Checkpoints)
	}
}
