package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var eventTests = []test{
	{"AppendAndList", testEvents},
	{"ListLimits", testEventLimits},
}

var apiKeyTests = []test{
	{"Lifecycle", testAPIKeys},
}

var tokenTests = []test{
	{"Feed", testTokenFeed},
	{"Uses", testTokenUses},
	{"Acks", testTokenAcks},
}

func testEvents(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	if got, err := s.ListEvents(ctx, lapse.EventFilter{}); err != nil || len(got) != 0 {
		t.Fatalf("ListEvents on an empty store = %v, %v", got, err)
	}
	full := &lapse.Event{
		Time: t0, Type: lapse.EventGrantRevoked, ActorID: "alice", ActorKind: lapse.KindHuman,
		Channel: lapse.ChannelEngine, RequestID: "req_1", GrantID: "gr_1", Outcome: "ok",
		Data: json.RawMessage(`{"checkpoints":["target","sessions"],"n":1.5}`),
	}
	bare := &lapse.Event{Type: lapse.EventAPIKeyCreated}
	var evs []*lapse.Event
	update(t, s, func(tx lapse.Tx) error {
		for _, e := range []*lapse.Event{full, bare} {
			if err := tx.AppendEvent(ctx, e); err != nil {
				return err
			}
		}
		for i := range 10 {
			e := &lapse.Event{Time: t0.Add(time.Duration(i)), Type: lapse.EventGrantCreated, GrantID: fmt.Sprintf("gr_%d", i%2), RequestID: fmt.Sprintf("req_%d", i%3)}
			if err := tx.AppendEvent(ctx, e); err != nil {
				return err
			}
			evs = append(evs, e)
		}
		return nil
	})
	if full.Seq != 1 || bare.Seq != 2 {
		t.Fatalf("sequence numbers = %d, %d; want 1, 2", full.Seq, bare.Seq)
	}
	all := append([]*lapse.Event{full, bare}, evs...)
	for i, e := range all {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	got, err := s.ListEvents(ctx, lapse.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "ListEvents", got, all)

	filter := func(keep func(*lapse.Event) bool) []*lapse.Event {
		var out []*lapse.Event
		for _, e := range all {
			if keep(e) {
				out = append(out, e)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    lapse.EventFilter
		keep func(*lapse.Event) bool
	}{
		{"grant", lapse.EventFilter{GrantID: "gr_1"}, func(e *lapse.Event) bool { return e.GrantID == "gr_1" }},
		{"request", lapse.EventFilter{RequestID: "req_2"}, func(e *lapse.Event) bool { return e.RequestID == "req_2" }},
		{"after", lapse.EventFilter{AfterSeq: 9}, func(e *lapse.Event) bool { return e.Seq > 9 }},
		{"grant and after", lapse.EventFilter{GrantID: "gr_0", AfterSeq: 5}, func(e *lapse.Event) bool { return e.GrantID == "gr_0" && e.Seq > 5 }},
	} {
		got, err := s.ListEvents(ctx, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		wantEqual(t, "ListEvents "+tc.name, got, filter(tc.keep))
	}
	got, err = s.ListEvents(ctx, lapse.EventFilter{AfterSeq: 3, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "ListEvents limit", got, all[3:5])

	// Sequence numbers continue across transactions.
	next := &lapse.Event{Type: lapse.EventGrantVerified}
	update(t, s, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, next) })
	if next.Seq != int64(len(all)+1) {
		t.Fatalf("next seq = %d, want %d", next.Seq, len(all)+1)
	}
}

func testEventLimits(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	n := lapse.MaxListLimit + 3
	update(t, s, func(tx lapse.Tx) error {
		for range n {
			if err := tx.AppendEvent(ctx, &lapse.Event{Type: lapse.EventGrantCreated}); err != nil {
				return err
			}
		}
		return nil
	})
	for _, tc := range []struct{ limit, want int }{
		{0, lapse.DefaultListLimit},
		{lapse.MaxListLimit + 1, lapse.MaxListLimit},
	} {
		got, err := s.ListEvents(ctx, lapse.EventFilter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want || got[0].Seq != 1 || got[len(got)-1].Seq != int64(tc.want) {
			t.Fatalf("ListEvents(Limit: %d) returned %d events", tc.limit, len(got))
		}
	}
}

func testAPIKeys(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	k1 := &lapse.APIKey{
		ID: "aaaabbbbcccc", Prefix: "aaaabbbbcccc",
		Principal: lapse.Principal{ID: "ci", Kind: lapse.KindService, Name: "CI", Groups: []string{"deploy"}},
		Scopes:    []string{lapse.ScopeRequest, lapse.ScopeRead},
		Name:      "ci key",
		Hash:      []byte{1, 2, 3, 0, 255},
		CreatedAt: t0, ExpiresAt: t0.Add(24 * time.Hour),
		CreatedBy: "admin",
	}
	k2 := &lapse.APIKey{
		ID: "ddddeeeeffff", Prefix: "ddddeeeeffff",
		Principal: lapse.Principal{ID: "bot", Kind: lapse.KindAgent},
		Scopes:    []string{},
		Hash:      []byte{9},
		CreatedAt: t0.Add(time.Second),
	}
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.InsertAPIKey(ctx, k1); err != nil {
			return err
		}
		return tx.InsertAPIKey(ctx, k2)
	})
	for _, want := range []*lapse.APIKey{k1, k2} {
		got, err := s.GetAPIKey(ctx, want.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		wantEqual(t, "GetAPIKey", got, want)
	}
	_, err := s.GetAPIKey(ctx, "zzzzzzzzzzzz")
	wantCode(t, err, lapse.ENOTFOUND)

	dup := *k2
	dup.Name = "dup"
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertAPIKey(ctx, &dup) })
	wantCode(t, err, lapse.ECONFLICT)

	list, err := s.ListAPIKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	noHash := func(k *lapse.APIKey) *lapse.APIKey { c := *k; c.Hash = nil; return &c }
	wantEqual(t, "ListAPIKeys (newest first, no hashes)", list, []*lapse.APIKey{noHash(k2), noHash(k1)})

	// Only RevokedAt and LastUsedAt are written.
	upd := *k1
	upd.RevokedAt = t0.Add(time.Hour)
	upd.LastUsedAt = t0.Add(time.Minute)
	upd.Scopes = []string{lapse.ScopeAdmin}
	upd.Hash = []byte("other")
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateAPIKey(ctx, &upd) })
	want := *k1
	want.RevokedAt, want.LastUsedAt = upd.RevokedAt, upd.LastUsedAt
	got, err := s.GetAPIKey(ctx, k1.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "updated key", got, &want)

	missing := *k1
	missing.ID, missing.Prefix = "qqqqqqqqqqqq", "qqqqqqqqqqqq"
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateAPIKey(ctx, &missing) })
	wantCode(t, err, lapse.ENOTFOUND)

	// Read in a transaction, a key is what the store holds, and locked:
	// of concurrent read-then-revoke transactions only one finds the key
	// unrevoked.
	err = s.Update(ctx, func(tx lapse.Tx) error {
		got, err := tx.GetAPIKey(ctx, k2.Prefix)
		if err == nil {
			wantEqual(t, "Tx.GetAPIKey", got, k2)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.GetAPIKey(ctx, "zzzzzzzzzzzz")
		return err
	})
	wantCode(t, err, lapse.ENOTFOUND)
	var wg sync.WaitGroup
	var revoked atomic.Int32
	for i := range 8 {
		wg.Go(func() {
			wrote := false // of the attempt that committed
			err := s.Update(ctx, func(tx lapse.Tx) error {
				wrote = false
				k, err := tx.GetAPIKey(ctx, k2.Prefix)
				if err != nil || !k.RevokedAt.IsZero() {
					return err
				}
				k.RevokedAt = t0.Add(time.Duration(i+1) * time.Second)
				wrote = true
				return tx.UpdateAPIKey(ctx, k)
			})
			if err != nil {
				t.Error(err)
			} else if wrote {
				revoked.Add(1)
			}
		})
	}
	wg.Wait()
	if n := revoked.Load(); n != 1 {
		t.Errorf("%d of 8 concurrent revocations found the key unrevoked; want exactly 1", n)
	}
}

