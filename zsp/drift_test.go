package zsp_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
	"github.com/lapsehq/lapse/zsp"
)

// driftWorld is a broker over a fake target and a real store, with the
// catalog the reconciler reads.
type driftWorld struct {
	store   lapse.Store
	clock   *fakeclock.Clock
	fake    *fake.Conn
	broker  *broker.Broker
	catalog []*lapse.Entitlement
}

var driftAlice = &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest}}

func newDriftWorld(t *testing.T) *driftWorld {
	t.Helper()
	w := &driftWorld{store: sqltest.OpenSQLite(t), clock: fakeclock.New(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))}
	w.fake = fake.New(fake.Options{Clock: w.clock})
	w.catalog = []*lapse.Entitlement{{
		Name: "db/read", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman},
		DefaultDuration: lapse.Duration(time.Hour), MaxDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Auto: true}, Spec: map[string]any{"privileges": []any{"read"}},
	}}
	key := make([]byte, 32)
	rand.Read(key)
	b, err := broker.New(broker.Config{Store: w.store, Clock: w.clock, Catalog: w.catalog, SealingKey: key,
		Targets: map[string]broker.Target{"db": {Kind: "fake", Connector: w.fake}}})
	if err != nil {
		t.Fatal(err)
	}
	w.broker = b
	return w
}

// grant makes an active grant through the broker.
func (w *driftWorld) grant(t *testing.T) *lapse.Grant {
	t.Helper()
	res, err := w.broker.CreateRequest(lapse.NewContext(context.Background(), driftAlice), lapse.RequestInput{Entitlement: "db/read"})
	if err != nil || res.Grant == nil || res.Grant.State != lapse.GrantActive {
		t.Fatalf("grant: %v, %+v", err, res)
	}
	return res.Grant
}

