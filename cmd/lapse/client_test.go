package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var (
	alice = lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Name: "Alice", Groups: []string{"eng"}, Scopes: []string{"read", "request"}, CredentialID: "abcdefghijkl"}
	bob   = lapse.Principal{ID: "bob", Kind: lapse.KindHuman, Name: "Bob"}
)

const (
	reqID   = "req_01jn0000000000000000000000"
	grantID = "gr_01jn0000000000000000000000"
	// secretValue is the credential secret the tests hand out; it may only
	// ever appear in the output of a credentials print.
	secretValue = "s3cr3t-value-that-is-shown-once"
)

func pendingRequest() *lapse.Request {
	return &lapse.Request{
		ID: reqID, Requester: alice, Entitlement: "prod-db/read", Duration: lapse.Duration(15 * time.Minute),
		Reason: "INC-1: check lag", Hash: "hash-v1", State: lapse.RequestPending, Required: 1,
		CreatedAt: testNow, ExpiresAt: testNow.Add(time.Hour), Version: 1,
	}
}

func approvedRequest() *lapse.Request {
	r := pendingRequest()
	r.State = lapse.RequestApproved
	r.GrantID = grantID
	r.Approvals = []*lapse.Approval{{RequestID: reqID, Approver: bob, Decision: lapse.DecisionApprove, Comment: "ok", RequestHash: "hash-v1", CreatedAt: testNow.Add(time.Minute)}}
	r.DecidedAt = testNow.Add(time.Minute)
	return r
}

func grantIn(state lapse.GrantState) *lapse.Grant {
	return &lapse.Grant{
		ID: grantID, RequestID: reqID, Principal: alice, Entitlement: "prod-db/read", Target: "prod-db",
		State: state, StartsAt: testNow, ExpiresAt: testNow.Add(15 * time.Minute), CreatedAt: testNow,
		Info: map[string]string{"user": "lapse_gr_01jn"},
	}
}

func passwordCreds() *lapse.Credentials {
	return &lapse.Credentials{
		GrantID: grantID, Target: "prod-db", ExpiresAt: testNow.Add(15 * time.Minute),
		Secret: map[string]string{"password": secretValue},
		Info:   map[string]string{"user": "lapse_gr_01jn", "host": "db.internal:5432"},
	}
}

func TestConnectionDefaults(t *testing.T) {
	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	c.mustRun("whoami")
	if c.cfg.Server != defaultAddr || c.cfg.Token != testToken || c.cfg.Output != outputTable {
		t.Fatalf("config = %+v", c.cfg)
	}
}

func TestServerFlagBeatsEnv(t *testing.T) {
	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	c.env[envAddr] = "https://lapse.example.com/"
	c.mustRun("whoami")
	if c.cfg.Server != "https://lapse.example.com" {
		t.Errorf("server from env = %q", c.cfg.Server)
	}
	c.mustRun("whoami", "--server", "http://127.0.0.1:9999")
	if c.cfg.Server != "http://127.0.0.1:9999" {
		t.Errorf("server from flag = %q", c.cfg.Server)
	}
}

func TestServerURLChecks(t *testing.T) {
	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	for _, bad := range []string{"ftp://x", "127.0.0.1:8700", "http://user:pw@host"} {
		_, stderr, code := c.run("whoami", "--server", bad)
		if code != exitUsage {
			t.Errorf("--server %q: exit %d, want %d", bad, code, exitUsage)
		}
		assertContains(t, stderr, "field: server")
		assertNotContains(t, stderr, "pw@")
	}
	_, stderr := c.mustRun("whoami", "--server", "http://lapse.example.com")
	assertContains(t, stderr, "warning", "plain http")
	_, stderr = c.mustRun("whoami", "--server", "http://localhost:8700")
	assertNotContains(t, stderr, "warning")
}

func writeTokenFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask may have narrowed it
		t.Fatal(err)
	}
	return p
}

func TestTokenPrecedence(t *testing.T) {
	fileTok := "lapse_mnopqrstuvwx_ZmlsZS10b2tlbi1mcm9tLWEtZmlsZS1vbi1kaXNrLTEyMzQ1Njc"
	envFileTok := "lapse_yzabcdefghij_ZW52LWZpbGUtdG9rZW4tZnJvbS1MQVBTRV9UT0tFTl9GSUxF"
	flagFile := writeTokenFile(t, fileTok+"\n", 0o600)
	envFile := writeTokenFile(t, envFileTok+"\n", 0o600)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"env token", map[string]string{envToken: testToken}, nil, testToken},
		{"env token file", map[string]string{envTokenFile: envFile}, nil, envFileTok},
		{"env token beats env token file", map[string]string{envToken: testToken, envTokenFile: envFile}, nil, testToken},
		{"flag token beats env token", map[string]string{envToken: testToken}, []string{"--token", "lapse_flagflagflag_dG9rZW4"}, "lapse_flagflagflag_dG9rZW4"},
		{"flag token file beats env token", map[string]string{envToken: testToken}, []string{"--token-file", flagFile}, fileTok},
		{"flag token beats flag token file", nil, []string{"--token-file", flagFile, "--token", "lapse_flagflagflag_dG9rZW4"}, "lapse_flagflagflag_dG9rZW4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.env = tc.env
			if c.env == nil {
				c.env = map[string]string{}
			}
			c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
			stdout, stderr := c.mustRun(append([]string{"whoami"}, tc.args...)...)
			if c.cfg.Token != tc.want {
				t.Fatalf("token = %q, want %q", c.cfg.Token, tc.want)
			}
			assertNotContains(t, stdout+stderr, fileTok, envFileTok, "lapse_flagflagflag_dG9rZW4")
		})
	}
}

