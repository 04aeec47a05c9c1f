package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api/client"
)

// lapse mcp serves the agent lane's requester half (DESIGN.md §3) to AI
// agent runtimes over the Model Context Protocol: an agent may list what it
// may ask for, ask, follow its request, claim its credentials and give the
// grant back. It can never approve, deny or revoke: the MCP layer is built
// on mcpService, which has no such methods, so no tool can reach them.

const (
	// mcpPath is where lapse mcp --http serves the streamable HTTP transport.
	mcpPath = "/mcp"
	// mcpCallTimeout bounds one call to the Lapse server (an auto-approved
	// request provisions before it answers).
	mcpCallTimeout = 60 * time.Second
	// mcpReleaseTimeout bounds how long release_access waits for verified
	// revocation; it stays below the Lapse server's write timeout.
	mcpReleaseTimeout = 90 * time.Second
	// mcpSessionTimeout closes streamable HTTP sessions idle this long.
	mcpSessionTimeout = time.Hour
	// mcpMaxBody bounds one HTTP request to the MCP endpoint; tool
	// arguments are a few short strings.
	mcpMaxBody = 1 << 20
)

// mcpService is everything the MCP server may ask of Lapse: the requester's
// side of the API. It deliberately has no Approve, Deny, Revoke or API key
// methods — agents may ask but never approve — and the tools are built on
// this interface alone, so there is no code path from a tool to them.
// *client.Client implements it.
type mcpService interface {
	Whoami(ctx context.Context) (*lapse.Principal, error)
	Entitlements(ctx context.Context) ([]*lapse.Entitlement, error)
	CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error)
	GetRequest(ctx context.Context, id string) (*lapse.Request, error)
	GetGrant(ctx context.Context, id string) (*lapse.Grant, error)
	ClaimCredentials(ctx context.Context, grantID string) (*lapse.Credentials, error)
	Release(ctx context.Context, grantID string, in lapse.ReleaseInput) (*lapse.Grant, error)
}

// requesterOnly exposes only mcpService's methods of whatever it wraps, so
// not even a type assertion on the value the tools hold reaches Approve.
type requesterOnly struct{ mcpService }

var _ mcpService = (*client.Client)(nil)

// newMCPService connects to the Lapse server with the agent's credential;
// every call is recorded in the audit trail as coming through MCP.
func newMCPService(cfg clientConfig) mcpService {
	c := client.New(cfg.Server, cfg.Token)
	c.Channel = lapse.ChannelMCP
	c.UserAgent = "lapse-mcp"
	return requesterOnly{c}
}

func (m *Main) mcpCommand() *cobra.Command { return defaultClientDeps().mcpCmd() }

