package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
)

// jwtClaims decodes a JWT's claims without verifying it (the server's
// tests verify signatures; here only what it says matters).
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

// wantDelegatedToken checks an RFC 8693 delegated token: sub is the
// sponsor, act the agent.
func wantDelegatedToken(t *testing.T, tok, sponsor, agent string) {
	t.Helper()
	c := jwtClaims(t, tok)
	act, _ := c["act"].(map[string]any)
	if c["sub"] != sponsor || act == nil || act["sub"] != agent || c["lapse_kind"] != "agent" || c["jti"] == nil || c["exp"] == nil {
		t.Fatalf("token claims %v, want sub %s acting through %s", c, sponsor, agent)
	}
}

// TestAgentLaneEndToEnd, through a real server in dev mode and the real
// CLI: an agent cannot obtain more than its sponsor could; its high-risk
// request waits for a human; its attempts to approve are refused, on the
// API, the CLI and the token endpoint.
func TestAgentLaneEndToEnd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	cfg := filepath.Join(dir, "lapse.yaml")
	key := func(name string) string { return readKey(t, filepath.Join(dir, "credentials", name+".key")) }
	alice, bob := key("alice"), key("bob")
	admin := func(args ...string) string {
		t.Helper()
		out, stderr, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", cfg}, args...)...)
		if err != nil {
			t.Fatalf("admin apikey create: %v\n%s", err, stderr)
		}
		return strings.TrimSpace(out)
	}
	// The agent's own key carries every scope it could want, approve
	// included, and groups that would open everything: none of it counts.
	agent := admin("--principal", "helper", "--kind", "agent", "--group", "developers", "--group", "approvers", "--scope", "read,request,approve")
	// alice, as an approver too: still not for what her agent asks.
	aliceApprover := admin("--principal", "alice", "--group", "developers", "--group", "approvers", "--scope", "read,approve")
	cli := func(tok string, args ...string) (string, string, error) {
		t.Helper()
		return runLapse(t, append(args, "--server", r.url, "--token", tok)...)
	}
	mustCLI := func(tok string, args ...string) string {
		t.Helper()
		out, stderr, err := cli(tok, args...)
		if err != nil {
			t.Fatalf("lapse %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	refusedCLI := func(code, tok string, args ...string) string {
		t.Helper()
		_, stderr, err := cli(tok, args...)
		if lapse.ErrorCode(err) != code {
			t.Fatalf("lapse %s: %v (%s), want code %s\n%s", strings.Join(args, " "), err, lapse.ErrorCode(err), code, stderr)
		}
		return lapse.ErrorMessage(err)
	}

	// No mandate, no sponsor: refused, and the message says what to do.
	if msg := refusedCLI(lapse.EFORBIDDEN, agent, "request", "demo-api/status"); !strings.Contains(msg, "mandate") {
		t.Errorf("refusal without a mandate: %q", msg)
	}

	// A sponsor gives only what they may request: bob may not read.
	refusedCLI(lapse.EFORBIDDEN, bob, "mandate", "create", "--agent", "helper", "--entitlement", "demo-api/read", "--max-duration", "10m", "--expires-in", "1h")
	refusedCLI(lapse.EFORBIDDEN, agent, "mandate", "create", "--agent", "other", "--entitlement", "demo-api/status", "--max-duration", "10m", "--expires-in", "1h")
	var m lapse.Mandate
	out := mustCLI(alice, "mandate", "create", "--agent", "helper", "--entitlement", "demo-api/status,demo-api/read,demo-api/admin",
		"--max-duration", "10m", "--expires-in", "1h", "-o", "json")
	if err := json.Unmarshal([]byte(out), &m); err != nil || m.Sponsor.ID != "alice" || m.AgentID != "helper" {
		t.Fatalf("mandate %s (%v)", out, err)
	}
	if out := mustCLI(agent, "mandate", "list"); !strings.Contains(out, m.ID) || !strings.Contains(out, "live") {
		t.Errorf("the agent's mandate list:\n%s", out)
	}

	// What the agent sees: the sponsor's entitlements within the mandate,
	// with the agent's approval rule.
	var ents struct{ Entitlements []*lapse.Entitlement }
	if err := json.Unmarshal([]byte(mustCLI(agent, "entitlements", "-o", "json")), &ents); err != nil {
		t.Fatal(err)
	}
	for _, e := range ents.Entitlements {
		if e.MaxDuration.D().Minutes() > 10 || (e.Name == "demo-api/admin" && e.Approval.Auto) {
			t.Errorf("the agent sees %s as max %s, approval %+v", e.Name, e.MaxDuration, e.Approval)
		}
	}
	if len(ents.Entitlements) != 3 {
		t.Errorf("the agent may request %d entitlements, want 3", len(ents.Entitlements))
	}

	// Low-risk: at once, within the ceiling, as the agent acting for alice.
	refusedCLI(lapse.EINVALID, agent, "request", "demo-api/status", "--for", "15m")
	var res lapse.RequestResult
	if err := json.Unmarshal([]byte(mustCLI(agent, "request", "demo-api/status", "--task", "task-1", "-o", "json")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Credentials == nil || res.Grant == nil || res.Grant.Principal.ID != "helper" || len(res.Grant.Principal.Act) != 1 || res.Grant.Principal.Act[0] != "alice" {
		t.Fatalf("the agent's grant: %+v", res.Grant)
	}
	wantDelegatedToken(t, res.Credentials.Secret["token"], "alice", "helper")

	// High-risk: alice gets demo-api/admin at once herself; her agent's
	// request waits for a human.
	var own lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/admin"}, &own); code != 201 || own.Credentials == nil {
		t.Fatalf("alice's own demo-api/admin: %d %+v", code, own.Request)
	}
	var risky lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", agent, lapse.RequestInput{Entitlement: "demo-api/admin", Reason: "rotate the demo key"}, &risky); code != 201 {
		t.Fatalf("the agent's demo-api/admin: %d", code)
	}
	if risky.Request.State != lapse.RequestPending || risky.Request.Required != 1 || risky.Credentials != nil || risky.Grant != nil {
		t.Fatalf("the agent's high-risk request was not held for a human: %+v", risky.Request)
	}
	id := risky.Request.ID

	// Its attempts to approve are refused: the API, the CLI; its sponsor
	// cannot approve either; a token it was issued is no API credential.
	var body api.ErrorBody
	if code := call(t, "POST", r.url+"/v1/requests/"+id+"/approve", agent, lapse.DecisionInput{}, &body); code != 403 || body.Error.Code != lapse.EFORBIDDEN {
		t.Errorf("agent approves through the API: %d %+v", code, body)
	}
	refusedCLI(lapse.EFORBIDDEN, agent, "approve", id)
	refusedCLI(lapse.EFORBIDDEN, agent, "deny", id)
	if msg := refusedCLI(lapse.EFORBIDDEN, aliceApprover, "approve", id); !strings.Contains(msg, "on your behalf") {
		t.Errorf("the sponsor's approval refused with %q", msg)
	}
	if code := call(t, "POST", r.url+"/v1/requests/"+id+"/approve", res.Credentials.Secret["token"], lapse.DecisionInput{}, nil); code != 401 {
		t.Errorf("the agent's issued token as an API credential: %d", code)
	}

	// The token endpoint (RFC 8693 delegation): the sponsor's key is the
	// subject, the agent's the actor. High-risk is refused there (a
	// machine call never waits for a human); what the sponsor may not
	// request is refused; low-risk comes with the act claim.
	delegate := func(subject, entitlement string) (int, []byte) {
		return postForm(t, r.url+"/v1/token", "", url.Values{
			"grant_type":         {api.GrantTypeTokenExchange},
			"subject_token":      {subject},
			"subject_token_type": {api.TokenTypeAPIKey},
			"actor_token":        {agent},
			"actor_token_type":   {api.TokenTypeAPIKey},
			"audience":           {entitlement},
		})
	}
	for _, c := range []struct {
		subject, entitlement string
		code                 int
		oauth                string
	}{
		{alice, "demo-api/admin", 400, api.OAuthInvalidTarget},
		{bob, "demo-api/read", 400, api.OAuthInvalidTarget},
		{agent, "demo-api/status", 400, api.OAuthUnauthorizedClient}, // an agent acting for an agent
	} {
		code, b := delegate(c.subject, c.entitlement)
		var oe api.OAuthError
		if json.Unmarshal(b, &oe); code != c.code || oe.Error != c.oauth {
			t.Errorf("delegation for %s: %d %s, want %d %s", c.entitlement, code, b, c.code, c.oauth)
		}
	}
	code, b := delegate(alice, "demo-api/status")
	var tr api.TokenResponse
	if json.Unmarshal(b, &tr); code != 200 {
		t.Fatalf("delegated exchange: %d %s", code, b)
	}
	wantDelegatedToken(t, tr.AccessToken, "alice", "helper")

	// A human decides; the agent then claims its credentials.
	mustCLI(bob, "approve", id)
	var approved lapse.Request
	if code := call(t, "GET", r.url+"/v1/requests/"+id, agent, nil, &approved); code != 200 || approved.State != lapse.RequestApproved || approved.GrantID == "" {
		t.Fatalf("after bob's approval: %d %+v", code, approved)
	}
	var creds lapse.Credentials
	for range 100 { // the engine provisions it
		if code := call(t, "POST", r.url+"/v1/grants/"+approved.GrantID+"/credentials", agent, nil, &creds); code == 200 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	wantDelegatedToken(t, creds.Secret["token"], "alice", "helper")

	// The sponsor revokes the mandate: no more requests under it, and what
	// the agent holds under it is revoked.
	mustCLI(alice, "mandate", "revoke", m.ID)
	refusedCLI(lapse.EFORBIDDEN, agent, "request", "demo-api/status")
	var g lapse.Grant
	if code := call(t, "GET", r.url+"/v1/grants/"+res.Grant.ID, agent, nil, &g); code != 200 || g.State == lapse.GrantActive {
		t.Errorf("the agent's grant after the mandate was revoked: %d %s", code, g.State)
	}
}