func TestNoCredential(t *testing.T) {
	c := newCLI(t)
	c.env = map[string]string{}
	_, stderr, code := c.run("whoami")
	if code != exitError {
		t.Fatalf("exit %d, want %d", code, exitError)
	}
	assertContains(t, stderr, "(code: unauthorized)", envToken, envTokenFile)
	if c.svc.called("Whoami") != 0 {
		t.Error("called the server without a credential")
	}
}

func TestTokenFileChecks(t *testing.T) {
	c := newCLI(t)
	c.env = map[string]string{}
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }

	open := writeTokenFile(t, testToken+"\n", 0o644)
	_, stderr := c.mustRun("whoami", "--token-file", open)
	assertContains(t, stderr, "warning", "readable by group or others", "chmod 600")
	if c.cfg.Token != testToken {
		t.Errorf("token = %q", c.cfg.Token)
	}

	private := writeTokenFile(t, testToken+"\n", 0o600)
	_, stderr = c.mustRun("whoami", "--token-file", private)
	assertNotContains(t, stderr, "warning")

	for name, path := range map[string]string{
		"missing":   filepath.Join(t.TempDir(), "nope"),
		"empty":     writeTokenFile(t, "\n", 0o600),
		"two lines": writeTokenFile(t, testToken+"\nsecond-line-secret\n", 0o600),
	} {
		_, stderr, code := c.run("whoami", "--token-file", path)
		if code != exitError || !strings.Contains(stderr, "field: token-file") {
			t.Errorf("%s token file: exit %d, stderr %q", name, code, stderr)
		}
		assertNotContains(t, stderr, "second-line-secret")
	}
}

func TestOutputFormatPrecedence(t *testing.T) {
	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	c.env[envOutput] = "json"
	stdout, _ := c.mustRun("whoami")
	assertJSON(t, stdout, alice)
	stdout, _ = c.mustRun("whoami", "-o", "table")
	assertContains(t, stdout, "ID", "alice", "Scopes", "read, request")

	_, stderr, code := c.run("whoami", "-o", "yaml")
	if code != exitUsage {
		t.Errorf("-o yaml: exit %d, want %d", code, exitUsage)
	}
	assertContains(t, stderr, "(code: invalid, field: output)", "Run 'lapse whoami --help' for usage.")
}

func TestUsageErrors(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{
		{"request"},
		{"request", "a", "b"},
		{"request", "x", "--nope"},
		{"request", "x", "--for", "banana"},
		{"request", "x", "--for", "-5m"},
		{"request", "x", "--for", "100000h"},
		{"request", "x", "--wait", "--timeout", "0s"},
		{"whoami", "extra"},
		{"requests", "--state", "bogus"},
		{"requests", "--limit", "100000"},
		{"grants", "--state", "bogus"},
		{"revoke", grantID},
		{"apikey", "frobnicate"},
		{"apikey", "create", "--scope", "read"},
		{"apikey", "create", "--principal", "ci"},
		{"apikey", "create", "--principal", "ci", "--scope", "root"},
		{"apikey", "create", "--principal", "ci", "--scope", "read", "--kind", "robot"},
		{"apikey", "create", "--principal", "ci", "--scope", "read", "--ttl", "0d"},
	} {
		stdout, stderr, code := c.run(args...)
		if code != exitUsage {
			t.Errorf("lapse %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), code, exitUsage, stderr)
		}
		if !strings.HasPrefix(stderr, "lapse: ") || stdout != "" {
			t.Errorf("lapse %s: stdout %q, stderr %q", strings.Join(args, " "), stdout, stderr)
		}
	}
	if len(c.svc.calls) != 0 {
		t.Errorf("usage errors reached the server: %v", c.svc.calls)
	}
	_, stderr, _ := c.run("request", "x", "--for", "banana")
	assertContains(t, stderr, "(code: invalid, field: duration)")
}

func TestServerErrorReport(t *testing.T) {
	c := newCLI(t)
	c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
		return nil, &lapse.Error{Code: lapse.EINVALID, Field: "duration", Message: "longer than the maximum of 1h", Err: os.ErrDeadlineExceeded}
	}
	stdout, stderr, code := c.run("request", "prod-db/read", "--for", "8h")
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	if stdout != "" {
		t.Errorf("stdout = %q", stdout)
	}
	if want := "lapse: longer than the maximum of 1h (code: invalid, field: duration)\n"; stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
}

func TestHelpDocumentsConnection(t *testing.T) {
	c := newCLI(t)
	for _, cmd := range []string{"request", "grants", "apikey create"} {
		stdout, _ := c.mustRun(append(strings.Fields(cmd), "--help")...)
		assertContains(t, stdout, envAddr, envToken, envTokenFile, envOutput, "--server", "--token-file", "-o, --output")
	}
}

