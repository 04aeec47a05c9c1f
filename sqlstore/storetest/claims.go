package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

var claimTests = []test{
	{"Basic", testClaimBasic},
	{"LeaseExpiry", testClaimLeaseExpiry},
	{"TargetAndLimit", testClaimTargetAndLimit},
	{"Invalid", testClaimInvalid},
	{"Expire", testClaimExpire},
	{"InTransaction", testClaimInTransaction},
	{"Expiring", testClaimExpiring},
}

func claim(t testing.TB, s lapse.Store, in lapse.ClaimInput) []*lapse.Grant {
	t.Helper()
	gs, err := s.ClaimDueGrants(context.Background(), in)
	if err != nil {
		t.Fatalf("ClaimDueGrants(%+v): %v", in, err)
	}
	return gs
}

func testClaimBasic(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	now := t0
	late := dueGrant(t0, now.Add(-time.Hour), "a")
	late.Checkpoints = []*lapse.Checkpoint{
		{GrantID: late.ID, Name: "target", Kind: lapse.CheckpointTarget, CreatedAt: t0},
		{GrantID: late.ID, Name: "sessions", Kind: lapse.CheckpointSessions, CreatedAt: t0.Add(time.Second)},
	}
	exact := dueGrant(t0, now, "b")
	exact.State = lapse.GrantRevokeFailed
	future := dueGrant(t0, now.Add(time.Nanosecond), "a")
	revoked := dueGrant(t0, now.Add(-2*time.Hour), "a")
	revoked.State = lapse.GrantRevoked
	leased := dueGrant(t0, now.Add(-3*time.Hour), "a")
	leased.LeaseOwner, leased.LeaseUntil, leased.Fence = "other", now.Add(time.Nanosecond), 4
	insertGrants(t, s, late, exact, future, revoked, leased)

	got := claim(t, s, lapse.ClaimInput{Owner: "me", Now: now, Lease: time.Minute, Limit: 10})
	if len(got) != 2 || got[0].ID != late.ID || got[1].ID != exact.ID {
		t.Fatalf("claimed %v, want [%s %s] in due order", grantIDs(got), late.ID, exact.ID)
	}
	for _, want := range []*lapse.Grant{late, exact} {
		want.LeaseOwner = "me"
		want.LeaseUntil = now.Add(time.Minute)
		want.DueAt = want.LeaseUntil
		want.Fence++
		want.Version++
	}
	wantEqual(t, "claimed grant (with checkpoints)", got[0], late)
	wantEqual(t, "claimed grant", got[1], exact)
	wantEqual(t, "stored claimed grant", getGrant(t, s, late.ID), late)
	wantEqual(t, "untouched leased grant", getGrant(t, s, leased.ID), leased)
	wantEqual(t, "untouched future grant", getGrant(t, s, future.ID), future)

	// Nothing else is due while the leases hold.
	if again := claim(t, s, lapse.ClaimInput{Owner: "you", Now: now, Lease: time.Minute, Limit: 10}); len(again) != 0 {
		t.Fatalf("second claim got %v while leases are valid", grantIDs(again))
	}

	// The claimed copy is current: the claimer can write it.
	late.State = lapse.GrantRevoking
	update(t, s, func(tx lapse.Tx) error { return tx.UpdateGrant(ctx, late) })
}

func testClaimLeaseExpiry(t *testing.T, s lapse.Store) {
	now := t0
	g := dueGrant(t0, now, "a")
	insertGrants(t, s, g)
	first := claim(t, s, lapse.ClaimInput{Owner: "a", Now: now, Lease: 10 * time.Second, Limit: 1})
	if len(first) != 1 || first[0].Fence != 1 {
		t.Fatalf("first claim = %v", first)
	}
	// Still leased a nanosecond before the lease ends…
	if got := claim(t, s, lapse.ClaimInput{Owner: "b", Now: now.Add(10*time.Second - 1), Lease: time.Second, Limit: 1}); len(got) != 0 {
		t.Fatal("claimed a grant whose lease is still valid")
	}
	// …and free when it ends.
	second := claim(t, s, lapse.ClaimInput{Owner: "b", Now: now.Add(10 * time.Second), Lease: time.Second, Limit: 1})
	if len(second) != 1 || second[0].LeaseOwner != "b" || second[0].Fence != 2 || second[0].Version != first[0].Version+1 {
		t.Fatalf("second claim = %+v", second)
	}
	// The owner may claim again after its own lease expires too.
	third := claim(t, s, lapse.ClaimInput{Owner: "b", Now: now.Add(time.Hour), Lease: time.Second, Limit: 1})
	if len(third) != 1 || third[0].Fence != 3 {
		t.Fatalf("third claim = %+v", third)
	}
}

