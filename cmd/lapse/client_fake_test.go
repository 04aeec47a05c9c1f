package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
)

// fakeService is the thin seam the client commands are tested against: each
// method records its call and runs the function the test set, and a call the
// test did not expect fails the test.
type fakeService struct {
	t     *testing.T
	mu    sync.Mutex
	calls []string

	whoami        func(ctx context.Context) (*lapse.Principal, error)
	entitlements  func(ctx context.Context) ([]*lapse.Entitlement, error)
	create        func(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error)
	getRequest    func(ctx context.Context, id string) (*lapse.Request, error)
	listRequests  func(ctx context.Context, f lapse.RequestFilter) ([]*lapse.Request, error)
	approve       func(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error)
	deny          func(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error)
	cancel        func(ctx context.Context, id string) (*lapse.Request, error)
	review        func(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error)
	getGrant      func(ctx context.Context, id string) (*lapse.Grant, error)
	listGrants    func(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error)
	claim         func(ctx context.Context, id string) (*lapse.Credentials, error)
	release       func(ctx context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error)
	revoke        func(ctx context.Context, id string, in lapse.RevokeInput) (*lapse.Grant, error)
	extend        func(ctx context.Context, id string, in lapse.ExtendInput) (*lapse.RequestResult, error)
	createKey     func(ctx context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error)
	listKeys      func(ctx context.Context) ([]*lapse.APIKey, error)
	revokeKey     func(ctx context.Context, prefix string) (*lapse.APIKey, error)
	createMandate func(ctx context.Context, in lapse.MandateInput) (*lapse.Mandate, error)
	listMandates  func(ctx context.Context, f lapse.MandateFilter) ([]*lapse.Mandate, error)
	revokeMandate func(ctx context.Context, id string) (*lapse.Mandate, error)
}

var _ lapse.Service = (*fakeService)(nil)

func (f *fakeService) record(name string, fn any) bool {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.mu.Unlock()
	if reflect.ValueOf(fn).IsNil() {
		f.t.Errorf("unexpected call to %s", name)
		return false
	}
	return true
}

// called returns how often method name was called.
func (f *fakeService) called(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == name {
			n++
		}
	}
	return n
}

var errUnexpected = lapse.Errorf(lapse.EINTERNAL, "unexpected call")

func (f *fakeService) Whoami(ctx context.Context) (*lapse.Principal, error) {
	if !f.record("Whoami", f.whoami) {
		return nil, errUnexpected
	}
	return f.whoami(ctx)
}

func (f *fakeService) Entitlements(ctx context.Context) ([]*lapse.Entitlement, error) {
	if !f.record("Entitlements", f.entitlements) {
		return nil, errUnexpected
	}
	return f.entitlements(ctx)
}

func (f *fakeService) CreateRequest(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
	if !f.record("CreateRequest", f.create) {
		return nil, errUnexpected
	}
	return f.create(ctx, in)
}

func (f *fakeService) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	if !f.record("GetRequest", f.getRequest) {
		return nil, errUnexpected
	}
	return f.getRequest(ctx, id)
}

func (f *fakeService) ListRequests(ctx context.Context, fl lapse.RequestFilter) ([]*lapse.Request, error) {
	if !f.record("ListRequests", f.listRequests) {
		return nil, errUnexpected
	}
	return f.listRequests(ctx, fl)
}

func (f *fakeService) Approve(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	if !f.record("Approve", f.approve) {
		return nil, errUnexpected
	}
	return f.approve(ctx, id, in)
}

func (f *fakeService) Deny(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error) {
	if !f.record("Deny", f.deny) {
		return nil, errUnexpected
	}
	return f.deny(ctx, id, in)
}

func (f *fakeService) CancelRequest(ctx context.Context, id string) (*lapse.Request, error) {
	if !f.record("CancelRequest", f.cancel) {
		return nil, errUnexpected
	}
	return f.cancel(ctx, id)
}

func (f *fakeService) ReviewRequest(ctx context.Context, id string, in lapse.ReviewInput) (*lapse.Request, error) {
	if !f.record("ReviewRequest", f.review) {
		return nil, errUnexpected
	}
	return f.review(ctx, id, in)
}

func (f *fakeService) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	if !f.record("GetGrant", f.getGrant) {
		return nil, errUnexpected
	}
	return f.getGrant(ctx, id)
}

func (f *fakeService) ListGrants(ctx context.Context, fl lapse.GrantFilter) ([]*lapse.Grant, error) {
	if !f.record("ListGrants", f.listGrants) {
		return nil, errUnexpected
	}
	return f.listGrants(ctx, fl)
}

func (f *fakeService) ClaimCredentials(ctx context.Context, id string) (*lapse.Credentials, error) {
	if !f.record("ClaimCredentials", f.claim) {
		return nil, errUnexpected
	}
	return f.claim(ctx, id)
}

func (f *fakeService) Release(ctx context.Context, id string, in lapse.ReleaseInput) (*lapse.Grant, error) {
	if !f.record("Release", f.release) {
		return nil, errUnexpected
	}
	return f.release(ctx, id, in)
}

func (f *fakeService) ExtendGrant(ctx context.Context, id string, in lapse.ExtendInput) (*lapse.RequestResult, error) {
	if !f.record("ExtendGrant", f.extend) {
		return nil, errUnexpected
	}
	return f.extend(ctx, id, in)
}

