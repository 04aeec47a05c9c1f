package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/postgres"
)

// badSpecs are entitlement specs that must be refused before any statement
// is built: hostile characters in every field, wrong types, unknown keys.
func badSpecs(group string) []map[string]any {
	return []map[string]any{
		nil,
		{},
		{"roles": []any{}},
		{"roles": group},
		{"roles": []any{group + `"; DROP ROLE postgres; --`}},
		{"roles": []any{group + "'"}},
		{"roles": []any{group + ";"}},
		{"roles": []any{group + "\x00"}},
		{"roles": []any{group + "\xff\xfe"}},
		{"roles": []any{group + "%"}},
		{"roles": []any{"a " + group}},
		{"roles": []any{"r\u0435aders"}}, // Cyrillic е
		{"roles": []any{""}},
		{"roles": []any{strings.Repeat("r", 64)}},
		{"roles": []any{"public"}},
		{"roles": []any{group, group}},
		{"roles": []any{group}, "extra": true},
		{"roles": []any{group}, "inherit": "true; DROP ROLE postgres"},
		{"roles": []any{group}, "connection_limit": "1; DROP ROLE postgres"},
		{"roles": []any{group}, "connection_limit": 0},
		{"roles": []any{group}, "connection_limit": 1.5},
		{"roles": []any{group}, "account": `x"; DROP ROLE postgres; --`},
		{"roles": []any{group}, "account": group},
		{"roles": []any{group}, "account": "acct", "inherit": false},
	}
}

// TestContract runs the shared connector contract suite against the real
// server with pgx as the grantee's client.
func TestContract(t *testing.T) {
	f := newFixture(t)
	spec := f.spec()
	// A spec naming a role with the connector's prefix (a grant's role) is
	// refused too.
	bad := append(badSpecs(f.group), map[string]any{"roles": []any{f.prefix + "x"}})
	connectortest.Run(t, connectortest.Harness{
		Open: func(t *testing.T) connector.Connector {
			c, err := postgres.New(bg(t), f.config(), connector.Env{Name: "pg-contract"})
			if err != nil {
				t.Fatalf("postgres.New: %v", err)
			}
			return c
		},
		Spec:     spec,
		BadSpecs: bad,
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			conn, err := pgx.ConnectConfig(ctx, loginConfig(t, g, ""))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			var n int
			return conn.QueryRow(ctx, "SELECT count(*) FROM "+f.table).Scan(&n)
		},
		Hold: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			conn, err := pgx.ConnectConfig(ctx, loginConfig(t, g, ""))
			if err != nil {
				return nil, nil, err
			}
			probe := func(ctx context.Context) error {
				var n int
				return conn.QueryRow(ctx, "SELECT count(*) FROM "+f.table).Scan(&n)
			}
			return probe, func() { _ = conn.Close(context.Background()) }, nil
		},
	})
}

