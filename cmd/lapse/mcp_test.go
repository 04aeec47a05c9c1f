package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api/client"
)

// mcpTimeout bounds one exchange with lapse mcp in the tests; it guards
// against a hang and is not a performance assertion.
const mcpTimeout = time.Minute

// mcpToolNames are the tools lapse mcp offers, and the only ones.
var mcpToolNames = []string{"claim_credentials", "get_status", "list_entitlements", "release_access", "request_access"}

// mcpDev is a lapse dev server for MCP tests, with the dev users' keys.
type mcpDev struct {
	r         *running
	alice     string // alice's API key
	aliceFile string
	bob       string
}

func startMCPDev(t *testing.T) *mcpDev {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	creds := filepath.Join(dir, "credentials")
	return &mcpDev{
		r:         r,
		alice:     readKey(t, filepath.Join(creds, "alice.key")),
		aliceFile: filepath.Join(creds, "alice.key"),
		bob:       readKey(t, filepath.Join(creds, "bob.key")),
	}
}

// connectMCPStdio runs "lapse mcp" in-process on pipes standing in for its
// stdin and stdout and connects the SDK's client to them.
func connectMCPStdio(t *testing.T, args ...string) *mcp.ClientSession {
	t.Helper()
	serverIn, clientOut := io.Pipe()
	clientIn, serverOut := io.Pipe()
	m := NewMain()
	stderr := &lockedBuffer{}
	m.Stdin, m.Stdout, m.Stderr = serverIn, serverOut, stderr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := m.Run(ctx, append([]string{"mcp"}, args...))
		serverOut.Close()
		done <- err
	}()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-agent", Version: "v0"}, nil).
		Connect(ctx, &mcp.IOTransport{Reader: clientIn, Writer: clientOut}, nil)
	if err != nil {
		cancel()
		t.Fatalf("connect to lapse mcp: %v\nstderr:\n%s", err, stderr)
	}
	t.Cleanup(func() {
		cs.Close() // closes the server's stdin: it must end by itself
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("lapse mcp ended with %v\nstderr:\n%s", err, stderr)
			}
		case <-time.After(mcpTimeout):
			t.Errorf("lapse mcp did not end when its stdin closed")
		}
		cancel()
	})
	return cs
}

// startMCPHTTP runs "lapse mcp --http 127.0.0.1:0" in-process and returns
// the endpoint's URL, read from what it prints on stderr.
func startMCPHTTP(t *testing.T, args ...string) string {
	t.Helper()
	m := NewMain()
	stderr := &lockedBuffer{}
	m.Stdin, m.Stdout, m.Stderr = strings.NewReader(""), io.Discard, stderr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, append([]string{"mcp", "--http", "127.0.0.1:0"}, args...)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("lapse mcp --http ended with %v\nstderr:\n%s", err, stderr)
			}
		case <-time.After(mcpTimeout):
			t.Errorf("lapse mcp --http did not shut down")
		}
	})
	re := regexp.MustCompile(`serving MCP \(streamable HTTP\) at (http://\S+)`)
	deadline := time.Now().Add(startupTimeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-done:
			t.Fatalf("lapse mcp --http ended before serving: %v\nstderr:\n%s", err, stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("lapse mcp --http did not start\nstderr:\n%s", stderr)
	return ""
}

// bearer adds an Authorization header to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// connectMCPHTTP connects the SDK's streamable HTTP client to endpoint,
// presenting token.
func connectMCPHTTP(t *testing.T, endpoint, token string) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mcpTimeout)
	defer cancel()
	tr := &mcp.StreamableClientTransport{
		Endpoint:   endpoint,
		HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}},
		MaxRetries: -1,
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test-agent", Version: "v0"}, nil).Connect(ctx, tr, nil)
	if err != nil {
		t.Fatalf("connect to %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// toolNames lists the tools a session offers, sorted.
func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mcpTimeout)
	defer cancel()
	var names []string
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatalf("list tools: %v", err)
		}
		names = append(names, tool.Name)
		if tool.Description == "" || tool.InputSchema == nil {
			t.Errorf("tool %s has no description or input schema", tool.Name)
		}
	}
	slices.Sort(names)
	return names
}

