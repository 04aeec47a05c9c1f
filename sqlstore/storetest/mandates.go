package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var mandateTests = []test{
	{"RoundTrip", testMandateRoundTrip},
	{"List", testListMandates},
	{"Revoke", testMandateRevoke},
	{"NUL", testNULInMandate},
	{"UnrevokedGrants", testUnrevokedGrants},
	{"LockGrantsOfRace", testRaceLockGrantsOf},
}

func fullMandate(at time.Time, agent, sponsor string) *lapse.Mandate {
	return &lapse.Mandate{
		ID:      lapse.NewID(lapse.PrefixMandate, at),
		AgentID: agent,
		Sponsor: lapse.Principal{
			ID: sponsor, Kind: lapse.KindHuman, Name: "Sponsor " + sponsor,
			Groups: []string{"developers", "oncall"}, CredentialID: "k3k3k3k3k3k3",
		},
		Entitlements: []string{"prod-db/read", "cache/flush"},
		MaxDuration:  lapse.Duration(15 * time.Minute),
		Channel:      lapse.ChannelCLI,
		CreatedAt:    at,
		ExpiresAt:    at.Add(8 * time.Hour),
	}
}

func insertMandates(t testing.TB, s lapse.Store, ms ...*lapse.Mandate) {
	t.Helper()
	update(t, s, func(tx lapse.Tx) error {
		for _, m := range ms {
			if err := tx.InsertMandate(context.Background(), m); err != nil {
				return err
			}
		}
		return nil
	})
}

func testMandateRoundTrip(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	m := fullMandate(t0, "ci-helper", "alice")
	insertMandates(t, s, m)
	got, err := s.GetMandate(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "Store.GetMandate", got, m)
	update(t, s, func(tx lapse.Tx) error {
		got, err := tx.GetMandate(ctx, m.ID)
		if err != nil {
			return err
		}
		wantEqual(t, "Tx.GetMandate", got, m)
		return nil
	})

	// The zero values that can be stored come back as they went in.
	bare := &lapse.Mandate{ID: lapse.NewID(lapse.PrefixMandate, t0), AgentID: "bot", Sponsor: lapse.Principal{ID: "bob", Kind: lapse.KindHuman},
		Entitlements: []string{}, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	insertMandates(t, s, bare)
	if got, err = s.GetMandate(ctx, bare.ID); err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "bare mandate", got, bare)

	_, err = s.GetMandate(ctx, "mdt_missing")
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.GetMandate(ctx, "mdt_missing")
		return err
	})
	wantCode(t, err, lapse.ENOTFOUND)

	dup := *m
	dup.AgentID = "someone-else"
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertMandate(ctx, &dup) })
	wantCode(t, err, lapse.ECONFLICT)
	if got, _ := s.GetMandate(ctx, m.ID); got.AgentID != m.AgentID {
		t.Fatalf("a conflicting insert changed the mandate: agent %s", got.AgentID)
	}
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertMandate(ctx, &lapse.Mandate{ID: ""}) })
	wantCode(t, err, lapse.EINVALID)
}

func testListMandates(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	a1 := fullMandate(t0, "agent-1", "alice")
	a2 := fullMandate(t0.Add(time.Second), "agent-2", "alice")
	b1 := fullMandate(t0.Add(2*time.Second), "agent-1", "bob")
	b1.ExpiresAt = t0.Add(time.Hour) // expires before the others
	r1 := fullMandate(t0.Add(3*time.Second), "agent-1", "alice")
	r1.RevokedAt, r1.RevokedBy = t0.Add(4*time.Second), "alice"
	insertMandates(t, s, a1, a2, b1, r1)

	ids := func(ms []*lapse.Mandate) string {
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return join(out)
	}
	cases := []struct {
		name string
		f    lapse.MandateFilter
		want []*lapse.Mandate
	}{
		{"all, newest first", lapse.MandateFilter{}, []*lapse.Mandate{r1, b1, a2, a1}},
		{"by agent", lapse.MandateFilter{AgentID: "agent-1"}, []*lapse.Mandate{r1, b1, a1}},
		{"by sponsor", lapse.MandateFilter{SponsorID: "alice"}, []*lapse.Mandate{r1, a2, a1}},
		{"agent and sponsor", lapse.MandateFilter{AgentID: "agent-1", SponsorID: "alice"}, []*lapse.Mandate{r1, a1}},
		{"live", lapse.MandateFilter{LiveAt: t0.Add(30 * time.Minute)}, []*lapse.Mandate{b1, a2, a1}},
		{"live after one expired", lapse.MandateFilter{AgentID: "agent-1", LiveAt: t0.Add(time.Hour)}, []*lapse.Mandate{a1}},
		{"live at the expiry instant is not live", lapse.MandateFilter{LiveAt: a2.ExpiresAt}, nil},
		{"limit", lapse.MandateFilter{Limit: 2}, []*lapse.Mandate{r1, b1}},
		{"nobody", lapse.MandateFilter{AgentID: "nobody"}, nil},
	}
	for _, c := range cases {
		got, err := s.ListMandates(ctx, c.f)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ids(got) != ids(c.want) {
			t.Fatalf("%s: got %s, want %s", c.name, ids(got), ids(c.want))
		}
	}
	got, err := s.ListMandates(ctx, lapse.MandateFilter{AgentID: "agent-2"})
	if err != nil || len(got) != 1 {
		t.Fatalf("agent-2: %v, %v", got, err)
	}
	wantEqual(t, "listed mandate", got[0], a2)
}

