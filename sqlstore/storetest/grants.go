package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var grantTests = []test{
	{"RoundTrip", testGrantRoundTrip},
	{"ZeroAndNil", testGrantZeroAndNil},
	{"InsertConflict", testGrantInsertConflict},
	{"NotFound", testGrantNotFound},
	{"UpdateCompareAndSwap", testGrantUpdate},
	{"Checkpoints", testCheckpoints},
	{"List", testListGrants},
	{"ListLimits", testListGrantLimits},
	{"CountByState", testCountGrantsByState},
	{"Due", testDue},
	{"Times", testTimes},
}

// fullGrant returns a grant with every stored field set and two checkpoints.
func fullGrant(at time.Time) *lapse.Grant {
	id := lapse.NewID(lapse.PrefixGrant, at)
	return &lapse.Grant{
		ID:        id,
		RequestID: lapse.NewID(lapse.PrefixRequest, at),
		Principal: lapse.Principal{
			ID: "ci-deployer", Kind: lapse.KindAgent, Name: "CI deployer",
			Groups: []string{"deploy"}, Scopes: []string{lapse.ScopeRequest}, CredentialID: "k2k2k2k2k2k2",
		},
		Entitlement:        "prod-db/read",
		Target:             "prod-db",
		TaskID:             "task-9",
		State:              lapse.GrantActive,
		EndReason:          lapse.EndReleased,
		StartsAt:           at,
		ExpiresAt:          at.Add(15 * time.Minute),
		DueAt:              at.Add(15 * time.Minute),
		ConnectorState:     []byte(`{"role":"lapse_gr_x"}`),
		Info:               map[string]string{"user": "lapse_gr_x", "host": "db.internal"},
		SealedCredentials:  []byte{0, 1, 2, 0xff, 0xfe, 0},
		SealedProbe:        []byte{0xfe, 0, 3},
		CredentialsClaimed: true,
		Attempts:           3,
		LastError:          "connection refused",
		LeaseOwner:         "replica-1",
		LeaseUntil:         at.Add(30 * time.Second),
		Fence:              7,
		CreatedAt:          at,
		ActivatedAt:        at.Add(time.Second),
		RevokeStartedAt:    at.Add(2 * time.Second),
		RevokedAt:          at.Add(3 * time.Second),
		Checkpoints: []*lapse.Checkpoint{
			{
				GrantID: id, Name: "target", Kind: lapse.CheckpointTarget, CreatedAt: at,
				RevokedAt: at.Add(time.Minute), VerifiedAt: at.Add(2 * time.Minute),
				Evidence: json.RawMessage(`{"role_exists":false,"backends":0}`),
				Residue:  []string{"backend 4242"},
			},
			{
				GrantID: id, Name: "z-sessions", Kind: lapse.CheckpointSessions, CreatedAt: at.Add(time.Nanosecond),
			},
		},
	}
}

// dueGrant returns a grant due at due on target.
func dueGrant(created, due time.Time, target string) *lapse.Grant {
	return &lapse.Grant{
		ID:          lapse.NewID(lapse.PrefixGrant, created),
		RequestID:   lapse.NewID(lapse.PrefixRequest, created),
		Principal:   lapse.Principal{ID: "svc", Kind: lapse.KindService},
		Entitlement: target + "/use",
		Target:      target,
		State:       lapse.GrantActive,
		StartsAt:    created,
		ExpiresAt:   due,
		DueAt:       due,
		CreatedAt:   created,
	}
}

func insertGrants(t testing.TB, s lapse.Store, gs ...*lapse.Grant) {
	t.Helper()
	update(t, s, func(tx lapse.Tx) error {
		for _, g := range gs {
			if err := tx.InsertGrant(context.Background(), g); err != nil {
				return err
			}
		}
		return nil
	})
}

func getGrant(t testing.TB, s lapse.Store, id string) *lapse.Grant {
	t.Helper()
	g, err := s.GetGrant(context.Background(), id)
	if err != nil {
		t.Fatalf("GetGrant %s: %v", id, err)
	}
	return g
}