func testTokenFeed(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	rev := func(target, jti string, i int) *lapse.TokenRevocation {
		return &lapse.TokenRevocation{
			Target: target, TokenID: jti, GrantID: "gr_" + jti,
			ExpiresAt: t0.Add(time.Duration(i) * time.Minute), RevokedAt: t0.Add(time.Duration(i) * time.Second),
		}
	}
	if got, err := s.TokenRevocations(ctx, "api", 0, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty feed = %v, %v", got, err)
	}
	var api []*lapse.TokenRevocation
	update(t, s, func(tx lapse.Tx) error {
		for i := range 5 {
			r := rev("api", fmt.Sprintf("t%d", i), i)
			seq, err := tx.AddTokenRevocation(ctx, r)
			if err != nil {
				return err
			}
			if seq != int64(i+1) || r.Seq != seq {
				return fmt.Errorf("seq = %d (r.Seq %d), want %d", seq, r.Seq, i+1)
			}
			api = append(api, r)
		}
		// Another target has its own sequence.
		other := rev("other", "t0", 9)
		if seq, err := tx.AddTokenRevocation(ctx, other); err != nil || seq != 1 {
			return fmt.Errorf("other target: seq %d, err %v", seq, err)
		}
		return nil
	})
	// Adding a token again returns its sequence and changes nothing.
	update(t, s, func(tx lapse.Tx) error {
		again := rev("api", "t2", 99)
		seq, err := tx.AddTokenRevocation(ctx, again)
		if err != nil || seq != 3 {
			return fmt.Errorf("re-adding t2: seq %d, err %v", seq, err)
		}
		next := rev("api", "t5", 5)
		if seq, err := tx.AddTokenRevocation(ctx, next); err != nil || seq != 6 {
			return fmt.Errorf("next token: seq %d, err %v", seq, err)
		}
		api = append(api, next)
		return nil
	})
	got, err := s.TokenRevocations(ctx, "api", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "feed", got, api)
	got, err = s.TokenRevocations(ctx, "api", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "feed after 2, limit 3", got, api[2:5])
	if got, err := s.TokenRevocations(ctx, "api", 6, 10); err != nil || len(got) != 0 {
		t.Fatalf("feed after its head = %v, %v", got, err)
	}

	for _, c := range []struct {
		target, jti string
		want        bool
	}{{"api", "t3", true}, {"api", "t9", false}, {"other", "t0", true}, {"other", "t1", false}, {"nowhere", "t0", false}} {
		got, err := s.TokenRevoked(ctx, c.target, c.jti)
		if err != nil || got != c.want {
			t.Fatalf("TokenRevoked(%s, %s) = %v, %v; want %v", c.target, c.jti, got, err, c.want)
		}
	}

	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.AddTokenRevocation(ctx, &lapse.TokenRevocation{Target: "api"})
		return err
	})
	wantCode(t, err, lapse.EINVALID)
}

