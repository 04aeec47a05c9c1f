package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var raceTests = []test{
	{"CompareAndSwap", testRaceCAS},
	{"LockedReadModifyWrite", testRaceLockedRMW},
	{"Approval", testRaceApproval},
	{"Claim", testRaceClaim},
	{"Fencing", testRaceFencing},
	{"EventSequence", testRaceEvents},
	{"TokenFeed", testRaceTokenFeed},
	{"TokenUses", testRaceTokenUses},
}

// start runs n goroutines that begin together and waits for them.
func start(n int, fn func(i int)) {
	var ready, done sync.WaitGroup
	gate := make(chan struct{})
	ready.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			ready.Done()
			<-gate
			fn(i)
		}()
	}
	ready.Wait()
	close(gate)
	done.Wait()
}

// testRaceCAS: 50 writers each read a request and try a compare-and-swap,
// re-reading after every conflict until they succeed. Exactly one writer
// succeeds from each version, so the 50 successes start from versions
// 1…50 and the request ends at version 51.
func testRaceCAS(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	const n = 50
	var mu sync.Mutex
	winners := map[int64]int{}
	conflicts := 0
	start(n, func(i int) {
		for {
			cur, err := s.GetRequest(ctx, r.ID)
			if err != nil {
				t.Errorf("writer %d: GetRequest: %v", i, err)
				return
			}
			from := cur.Version
			cur.DecisionNote = fmt.Sprintf("writer %d", i)
			err = s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateRequest(ctx, cur) })
			mu.Lock()
			switch lapse.ErrorCode(err) {
			case "":
				if cur.Version != from+1 {
					t.Errorf("writer %d: version after success = %d, want %d", i, cur.Version, from+1)
				}
				if w, dup := winners[from]; dup {
					t.Errorf("writers %d and %d both won from version %d", w, i, from)
				}
				winners[from] = i
				mu.Unlock()
				return
			case lapse.ECONFLICT:
				conflicts++
				mu.Unlock()
			default:
				mu.Unlock()
				t.Errorf("writer %d: %v", i, err)
				return
			}
		}
	})
	for v := int64(1); v <= n; v++ {
		if _, ok := winners[v]; !ok {
			t.Fatalf("no writer won from version %d (winners: %v)", v, winners)
		}
	}
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != n+1 || got.DecisionNote != fmt.Sprintf("writer %d", winners[n]) {
		t.Fatalf("final version %d note %q; want %d and the last winner's note", got.Version, got.DecisionNote, n+1)
	}
	t.Logf("%d conflicts", conflicts)
}

// testRaceLockedRMW: 50 transactions each read the request through the
// transaction (which locks it) and increment a counter in it. None loses an
// update: the counter and the version both end at 50 more.
func testRaceLockedRMW(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	const n = 50
	start(n, func(i int) {
		err := s.Update(ctx, func(tx lapse.Tx) error {
			cur, err := tx.GetRequest(ctx, r.ID)
			if err != nil {
				return err
			}
			cur.Required++
			return tx.UpdateRequest(ctx, cur)
		})
		if err != nil {
			t.Errorf("transaction %d: %v", i, err)
		}
	})
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Required != r.Required+n || got.Version != 1+n {
		t.Fatalf("after %d locked increments: Required %d (want %d), Version %d (want %d)",
			n, got.Required, r.Required+n, got.Version, 1+n)
	}
}

// testRaceApproval: the same approver votes 20 times at once; one vote is
// stored.
func testRaceApproval(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	r := fullRequest(t0)
	insertRequest(t, s, r)
	const n = 20
	var mu sync.Mutex
	ok, conflict := 0, 0
	start(n, func(i int) {
		a := approval(r, "bob", t0.Add(time.Duration(i)))
		err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertApproval(ctx, a) })
		mu.Lock()
		defer mu.Unlock()
		switch lapse.ErrorCode(err) {
		case "":
			ok++
		case lapse.ECONFLICT:
			conflict++
		default:
			t.Errorf("vote %d: %v", i, err)
		}
	})
	if ok != 1 || conflict != n-1 {
		t.Fatalf("%d votes stored and %d conflicts; want 1 and %d", ok, conflict, n-1)
	}
	got, err := s.GetRequest(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Approvals) != 1 {
		t.Fatalf("%d approvals stored, want 1", len(got.Approvals))
	}
}