func (f *fakeService) Revoke(ctx context.Context, id string, in lapse.RevokeInput) (*lapse.Grant, error) {
	if !f.record("Revoke", f.revoke) {
		return nil, errUnexpected
	}
	return f.revoke(ctx, id, in)
}

func (f *fakeService) CreateAPIKey(ctx context.Context, in lapse.APIKeyInput) (*lapse.NewAPIKey, error) {
	if !f.record("CreateAPIKey", f.createKey) {
		return nil, errUnexpected
	}
	return f.createKey(ctx, in)
}

func (f *fakeService) ListAPIKeys(ctx context.Context) ([]*lapse.APIKey, error) {
	if !f.record("ListAPIKeys", f.listKeys) {
		return nil, errUnexpected
	}
	return f.listKeys(ctx)
}

func (f *fakeService) RevokeAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	if !f.record("RevokeAPIKey", f.revokeKey) {
		return nil, errUnexpected
	}
	return f.revokeKey(ctx, prefix)
}

func (f *fakeService) CreateMandate(ctx context.Context, in lapse.MandateInput) (*lapse.Mandate, error) {
	if !f.record("CreateMandate", f.createMandate) {
		return nil, errUnexpected
	}
	return f.createMandate(ctx, in)
}

func (f *fakeService) ListMandates(ctx context.Context, fl lapse.MandateFilter) ([]*lapse.Mandate, error) {
	if !f.record("ListMandates", f.listMandates) {
		return nil, errUnexpected
	}
	return f.listMandates(ctx, fl)
}

func (f *fakeService) RevokeMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	if !f.record("RevokeMandate", f.revokeMandate) {
		return nil, errUnexpected
	}
	return f.revokeMandate(ctx, id)
}

// fakeClock is a clock that only moves when the fake sleep advances it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// cli runs client commands against a fakeService with a controlled
// environment, clock and terminal.
type cli struct {
	t     *testing.T
	svc   *fakeService
	env   map[string]string
	clock *fakeClock
	tty   bool
	// sleeps records every wait of the command; onSleep, if set, runs after
	// each (the test may change what the fake returns, or interrupt).
	sleeps  []time.Duration
	onSleep func(n int)
	// interruptNow simulates Ctrl-C.
	interruptNow context.CancelFunc
	// cfg is the configuration the last command connected with.
	cfg clientConfig
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	return &cli{
		t:     t,
		svc:   &fakeService{t: t},
		env:   map[string]string{envToken: testToken},
		clock: &fakeClock{now: testNow},
	}
}

// testToken is the API key the tests present; it must never be printed.
const testToken = "lapse_abcdefghijkl_c2VjcmV0LXRva2VuLXRoYXQtbXVzdC1uZXZlci1wcmludA"

func (c *cli) deps() *clientDeps {
	return &clientDeps{
		newService: func(cfg clientConfig) (lapse.Service, error) {
			c.cfg = cfg
			return c.svc, nil
		},
		getenv:     func(k string) string { return c.env[k] },
		readFile:   os.ReadFile,
		stat:       os.Stat,
		isTerminal: func(io.Writer) bool { return c.tty },
		clock:      c.clock,
		sleep: func(ctx context.Context, d time.Duration) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			c.sleeps = append(c.sleeps, d)
			c.clock.advance(d)
			if c.onSleep != nil {
				c.onSleep(len(c.sleeps))
			}
			return ctx.Err()
		},
		interrupt: func(ctx context.Context) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(ctx)
			c.interruptNow = cancel
			return ctx, cancel
		},
		loc: time.UTC,
	}
}

// run executes "lapse args..." and returns what it printed and its exit
// status, as main would report it.
func (c *cli) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	return c.runWith(c.deps(), args...)
}

// runWith is run with the given seams.
func (c *cli) runWith(d *clientDeps, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	root := &cobra.Command{Use: "lapse"}
	addClientCommandsWith(root, d)
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	code = reportError(&errb, err)
	if strings.Contains(out.String()+errb.String(), testToken) {
		c.t.Errorf("lapse %s printed the API key", strings.Join(args, " "))
	}
	return out.String(), errb.String(), code
}

// mustRun runs a command that must succeed.
func (c *cli) mustRun(args ...string) (stdout, stderr string) {
	c.t.Helper()
	stdout, stderr, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("lapse %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout, stderr
}

// assertJSON checks that out is exactly one JSON document equal to the JSON
// encoding of want, the object the API returns.
func assertJSON(t *testing.T, out string, want any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var got any
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if dec.More() {
		t.Fatalf("output holds more than one JSON document:\n%s", out)
	}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var w any
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w) {
		t.Fatalf("json output differs\n got: %s\nwant: %s", out, b)
	}
}

// assertContains fails unless s contains every one of subs.
func assertContains(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output does not contain %q:\n%s", sub, s)
		}
	}
}

// assertNotContains fails if s contains any of subs.
func assertNotContains(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			t.Errorf("output contains %q:\n%s", sub, s)
		}
	}
}

// sequence returns a function that yields vs one after the other and then
// keeps returning the last.
func sequence[T any](vs ...T) func() T {
	var mu sync.Mutex
	i := 0
	return func() T {
		mu.Lock()
		defer mu.Unlock()
		v := vs[min(i, len(vs)-1)]
		i++
		return v
	}
}
