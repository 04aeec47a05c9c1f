package mariadb_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// definerSpec lets the grantee create views, routines, triggers and events
// in the fixture's database, and pass SELECT on the table on.
func (f *fixture) definerSpec() map[string]any {
	return map[string]any{
		"grants": []any{
			map[string]any{"database": f.db, "privileges": []any{
				"SELECT", "INSERT", "CREATE", "CREATE VIEW", "SHOW VIEW", "CREATE ROUTINE",
				"ALTER ROUTINE", "EXECUTE", "TRIGGER", "EVENT",
			}},
		},
	}
}

// createDefinerObjects has the grantee create one object of each kind that
// carries a DEFINER, and returns their names (kind → name).
func createDefinerObjects(t *testing.T, f *fixture, g *connector.GrantResponse) map[string]string {
	t.Helper()
	db := grantee(t, g)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatalf("grantee login: %v", err)
	}
	defer conn.Close()
	q := "`" + f.db + "`."
	objs := map[string]string{"VIEW": "v_made", "PROCEDURE": "p_made", "FUNCTION": "f_made", "TRIGGER": "t_made", "EVENT": "e_made"}
	for _, s := range []string{
		"CREATE SQL SECURITY DEFINER VIEW " + q + "v_made AS SELECT id, name FROM " + q + "items",
		"CREATE PROCEDURE " + q + "p_made() SQL SECURITY DEFINER SELECT COUNT(*) FROM " + q + "items",
		"CREATE FUNCTION " + q + "f_made() RETURNS INT DETERMINISTIC RETURN 42",
		"CREATE TRIGGER " + q + "t_made BEFORE INSERT ON " + q + "items FOR EACH ROW SET NEW.name = UPPER(NEW.name)",
		"CREATE EVENT " + q + "e_made ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1",
	} {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("grantee: %s: %v", s, err)
		}
	}
	return objs
}

// definers returns the definer of each of the objects (kind → definer, ""
// if the object does not exist).
func definers(t *testing.T, f *fixture, objs map[string]string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for kind, name := range objs {
		var q string
		switch kind {
		case "VIEW":
			q = "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?"
		case "PROCEDURE", "FUNCTION":
			q = "SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME = ?"
		case "TRIGGER":
			q = "SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME = ?"
		case "EVENT":
			q = "SELECT DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? AND EVENT_NAME = ?"
		}
		var d string
		err := f.admin.QueryRow(q, f.db, name).Scan(&d)
		if err != nil && err != sql.ErrNoRows {
			t.Fatalf("read definer of %s %s: %v", kind, name, err)
		}
		out[kind] = d
	}
	return out
}

// TestDefinerObjects checks each definer policy: objects the grantee made
// are dropped, re-created under another definer, or kept and reported.
func TestDefinerObjects(t *testing.T) {
	t.Run("drop", func(t *testing.T) {
		f := newFixture(t)
		c := f.open(t)
		id, g := f.grant(t, c, f.definerSpec())
		objs := createDefinerObjects(t, f, g)
		active := mustVerify(t, c, id, g)
		if n := checkpoint(t, active, lapse.CheckpointTarget).Evidence["definer_objects"]; n != len(objs) {
			t.Errorf("definer_objects while active = %v, want %d", n, len(objs))
		}
		r := mustRevoke(t, c, id, g)
		for kind, d := range definers(t, f, objs) {
			if d != "" {
				t.Errorf("%s still exists after Revoke (definer %s)", kind, d)
			}
		}
		if !slices.ContainsFunc(r.Actions, func(a string) bool { return strings.HasPrefix(a, "dropped view") }) {
			t.Errorf("Revoke actions do not report the dropped view: %v", r.Actions)
		}
		v := mustVerify(t, c, id, g)
		if !v.Gone() {
			t.Fatalf("not gone: %+v", v.Checkpoints)
		}
	})
	t.Run("reassign", func(t *testing.T) {
		f := newFixture(t)
		owner := "lt_" + rnd(6) + "_owner"
		f.exec(t, "CREATE USER `"+owner+"`@`localhost` ACCOUNT LOCK")
		t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+owner+"`@`localhost`") })
		f.exec(t, "GRANT SELECT, EXECUTE ON `"+f.db+"`.* TO `"+owner+"`@`localhost`")
		c := f.open(t, func(cfg *mariadb.Config) {
			cfg.Definers = mariadb.DefinerReassign
			cfg.DefinerReassignTo = owner + "@localhost"
		})
		id, g := f.grant(t, c, f.definerSpec())
		objs := createDefinerObjects(t, f, g)
		mustRevoke(t, c, id, g)
		for kind, d := range definers(t, f, objs) {
			if d != owner+"@localhost" {
				t.Errorf("%s: definer after Revoke = %q, want %s@localhost", kind, d, owner)
			}
		}
		// The re-created objects still work (the view runs as its new definer).
		var n int
		if err := f.admin.QueryRow("SELECT COUNT(*) FROM `" + f.db + "`.v_made").Scan(&n); err != nil || n != 2 {
			t.Errorf("reassigned view: n=%d err=%v", n, err)
		}
		var fortyTwo int
		if err := f.admin.QueryRow("SELECT `" + f.db + "`.f_made()").Scan(&fortyTwo); err != nil || fortyTwo != 42 {
			t.Errorf("reassigned function: %d, %v", fortyTwo, err)
		}
		if v := mustVerify(t, c, id, g); !v.Gone() {
			t.Fatalf("not gone: %+v", v.Checkpoints)
		}
	})
	t.Run("keep", func(t *testing.T) {
		f := newFixture(t)
		c := f.open(t, func(cfg *mariadb.Config) { cfg.Definers = mariadb.DefinerKeep })
		id, g := f.grant(t, c, f.definerSpec())
		objs := createDefinerObjects(t, f, g)
		mustRevoke(t, c, id, g)
		for kind, d := range definers(t, f, objs) {
			if d == "" {
				t.Errorf("%s was removed although definers is keep", kind)
			}
		}
		v := mustVerify(t, c, id, g)
		if !v.Gone() {
			t.Fatalf("with definers: keep, kept objects are not residue: %+v", v.Checkpoints)
		}
		if n := checkpoint(t, v, lapse.CheckpointTarget).Evidence["definer_objects"]; n != len(objs) {
			t.Errorf("evidence definer_objects = %v, want %d (kept objects are still reported)", n, len(objs))
		}
	})
}