func (d *clientDeps) mcpCmd() *cobra.Command {
	cmd := &clientCommand{d: d}
	var (
		httpAddr    string
		allowRemote bool
	)
	c := &cobra.Command{
		Use:   "mcp",
		Short: "Serve Lapse to an AI agent over the Model Context Protocol",
		Long: `Serve Lapse to an AI agent over the Model Context Protocol (MCP).

The agent gets five tools: list_entitlements, request_access, get_status,
claim_credentials and release_access. It acts with the credential given to
lapse mcp (the agent's own API key) and may ask, but never approve, deny or
revoke: those are not exposed. Every call is recorded with channel "mcp".

By default MCP is spoken on stdin and stdout, for a runtime that starts
lapse mcp itself. --http ADDR serves the streamable HTTP transport at
http://ADDR/mcp instead; every HTTP request must then present the same API
key as "Authorization: Bearer KEY". ADDR must be a loopback address unless
--allow-remote is given.

Connection (flags beat the environment):
  --server URL        or LAPSE_ADDR        server URL (default ` + defaultAddr + `)
  --token KEY         or LAPSE_TOKEN       API key to act with
  --token-file FILE   or LAPSE_TOKEN_FILE  file that holds the API key
See docs/mcp.md.`,
		Example: `  LAPSE_TOKEN_FILE=~/.lapse/agent.key lapse mcp
  LAPSE_TOKEN_FILE=~/.lapse/agent.key lapse mcp --http 127.0.0.1:8701`,
		Args:          withUsageHint(exactArgs(nil)),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	f := c.Flags()
	f.StringVar(&cmd.flags.server, "server", defaultAddr, "Lapse server URL (env "+envAddr+")")
	f.StringVar(&cmd.flags.token, "token", "", "API key to act with (env "+envToken+"); visible in the process list, prefer --token-file")
	f.StringVar(&cmd.flags.tokenFile, "token-file", "", "file that holds the API key (env "+envTokenFile+"); must not be readable by group or others")
	f.StringVar(&httpAddr, "http", "", "serve streamable HTTP on this host:port instead of stdio (loopback only unless --allow-remote)")
	f.BoolVar(&allowRemote, "allow-remote", false, "let --http listen on a non-loopback address (put TLS in front: the API key is sent in clear)")
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return markUsage(c, usageErrorf("%v", err))
	})
	c.RunE = func(c *cobra.Command, _ []string) error {
		if allowRemote && httpAddr == "" {
			return markUsage(c, usageFieldErrorf("allow-remote", "--allow-remote needs --http"))
		}
		if httpAddr != "" {
			if err := checkMCPListen(httpAddr, allowRemote); err != nil {
				return markUsage(c, err)
			}
		}
		cfg, err := cmd.resolve(c)
		if err != nil {
			return markUsage(c, err)
		}
		ctx := c.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		stderr := c.ErrOrStderr()
		svc := newMCPService(cfg)
		if err := checkMCPCredential(ctx, svc, cfg.Server, stderr); err != nil {
			return err
		}
		srv := newMCPServer(svc)
		if httpAddr == "" {
			return serveMCPStdio(ctx, srv, c.InOrStdin(), c.OutOrStdout())
		}
		return serveMCPHTTP(ctx, srv, httpAddr, allowRemote, cfg.Token, stderr)
	}
	return c
}

// checkMCPCredential asks the server who the credential is, so a wrong key
// fails at start instead of on every tool call. An unreachable server is
// only a warning: the runtime may start the MCP server before Lapse is up.
func checkMCPCredential(ctx context.Context, svc mcpService, server string, stderr io.Writer) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	me, err := svc.Whoami(cctx)
	switch code := lapse.ErrorCode(err); {
	case err == nil:
	case code == lapse.EUNAUTHORIZED || code == lapse.EFORBIDDEN:
		return err
	default:
		fmt.Fprintf(stderr, "lapse mcp: warning: cannot check the credential at %s now: %s\n", server, clean(formatError(err)))
		return nil
	}
	fmt.Fprintf(stderr, "lapse mcp: acting as %s (%s) on %s\n", clean(principalName(*me)), clean(string(me.Kind)), server)
	var unused []string
	for _, s := range me.Scopes {
		switch s {
		case lapse.ScopeApprove, lapse.ScopeRevoke, lapse.ScopeAdmin, lapse.ScopeIntrospect:
			unused = append(unused, s)
		}
	}
	if len(unused) > 0 {
		fmt.Fprintf(stderr, "lapse mcp: warning: the credential also has scope %s, which lapse mcp never uses; give the agent a key with only read and request\n",
			clean(strings.Join(unused, ", ")))
	}
	return nil
}

// checkMCPListen accepts host:port on a loopback address, or any address
// with allowRemote. A missing host means every interface.
func checkMCPListen(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageFieldErrorf("http", "--http must be host:port like 127.0.0.1:8701")
	}
	if !allowRemote && (host == "" || !loopback(host)) {
		return usageFieldErrorf("http", "--http %s is not a loopback address; the MCP endpoint acts with your Lapse credential, so it listens on 127.0.0.1 or [::1] unless --allow-remote is given", addr)
	}
	return nil
}