// withoutCheckpoints returns a copy of g as lists return it.
func withoutCheckpoints(g *lapse.Grant) *lapse.Grant {
	c := *g
	c.Checkpoints = nil
	return &c
}

func testGrantRoundTrip(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := fullGrant(t0)
	insertGrants(t, s, g)
	if g.Version != 1 {
		t.Fatalf("Version after insert = %d, want 1", g.Version)
	}
	wantEqual(t, "Store.GetGrant", getGrant(t, s, g.ID), g)
	update(t, s, func(tx lapse.Tx) error {
		got, err := tx.GetGrant(ctx, g.ID)
		if err != nil {
			return err
		}
		wantEqual(t, "Tx.GetGrant", got, g)
		return nil
	})
	list, err := s.ListGrants(ctx, lapse.GrantFilter{})
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "ListGrants", list, []*lapse.Grant{withoutCheckpoints(g)})
}

func testGrantZeroAndNil(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	bare := &lapse.Grant{ID: lapse.NewID(lapse.PrefixGrant, t0), State: lapse.GrantScheduled}
	empty := dueGrant(t0, t0, "t")
	empty.Info = map[string]string{}
	empty.Principal.Groups = []string{}
	empty.Checkpoints = []*lapse.Checkpoint{
		{GrantID: empty.ID, Name: "a", Kind: lapse.CheckpointCache, Residue: []string{}},
		{GrantID: empty.ID, Name: "b", Kind: lapse.CheckpointConsumer},
	}
	insertGrants(t, s, bare, empty)
	wantEqual(t, "bare grant", getGrant(t, s, bare.ID), bare)
	wantEqual(t, "grant with empty maps and lists", getGrant(t, s, empty.ID), empty)

	// Empty byte fields and raw JSON read back as nil.
	g := dueGrant(t0, t0, "t")
	g.ConnectorState = []byte{}
	g.SealedCredentials = []byte{}
	g.SealedProbe = []byte{}
	g.Checkpoints = []*lapse.Checkpoint{{GrantID: g.ID, Name: "a", Evidence: json.RawMessage{}}}
	insertGrants(t, s, g)
	got := getGrant(t, s, g.ID)
	if got.ConnectorState != nil || got.SealedCredentials != nil || got.SealedProbe != nil || got.Checkpoints[0].Evidence != nil {
		t.Fatalf("empty bytes came back as %q %q %q %q", got.ConnectorState, got.SealedCredentials, got.SealedProbe, got.Checkpoints[0].Evidence)
	}

	// Clearing fields with an update clears them in the store.
	full := fullGrant(t0.Add(time.Second))
	insertGrants(t, s, full)
	full.Info, full.ConnectorState, full.SealedCredentials, full.SealedProbe = nil, nil, nil, nil
	full.LeaseOwner, full.LeaseUntil, full.DueAt, full.RevokedAt = "", time.Time{}, time.Time{}, time.Time{}
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, full) })
	wantEqual(t, "grant after clearing fields", getGrant(t, s, full.ID), full)
}

func testGrantInsertConflict(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := fullGrant(t0)
	insertGrants(t, s, g)
	dup := dueGrant(t0, t0, "other")
	dup.ID = g.ID
	dup.Checkpoints = []*lapse.Checkpoint{{GrantID: g.ID, Name: "target", Kind: lapse.CheckpointCache}}
	err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertGrant(ctx, dup) })
	wantCode(t, err, lapse.ECONFLICT)
	wantEqual(t, "grant after a conflicting insert", getGrant(t, s, g.ID), g)
}

func testGrantNotFound(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	missing := lapse.NewID(lapse.PrefixGrant, t0)
	_, err := s.GetGrant(ctx, missing)
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.GetGrant(ctx, missing)
		return err
	})
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		g := dueGrant(t0, t0, "t")
		g.ID, g.Version = missing, 1
		return tx.UpdateGrant(ctx, g)
	})
	wantCode(t, err, lapse.ENOTFOUND)
	err = s.Update(ctx, func(tx lapse.Tx) error {
		return tx.PutCheckpoint(ctx, &lapse.Checkpoint{GrantID: missing, Name: "target", Kind: lapse.CheckpointTarget})
	})
	wantCode(t, err, lapse.ENOTFOUND)
}

