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

// These tests change server-wide settings (the general log, the event
// scheduler) for a moment and restore them. They never run in parallel
// with each other.

// setGlobal sets a global variable and restores its old value at cleanup.
func setGlobal(t *testing.T, admin *sql.DB, name, value string) {
	t.Helper()
	var old string
	if err := admin.QueryRow("SELECT @@GLOBAL." + name).Scan(&old); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	if _, err := admin.Exec("SET GLOBAL "+name+" = ?", value); err != nil {
		t.Skipf("cannot set %s on this server: %v", name, err)
	}
	switch old { // boolean variables read back as 0/1 but are set as OFF/ON
	case "0":
		old = "OFF"
	case "1":
		old = "ON"
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("SET GLOBAL "+name+" = ?", old); err != nil {
			t.Errorf("restore %s = %s: %v", name, old, err)
		}
	})
}

// TestPasswordNeverReachesServer records every statement the server
// receives during a grant, a verify and a revoke in its general log, and
// checks that the password appears nowhere in it, while its hash does
// (proof that the log saw the CREATE USER).
func TestPasswordNeverReachesServer(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	var before int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.general_log").Scan(&before); err != nil {
		t.Fatal(err)
	}
	setGlobal(t, f.admin, "log_output", "TABLE")
	setGlobal(t, f.admin, "general_log", "ON")
	if before == 0 {
		t.Cleanup(func() { f.execQuiet(t, "TRUNCATE TABLE mysql.general_log") })
	}
	id, g := f.grant(t, c, f.spec())
	if err := login(context.Background(), g, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	mustRevoke(t, c, id, g)
	mustVerify(t, c, id, g)
	if _, err := f.admin.Exec("SET GLOBAL general_log = OFF"); err != nil {
		t.Fatal(err)
	}
	rows, err := f.admin.Query("SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	pw := g.Secret["password"]
	sawCreate := false
	for rows.Next() {
		var arg sql.NullString
		if err := rows.Scan(&arg); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(arg.String, pw) {
			t.Fatalf("the password reached the server's general log")
		}
		if strings.Contains(arg.String, "CREATE OR REPLACE USER `"+g.Info["user"]+"`") {
			sawCreate = true
			if !strings.Contains(arg.String, "IDENTIFIED BY PASSWORD '*") {
				t.Errorf("CREATE USER did not send a password hash: %q", arg.String)
			}
		}
	}
	if !sawCreate {
		t.Fatal("the general log did not record the CREATE USER: the test proves nothing")
	}
}

// TestExpiryEvent: with expiry_event_schema, Grant creates an event at the
// deadline that the server runs itself; Revoke removes it; and when it
// fires (event scheduler on, broker absent) it locks the account, kills its
// sessions and drops it — Verify then finds nothing.
func TestExpiryEvent(t *testing.T) {
	f := newFixture(t)
	c := f.open(t, func(cfg *mariadb.Config) { cfg.ExpiryEventSchema = f.db })
	eventAt := func(user string) (string, bool) {
		var at sql.NullString
		err := f.admin.QueryRow("SELECT EXECUTE_AT FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? AND EVENT_NAME = ?", f.db, user).Scan(&at)
		if err == sql.ErrNoRows {
			return "", false
		}
		if err != nil {
			t.Fatal(err)
		}
		return at.String, true
	}
	t.Run("revoke drops it", func(t *testing.T) {
		id, g := f.grant(t, c, f.spec())
		if _, ok := eventAt(g.Info["user"]); !ok {
			t.Fatal("Grant made no expiry event")
		}
		if !strings.HasPrefix(g.Info["native_expiry"], "event ") {
			t.Errorf("Info native_expiry = %q", g.Info["native_expiry"])
		}
		mustRevoke(t, c, id, nil) // without State: the event is still found
		if _, ok := eventAt(g.Info["user"]); ok {
			t.Error("the expiry event survives Revoke")
		}
	})
	t.Run("fires", func(t *testing.T) {
		var sched string
		if err := f.admin.QueryRow("SELECT @@GLOBAL.event_scheduler").Scan(&sched); err != nil {
			t.Fatal(err)
		}
		if strings.EqualFold(sched, "DISABLED") {
			t.Skip("the event scheduler is disabled on this server")
		}
		id := lapse.NewID(lapse.PrefixGrant, time.Now())
		t.Cleanup(func() { c.Revoke(context.Background(), &connector.RevokeRequest{GrantID: id}) })
		g, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: id, Spec: f.spec(), ExpiresAt: time.Now().Add(2 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grantee(t, g).Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		setGlobal(t, f.admin, "event_scheduler", "ON")
		// Wait (bounded) for the server to act on its own.
		deadline := time.Now().Add(60 * time.Second)
		for {
			var n int
			if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ?", g.Info["user"]).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the expiry event did not drop the user")
			}
			time.Sleep(100 * time.Millisecond)
		}
		var x int
		if err := conn.QueryRowContext(context.Background(), "SELECT 1").Scan(&x); err == nil {
			t.Error("a session survived the expiry event")
		}
		// Verify, with no Revoke at all, confirms the server did the job.
		v := mustVerify(t, c, id, g)
		if !v.Gone() {
			t.Errorf("not gone after the expiry event: %+v", v.Checkpoints)
		}
	})
}