func TestWhoamiJSON(t *testing.T) {
	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	stdout, _ := c.mustRun("whoami", "-o", "json")
	assertJSON(t, stdout, alice)
}

func TestEntitlements(t *testing.T) {
	c := newCLI(t)
	list := []*lapse.Entitlement{
		{Name: "prod-db/read", Target: "prod-db", DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: lapse.Duration(8 * time.Hour), RequireReason: true, Approval: lapse.ApprovalRule{Required: 2}},
		{Name: "api/token", Target: "api", DefaultDuration: lapse.Duration(5 * time.Minute), MaxDuration: lapse.Duration(time.Hour), Approval: lapse.ApprovalRule{Auto: true},
			Exposure: &lapse.Exposure{Bound: lapse.Duration(40 * time.Second), Limit: lapse.Duration(10 * time.Second), Exceeded: true}},
	}
	c.svc.entitlements = func(context.Context) ([]*lapse.Entitlement, error) { return list, nil }
	stdout, _ := c.mustRun("entitlements")
	assertContains(t, stdout, "NAME", "prod-db/read", "15m", "8h", "2 approvals", "reason", "api/token", "auto", "EXPOSURE", "40s (limit 10s) over: refuse")
	stdout, _ = c.mustRun("entitlements", "-o", "json")
	assertJSON(t, stdout, map[string]any{"entitlements": list})
}

func TestRequestsFilters(t *testing.T) {
	c := newCLI(t)
	var got lapse.RequestFilter
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	c.svc.listRequests = func(_ context.Context, f lapse.RequestFilter) ([]*lapse.Request, error) {
		got = f
		return []*lapse.Request{pendingRequest()}, nil
	}
	stdout, _ := c.mustRun("requests", "--mine", "--state", "pending", "--limit", "5")
	want := lapse.RequestFilter{State: lapse.RequestPending, RequesterID: "alice", Limit: 5}
	if got != want {
		t.Errorf("filter = %+v, want %+v", got, want)
	}
	assertContains(t, stdout, "ID", "APPROVALS", reqID, "pending", "prod-db/read", "15m", "0/1", "now (12:00)", "INC-1: check lag")

	c.mustRun("requests", "--approvable")
	if want := (lapse.RequestFilter{Approvable: true}); got != want {
		t.Errorf("filter = %+v, want %+v", got, want)
	}

	stdout, _ = c.mustRun("requests", "-o", "json")
	assertJSON(t, stdout, map[string]any{"requests": []*lapse.Request{pendingRequest()}})

	c.svc.listRequests = func(context.Context, lapse.RequestFilter) ([]*lapse.Request, error) { return nil, nil }
	stdout, _ = c.mustRun("requests", "-o", "json")
	assertJSON(t, stdout, map[string]any{"requests": []any{}})
	stdout, stderr := c.mustRun("requests")
	if stdout != "" || !strings.Contains(stderr, "No requests") {
		t.Errorf("empty list: stdout %q stderr %q", stdout, stderr)
	}
}

func TestRequestsTableEscapesTerminalControl(t *testing.T) {
	c := newCLI(t)
	r := pendingRequest()
	r.Reason = "fine\x1b]0;pwned\x07\x1b[2J\rAPPROVED\u202e"
	r.Requester.Name = "Mallory\x1b[31m"
	c.svc.listRequests = func(context.Context, lapse.RequestFilter) ([]*lapse.Request, error) { return []*lapse.Request{r}, nil }
	stdout, _ := c.mustRun("requests")
	assertNotContains(t, stdout, "\x1b", "\r", "\a", "\u202e")
	assertContains(t, stdout, `\x1b]0;pwned`)
}

func TestRequestFiled(t *testing.T) {
	c := newCLI(t)
	var got lapse.RequestInput
	c.svc.create = func(_ context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
		got = in
		return &lapse.RequestResult{Request: pendingRequest()}, nil
	}
	stdout, stderr := c.mustRun("request", "prod-db/read", "--for", "15m", "--reason", "INC-1: check lag", "--ticket", "INC-1", "--task", "t-9")
	want := lapse.RequestInput{Entitlement: "prod-db/read", Duration: lapse.Duration(15 * time.Minute), Reason: "INC-1: check lag", Ticket: "INC-1", TaskID: "t-9"}
	if got != want {
		t.Errorf("input = %+v, want %+v", got, want)
	}
	assertContains(t, stdout, "Filed request "+reqID, "pending", "Approvals", "0/1", "Times out", "2026-03-01 13:00:00 UTC (in 1h)")
	assertContains(t, stderr, "Waiting for 1 approval", "lapse cancel "+reqID)
	if c.svc.called("GetRequest") != 0 {
		t.Error("polled without --wait")
	}

	stdout, _ = c.mustRun("request", "prod-db/read", "-o", "json")
	assertJSON(t, stdout, lapse.RequestResult{Request: pendingRequest()})
	if got.Duration != 0 {
		t.Errorf("no --for sent duration %v", got.Duration)
	}
}