func testGrantUpdate(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := fullGrant(t0)
	insertGrants(t, s, g)
	stale := *g

	g.State = lapse.GrantRevoking
	g.EndReason = lapse.EndExpired
	g.StartsAt = t0.Add(time.Hour)
	g.ExpiresAt = t0.Add(2 * time.Hour)
	g.DueAt = t0.Add(3 * time.Hour)
	g.ConnectorState = []byte(`{"role":"lapse_gr_y"}`)
	g.Info = map[string]string{"user": "y"}
	g.SealedCredentials = nil
	g.SealedProbe = []byte("probe")
	g.CredentialsClaimed = false
	g.Attempts = 4
	g.LastError = ""
	g.LeaseOwner = "replica-2"
	g.LeaseUntil = t0.Add(time.Minute)
	g.Fence = 8
	g.ActivatedAt = t0.Add(4 * time.Second)
	g.RevokeStartedAt = t0.Add(5 * time.Second)
	g.RevokedAt = time.Time{}
	// Checkpoints are not written by UpdateGrant.
	cps := g.Checkpoints
	g.Checkpoints = []*lapse.Checkpoint{{GrantID: g.ID, Name: "ignored", Kind: lapse.CheckpointCache}}
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, g) })
	if g.Version != 2 {
		t.Fatalf("Version after update = %d, want 2", g.Version)
	}
	g.Checkpoints = cps
	wantEqual(t, "updated grant", getGrant(t, s, g.ID), g)

	stale.State = lapse.GrantRevoked
	err := s.Update(ctx, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, &stale) })
	wantCode(t, err, lapse.ECONFLICT)
	if stale.Version != 1 {
		t.Fatalf("a failed update changed Version to %d", stale.Version)
	}

	// Identity fields cannot be rewritten.
	forged := *g
	forged.Principal = lapse.Principal{ID: "mallory", Kind: lapse.KindHuman}
	forged.Target, forged.Entitlement, forged.RequestID, forged.TaskID = "other", "other/admin", "req_x", "t"
	forged.CreatedAt = t0.Add(time.Hour)
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, &forged) })
	want := *g
	want.Version = 3
	wantEqual(t, "grant after an update that changed identity fields", getGrant(t, s, g.ID), &want)
}

func testCheckpoints(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	g := dueGrant(t0, t0, "t")
	insertGrants(t, s, g)
	a := &lapse.Checkpoint{GrantID: g.ID, Name: "target", Kind: lapse.CheckpointTarget, CreatedAt: t0}
	b := &lapse.Checkpoint{GrantID: g.ID, Name: "api-1", Kind: lapse.CheckpointConsumer, CreatedAt: t0.Add(time.Second)}
	update(t, s, func(tx lapse.Tx) error {
		if err := tx.PutCheckpoint(ctx, b); err != nil {
			return err
		}
		return tx.PutCheckpoint(ctx, a)
	})
	wantEqual(t, "checkpoints", getGrant(t, s, g.ID).Checkpoints, []*lapse.Checkpoint{a, b})

	// Put replaces every field of (GrantID, Name).
	a2 := &lapse.Checkpoint{
		GrantID: g.ID, Name: "target", Kind: lapse.CheckpointSessions, CreatedAt: t0.Add(-time.Second),
		RevokedAt: t0.Add(time.Minute), VerifiedAt: t0.Add(2 * time.Minute),
		Evidence: json.RawMessage(`{"ok":true}`), Residue: []string{"r1", "r2"},
	}
	update(t, s, func(tx lapse.Tx) error { return tx.PutCheckpoint(ctx, a2) })
	got := getGrant(t, s, g.ID)
	wantEqual(t, "checkpoints after replace", got.Checkpoints, []*lapse.Checkpoint{a2, b})
	if got.Version != 1 {
		t.Fatalf("PutCheckpoint changed the grant version to %d", got.Version)
	}
	if !got.Checkpoints[0].Verified() || got.Checkpoints[1].Verified() {
		t.Fatal("Verified() does not follow VerifiedAt")
	}
}

