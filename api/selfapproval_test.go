package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// brokerServer is the HTTP API over a real broker and store, with API keys
// authenticated against that store.
type brokerServer struct {
	store lapse.Store
	srv   *httptest.Server
	admin string // an admin key, made the way lapse admin makes the first one
}

func newBrokerServer(t *testing.T) *brokerServer {
	t.Helper()
	store := sqltest.OpenSQLite(t)
	clock := fakeclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	h := lapse.Duration(time.Hour)
	b, err := broker.New(broker.Config{
		Store: store, Clock: clock, SealingKey: key,
		Targets: map[string]broker.Target{"fake": {Kind: "fake", Connector: fake.New(fake.Options{Clock: clock})}},
		Catalog: []*lapse.Entitlement{{Name: "self/check", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindHuman, lapse.KindAgent},
			DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: h,
			Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Server{Service: b, Auth: &authn.APIKeys{Keys: store, Clock: clock}, Logger: slog.New(slog.DiscardHandler)}
	bs := &brokerServer{store: store, srv: httptest.NewServer(s.Handler())}
	t.Cleanup(bs.srv.Close)

	k, secret, err := broker.NewAPIKey(lapse.APIKeyInput{PrincipalID: "root", PrincipalKind: lapse.KindHuman, Scopes: []string{lapse.ScopeAdmin}}, clock.Now(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Update(context.Background(), func(tx lapse.Tx) error { return tx.InsertAPIKey(context.Background(), k) }); err != nil {
		t.Fatal(err)
	}
	bs.admin = secret
	return bs
}

// call sends body as JSON with key and decodes a success into out. It
// returns the status and, for an error status, the error body.
func (bs *brokerServer) call(t *testing.T, method, path, key string, body, out any) (int, api.ErrorDetail) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, bs.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := bs.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Fatalf("%s %s: %d with body %q", method, path, resp.StatusCode, b)
		}
		return resp.StatusCode, eb.Error
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, api.ErrorDetail{}
}

// newKey has the admin create a key through POST /v1/apikeys and returns
// its secret, or "" and the refusal.
func (bs *brokerServer) newKey(t *testing.T, in lapse.APIKeyInput) (string, int, api.ErrorDetail) {
	t.Helper()
	var nk lapse.NewAPIKey
	status, eb := bs.call(t, "POST", "/v1/apikeys", bs.admin, in, &nk)
	if status != http.StatusCreated {
		return "", status, eb
	}
	return nk.Secret, status, eb
}

func (bs *brokerServer) mustKey(t *testing.T, in lapse.APIKeyInput) string {
	t.Helper()
	secret, status, eb := bs.newKey(t, in)
	if secret == "" {
		t.Fatalf("create key for %q: %d %+v", in.PrincipalID, status, eb)
	}
	return secret
}

// file files a request of self/check with key.
func (bs *brokerServer) file(t *testing.T, key string) *lapse.Request {
	t.Helper()
	var res lapse.RequestResult
	if status, eb := bs.call(t, "POST", "/v1/requests", key, lapse.RequestInput{Entitlement: "self/check"}, &res); status != http.StatusCreated {
		t.Fatalf("file a request: %d %+v", status, eb)
	}
	if res.Request == nil || res.Request.State != lapse.RequestPending {
		t.Fatalf("filed request: %+v", res.Request)
	}
	return res.Request
}

// wantUndecided checks, through the API and in the store, that request id
// is pending with no vote and that the log holds no vote or decision.
func (bs *brokerServer) wantUndecided(t *testing.T, id, viewer, what string) {
	t.Helper()
	var r lapse.Request
	if status, eb := bs.call(t, "GET", "/v1/requests/"+id, viewer, nil, &r); status != http.StatusOK {
		t.Fatalf("%s: GET request: %d %+v", what, status, eb)
	}
	if r.State != lapse.RequestPending || len(r.Approvals) != 0 {
		t.Fatalf("%s: request %s with %d votes, want pending with none", what, r.State, len(r.Approvals))
	}
	evs, err := bs.store.ListEvents(context.Background(), lapse.EventFilter{RequestID: id, Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		switch ev.Type {
		case lapse.EventRequestApproved, lapse.EventRequestDenied, lapse.EventRequestDecided:
			t.Fatalf("%s: the log holds %s by %s", what, ev.Type, ev.ActorID)
		}
	}
}

// apiSpellings are the requester's ID "alice" written so that a person
// reads it as alice; valid says NormalizeID accepts it.
var apiSpellings = []struct {
	name, id string
	valid    bool
}{
	{"exact", "alice", true},
	{"upper case", "ALICE", true},
	{"surrounding spaces", "  alice\t", true},
	{"full-width", "ａｌｉｃｅ", true},
	{"Cyrillic a", "\u0430lice", true},
	{"zero-width space", "ali\u200bce", false},
	{"zero-width joiner", "ali\u200dce", false},
	{"combining grapheme joiner", "ali\u034fce", false},
	{"variation selector", "alice\ufe0f", false},
}

// TestSelfApprovalIsRefusedOverHTTP: the requester's keys, under every
// spelling of her ID that an admin can make a key for, with the approve
// or the admin scope, and her agent's key, try to approve and deny her
// request and the one her agent filed for her over the HTTP API: all 403,
// and the count does not move. A key for a spelling with a zero-width
// character cannot be made at all.
func TestSelfApprovalIsRefusedOverHTTP(t *testing.T) {
	bs := newBrokerServer(t)
	approverGroups := []string{"approvers"}
	alice := bs.mustKey(t, lapse.APIKeyInput{PrincipalID: "alice", PrincipalKind: lapse.KindHuman, Groups: approverGroups,
		Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest}})
	bob := bs.mustKey(t, lapse.APIKeyInput{PrincipalID: "bob", PrincipalKind: lapse.KindHuman, Groups: approverGroups,
		Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove}})
	agent := bs.mustKey(t, lapse.APIKeyInput{PrincipalID: "helper", PrincipalKind: lapse.KindAgent, Groups: approverGroups,
		Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove, lapse.ScopeAdmin}})
	if status, eb := bs.call(t, "POST", "/v1/mandates", alice, lapse.MandateInput{AgentID: "helper", Entitlements: []string{"self/check"},
		MaxDuration: lapse.Duration(30 * time.Minute), ExpiresIn: lapse.Duration(8 * time.Hour)}, nil); status != http.StatusCreated {
		t.Fatalf("alice's mandate for her agent: %d %+v", status, eb)
	}

	for _, sp := range apiSpellings {
		t.Run(sp.name, func(t *testing.T) {
			type credential struct{ who, key string }
			var keys []credential
			for _, k := range []struct {
				who    string
				scopes []string
			}{
				{"her approve key", []string{lapse.ScopeRead, lapse.ScopeApprove}},
				{"her admin key", []string{lapse.ScopeAdmin}},
			} {
				secret, status, eb := bs.newKey(t, lapse.APIKeyInput{PrincipalID: sp.id, PrincipalKind: lapse.KindHuman, Groups: approverGroups, Scopes: k.scopes})
				switch {
				case !sp.valid && secret == "" && (status != http.StatusBadRequest || eb.Code != lapse.EINVALID || eb.Field != "principal_id"):
					t.Fatalf("key for %q: %d %+v, want 400 %s on principal_id", sp.id, status, eb, lapse.EINVALID)
				case !sp.valid && secret == "":
					continue // refused at normalisation, as it must be
				case !sp.valid:
					t.Errorf("the admin made a key for %q, which reads as \"alice\" but is another principal", sp.id)
				case secret == "":
					t.Fatalf("key for %q: %d %+v", sp.id, status, eb)
				}
				keys = append(keys, credential{k.who, secret})
			}
			if len(keys) == 0 {
				return
			}
			keys = append(keys, credential{"her agent's key", agent})

			own := bs.file(t, alice)
			var filed lapse.RequestResult
			if status, eb := bs.call(t, "POST", "/v1/requests", agent, lapse.RequestInput{Entitlement: "self/check", OnBehalfOf: "alice"}, &filed); status != http.StatusCreated {
				t.Fatalf("the agent files for alice: %d %+v", status, eb)
			}
			for _, r := range []*lapse.Request{own, filed.Request} {
				for _, c := range keys {
					for _, verb := range []string{"approve", "deny"} {
						status, eb := bs.call(t, "POST", "/v1/requests/"+r.ID+"/"+verb, c.key, lapse.DecisionInput{RequestHash: r.Hash}, nil)
						if status != http.StatusForbidden || eb.Code != lapse.EFORBIDDEN {
							t.Errorf("%s of %s's request with %s: %d %+v, want 403 %s", verb, r.Requester.ID, c.who, status, eb, lapse.EFORBIDDEN)
						}
						bs.wantUndecided(t, r.ID, bob, verb+" with "+c.who)
					}
				}
				// Another approver's vote counts: the refusals were about who asked.
				var out lapse.Request
				if status, eb := bs.call(t, "POST", "/v1/requests/"+r.ID+"/approve", bob, lapse.DecisionInput{RequestHash: r.Hash}, &out); status != http.StatusOK || out.State != lapse.RequestApproved || len(out.Approvals) != 1 {
					t.Fatalf("bob approves %s's request: %d %+v, state %s", r.Requester.ID, status, eb, out.State)
				}
			}
		})
	}
}
