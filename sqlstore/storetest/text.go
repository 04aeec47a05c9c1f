package storetest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// textTests pin that no NUL byte reaches a text column, on any database:
// PostgreSQL refuses one (as an internal error, after the statement left)
// while SQLite stores it, so a store must refuse it first, as the caller's
// mistake, naming the field.
var textTests = []test{
	{"NULInRequest", testNULInRequest},
	{"NULInGrant", testNULInGrant},
	{"NULInEvent", testNULInEvent},
	{"NULInAPIKeyAndTokenFeed", testNULInKeysAndFeed},
	{"NULInLookups", testNULInLookups},
	{"NULInLastErrorIsReplaced", testNULInLastError},
}

const nul = "a\x00b"

// wantField fails unless err is EINVALID naming field.
func wantField(t testing.TB, err error, field string) {
	t.Helper()
	wantCode(t, err, lapse.EINVALID)
	if got := lapse.ErrorField(err); got != field {
		t.Fatalf("error names field %q, want %q (error: %v)", got, field, err)
	}
}

func testNULInRequest(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	for field, set := range map[string]func(r *lapse.Request){
		"id":                      func(r *lapse.Request) { r.ID = nul },
		"requester.id":            func(r *lapse.Request) { r.Requester.ID = nul },
		"requester.kind":          func(r *lapse.Request) { r.Requester.Kind = nul },
		"requester.name":          func(r *lapse.Request) { r.Requester.Name = nul },
		"requester.credential_id": func(r *lapse.Request) { r.Requester.CredentialID = nul },
		"entitlement":             func(r *lapse.Request) { r.Entitlement = nul },
		"reason":                  func(r *lapse.Request) { r.Reason = nul },
		"ticket":                  func(r *lapse.Request) { r.Ticket = nul },
		"task_id":                 func(r *lapse.Request) { r.TaskID = nul },
		"channel":                 func(r *lapse.Request) { r.Channel = nul },
		"hash":                    func(r *lapse.Request) { r.Hash = nul },
		"state":                   func(r *lapse.Request) { r.State = nul },
		"grant_id":                func(r *lapse.Request) { r.GrantID = nul },
		"decision_note":           func(r *lapse.Request) { r.DecisionNote = nul },
	} {
		r := fullRequest(t0)
		set(r)
		err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertRequest(ctx, r) })
		wantField(t, err, field)
		if field != "id" {
			if _, err := s.GetRequest(ctx, r.ID); lapse.ErrorCode(err) != lapse.ENOTFOUND {
				t.Fatalf("a request refused for its %s was stored: %v", field, err)
			}
		}
	}

	r := fullRequest(t0)
	insertRequest(t, s, r)
	bad := *r
	bad.DecisionNote = nul
	wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateRequest(ctx, &bad) }), "decision_note")
	if got, err := s.GetRequest(ctx, r.ID); err != nil || got.DecisionNote != r.DecisionNote || got.Version != r.Version {
		t.Fatalf("request after a refused update: %+v, %v", got, err)
	}

	for field, set := range map[string]func(a *lapse.Approval){
		"approver.name": func(a *lapse.Approval) { a.Approver.Name = nul },
		"comment":       func(a *lapse.Approval) { a.Comment = nul },
		"request_hash":  func(a *lapse.Approval) { a.RequestHash = nul },
		"channel":       func(a *lapse.Approval) { a.Channel = nul },
		"request_id":    func(a *lapse.Approval) { a.RequestID = nul },
	} {
		a := approval(r, "bob", t0)
		set(a)
		wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertApproval(ctx, a) }), field)
	}
	if got, _ := s.GetRequest(ctx, r.ID); len(got.Approvals) != 0 {
		t.Fatalf("a refused approval was stored: %+v", got.Approvals[0])
	}
}

func testNULInGrant(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	for field, set := range map[string]func(g *lapse.Grant){
		"id":             func(g *lapse.Grant) { g.ID = nul },
		"request_id":     func(g *lapse.Grant) { g.RequestID = nul },
		"principal.name": func(g *lapse.Grant) { g.Principal.Name = nul },
		"entitlement":    func(g *lapse.Grant) { g.Entitlement = nul },
		"target":         func(g *lapse.Grant) { g.Target = nul },
		"task_id":        func(g *lapse.Grant) { g.TaskID = nul },
		"state":          func(g *lapse.Grant) { g.State = nul },
		"end_reason":     func(g *lapse.Grant) { g.EndReason = nul },
		"lease_owner":    func(g *lapse.Grant) { g.LeaseOwner = nul },
		"name":           func(g *lapse.Grant) { g.Checkpoints[0].Name = nul },
		"kind":           func(g *lapse.Grant) { g.Checkpoints[1].Kind = nul },
		"evidence":       func(g *lapse.Grant) { g.Checkpoints[0].Evidence = json.RawMessage("{\"a\":\"\x00\"}") },
	} {
		g := fullGrant(t0)
		set(g)
		wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertGrant(ctx, g) }), field)
		if field != "id" {
			if _, err := s.GetGrant(ctx, g.ID); lapse.ErrorCode(err) != lapse.ENOTFOUND {
				t.Fatalf("a grant refused for its %s was stored: %v", field, err)
			}
		}
	}

	g := fullGrant(t0)
	insertGrants(t, s, g)
	bad := *g
	bad.LeaseOwner = nul
	wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, &bad) }), "lease_owner")
	cp := *g.Checkpoints[0]
	cp.Name = nul
	wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.PutCheckpoint(ctx, &cp) }), "name")
	wantEqual(t, "grant after refused writes", getGrant(t, s, g.ID), g)

	_, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: nul, Now: t0, Lease: time.Minute, Limit: 1})
	wantField(t, err, "owner")
	_, err = s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "o", Now: t0, Lease: time.Minute, Limit: 1, Target: nul})
	wantField(t, err, "target")
}

