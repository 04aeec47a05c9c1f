package postgres_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// rawState encodes a hand-made connector State.
func rawState(t *testing.T, st map[string]any) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// alive reports whether conn's session still answers.
func alive(t *testing.T, conn *pgx.Conn) bool {
	t.Helper()
	var one int
	return conn.QueryRow(bg(t), "SELECT 1").Scan(&one) == nil && one == 1
}

// evidenceAccounts returns what a checkpoint's evidence lists as the
// elevated accounts Verify checked.
func evidenceAccounts(cp connector.CheckpointResult) []string {
	a, _ := cp.Evidence["accounts"].([]string)
	return a
}

// TestForgedStateCannotTargetAnotherAccount: State comes back from the
// store and is not trusted. A State altered there to read {mode:
// elevation, role: <the grant's derived elevation role>, account: <some
// other login role>} — or an ephemeral-mode State that names an account —
// must not make Revoke terminate that role's sessions, nor make Verify
// check them: with a valid spec the catalog decides the mode and the
// account, and without one the State's account is only used to finish an
// interrupted elevation revocation, which an ephemeral grant never has.
func TestForgedStateCannotTargetAnotherAccount(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	victim := "ltv_" + f.id + "_victim"
	f.exec(t, ctx, "CREATE ROLE "+ident(victim)+" LOGIN")
	c := f.open(t)

	for _, tc := range []struct {
		name string
		spec map[string]any
		mode string
	}{
		{"ephemeral spec, forged elevation state", f.spec(), "elevation"},
		{"ephemeral spec, ephemeral state with an account", f.spec(), "ephemeral"},
		{"no spec, forged elevation state", nil, "elevation"},
		{"no spec, ephemeral state with an account", nil, "ephemeral"},
		{"invalid spec, forged elevation state", map[string]any{"roles": []any{`x"`}}, "elevation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, g := grant(t, c, f.spec())
			session := accountConn(t, victim)
			role := g.Info["user"]
			if tc.mode == "elevation" {
				role = strings.Replace(role, f.prefix, f.prefix+"e_", 1)
			}
			forged := rawState(t, map[string]any{"v": 1, "mode": tc.mode, "role": role, "account": victim, "roles": []any{f.group}})

			r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: tc.spec, State: forged})
			if err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if !alive(t, session) || sessionsOf(t, f.admin, 0, victim) == 0 {
				t.Fatalf("a forged State made Revoke end the sessions of %s; actions %q", victim, r.Actions)
			}
			if actionsContain(r, victim) && !actionsContain(r, "ignored") {
				t.Errorf("Revoke acted on %s: %q", victim, r.Actions)
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Spec: tc.spec, State: forged, Probe: g.Probe})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			for _, cp := range v.Checkpoints {
				if len(evidenceAccounts(cp)) > 0 {
					t.Errorf("Verify checked accounts %v named by a forged State", evidenceAccounts(cp))
				}
			}
			requireGone(t, v)
		})
	}
}

// TestStateAccountFinishesInterruptedElevation: an elevation revocation
// interrupted after its fence (the account is no longer a member of the
// per-grant role, but its sessions were not ended), for an entitlement
// that has since left the catalog (no spec). State's account is what lets
// the retry end the account's sessions. It is never used for the
// connector's own role, a superuser, or a role named like a grant's role —
// even when a State altered in the store names them.
func TestStateAccountFinishesInterruptedElevation(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_app"
	super := "ltsu_" + f.id
	// A grant's login role under an earlier prefix (another grant's).
	lookalike := "ltold" + f.id + "_" + strings.TrimPrefix(newGrantID(), "gr_")
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	f.exec(t, ctx, "CREATE ROLE "+ident(super)+" LOGIN SUPERUSER")
	f.exec(t, ctx, "CREATE ROLE "+ident(lookalike)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)
	id, g := grant(t, c, spec)
	elev := g.Info["role"]

	switched := accountConn(t, account)
	if _, err := switched.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatal(err)
	}
	// The interrupted Revoke: fenced, nothing else. The per-grant role
	// also lost its own membership (an operator cleaned up by hand), so a
	// State without roles leaves no entitled role to compare with.
	f.exec(t, ctx, "REVOKE "+ident(elev)+" FROM "+ident(account))
	f.exec(t, ctx, "REVOKE "+ident(f.group)+" FROM "+ident(elev))

	sessions := map[string]*pgx.Conn{}
	for _, who := range []string{"postgres", super, lookalike} {
		sessions[who] = accountConn(t, who)
	}
	// Leave the per-grant role in place, so every hostile State meets an
	// interrupted revocation.
	postgres.SkipRevokeSteps(c, postgres.StepDrop)
	for who := range sessions {
		for _, roles := range [][]any{nil, {f.group}} {
			st := map[string]any{"v": 1, "mode": "elevation", "role": elev, "account": who}
			if roles != nil {
				st["roles"] = roles
			}
			r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: rawState(t, st)})
			if err != nil {
				t.Fatalf("Revoke with State naming %s: %v", who, err)
			}
			for other, s := range sessions {
				if !alive(t, s) {
					t.Fatalf("a State naming %s (roles %v) made Revoke end the sessions of %s; actions %q", who, roles, other, r.Actions)
				}
			}
			v, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, State: rawState(t, st)})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			for _, cp := range v.Checkpoints {
				if len(evidenceAccounts(cp)) > 0 {
					t.Errorf("Verify checked accounts %v for a State naming %s", evidenceAccounts(cp), who)
				}
			}
		}
	}
	if !alive(t, switched) {
		t.Fatal("the elevated account's session ended before the real State was used")
	}

	// The grant's own State finishes the revocation.
	postgres.SkipRevokeSteps(c, "")
	r := revoke(t, c, id, nil, g)
	if !actionsContain(r, "terminated") {
		t.Errorf("Revoke actions %q: want the account's sessions terminated", r.Actions)
	}
	if alive(t, switched) {
		t.Error("the account's session that ran SET ROLE survived the finished revocation")
	}
	requireGone(t, verify(t, c, id, nil, g))
	for who, s := range sessions {
		if !alive(t, s) {
			t.Errorf("the session of %s ended", who)
		}
	}
}

