package postgres_test

import (
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Use and Hold act as the grantee with pgx; after Revoke a new login is
// refused and the held backend has been terminated.
func TestExerciseUseAndHold(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := bg(t)
	id, g := grant(t, c, f.spec())
	req := &connector.ExerciseRequest{GrantID: id, Secret: g.Secret, Info: g.Info, Spec: f.spec()}
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
	if d := held.Describe(); !strings.Contains(d, "pid") || !strings.Contains(d, g.Info["user"]) || strings.Contains(d, g.Secret["password"]) {
		t.Errorf("Describe = %q: want the pid and role, never the password", d)
	}
	revoke(t, c, id, f.spec(), g)
	if err := c.Use(ctx, req); !connector.Denied(err) {
		t.Errorf("Use after Revoke = %v, want a denial", err)
	}
	if err := held.Check(ctx); !connector.Denied(err) {
		t.Errorf("Check after Revoke = %v, want a denial", err)
	}
	if err := c.Use(ctx, &connector.ExerciseRequest{Info: map[string]string{"user": "postgres"}, Secret: map[string]string{"password": "x"}}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Use as a role the connector did not make = %v, want invalid", err)
	}
}
