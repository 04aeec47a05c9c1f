package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var requestTests = []test{
	{"RoundTrip", testRequestRoundTrip},
	{"ZeroAndNil", testRequestZeroAndNil},
	{"InsertConflict", testRequestInsertConflict},
	{"NotFound", testRequestNotFound},
	{"UpdateCompareAndSwap", testRequestUpdate},
	{"Approvals", testApprovals},
	{"List", testListRequests},
	{"ListLimits", testListRequestLimits},
}

// fullRequest returns a request with every field set.
func fullRequest(at time.Time) *lapse.Request {
	r := &lapse.Request{
		ID: lapse.NewID(lapse.PrefixRequest, at),
		Requester: lapse.Principal{
			ID: "alice", Kind: lapse.KindHuman, Name: "Alice Example",
			Groups: []string{"dba", "oncall"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest},
			CredentialID: "abcdefghijkl",
		},
		Entitlement:  "prod-db/read",
		Duration:     lapse.Duration(90*time.Minute + 7),
		Reason:       "incident 42: replica lag — ☃",
		Ticket:       "INC-42",
		TaskID:       "task-7",
		Channel:      lapse.ChannelCLI,
		State:        lapse.RequestPending,
		Required:     2,
		GrantID:      "gr_notyet",
		DecisionNote: "note",
		CreatedAt:    at,
		ExpiresAt:    at.Add(time.Hour),
		DecidedAt:    at.Add(time.Minute + 1),
	}
	r.Hash = r.ComputeHash()
	return r
}

// minimalRequest returns a request with only what identifies it.
func minimalRequest(at time.Time, requester string) *lapse.Request {
	r := &lapse.Request{
		ID:          lapse.NewID(lapse.PrefixRequest, at),
		Requester:   lapse.Principal{ID: requester, Kind: lapse.KindService},
		Entitlement: "cache/flush",
		State:       lapse.RequestPending,
		CreatedAt:   at,
	}
	r.Hash = r.ComputeHash()
	return r
}

func approval(r *lapse.Request, approver string, at time.Time) *lapse.Approval {
	return &lapse.Approval{
		RequestID:   r.ID,
		Approver:    lapse.Principal{ID: approver, Kind: lapse.KindHuman, Name: approver + " (name)", Groups: []string{"approvers"}},
		Decision:    lapse.DecisionApprove,
		Comment:     "ok by " + approver,
		RequestHash: r.Hash,
		Channel:     lapse.ChannelAPI,
		CreatedAt:   at,
	}
}

func insertRequest(t testing.TB, s lapse.Store, r *lapse.Request) {
	t.Helper()
	update(t, s, func(tx lapse.Tx) error { return tx.InsertRequest(context.Background(), r) })
}

func testRequestRoundTrip(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	r.Approvals = []*lapse.Approval{approval(r, "bob", t0.Add(time.Second))}
	insertRequest(t, s, r)
	if r.Version != 1 {
		t.Fatalf("Version after insert = %d, want 1", r.Version)
	}
	if got := r.ComputeHash(); got != r.Hash {
		t.Fatal("fixture hash mismatch")
	}
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "Store.GetRequest", got, r)
	// The hash covers CreatedAt in nanoseconds: it must survive the store.
	if got.ComputeHash() != r.Hash {
		t.Fatalf("hash of the stored request differs: CreatedAt did not round-trip exactly")
	}
	update(t, s, func(tx lapse.Tx) error {
		got, err := tx.GetRequest(ctx, r.ID)
		if err != nil {
			return err
		}
		wantEqual(t, "Tx.GetRequest", got, r)
		return nil
	})
	list, err := s.ListRequests(ctx, lapse.RequestFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("ListRequests returned %d requests, want 1", len(list))
	}
	wantEqual(t, "ListRequests[0]", list[0], r)
}

func testRequestZeroAndNil(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	a := minimalRequest(t0, "svc-a")
	b := minimalRequest(t0.Add(time.Millisecond), "svc-b")
	b.Requester.Groups = []string{}
	b.Requester.Scopes = []string{}
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertRequest(ctx, a); err != nil {
			return err
		}
		return tx.InsertRequest(ctx, b)
	})
	for _, want := range []*lapse.Request{a, b} {
		got, err := s.GetRequest(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		wantEqual(t, "request "+want.Requester.ID, got, want)
		if !got.ExpiresAt.IsZero() || !got.DecidedAt.IsZero() {
			t.Fatalf("zero times came back as %v, %v", got.ExpiresAt, got.DecidedAt)
		}
	}
}

func testRequestInsertConflict(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	dup := minimalRequest(t0, "mallory")
	dup.ID = r.ID
	err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertRequest(ctx, dup) })
	wantCode(t, err, lapse.ECONFLICT)
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "request after a conflicting insert", got, r)
}

func testRequestNotFound(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	missing := lapse.NewID(lapse.PrefixRequest, t0)
	_, err := s.GetRequest(ctx, missing)
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.GetRequest(ctx, missing)
		return err
	})
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		r := minimalRequest(t0, "x")
		r.ID, r.Version = missing, 1
		return tx.UpdateRequest(ctx, r)
	})
	wantCode(t, err, lapse.ENOTFOUND)
}