func testTokenAcks(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	update(t, s, func(tx lapse.Tx) error {
		for i := range 5 {
			if _, err := tx.AddTokenRevocation(ctx, &lapse.TokenRevocation{Target: "api", TokenID: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if got, err := s.ConsumerAcks(ctx, "api"); err != nil || len(got) != 0 {
		t.Fatalf("ConsumerAcks before any ack = %v, %v", got, err)
	}
	ack := func(consumer string, seq int64) error {
		return s.Update(ctx, func(tx lapse.Tx) error { return tx.AckTokenRevocations(ctx, "api", consumer, seq) })
	}
	for _, a := range []struct {
		consumer string
		seq      int64
	}{{"c1", 3}, {"c2", 5}, {"c1", 2}, {"c2", 0}, {"c1", 4}} {
		if err := ack(a.consumer, a.seq); err != nil {
			t.Fatalf("ack %s %d: %v", a.consumer, a.seq, err)
		}
	}
	got, err := s.ConsumerAcks(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "acks only move forward", got, map[string]int64{"c1": 4, "c2": 5})

	wantCode(t, ack("c1", 6), lapse.EINVALID)  // beyond the feed
	wantCode(t, ack("c1", -1), lapse.EINVALID) // negative
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.AckTokenRevocations(ctx, "empty", "c1", 1) })
	wantCode(t, err, lapse.EINVALID)
	if err := s.Update(ctx, func(tx lapse.Tx) error { return tx.AckTokenRevocations(ctx, "empty", "c1", 0) }); err != nil {
		t.Fatalf("acking 0 on an empty feed: %v", err)
	}
	if got, err := s.ConsumerAcks(ctx, "empty"); err != nil || got["c1"] != 0 || len(got) != 1 {
		t.Fatalf("ConsumerAcks(empty) = %v, %v", got, err)
	}
	got, err = s.ConsumerAcks(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "acks after refused ones", got, map[string]int64{"c1": 4, "c2": 5})
}

// testTokenUses: each CountTokenUse adds one and returns the new count,
// per (target, token); a rolled-back count is not kept.
func testTokenUses(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	count := func(target, jti string) int64 {
		t.Helper()
		var n int64
		update(t, s, func(tx lapse.Tx) error {
			var err error
			n, err = tx.CountTokenUse(ctx, target, jti)
			return err
		})
		return n
	}
	for want := int64(1); want <= 3; want++ {
		if got := count("api", "t1"); got != want {
			t.Fatalf("use %d of api/t1: count = %d", want, got)
		}
	}
	if got := count("api", "t2"); got != 1 {
		t.Errorf("first use of another token: count = %d, want 1", got)
	}
	if got := count("other", "t1"); got != 1 {
		t.Errorf("first use of the same token ID on another target: count = %d, want 1", got)
	}
	// A use counted in a transaction that fails is not kept.
	errRollback := errors.New("roll back")
	err := s.Update(ctx, func(tx lapse.Tx) error {
		n, err := tx.CountTokenUse(ctx, "api", "t1")
		if err != nil {
			return err
		}
		if n != 4 {
			return fmt.Errorf("count inside the transaction = %d, want 4", n)
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("Update = %v, want the rollback error", err)
	}
	if got := count("api", "t1"); got != 4 {
		t.Errorf("after a rolled-back use: count = %d, want 4", got)
	}
	for _, c := range []struct{ target, jti string }{{"", "t1"}, {"api", ""}, {"a\x00pi", "t1"}, {"api", "t\x001"}} {
		err := s.Update(ctx, func(tx lapse.Tx) error {
			_, err := tx.CountTokenUse(ctx, c.target, c.jti)
			return err
		})
		wantCode(t, err, lapse.EINVALID)
	}
}