func testMandateRevoke(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	m := fullMandate(t0, "ci-helper", "alice")
	insertMandates(t, s, m)
	// Only RevokedAt and RevokedBy are written.
	upd := *m
	upd.RevokedAt, upd.RevokedBy = t0.Add(time.Minute), "admin"
	upd.Entitlements = []string{"everything"}
	upd.MaxDuration = lapse.Duration(time.Hour)
	upd.AgentID = "other"
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateMandate(ctx, &upd) })
	want := *m
	want.RevokedAt, want.RevokedBy = upd.RevokedAt, upd.RevokedBy
	got, err := s.GetMandate(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "revoked mandate", got, &want)

	missing := *m
	missing.ID = "mdt_missing"
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateMandate(ctx, &missing) })
	wantCode(t, err, lapse.ENOTFOUND)
}

func testNULInMandate(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	for _, c := range []struct {
		field string
		mod   func(m *lapse.Mandate)
	}{
		{"agent_id", func(m *lapse.Mandate) { m.AgentID = "bot\x00" }},
		{"sponsor.id", func(m *lapse.Mandate) { m.Sponsor.ID = "alice\x00" }},
		{"sponsor.name", func(m *lapse.Mandate) { m.Sponsor.Name = "A\x00" }},
		{"channel", func(m *lapse.Mandate) { m.Channel = "cli\x00" }},
	} {
		m := fullMandate(t0, "bot", "alice")
		c.mod(m)
		err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertMandate(ctx, m) })
		wantCode(t, err, lapse.EINVALID)
		wantField(t, err, c.field)
	}
	// An entitlement name with NUL is JSON-escaped inside the list and
	// round-trips.
	m := fullMandate(t0, "bot", "alice")
	m.Entitlements = []string{"a\x00b"}
	insertMandates(t, s, m)
	got, err := s.GetMandate(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "mandate with NUL in a list", got, m)

	_, err = s.ListMandates(ctx, lapse.MandateFilter{AgentID: "x\x00"})
	wantCode(t, err, lapse.EINVALID)
	_, err = s.GetMandate(ctx, "mdt_\x00")
	wantCode(t, err, lapse.EINVALID)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.UnrevokedGrants(ctx, "alice\x00", "db/read")
		return err
	})
	wantCode(t, err, lapse.EINVALID)
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.LockGrantsOf(ctx, "alice", "db\x00") })
	wantCode(t, err, lapse.EINVALID)
}

// testUnrevokedGrants: a principal's grants of one entitlement that are
// not revoked, scheduled ones included, oldest first; nobody else's and no
// other entitlement's.
func testUnrevokedGrants(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	mk := func(i int, principal, ent string, st lapse.GrantState) *lapse.Grant {
		g := dueGrant(t0.Add(time.Duration(i)*time.Second), t0.Add(time.Hour), "db")
		g.Principal = lapse.Principal{ID: principal, Kind: lapse.KindAgent, Act: []string{"alice"}}
		g.Entitlement = ent
		g.State = st
		if st == lapse.GrantRevoked {
			g.DueAt = time.Time{}
		}
		return g
	}
	scheduled := mk(3, "bot", "db/read", lapse.GrantScheduled)
	active := mk(1, "bot", "db/read", lapse.GrantActive)
	failed := mk(2, "bot", "db/read", lapse.GrantRevokeFailed)
	insertGrants(t, s,
		scheduled, active, failed,
		mk(0, "bot", "db/read", lapse.GrantRevoked),
		mk(4, "bot", "db/admin", lapse.GrantActive),
		mk(5, "other", "db/read", lapse.GrantActive),
	)
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.LockGrantsOf(ctx, "bot", "db/read"); err != nil {
			return err
		}
		got, err := tx.UnrevokedGrants(ctx, "bot", "db/read")
		if err != nil {
			return err
		}
		wantEqual(t, "UnrevokedGrants", got, []*lapse.Grant{active, failed, scheduled})
		none, err := tx.UnrevokedGrants(ctx, "nobody", "db/read")
		if err != nil || len(none) != 0 {
			return fmt.Errorf("nobody's grants: %v, %v", none, err)
		}
		return nil
	})
}

// testRaceLockGrantsOf: many transactions at once each take the pair's
// lock, look for an unrevoked grant and insert one if there is none —
// what the broker's fence does. Exactly one inserts, on both databases;
// transactions for another pair are not held up by the lock.
func testRaceLockGrantsOf(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	const n = 12
	var other atomic.Int32
	var mu sync.Mutex
	var errs []error
	start(n, func(i int) {
		principal := "bot"
		if i%4 == 3 {
			principal = fmt.Sprintf("other-%d", i) // a pair of its own
		}
		err := s.Update(ctx, func(tx lapse.Tx) error {
			if err := tx.LockGrantsOf(ctx, principal, "db/read"); err != nil {
				return err
			}
			gs, err := tx.UnrevokedGrants(ctx, principal, "db/read")
			if err != nil || len(gs) > 0 {
				return err
			}
			g := dueGrant(t0.Add(time.Duration(i)*time.Millisecond), t0.Add(time.Hour), "db")
			g.Principal = lapse.Principal{ID: principal, Kind: lapse.KindAgent}
			g.Entitlement = "db/read"
			g.State = lapse.GrantProvisioning
			return tx.InsertGrant(ctx, g)
		})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		if principal != "bot" {
			other.Add(1)
		}
	})
	if len(errs) > 0 {
		t.Fatalf("transactions failed: %v", errs)
	}
	gs, err := s.ListGrants(ctx, lapse.GrantFilter{PrincipalID: "bot"})
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 {
		t.Fatalf("%d grants for the contended pair, want exactly 1: the lock did not serialise the check and the insert", len(gs))
	}
	if other.Load() != 3 {
		t.Fatalf("%d of 3 uncontended pairs inserted their grant", other.Load())
	}
}