// autoApproved is a create response that carries the credentials.
func autoApproved() *lapse.RequestResult {
	r := approvedRequest()
	r.Required = 0
	r.Approvals = nil
	return &lapse.RequestResult{Request: r, Grant: grantIn(lapse.GrantActive), Credentials: passwordCreds()}
}

func TestRequestAutoApprovedPrintsCredentialsAtOnce(t *testing.T) {
	for _, wait := range []bool{false, true} {
		c := newCLI(t)
		c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) { return autoApproved(), nil }
		args := []string{"request", "prod-db/read"}
		if wait {
			args = append(args, "--wait")
		}
		stdout, stderr := c.mustRun(args...)
		assertContains(t, stdout, secretValue, "lapse_gr_01jn", "db.internal:5432")
		assertContains(t, stderr, "shown once")
		assertNotContains(t, stderr, secretValue)
		if n := len(c.svc.calls); n != 1 {
			t.Errorf("wait=%v: calls %v, want only CreateRequest", wait, c.svc.calls)
		}

		stdout, _ = c.mustRun(append(args, "-o", "json")...)
		assertJSON(t, stdout, autoApproved())
	}
}

// scriptWait makes the fake server move a request through pending (twice),
// approved, a provisioning grant and an active one, and hand out credentials.
func scriptWait(c *cli) {
	c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
		return &lapse.RequestResult{Request: pendingRequest()}, nil
	}
	reqs := sequence(pendingRequest(), pendingRequest(), approvedRequest())
	c.svc.getRequest = func(_ context.Context, id string) (*lapse.Request, error) {
		if id != reqID {
			return nil, lapse.Errorf(lapse.ENOTFOUND, "no such request")
		}
		return reqs(), nil
	}
	grants := sequence(grantIn(lapse.GrantProvisioning), grantIn(lapse.GrantProvisioning), grantIn(lapse.GrantActive))
	c.svc.getGrant = func(_ context.Context, id string) (*lapse.Grant, error) {
		if id != grantID {
			return nil, lapse.Errorf(lapse.ENOTFOUND, "no such grant")
		}
		return grants(), nil
	}
	c.svc.claim = func(_ context.Context, id string) (*lapse.Credentials, error) {
		if id != grantID {
			return nil, lapse.Errorf(lapse.ENOTFOUND, "no such grant")
		}
		return passwordCreds(), nil
	}
}

func TestRequestWaitLineMode(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	stdout, stderr := c.mustRun("request", "prod-db/read", "--wait")
	assertContains(t, stdout, "password", secretValue, "user", "lapse_gr_01jn")
	wantLines := []string{
		reqID + " pending — 0/1 approvals",
		reqID + " approved — 1/1 approvals — grant " + grantID,
		grantID + " provisioning",
		grantID + " active",
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !strings.HasPrefix(l, "Warning:") {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(wantLines, "\n") {
		t.Errorf("state lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantLines, "\n"))
	}
	assertNotContains(t, stderr, "\r", "\x1b", secretValue)
	if n := c.svc.called("ClaimCredentials"); n != 1 {
		t.Errorf("claimed %d times", n)
	}
	if c.svc.called("CancelRequest") != 0 {
		t.Error("cancelled the request")
	}
}

func TestRequestWaitBackoff(t *testing.T) {
	c := newCLI(t)
	c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
		return &lapse.RequestResult{Request: pendingRequest()}, nil
	}
	polls := 0
	c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) {
		polls++
		if polls < 8 {
			return pendingRequest(), nil
		}
		r := pendingRequest()
		r.State = lapse.RequestDenied
		return r, nil
	}
	c.run("request", "prod-db/read", "--wait")
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}
	if len(c.sleeps) != len(want) {
		t.Fatalf("sleeps = %v, want %v", c.sleeps, want)
	}
	for i := range want {
		if c.sleeps[i] != want[i] {
			t.Fatalf("sleeps = %v, want %v", c.sleeps, want)
		}
	}
}

func TestRequestWaitTerminal(t *testing.T) {
	c := newCLI(t)
	c.tty = true
	scriptWait(c)
	stdout, stderr := c.mustRun("request", "prod-db/read", "--wait")
	assertContains(t, stdout, secretValue)
	assertContains(t, stderr, "\r\x1b[2K⠋ "+reqID+" pending — 0/1 approvals — waiting 0s", "waiting 1s", grantID+" provisioning", "✓ "+reqID+" approved")
	if strings.Count(stderr, "\n") > 3 {
		t.Errorf("terminal mode printed line after line:\n%q", stderr)
	}
	// Every redraw starts by returning to the line start and clearing it.
	for _, part := range strings.Split(stderr, "\r\x1b[2K")[1:] {
		if strings.Contains(part, "waiting") && strings.Contains(part, "\n") {
			t.Errorf("status line ends a line: %q", part)
		}
	}
	assertNotContains(t, stderr, secretValue)
}

func TestRequestWaitJSON(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	stdout, stderr := c.mustRun("request", "prod-db/read", "--wait", "-o", "json")
	assertJSON(t, stdout, lapse.RequestResult{Request: approvedRequest(), Grant: grantIn(lapse.GrantActive), Credentials: passwordCreds()})
	assertNotContains(t, stderr, secretValue)
}

