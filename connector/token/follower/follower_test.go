package follower_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/token"
	"github.com/lapsehq/lapse/connector/token/follower"
	"github.com/lapsehq/lapse/connector/token/internal/feedtest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	clk   *clock
	store lapse.Store
	conn  *token.Conn
	srv   *feedtest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := &clock{now: time.Date(2031, 1, 1, 12, 0, 0, 0, time.UTC)}
	store := feedtest.OpenStore(t)
	conn, err := token.New(connector.Env{Name: "api", Clock: clk, Store: store, DataDir: t.TempDir()},
		token.Config{Issuer: "https://lapse.test", Audience: "api", GenerateKey: true, Consumers: []string{"api-1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := feedtest.NewServer(t, conn, map[string]string{"key-1": "api-1", "key-9": "api-9"})
	return &fixture{clk: clk, store: store, conn: conn, srv: srv}
}

func (f *fixture) follower(t *testing.T, mutate func(*follower.Config)) *follower.Follower {
	t.Helper()
	cfg := follower.Config{BaseURL: f.srv.URL, Target: "api", Consumer: "api-1", APIKey: "key-1", Now: f.clk.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	fl, err := follower.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

// grantAndRevoke issues a token expiring after ttl and revokes it.
func (f *fixture) grantAndRevoke(t *testing.T, ttl time.Duration) string {
	t.Helper()
	ctx := context.Background()
	id := lapse.NewID(lapse.PrefixGrant, f.clk.Now())
	g, err := f.conn.Grant(ctx, &connector.GrantRequest{
		GrantID: id, Principal: lapse.Principal{ID: "alice", Kind: lapse.KindHuman}, ExpiresAt: f.clk.Now().Add(ttl),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.conn.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestFailsClosedUntilFirstSync(t *testing.T) {
	f := newFixture(t)
	fl := f.follower(t, nil)
	if !fl.Revoked("gr_anything") {
		t.Fatal("Revoked is false before the first sync: a consumer must fail closed")
	}
	if err := fl.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fl.Revoked("gr_anything") {
		t.Fatal("Revoked is true for an unrevoked token after a sync of an empty feed")
	}
}

func TestSyncAppliesAndAcks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.srv.PageSize = 2 // force several pages
	a, b, c := f.grantAndRevoke(t, time.Hour), f.grantAndRevoke(t, time.Hour), f.grantAndRevoke(t, time.Hour)
	fl := f.follower(t, nil)
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a, b, c} {
		if !fl.Revoked(id) {
			t.Errorf("%s not revoked after sync", id)
		}
	}
	if fl.Revoked("gr_other") {
		t.Error("an unrevoked token is reported revoked")
	}
	if fl.Seq() != 3 {
		t.Errorf("Seq = %d, want 3", fl.Seq())
	}
	acks, err := f.store.ConsumerAcks(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	if acks["api-1"] != 3 {
		t.Errorf("acks = %v, want api-1 at 3", acks)
	}

	// Incremental: only the new entry is fetched and acknowledged.
	d := f.grantAndRevoke(t, time.Hour)
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !fl.Revoked(d) || fl.Seq() != 4 {
		t.Errorf("after a new revocation: revoked=%v seq=%d", fl.Revoked(d), fl.Seq())
	}
	if acks, _ := f.store.ConsumerAcks(ctx, "api"); acks["api-1"] != 4 {
		t.Errorf("acks = %v, want api-1 at 4", acks)
	}
}

func TestVerifyCompletesThroughFollower(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	id := lapse.NewID(lapse.PrefixGrant, f.clk.Now())
	g, err := f.conn.Grant(ctx, &connector.GrantRequest{
		GrantID: id, Principal: lapse.Principal{ID: "alice", Kind: lapse.KindHuman}, ExpiresAt: f.clk.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	fl := f.follower(t, nil)
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.conn.Revoke(ctx, &connector.RevokeRequest{GrantID: id, State: g.State}); err != nil {
		t.Fatal(err)
	}
	req := &connector.VerifyRequest{GrantID: id, State: g.State, Probe: g.Probe}
	if v, _ := f.conn.Verify(ctx, req); v.Gone() {
		t.Fatal("verified before the consumer applied the revocation")
	}
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := f.conn.Verify(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Gone() {
		t.Fatalf("not verified after the consumer synced: %+v", v.Checkpoints)
	}
}

func TestPrunesExpired(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	short := f.grantAndRevoke(t, time.Minute)
	long := f.grantAndRevoke(t, time.Hour)
	fl := f.follower(t, func(c *follower.Config) { c.Leeway = 30 * time.Second })
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if fl.Len() != 2 {
		t.Fatalf("Len = %d, want 2", fl.Len())
	}
	f.clk.Add(time.Minute + 20*time.Second) // past exp, within leeway
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !fl.Revoked(short) {
		t.Error("pruned within the leeway")
	}
	f.clk.Add(15 * time.Second)
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if fl.Len() != 1 || fl.Revoked(short) || !fl.Revoked(long) {
		t.Errorf("after exp+leeway: len=%d short=%v long=%v", fl.Len(), fl.Revoked(short), fl.Revoked(long))
	}
}

func TestMaxStaleFailsClosed(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fl := f.follower(t, func(c *follower.Config) { c.MaxStale = time.Minute })
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if fl.Revoked("gr_x") {
		t.Fatal("fresh follower reports an unrevoked token")
	}
	f.srv.Down.Store(true)
	f.clk.Add(2 * time.Minute)
	if err := fl.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded against a server that is down")
	}
	if !fl.Revoked("gr_x") {
		t.Error("a stale follower does not fail closed")
	}
	f.srv.Down.Store(false)
	if err := fl.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if fl.Revoked("gr_x") {
		t.Error("still failing closed after a successful sync")
	}
}

func TestServerErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.grantAndRevoke(t, time.Hour)

	var se *follower.StatusError
	bad := f.follower(t, func(c *follower.Config) { c.APIKey = "wrong" })
	if err := bad.Sync(ctx); !errors.As(err, &se) || se.Status != http.StatusUnauthorized || se.Code != lapse.EUNAUTHORIZED {
		t.Errorf("bad key: %v", err)
	}
	// A consumer the target does not know may read but not acknowledge.
	stranger := f.follower(t, func(c *follower.Config) { c.Consumer, c.APIKey = "api-9", "key-9" })
	if err := stranger.Sync(ctx); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Errorf("unknown consumer: %v", err)
	}
	// Impersonation: api-9's key acknowledging for api-1.
	liar := f.follower(t, func(c *follower.Config) { c.Consumer, c.APIKey = "api-1", "key-9" })
	if err := liar.Sync(ctx); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Errorf("ack for another consumer: %v", err)
	}
	if acks, _ := f.store.ConsumerAcks(ctx, "api"); acks["api-1"] != 0 {
		t.Errorf("a forbidden ack was recorded: %v", acks)
	}
	if _, err := follower.New(follower.Config{BaseURL: "not a url", Target: "x", Consumer: "y"}); err == nil {
		t.Error("New accepted a bad base URL")
	}
	if _, err := follower.New(follower.Config{BaseURL: "http://x"}); err == nil {
		t.Error("New accepted a config without target and consumer")
	}
}

func TestRun(t *testing.T) {
	f := newFixture(t)
	id := f.grantAndRevoke(t, time.Hour)
	fl := f.follower(t, func(c *follower.Config) { c.Interval = 5 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fl.Run(ctx) }()
	waitFor(t, func() bool { return !fl.Revoked("gr_unrelated") && fl.Revoked(id) })
	id2 := f.grantAndRevoke(t, time.Hour)
	waitFor(t, func() bool { return fl.Revoked(id2) })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

// waitFor polls cond; a synchronisation point, not a timing assertion.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ExampleFollower() {
	fl, err := follower.New(follower.Config{
		BaseURL:  "https://lapse.example.com",
		Target:   "payments-api",
		Consumer: "payments-api-eu1",
		APIKey:   "lapse_…", // a key with the introspect scope
		MaxStale: time.Minute,
	})
	if err != nil {
		panic(err)
	}
	go fl.Run(context.Background())
	// In the request path, after verifying the JWT against the JWKS:
	if fl.Revoked("gr_06h3v3076xk5e5ebq9k3pe3em0") {
		fmt.Println("401: token revoked")
	}
}