// serveMCPStdio speaks MCP on in and out until the client closes its end
// or ctx ends.
func serveMCPStdio(ctx context.Context, srv *mcp.Server, in io.Reader, out io.Writer) error {
	rc, ok := in.(io.ReadCloser)
	if !ok {
		rc = io.NopCloser(in)
	}
	err := srv.Run(ctx, &mcp.IOTransport{Reader: rc, Writer: nopWriteCloser{out}})
	if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, mcp.ErrConnectionClosed) {
		return nil
	}
	return err
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// serveMCPHTTP serves the streamable HTTP transport at mcpPath until ctx
// ends. Every request must present token as its bearer credential.
func serveMCPHTTP(ctx context.Context, srv *mcp.Server, addr string, allowRemote bool, token string, stderr io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("mcp: listen on %s: %w", addr, err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !allowRemote && (!ok || !a.IP.IsLoopback()) {
		ln.Close()
		return usageFieldErrorf("http", "--http %s listens on %s, which is not a loopback address; pass --allow-remote if that is intended", addr, ln.Addr())
	}
	if allowRemote {
		fmt.Fprintln(stderr, "lapse mcp: warning: --allow-remote: the API key crosses the network in clear unless TLS is put in front of this endpoint")
	}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{
		SessionTimeout:      mcpSessionTimeout,
		MaxRequestBodyBytes: mcpMaxBody,
	})
	mux := http.NewServeMux()
	mux.Handle(mcpPath, requireBearer(token, http.NewCrossOriginProtection().Handler(h)))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeMCPHTTPError(w, http.StatusNotFound, lapse.ENOTFOUND, "the MCP endpoint is "+mcpPath)
	})
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	fmt.Fprintf(stderr, "lapse mcp: serving MCP (streamable HTTP) at http://%s%s\n", ln.Addr(), mcpPath)
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("mcp: serve: %w", err)
	case <-ctx.Done():
	}
	// Open event streams do not end by themselves: give calls in flight a
	// moment, then close what is left.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-done
	return nil
}

// requireBearer lets a request through only with exactly one
// "Authorization: Bearer" header holding token, compared in constant time
// (as digests, so not even its length leaks). The header is removed before
// the MCP layer sees the request: it speaks to Lapse with its own copy.
func requireBearer(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := false
		if hs := r.Header.Values("Authorization"); len(hs) == 1 {
			scheme, secret, found := strings.Cut(hs[0], " ")
			secret = strings.TrimLeft(secret, " ")
			if found && strings.EqualFold(scheme, "Bearer") && secret != "" {
				got := sha256.Sum256([]byte(secret))
				ok = subtle.ConstantTimeCompare(got[:], want[:]) == 1
			}
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lapse mcp"`)
			writeMCPHTTPError(w, http.StatusUnauthorized, lapse.EUNAUTHORIZED,
				"missing or wrong credential: present the API key lapse mcp acts with, as Authorization: Bearer KEY")
			return
		}
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r)
	})
}

// writeMCPHTTPError answers with Lapse's JSON error shape.
func writeMCPHTTPError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

const mcpInstructions = `Lapse is a just-in-time access broker: nothing holds standing privilege, and access to a system is granted for one task and taken away afterwards, with proof.
Use list_entitlements to find what you may ask for, request_access to ask (shortest duration that works, a reason a human can judge), get_status to follow a request or grant, claim_credentials to fetch credentials once a grant is active, and release_access as soon as the task is done.
Some entitlements are granted at once by policy; others wait for a human approver. You cannot approve, deny or revoke anything, and must not ask the user to approve on your behalf through other channels unless they offer.
With an agent's key you ask on behalf of the human sponsor who gave you a mandate: you get at most what the sponsor could, within the mandate, and the sponsor cannot approve what you ask for them; another person must.
Credentials are shown once: use them only for the task and never write them into files, logs, tickets or chat.`

// mcpTools are the tools of the MCP server, on top of the narrow service.
type mcpTools struct {
	svc  mcpService
	args map[string]*argSpec // per tool: its arguments, checked before the SDK's schema validation
}