func TestRequestWaitDecidedAgainst(t *testing.T) {
	for _, tc := range []struct {
		state lapse.RequestState
		want  []string
	}{
		{lapse.RequestDenied, []string{`denied by bob: "not during the freeze"`}},
		{lapse.RequestExpired, []string{"expired without a decision", "0 of 1"}},
		{lapse.RequestCancelled, []string{"cancelled"}},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			c := newCLI(t)
			c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
				return &lapse.RequestResult{Request: pendingRequest()}, nil
			}
			decided := pendingRequest()
			decided.State = tc.state
			if tc.state == lapse.RequestDenied {
				decided.Approvals = []*lapse.Approval{{Approver: bob, Decision: lapse.DecisionDeny, Comment: "not during the freeze"}}
				decided.DecisionNote = "denied by bob"
			}
			reqs := sequence(pendingRequest(), decided)
			c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) { return reqs(), nil }
			stdout, stderr, code := c.run("request", "prod-db/read", "--wait")
			if code != exitError {
				t.Fatalf("exit %d, want %d", code, exitError)
			}
			if stdout != "" {
				t.Errorf("stdout = %q", stdout)
			}
			assertContains(t, stderr, append(tc.want, "lapse: request "+reqID+" was "+string(tc.state))...)
			assertNotContains(t, stderr, "(denied by bob)")
			if c.svc.called("GetGrant")+c.svc.called("ClaimCredentials") != 0 {
				t.Errorf("went on after %s: %v", tc.state, c.svc.calls)
			}
		})
	}
}

func TestRequestWaitTimeout(t *testing.T) {
	c := newCLI(t)
	c.svc.create = func(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
		return &lapse.RequestResult{Request: pendingRequest()}, nil
	}
	c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) { return pendingRequest(), nil }
	_, stderr, code := c.run("request", "prod-db/read", "--wait", "--timeout", "10s")
	if code != exitError {
		t.Fatalf("exit %d, want %d", code, exitError)
	}
	assertContains(t, stderr, "gave up waiting after 10s", "still pending", "was not cancelled", "lapse cancel "+reqID)
	if c.svc.called("CancelRequest") != 0 {
		t.Error("timeout cancelled the request")
	}
	var total time.Duration
	for _, s := range c.sleeps {
		total += s
	}
	if total != 10*time.Second {
		t.Errorf("waited %v, want exactly the 10s timeout", total)
	}
}

func TestRequestWaitInterrupted(t *testing.T) {
	c := newCLI(t)
	c.tty = true
	scriptWait(c)
	c.onSleep = func(n int) {
		if n == 3 {
			c.interruptNow() // Ctrl-C
		}
	}
	stdout, stderr, code := c.run("request", "prod-db/read", "--wait")
	if code != exitInterrupted {
		t.Fatalf("exit %d, want %d\n%s", code, exitInterrupted, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q", stdout)
	}
	assertContains(t, stderr, "stopped waiting", "still pending", "was not cancelled")
	if !strings.HasSuffix(stderr, "\n") || strings.HasSuffix(strings.TrimSuffix(stderr, "\n"), "waiting") {
		t.Errorf("stderr does not end cleanly: %q", stderr)
	}
	if c.svc.called("CancelRequest") != 0 {
		t.Error("Ctrl-C cancelled the request")
	}
}

func TestRequestWaitRetriesTransientErrors(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	steps := sequence[error](nil, lapse.Errorf(lapse.EUNAVAILABLE, "store down"), nil)
	base := c.svc.getRequest
	c.svc.getRequest = func(ctx context.Context, id string) (*lapse.Request, error) {
		if err := steps(); err != nil {
			return nil, err
		}
		return base(ctx, id)
	}
	stdout, stderr := c.mustRun("request", "prod-db/read", "--wait")
	assertContains(t, stdout, secretValue)
	assertContains(t, stderr, "retrying: store down (code: unavailable)")
}

func TestRequestWaitStopsOnPermanentError(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "invalid, expired or revoked credential")
	}
	_, stderr, code := c.run("request", "prod-db/read", "--wait")
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, stderr, "(code: unauthorized)")
}

func TestRequestWaitProvisionFailed(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	failed := grantIn(lapse.GrantRevoking)
	failed.EndReason = lapse.EndProvisionFailed
	failed.LastError = "target unreachable"
	c.svc.getGrant = func(context.Context, string) (*lapse.Grant, error) { return failed, nil }
	_, stderr, code := c.run("request", "prod-db/read", "--wait")
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, stderr, "ended before it became active", "provision_failed", "target unreachable")
	if c.svc.called("ClaimCredentials") != 0 {
		t.Error("claimed credentials of a failed grant")
	}
}