func testRequestUpdate(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	stale := *r

	// The mutable fields are written and the version moves.
	r.State = lapse.RequestApproved
	r.Required = 3
	r.GrantID = lapse.NewID(lapse.PrefixGrant, t0)
	r.DecisionNote = "approved by quorum"
	r.ExpiresAt = time.Time{}
	r.DecidedAt = t0.Add(2 * time.Minute)
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateRequest(ctx, r) })
	if r.Version != 2 {
		t.Fatalf("Version after update = %d, want 2", r.Version)
	}
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "updated request", got, r)

	// A writer holding the old version loses.
	stale.State = lapse.RequestDenied
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateRequest(ctx, &stale) })
	wantCode(t, err, lapse.ECONFLICT)
	if stale.Version != 1 {
		t.Fatalf("a failed update changed Version to %d", stale.Version)
	}

	// What the hash covers, and who asked, cannot be rewritten.
	forged := *r
	forged.Reason = "something else"
	forged.Entitlement = "prod-db/admin"
	forged.Requester = lapse.Principal{ID: "mallory", Kind: lapse.KindHuman}
	forged.CreatedAt = t0.Add(time.Hour)
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateRequest(ctx, &forged) })
	got, err = s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := *r
	want.Version = 3
	wantEqual(t, "request after an update that changed immutable fields", got, &want)
	if got.ComputeHash() != got.Hash {
		t.Fatal("stored request no longer matches its hash")
	}
}

func testApprovals(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	carol := approval(r, "carol", t0.Add(2*time.Second))
	bob := approval(r, "bob", t0.Add(time.Second))
	bob.Decision = lapse.DecisionDeny
	bob.Approver.Scopes = []string{}
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertApproval(ctx, carol); err != nil {
			return err
		}
		return tx.InsertApproval(ctx, bob)
	})
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Approvals come back in decision order.
	wantEqual(t, "approvals", got.Approvals, []*lapse.Approval{bob, carol})
	if got.Version != 1 {
		t.Fatalf("an approval changed the request version to %d", got.Version)
	}

	again := approval(r, "carol", t0.Add(time.Hour))
	again.Decision = lapse.DecisionDeny
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertApproval(ctx, again) })
	wantCode(t, err, lapse.ECONFLICT)

	orphan := approval(r, "dave", t0)
	orphan.RequestID = lapse.NewID(lapse.PrefixRequest, t0)
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertApproval(ctx, orphan) })
	wantCode(t, err, lapse.ENOTFOUND)

	// A conflicting vote does not spoil the rest of the transaction.
	dave := approval(r, "dave", t0.Add(3*time.Second))
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertApproval(ctx, again); lapse.ErrorCode(err) != lapse.ECONFLICT {
			return fmt.Errorf("second vote: got %v, want ECONFLICT", err)
		}
		return tx.InsertApproval(ctx, dave)
	})
	got, err = s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "approvals", got.Approvals, []*lapse.Approval{bob, carol, dave})
}

func testListRequests(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	var all []*lapse.Request
	update(t, s, func(tx lapse.Tx) error {
		for i := range 12 {
			r := minimalRequest(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("user%d", i%3))
			if i%4 == 0 {
				r.State = lapse.RequestApproved
			}
			if err := tx.InsertRequest(ctx, r); err != nil {
				return err
			}
			all = append(all, r)
		}
		return tx.InsertApproval(ctx, approval(all[5], "bob", t0))
	})
	all[5].Approvals = []*lapse.Approval{approval(all[5], "bob", t0)}
	newestFirst := func(keep func(*lapse.Request) bool) []*lapse.Request {
		var out []*lapse.Request
		for i := len(all) - 1; i >= 0; i-- {
			if keep(all[i]) {
				out = append(out, all[i])
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    lapse.RequestFilter
		keep func(*lapse.Request) bool
		max  int
	}{
		{"all", lapse.RequestFilter{}, func(*lapse.Request) bool { return true }, 0},
		{"state", lapse.RequestFilter{State: lapse.RequestApproved}, func(r *lapse.Request) bool { return r.State == lapse.RequestApproved }, 0},
		{"requester", lapse.RequestFilter{RequesterID: "user1"}, func(r *lapse.Request) bool { return r.Requester.ID == "user1" }, 0},
		{"both", lapse.RequestFilter{RequesterID: "user0", State: lapse.RequestApproved}, func(r *lapse.Request) bool {
			return r.Requester.ID == "user0" && r.State == lapse.RequestApproved
		}, 0},
		{"none", lapse.RequestFilter{RequesterID: "nobody"}, func(*lapse.Request) bool { return false }, 0},
		{"limit", lapse.RequestFilter{Limit: 5}, func(*lapse.Request) bool { return true }, 5},
		{"approvable is ignored", lapse.RequestFilter{Approvable: true}, func(*lapse.Request) bool { return true }, 0},
	} {
		got, err := s.ListRequests(ctx, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := newestFirst(tc.keep)
		if tc.max > 0 && len(want) > tc.max {
			want = want[:tc.max]
		}
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		wantEqual(t, "ListRequests "+tc.name, got, want)
	}
}

func testListRequestLimits(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	n := lapse.MaxListLimit + 5
	update(t, s, func(tx lapse.Tx) error {
		for i := range n {
			if err := tx.InsertRequest(ctx, minimalRequest(t0.Add(time.Duration(i)*time.Millisecond), "svc")); err != nil {
				return err
			}
		}
		return nil
	})
	for _, tc := range []struct{ limit, want int }{
		{0, lapse.DefaultListLimit},
		{-1, lapse.DefaultListLimit},
		{3, 3},
		{lapse.MaxListLimit + 1000, lapse.MaxListLimit},
	} {
		got, err := s.ListRequests(ctx, lapse.RequestFilter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Fatalf("ListRequests(Limit: %d) returned %d, want %d", tc.limit, len(got), tc.want)
		}
		for i := 1; i < len(got); i++ {
			if !got[i-1].CreatedAt.After(got[i].CreatedAt) {
				t.Fatalf("ListRequests is not newest first at %d", i)
			}
		}
	}
}
