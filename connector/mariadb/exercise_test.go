package mariadb_test

import (
	"context"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// Use and Hold act as the grantee with go-sql-driver/mysql; after Revoke a
// new login is refused and the held connection has been killed.
func TestExerciseUseAndHold(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := context.Background()
	id, g := f.grant(t, c, f.spec())
	req := &connector.ExerciseRequest{GrantID: id, Secret: g.Secret, Info: g.Info}
	if err := c.Use(ctx, req); err != nil {
		t.Fatalf("Use of an active grant: %v", err)
	}
	held, err := c.Hold(ctx, req)
	if err != nil {
		t.Fatalf("Hold: %v", err)
	}
	defer held.Close()
	if err := held.Check(ctx); err != nil {
		t.Fatalf("Check of an active grant: %v", err)
	}
	if d := held.Describe(); !strings.Contains(d, "connection") || !strings.Contains(d, g.Info["user"]) || strings.Contains(d, g.Secret["password"]) {
		t.Errorf("Describe = %q: want the connection and user, never the password", d)
	}
	mustRevoke(t, c, id, g)
	if err := c.Use(ctx, req); !connector.Denied(err) {
		t.Errorf("Use after Revoke = %v, want a denial", err)
	}
	if err := held.Check(ctx); !connector.Denied(err) {
		t.Errorf("Check after Revoke = %v, want a denial", err)
	}
	if err := c.Use(ctx, &connector.ExerciseRequest{Info: map[string]string{"user": "root"}, Secret: map[string]string{"password": "x"}}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Use as root = %v, want invalid", err)
	}
}

// unsafe_skip_session_kill is the weakened configuration lapse zsp test is
// shown to catch: Revoke leaves the held connection running, the grant has
// no sessions checkpoint, and Verify reports the account gone — while the
// held session still works. Off by default.
func TestUnsafeSkipSessionKillLeavesSessions(t *testing.T) {
	if (mariadb.Config{}).UnsafeSkipSessionKill {
		t.Fatal("unsafe_skip_session_kill must be off by default")
	}
	f := newFixture(t)
	c := f.open(t, func(cfg *mariadb.Config) { cfg.UnsafeSkipSessionKill = true })
	ctx := context.Background()
	id, g := f.grant(t, c, f.spec())
	if len(g.Checkpoints) != 1 || g.Checkpoints[0].Kind != lapse.CheckpointTarget {
		t.Fatalf("checkpoints = %+v, want the account only", g.Checkpoints)
	}
	req := &connector.ExerciseRequest{GrantID: id, Secret: g.Secret, Info: g.Info}
	held, err := c.Hold(ctx, req)
	if err != nil {
		t.Fatalf("Hold: %v", err)
	}
	defer held.Close()
	resp := mustRevoke(t, c, id, g)
	if !strings.Contains(strings.Join(resp.Actions, "\n"), "UNSAFE") {
		t.Errorf("Revoke actions %q do not say the sessions were left", resp.Actions)
	}
	v := mustVerify(t, c, id, g)
	if !v.Gone() || len(v.Checkpoints) != 1 {
		t.Fatalf("Verify = %+v: want the account gone and nothing else checked", v.Checkpoints)
	}
	if err := c.Use(ctx, req); !connector.Denied(err) {
		t.Errorf("Use after Revoke = %v, want a denial (the account is dropped)", err)
	}
	if err := held.Check(ctx); err != nil {
		t.Errorf("Check after Revoke = %v: the weakened configuration should have left the session working", err)
	}
}