func TestApproveBindsToHash(t *testing.T) {
	for _, verb := range []string{"approve", "deny"} {
		t.Run(verb, func(t *testing.T) {
			c := newCLI(t)
			c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) { return pendingRequest(), nil }
			var got lapse.DecisionInput
			decide := func(_ context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
				if id != reqID {
					t.Errorf("decided %q", id)
				}
				got = in
				if verb == "deny" {
					r := pendingRequest()
					r.State = lapse.RequestDenied
					return r, nil
				}
				return approvedRequest(), nil
			}
			c.svc.approve, c.svc.deny = decide, decide
			stdout, _ := c.mustRun(verb, reqID, "--comment", "looks fine")
			if got != (lapse.DecisionInput{Comment: "looks fine", RequestHash: "hash-v1"}) {
				t.Errorf("decision input = %+v", got)
			}
			if verb == "approve" {
				assertContains(t, stdout, "Approved alice's request "+reqID, "now approved", "Grant", grantID, "approve   bob")
			} else {
				assertContains(t, stdout, "Denied alice's request "+reqID, "now denied")
			}
			stdout, _ = c.mustRun(verb, reqID, "-o", "json")
			if verb == "approve" {
				assertJSON(t, stdout, approvedRequest())
			}
		})
	}
}

func TestApproveConflict(t *testing.T) {
	c := newCLI(t)
	c.svc.getRequest = func(context.Context, string) (*lapse.Request, error) { return pendingRequest(), nil }
	c.svc.approve = func(context.Context, string, lapse.DecisionInput) (*lapse.Request, error) {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "you cannot approve your own request")
	}
	_, stderr, code := c.run("approve", reqID)
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, stderr, "(code: forbidden)")
}

func TestCancel(t *testing.T) {
	c := newCLI(t)
	c.svc.cancel = func(_ context.Context, id string) (*lapse.Request, error) {
		r := pendingRequest()
		r.State = lapse.RequestCancelled
		return r, nil
	}
	stdout, _ := c.mustRun("cancel", reqID)
	assertContains(t, stdout, "Cancelled request "+reqID, "now cancelled")
}

func TestGrantsFilters(t *testing.T) {
	c := newCLI(t)
	var got lapse.GrantFilter
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	revoked := grantIn(lapse.GrantRevoked)
	revoked.ID = "gr_01jn0000000000000000000001"
	revoked.EndReason = lapse.EndReleased
	revoked.RevokedAt = testNow.Add(-2 * time.Hour)
	list := []*lapse.Grant{grantIn(lapse.GrantActive), revoked}
	c.svc.listGrants = func(_ context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error) {
		got = f
		return list, nil
	}
	stdout, _ := c.mustRun("grants", "--mine", "--live", "--state", "active", "--limit", "7")
	if want := (lapse.GrantFilter{State: lapse.GrantActive, PrincipalID: "alice", Live: true, Limit: 7}); got != want {
		t.Errorf("filter = %+v, want %+v", got, want)
	}
	assertContains(t, stdout, grantID, "active", "in 15m (12:15)", "2h ago (10:00) released")
	stdout, _ = c.mustRun("grants", "-o", "json")
	assertJSON(t, stdout, map[string]any{"grants": list})
}

func verifiedGrant() *lapse.Grant {
	g := grantIn(lapse.GrantRevoked)
	g.EndReason = lapse.EndReleased
	g.CredentialsClaimed = true
	g.ActivatedAt = testNow.Add(-20 * time.Minute)
	g.RevokeStartedAt = testNow.Add(-2 * time.Minute)
	g.RevokedAt = testNow.Add(-time.Minute)
	g.Checkpoints = []*lapse.Checkpoint{
		{GrantID: grantID, Name: "prod-db", Kind: lapse.CheckpointTarget, CreatedAt: testNow.Add(-20 * time.Minute),
			RevokedAt: testNow.Add(-2 * time.Minute), VerifiedAt: testNow.Add(-time.Minute),
			Evidence: json.RawMessage(`{"role_exists":false,"backends":0,"login_probe":"rejected"}`)},
		{GrantID: grantID, Name: "prod-db/sessions", Kind: lapse.CheckpointSessions, CreatedAt: testNow.Add(-20 * time.Minute),
			Residue: []string{"pid 4242 still connected"}},
	}
	g.Events = []*lapse.Event{
		{Seq: 10, Time: testNow.Add(-20 * time.Minute), Type: lapse.EventGrantProvisioned, ActorID: "engine", Channel: "engine", GrantID: grantID, Outcome: "ok"},
		{Seq: 11, Time: testNow.Add(-time.Minute), Type: lapse.EventGrantRevoked, Channel: "engine", GrantID: grantID, Outcome: "ok", Data: json.RawMessage(`{"actions":["dropped role"]}`)},
	}
	return g
}

func TestGrantShow(t *testing.T) {
	c := newCLI(t)
	c.svc.getGrant = func(_ context.Context, id string) (*lapse.Grant, error) {
		if id != grantID {
			return nil, lapse.Errorf(lapse.ENOTFOUND, "grant not found")
		}
		return verifiedGrant(), nil
	}
	stdout, _ := c.mustRun("grant", grantID)
	assertContains(t, stdout,
		"State", "revoked", "End reason", "released", "Credentials", "claimed",
		"Revoked", "2026-03-01 11:59:00 UTC (1m ago)",
		"Checkpoints:", "NAME", "VERIFIED", "EVIDENCE",
		"backends=0, login_probe=rejected, role_exists=false",
		"residue: pid 4242 still connected",
		"History:", "grant.provisioned", "grant.revoked", `actions=["dropped role"]`,
	)
	stdout, _ = c.mustRun("grant", grantID, "-o", "json")
	assertJSON(t, stdout, verifiedGrant())

	_, stderr, code := c.run("grant", "gr_unknown")
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, stderr, "lapse: grant not found (code: not_found)")
}