// testRaceClaim: several owners claim batches of many due grants at once.
// Every grant is claimed exactly once while the leases hold, and the store
// agrees on who holds each.
func testRaceClaim(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	const grants, owners, batch = 300, 6, 16
	var gs []*lapse.Grant
	for i := range grants {
		gs = append(gs, dueGrant(t0, t0.Add(-time.Duration(i)*time.Millisecond), fmt.Sprintf("t%d", i%4)))
	}
	insertGrants(t, s, gs...)
	var mu sync.Mutex
	holder := map[string]string{}
	start(owners, func(i int) {
		owner := fmt.Sprintf("owner-%d", i)
		for {
			got, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: owner, Now: t0, Lease: time.Hour, Limit: batch})
			if err != nil {
				t.Errorf("%s: %v", owner, err)
				return
			}
			if len(got) == 0 {
				return
			}
			mu.Lock()
			for _, g := range got {
				if prev, dup := holder[g.ID]; dup {
					t.Errorf("grant %s claimed by %s and %s", g.ID, prev, owner)
				}
				holder[g.ID] = owner
				if g.LeaseOwner != owner || g.Fence != 1 || g.Version != 2 {
					t.Errorf("claimed grant %s: owner %q fence %d version %d", g.ID, g.LeaseOwner, g.Fence, g.Version)
				}
			}
			mu.Unlock()
		}
	})
	if len(holder) != grants {
		t.Fatalf("%d grants claimed, want %d", len(holder), grants)
	}
	list, err := s.ListGrants(ctx, lapse.GrantFilter{Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range list {
		if g.LeaseOwner != holder[g.ID] || !g.LeaseUntil.Equal(t0.Add(time.Hour)) || g.Fence != 1 {
			t.Fatalf("stored grant %s: lease %q until %v fence %d; claimed by %q", g.ID, g.LeaseOwner, g.LeaseUntil, g.Fence, holder[g.ID])
		}
	}
}

// testRaceFencing: A claims with a short lease; the lease expires; B claims
// the grant. A's write with its stale copy fails, B's succeeds.
func testRaceFencing(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := dueGrant(t0, t0, "t")
	insertGrants(t, s, g)
	a := claim(t, s, lapse.ClaimInput{Owner: "A", Now: t0, Lease: 5 * time.Second, Limit: 1})
	if len(a) != 1 {
		t.Fatalf("A claimed %d grants", len(a))
	}
	b := claim(t, s, lapse.ClaimInput{Owner: "B", Now: t0.Add(6 * time.Second), Lease: time.Minute, Limit: 1})
	if len(b) != 1 || b[0].Fence != a[0].Fence+1 {
		t.Fatalf("B's claim = %+v; want the grant with fence %d", b, a[0].Fence+1)
	}
	a[0].State = lapse.GrantRevoking
	err := s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, a[0]) })
	wantCode(t, err, lapse.ECONFLICT)
	b[0].State = lapse.GrantRevoked
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, b[0]) })
	got := getGrant(t, s, g.ID)
	if got.State != lapse.GrantRevoked || got.LeaseOwner != "B" || got.Fence != b[0].Fence {
		t.Fatalf("stored grant: state %s owner %s fence %d", got.State, got.LeaseOwner, got.Fence)
	}
}

// testRaceEvents: many transactions append events at once while a reader
// follows the log by sequence number. The sequence is gap-free 1…N, and the
// follower, which only ever asks for what comes after the last event it saw,
// still sees every event: sequence order is commit order.
func testRaceEvents(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	const writers, perWriter = 8, 25
	const total = writers * perWriter
	followed := make(chan []int64, 1)
	stop := make(chan struct{})
	go func() {
		var seen []int64
		defer func() { followed <- seen }()
		var after int64
		stopped := false
		for {
			evs, err := s.ListEvents(ctx, lapse.EventFilter{AfterSeq: after, Limit: lapse.MaxListLimit})
			if err != nil {
				t.Errorf("follower: %v", err)
				return
			}
			for _, e := range evs {
				seen = append(seen, e.Seq)
				after = e.Seq
			}
			if len(seen) >= total {
				return
			}
			if len(evs) == 0 {
				if stopped {
					return
				}
				select {
				case <-stop:
					stopped = true // every writer is done: poll once more, then stop
				case <-time.After(time.Millisecond): // pace the polling; not an assertion
				}
			}
		}
	}()
	start(writers, func(w int) {
		for i := range perWriter {
			e := &lapse.Event{Type: lapse.EventGrantCreated, ActorID: fmt.Sprintf("w%d", w), Outcome: fmt.Sprint(i)}
			err := s.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, e) })
			if err != nil {
				t.Errorf("writer %d: %v", w, err)
				return
			}
		}
	})
	close(stop)
	seen := <-followed
	evs, err := s.ListEvents(ctx, lapse.EventFilter{Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != total {
		t.Fatalf("%d events stored, want %d", len(evs), total)
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: the sequence has a gap", i, e.Seq)
		}
	}
	if len(seen) != total {
		t.Fatalf("the follower saw %d of %d events: an event committed behind its cursor", len(seen), total)
	}
	for i, seq := range seen {
		if seq != int64(i+1) {
			t.Fatalf("the follower saw seq %d at position %d", seq, i)
		}
	}
}