// TestGrantsMadeToOthersRevoked: with grant_option the grantee can pass a
// table privilege on; Revoke takes it back, and Verify would see it.
func TestGrantsMadeToOthersRevoked(t *testing.T) {
	f := newFixture(t)
	other := "lt_" + rnd(6) + "_other"
	f.exec(t, "CREATE USER `"+other+"`@`%` ACCOUNT LOCK")
	t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+other+"`@`%`") })
	c := f.open(t)
	spec := map[string]any{
		"grants":       []any{map[string]any{"database": f.db, "table": "items", "privileges": []any{"SELECT", "INSERT"}}},
		"grant_option": true,
	}
	id, g := f.grant(t, c, spec)
	if g.Info["grant_option"] != "true" {
		t.Error("grant_option is not flagged in Info")
	}
	if _, err := grantee(t, g).Exec("GRANT SELECT ON `" + f.db + "`.items TO `" + other + "`@`%`"); err != nil {
		t.Fatalf("grantee passes SELECT on: %v", err)
	}
	active := mustVerify(t, c, id, g)
	if n := checkpoint(t, active, lapse.CheckpointTarget).Evidence["grants_made_to_others"]; n != 1 {
		t.Errorf("grants_made_to_others while active = %v, want 1", n)
	}
	mustRevoke(t, c, id, g)
	var n int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.tables_priv WHERE User = ?", other).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("the privilege the grantee passed on survives Revoke")
	}
	if v := mustVerify(t, c, id, g); !v.Gone() {
		t.Fatalf("not gone: %+v", v.Checkpoints)
	}
}

