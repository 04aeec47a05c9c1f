package connectortest

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// BrokerCase is a connector driven through the real broker, store and
// engine, with a way to break its revocation.
type BrokerCase struct {
	// Target and Kind name the target in the catalog.
	Target, Kind string
	// Conn is the connector under test, opened with Clock as its clock.
	Conn connector.Connector
	// Clock is the clock the connector was opened with; the broker shares
	// it, and the test advances it past the grant's deadline.
	Clock *fakeclock.Clock
	// Spec is the entitlement's spec.
	Spec map[string]any
	// Sabotage(true) makes Revoke report success while leaving access
	// behind (a statement that silently does nothing); Sabotage(false)
	// repairs it.
	Sabotage func(on bool)
	// Login uses the grant's credentials for real (a login, a command) and
	// returns nil if the target accepted them.
	Login func(ctx context.Context, creds *lapse.Credentials) error
}

// NewClock returns a fake clock set to the wall clock's now, for connectors
// whose targets compare the grant's deadline with their own time.
func NewClock() *fakeclock.Clock {
	return fakeclock.New(time.Now().UTC().Truncate(time.Second))
}

// RunThroughBroker grants an entitlement on the connector through the
// broker, sabotages its revocation and lets the deadline pass: Verify must
// catch the residue and the grant must end in revoke_failed, not revoked,
// with retries continuing; once the sabotage is repaired, the next retry
// revokes, every checkpoint is verified, and the credentials no longer work.
func RunThroughBroker(t *testing.T, c BrokerCase) {
	t.Helper()
	ctx := context.Background()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	store := sqltest.OpenSQLite(t)
	name := c.Target + "/use"
	b, err := broker.New(broker.Config{
		Store: store, Clock: c.Clock, SealingKey: key,
		Catalog: []*lapse.Entitlement{{
			Name: name, Target: c.Target, Lanes: []lapse.PrincipalKind{lapse.KindService},
			DefaultDuration: lapse.Duration(10 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
			Approval: lapse.ApprovalRule{Auto: true}, Spec: c.Spec,
		}},
		Targets: map[string]broker.Target{c.Target: {Kind: c.Kind, Connector: c.Conn, Concurrency: 4}},
		Engine:  broker.EngineConfig{Owner: "connectortest", Lease: time.Minute, RetryBase: time.Second, RetryMax: 30 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	svc := lapse.NewContext(ctx, &lapse.Principal{ID: "svc:connectortest", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}})
	tick := func() {
		t.Helper()
		if err := b.Tick(ctx); err != nil {
			t.Fatalf("engine tick: %v", err)
		}
	}
	get := func(id string) *lapse.Grant {
		t.Helper()
		g, err := store.GetGrant(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}

	res, err := b.CreateRequest(svc, lapse.RequestInput{Entitlement: name, Duration: lapse.Duration(5 * time.Minute)})
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if res.Grant == nil || res.Grant.State != lapse.GrantActive || res.Credentials == nil {
		t.Fatalf("auto-approved request did not provision: %+v", res)
	}
	id := res.Grant.ID
	t.Cleanup(func() {
		// Whatever happened above, leave nothing on the target.
		c.Sabotage(false)
		if g, err := store.GetGrant(ctx, id); err == nil && g.State != lapse.GrantRevoked {
			_, _ = c.Conn.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Principal: g.Principal, Spec: c.Spec, State: g.ConnectorState})
		}
	})
	if err := c.Login(ctx, res.Credentials); err != nil {
		t.Fatalf("the issued credentials do not work: %v", err)
	}

	c.Sabotage(true)
	c.Clock.Advance(6 * time.Minute)
	tick()
	g := get(id)
	if g.State != lapse.GrantRevokeFailed {
		t.Fatalf("after a sabotaged revoke the grant is %s (%s), want revoke_failed", g.State, g.LastError)
	}
	var residue []string
	for _, cp := range g.Checkpoints {
		residue = append(residue, cp.Residue...)
	}
	if len(residue) == 0 || !strings.Contains(g.LastError, "residue") {
		t.Fatalf("no residue recorded: last error %q, checkpoints %+v", g.LastError, g.Checkpoints)
	}
	t.Logf("residue found: %v", residue)

	// Retries continue, with back-off, for as long as access remains.
	for attempt := g.Attempts + 1; attempt <= g.Attempts+2; attempt++ {
		c.Clock.Set(get(id).DueAt)
		tick()
		if g2 := get(id); g2.State != lapse.GrantRevokeFailed || g2.Attempts != attempt {
			t.Fatalf("retry: state %s, attempts %d; want revoke_failed after attempt %d", g2.State, g2.Attempts, attempt)
		}
	}

	c.Sabotage(false)
	c.Clock.Set(get(id).DueAt)
	tick()
	g = get(id)
	if g.State != lapse.GrantRevoked {
		t.Fatalf("after repair the grant is %s (%s), want revoked", g.State, g.LastError)
	}
	for _, cp := range g.Checkpoints {
		if cp.VerifiedAt.IsZero() || len(cp.Residue) > 0 {
			t.Errorf("checkpoint %s not verified: %+v", cp.Name, cp)
		}
	}
	if err := c.Login(ctx, res.Credentials); err == nil {
		t.Fatal("the credentials still work after the grant was revoked")
	}
}
