// Package client speaks Lapse's HTTP API (see package api and its
// openapi.yaml). It does not import the server, so a program that only
// calls Lapse does not link it. Client implements lapse.Service over HTTP, so the CLI and
// other Go programs use the same interface as the server, plus the token
// target endpoints (introspection, JWKS, revocation feed) and health checks.
//
// Errors the server sends come back as *lapse.Error with the code, field and
// message from the response; a failure to reach the server is EUNAVAILABLE.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector/token"
)

// HeaderChannel is the request header that names the surface a call came
// through (package api reads it).
const HeaderChannel = "X-Lapse-Channel"

// maxResponse bounds how much of a response the client reads: a server
// (or something impersonating one) cannot make it allocate without limit.
const maxResponse = 32 << 20

// Client calls one Lapse server. Its fields may be changed before first use,
// not concurrently with calls.
type Client struct {
	// BaseURL is the server's root ("https://lapse.example.com"), without /v1.
	BaseURL string
	// Token is the API key sent as "Authorization: Bearer". It is never
	// included in an error or a log line.
	Token string
	// HTTPClient makes the requests. New sets one whose transport keeps
	// enough idle connections for concurrent use.
	HTTPClient *http.Client
	// Channel, when set, is sent as X-Lapse-Channel ("cli" for the CLI), so
	// the audit trail records which surface an action came from.
	Channel string
	// UserAgent, when set, is sent as User-Agent.
	UserAgent string
}

var _ lapse.Service = (*Client)(nil)

// New returns a client for the server at baseURL that authenticates with
// token (an API key; empty for public endpoints only).
func New(baseURL, token string) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// The default keeps 2 idle connections per host, which makes a client
	// shared by many goroutines open and close connections constantly.
	tr.MaxIdleConnsPerHost = 64
	return &Client{
		BaseURL:    strings.TrimRight(baseURL, "/"),
		Token:      token,
		HTTPClient: &http.Client{Transport: tr},
		UserAgent:  "lapse-client",
	}
}

// call describes one HTTP exchange.
type call struct {
	method string
	path   string // already escaped
	query  url.Values
	body   any // JSON-encoded when non-nil
	form   url.Values
	auth   bool
	want   int // the success status
	out    any // decoded from a success response when non-nil
}

func (c *Client) do(ctx context.Context, cl call) error {
	resp, err := c.send(ctx, cl)
	if err != nil {
		return err
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
	}()
	if resp.StatusCode != cl.want {
		return responseError(resp)
	}
	if cl.out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(cl.out); err != nil {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "malformed response from the lapse server", Err: err}
	}
	return nil
}