// TestSabotagedRevokeCaughtByVerify makes one Revoke step silently do
// nothing and checks that Verify, which trusts nothing Revoke did, reports
// the residue on the right checkpoint — so the broker would mark the grant
// revoke_failed — and that the retry (an honest Revoke) then verifies.
func TestSabotagedRevokeCaughtByVerify(t *testing.T) {
	cases := []struct {
		steps []string
		spec  func(f *fixture) map[string]any
		setup func(t *testing.T, f *fixture, g *connector.GrantResponse)
		kind  lapse.CheckpointKind
		want  string // a fragment of the expected residue
	}{
		{
			steps: []string{"kill"},
			setup: func(t *testing.T, f *fixture, g *connector.GrantResponse) {
				conn, err := grantee(t, g).Conn(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
			},
			kind: lapse.CheckpointSessions, want: "connection",
		},
		{steps: []string{"drop"}, kind: lapse.CheckpointTarget, want: "exists"},
		{steps: []string{"drop"}, kind: lapse.CheckpointTarget, want: "login as"},
		{
			steps: []string{"definers"},
			spec:  (*fixture).definerSpec,
			setup: func(t *testing.T, f *fixture, g *connector.GrantResponse) { createDefinerObjects(t, f, g) },
			kind:  lapse.CheckpointTarget, want: "definer object left",
		},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.steps, "+"), func(t *testing.T) {
			f := newFixture(t)
			c := f.open(t)
			spec := f.spec()
			if tc.spec != nil {
				spec = tc.spec(f)
			}
			id, g := f.grant(t, c, spec)
			if tc.setup != nil {
				tc.setup(t, f, g)
			}
			for _, s := range tc.steps {
				mariadb.Sabotage(c, s, true)
			}
			mustRevoke(t, c, id, g)
			v := mustVerify(t, c, id, g)
			if v.Gone() {
				t.Fatal("Verify reports gone after a sabotaged Revoke")
			}
			res := residueOf(v, tc.kind)
			if !slices.ContainsFunc(res, func(r string) bool { return strings.Contains(r, tc.want) }) {
				t.Errorf("%s residue %q does not mention %q", tc.kind, res, tc.want)
			}
			// The broker retries: an honest Revoke finishes the job.
			for _, s := range tc.steps {
				mariadb.Sabotage(c, s, false)
			}
			mustRevoke(t, c, id, g)
			if v := mustVerify(t, c, id, g); !v.Gone() {
				t.Errorf("not gone after the retry: %+v", v.Checkpoints)
			}
		})
	}
	t.Run("grantor", func(t *testing.T) {
		f := newFixture(t)
		other := "lt_" + rnd(6) + "_other"
		f.exec(t, "CREATE USER `"+other+"`@`%` ACCOUNT LOCK")
		t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+other+"`@`%`") })
		c := f.open(t)
		id, g := f.grant(t, c, map[string]any{
			"grants":       []any{map[string]any{"database": f.db, "table": "items", "privileges": []any{"SELECT"}}},
			"grant_option": true,
		})
		if _, err := grantee(t, g).Exec("GRANT SELECT ON `" + f.db + "`.items TO `" + other + "`@`%`"); err != nil {
			t.Fatal(err)
		}
		mariadb.Sabotage(c, "grantor", true)
		mustRevoke(t, c, id, g)
		v := mustVerify(t, c, id, g)
		if v.Gone() || !slices.ContainsFunc(residueOf(v, lapse.CheckpointTarget), func(r string) bool { return strings.Contains(r, other) }) {
			t.Errorf("a privilege passed on to %s is not residue: %+v", other, v.Checkpoints)
		}
		mariadb.Sabotage(c, "grantor", false)
		mustRevoke(t, c, id, g)
		if v := mustVerify(t, c, id, g); !v.Gone() {
			t.Errorf("not gone after the retry: %+v", v.Checkpoints)
		}
	})
}

// TestRevokeLeavesLookAlikeDefiners: objects whose DEFINER is another
// account whose name differs from the grant's user only in letter case, or
// that begins with the grant's user and an "@", are that account's:
// Revoke leaves them, and Verify does not count them as residue.
// (information_schema compares case-insensitively, and DEFINER is
// "user@host" with no quoting.)
func TestRevokeLeavesLookAlikeDefiners(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := f.grant(t, c, f.definerSpec())
	user := g.Info["user"]
	q := "`" + f.db + "`."
	for i, other := range []string{strings.ToUpper(user), user + "@evil"} {
		def := "'" + other + "'@'%'" // letters, digits, "_" and "@": nothing to escape
		f.exec(t, "CREATE USER "+def)
		t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS "+def) })
		f.exec(t, fmt.Sprintf("GRANT SELECT ON %s* TO %s", q, def))
		f.exec(t, fmt.Sprintf("CREATE DEFINER=%s SQL SECURITY DEFINER VIEW %sv_other_%d AS SELECT id FROM %sitems", def, q, i, q))
		f.exec(t, fmt.Sprintf("CREATE DEFINER=%s PROCEDURE %sp_other_%d() SQL SECURITY DEFINER SELECT 1", def, q, i))
	}
	mustRevoke(t, c, id, g)
	if v := mustVerify(t, c, id, g); !v.Gone() {
		t.Fatalf("Verify counts another account's objects as the grant's: %+v", v.Checkpoints)
	}
	for i := range 2 {
		var n int
		if err := f.admin.QueryRow("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", f.db, fmt.Sprintf("v_other_%d", i)).Scan(&n); err != nil || n != 1 {
			t.Errorf("view v_other_%d of another account: %d left, %v; want it kept", i, n, err)
		}
		if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.proc WHERE db = ? AND name = ?", f.db, fmt.Sprintf("p_other_%d", i)).Scan(&n); err != nil || n != 1 {
			t.Errorf("procedure p_other_%d of another account: %d left, %v; want it kept", i, n, err)
		}
	}
}
