package connectortest_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/connectortest"
	"github.com/lapsehq/lapse/connector/fake"
)

// broken wraps the fake connector with one defect, to show that the suite
// catches it.
type broken struct {
	*fake.Conn
	defect string
}

func (b *broken) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	if b.defect == "grant-twice-makes-two" && b.Conn.Has(req.GrantID) {
		r := *req
		r.GrantID = req.GrantID + "_2"
		return b.Conn.Grant(ctx, &r)
	}
	resp, err := b.Conn.Grant(ctx, req)
	if err != nil {
		return nil, err
	}
	if b.defect == "state-leaks-secret" {
		resp.State, _ = json.Marshal(map[string]string{"user": resp.Info["user"], "pw": resp.Secret["password"]})
	}
	if b.defect == "no-checkpoints" {
		resp.Checkpoints = nil
	}
	return resp, nil
}

func (b *broken) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	switch {
	case b.defect == "revoke-noop":
		return &connector.RevokeResponse{}, nil
	case b.defect == "revoke-needs-state" && req.State == nil:
		return &connector.RevokeResponse{}, nil
	case b.defect == "revoke-not-idempotent" && !b.Conn.Has(req.GrantID):
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no such user")
	}
	return b.Conn.Revoke(ctx, req)
}

func (b *broken) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	resp, err := b.Conn.Verify(ctx, req)
	if err != nil {
		return nil, err
	}
	for i := range resp.Checkpoints {
		switch b.defect {
		case "verify-always-gone":
			resp.Checkpoints[i].Gone, resp.Checkpoints[i].Residue = true, nil
		case "verify-no-evidence":
			resp.Checkpoints[i].Evidence = nil
		}
	}
	return resp, nil
}

func (b *broken) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	if b.defect == "discover-empty" {
		return &connector.DiscoverResponse{}, nil
	}
	return b.Conn.Discover(ctx, req)
}

func (b *broken) ValidateSpec(spec map[string]any) error {
	if b.defect == "validate-accepts-all" {
		return nil
	}
	return b.Conn.ValidateSpec(spec)
}

func (b *broken) Extend(ctx context.Context, req *connector.ExtendRequest) error {
	if b.defect == "extend-revoked-ok" && !b.Conn.Has(req.GrantID) {
		return nil
	}
	return b.Conn.Extend(ctx, req)
}

func harness(c connector.Connector, f *fake.Conn, killSessions bool) connectortest.Harness {
	return connectortest.Harness{
		Open:     func(t *testing.T) connector.Connector { return c },
		Spec:     map[string]any{"privileges": []any{"read"}},
		BadSpecs: []map[string]any{{"privileges": "read"}, {"nope": true}},
		Use: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error {
			return f.Authenticate(g.Info["user"], g.Secret["password"])
		},
		Hold: func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (func(context.Context) error, func(), error) {
			s, err := f.OpenSession(g.Info["user"], g.Secret["password"])
			if err != nil {
				return nil, nil, err
			}
			if !killSessions {
				// A session on a second, unrelated target that Revoke never
				// reaches: the held session survives.
				return func(ctx context.Context) error { return nil }, s.Close, nil
			}
			return s.Do, s.Close, nil
		},
	}
}

// TestBrokenConnector is the child process: it runs the suite against a
// connector with the defect named in the environment.
func TestBrokenConnector(t *testing.T) {
	defect := os.Getenv("CONNECTORTEST_DEFECT")
	if defect == "" {
		t.Skip("only runs as a child of TestSuiteCatchesDefects")
	}
	f := fake.New(fake.Options{})
	connectortest.Run(t, harness(&broken{Conn: f, defect: defect}, f, defect != "sessions-survive"))
}

func TestSuitePassesCorrectConnector(t *testing.T) {
	f := fake.New(fake.Options{})
	connectortest.Run(t, harness(&broken{Conn: f}, f, true))
}

// TestSuiteCatchesDefects runs the suite in a child process against
// connectors with one known defect each and checks that the subtest meant
// to catch it fails.
func TestSuiteCatchesDefects(t *testing.T) {
	if os.Getenv("CONNECTORTEST_DEFECT") != "" {
		t.Skip("inside a child process")
	}
	cases := map[string]string{
		"revoke-noop":           "RevokeVerifyGone",
		"revoke-needs-state":    "RevokeWithoutState",
		"revoke-not-idempotent": "RevokeNeverGranted",
		"state-leaks-secret":    "NoSecretInStateOrInfo",
		"grant-twice-makes-two": "GrantTwiceOnePrivilege",
		"verify-always-gone":    "GrantUseVerifyActive",
		"verify-no-evidence":    "RevokeVerifyGone",
		"discover-empty":        "Discover",
		"validate-accepts-all":  "ValidateSpec",
		"sessions-survive":      "RevokeVerifyGone",
		"no-checkpoints":        "Checkpoints",
		"extend-revoked-ok":     "Extend",
	}
	for defect, subtest := range cases {
		t.Run(defect, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenConnector$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "CONNECTORTEST_DEFECT="+defect)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a connector with defect %s:\n%s", defect, out)
			}
			if want := "--- FAIL: TestBrokenConnector/" + subtest + " "; !strings.Contains(string(out), want) {
				t.Fatalf("subtest %s did not fail for defect %s:\n%s", subtest, defect, out)
			}
		})
	}
}
