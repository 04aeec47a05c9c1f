package redis_test

import (
	"context"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// Use and Hold act as the grantee with go-redis, on every node; after
// Revoke a new AUTH is refused and every held connection has ended. The
// grant may not even PING: a NOPERM reply still proves the login worked.
func TestExerciseUseAndHold(t *testing.T) {
	for name, nodes := range map[string]func(t *testing.T) []node{
		"single":   func(t *testing.T) []node { return sharedNodes(t) },
		"replicas": func(t *testing.T) []node { return startTopology(t) },
	} {
		t.Run(name, func(t *testing.T) {
			c := openConn(t, nodes(t))
			exercise(t, c, map[string]any{"commands": []any{"get"}, "keys": []any{"lapsetest:*"}})
		})
	}
}

func exercise(t *testing.T, c *lredis.Conn, spec map[string]any) {
	ctx := context.Background()
	id := grantID()
	g := grantFor(t, c, id, spec)
	req := &connector.ExerciseRequest{GrantID: id, Secret: g.Secret, Info: g.Info, Spec: spec}
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
	if d := held.Describe(); !strings.Contains(d, g.Info["username"]) || strings.Contains(d, g.Secret["password"]) {
		t.Errorf("Describe = %q: want the user, never the password", d)
	}
	if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	if err := c.Use(ctx, req); !connector.Denied(err) {
		t.Errorf("Use after Revoke = %v, want a denial", err)
	}
	if err := held.Check(ctx); !connector.Denied(err) {
		t.Errorf("Check after Revoke = %v, want a denial", err)
	}
	if err := held.Check(ctx); !connector.Denied(err) {
		t.Errorf("second Check after Revoke = %v: a held session must not come back", err)
	}
	if err := c.Use(ctx, &connector.ExerciseRequest{Info: map[string]string{"username": "default"}, Secret: map[string]string{"password": "x"}}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Use as default = %v, want invalid", err)
	}
}