// send makes the HTTP request of cl and returns the response, or an
// EUNAVAILABLE error if the server could not be reached.
func (c *Client) send(ctx context.Context, cl call) (*http.Response, error) {
	u := c.BaseURL + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var body io.Reader
	var contentType string
	switch {
	case cl.body != nil:
		b, err := json.Marshal(cl.body)
		if err != nil {
			return nil, lapse.Internal("client: encode request", err)
		}
		body, contentType = bytes.NewReader(b), "application/json"
	case cl.form != nil:
		body, contentType = strings.NewReader(cl.form.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return nil, &lapse.Error{Code: lapse.EINVALID, Message: "invalid server URL", Err: err}
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if cl.auth && c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.Channel != "" {
		req.Header.Set(HeaderChannel, c.Channel)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		// The error names the URL, never the Authorization header.
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot reach the lapse server", Err: err}
	}
	return resp, nil
}

// responseError turns an error response into a *lapse.Error: the server's
// code, field and message when the body is Lapse's error JSON, otherwise a
// code derived from the status (a proxy's 502 is EUNAVAILABLE).
func responseError(resp *http.Response) error {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
			Reason  string `json:"reason"`
		} `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, &body) == nil && body.Error.Code != "" {
		return &lapse.Error{Code: body.Error.Code, Field: body.Error.Field, Reason: body.Error.Reason, Message: body.Error.Message}
	}
	return &lapse.Error{Code: codeForStatus(resp.StatusCode), Message: fmt.Sprintf("unexpected HTTP status %d from the lapse server", resp.StatusCode)}
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType, http.StatusMethodNotAllowed:
		return lapse.EINVALID
	case http.StatusUnauthorized:
		return lapse.EUNAUTHORIZED
	case http.StatusForbidden:
		return lapse.EFORBIDDEN
	case http.StatusNotFound:
		return lapse.ENOTFOUND
	case http.StatusConflict:
		return lapse.ECONFLICT
	case http.StatusGone:
		return lapse.EGONE
	case http.StatusRequestEntityTooLarge:
		return lapse.ETOOLARGE
	case http.StatusTooManyRequests:
		return lapse.ERATELIMITED
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return lapse.EUNAVAILABLE
	}
	return lapse.EINTERNAL
}

func esc(s string) string { return url.PathEscape(s) }

// Whoami returns the principal the client's key authenticates as.
func (c *Client) Whoami(ctx context.Context) (*lapse.Principal, error) {
	var p lapse.Principal
	if err := c.do(ctx, call{method: "GET", path: "/v1/whoami", auth: true, want: 200, out: &p}); err != nil {
		return nil, err
	}
	return &p, nil
}

// Entitlements returns the catalog entries the caller may request.
func (c *Client) Entitlements(ctx context.Context) ([]*lapse.Entitlement, error) {
	var out struct {
		Entitlements []*lapse.Entitlement `json:"entitlements"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/entitlements", auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return out.Entitlements, nil
}

// CreateRequest files a request; for an auto-approved entitlement the result
// carries the grant and its credentials.
func (c *Client) CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
	var out lapse.RequestResult
	if err := c.do(ctx, call{method: "POST", path: "/v1/requests", body: in, auth: true, want: 201, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetRequest returns one request.
func (c *Client) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	var out lapse.Request
	if err := c.do(ctx, call{method: "GET", path: "/v1/requests/" + esc(id), auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListRequests returns the requests the caller may see.
func (c *Client) ListRequests(ctx context.Context, f lapse.RequestFilter) ([]*lapse.Request, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.RequesterID != "" {
		q.Set("requester", f.RequesterID)
	}
	if f.ReviewPending {
		q.Set("review_pending", "true")
	}
	if f.Approvable {
		q.Set("approvable", "true")
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Requests []*lapse.Request `json:"requests"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/requests", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return out.Requests, nil
}

// Approve records the caller's approval of request id.
func (c *Client) Approve(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	return c.requestAction(ctx, id, "approve", in)
}

// Deny records the caller's denial of request id.
func (c *Client) Deny(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	return c.requestAction(ctx, id, "deny", in)
}

// CancelRequest withdraws the caller's own pending request.
func (c *Client) CancelRequest(ctx context.Context, id string) (*lapse.Request, error) {
	return c.requestAction(ctx, id, "cancel", nil)
}

// ReviewRequest records the post-review of a break-glass request.
func (c *Client) ReviewRequest(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error) {
	return c.requestAction(ctx, id, "review", in)
}

func (c *Client) requestAction(ctx context.Context, id, action string, in any) (*lapse.Request, error) {
	var out lapse.Request
	if err := c.do(ctx, call{method: "POST", path: "/v1/requests/" + esc(id) + "/" + action, body: in, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetGrant returns a grant with its checkpoints and events.
func (c *Client) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	var out lapse.Grant
	if err := c.do(ctx, call{method: "GET", path: "/v1/grants/" + esc(id), auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListGrants returns the grants the caller may see.
func (c *Client) ListGrants(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.PrincipalID != "" {
		q.Set("principal", f.PrincipalID)
	}
	if f.Target != "" {
		q.Set("target", f.Target)
	}
	if f.Entitlement != "" {
		q.Set("entitlement", f.Entitlement)
	}
	if f.RequestID != "" {
		q.Set("request", f.RequestID)
	}
	if f.Live {
		q.Set("live", "true")
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Grants []*lapse.Grant `json:"grants"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/grants", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return out.Grants, nil
}

// ClaimCredentials returns the grant's credentials, once.
func (c *Client) ClaimCredentials(ctx context.Context, grantID string) (*lapse.Credentials, error) {
	var out lapse.Credentials
	if err := c.do(ctx, call{method: "POST", path: "/v1/grants/" + esc(grantID) + "/credentials", auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// Release ends the caller's own grant now.
func (c *Client) Release(ctx context.Context, grantID string, in lapse.ReleaseInput) (*lapse.Grant, error) {
	return c.grantAction(ctx, grantID, "release", in)
}

// Revoke ends any grant now (scope revoke).
func (c *Client) Revoke(ctx context.Context, grantID string, in lapse.RevokeInput) (*lapse.Grant, error) {
	return c.grantAction(ctx, grantID, "revoke", in)
}

// ExtendGrant asks for more time on the caller's active grant.
func (c *Client) ExtendGrant(ctx context.Context, grantID string, in lapse.ExtendInput) (*lapse.RequestResult, error) {
	var out lapse.RequestResult
	if err := c.do(ctx, call{method: "POST", path: "/v1/grants/" + esc(grantID) + "/extend", body: in, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) grantAction(ctx context.Context, id, action string, in any) (*lapse.Grant, error) {
	var out lapse.Grant
	if err := c.do(ctx, call{method: "POST", path: "/v1/grants/" + esc(id) + "/" + action, body: in, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateAPIKey creates a key; the secret is in the result, once.
func (c *Client) CreateAPIKey(ctx context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error) {
	var out lapse.NewAPIKey
	if err := c.do(ctx, call{method: "POST", path: "/v1/apikeys", body: in, auth: true, want: 201, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListAPIKeys lists keys.
func (c *Client) ListAPIKeys(ctx context.Context) ([]*lapse.APIKey, error) {
	var out struct {
		APIKeys []*lapse.APIKey `json:"apikeys"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/apikeys", auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return out.APIKeys, nil
}

// RevokeAPIKey revokes the key with this prefix.
func (c *Client) RevokeAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	var out lapse.APIKey
	if err := c.do(ctx, call{method: "DELETE", path: "/v1/apikeys/" + esc(prefix), auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateMandate gives an agent a mandate to ask on the caller's behalf.
func (c *Client) CreateMandate(ctx context.Context, in lapse.MandateInput) (*lapse.Mandate, error) {
	var out lapse.Mandate
	if err := c.do(ctx, call{method: "POST", path: "/v1/mandates", body: in, auth: true, want: 201, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListMandates returns the mandates the caller may see. LiveAt is not
// sent: Live asks the server for the mandates in force on its clock.
func (c *Client) ListMandates(ctx context.Context, f lapse.MandateFilter) ([]*lapse.Mandate, error) {
	q := url.Values{}
	if f.AgentID != "" {
		q.Set("agent", f.AgentID)
	}
	if f.SponsorID != "" {
		q.Set("sponsor", f.SponsorID)
	}
	if f.Live {
		q.Set("live", "true")
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Mandates []*lapse.Mandate `json:"mandates"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/mandates", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return out.Mandates, nil
}

// RevokeMandate ends a mandate, and the grants its agent holds under it.
func (c *Client) RevokeMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	var out lapse.Mandate
	if err := c.do(ctx, call{method: "DELETE", path: "/v1/mandates/" + esc(id), auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// Introspect asks token target whether tok is active (RFC 7662). The
// client's key needs scope introspect.
func (c *Client) Introspect(ctx context.Context, target, tok string) (*token.Introspection, error) {
	var out token.Introspection
	if err := c.do(ctx, call{method: "POST", path: "/v1/targets/" + esc(target) + "/introspect", form: url.Values{"token": {tok}}, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// JWKS returns the public keys that verify the tokens of target.
func (c *Client) JWKS(ctx context.Context, target string) (*jose.JSONWebKeySet, error) {
	var out jose.JSONWebKeySet
	if err := c.do(ctx, call{method: "GET", path: "/v1/targets/" + esc(target) + "/jwks.json", want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// Feed returns the revocations of target after sequence after (at most
// limit; 0 for the server's default) and the sequence to pass next time.
// The client's key needs scope introspect.
func (c *Client) Feed(ctx context.Context, target string, after int64, limit int) ([]*lapse.TokenRevocation, int64, error) {
	q := url.Values{"after": {strconv.FormatInt(after, 10)}}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out struct {
		Revocations []*lapse.TokenRevocation `json:"revocations"`
		Next        int64                    `json:"next"`
	}
	if err := c.do(ctx, call{method: "GET", path: "/v1/targets/" + esc(target) + "/revocations", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, 0, err
	}
	return out.Revocations, out.Next, nil
}

// Ack tells target that consumer (the caller's own principal ID) has applied
// its revocation feed up to seq.
func (c *Client) Ack(ctx context.Context, target, consumer string, seq int64) error {
	in := struct {
		Consumer string `json:"consumer"`
		Seq      int64  `json:"seq"`
	}{consumer, seq}
	return c.do(ctx, call{method: "POST", path: "/v1/targets/" + esc(target) + "/revocations/ack", body: in, auth: true, want: 200})
}

// Health checks that the server is alive.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, call{method: "GET", path: "/healthz", want: 200})
}

// Ready checks that the server can serve; when it cannot, the error is
// EUNAVAILABLE with the server's reason.
func (c *Client) Ready(ctx context.Context) error {
	resp, err := c.send(ctx, call{method: "GET", path: "/readyz"})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	decErr := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	switch {
	case resp.StatusCode == http.StatusOK && decErr == nil && (body.Status == "ready" || body.Status == "degraded"):
		// A degraded server serves (and revokes); Health says why.
		return nil
	case body.Error != "":
		return lapse.Errorf(lapse.EUNAVAILABLE, "lapse server is not ready: %s", body.Error)
	}
	return lapse.Errorf(lapse.EUNAVAILABLE, "lapse server is not ready (HTTP status %d)", resp.StatusCode)
}

// OpenAPI returns the server's OpenAPI document (YAML).
func (c *Client) OpenAPI(ctx context.Context) ([]byte, error) {
	resp, err := c.send(ctx, call{method: "GET", path: "/v1/openapi.yaml"})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, responseError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot read the response", Err: err}
	}
	return b, nil
}
