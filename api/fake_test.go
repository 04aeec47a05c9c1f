package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/connector/token"
)

// t0 is the fixed time of every object the fakes return.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// call is one call the fake service received.
type call struct {
	method    string
	principal *lapse.Principal
	channel   string
	args      []any
}

// fakeService is a thin in-test lapse.Service: it records every call with
// the caller and channel from the context, answers with objects derived from
// its input, and returns fail instead when it is set.
type fakeService struct {
	mu    sync.Mutex
	calls []call
	fail  error
	// onCreate, when set, answers CreateRequest (benchmarks issue tokens).
	onCreate func(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error)
}

var _ lapse.Service = (*fakeService)(nil)

func (f *fakeService) record(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method, lapse.FromContext(ctx), lapse.ChannelFrom(ctx), args})
	return f.fail
}

// last returns the last call, failing the test if there was none.
func (f *fakeService) last(t *testing.T) call {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("the service was not called")
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeService) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeService) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func fakeRequest(id string) *lapse.Request {
	return &lapse.Request{
		ID:          id,
		Requester:   lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Name: "Alice"},
		Entitlement: "prod-db/read",
		Duration:    lapse.Duration(15 * time.Minute),
		Reason:      "incident 42",
		Hash:        "abc123",
		State:       lapse.RequestPending,
		Approvals: []*lapse.Approval{{
			RequestID: id, Approver: lapse.Principal{ID: "bob", Kind: lapse.KindHuman},
			Decision: lapse.DecisionApprove, RequestHash: "abc123", CreatedAt: t0,
		}},
		Required:  2,
		CreatedAt: t0,
		ExpiresAt: t0.Add(time.Hour),
		Version:   3,
	}
}

func fakeGrant(id string) *lapse.Grant {
	return &lapse.Grant{
		ID:          id,
		RequestID:   lapse.NewID(lapse.PrefixRequest, t0),
		Principal:   lapse.Principal{ID: "alice", Kind: lapse.KindHuman},
		Entitlement: "prod-db/read",
		Target:      "prod-db",
		State:       lapse.GrantActive,
		StartsAt:    t0,
		ExpiresAt:   t0.Add(15 * time.Minute),
		DueAt:       t0.Add(15 * time.Minute),
		Info:        map[string]string{"user": "lapse_x"},
		CreatedAt:   t0,
		ActivatedAt: t0,
		Version:     2,
		Checkpoints: []*lapse.Checkpoint{{
			GrantID: id, Name: "prod-db", Kind: lapse.CheckpointTarget, CreatedAt: t0,
			Evidence: []byte(`{"role":"absent"}`), Residue: []string{"session 7"},
		}},
		Events: []*lapse.Event{{
			Seq: 9, Time: t0, Type: lapse.EventGrantProvisioned, ActorID: "alice",
			ActorKind: lapse.KindHuman, Channel: lapse.ChannelCLI, GrantID: id, Data: []byte(`{"n":1}`),
		}},
	}
}

func (f *fakeService) Whoami(ctx context.Context) (*lapse.Principal, error) {
	if err := f.record(ctx, "Whoami"); err != nil {
		return nil, err
	}
	p := lapse.FromContext(ctx)
	if p == nil {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "no caller")
	}
	cp := *p
	return &cp, nil
}

func (f *fakeService) Entitlements(ctx context.Context) ([]*lapse.Entitlement, error) {
	if err := f.record(ctx, "Entitlements"); err != nil {
		return nil, err
	}
	return []*lapse.Entitlement{{
		Name: "prod-db/read", Description: "read prod", Target: "prod-db",
		Lanes:           []lapse.PrincipalKind{lapse.KindHuman},
		DefaultDuration: lapse.Duration(time.Hour), MaxDuration: lapse.Duration(8 * time.Hour),
		RequireReason: true, PendingTimeout: lapse.Duration(24 * time.Hour),
		Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:dba"}},
		Spec:     map[string]any{"roles": []any{"reader"}},
	}}, nil
}

func (f *fakeService) CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
	if f.onCreate != nil {
		return f.onCreate(ctx, in)
	}
	if err := f.record(ctx, "CreateRequest", in); err != nil {
		return nil, err
	}
	req := fakeRequest(lapse.NewID(lapse.PrefixRequest, t0))
	req.Entitlement, req.Reason, req.Ticket, req.TaskID = in.Entitlement, in.Reason, in.Ticket, in.TaskID
	if in.Duration != 0 {
		req.Duration = in.Duration // else the default, as a broker would
	}
	g := fakeGrant(lapse.NewID(lapse.PrefixGrant, t0))
	return &lapse.RequestResult{
		Request: req,
		Grant:   g,
		Credentials: &lapse.Credentials{
			GrantID: g.ID, Target: g.Target, ExpiresAt: g.ExpiresAt,
			Secret: map[string]string{"token": "secret-token-value"}, Info: map[string]string{"aud": "api"},
		},
	}, nil
}