func TestCredentials(t *testing.T) {
	c := newCLI(t)
	c.svc.claim = func(context.Context, string) (*lapse.Credentials, error) { return passwordCreds(), nil }
	stdout, stderr := c.mustRun("credentials", grantID)
	assertContains(t, stdout, "Grant", grantID, "Target", "prod-db", "password", secretValue, "host", "db.internal:5432")
	if strings.Count(stdout, secretValue) != 1 {
		t.Errorf("secret printed %d times", strings.Count(stdout, secretValue))
	}
	assertNotContains(t, stdout, "Authorization")
	assertContains(t, stderr, "shown once")
	assertNotContains(t, stderr, secretValue)

	stdout, _ = c.mustRun("credentials", grantID, "-o", "json")
	assertJSON(t, stdout, passwordCreds())

	c.svc.claim = func(context.Context, string) (*lapse.Credentials, error) {
		return nil, lapse.Errorf(lapse.EGONE, "credentials were already claimed")
	}
	_, stderr, code := c.run("credentials", grantID)
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, stderr, "(code: gone)")
}

func TestCredentialsTokenBearerLine(t *testing.T) {
	c := newCLI(t)
	jwt := "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
	c.svc.claim = func(context.Context, string) (*lapse.Credentials, error) {
		return &lapse.Credentials{GrantID: grantID, Target: "api", ExpiresAt: testNow.Add(5 * time.Minute),
			Secret: map[string]string{"token": jwt}, Info: map[string]string{"audience": "payments-api"}}, nil
	}
	stdout, stderr := c.mustRun("credentials", grantID)
	assertContains(t, stdout, "Authorization: Bearer "+jwt+"\n", "audience", "payments-api")
	assertNotContains(t, stderr, jwt)
}

func TestCredentialsMultilineSecret(t *testing.T) {
	c := newCLI(t)
	key := "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3NzaC1yc2E\nQUJDREVG\n-----END OPENSSH PRIVATE KEY-----\n"
	c.svc.claim = func(context.Context, string) (*lapse.Credentials, error) {
		return &lapse.Credentials{GrantID: grantID, Target: "hosts", Secret: map[string]string{"private_key": key}}, nil
	}
	stdout, _ := c.mustRun("credentials", grantID)
	assertContains(t, stdout, "private_key:\n"+key)
}

func TestRelease(t *testing.T) {
	c := newCLI(t)
	var got lapse.ReleaseInput
	c.svc.release = func(_ context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error) {
		got = in
		return verifiedGrant(), nil
	}
	stdout, _ := c.mustRun("release", grantID)
	if !got.Wait {
		t.Error("release did not wait by default")
	}
	assertContains(t, stdout, "Released "+grantID+": now revoked.", "Checkpoints:")

	stdout, _ = c.mustRun("release", grantID, "--no-wait", "-o", "json")
	if got.Wait {
		t.Error("--no-wait waited")
	}
	assertJSON(t, stdout, verifiedGrant())

	failing := grantIn(lapse.GrantRevokeFailed)
	failing.LastError = "connection refused"
	c.svc.release = func(context.Context, string, lapse.ReleaseInput) (*lapse.Grant, error) { return failing, nil }
	stdout, stderr, code := c.run("release", grantID)
	if code != exitError {
		t.Fatalf("unverified release: exit %d", code)
	}
	assertContains(t, stdout, "revoke_failed")
	assertContains(t, stderr, "not verified yet", "connection refused", "keeps retrying")

	// Without waiting, a grant still revoking is the expected answer.
	c.svc.release = func(context.Context, string, lapse.ReleaseInput) (*lapse.Grant, error) {
		return grantIn(lapse.GrantRevoking), nil
	}
	c.mustRun("release", grantID, "--no-wait")
}