// testRaceTokenFeed: concurrent adders, some adding the same tokens. Each
// token gets one sequence number and the feed is gap-free.
func testRaceTokenFeed(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	const adders, tokens = 8, 40
	var mu sync.Mutex
	seqOf := map[string]int64{}
	start(adders, func(a int) {
		for i := range tokens {
			jti := fmt.Sprintf("jti-%d", (i*7+a)%tokens) // every adder adds every token, in another order
			var seq int64
			err := s.Update(ctx, func(tx lapse.Tx) error {
				var err error
				seq, err = tx.AddTokenRevocation(ctx, &lapse.TokenRevocation{Target: "api", TokenID: jti})
				return err
			})
			if err != nil {
				t.Errorf("adder %d: %v", a, err)
				return
			}
			mu.Lock()
			if prev, ok := seqOf[jti]; ok && prev != seq {
				t.Errorf("token %s got seq %d and %d", jti, prev, seq)
			}
			seqOf[jti] = seq
			mu.Unlock()
		}
	})
	feed, err := s.TokenRevocations(ctx, "api", 0, lapse.MaxListLimit)
	if err != nil {
		t.Fatal(err)
	}
	if len(feed) != tokens {
		t.Fatalf("feed has %d entries, want %d", len(feed), tokens)
	}
	for i, r := range feed {
		if r.Seq != int64(i+1) || seqOf[r.TokenID] != r.Seq {
			t.Fatalf("feed[%d] = seq %d token %s (adders saw %d)", i, r.Seq, r.TokenID, seqOf[r.TokenID])
		}
	}
}

// testRaceTokenUses: concurrent counters of the same tokens. Every use
// gets a distinct count, the counts of a token are exactly 1…N, and none
// is lost: what a use limit relies on across replicas.
func testRaceTokenUses(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	const counters, uses, tokens = 8, 15, 2
	var mu sync.Mutex
	seen := map[string]map[int64]int{}
	start(counters, func(c int) {
		for i := range uses * tokens {
			jti := fmt.Sprintf("jti-%d", (i+c)%tokens)
			var n int64
			err := s.Update(ctx, func(tx lapse.Tx) error {
				var err error
				n, err = tx.CountTokenUse(ctx, "api", jti)
				return err
			})
			if err != nil {
				t.Errorf("counter %d: %v", c, err)
				return
			}
			mu.Lock()
			if seen[jti] == nil {
				seen[jti] = map[int64]int{}
			}
			if other, dup := seen[jti][n]; dup {
				t.Errorf("counters %d and %d both got count %d for %s", other, c, n, jti)
			}
			seen[jti][n] = c
			mu.Unlock()
		}
	})
	for k := range tokens {
		jti := fmt.Sprintf("jti-%d", k)
		if got, want := len(seen[jti]), counters*uses; got != want {
			t.Errorf("%s: %d distinct counts, want %d", jti, got, want)
		}
		for n := int64(1); n <= counters*uses; n++ {
			if _, ok := seen[jti][n]; !ok {
				t.Errorf("%s: no use got count %d", jti, n)
				break
			}
		}
		var next int64
		update(t, s, func(tx lapse.Tx) error {
			var err error
			next, err = tx.CountTokenUse(ctx, "api", jti)
			return err
		})
		if next != counters*uses+1 {
			t.Errorf("%s: the next use counts %d, want %d (a use was lost)", jti, next, counters*uses+1)
		}
	}
}