func (f *fakeService) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	if err := f.record(ctx, "GetRequest", id); err != nil {
		return nil, err
	}
	return fakeRequest(id), nil
}

func (f *fakeService) ListRequests(ctx context.Context, fl lapse.RequestFilter) ([]*lapse.Request, error) {
	if err := f.record(ctx, "ListRequests", fl); err != nil {
		return nil, err
	}
	return []*lapse.Request{fakeRequest(lapse.NewID(lapse.PrefixRequest, t0)), fakeRequest(lapse.NewID(lapse.PrefixRequest, t0))}, nil
}

func (f *fakeService) Approve(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	if err := f.record(ctx, "Approve", id, in); err != nil {
		return nil, err
	}
	r := fakeRequest(id)
	r.State = lapse.RequestApproved
	return r, nil
}

func (f *fakeService) Deny(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	if err := f.record(ctx, "Deny", id, in); err != nil {
		return nil, err
	}
	r := fakeRequest(id)
	r.State = lapse.RequestDenied
	return r, nil
}

func (f *fakeService) CancelRequest(ctx context.Context, id string) (*lapse.Request, error) {
	if err := f.record(ctx, "CancelRequest", id); err != nil {
		return nil, err
	}
	r := fakeRequest(id)
	r.State = lapse.RequestCancelled
	return r, nil
}

func (f *fakeService) ReviewRequest(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error) {
	if err := f.record(ctx, "ReviewRequest", id, in); err != nil {
		return nil, err
	}
	r := fakeRequest(id)
	r.BreakGlass = true
	r.Review = &lapse.Review{State: in.Outcome, Reviewer: lapse.FromContext(ctx).ID, Comment: in.Comment}
	return r, nil
}

func (f *fakeService) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	if err := f.record(ctx, "GetGrant", id); err != nil {
		return nil, err
	}
	return fakeGrant(id), nil
}

func (f *fakeService) ListGrants(ctx context.Context, fl lapse.GrantFilter) ([]*lapse.Grant, error) {
	if err := f.record(ctx, "ListGrants", fl); err != nil {
		return nil, err
	}
	return []*lapse.Grant{fakeGrant(lapse.NewID(lapse.PrefixGrant, t0))}, nil
}

func (f *fakeService) ClaimCredentials(ctx context.Context, id string) (*lapse.Credentials, error) {
	if err := f.record(ctx, "ClaimCredentials", id); err != nil {
		return nil, err
	}
	return &lapse.Credentials{GrantID: id, Target: "prod-db", ExpiresAt: t0, Secret: map[string]string{"password": "pw"}}, nil
}

func (f *fakeService) Release(ctx context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error) {
	if err := f.record(ctx, "Release", id, in); err != nil {
		return nil, err
	}
	g := fakeGrant(id)
	g.State, g.EndReason = lapse.GrantRevoking, lapse.EndReleased
	return g, nil
}

func (f *fakeService) ExtendGrant(ctx context.Context, id string, in lapse.ExtendInput) (*lapse.RequestResult, error) {
	if err := f.record(ctx, "ExtendGrant", id, in); err != nil {
		return nil, err
	}
	r := fakeRequest("req_01jfakeextension000000000")
	r.Extends, r.Duration, r.State = id, in.Duration, lapse.RequestPending
	return &lapse.RequestResult{Request: r}, nil
}

func (f *fakeService) Revoke(ctx context.Context, id string, in lapse.RevokeInput) (*lapse.Grant, error) {
	if err := f.record(ctx, "Revoke", id, in); err != nil {
		return nil, err
	}
	g := fakeGrant(id)
	g.State, g.EndReason = lapse.GrantRevoked, lapse.EndRevoked
	return g, nil
}

func (f *fakeService) CreateAPIKey(ctx context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error) {
	if err := f.record(ctx, "CreateAPIKey", in); err != nil {
		return nil, err
	}
	return &lapse.NewAPIKey{APIKey: *fakeKey("abcdefghijkm"), Secret: "lapse_abcdefghijkm_secret"}, nil
}

func fakeKey(prefix string) *lapse.APIKey {
	return &lapse.APIKey{
		ID: prefix, Prefix: prefix, Principal: lapse.Principal{ID: "ci", Kind: lapse.KindService},
		Scopes: []string{lapse.ScopeRequest}, Name: "ci key", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
		CreatedBy: "admin",
	}
}