func TestReleaseInterrupted(t *testing.T) {
	c := newCLI(t)
	c.svc.release = func(ctx context.Context, _ string, _ lapse.ReleaseInput) (*lapse.Grant, error) {
		c.interruptNow()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, stderr, code := c.run("release", grantID)
	if code != exitInterrupted {
		t.Fatalf("exit %d, want %d", code, exitInterrupted)
	}
	assertContains(t, stderr, "stopped waiting", "lapse grant "+grantID)
}

func TestRevoke(t *testing.T) {
	c := newCLI(t)
	var got lapse.RevokeInput
	c.svc.revoke = func(_ context.Context, id string, in lapse.RevokeInput) (*lapse.Grant, error) {
		got = in
		g := verifiedGrant()
		g.EndReason = lapse.EndRevoked
		return g, nil
	}
	stdout, _ := c.mustRun("revoke", grantID, "--reason", "left the incident")
	if got != (lapse.RevokeInput{Reason: "left the incident", Wait: true}) {
		t.Errorf("input = %+v", got)
	}
	assertContains(t, stdout, "Revoked "+grantID+": now revoked.")
	c.mustRun("revoke", grantID, "--reason", "x", "--no-wait")
	if got.Wait {
		t.Error("--no-wait waited")
	}
}

func TestAPIKeys(t *testing.T) {
	c := newCLI(t)
	keySecret := "lapse_qrstuvwxyz23_bmV3LWtleS1zZWNyZXQtc2hvd24tb25jZS1vbmx5LTEyMzQ1Ng"
	var got lapse.APIKeyInput
	key := lapse.APIKey{ID: "qrstuvwxyz23", Prefix: "qrstuvwxyz23", Principal: lapse.Principal{ID: "ci-deploy", Kind: lapse.KindService},
		Scopes: []string{"request"}, Name: "deploy", CreatedAt: testNow, ExpiresAt: testNow.Add(90 * 24 * time.Hour), CreatedBy: "alice"}
	c.svc.createKey = func(_ context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error) {
		got = in
		return &lapse.NewAPIKey{APIKey: key, Secret: keySecret}, nil
	}
	stdout, stderr := c.mustRun("apikey", "create", "--principal", "ci-deploy", "--scope", "request", "--scope", "read", "--ttl", "90d", "--name", "deploy", "--group", "ci")
	want := lapse.APIKeyInput{PrincipalID: "ci-deploy", PrincipalKind: lapse.KindService, Groups: []string{"ci"}, Scopes: []string{"request", "read"}, Name: "deploy", TTL: lapse.Duration(90 * 24 * time.Hour)}
	if got.PrincipalID != want.PrincipalID || got.PrincipalKind != want.PrincipalKind || strings.Join(got.Scopes, ",") != "request,read" ||
		strings.Join(got.Groups, ",") != "ci" || got.TTL != want.TTL || got.Name != want.Name {
		t.Errorf("input = %+v, want %+v", got, want)
	}
	assertContains(t, stdout, "Prefix", "qrstuvwxyz23", "Secret", keySecret, "Expires", "(in 90d)")
	assertContains(t, stderr, "shown once")
	assertNotContains(t, stderr, keySecret)

	stdout, _ = c.mustRun("apikey", "create", "--principal", "ci-deploy", "--scope", "request", "-o", "json")
	assertJSON(t, stdout, lapse.NewAPIKey{APIKey: key, Secret: keySecret})

	revoked := key
	revoked.RevokedAt = testNow
	c.svc.listKeys = func(context.Context) ([]*lapse.APIKey, error) { return []*lapse.APIKey{&key, &revoked}, nil }
	stdout, _ = c.mustRun("apikey", "list")
	assertContains(t, stdout, "PREFIX", "qrstuvwxyz23", "active", "revoked", "ci-deploy")
	assertNotContains(t, stdout, keySecret)
	stdout, _ = c.mustRun("apikey", "list", "-o", "json")
	assertJSON(t, stdout, map[string]any{"apikeys": []*lapse.APIKey{&key, &revoked}})

	c.svc.revokeKey = func(_ context.Context, prefix string) (*lapse.APIKey, error) {
		if prefix != "qrstuvwxyz23" {
			return nil, lapse.Errorf(lapse.ENOTFOUND, "no such key")
		}
		return &revoked, nil
	}
	stdout, _ = c.mustRun("apikey", "revoke", "qrstuvwxyz23")
	assertContains(t, stdout, "Revoked API key qrstuvwxyz23", "revoked")
	_, stderr, code := c.run("apikey", "revoke", "zzzz")
	if code != exitError || !strings.Contains(stderr, "(code: not_found)") {
		t.Errorf("revoke unknown: exit %d, %q", code, stderr)
	}

	c.svc.listKeys = func(context.Context) ([]*lapse.APIKey, error) {
		return nil, lapse.Errorf(lapse.EFORBIDDEN, "needs scope admin")
	}
	_, stderr, code = c.run("apikey", "list")
	if code != exitError || !strings.Contains(stderr, "(code: forbidden)") {
		t.Errorf("list without admin: exit %d, %q", code, stderr)
	}
}

// TestSecretsOnlyInCredentialsOutput runs every flow that handles a secret
// and checks that the secret reaches stdout only where credentials are
// printed, never stderr, and never an error.
func TestSecretsOnlyInCredentialsOutput(t *testing.T) {
	c := newCLI(t)
	scriptWait(c)
	for _, args := range [][]string{
		{"request", "prod-db/read", "--wait"},
		{"request", "prod-db/read", "--wait", "-o", "json"},
	} {
		stdout, stderr := c.mustRun(args...)
		if strings.Count(stdout, secretValue) != 1 {
			t.Errorf("%v: secret printed %d times on stdout", args, strings.Count(stdout, secretValue))
		}
		assertNotContains(t, stderr, secretValue)
	}
	// A server error that echoes nothing secret stays that way, and the
	// grant view never shows the credentials.
	c.svc.getGrant = func(context.Context, string) (*lapse.Grant, error) { return verifiedGrant(), nil }
	stdout, stderr := c.mustRun("grant", grantID)
	assertNotContains(t, stdout+stderr, secretValue)
}
