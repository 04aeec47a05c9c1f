package broker_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
)

var (
	sec1 = &lapse.Principal{ID: "sec1", Kind: lapse.KindHuman, Groups: []string{"security"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
	sec2 = &lapse.Principal{ID: "sec2", Kind: lapse.KindHuman, Groups: []string{"security"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}}
)

// cachedEntitlement is an auto-approved entitlement on the fake target
// whose configuration declares an API server that caches the credential
// for 30s after revocation.
func cachedEntitlement(limit time.Duration, overLimit string) *lapse.Entitlement {
	return &lapse.Entitlement{
		Name: "db/cached", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman},
		DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Auto: true},
		Exposure: &lapse.Exposure{
			Limit: lapse.Duration(limit), OverLimit: overLimit,
			Approval: &lapse.ApprovalRule{Required: 2, Approvers: []string{"group:security"}},
			Paths: []lapse.CheckpointPath{{
				Name: "api-cache", Kind: lapse.CheckpointCache, ConsumedAt: "orders-api caches sessions",
				Kill: "none", Verify: "wait", Outlives: lapse.Duration(30 * time.Second),
			}},
		},
	}
}

func withCatalog(t *testing.T, e *env, extra ...*lapse.Entitlement) {
	t.Helper()
	if err := e.broker.SetCatalog(append(catalog(), extra...)); err != nil {
		t.Fatal(err)
	}
}

func served(t *testing.T, b *broker.Broker, name string) *lapse.Entitlement {
	t.Helper()
	list, err := b.Entitlements(as(bob))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range list {
		if x.Name == name {
			return x
		}
	}
	t.Fatalf("entitlement %s is not served", name)
	return nil
}

// TestExposureOverLimitRefused: a grant whose entitlement declares a cache
// that outlives the policy's exposure limit is refused with that reason,
// and nothing is stored.
func TestExposureOverLimitRefused(t *testing.T) {
	e := newSQLiteEnv(t)
	withCatalog(t, e, cachedEntitlement(10*time.Second, lapse.OverLimitRefuse))

	x := served(t, e.broker, "db/cached").Exposure
	if x == nil || !x.Exceeded || x.Bound.D() != 30*time.Second || x.BoundBy != "api-cache" {
		t.Fatalf("served exposure = %+v, want bound 30s by api-cache, exceeded", x)
	}
	// The connector's own paths come first, the configured one after.
	if len(x.Paths) != 3 || x.Paths[0].Source != lapse.PathFromConnector || x.Paths[2].Name != "api-cache" || x.Paths[2].Source != lapse.PathFromConfig {
		t.Fatalf("paths = %+v", x.Paths)
	}

	_, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/cached"})
	wantCode(t, err, lapse.EFORBIDDEN)
	if r := lapse.ErrorReason(err); r != lapse.ReasonExposureOverLimit {
		t.Fatalf("reason = %q (%v), want %q", r, err, lapse.ReasonExposureOverLimit)
	}
	if msg := lapse.ErrorMessage(err); !strings.Contains(msg, "api-cache") || !strings.Contains(msg, "30s") || !strings.Contains(msg, "10s") {
		t.Errorf("message %q does not name the path, the bound and the limit", msg)
	}
	rs, err := e.store.ListRequests(context.Background(), lapse.RequestFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 0 || e.fake.Calls("grant") != 0 {
		t.Fatalf("a refused request left %d requests and %d grants on the target", len(rs), e.fake.Calls("grant"))
	}
}

// TestExposureWithinLimit: within the limit the request goes through, and
// its request.created event records the bound the approvers saw.
func TestExposureWithinLimit(t *testing.T) {
	e := newSQLiteEnv(t)
	withCatalog(t, e, cachedEntitlement(time.Minute, lapse.OverLimitRefuse))
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/cached"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Grant == nil || res.Grant.State != lapse.GrantActive {
		t.Fatalf("grant = %+v", res.Grant)
	}
	evs, err := e.store.ListEvents(context.Background(), lapse.EventFilter{RequestID: res.Request.ID})
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		Exposure map[string]any `json:"exposure"`
	}
	if len(evs) == 0 || evs[0].Type != lapse.EventRequestCreated {
		t.Fatalf("events = %+v", evs)
	}
	if err := json.Unmarshal(evs[0].Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.Exposure["bound"] != "30s" || data.Exposure["bound_by"] != "api-cache" || data.Exposure["limit"] != "1m0s" || data.Exposure["exceeded"] != false {
		t.Errorf("request.created exposure = %v", data.Exposure)
	}
}

// TestExposureOverLimitNeedsHigherTier: with over_limit: approval, the
// tier's approvers and quorum replace the entitlement's own rule (here:
// automatic) for the request.
func TestExposureOverLimitNeedsHigherTier(t *testing.T) {
	e := newSQLiteEnv(t)
	withCatalog(t, e, cachedEntitlement(10*time.Second, lapse.OverLimitApproval))
	if a := served(t, e.broker, "db/cached").Approval; a.Auto || a.Required != 2 {
		t.Fatalf("served approval = %+v, want the tier", a)
	}
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/cached"})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Request
	if res.Grant != nil || r.State != lapse.RequestPending || r.Required != 2 {
		t.Fatalf("request = %s, required %d, grant %v; want pending on 2 approvals", r.State, r.Required, res.Grant)
	}
	// bob approves the entitlement's ordinary requests, not this tier.
	_, err = e.broker.Approve(as(bob), r.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	if r, err = e.broker.Approve(as(sec1), r.ID, lapse.DecisionInput{}); err != nil || r.State != lapse.RequestPending {
		t.Fatalf("after one tier approval: %v, %v", r.State, err)
	}
	if r, err = e.broker.Approve(as(sec2), r.ID, lapse.DecisionInput{}); err != nil || r.State != lapse.RequestApproved || r.GrantID == "" {
		t.Fatalf("after two tier approvals: %v, %v", r.State, err)
	}
}

// TestExposureRefusedAtApproval: a request filed before the catalog made
// its entitlement over the limit cannot be approved afterwards.
func TestExposureRefusedAtApproval(t *testing.T) {
	e := newSQLiteEnv(t)
	ent := cachedEntitlement(time.Minute, lapse.OverLimitRefuse)
	ent.Approval = lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}
	withCatalog(t, e, ent)
	res, err := e.broker.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/cached"})
	if err != nil {
		t.Fatal(err)
	}
	ent.Exposure.Limit = lapse.Duration(5 * time.Second)
	withCatalog(t, e, ent)
	_, err = e.broker.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	wantCode(t, err, lapse.EFORBIDDEN)
	if lapse.ErrorReason(err) != lapse.ReasonExposureOverLimit {
		t.Fatalf("reason = %q", lapse.ErrorReason(err))
	}
	// Denying stays possible.
	if _, err := e.broker.Deny(as(bob), res.Request.ID, lapse.DecisionInput{}); err != nil {
		t.Fatal(err)
	}
}