func testListGrants(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	states := lapse.AllGrantStates
	var all []*lapse.Grant
	for i := range 21 {
		g := dueGrant(t0.Add(time.Duration(i)*time.Second), t0.Add(time.Hour), fmt.Sprintf("target%d", i%3))
		g.State = states[i%len(states)]
		g.Principal.ID = fmt.Sprintf("p%d", i%2)
		if i%5 == 0 {
			g.Entitlement = "special"
		}
		if i == 7 {
			g.RequestID = "req_seven"
		}
		all = append(all, g)
	}
	insertGrants(t, s, all...)
	newestFirst := func(keep func(*lapse.Grant) bool) []*lapse.Grant {
		var out []*lapse.Grant
		for i := len(all) - 1; i >= 0; i-- {
			if keep(all[i]) {
				out = append(out, withoutCheckpoints(all[i]))
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    lapse.GrantFilter
		keep func(*lapse.Grant) bool
	}{
		{"all", lapse.GrantFilter{}, func(*lapse.Grant) bool { return true }},
		{"state", lapse.GrantFilter{State: lapse.GrantRevokeFailed}, func(g *lapse.Grant) bool { return g.State == lapse.GrantRevokeFailed }},
		{"principal", lapse.GrantFilter{PrincipalID: "p1"}, func(g *lapse.Grant) bool { return g.Principal.ID == "p1" }},
		{"target", lapse.GrantFilter{Target: "target2"}, func(g *lapse.Grant) bool { return g.Target == "target2" }},
		{"entitlement", lapse.GrantFilter{Entitlement: "special"}, func(g *lapse.Grant) bool { return g.Entitlement == "special" }},
		{"request", lapse.GrantFilter{RequestID: "req_seven"}, func(g *lapse.Grant) bool { return g.RequestID == "req_seven" }},
		{"live", lapse.GrantFilter{Live: true}, func(g *lapse.Grant) bool { return g.State.Live() }},
		{"live and target", lapse.GrantFilter{Live: true, Target: "target0", PrincipalID: "p0"}, func(g *lapse.Grant) bool {
			return g.State.Live() && g.Target == "target0" && g.Principal.ID == "p0"
		}},
		{"none", lapse.GrantFilter{Target: "nowhere"}, func(*lapse.Grant) bool { return false }},
	} {
		got, err := s.ListGrants(ctx, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := newestFirst(tc.keep)
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		wantEqual(t, "ListGrants "+tc.name, got, want)
	}
	got, err := s.ListGrants(ctx, lapse.GrantFilter{Limit: 4, Live: true})
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "ListGrants limit", got, newestFirst(func(g *lapse.Grant) bool { return g.State.Live() })[:4])
}

func testListGrantLimits(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	var gs []*lapse.Grant
	for i := range lapse.MaxListLimit + 5 {
		gs = append(gs, dueGrant(t0.Add(time.Duration(i)*time.Millisecond), t0, "t"))
	}
	insertGrants(t, s, gs...)
	for _, tc := range []struct{ limit, want int }{
		{0, lapse.DefaultListLimit},
		{7, 7},
		{lapse.MaxListLimit * 3, lapse.MaxListLimit},
	} {
		got, err := s.ListGrants(ctx, lapse.GrantFilter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Fatalf("ListGrants(Limit: %d) returned %d, want %d", tc.limit, len(got), tc.want)
		}
		if got[0].ID != gs[len(gs)-1].ID {
			t.Fatalf("ListGrants is not newest first")
		}
	}
}

func testCountGrantsByState(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	got, err := s.CountGrantsByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for st, n := range got {
		if n != 0 {
			t.Fatalf("empty store counts %d grants in %s", n, st)
		}
	}
	want := map[lapse.GrantState]int{}
	var gs []*lapse.Grant
	for i := range 17 {
		g := dueGrant(t0.Add(time.Duration(i)*time.Second), t0, "t")
		g.State = lapse.AllGrantStates[(i*i)%len(lapse.AllGrantStates)]
		want[g.State]++
		gs = append(gs, g)
	}
	insertGrants(t, s, gs...)
	got, err = s.CountGrantsByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range lapse.AllGrantStates {
		if got[st] != want[st] {
			t.Fatalf("count of %s = %d, want %d (all: %v)", st, got[st], want[st], got)
		}
	}
}

func testDue(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	if _, ok, err := s.NextDueAt(ctx); err != nil || ok {
		t.Fatalf("NextDueAt on an empty store = ok %v, err %v; want none", ok, err)
	}
	if got, err := s.DueCounts(ctx, t0); err != nil || len(got) != 0 {
		t.Fatalf("DueCounts on an empty store = %v, %v", got, err)
	}

	revoked := dueGrant(t0, t0.Add(-time.Hour), "a") // revoked: never due
	revoked.State = lapse.GrantRevoked
	noDue := dueGrant(t0, time.Time{}, "a") // no deadline
	a1 := dueGrant(t0, t0.Add(-time.Minute+1), "a")
	a2 := dueGrant(t0, t0, "a") // due exactly now
	a3 := dueGrant(t0, t0.Add(time.Nanosecond), "a")
	b1 := dueGrant(t0, t0.Add(-time.Second), "b")
	b1.State = lapse.GrantRevokeFailed
	b1.LeaseOwner, b1.LeaseUntil = "someone", t0.Add(time.Hour) // leased grants still count as due
	c1 := dueGrant(t0, t0.Add(time.Hour), "c")
	insertGrants(t, s, revoked, noDue, a1, a2, a3, b1, c1)

	next, ok, err := s.NextDueAt(ctx)
	if err != nil || !ok || !next.Equal(a1.DueAt) {
		t.Fatalf("NextDueAt = %v, %v, %v; want %v", next, ok, err, a1.DueAt)
	}
	got, err := s.DueCounts(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "DueCounts", got, map[string]int{"a": 2, "b": 1})
	got, err = s.DueCounts(ctx, t0.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "DueCounts later", got, map[string]int{"a": 3, "b": 1, "c": 1})

	// Revoking the earliest moves NextDueAt on.
	a1.State, a1.DueAt = lapse.GrantRevoked, time.Time{}
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, a1) })
	next, ok, err = s.NextDueAt(ctx)
	if err != nil || !ok || !next.Equal(b1.DueAt) {
		t.Fatalf("NextDueAt = %v, %v, %v; want %v", next, ok, err, b1.DueAt)
	}
}