// newMCPServer returns an MCP server with Lapse's tools over svc.
func newMCPServer(svc mcpService) *mcp.Server {
	t := &mcpTools{svc: svc, args: map[string]*argSpec{}}
	s := mcp.NewServer(&mcp.Implementation{Name: "lapse", Title: "Lapse just-in-time access", Version: versionString()}, &mcp.ServerOptions{
		Instructions: mcpInstructions,
		// Only tools: no logging capability (the default) that could carry
		// anything but what a tool returns.
		Capabilities: &mcp.ServerCapabilities{},
	})
	addTool(t, s, &mcp.Tool{
		Name:  "list_entitlements",
		Title: "List requestable access",
		Description: "List the entitlements (privileges on target systems) that you may request: their name, target, default and maximum " +
			"duration, whether policy grants them at once (approval \"auto\") or a human must approve, and whether a reason or ticket is " +
			"required. Call this first to find the exact entitlement name for request_access.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: new(false)},
	}, t.listEntitlements)
	addTool(t, s, &mcp.Tool{
		Name:  "request_access",
		Title: "Request just-in-time access",
		Description: "Ask Lapse for access to one entitlement for the current task. If policy grants it at once, the result carries the grant " +
			"and its credentials, which are shown once: use them directly, do not store or repeat them. Otherwise the request waits for a " +
			"human approver (state pending); you cannot approve it yourself, and nothing here can. Follow it with get_status. Ask for the " +
			"shortest duration the task needs, give a reason a human approver can judge, and call release_access as soon as the task is done.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: new(false), OpenWorldHint: new(true)},
	}, t.requestAccess)
	addTool(t, s, &mcp.Tool{
		Name:  "get_status",
		Title: "Get the status of a request or grant",
		Description: "Show the current state of your request (id req_...) or grant (id gr_...): whether a request is pending, approved, " +
			"denied, cancelled or expired, and whether its grant is scheduled, provisioning, active, revoking, verifying, revoked (revocation " +
			"verified on every checkpoint) or revoke_failed (Lapse keeps retrying). The \"next\" field says what to do next. Never returns credentials.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: new(false)},
	}, t.getStatus)
	addTool(t, s, &mcp.Tool{
		Name:  "claim_credentials",
		Title: "Claim an active grant's credentials",
		Description: "Fetch the credentials of your active grant when request_access did not return them (the request needed approval, or " +
			"the grant was still being provisioned). They are shown once: a second claim fails with code \"gone\". Use them only for the " +
			"task and never write them into files, logs, tickets or chat.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: new(false), OpenWorldHint: new(false)},
	}, t.claimCredentials)
	addTool(t, s, &mcp.Tool{
		Name:  "release_access",
		Title: "Release a grant",
		Description: "Give your grant back as soon as the task is done. Lapse removes the privilege, ends live sessions and verifies on " +
			"every checkpoint that the access is gone; this tool waits for that verification (up to 90 seconds) and returns the grant in " +
			"state revoked. If revocation is not verified yet, the result is an error that carries the current state; Lapse keeps " +
			"retrying by itself, follow it with get_status.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: new(true), IdempotentHint: true, OpenWorldHint: new(false)},
	}, t.releaseAccess)
	s.AddReceivingMiddleware(t.checkArguments)
	return s
}

// addTool registers a typed tool with the SDK (which derives its JSON
// schema from In and Out and validates both) and records In's arguments
// for checkArguments. Errors become MCP tool errors in Lapse's shape.
func addTool[In, Out any](t *mcpTools, s *mcp.Server, tool *mcp.Tool, h func(context.Context, In) (*mcp.CallToolResult, Out, error)) {
	t.args[tool.Name] = argSpecFor(reflect.TypeFor[In]())
	mcp.AddTool(s, tool, func(ctx context.Context, _ *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		res, out, err := h(ctx, in)
		if err != nil {
			var zero Out
			return nil, zero, toolError(err)
		}
		return res, out, nil
	})
}

// checkArguments checks a tool call's arguments against the tool's input
// struct before the SDK validates them against the schema, so that a
// malformed input is answered like every other Lapse error: code invalid
// and the argument's name as the field.
func (t *mcpTools) checkArguments(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		if r, ok := req.(*mcp.CallToolRequest); ok && method == "tools/call" && r.Params != nil {
			if spec := t.args[r.Params.Name]; spec != nil {
				if err := spec.check(r.Params.Arguments); err != nil {
					res := &mcp.CallToolResult{}
					res.SetError(toolError(err))
					return res, nil
				}
			}
		}
		return next(ctx, method, req)
	}
}

// argSpec describes a tool's input struct: string fields, required unless
// tagged omitempty.
type argSpec struct {
	names    []string
	required map[string]bool
}

func argSpecFor(t reflect.Type) *argSpec {
	a := &argSpec{required: map[string]bool{}}
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Type.Kind() != reflect.String || name == "" || name == "-" {
			panic(fmt.Sprintf("mcp: tool input field %s must be a string with a JSON name", f.Name))
		}
		a.names = append(a.names, name)
		a.required[name] = !slices.Contains(strings.Split(opts, ","), "omitempty")
	}
	return a
}