// callTool calls a tool that must succeed and decodes its structured
// output into out.
func callTool(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any, out any) {
	t.Helper()
	res := rawCall(t, cs, name, args)
	if res.IsError {
		t.Fatalf("%s %v: tool error %s", name, args, resultText(res))
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: decode %s: %v", name, b, err)
	}
}

func rawCall(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mcpTimeout)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("call %s: %v", name, err)
	}
	return res
}

func resultText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// callToolError calls a tool that must fail and returns the Lapse error it
// carries.
func callToolError(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) mcpError {
	t.Helper()
	res := rawCall(t, cs, name, args)
	if !res.IsError {
		t.Fatalf("%s %v succeeded: %s", name, args, resultText(res))
	}
	var body struct{ Error mcpError }
	if err := json.Unmarshal([]byte(resultText(res)), &body); err != nil || body.Error.Code == "" {
		t.Fatalf("%s %v: the tool error is not Lapse's error JSON: %q", name, args, resultText(res))
	}
	return body.Error
}

// exerciseMCP runs an agent's whole journey through one MCP session and
// checks on the API that Lapse recorded it as coming through MCP.
func exerciseMCP(t *testing.T, dev *mcpDev, cs *mcp.ClientSession) {
	if got := toolNames(t, cs); !slices.Equal(got, mcpToolNames) {
		t.Fatalf("tools = %v, want %v", got, mcpToolNames)
	}

	var ents entitlementsOutput
	callTool(t, cs, "list_entitlements", nil, &ents)
	var names []string
	for _, e := range ents.Entitlements {
		names = append(names, e.Name)
		if e.Name == "demo-api/status" && e.Approval != "auto" {
			t.Errorf("demo-api/status approval = %q, want auto", e.Approval)
		}
	}
	if !slices.Contains(names, "demo-api/status") || !slices.Contains(names, "demo-api/read") {
		t.Fatalf("list_entitlements = %v", names)
	}

	// Auto-approved: the credentials come back at once, shown once.
	var got accessOutput
	callTool(t, cs, "request_access", map[string]any{"entitlement": "demo-api/status", "duration": "5m", "reason": "check the API is up", "task_id": "task-42"}, &got)
	if got.Grant == nil || got.Grant.State != string(lapse.GrantActive) || got.Credentials == nil || got.Credentials.Secret["token"] == "" {
		t.Fatalf("request_access demo-api/status = %+v", got)
	}
	if !strings.Contains(got.Credentials.Note, "once") || !strings.Contains(got.Next, "release_access") {
		t.Errorf("credentials note %q / next %q", got.Credentials.Note, got.Next)
	}
	grant := got.Grant.ID
	token := got.Credentials.Secret["token"]

	var status accessOutput
	callTool(t, cs, "get_status", map[string]any{"id": grant}, &status)
	if status.Grant == nil || status.Grant.State != string(lapse.GrantActive) || !status.Grant.CredentialsClaimed || status.Credentials != nil {
		t.Fatalf("get_status %s = %+v", grant, status)
	}
	if res := rawCall(t, cs, "get_status", map[string]any{"id": grant}); strings.Contains(resultText(res), token) {
		t.Fatal("get_status repeats the token")
	}

	var released accessOutput
	callTool(t, cs, "release_access", map[string]any{"grant_id": grant}, &released)
	if released.Grant == nil || released.Grant.State != string(lapse.GrantRevoked) || released.Grant.EndReason != string(lapse.EndReleased) {
		t.Fatalf("release_access = %+v", released.Grant)
	}
	for _, c := range released.Grant.Checkpoints {
		if !c.Verified {
			t.Errorf("checkpoint %s not verified after release", c.Name)
		}
	}

	// Needs approval: pending, and stays so; the agent cannot move it.
	var pending accessOutput
	callTool(t, cs, "request_access", map[string]any{"entitlement": "demo-api/read", "reason": "read the logs for ticket 42"}, &pending)
	if pending.Request == nil || pending.Request.State != string(lapse.RequestPending) || pending.Credentials != nil || pending.Grant != nil {
		t.Fatalf("request_access demo-api/read = %+v", pending)
	}
	if pending.Request.Required != 1 || !strings.Contains(pending.Next, "cannot approve") {
		t.Errorf("pending request = %+v, next %q", pending.Request, pending.Next)
	}
	req := pending.Request.ID
	callTool(t, cs, "get_status", map[string]any{"id": req}, &status)
	if status.Request == nil || status.Request.State != string(lapse.RequestPending) {
		t.Fatalf("get_status %s = %+v", req, status)
	}

	// The API's record: every step the agent took came through MCP.
	var g lapse.Grant
	if code := call(t, "GET", dev.r.url+"/v1/grants/"+grant, dev.alice, nil, &g); code != 200 {
		t.Fatalf("GET grant: status %d", code)
	}
	var mine int
	for _, e := range g.Events {
		if e.ActorID != "alice" {
			continue
		}
		mine++
		if e.Channel != lapse.ChannelMCP {
			t.Errorf("event %s by alice has channel %q, want %q", e.Type, e.Channel, lapse.ChannelMCP)
		}
	}
	if mine < 2 {
		t.Errorf("grant history has %d events by alice: %+v", mine, g.Events)
	}
	var r lapse.Request
	if code := call(t, "GET", dev.r.url+"/v1/requests/"+req, dev.alice, nil, &r); code != 200 || r.Channel != lapse.ChannelMCP {
		t.Errorf("GET request: status %d, channel %q", code, r.Channel)
	}
}