// TestRevokeEndsEverySession grants, logs in with pgx and opens sessions in
// every awkward state — idle, running a query, idle inside a transaction,
// switched to the entitled role with SET ROLE, in another database — then
// revokes: every session must end, a new login must fail, and Verify's
// evidence must show both.
func TestRevokeEndsEverySession(t *testing.T) {
	f := newFixture(t)
	db2 := "ltdb_" + f.id
	f.createDatabase(t, db2)
	c := f.open(t)
	ctx := bg(t)
	id, g := grant(t, c, f.spec())
	role := g.Info["user"]

	var sessions []*pgx.Conn
	open := func(db string) *pgx.Conn {
		t.Helper()
		conn, err := login(ctx, t, g, db)
		if err != nil {
			t.Fatalf("login as grantee: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		sessions = append(sessions, conn)
		return conn
	}
	query := func(conn *pgx.Conn, sql string) error {
		var n int
		return conn.QueryRow(ctx, sql).Scan(&n)
	}

	idle := open("")
	if err := query(idle, "SELECT count(*) FROM "+f.table); err != nil {
		t.Fatalf("grantee cannot use the privilege: %v", err)
	}
	inTx := open("")
	if _, err := inTx.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := query(inTx, "SELECT count(*) FROM "+f.table); err != nil {
		t.Fatal(err)
	}
	setRole := open("")
	if _, err := setRole.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatalf("SET ROLE to the entitled role: %v", err)
	}
	if err := query(setRole, "SELECT count(*) FROM "+f.table); err != nil {
		t.Fatal(err)
	}
	other := open(db2)
	if err := query(other, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	running := open("")
	runErr := make(chan error, 1)
	go func() {
		_, err := running.Exec(context.Background(), "SELECT pg_sleep(600)")
		runErr <- err
	}()
	// Wait until the sleeping query is visible as active.
	var oid uint32
	if err := f.admin.QueryRow(ctx, "SELECT oid FROM pg_roles WHERE rolname = $1", role).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the running query to start", func() bool {
		var n int
		_ = f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usesysid = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'", oid).Scan(&n)
		return n == 1
	})
	var states []string
	if err := f.admin.QueryRow(ctx, "SELECT array_agg(coalesce(state, '') ORDER BY state) FROM pg_stat_activity WHERE usesysid = $1", oid).Scan(&states); err != nil {
		t.Fatal(err)
	}
	if len(states) != 5 || !strings.Contains(strings.Join(states, ","), "idle in transaction") {
		t.Fatalf("sessions before revoke: %v, want 5 including one idle in transaction", states)
	}

	r := revoke(t, c, id, f.spec(), g)
	if !actionsContain(r, "terminated 5 sessions") {
		t.Errorf("Revoke actions %q do not report terminating the 5 sessions", r.Actions)
	}
	select {
	case err := <-runErr:
		if err == nil {
			t.Error("the running query completed instead of being terminated")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the running query was not terminated")
	}
	for i, s := range sessions {
		if err := query(s, "SELECT 1"); err == nil {
			t.Errorf("session %d still answers after Revoke", i)
		}
	}
	if n := sessionsOf(t, f.admin, oid, role); n != 0 {
		t.Errorf("%d backends of the grantee remain after Revoke", n)
	}
	if conn, err := login(ctx, t, g, ""); err == nil {
		conn.Close(ctx)
		t.Error("a new login succeeded after Revoke")
	}
	if roleExists(t, f.admin, role) {
		t.Error("the role still exists after Revoke")
	}

	v := verify(t, c, id, f.spec(), g)
	requireGone(t, v)
	rc := checkpoint(t, v, postgres.CheckpointRole)
	probe, _ := rc.Evidence["login_probe"].(map[string]any)
	if probe["outcome"] != "rejected" || probe["credential"] != "the grant's password" {
		t.Errorf("login probe evidence = %v, want a rejected login with the grant's password", probe)
	}
	sc := checkpoint(t, v, postgres.CheckpointSessions)
	if sc.Evidence["sessions"] != int64(0) {
		t.Errorf("sessions evidence = %v, want 0", sc.Evidence["sessions"])
	}
}

// waitFor polls cond (it is a synchronisation with another goroutine or
// backend, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRevokeRemovesOwnedObjects: the grantee creates tables in two
// databases, sets a default privilege and grants on its table to another
// role. Revoke must remove all of it. (Granting its own role to another is
// refused by the server: a role has no ADMIN OPTION on itself.)
func TestRevokeRemovesOwnedObjects(t *testing.T) {
	for _, mode := range []string{postgres.OwnedDrop, postgres.OwnedReassign} {
		t.Run(mode, func(t *testing.T) { testOwnedObjects(t, mode) })
	}
}

func testOwnedObjects(t *testing.T, mode string) {
	f := newFixture(t)
	ctx := bg(t)
	db2 := "ltdb_" + f.id
	f.createDatabase(t, db2)
	bob := "ltb_" + f.id + "_bob"
	owner := "ltb_" + f.id + "_owner"
	f.exec(t, ctx, "CREATE ROLE "+ident(bob)+" NOLOGIN")
	f.exec(t, ctx, "CREATE ROLE "+ident(owner)+" NOLOGIN")
	f.exec(t, ctx, "GRANT CREATE ON SCHEMA "+ident(f.schema)+" TO "+ident(f.group))
	admin2 := connectDB(t, db2)
	mustExec(t, admin2, "CREATE SCHEMA work")
	mustExec(t, admin2, "GRANT USAGE, CREATE ON SCHEMA work TO "+ident(f.group))

	c := f.open(t, func(cfg *postgres.Config) {
		cfg.Owned = mode
		if mode == postgres.OwnedReassign {
			cfg.ReassignTo = owner
		}
	})
	id, g := grant(t, c, f.spec())
	role := g.Info["user"]

	s1, err := login(ctx, t, g, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	for _, sql := range []string{
		"CREATE TABLE " + ident(f.schema) + ".made (x int)",
		"GRANT SELECT ON " + ident(f.schema) + ".made TO " + ident(bob),
		"ALTER DEFAULT PRIVILEGES IN SCHEMA " + ident(f.schema) + " GRANT SELECT ON TABLES TO " + ident(bob),
	} {
		if _, err := s1.Exec(ctx, sql); err != nil {
			t.Fatalf("grantee: %s: %v", sql, err)
		}
	}
	s2, err := login(ctx, t, g, db2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	if _, err := s2.Exec(ctx, "CREATE TABLE work.made2 (x int)"); err != nil {
		t.Fatalf("grantee in second database: %v", err)
	}

	r := revoke(t, c, id, f.spec(), g)
	if !actionsContain(r, "in database "+db2) || !actionsContain(r, "dropped role "+role) {
		t.Errorf("Revoke actions %q do not show cleanup in %s and the drop", r.Actions, db2)
	}
	requireGone(t, verify(t, c, id, f.spec(), g))

	var t1, t2, defacl, bobMember int
	var bobPriv bool
	mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'made'", f.schema), &t1)
	mustScan(t, admin2.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'work' AND tablename = 'made2'"), &t2)
	mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE n.nspname = $1", f.schema), &defacl)
	mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.member WHERE b.rolname = $1", bob), &bobMember)
	if defacl != 0 {
		t.Errorf("%d default privileges remain", defacl)
	}
	if bobMember != 0 {
		t.Errorf("bob is still a member of %d roles", bobMember)
	}
	switch mode {
	case postgres.OwnedDrop:
		if t1 != 0 || t2 != 0 {
			t.Errorf("tables remain after drop: %d in %s, %d in %s", t1, "postgres", t2, db2)
		}
	case postgres.OwnedReassign:
		if t1 != 1 || t2 != 1 {
			t.Fatalf("tables lost after reassign: %d, %d", t1, t2)
		}
		var o1, o2 string
		mustScan(t, f.admin.QueryRow(ctx, "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'made'", f.schema), &o1)
		mustScan(t, admin2.QueryRow(ctx, "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'work' AND tablename = 'made2'"), &o2)
		if o1 != owner || o2 != owner {
			t.Errorf("owners after reassign = %s, %s; want %s", o1, o2, owner)
		}
		// The grant the role made on its own table moves with the table
		// (documented): only check that nothing names the dropped role.
		mustScan(t, f.admin.QueryRow(ctx, "SELECT has_table_privilege($1, $2, 'SELECT')", bob, f.schema+".made"), &bobPriv)
		t.Logf("reassign mode: bob keeps SELECT on the reassigned table: %v (documented)", bobPriv)
	}
}

func connectDB(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(bg(t), dbDSN(t, db))
	if err != nil {
		t.Fatalf("connect to %s: %v", db, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(bg(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func mustScan(t *testing.T, row pgx.Row, dst ...any) {
	t.Helper()
	if err := row.Scan(dst...); err != nil {
		t.Fatalf("scan: %v", err)
	}
}

// TestSabotagedRevokeIsCaught leaves out one step of Revoke at a time, as a
// statement that silently does nothing would; Verify must report the
// residue (so the broker records revoke_failed), and a repeated, complete
// Revoke must then finish the job.
func TestSabotagedRevokeIsCaught(t *testing.T) {
	cases := []struct {
		skip       string
		checkpoint string
	}{
		{postgres.StepTerminate, postgres.CheckpointSessions},
		{postgres.StepDrop, postgres.CheckpointRole},
		{postgres.StepFence + "," + postgres.StepDrop, postgres.CheckpointRole},
	}
	for _, tc := range cases {
		t.Run(tc.skip, func(t *testing.T) {
			f := newFixture(t)
			ctx := bg(t)
			c := f.open(t)
			id, g := grant(t, c, f.spec())
			held, err := login(ctx, t, g, "")
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close(ctx)

			postgres.SkipRevokeSteps(c, tc.skip)
			revoke(t, c, id, f.spec(), g)
			v := verify(t, c, id, f.spec(), g)
			if v.Gone() {
				t.Fatalf("Verify reports gone after a revoke that skipped %s", tc.skip)
			}
			cp := checkpoint(t, v, tc.checkpoint)
			if cp.Gone || len(cp.Residue) == 0 {
				t.Errorf("checkpoint %s: gone=%v residue=%v, want residue", tc.checkpoint, cp.Gone, cp.Residue)
			}
			t.Logf("residue found: %v", cp.Residue)

			// The broker retries: a complete Revoke finishes and Verify agrees.
			postgres.SkipRevokeSteps(c, "")
			revoke(t, c, id, f.spec(), g)
			requireGone(t, verify(t, c, id, f.spec(), g))
			if _, err := held.Exec(ctx, "SELECT 1"); err == nil {
				t.Error("held session survived the complete Revoke")
			}
		})
	}
}

// TestVerifyProbeCatchesLiveLogin: with only the fence left out of a
// revoke that also skips the drop, the role can still log in, and the
// login probe must say so.
func TestVerifyProbeCatchesLiveLogin(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	postgres.SkipRevokeSteps(c, postgres.StepFence+","+postgres.StepDrop)
	revoke(t, c, id, f.spec(), g)
	v := verify(t, c, id, f.spec(), g)
	rc := checkpoint(t, v, postgres.CheckpointRole)
	probe, _ := rc.Evidence["login_probe"].(map[string]any)
	if probe["outcome"] != "accepted" {
		t.Errorf("login probe = %v, want accepted while the role can still log in", probe)
	}
	found := false
	for _, r := range rc.Residue {
		found = found || strings.Contains(r, "login as")
	}
	if !found {
		t.Errorf("residue %v does not report the successful login", rc.Residue)
	}
}

// TestValidUntilIsTheDeadline: the server itself enforces the grant's
// deadline (defence in depth), and the role has no attribute beyond LOGIN.
func TestValidUntilIsTheDeadline(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	req := grantRequest(newGrantID(), f.spec())
	req.ExpiresAt = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	g, err := c.Grant(bg(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var until time.Time
	var super, createrole, createdb, bypass, repl, inherit bool
	mustScan(t, f.admin.QueryRow(bg(t), "SELECT rolvaliduntil, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, rolinherit FROM pg_roles WHERE rolname = $1", g.Info["user"]),
		&until, &super, &createrole, &createdb, &bypass, &repl, &inherit)
	if !until.Equal(req.ExpiresAt) {
		t.Errorf("VALID UNTIL = %v, want %v", until, req.ExpiresAt)
	}
	if super || createrole || createdb || bypass || repl || !inherit {
		t.Errorf("unexpected role attributes: super=%v createrole=%v createdb=%v bypassrls=%v replication=%v inherit=%v", super, createrole, createdb, bypass, repl, inherit)
	}
	revoke(t, c, req.GrantID, f.spec(), g)
}

// TestGrantErrors: refusals carry codes, and refused grants create nothing.
func TestGrantErrors(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := bg(t)
	cases := []struct {
		name string
		mod  func(*connector.GrantRequest)
		code string
	}{
		{"missing role", func(r *connector.GrantRequest) { r.Spec = map[string]any{"roles": []any{"ltg_" + f.id + "_nosuch"}} }, lapse.EINVALID},
		{"missing account", func(r *connector.GrantRequest) {
			r.Spec = map[string]any{"roles": []any{f.group}, "account": "lta_" + f.id + "_nosuch"}
		}, lapse.EINVALID},
		{"no deadline", func(r *connector.GrantRequest) { r.ExpiresAt = time.Time{} }, lapse.EINVALID},
		{"hostile grant id", func(r *connector.GrantRequest) { r.GrantID = `gr_x"; DROP ROLE postgres; --` }, lapse.EINVALID},
		{"elevate the admin", func(r *connector.GrantRequest) {
			r.Spec = map[string]any{"roles": []any{f.group}, "account": "postgres"}
		}, lapse.EINVALID},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := grantRequest(newGrantID(), f.spec())
			tc.mod(req)
			_, err := c.Grant(ctx, req)
			if code := lapse.ErrorCode(err); code != tc.code {
				t.Fatalf("Grant: code %q (%v), want %q", code, err, tc.code)
			}
			var n int
			mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE starts_with(rolname::text, $1)", f.prefix), &n)
			if n != 0 {
				t.Errorf("a refused grant left %d roles", n)
			}
		})
	}
}

func TestOpenFromConfigBlock(t *testing.T) {
	f := newFixture(t)
	decode := func(v any) error {
		cfg, ok := v.(*postgres.Config)
		if !ok {
			return fmt.Errorf("decode into %T", v)
		}
		*cfg = f.config()
		return nil
	}
	c, err := postgres.Open(connector.Env{Name: "pg"}, decode)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer c.(connector.Closer).Close()
	id, g := grant(t, c, f.spec())
	revoke(t, c, id, f.spec(), g)

	_, err = postgres.Open(connector.Env{}, func(v any) error {
		*(v.(*postgres.Config)) = postgres.Config{DSN: lapse.SecretRef{Value: adminDSN()}, Prefix: "Bad-Prefix"}
		return nil
	})
	if lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Open with a bad prefix: %v, want EINVALID", err)
	}
	wantErr := errors.New("decode failed")
	if _, err := postgres.Open(connector.Env{}, func(any) error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("Open does not return the decode error: %v", err)
	}
}

// TestConcurrentRevokesBatch revokes many grants at once, so that Revoke
// and Verify run in multi-grant batches, with a few grants that own a
// table (the batch's single DROP ROLE is refused and must fall back to
// cleaning them one by one) and a few with live sessions.
func TestConcurrentRevokesBatch(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	f.exec(t, ctx, "GRANT CREATE ON SCHEMA "+ident(f.schema)+" TO "+ident(f.group))
	c := f.open(t, func(cfg *postgres.Config) { cfg.MaxConns = 4 })
	const n = 40
	type item struct {
		id      string
		g       *connector.GrantResponse
		session *pgx.Conn
		owns    bool
	}
	items := make([]*item, n)
	for i := range items {
		id, g := grant(t, c, f.spec())
		it := &item{id: id, g: g}
		if i%10 == 3 || i%10 == 7 {
			s, err := login(ctx, t, g, "")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close(context.Background()) })
			it.session = s
			if i%10 == 7 {
				if _, err := s.Exec(ctx, fmt.Sprintf("CREATE TABLE %s.owned_%d (x int)", ident(f.schema), i)); err != nil {
					t.Fatal(err)
				}
				it.owns = true
			}
		}
		items[i] = it
	}
	errs := make(chan error, n)
	for _, it := range items {
		go func() {
			r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: it.id, Spec: f.spec(), State: it.g.State})
			if err == nil && it.session != nil && !actionsContain(r, "terminated 1 sessions") {
				err = fmt.Errorf("grant %s: actions %q do not show its session terminated", it.id, r.Actions)
			}
			if err == nil {
				var v *connector.VerifyResponse
				v, err = c.Verify(ctx, &connector.VerifyRequest{GrantID: it.id, Spec: f.spec(), State: it.g.State, Probe: it.g.Probe})
				if err == nil && !v.Gone() {
					err = fmt.Errorf("grant %s not gone: %+v", it.id, v.Checkpoints)
				}
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	rb, vb := postgres.LargestBatches(c)
	t.Logf("largest batches: revoke %d, verify %d", rb, vb)
	if rb < 2 {
		t.Errorf("no Revoke batch had more than one grant (largest %d): the set-wise path was not exercised", rb)
	}
	var tables, roles int
	mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename LIKE 'owned_%'", f.schema), &tables)
	mustScan(t, f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE starts_with(rolname::text, $1)", f.prefix), &roles)
	if tables != 0 || roles != 0 {
		t.Errorf("after revoking all: %d owned tables and %d roles remain", tables, roles)
	}
	for _, it := range items {
		if it.session != nil {
			if _, err := it.session.Exec(ctx, "SELECT 1"); err == nil {
				t.Errorf("grant %s: session survived", it.id)
			}
		}
	}
}

// TestRevokeRacingItself revokes the same grants from several callers at
// once, so that one caller's fence can meet a role another has just
// dropped: every call succeeds, Verify finds each grant gone, and the
// connector's connections are still usable afterwards.
func TestRevokeRacingItself(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t, func(cfg *postgres.Config) { cfg.MaxConns = 8 })
	for range 5 {
		id, g := grant(t, c, f.spec())
		s, err := login(ctx, t, g, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close(context.Background()) })
		errs := make(chan error, 4)
		for range 4 {
			go func() {
				_, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: f.spec(), State: g.State})
				errs <- err
			}()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Errorf("grant %s: concurrent Revoke: %v", id, err)
			}
		}
		v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Spec: f.spec(), State: g.State, Probe: g.Probe})
		if err != nil || !v.Gone() {
			t.Fatalf("grant %s after concurrent revokes: %+v, %v", id, v, err)
		}
	}
	// Every connection the races used is still in a clean state.
	for range 16 {
		id, g := grant(t, c, f.spec())
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: f.spec(), State: g.State}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifyCountsEachResidue: Verify finds, each on its own, every kind of
// catalog residue a role can leave — a membership in which it is the
// member, one in which it is the role granted, one it granted to another
// role, an object it owns — and its session. Nothing is revoked, so each is
// there to be found, and the counts are exact. (Without the login probe,
// which would succeed here and could be counted as a second session.)
func TestVerifyCountsEachResidue(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t, func(cfg *postgres.Config) { cfg.NoLoginProbe = true })
	id, g := grant(t, c, f.spec())
	user := g.Info["user"]
	other, extra := "ltx_"+f.id+"_other", "ltx_"+f.id+"_extra"
	f.exec(t, ctx, "CREATE ROLE "+ident(other)+" NOLOGIN")
	f.exec(t, ctx, "CREATE ROLE "+ident(extra)+" NOLOGIN")
	f.exec(t, ctx, "GRANT "+ident(user)+" TO "+ident(other))                      // the role granted
	f.exec(t, ctx, "GRANT "+ident(extra)+" TO "+ident(user)+" WITH ADMIN OPTION") // a member (the entitled group is another)
	conn, err := f.admin.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET SESSION AUTHORIZATION " + ident(user), "GRANT " + ident(extra) + " TO " + ident(other), "RESET SESSION AUTHORIZATION"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			conn.Release()
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Release()
	f.exec(t, ctx, "CREATE TABLE "+ident(f.schema)+".owned (x int)")
	f.exec(t, ctx, "ALTER TABLE "+ident(f.schema)+".owned OWNER TO "+ident(user))
	held, err := login(ctx, t, g, "")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)

	v := verify(t, c, id, f.spec(), g)
	role := checkpoint(t, v, postgres.CheckpointRole)
	// The group and extra hold the role as member, other holds it as the
	// role granted, and it granted extra to other.
	if got := fmt.Sprint(role.Evidence["memberships"]); got != "4" {
		t.Errorf("memberships = %s, want 4", got)
	}
	if got := fmt.Sprint(role.Evidence["dependencies"]); got != "1" {
		t.Errorf("dependencies = %s, want 1 (the owned table)", got)
	}
	if got := fmt.Sprint(checkpoint(t, v, postgres.CheckpointSessions).Evidence["sessions"]); got != "1" {
		t.Errorf("sessions = %s, want 1", got)
	}
	if role.Gone {
		t.Error("role checkpoint gone with its role in place")
	}
}