// check reports the first problem with raw arguments as an EINVALID error
// naming the argument.
func (a *argSpec) check(raw json.RawMessage) error {
	var args map[string]json.RawMessage
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &args); err != nil {
			return lapse.Errorf(lapse.EINVALID, "the arguments must be a JSON object")
		}
	}
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(a.names, k) {
			return lapse.FieldErrorf(lapse.EINVALID, truncate(k, 64), "unknown argument %q; this tool takes %s", truncate(k, 64), strings.Join(a.names, ", "))
		}
		var s string
		if string(args[k]) == "null" || json.Unmarshal(args[k], &s) != nil {
			return lapse.FieldErrorf(lapse.EINVALID, k, "%s must be a string", k)
		}
	}
	for _, k := range a.names {
		var s string
		if a.required[k] && (json.Unmarshal(args[k], &s) != nil || strings.TrimSpace(s) == "") {
			return lapse.FieldErrorf(lapse.EINVALID, k, "%s is required", k)
		}
	}
	return nil
}

// mcpError is a tool error as the agent sees it: the JSON error object of
// the Lapse API, with its stable code and the offending field. It carries
// only the error's safe message, never a secret or an internal cause.
type mcpError struct {
	Code    string `json:"code"`
	Field   string `json:"field,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message"`
}

func (e *mcpError) Error() string {
	b, _ := json.Marshal(map[string]*mcpError{"error": e}) // strings only: cannot fail
	return string(b)
}

// toolError turns any error into an *mcpError.
func toolError(err error) error {
	var le *lapse.Error
	if !errors.As(err, &le) {
		return &mcpError{Code: lapse.EINTERNAL, Message: "internal error"}
	}
	msg := lapse.ErrorMessage(err)
	// Like the CLI: say why the server cannot be reached; the cause names
	// an address, not a secret.
	var ne *url.Error
	if le.Code == lapse.EUNAVAILABLE && errors.As(le.Err, &ne) {
		msg += ": " + ne.Err.Error()
	}
	return &mcpError{Code: le.Code, Field: le.Field, Reason: lapse.ErrorReason(err), Message: msg}
}

// Tool inputs. Every field is a string; omitempty marks it optional.
type (
	listEntitlementsInput struct{}
	requestAccessInput    struct {
		Entitlement string `json:"entitlement" jsonschema:"the entitlement's exact name as list_entitlements shows it, like demo-api/status"`
		Duration    string `json:"duration,omitempty" jsonschema:"how long the access should last, as a duration like 15m or 1h; default the entitlement's default, at most its maximum"`
		Reason      string `json:"reason,omitempty" jsonschema:"why the task needs this access, in words a human approver can judge; required by some entitlements"`
		Ticket      string `json:"ticket,omitempty" jsonschema:"ticket or incident reference the task belongs to; required by some entitlements"`
		TaskID      string `json:"task_id,omitempty" jsonschema:"ID of the task this access is for; the grant belongs to the task"`
		OnBehalfOf  string `json:"on_behalf_of,omitempty" jsonschema:"the human sponsor you ask for, when mandates of several sponsors cover the request; otherwise leave it out"`
	}
	getStatusInput struct {
		ID string `json:"id" jsonschema:"a request ID (req_...) or grant ID (gr_...) as request_access returned it"`
	}
	grantIDInput struct {
		GrantID string `json:"grant_id" jsonschema:"the grant ID (gr_...) as request_access or get_status returned it"`
	}
)