// TestRevokeWithoutEntitledRolesEndsAccountSessions: when Revoke knows no
// entitled role (no spec, no State, and the per-grant role no longer holds
// one), an elevated account cannot be shown to reach them another way, so
// its sessions — one ran SET ROLE while the membership existed — must end,
// as Verify would require. An empty list used to reach the server as SQL
// NULL, which made every account look covered.
func TestRevokeWithoutEntitledRolesEndsAccountSessions(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_svc"
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)
	id, g := grant(t, c, spec)
	switched := accountConn(t, account)
	if _, err := switched.Exec(ctx, "SET ROLE "+ident(f.group)); err != nil {
		t.Fatal(err)
	}
	f.exec(t, ctx, "REVOKE "+ident(f.group)+" FROM "+ident(g.Info["role"]))

	r := revoke(t, c, id, nil, nil)
	if actionsContain(r, "kept sessions") || !actionsContain(r, "terminated") {
		t.Errorf("Revoke actions %q: want the account's sessions terminated", r.Actions)
	}
	if alive(t, switched) {
		t.Error("the account's session that ran SET ROLE survived Revoke")
	}
	requireGone(t, verify(t, c, id, nil, nil))
}

// TestRevokeRemovesPrivilegesOnSharedObjects: a privilege on a shared
// object (CONNECT on a database) is not ownership: Revoke removes it and
// drops the role. Owning a database stays a conflict.
func TestRevokeRemovesPrivilegesOnSharedObjects(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	db := "ltdb_" + f.id
	f.createDatabase(t, db)
	for _, mode := range []string{postgres.OwnedDrop, postgres.OwnedReassign} {
		t.Run(mode, func(t *testing.T) {
			owner := "ltb_" + f.id + "_" + mode
			f.exec(t, ctx, "CREATE ROLE "+ident(owner)+" NOLOGIN")
			c := f.open(t, func(cfg *postgres.Config) {
				cfg.Owned = mode
				if mode == postgres.OwnedReassign {
					cfg.ReassignTo = owner
				}
			})
			id, g := grant(t, c, f.spec())
			role := g.Info["user"]
			f.exec(t, ctx, "GRANT CONNECT, TEMPORARY ON DATABASE "+ident(db)+" TO "+ident(role))
			conn, err := login(ctx, t, g, db)
			if err != nil {
				t.Fatalf("log in to %s: %v", db, err)
			}
			defer conn.Close(ctx)

			r := revoke(t, c, id, f.spec(), g)
			if !actionsContain(r, "dropped role "+role) {
				t.Errorf("Revoke actions %q: want the role dropped", r.Actions)
			}
			requireGone(t, verify(t, c, id, f.spec(), g))
			if roleExists(t, f.admin, role) {
				t.Error("the role still exists")
			}
			var acl string
			mustScan(t, f.admin.QueryRow(ctx, "SELECT coalesce(datacl::text, '') FROM pg_database WHERE datname = $1", db), &acl)
			if strings.Contains(acl, role) {
				t.Errorf("database ACL still names the role: %s", acl)
			}
		})
	}

	t.Run("owner", func(t *testing.T) {
		owned := "ltdb_" + f.id + "_owned"
		c := f.open(t)
		id, g := grant(t, c, f.spec())
		role := g.Info["user"]
		f.createDatabase(t, owned)
		f.exec(t, ctx, "ALTER DATABASE "+ident(owned)+" OWNER TO "+ident(role))
		_, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Spec: f.spec(), State: g.State})
		if err == nil || !strings.Contains(err.Error(), "owns") {
			t.Fatalf("Revoke of a role that owns a database: %v, want a conflict", err)
		}
		if !strings.Contains(err.Error(), owned) {
			t.Errorf("the conflict does not name the database: %v", err)
		}
		f.exec(t, ctx, "ALTER DATABASE "+ident(owned)+" OWNER TO postgres")
		revoke(t, c, id, f.spec(), g)
		requireGone(t, verify(t, c, id, f.spec(), g))
	})
}