// plant makes an account on the target as Lapse would for grantID, with
// no grant in the store saying so.
func (w *driftWorld) plant(t *testing.T, grantID string) {
	t.Helper()
	_, err := w.fake.Grant(context.Background(), &connector.GrantRequest{GrantID: grantID, Principal: *driftAlice,
		Entitlement: "db/read", Spec: w.catalog[0].Spec, ExpiresAt: w.clock.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
}

func (w *driftWorld) reconciler(t *testing.T, remove bool, targets map[string]connector.Connector) *zsp.Reconciler {
	t.Helper()
	if targets == nil {
		targets = map[string]connector.Connector{"db": w.fake}
	}
	r, err := zsp.NewReconciler(zsp.DriftConfig{Store: w.store, Clock: w.clock, Catalog: w.catalog, Targets: targets, Remove: remove})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (w *driftWorld) events(t *testing.T, typ string) []*lapse.Event {
	t.Helper()
	all, err := w.store.ListEvents(context.Background(), lapse.EventFilter{Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	var out []*lapse.Event
	for _, e := range all {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func byPrincipal(rep *zsp.DriftReport) map[string]zsp.Finding {
	out := map[string]zsp.Finding{}
	for _, f := range rep.Findings {
		out[f.Principal] = f
	}
	return out
}

// TestDriftExplainsLiveGrantsAndFlagsOrphans: the principal of an active
// grant is not drift; one whose grant the store does not know, and one
// whose grant was revoked, are orphans; every finding and the pass are
// recorded.
func TestDriftExplainsLiveGrantsAndFlagsOrphans(t *testing.T) {
	w := newDriftWorld(t)
	active := w.grant(t)
	revoked := w.grant(t)
	if _, err := w.broker.Release(lapse.NewContext(context.Background(), driftAlice), revoked.ID, lapse.ReleaseInput{}); err != nil {
		t.Fatal(err)
	}
	if err := w.broker.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g, _ := w.store.GetGrant(context.Background(), revoked.ID); g.State != lapse.GrantRevoked {
		t.Fatalf("released grant is %s", g.State)
	}
	w.clock.Advance(time.Minute)
	w.plant(t, revoked.ID) // someone re-created it by hand
	unknown := lapse.NewID(lapse.PrefixGrant, w.clock.Now())
	w.plant(t, unknown)

	rep, err := w.reconciler(t, false, nil).Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := byPrincipal(rep)
	if _, ok := got["lapse_"+active.ID]; ok || len(got) != 2 {
		t.Fatalf("findings = %+v, want exactly the two orphans", rep.Findings)
	}
	if f := got["lapse_"+unknown]; f.Kind != zsp.DriftOrphan || f.GrantID != unknown || f.Action != zsp.ActionReported || f.GrantState != "" {
		t.Errorf("unknown grant's finding = %+v", f)
	}
	if f := got["lapse_"+revoked.ID]; f.Kind != zsp.DriftOrphan || f.GrantState != lapse.GrantRevoked {
		t.Errorf("revoked grant's finding = %+v", f)
	}
	if tr := rep.Targets[0]; tr.Name != "db" || tr.Principals != 3 || tr.Explained != 1 || tr.Findings != 2 || tr.Error != "" {
		t.Errorf("target report = %+v", tr)
	}
	if !w.fake.Has(unknown) {
		t.Error("a report-only pass removed an orphan")
	}
	found := w.events(t, lapse.EventDriftFound)
	if len(found) != 2 {
		t.Fatalf("%d drift_found events, want 2", len(found))
	}
	for _, e := range found {
		if e.Outcome != zsp.DriftOrphan || e.ActorID != "lapse" || e.Channel != lapse.ChannelEngine || e.PolicyVersion == "" {
			t.Errorf("event = %+v", e)
		}
	}
	// The revoked grant's history shows the drift.
	hist, _ := w.store.ListEvents(context.Background(), lapse.EventFilter{GrantID: revoked.ID})
	if last := hist[len(hist)-1]; last.Type != lapse.EventDriftFound {
		t.Errorf("last event of the revoked grant = %s, want %s", last.Type, lapse.EventDriftFound)
	}
	if c := w.events(t, lapse.EventDriftChecked); len(c) != 1 || c[0].Outcome != "drift" {
		t.Errorf("drift_checked events = %+v", c)
	}
}

// TestDriftRemovesOrphans: with Remove, an orphan is revoked and verified
// with the connector's own calls and the removal is recorded; the live
// grant's principal is left alone.
func TestDriftRemovesOrphans(t *testing.T) {
	w := newDriftWorld(t)
	active := w.grant(t)
	orphan := lapse.NewID(lapse.PrefixGrant, w.clock.Now())
	w.plant(t, orphan)

	rep, err := w.reconciler(t, true, nil).Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 || rep.Findings[0].Action != zsp.ActionRemoved {
		t.Fatalf("findings = %+v", rep.Findings)
	}
	if rm := rep.Findings[0].Removal; rm == nil || len(rm.Actions) == 0 || len(rm.Checkpoints) != 2 || rm.Error != "" {
		t.Fatalf("removal = %+v", rm)
	}
	if w.fake.Has(orphan) || !w.fake.Has(active.ID) {
		t.Fatalf("after removal: orphan present %v, active grant present %v", w.fake.Has(orphan), w.fake.Has(active.ID))
	}
	removed := w.events(t, lapse.EventDriftRemoved)
	if len(removed) != 1 || removed[0].Outcome != "removed" {
		t.Fatalf("drift_removed events = %+v", removed)
	}
	var data struct {
		Principal string       `json:"principal"`
		Removal   *zsp.Removal `json:"removal"`
	}
	if err := json.Unmarshal(removed[0].Data, &data); err != nil || data.Principal != "lapse_"+orphan || data.Removal == nil {
		t.Fatalf("drift_removed data = %s (%v)", removed[0].Data, err)
	}
	// The found event precedes the removal and says what was intended.
	found := w.events(t, lapse.EventDriftFound)
	if len(found) != 1 || found[0].Seq > removed[0].Seq {
		t.Fatalf("found events = %+v", found)
	}

	// The next pass is clean.
	rep, err = w.reconciler(t, true, nil).Check(context.Background())
	if err != nil || !rep.Clean() {
		t.Fatalf("second pass: %+v, %v", rep, err)
	}
}

// TestDriftTargetThatCannotBeDiscovered: a target whose Discover fails is
// reported incomplete, and the others are still checked.
func TestDriftTargetThatCannotBeDiscovered(t *testing.T) {
	w := newDriftWorld(t)
	broken := fake.New(fake.Options{})
	broken.Fail(fake.Discover, "", lapse.Errorf(lapse.EUNAVAILABLE, "target is down"))
	w.plant(t, lapse.NewID(lapse.PrefixGrant, w.clock.Now()))
	r := w.reconciler(t, false, map[string]connector.Connector{"db": w.fake, "down": broken})
	rep, err := r.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inc := rep.Incomplete(); len(inc) != 1 || inc[0] != "down" || rep.Drift() != 1 || rep.Clean() {
		t.Fatalf("report = %+v", rep)
	}
}

// TestDriftRunsOnSchedule: Run checks at once and then every interval,
// and returns when its context ends.
func TestDriftRunsOnSchedule(t *testing.T) {
	w := newDriftWorld(t)
	r := w.reconciler(t, false, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, 20*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(w.events(t, lapse.EventDriftChecked)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the reconciler did not run twice")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