// Tool outputs: what an agent needs to act, not the whole API object.
type (
	entitlementView struct {
		Name            string `json:"name"`
		Description     string `json:"description,omitempty"`
		Target          string `json:"target"`
		DefaultDuration string `json:"default_duration,omitempty"`
		MaxDuration     string `json:"max_duration,omitempty"`
		Approval        string `json:"approval" jsonschema:"auto: granted at once by policy; otherwise how many human approvals it needs"`
		RequireReason   bool   `json:"require_reason"`
		RequireTicket   bool   `json:"require_ticket"`
	}
	entitlementsOutput struct {
		Entitlements []entitlementView `json:"entitlements"`
	}
	voteView struct {
		Decision string `json:"decision"`
		By       string `json:"by"`
		Comment  string `json:"comment,omitempty"`
	}
	requestView struct {
		ID           string     `json:"id"`
		Entitlement  string     `json:"entitlement"`
		State        string     `json:"state" jsonschema:"pending, approved, denied, cancelled or expired"`
		Duration     string     `json:"duration"`
		Reason       string     `json:"reason,omitempty"`
		Ticket       string     `json:"ticket,omitempty"`
		TaskID       string     `json:"task_id,omitempty"`
		Approvals    int        `json:"approvals" jsonschema:"human approvals so far"`
		Required     int        `json:"required_approvals" jsonschema:"approvals policy demands; 0 when policy grants at once"`
		Votes        []voteView `json:"votes,omitempty"`
		GrantID      string     `json:"grant_id,omitempty"`
		DecisionNote string     `json:"decision_note,omitempty"`
		PendingUntil time.Time  `json:"pending_until,omitzero" jsonschema:"when a pending request expires without a decision"`
	}
	checkpointView struct {
		Name     string   `json:"name"`
		Kind     string   `json:"kind"`
		Verified bool     `json:"revocation_verified"`
		Residue  []string `json:"residue,omitempty"`
	}
	grantView struct {
		ID                 string            `json:"id"`
		RequestID          string            `json:"request_id"`
		Entitlement        string            `json:"entitlement"`
		Target             string            `json:"target"`
		TaskID             string            `json:"task_id,omitempty"`
		State              string            `json:"state" jsonschema:"scheduled, provisioning, active, revoking, verifying, revoked or revoke_failed"`
		EndReason          string            `json:"end_reason,omitempty"`
		ExpiresAt          time.Time         `json:"expires_at,omitzero"`
		RevokedAt          time.Time         `json:"revoked_at,omitzero"`
		CredentialsClaimed bool              `json:"credentials_claimed"`
		Info               map[string]string `json:"info,omitempty" jsonschema:"non-secret facts about the credentials"`
		LastError          string            `json:"last_error,omitempty"`
		Checkpoints        []checkpointView  `json:"checkpoints,omitempty" jsonschema:"every system that must confirm revocation"`
	}
	credentialsView struct {
		GrantID   string            `json:"grant_id"`
		Target    string            `json:"target"`
		ExpiresAt time.Time         `json:"expires_at"`
		Secret    map[string]string `json:"secret"`
		Info      map[string]string `json:"info,omitempty"`
		Note      string            `json:"note"`
	}
	accessOutput struct {
		Request     *requestView     `json:"request,omitempty"`
		Grant       *grantView       `json:"grant,omitempty"`
		Credentials *credentialsView `json:"credentials,omitempty" jsonschema:"only when issued now; shown once"`
		Next        string           `json:"next" jsonschema:"what to do next"`
	}
)

const credentialsNote = "Shown once: Lapse keeps no copy it could show again. Use them only for this task, never write them into files, logs, tickets or chat, and call release_access when the task is done."

func (t *mcpTools) listEntitlements(ctx context.Context, _ listEntitlementsInput) (*mcp.CallToolResult, entitlementsOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	list, err := t.svc.Entitlements(ctx)
	if err != nil {
		return nil, entitlementsOutput{}, err
	}
	out := entitlementsOutput{Entitlements: make([]entitlementView, 0, len(list))}
	for _, e := range list {
		if e == nil {
			continue
		}
		v := entitlementView{
			Name: e.Name, Description: e.Description, Target: e.Target,
			Approval: approvalRule(e.Approval), RequireReason: e.RequireReason, RequireTicket: e.RequireTicket,
		}
		if e.DefaultDuration > 0 {
			v.DefaultDuration = humanDuration(e.DefaultDuration.D())
		}
		if e.MaxDuration > 0 {
			v.MaxDuration = humanDuration(e.MaxDuration.D())
		}
		out.Entitlements = append(out.Entitlements, v)
	}
	return nil, out, nil
}

