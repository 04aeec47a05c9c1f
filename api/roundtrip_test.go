package api_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/api/client"
)

// TestClientRoundTrip calls every Service method through the client and
// checks that the server handed the Service exactly what the client sent,
// with the caller and channel, and that the client got back exactly what
// the Service returned.
func TestClientRoundTrip(t *testing.T) {
	e := newEnv(t)
	c := e.client("alice")
	c.Channel = lapse.ChannelCLI
	ctx := context.Background()
	reqID := lapse.NewID(lapse.PrefixRequest, t0)
	grantID := lapse.NewID(lapse.PrefixGrant, t0)

	checkCall := func(t *testing.T, method string, args ...any) {
		t.Helper()
		got := e.svc.last(t)
		if got.method != method {
			t.Fatalf("service method = %s, want %s", got.method, method)
		}
		if got.principal == nil || got.principal.ID != "alice" || got.principal.CredentialID == "" {
			t.Fatalf("service saw principal %+v, want alice with a credential ID", got.principal)
		}
		if got.channel != lapse.ChannelCLI {
			t.Fatalf("channel = %q, want cli", got.channel)
		}
		sameJSON(t, got.args, args)
	}

	t.Run("Whoami", func(t *testing.T) {
		p, err := c.Whoami(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != "alice" || p.Kind != lapse.KindHuman || !p.HasScope(lapse.ScopeApprove) || p.HasScope(lapse.ScopeRevoke) {
			t.Fatalf("whoami = %+v", p)
		}
		checkCall(t, "Whoami")
	})
	t.Run("Entitlements", func(t *testing.T) {
		got, err := c.Entitlements(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := e.svc.Entitlements(ctx)
		sameJSON(t, got, want)
	})
	t.Run("CreateRequest", func(t *testing.T) {
		in := lapse.RequestInput{Entitlement: "prod-db/read", Duration: lapse.Duration(90 * time.Minute), Reason: "incident 7", Ticket: "OPS-1", TaskID: "task-9"}
		res, err := c.CreateRequest(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "CreateRequest", in)
		if res.Request.Duration != in.Duration || res.Request.TaskID != "task-9" || res.Grant == nil || res.Credentials.Secret["token"] != "secret-token-value" {
			t.Fatalf("result = %+v", res)
		}
		if len(res.Grant.Checkpoints) != 1 || len(res.Grant.Events) != 1 {
			t.Fatalf("grant lost checkpoints or events: %+v", res.Grant)
		}
	})
	t.Run("CreateRequestDefaultDuration", func(t *testing.T) {
		// An omitted duration is the zero value: the Service applies the
		// entitlement's default.
		if _, err := c.CreateRequest(ctx, lapse.RequestInput{Entitlement: "prod-db/read"}); err != nil {
			t.Fatal(err)
		}
		checkCall(t, "CreateRequest", lapse.RequestInput{Entitlement: "prod-db/read"})
	})
	t.Run("GetRequest", func(t *testing.T) {
		got, err := c.GetRequest(ctx, reqID)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "GetRequest", reqID)
		sameJSON(t, got, fakeRequest(reqID))
	})
	t.Run("ListRequests", func(t *testing.T) {
		f := lapse.RequestFilter{State: lapse.RequestPending, RequesterID: "bob", Approvable: true, Limit: 7}
		got, err := c.ListRequests(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ListRequests", f)
		if len(got) != 2 || !lapse.ValidID(lapse.PrefixRequest, got[0].ID) {
			t.Fatalf("requests = %+v", got)
		}
	})
	t.Run("ListRequestsNormalisesRequester", func(t *testing.T) {
		if _, err := c.ListRequests(ctx, lapse.RequestFilter{RequesterID: " Bob "}); err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ListRequests", lapse.RequestFilter{RequesterID: "bob"})
	})
	t.Run("Approve", func(t *testing.T) {
		in := lapse.DecisionInput{Comment: "ok", RequestHash: "abc123"}
		got, err := c.Approve(ctx, reqID, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "Approve", reqID, in)
		if got.State != lapse.RequestApproved || got.ID != reqID {
			t.Fatalf("approve = %+v", got)
		}
	})
	t.Run("Deny", func(t *testing.T) {
		in := lapse.DecisionInput{Comment: "no"}
		got, err := c.Deny(ctx, reqID, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "Deny", reqID, in)
		if got.State != lapse.RequestDenied {
			t.Fatalf("deny = %+v", got)
		}
	})
	t.Run("CancelRequest", func(t *testing.T) {
		got, err := c.CancelRequest(ctx, reqID)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "CancelRequest", reqID)
		if got.State != lapse.RequestCancelled {
			t.Fatalf("cancel = %+v", got)
		}
	})
	t.Run("ReviewRequest", func(t *testing.T) {
		in := lapse.ReviewInput{Outcome: lapse.ReviewRejected, Comment: "no incident on record"}
		got, err := c.ReviewRequest(ctx, reqID, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ReviewRequest", reqID, in)
		if got.Review == nil || got.Review.State != lapse.ReviewRejected {
			t.Fatalf("review = %+v", got)
		}
	})
	t.Run("ExtendGrant", func(t *testing.T) {
		in := lapse.ExtendInput{Duration: lapse.Duration(30 * time.Minute), Reason: "the migration runs long"}
		got, err := c.ExtendGrant(ctx, grantID, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ExtendGrant", grantID, in)
		if got.Request == nil || got.Request.Extends != grantID {
			t.Fatalf("extend = %+v", got)
		}
	})
	t.Run("GetGrant", func(t *testing.T) {
		got, err := c.GetGrant(ctx, grantID)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "GetGrant", grantID)
		want := fakeGrant(grantID)
		want.RequestID = got.RequestID // random in the fake
		sameJSON(t, got, want)
		if string(got.Checkpoints[0].Evidence) != `{"role":"absent"}` || got.Events[0].Type != lapse.EventGrantProvisioned {
			t.Fatalf("grant detail lost: %+v", got)
		}
	})
	t.Run("ListGrants", func(t *testing.T) {
		f := lapse.GrantFilter{State: lapse.GrantRevokeFailed, PrincipalID: "carol", Target: "prod-db", Entitlement: "prod-db/read", RequestID: reqID, Live: true, Limit: 1000}
		got, err := c.ListGrants(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ListGrants", f)
		if len(got) != 1 {
			t.Fatalf("grants = %+v", got)
		}
	})
	t.Run("ClaimCredentials", func(t *testing.T) {
		got, err := c.ClaimCredentials(ctx, grantID)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ClaimCredentials", grantID)
		if got.GrantID != grantID || got.Secret["password"] != "pw" {
			t.Fatalf("credentials = %+v", got)
		}
	})
	t.Run("Release", func(t *testing.T) {
		got, err := c.Release(ctx, grantID, lapse.ReleaseInput{Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "Release", grantID, lapse.ReleaseInput{Wait: true})
		if got.EndReason != lapse.EndReleased {
			t.Fatalf("release = %+v", got)
		}
	})
	t.Run("Revoke", func(t *testing.T) {
		in := lapse.RevokeInput{Reason: "left the company", Wait: true}
		got, err := c.Revoke(ctx, grantID, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "Revoke", grantID, in)
		if got.State != lapse.GrantRevoked {
			t.Fatalf("revoke = %+v", got)
		}
	})
	t.Run("CreateAPIKey", func(t *testing.T) {
		in := lapse.APIKeyInput{PrincipalID: "ci", PrincipalKind: lapse.KindService, Groups: []string{"deploy"}, Scopes: []string{lapse.ScopeRequest}, Name: "ci key", TTL: lapse.Duration(24 * time.Hour)}
		got, err := c.CreateAPIKey(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "CreateAPIKey", in)
		if got.Secret == "" || got.Prefix != "abcdefghijkm" || got.Principal.ID != "ci" {
			t.Fatalf("new key = %+v", got)
		}
	})
	t.Run("ListAPIKeys", func(t *testing.T) {
		got, err := c.ListAPIKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ListAPIKeys")
		sameJSON(t, got, []any{fakeKey("abcdefghijkm"), fakeKey("zyxwvutsrqpn")})
	})
	t.Run("RevokeAPIKey", func(t *testing.T) {
		got, err := c.RevokeAPIKey(ctx, "zyxwvutsrqpn")
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "RevokeAPIKey", "zyxwvutsrqpn")
		if got.RevokedAt.IsZero() {
			t.Fatalf("key = %+v", got)
		}
	})
	t.Run("CreateMandate", func(t *testing.T) {
		in := lapse.MandateInput{AgentID: "ci-helper", Entitlements: []string{"prod-db/read", "cache/flush"},
			MaxDuration: lapse.Duration(15 * time.Minute), ExpiresIn: lapse.Duration(8 * time.Hour)}
		got, err := c.CreateMandate(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "CreateMandate", in)
		if !lapse.ValidID(lapse.PrefixMandate, got.ID) || got.AgentID != "ci-helper" || len(got.Entitlements) != 2 || got.MaxDuration != in.MaxDuration {
			t.Fatalf("mandate = %+v", got)
		}
	})
	t.Run("ListMandates", func(t *testing.T) {
		f := lapse.MandateFilter{AgentID: "ci-helper", SponsorID: "alice", Live: true, Limit: 5}
		got, err := c.ListMandates(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "ListMandates", f)
		if len(got) != 1 || got[0].Sponsor.ID != "alice" {
			t.Fatalf("mandates = %+v", got)
		}
	})
	t.Run("RevokeMandate", func(t *testing.T) {
		id := lapse.NewID(lapse.PrefixMandate, t0)
		got, err := c.RevokeMandate(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		checkCall(t, "RevokeMandate", id)
		if got.ID != id || got.RevokedAt.IsZero() {
			t.Fatalf("revoked mandate = %+v", got)
		}
	})
	t.Run("ServiceErrorsKeepCodeAndField", func(t *testing.T) {
		e.svc.setFail(lapse.FieldErrorf(lapse.EINVALID, "reason", "a reason is required"))
		defer e.svc.setFail(nil)
		_, err := c.CreateRequest(ctx, lapse.RequestInput{Entitlement: "prod-db/read"})
		wantCode(t, err, lapse.EINVALID, "reason")
		if !strings.Contains(lapse.ErrorMessage(err), "reason is required") {
			t.Fatalf("message = %q", lapse.ErrorMessage(err))
		}
		e.svc.setFail(lapse.Errorf(lapse.EGONE, "already claimed"))
		_, err = c.ClaimCredentials(ctx, grantID)
		wantCode(t, err, lapse.EGONE, "")
	})
}

// TestChannelDefaultsToAPI: without the header, or with anything but "cli",
// the Service sees channel api.
func TestChannelDefaultsToAPI(t *testing.T) {
	e := newEnv(t)
	for _, ch := range []string{"", "engine", "system", "CLI", "cli,api"} {
		c := e.client("alice")
		c.Channel = ch
		if _, err := c.Whoami(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := e.svc.last(t).channel; got != lapse.ChannelAPI {
			t.Errorf("channel header %q: service saw %q, want api", ch, got)
		}
	}
}

func TestTokenEndpointsRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client("consumer")

	t.Run("JWKS", func(t *testing.T) {
		anon := client.New(e.srv.URL, "")
		set, err := anon.JWKS(ctx, "api")
		if err != nil {
			t.Fatal(err)
		}
		keys := set.Key("k1")
		if len(keys) != 1 {
			t.Fatalf("jwks = %+v", set)
		}
		pub, ok := keys[0].Key.(ed25519.PublicKey)
		if !ok || !pub.Equal(e.target.pub) {
			t.Fatalf("key = %#v, want the target's Ed25519 key", keys[0].Key)
		}
		_, err = anon.JWKS(ctx, "nope")
		wantCode(t, err, lapse.ENOTFOUND, "name")
	})
	t.Run("Introspect", func(t *testing.T) {
		got, err := c.Introspect(ctx, "api", "good-token")
		if err != nil {
			t.Fatal(err)
		}
		if !got.Active || got.Sub != "alice" || got.Jti != "jti-1" {
			t.Fatalf("introspection = %+v", got)
		}
		got, err = c.Introspect(ctx, "api", "other")
		if err != nil || got.Active {
			t.Fatalf("introspection = %+v, %v; want inactive", got, err)
		}
	})
	t.Run("IntrospectNeedsScope", func(t *testing.T) {
		_, err := e.client("alice").Introspect(ctx, "api", "good-token")
		wantCode(t, err, lapse.EFORBIDDEN, "")
		_, err = client.New(e.srv.URL, "").Introspect(ctx, "api", "good-token")
		wantCode(t, err, lapse.EUNAUTHORIZED, "")
		// Admin implies every scope.
		if _, err := e.client("admin").Introspect(ctx, "api", "good-token"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Feed", func(t *testing.T) {
		revs, next, err := c.Feed(ctx, "api", 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(revs) != 2 || revs[0].Seq != 2 || revs[1].Seq != 3 || next != 3 {
			t.Fatalf("feed = %+v next %d", revs, next)
		}
		sameJSON(t, revs, e.target.feed[1:3])
		revs, next, err = c.Feed(ctx, "api", 5, 0)
		if err != nil || len(revs) != 0 || next != 5 {
			t.Fatalf("feed at end = %+v next %d err %v; want empty, next 5", revs, next, err)
		}
		_, _, err = e.client("alice").Feed(ctx, "api", 0, 0)
		wantCode(t, err, lapse.EFORBIDDEN, "")
	})
	t.Run("Ack", func(t *testing.T) {
		if err := c.Ack(ctx, "api", "api-gw", 3); err != nil {
			t.Fatal(err)
		}
		// The caller's ID in another spelling is the same principal.
		if err := c.Ack(ctx, "api", "API-GW", 4); err != nil {
			t.Fatal(err)
		}
		e.target.mu.Lock()
		got := e.target.acks["api-gw"]
		e.target.mu.Unlock()
		if got != 4 {
			t.Fatalf("ack = %d, want 4", got)
		}
		// Nobody acknowledges for another consumer, not even an admin.
		wantCode(t, c.Ack(ctx, "api", "other-gw", 5), lapse.EFORBIDDEN, "consumer")
		wantCode(t, e.client("admin").Ack(ctx, "api", "api-gw", 5), lapse.EFORBIDDEN, "consumer")
		wantCode(t, c.Ack(ctx, "api", "api-gw", -1), lapse.EINVALID, "seq")
		wantCode(t, c.Ack(ctx, "nope", "api-gw", 1), lapse.ENOTFOUND, "name")
	})
	t.Run("TargetErrors", func(t *testing.T) {
		e.target.setFail(lapse.Errorf(lapse.EUNAVAILABLE, "store down"))
		defer e.target.setFail(nil)
		_, err := c.Introspect(ctx, "api", "good-token")
		wantCode(t, err, lapse.EUNAVAILABLE, "")
	})
}

func TestHealthReadyOpenAPI(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := client.New(e.srv.URL, "")
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	e.setReady(lapse.Errorf(lapse.EUNAVAILABLE, "store unreachable"))
	err := c.Ready(ctx)
	wantCode(t, err, lapse.EUNAVAILABLE, "")
	if !strings.Contains(err.Error(), "store unreachable") {
		t.Fatalf("ready error %q does not carry the reason", err)
	}
	// A non-lapse error's text (it may hold a DSN) is logged, not shown.
	e.setReady(errors.New("dial postgres://lapse:hunter2@db/lapse: refused"))
	r := e.do(t, "GET", "/readyz", "", "", nil)
	if r.status != 503 || strings.Contains(string(r.body), "hunter2") || !strings.Contains(string(r.body), `"status":"unavailable"`) {
		t.Fatalf("readyz = %d %s", r.status, r.body)
	}
	doc, err := c.OpenAPI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(doc), "openapi: 3.1") {
		t.Fatalf("openapi document starts %q", doc[:20])
	}
}

func TestTransportFailureIsUnavailable(t *testing.T) {
	e := newEnv(t)
	url := e.srv.URL
	e.srv.Close()
	c := client.New(url, "lapse_whatever")
	_, err := c.Whoami(context.Background())
	wantCode(t, err, lapse.EUNAVAILABLE, "")
	if strings.Contains(err.Error(), "lapse_whatever") {
		t.Fatalf("transport error leaks the token: %v", err)
	}
	wantCode(t, c.Health(context.Background()), lapse.EUNAVAILABLE, "")
}

func TestClientNonLapseErrorStatus(t *testing.T) {
	e := newEnv(t)
	// A path outside the API is still a JSON 404 from this server; a
	// client pointed at the wrong base URL gets not_found, not a crash.
	c := client.New(e.srv.URL+"/elsewhere", e.secrets["alice"])
	_, err := c.Whoami(context.Background())
	wantCode(t, err, lapse.ENOTFOUND, "")
}

// TestChannelHeaderAgrees: client and server name the same header.
func TestChannelHeaderAgrees(t *testing.T) {
	if client.HeaderChannel != api.HeaderChannel {
		t.Fatalf("client sends %q, server reads %q", client.HeaderChannel, api.HeaderChannel)
	}
}