// TestMCPStdio drives lapse mcp over stdio with the SDK's client against a
// real lapse dev, through a request a human approves.
func TestMCPStdio(t *testing.T) {
	dev := startMCPDev(t)
	cs := connectMCPStdio(t, "--server", dev.r.url, "--token-file", dev.aliceFile)
	exerciseMCP(t, dev, cs)

	// After a human approves, the agent claims the credentials, once.
	var pending accessOutput
	callTool(t, cs, "request_access", map[string]any{"entitlement": "demo-api/read", "duration": "10m", "reason": "ticket 43"}, &pending)
	req := pending.Request.ID
	var decided lapse.Request
	if code := call(t, "POST", dev.r.url+"/v1/requests/"+req+"/approve", dev.bob, lapse.DecisionInput{Comment: "ok"}, &decided); code != 200 {
		t.Fatalf("bob approves: status %d", code)
	}
	var status accessOutput
	deadline := time.Now().Add(mcpTimeout)
	for {
		callTool(t, cs, "get_status", map[string]any{"id": req}, &status)
		if status.Grant != nil && status.Grant.State == string(lapse.GrantActive) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("grant not active: %+v", status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(status.Next, "claim_credentials") || status.Credentials != nil {
		t.Errorf("get_status after approval: next %q", status.Next)
	}
	var claimed accessOutput
	callTool(t, cs, "claim_credentials", map[string]any{"grant_id": status.Grant.ID}, &claimed)
	if claimed.Credentials == nil || claimed.Credentials.Secret["token"] == "" {
		t.Fatalf("claim_credentials = %+v", claimed)
	}
	if e := callToolError(t, cs, "claim_credentials", map[string]any{"grant_id": status.Grant.ID}); e.Code != lapse.EGONE {
		t.Errorf("second claim: %+v, want code gone", e)
	}
	var released accessOutput
	callTool(t, cs, "release_access", map[string]any{"grant_id": status.Grant.ID}, &released)
	if released.Grant.State != string(lapse.GrantRevoked) {
		t.Errorf("release_access: %+v", released.Grant)
	}
}

// TestMCPHTTP drives lapse mcp --http with the SDK's streamable client, and
// checks that the endpoint wants the agent's own key.
func TestMCPHTTP(t *testing.T) {
	dev := startMCPDev(t)
	endpoint := startMCPHTTP(t, "--server", dev.r.url, "--token-file", dev.aliceFile)
	if !strings.HasPrefix(endpoint, "http://127.0.0.1:") || !strings.HasSuffix(endpoint, mcpPath) {
		t.Fatalf("endpoint %s", endpoint)
	}
	exerciseMCP(t, dev, connectMCPHTTP(t, endpoint, dev.alice))

	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}`
	for name, auth := range map[string]string{
		"no credential":     "",
		"another valid key": "Bearer " + dev.bob,
		"wrong key":         "Bearer " + dev.alice + "x",
		"not bearer":        "Basic " + dev.alice,
	} {
		req, _ := http.NewRequest("POST", endpoint, strings.NewReader(initialize))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error mcpError }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || body.Error.Code != lapse.EUNAUTHORIZED || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: status %d, error %+v", name, resp.StatusCode, body.Error)
		}
	}
}

// TestMCPHTTPLoopbackOnly: the HTTP endpoint acts with the agent's key, so
// it does not listen beyond the loopback unless told to.
func TestMCPHTTPLoopbackOnly(t *testing.T) {
	for _, addr := range []string{":8701", "0.0.0.0:0", "[::]:0", "192.0.2.1:8701", "example.com:80"} {
		_, _, err := runLapse(t, "mcp", "--http", addr, "--token", "k")
		var ue *usageError
		if !errors.As(err, &ue) || lapse.ErrorField(err) != "http" {
			t.Errorf("--http %s: %v, want a usage error on field http", addr, err)
		}
	}
	if _, _, err := runLapse(t, "mcp", "--allow-remote", "--token", "k"); lapse.ErrorField(err) != "allow-remote" {
		t.Errorf("--allow-remote without --http: %v", err)
	}
	if err := checkMCPListen("0.0.0.0:0", true); err != nil {
		t.Errorf("--allow-remote: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:8701", "localhost:8701"} {
		if err := checkMCPListen(addr, false); err != nil {
			t.Errorf("--http %s: %v", addr, err)
		}
	}
}

// TestMCPBadInput: a malformed tool input is answered with a tool error
// carrying Lapse's code and the offending argument, whether the MCP layer,
// the SDK's schema or the Lapse server finds it.
func TestMCPBadInput(t *testing.T) {
	dev := startMCPDev(t)
	cs := connectMCPStdio(t, "--server", dev.r.url, "--token-file", dev.aliceFile)
	for _, tc := range []struct {
		tool  string
		args  map[string]any
		code  string
		field string
	}{
		{"request_access", map[string]any{}, lapse.EINVALID, "entitlement"},
		{"request_access", map[string]any{"entitlement": "  "}, lapse.EINVALID, "entitlement"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "duration": "banana"}, lapse.EINVALID, "duration"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "duration": 15}, lapse.EINVALID, "duration"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "duration": "-5m"}, lapse.EINVALID, "duration"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "durtion": "5m"}, lapse.EINVALID, "durtion"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "ticket": nil}, lapse.EINVALID, "ticket"},
		{"request_access", map[string]any{"entitlement": "demo-api/status", "duration": "3h"}, lapse.EINVALID, "duration"}, // over the maximum: the server says so
		{"request_access", map[string]any{"entitlement": "demo-api/read"}, lapse.EINVALID, "reason"},                       // required by policy
		{"request_access", map[string]any{"entitlement": "no/such"}, lapse.ENOTFOUND, ""},
		{"get_status", map[string]any{"id": "banana"}, lapse.EINVALID, "id"},
		{"get_status", map[string]any{}, lapse.EINVALID, "id"},
		{"release_access", map[string]any{"grant_id": "req_01"}, lapse.EINVALID, "grant_id"},
		{"claim_credentials", map[string]any{"grant_id": []string{"gr_x"}}, lapse.EINVALID, "grant_id"},
		{"release_access", map[string]any{"grant_id": lapse.NewID(lapse.PrefixGrant, time.Now())}, lapse.ENOTFOUND, ""},
	} {
		e := callToolError(t, cs, tc.tool, tc.args)
		if e.Code != tc.code || (tc.field != "" && e.Field != tc.field) || e.Message == "" {
			t.Errorf("%s %v: %+v, want code %s field %q", tc.tool, tc.args, e, tc.code, tc.field)
		}
	}
}

// fakeRequester implements exactly mcpService: that newMCPServer accepts
// it proves the MCP layer needs nothing more, so cannot approve or deny.
type fakeRequester struct{}

func (fakeRequester) Whoami(context.Context) (*lapse.Principal, error) {
	return &lapse.Principal{ID: "agent", Kind: lapse.KindAgent}, nil
}
func (fakeRequester) Entitlements(context.Context) ([]*lapse.Entitlement, error) { return nil, nil }
func (fakeRequester) CreateRequest(context.Context, lapse.RequestInput) (*lapse.RequestResult, error) {
	return nil, lapse.Errorf(lapse.EUNAVAILABLE, "fake")
}
func (fakeRequester) GetRequest(context.Context, string) (*lapse.Request, error) {
	return nil, lapse.Errorf(lapse.ENOTFOUND, "fake")
}
func (fakeRequester) GetGrant(context.Context, string) (*lapse.Grant, error) {
	return nil, lapse.Errorf(lapse.ENOTFOUND, "fake")
}
func (fakeRequester) ClaimCredentials(context.Context, string) (*lapse.Credentials, error) {
	return nil, lapse.Errorf(lapse.EGONE, "fake")
}
func (fakeRequester) Release(context.Context, string, lapse.ReleaseInput) (*lapse.Grant, error) {
	return nil, lapse.Errorf(lapse.ENOTFOUND, "fake")
}

// TestMCPCannotApprove proves that agents may ask but never approve
// (DESIGN.md §3): no tool approves, denies, revokes or manages keys, and
// the MCP layer has no code path to the service methods that do.
func TestMCPCannotApprove(t *testing.T) {
	forbidden := []string{"approve", "deny", "revoke", "apikey", "key", "cancel", "decide"}

	// 1. The tool list, over the SDK's in-memory transport.
	st, ct := mcp.NewInMemoryTransports()
	ctx, cancel := context.WithTimeout(context.Background(), mcpTimeout)
	defer cancel()
	ss, err := newMCPServer(fakeRequester{}).Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "v0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	names := toolNames(t, cs)
	if !slices.Equal(names, mcpToolNames) {
		t.Errorf("tools = %v, want %v", names, mcpToolNames)
	}
	for _, n := range names {
		for _, f := range forbidden {
			if strings.Contains(n, f) {
				t.Errorf("tool %s looks like it does %s", n, f)
			}
		}
	}
	for _, n := range []string{"approve", "deny", "approve_request", "revoke"} {
		if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: n, Arguments: map[string]any{"id": "req_x"}}); err == nil {
			t.Errorf("tool %s exists", n)
		}
	}

	// 2. The interface the tools are built on has only requester methods,
	// and the value they hold in production exposes nothing else.
	allowed := []string{"ClaimCredentials", "CreateRequest", "Entitlements", "GetGrant", "GetRequest", "Release", "Whoami"}
	typ := reflect.TypeFor[mcpService]()
	var methods []string
	for m := range typ.Methods() {
		methods = append(methods, m.Name)
	}
	if !slices.Equal(methods, allowed) {
		t.Errorf("mcpService methods = %v, want exactly %v", methods, allowed)
	}
	full := lapse.Service(client.New("http://127.0.0.1:1", "k"))
	held := newMCPService(clientConfig{Server: "http://127.0.0.1:1", Token: "k"})
	if _, ok := held.(lapse.Service); ok {
		t.Error("the service the MCP layer holds is a full lapse.Service")
	}
	for _, name := range []string{"Approve", "Deny", "Revoke", "CancelRequest", "CreateAPIKey", "RevokeAPIKey"} {
		if _, ok := reflect.TypeOf(full).MethodByName(name); !ok {
			t.Fatalf("lapse.Service has no %s; update this test", name)
		}
		if _, ok := reflect.TypeOf(held).MethodByName(name); ok {
			t.Errorf("the service the MCP layer holds has %s", name)
		}
	}

	// 3. And the MCP source names none of them, nor converts its way back
	// to the full service.
	src, err := os.ReadFile("mcp.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{".Approve(", ".Deny(", ".Revoke(", ".CancelRequest(", "APIKey(", "lapse.Service", ".(*client.Client)"} {
		if strings.Contains(string(src), s) {
			t.Errorf("mcp.go contains %q", s)
		}
	}
}
