package postgres_test

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// accountConn logs in as an existing account (the test server trusts
// local connections, so no password is needed).
func accountConn(t *testing.T, account string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(bg(t), dsnAs(t, account))
	if err != nil {
		t.Fatalf("log in as %s: %v", account, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// dsnAs is the admin DSN with another user and no password.
func dsnAs(tb testing.TB, user string) string {
	tb.Helper()
	u, err := url.Parse(adminDSN())
	if err != nil {
		tb.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

func readTable(ctx context.Context, conn *pgx.Conn, table string) error {
	var n int
	return conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
}

func isPermissionDenied(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42501"
}

func discovered(d *connector.DiscoverResponse, name string) *connector.DiscoveredPrincipal {
	for i := range d.Principals {
		if d.Principals[i].Name == name {
			return &d.Principals[i]
		}
	}
	return nil
}

// TestElevationOverlappingGrants: two grants elevate the same account. The
// first one's revocation must leave the second's privilege working, for new
// sessions and for sessions that switched role; the second's revocation
// must end the account's sessions (one of them ran SET ROLE into the
// entitled role and would otherwise keep its privileges) and leave the
// account without the privilege.
func TestElevationOverlappingGrants(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_app"
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)

	if err := readTable(ctx, accountConn(t, account), f.table); !isPermissionDenied(err) {
		t.Fatalf("before any grant the account reads the table (err=%v)", err)
	}
	idA, gA := grant(t, c, spec)
	idB, gB := grant(t, c, spec)
	if len(gA.Secret) != 0 || len(gA.Probe) != 0 {
		t.Error("elevation handed out a secret; it must not (the account keeps its own credentials)")
	}
	switched := accountConn(t, account)
	if _, err := switched.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatalf("SET ROLE with the elevation: %v", err)
	}
	plain := accountConn(t, account)
	for _, s := range []*pgx.Conn{switched, plain} {
		if err := readTable(ctx, s, f.table); err != nil {
			t.Fatalf("elevated account cannot read: %v", err)
		}
	}

	d, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{spec}})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []*connector.GrantResponse{gA, gB} {
		p := discovered(d, g.Info["role"])
		if p == nil || !p.Ephemeral || !slices.Contains(p.Privileges, f.group) {
			t.Errorf("Discover: per-grant role %s = %+v, want ephemeral with %s", g.Info["role"], p, f.group)
		}
	}
	if p := discovered(d, account); p != nil {
		t.Errorf("Discover lists the elevated account as standing privilege: %+v", p)
	}

	// First grant ends: the second still provides the role.
	rA := revoke(t, c, idA, spec, gA)
	if !actionsContain(rA, "kept sessions of "+account) {
		t.Errorf("Revoke A actions %q: want the account's sessions kept (covered by grant B)", rA.Actions)
	}
	requireGone(t, verify(t, c, idA, spec, gA))
	for i, s := range []*pgx.Conn{switched, plain, accountConn(t, account)} {
		if err := readTable(ctx, s, f.table); err != nil {
			t.Errorf("session %d lost the privilege grant B still provides: %v", i, err)
		}
	}
	if v := verify(t, c, idB, spec, gB); v.Gone() {
		t.Error("Verify of the still active grant B reports it gone")
	}

	// Second grant ends: nothing provides it any more.
	rB := revoke(t, c, idB, spec, gB)
	if !actionsContain(rB, "terminated") {
		t.Errorf("Revoke B actions %q: want the account's sessions terminated", rB.Actions)
	}
	requireGone(t, verify(t, c, idB, spec, gB))
	for i, s := range []*pgx.Conn{switched, plain} {
		if err := readTable(ctx, s, f.table); err == nil {
			t.Errorf("session %d of the account still reads after the last grant ended", i)
		}
	}
	if err := readTable(ctx, accountConn(t, account), f.table); !isPermissionDenied(err) {
		t.Errorf("a new session of the account: err=%v, want permission denied", err)
	}
	if !roleExists(t, f.admin, account) {
		t.Fatal("Revoke dropped the elevated account itself")
	}
}

// TestElevationRevokeWithoutState: a broker that crashed before Grant
// returned revokes from the catalog's spec alone.
func TestElevationRevokeWithoutState(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_svc"
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)
	id, _ := grant(t, c, spec)
	s := accountConn(t, account)
	if _, err := s.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatal(err)
	}
	revoke(t, c, id, spec, nil)
	requireGone(t, verify(t, c, id, spec, nil))
	if err := readTable(ctx, s, f.table); err == nil {
		t.Error("the session that switched role survived Revoke")
	}
}

// TestElevationVerifyCatchesSurvivingSession: if Revoke leaves out the
// termination, the account's session that ran SET ROLE still reads, and
// Verify must say so.
func TestElevationVerifyCatchesSurvivingSession(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_ops"
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)
	id, g := grant(t, c, spec)
	s := accountConn(t, account)
	if _, err := s.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatal(err)
	}
	postgres.SkipRevokeSteps(c, postgres.StepTerminate)
	revoke(t, c, id, spec, g)
	if err := readTable(ctx, s, f.table); err != nil {
		t.Fatalf("expected the switched session to keep the role when not terminated (PostgreSQL semantics): %v", err)
	}
	v := verify(t, c, id, spec, g)
	if cp := checkpoint(t, v, postgres.CheckpointSessions); cp.Gone {
		t.Errorf("Verify missed the surviving session: evidence %v", cp.Evidence)
	}
	postgres.SkipRevokeSteps(c, "")
	revoke(t, c, id, spec, g)
	requireGone(t, verify(t, c, id, spec, g))
	if err := readTable(ctx, s, f.table); err == nil {
		t.Error("the switched session survived the complete Revoke")
	}
}

// TestDiscoverStandingPrivilege: direct and nested members of an entitled
// role are standing privilege; Lapse's own roles are listed as ephemeral
// with their grant IDs.
func TestDiscoverStandingPrivilege(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	direct := "ltd_" + f.id + "_direct"
	team := "ltd_" + f.id + "_team"
	nested := "ltd_" + f.id + "_nested"
	f.exec(t, ctx, "CREATE ROLE "+ident(direct)+" LOGIN IN ROLE "+ident(f.group))
	f.exec(t, ctx, "CREATE ROLE "+ident(team)+" NOLOGIN IN ROLE "+ident(f.group))
	f.exec(t, ctx, "CREATE ROLE "+ident(nested)+" LOGIN IN ROLE "+ident(team))
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	d, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{f.spec()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{direct, team, nested} {
		p := discovered(d, name)
		if p == nil || p.Ephemeral || !slices.Equal(p.Privileges, []string{f.group}) {
			t.Errorf("standing member %s: %+v, want non-ephemeral with [%s]", name, p, f.group)
		}
	}
	p := discovered(d, g.Info["user"])
	if p == nil || !p.Ephemeral || p.GrantID != id {
		t.Errorf("grant's role: %+v, want ephemeral with grant ID %s", p, id)
	}
	if _, err := c.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{{"roles": []any{`x"`}}}}); err == nil {
		t.Error("Discover accepted a hostile spec")
	}
	revoke(t, c, id, f.spec(), g)
}