func testClaimTargetAndLimit(t *testing.T, s lapse.Store) {
	var gs []*lapse.Grant
	for i := range 30 {
		target := "x"
		if i%3 == 0 {
			target = "y"
		}
		// Due times descend, so due order is the reverse of insertion.
		gs = append(gs, dueGrant(t0, t0.Add(-time.Duration(i)*time.Second), target))
	}
	insertGrants(t, s, gs...)
	got := claim(t, s, lapse.ClaimInput{Owner: "o", Now: t0, Lease: time.Minute, Limit: 4, Target: "y"})
	if len(got) != 4 {
		t.Fatalf("claimed %d, want 4", len(got))
	}
	// The oldest due of target y: i = 27, 24, 21, 18.
	for k, g := range got {
		if want := gs[27-3*k]; g.ID != want.ID || g.Target != "y" {
			t.Fatalf("claim[%d] = %s (%s), want %s", k, g.ID, g.Target, want.ID)
		}
	}
	rest := claim(t, s, lapse.ClaimInput{Owner: "o", Now: t0, Lease: time.Minute, Limit: 100})
	if len(rest) != 26 {
		t.Fatalf("claimed %d, want the other 26", len(rest))
	}
	for i := 1; i < len(rest); i++ {
		if rest[i].ExpiresAt.Before(rest[i-1].ExpiresAt) {
			t.Fatal("claim is not in deadline order")
		}
	}
	if got := claim(t, s, lapse.ClaimInput{Owner: "o", Now: t0, Lease: time.Minute, Limit: 100, Target: "nowhere"}); len(got) != 0 {
		t.Fatalf("claimed %d grants of an unknown target", len(got))
	}
}

func testClaimInvalid(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	ok := lapse.ClaimInput{Owner: "o", Now: t0, Lease: time.Second, Limit: 1}
	for _, tc := range []struct {
		field string
		in    func(lapse.ClaimInput) lapse.ClaimInput
	}{
		{"owner", func(in lapse.ClaimInput) lapse.ClaimInput { in.Owner = ""; return in }},
		{"now", func(in lapse.ClaimInput) lapse.ClaimInput { in.Now = time.Time{}; return in }},
		{"lease", func(in lapse.ClaimInput) lapse.ClaimInput { in.Lease = 0; return in }},
		{"limit", func(in lapse.ClaimInput) lapse.ClaimInput { in.Limit = 0; return in }},
	} {
		_, err := s.ClaimDueGrants(ctx, tc.in(ok))
		wantCode(t, err, lapse.EINVALID)
		if f := lapse.ErrorField(err); f != tc.field {
			t.Fatalf("field = %q, want %q", f, tc.field)
		}
	}
}