func (t *mcpTools) requestAccess(ctx context.Context, a requestAccessInput) (*mcp.CallToolResult, accessOutput, error) {
	in := lapse.RequestInput{
		Entitlement: strings.TrimSpace(a.Entitlement),
		Reason:      a.Reason,
		Ticket:      a.Ticket,
		TaskID:      a.TaskID,
		OnBehalfOf:  strings.TrimSpace(a.OnBehalfOf),
	}
	if d := strings.TrimSpace(a.Duration); d != "" {
		v, err := lapse.ParseDuration(d)
		if err != nil {
			return nil, accessOutput{}, err
		}
		if v <= 0 {
			return nil, accessOutput{}, lapse.FieldErrorf(lapse.EINVALID, "duration", "duration must be positive, like 15m")
		}
		in.Duration = lapse.Duration(v)
	}
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	res, err := t.svc.CreateRequest(ctx, in)
	if err != nil {
		return nil, accessOutput{}, err
	}
	if res.Request == nil {
		return nil, accessOutput{}, lapse.Errorf(lapse.EINTERNAL, "the server returned no request")
	}
	return nil, access(res.Request, res.Grant, res.Credentials), nil
}

func (t *mcpTools) getStatus(ctx context.Context, a getStatusInput) (*mcp.CallToolResult, accessOutput, error) {
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	id := strings.TrimSpace(a.ID)
	var (
		r   *lapse.Request
		g   *lapse.Grant
		err error
	)
	switch {
	case lapse.ValidID(lapse.PrefixRequest, id):
		if r, err = t.svc.GetRequest(ctx, id); err != nil {
			return nil, accessOutput{}, err
		}
		if r.GrantID != "" {
			if g, err = t.svc.GetGrant(ctx, r.GrantID); err != nil {
				return nil, accessOutput{}, err
			}
		}
	case lapse.ValidID(lapse.PrefixGrant, id):
		if g, err = t.svc.GetGrant(ctx, id); err != nil {
			return nil, accessOutput{}, err
		}
	default:
		return nil, accessOutput{}, lapse.FieldErrorf(lapse.EINVALID, "id", "id must be a request ID (req_...) or a grant ID (gr_...) as request_access returned it")
	}
	return nil, access(r, g, nil), nil
}

func (t *mcpTools) claimCredentials(ctx context.Context, a grantIDInput) (*mcp.CallToolResult, accessOutput, error) {
	id, err := parseGrantID(a.GrantID)
	if err != nil {
		return nil, accessOutput{}, err
	}
	// Once the claim is sent it is not cancelled with the tool call: the
	// credentials can be claimed only once, and an answer dropped halfway
	// would lose them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
	defer cancel()
	creds, err := t.svc.ClaimCredentials(ctx, id)
	if err != nil {
		return nil, accessOutput{}, err
	}
	out := access(nil, nil, creds)
	return nil, out, nil
}

func (t *mcpTools) releaseAccess(ctx context.Context, a grantIDInput) (*mcp.CallToolResult, accessOutput, error) {
	id, err := parseGrantID(a.GrantID)
	if err != nil {
		return nil, accessOutput{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, mcpReleaseTimeout)
	defer cancel()
	g, err := t.svc.Release(rctx, id, lapse.ReleaseInput{Wait: true})
	if err != nil && rctx.Err() != nil && ctx.Err() == nil {
		// The wait ran out, not the release: report where it stands.
		gctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
		defer cancel()
		g, err = t.svc.GetGrant(gctx, id)
	}
	if err != nil {
		return nil, accessOutput{}, err
	}
	out := access(nil, g, nil)
	if g.State != lapse.GrantRevoked {
		return &mcp.CallToolResult{IsError: true}, out, nil
	}
	return nil, out, nil
}

func parseGrantID(s string) (string, error) {
	id := strings.TrimSpace(s)
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return "", lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant_id must be a grant ID (gr_...) as request_access or get_status returned it")
	}
	return id, nil
}

// access builds a tool's answer from what is known of a request, its grant
// and freshly issued credentials, with the next step spelled out.
func access(r *lapse.Request, g *lapse.Grant, c *lapse.Credentials) accessOutput {
	var out accessOutput
	if r != nil {
		out.Request = viewRequest(r)
	}
	if g != nil {
		out.Grant = viewGrant(g)
	}
	if c != nil {
		out.Credentials = &credentialsView{
			GrantID: c.GrantID, Target: c.Target, ExpiresAt: c.ExpiresAt,
			Secret: c.Secret, Info: c.Info, Note: credentialsNote,
		}
		if out.Credentials.Secret == nil {
			out.Credentials.Secret = map[string]string{}
		}
	}
	out.Next = nextStep(r, g, c)
	return out
}