func testNULInEvent(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	for field, set := range map[string]func(e *lapse.Event){
		"type":       func(e *lapse.Event) { e.Type = nul },
		"actor_id":   func(e *lapse.Event) { e.ActorID = nul },
		"actor_kind": func(e *lapse.Event) { e.ActorKind = nul },
		"channel":    func(e *lapse.Event) { e.Channel = nul },
		"request_id": func(e *lapse.Event) { e.RequestID = nul },
		"grant_id":   func(e *lapse.Event) { e.GrantID = nul },
		"outcome":    func(e *lapse.Event) { e.Outcome = nul },
		"data":       func(e *lapse.Event) { e.Data = json.RawMessage("\"\x00\"") },
	} {
		e := &lapse.Event{Time: t0, Type: lapse.EventGrantCreated, ActorID: "alice", ActorKind: lapse.KindHuman,
			Channel: lapse.ChannelAPI, RequestID: "req_1", GrantID: "gr_1", Outcome: "ok", Data: json.RawMessage(`{}`)}
		set(e)
		wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, e) }), field)
		if e.Seq != 0 {
			t.Fatalf("a refused event kept sequence %d", e.Seq)
		}
	}
	// JSON escapes NUL: data that holds one inside a string is valid and
	// stored exactly.
	ok := &lapse.Event{Time: t0, Type: lapse.EventGrantCreated, Data: json.RawMessage(`{"note":"a\u0000b"}`)}
	update(t, s, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, ok) })
	evs, err := s.ListEvents(ctx, lapse.EventFilter{})
	if err != nil || len(evs) != 1 || evs[0].Seq != 1 || string(evs[0].Data) != string(ok.Data) {
		t.Fatalf("events after refusals = %+v, %v; want only the escaped one, with seq 1", evs, err)
	}
}

func testNULInKeysAndFeed(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	for field, set := range map[string]func(k *lapse.APIKey){
		"prefix":         func(k *lapse.APIKey) { k.Prefix = nul },
		"name":           func(k *lapse.APIKey) { k.Name = nul },
		"created_by":     func(k *lapse.APIKey) { k.CreatedBy = nul },
		"principal.id":   func(k *lapse.APIKey) { k.Principal.ID = nul },
		"principal.kind": func(k *lapse.APIKey) { k.Principal.Kind = nul },
	} {
		k := &lapse.APIKey{ID: "aaaabbbbcccc", Prefix: "aaaabbbbcccc", Principal: lapse.Principal{ID: "ci", Kind: lapse.KindService},
			Name: "ci", Hash: []byte{1}, CreatedAt: t0, CreatedBy: "admin"}
		set(k)
		wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertAPIKey(ctx, k) }), field)
	}
	if ks, err := s.ListAPIKeys(ctx); err != nil || len(ks) != 0 {
		t.Fatalf("keys after refusals = %v, %v", ks, err)
	}

	for field, r := range map[string]*lapse.TokenRevocation{
		"target":   {Target: nul, TokenID: "t1", GrantID: "gr_1", ExpiresAt: t0},
		"jti":      {Target: "api", TokenID: nul, GrantID: "gr_1", ExpiresAt: t0},
		"grant_id": {Target: "api", TokenID: "t1", GrantID: nul, ExpiresAt: t0},
	} {
		err := s.Update(ctx, func(tx lapse.Tx) error { _, err := tx.AddTokenRevocation(ctx, r); return err })
		wantField(t, err, field)
	}
	if rs, err := s.TokenRevocations(ctx, "api", 0, 0); err != nil || len(rs) != 0 {
		t.Fatalf("feed after refusals = %v, %v", rs, err)
	}
	wantField(t, s.Update(ctx, func(tx lapse.Tx) error { return tx.AckTokenRevocations(ctx, "api", nul, 0) }), "consumer")
}

// testNULInLookups: a NUL in what is looked up is refused too, rather than
// failing the query on PostgreSQL; nothing stored could match it.
func testNULInLookups(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	_, err := s.GetRequest(ctx, nul)
	wantField(t, err, "id")
	_, err = s.GetGrant(ctx, nul)
	wantField(t, err, "id")
	_, err = s.GetAPIKey(ctx, nul)
	wantField(t, err, "prefix")
	_, err = s.ListRequests(ctx, lapse.RequestFilter{RequesterID: nul})
	wantField(t, err, "requester_id")
	_, err = s.ListGrants(ctx, lapse.GrantFilter{Target: nul})
	wantField(t, err, "target")
	_, err = s.ListEvents(ctx, lapse.EventFilter{GrantID: nul})
	wantField(t, err, "grant_id")
	_, err = s.TokenRevoked(ctx, "api", nul)
	wantField(t, err, "jti")
	_, err = s.ConsumerAcks(ctx, nul)
	wantField(t, err, "target")
	err = s.Update(ctx, func(tx lapse.Tx) error { _, err := tx.GetGrant(ctx, nul); return err })
	wantField(t, err, "id")
}

// testNULInLastError: a grant's last error is what a target said, written
// on the revocation path; a NUL in it must not stop the write, so it is
// stored with U+FFFD in its place.
func testNULInLastError(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := fullGrant(t0)
	g.LastError = "revoke: " + nul
	insertGrants(t, s, g)
	if got := getGrant(t, s, g.ID).LastError; got != "revoke: a\uFFFDb" {
		t.Fatalf("last error after insert = %q", got)
	}
	g.LastError = "verify: \x00"
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, g) })
	if got := getGrant(t, s, g.ID).LastError; got != "verify: \uFFFD" {
		t.Fatalf("last error after update = %q", got)
	}
}