// With Expire, the claim itself moves expired active grants to revoking and
// leaves every other grant's state alone.
func testClaimExpire(t *testing.T, s lapse.Store) {
	now := t0.Add(time.Hour)
	expired := dueGrant(t0, now.Add(-time.Minute), "a")
	exact := dueGrant(t0, now, "a") // ExpiresAt == now: expired
	released := dueGrant(t0, now.Add(-2*time.Minute), "a")
	released.State, released.EndReason, released.RevokeStartedAt = lapse.GrantRevoking, lapse.EndReleased, t0.Add(time.Minute)
	reasoned := dueGrant(t0, now.Add(-3*time.Minute), "a")
	reasoned.EndReason = lapse.EndRevoked // an active grant that already carries a reason keeps it
	scheduled := dueGrant(t0, now.Add(-4*time.Minute), "a")
	scheduled.State, scheduled.ExpiresAt = lapse.GrantScheduled, now.Add(time.Hour)
	early := dueGrant(t0, now.Add(-5*time.Minute), "a") // due (to move its DueAt) but not expired
	early.ExpiresAt = now.Add(time.Second)
	insertGrants(t, s, expired, exact, released, reasoned, scheduled, early)

	got := claim(t, s, lapse.ClaimInput{Owner: "me", Now: now, Lease: time.Minute, Limit: 10, Expire: true})
	if len(got) != 6 {
		t.Fatalf("claimed %d grants, want 6", len(got))
	}
	for _, g := range []*lapse.Grant{expired, exact, released, reasoned, scheduled, early} {
		g.LeaseOwner, g.LeaseUntil, g.DueAt = "me", now.Add(time.Minute), now.Add(time.Minute)
		g.Fence++
		g.Version++
	}
	for _, g := range []*lapse.Grant{expired, exact} {
		g.State, g.EndReason, g.RevokeStartedAt = lapse.GrantRevoking, lapse.EndExpired, now
	}
	reasoned.State, reasoned.RevokeStartedAt = lapse.GrantRevoking, now
	for _, want := range []*lapse.Grant{expired, exact, released, reasoned, scheduled, early} {
		wantEqual(t, "grant after an expiring claim", withoutCheckpoints(getGrant(t, s, want.ID)), withoutCheckpoints(want))
	}
	byID := make(map[string]*lapse.Grant)
	for _, g := range got {
		byID[g.ID] = g
	}
	wantEqual(t, "claimed copy of an expired grant", withoutCheckpoints(byID[expired.ID]), withoutCheckpoints(expired))
}

// A claim inside a transaction commits or rolls back with what the
// claimer wrote beside it.
func testClaimInTransaction(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	now := t0
	g := dueGrant(t0, now, "a")
	insertGrants(t, s, g)
	boom := lapse.Errorf(lapse.EUNAVAILABLE, "boom")
	err := s.Update(ctx, func(tx lapse.Tx) error {
		gs, err := tx.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "me", Now: now, Lease: time.Minute, Limit: 1, Expire: true})
		if err != nil {
			return err
		}
		if len(gs) != 1 {
			t.Errorf("claimed %d grants in a transaction, want 1", len(gs))
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	wantEqual(t, "grant after a rolled-back claim", getGrant(t, s, g.ID), g)

	var claimed *lapse.Grant
	update(t, s, func(tx lapse.Tx) error {
		gs, err := tx.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "me", Now: now, Lease: time.Minute, Limit: 1, Expire: true})
		if err != nil || len(gs) != 1 {
			return fmt.Errorf("claim: %v, %d grants", err, len(gs))
		}
		claimed = gs[0]
		if claimed.State != lapse.GrantRevoking {
			return fmt.Errorf("claimed state %s, want revoking", claimed.State)
		}
		// The claimed copy is current inside the transaction.
		claimed.LastError = "written beside the claim"
		return tx.UpdateGrant(ctx, claimed)
	})
	wantEqual(t, "grant after a committed claim", withoutCheckpoints(getGrant(t, s, g.ID)), withoutCheckpoints(claimed))
	wantCode(t, s.Update(ctx, func(tx lapse.Tx) error {
		_, err := tx.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "", Now: now, Lease: time.Minute, Limit: 1})
		return err
	}), lapse.EINVALID)
}