func (f *fakeService) ListAPIKeys(ctx context.Context) ([]*lapse.APIKey, error) {
	if err := f.record(ctx, "ListAPIKeys"); err != nil {
		return nil, err
	}
	return []*lapse.APIKey{fakeKey("abcdefghijkm"), fakeKey("zyxwvutsrqpn")}, nil
}

func (f *fakeService) RevokeAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	if err := f.record(ctx, "RevokeAPIKey", prefix); err != nil {
		return nil, err
	}
	k := fakeKey(prefix)
	k.RevokedAt = t0
	return k, nil
}

func fakeMandate(id string) *lapse.Mandate {
	return &lapse.Mandate{
		ID: id, AgentID: "ci-helper", Sponsor: lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{"dev"}},
		Entitlements: []string{"prod-db/read"}, MaxDuration: lapse.Duration(15 * time.Minute),
		Channel: lapse.ChannelAPI, CreatedAt: t0, ExpiresAt: t0.Add(8 * time.Hour),
	}
}

func (f *fakeService) CreateMandate(ctx context.Context, in lapse.MandateInput) (*lapse.Mandate, error) {
	if err := f.record(ctx, "CreateMandate", in); err != nil {
		return nil, err
	}
	m := fakeMandate(lapse.NewID(lapse.PrefixMandate, t0))
	m.AgentID, m.Entitlements, m.MaxDuration = in.AgentID, in.Entitlements, in.MaxDuration
	m.ExpiresAt = t0.Add(in.ExpiresIn.D())
	return m, nil
}

func (f *fakeService) ListMandates(ctx context.Context, fl lapse.MandateFilter) ([]*lapse.Mandate, error) {
	if err := f.record(ctx, "ListMandates", fl); err != nil {
		return nil, err
	}
	return []*lapse.Mandate{fakeMandate(lapse.NewID(lapse.PrefixMandate, t0))}, nil
}

func (f *fakeService) RevokeMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	if err := f.record(ctx, "RevokeMandate", id); err != nil {
		return nil, err
	}
	m := fakeMandate(id)
	m.RevokedAt, m.RevokedBy = t0, "alice"
	return m, nil
}

// fakeTarget is an in-test token target with a real Ed25519 key.
type fakeTarget struct {
	pub ed25519.PublicKey

	mu    sync.Mutex
	feed  []*lapse.TokenRevocation
	acks  map[string]int64
	calls int
	fail  error
}

var _ api.TokenTarget = (*fakeTarget)(nil)

func newFakeTarget(t testing.TB) *fakeTarget {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTarget{pub: pub, acks: map[string]int64{}}
	for i := int64(1); i <= 5; i++ {
		ft.feed = append(ft.feed, &lapse.TokenRevocation{
			Target: "api", Seq: i, TokenID: fmt.Sprintf("jti-%d", i), GrantID: lapse.NewID(lapse.PrefixGrant, t0),
			ExpiresAt: t0.Add(time.Hour), RevokedAt: t0,
		})
	}
	return ft
}

func (ft *fakeTarget) setFail(err error) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.fail = err
}

func (ft *fakeTarget) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ft.pub, KeyID: "k1", Algorithm: string(jose.EdDSA), Use: "sig"}}}
}

func (ft *fakeTarget) IntrospectUse(ctx context.Context, tok string) (*token.Introspection, error) {
	return ft.Introspect(ctx, tok)
}

func (ft *fakeTarget) Introspect(ctx context.Context, tok string) (*token.Introspection, error) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.calls++
	if ft.fail != nil {
		return nil, ft.fail
	}
	if tok != "good-token" {
		return &token.Introspection{Active: false}, nil
	}
	return &token.Introspection{Active: true, Sub: "alice", Aud: "api", Exp: t0.Unix(), Jti: "jti-1"}, nil
}

func (ft *fakeTarget) Feed(ctx context.Context, after int64, limit int) ([]*lapse.TokenRevocation, error) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.calls++
	if limit <= 0 {
		limit = 3 // the fake's default page
	}
	var out []*lapse.TokenRevocation
	for _, r := range ft.feed {
		if r.Seq > after && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func (ft *fakeTarget) Ack(ctx context.Context, consumer string, seq int64) error {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.calls++
	ft.acks[consumer] = max(ft.acks[consumer], seq)
	return nil
}

// keyStore is a tiny in-test authn.KeyLookup.
type keyStore struct {
	mu   sync.Mutex
	keys map[string]*lapse.APIKey
}

func (ks *keyStore) GetAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	k, ok := ks.keys[prefix]
	if !ok {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "no key")
	}
	cp := *k
	return &cp, nil
}

// fakeClock is a settable lapse.Clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