// nextStep tells the agent what to do next, naming the tool and the ID.
func nextStep(r *lapse.Request, g *lapse.Grant, c *lapse.Credentials) string {
	if c != nil {
		return fmt.Sprintf("Use these credentials for the task now; they expire at %s and are shown once. When the task is done, call release_access with grant_id %s.",
			c.ExpiresAt.UTC().Format(time.RFC3339), c.GrantID)
	}
	if g == nil && r != nil {
		switch r.State {
		case lapse.RequestPending:
			return fmt.Sprintf("Request %s waits for %s. You cannot approve it yourself. Call get_status with id %s later to see the decision.",
				r.ID, plural(max(r.Required-countApprovals(r), 1), "human approval", "human approvals"), r.ID)
		case lapse.RequestApproved:
			return fmt.Sprintf("Request %s is approved and its grant is being created. Call get_status with id %s again shortly.", r.ID, r.ID)
		default:
			return fmt.Sprintf("Request %s is %s and will not be granted. File a new request only if the task still needs the access and you have new information for the approver.", r.ID, r.State)
		}
	}
	if g == nil {
		return "Nothing to do."
	}
	switch g.State {
	case lapse.GrantScheduled, lapse.GrantProvisioning:
		return fmt.Sprintf("Grant %s is %s. Call get_status with id %s again shortly; once it is active, call claim_credentials with grant_id %s.", g.ID, g.State, g.ID, g.ID)
	case lapse.GrantActive:
		if !g.CredentialsClaimed {
			return fmt.Sprintf("Grant %s is active. Call claim_credentials with grant_id %s to get its credentials (once), and release_access when the task is done.", g.ID, g.ID)
		}
		return fmt.Sprintf("Grant %s is active until %s; its credentials were already claimed. Call release_access with grant_id %s when the task is done.",
			g.ID, g.ExpiresAt.UTC().Format(time.RFC3339), g.ID)
	case lapse.GrantRevoking, lapse.GrantVerifying:
		return fmt.Sprintf("Grant %s is being revoked and the revocation verified. Call get_status with id %s to follow it.", g.ID, g.ID)
	case lapse.GrantRevokeFailed:
		return fmt.Sprintf("Lapse could not verify the revocation of grant %s yet and keeps retrying by itself. Call get_status with id %s later.", g.ID, g.ID)
	case lapse.GrantRevoked:
		return fmt.Sprintf("Grant %s is revoked and the revocation is verified on every checkpoint. Nothing is left to do.", g.ID)
	}
	return fmt.Sprintf("Call get_status with id %s to follow grant %s.", g.ID, g.ID)
}

func viewRequest(r *lapse.Request) *requestView {
	v := &requestView{
		ID: r.ID, Entitlement: r.Entitlement, State: string(r.State), Duration: humanDuration(r.Duration.D()),
		Reason: r.Reason, Ticket: r.Ticket, TaskID: r.TaskID,
		Approvals: countApprovals(r), Required: r.Required, GrantID: r.GrantID, DecisionNote: r.DecisionNote,
	}
	if r.State == lapse.RequestPending {
		v.PendingUntil = r.ExpiresAt
	}
	for _, a := range r.Approvals {
		if a != nil {
			v.Votes = append(v.Votes, voteView{Decision: string(a.Decision), By: principalName(a.Approver), Comment: a.Comment})
		}
	}
	return v
}

func viewGrant(g *lapse.Grant) *grantView {
	v := &grantView{
		ID: g.ID, RequestID: g.RequestID, Entitlement: g.Entitlement, Target: g.Target, TaskID: g.TaskID,
		State: string(g.State), EndReason: string(g.EndReason), ExpiresAt: g.ExpiresAt, RevokedAt: g.RevokedAt,
		CredentialsClaimed: g.CredentialsClaimed, Info: g.Info, LastError: g.LastError,
	}
	for _, c := range g.Checkpoints {
		if c != nil {
			v.Checkpoints = append(v.Checkpoints, checkpointView{Name: c.Name, Kind: string(c.Kind), Verified: c.Verified(), Residue: c.Residue})
		}
	}
	return v
}