// ClaimExpiring reserves the expiry of active grants whose deadline falls
// in (now, now+ahead] of one target, and of nothing else: the lease runs
// from the deadline, and no other claim takes the grant until it ends.
func testClaimExpiring(t *testing.T, s lapse.Store) {
	ctx := context.Background()
	now := t0
	const lease = 30 * time.Second
	soon := dueGrant(t0, now.Add(500*time.Millisecond), "x")
	soon.Checkpoints = []*lapse.Checkpoint{{GrantID: soon.ID, Name: "target", Kind: lapse.CheckpointTarget, CreatedAt: t0}}
	sooner := dueGrant(t0, now.Add(200*time.Millisecond), "x")
	edge := dueGrant(t0, now.Add(time.Second), "x")
	later := dueGrant(t0, now.Add(time.Second+1), "x")
	due := dueGrant(t0, now, "x") // due now: the ordinary claim's
	failed := dueGrant(t0, now.Add(100*time.Millisecond), "x")
	failed.State = lapse.GrantRevokeFailed
	other := dueGrant(t0, now.Add(100*time.Millisecond), "y")
	leased := dueGrant(t0, now.Add(100*time.Millisecond), "x")
	leased.LeaseOwner, leased.LeaseUntil, leased.Fence = "other", now.Add(time.Hour), 2
	lapsed := dueGrant(t0, now.Add(300*time.Millisecond), "x")
	lapsed.LeaseOwner, lapsed.LeaseUntil, lapsed.Fence = "other", now, 5
	insertGrants(t, s, soon, sooner, edge, later, due, failed, other, leased, lapsed)

	in := lapse.ClaimInput{Owner: "me", Now: now, Lease: lease, Limit: 10, Target: "x", Ahead: time.Second}
	got, err := s.ClaimExpiring(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	want := []*lapse.Grant{sooner, lapsed, soon, edge}
	if ids, wantIDs := grantIDs(got), grantIDs(want); fmt.Sprint(ids) != fmt.Sprint(wantIDs) {
		t.Fatalf("claimed %v, want %v in deadline order", ids, wantIDs)
	}
	for _, w := range want {
		w.LeaseOwner = "me"
		w.LeaseUntil = w.ExpiresAt.Add(lease)
		w.DueAt = w.LeaseUntil
		w.Fence++
		w.Version++
	}
	for i := range want {
		wantEqual(t, "reserved grant", got[i], want[i])
	}
	stored, err := s.GetGrant(ctx, soon.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "stored reserved grant", stored, soon)

	// Nobody else takes a reserved grant, before or after its deadline,
	// until its lease ends; then the ordinary claim does.
	if again, err := s.ClaimExpiring(ctx, lapse.ClaimInput{Owner: "b", Now: now, Lease: lease, Limit: 10, Target: "x", Ahead: time.Hour}); err != nil {
		t.Fatal(err)
	} else if fmt.Sprint(grantIDs(again)) != fmt.Sprint(grantIDs([]*lapse.Grant{later})) {
		t.Fatalf("second reservation took %v, want only %s", grantIDs(again), later.ID)
	}
	for _, g := range claim(t, s, lapse.ClaimInput{Owner: "b", Now: now.Add(lease), Lease: lease, Limit: 10, Expire: true}) {
		if g.ID == soon.ID {
			t.Fatalf("claimed %s while its reservation holds", soon.ID)
		}
	}
	var took bool
	for _, g := range claim(t, s, lapse.ClaimInput{Owner: "b", Now: soon.LeaseUntil, Lease: lease, Limit: 10, Expire: true}) {
		if g.ID == soon.ID {
			took = true
			if g.State != lapse.GrantRevoking || g.EndReason != lapse.EndExpired || g.Fence != soon.Fence+1 {
				t.Fatalf("claim after the reservation lapsed: state %s, reason %s, fence %d", g.State, g.EndReason, g.Fence)
			}
		}
	}
	if !took {
		t.Fatalf("%s was not claimed when its reservation's lease ended", soon.ID)
	}

	for _, bad := range []struct {
		field string
		in    lapse.ClaimInput
	}{
		{"ahead", lapse.ClaimInput{Owner: "me", Now: now, Lease: lease, Limit: 1, Target: "x"}},
		{"target", lapse.ClaimInput{Owner: "me", Now: now, Lease: lease, Limit: 1, Ahead: time.Second}},
		{"owner", lapse.ClaimInput{Now: now, Lease: lease, Limit: 1, Target: "x", Ahead: time.Second}},
	} {
		_, err := s.ClaimExpiring(ctx, bad.in)
		if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != bad.field {
			t.Errorf("ClaimExpiring without %s: %v, want EINVALID on %q", bad.field, err, bad.field)
		}
	}
}