// testTimes checks that times in any location come back equal, in UTC, to
// the nanosecond, and that times the store cannot hold are refused.
func testTimes(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	zone := time.FixedZone("UTC+5:45", 5*3600+45*60)
	g := dueGrant(t0, t0, "t")
	g.StartsAt = time.Date(1970, 1, 1, 0, 0, 0, 1, zone)
	g.ExpiresAt = time.Date(2200, 12, 31, 23, 59, 59, 999999999, zone)
	g.DueAt = time.Unix(0, -5).In(zone) // before 1970
	g.CreatedAt = time.Now()            // with a monotonic reading
	insertGrants(t, s, g)
	got := getGrant(t, s, g.ID)
	for _, c := range []struct {
		name      string
		got, want time.Time
	}{
		{"StartsAt", got.StartsAt, g.StartsAt},
		{"ExpiresAt", got.ExpiresAt, g.ExpiresAt},
		{"DueAt", got.DueAt, g.DueAt},
		{"CreatedAt", got.CreatedAt, g.CreatedAt},
	} {
		if !c.got.Equal(c.want) || c.got.Location() != time.UTC {
			t.Fatalf("%s = %s, want %s in UTC", c.name, c.got.Format(time.RFC3339Nano), c.want.Format(time.RFC3339Nano))
		}
	}

	for _, bad := range []time.Time{
		time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		g := dueGrant(t0, t0, "t")
		g.ExpiresAt = bad
		err := s.Update(ctx, func(tx lapse.Tx) error { return tx.InsertGrant(ctx, g) })
		wantCode(t, err, lapse.EINVALID)
	}
}
