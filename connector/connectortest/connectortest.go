// Package connectortest is the contract suite every connector runs against
// its real server. A connector's test describes how to open it, what to
// grant and how the grantee's real client uses the credential; Run then
// checks what the broker relies on: Grant is idempotent on the grant ID,
// Revoke removes the privilege and its live sessions (also without State,
// also twice, also for a grant that never existed), Verify proves it with
// evidence, Discover sees ephemeral principals, Extend (where a connector
// offers it) keeps a live grant working and refuses a revoked one, and no
// secret ever leaks into State, Info, evidence, actions or discovery.
package connectortest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Harness describes one connector under test.
//
// Use and Hold may be called from several goroutines at once (the parallel
// subtest): they report problems by returning errors and must not call
// t.Fatal or t.FailNow; they may call t.Log, t.Helper and t.Cleanup.
type Harness struct {
	// Open returns a connector connected to the real system, closed by the
	// suite at cleanup if it implements connector.Closer. The suite opens a
	// second instance to revoke and verify as a restarted broker would, so
	// two instances must see the same system.
	Open func(t *testing.T) connector.Connector
	// Spec is a valid entitlement spec to grant.
	Spec map[string]any
	// BadSpecs are specs that ValidateSpec must reject (only if the
	// connector implements connector.SpecValidator).
	BadSpecs []map[string]any
	// Use exercises the credential as its real client would (a login, a
	// command, an API call) and returns nil if the privilege works.
	Use func(ctx context.Context, t *testing.T, g *connector.GrantResponse) error
	// Hold, when set, opens a long-lived session with the credential and
	// returns probe, which returns nil while the session can still act, and
	// release, which closes it.
	Hold func(ctx context.Context, t *testing.T, g *connector.GrantResponse) (probe func(context.Context) error, release func(), err error)
	// Principal is the principal to grant to (a sensible default if zero).
	Principal lapse.Principal
}

// callTimeout bounds each subtest; a connector that hangs fails the test
// instead of the whole run.
const callTimeout = 2 * time.Minute

// parallelGrants is how many grants the parallel subtest runs at once.
const parallelGrants = 8

// Run runs the contract suite against the connector h describes.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil || h.Use == nil {
		t.Fatal("connectortest: Harness.Open and Harness.Use are required")
	}
	s := &suite{h: h}
	if s.h.Principal.ID == "" {
		s.h.Principal = lapse.Principal{ID: "svc-connectortest", Kind: lapse.KindService, Name: "connectortest"}
	}
	s.conn = s.open(t)

	t.Run("GrantUseVerifyActive", s.testGrantUseVerifyActive)
	t.Run("NoSecretInStateOrInfo", s.testNoSecretInStateOrInfo)
	t.Run("Checkpoints", s.testCheckpoints)
	t.Run("GrantTwiceOnePrivilege", s.testGrantTwice)
	t.Run("RevokeVerifyGone", s.testRevokeVerifyGone)
	t.Run("RevokeTwice", s.testRevokeTwice)
	t.Run("RevokeWithoutState", s.testRevokeWithoutState)
	t.Run("RevokeAfterRestart", s.testRevokeAfterRestart)
	t.Run("RevokeNeverGranted", s.testRevokeNeverGranted)
	t.Run("Discover", s.testDiscover)
	t.Run("ValidateSpec", s.testValidateSpec)
	t.Run("Extend", s.testExtend)
	t.Run("Parallel", s.testParallel)
}

type suite struct {
	h    Harness
	conn connector.Connector
}

// open opens a connector and closes it at cleanup.
func (s *suite) open(t *testing.T) connector.Connector {
	t.Helper()
	c := s.h.Open(t)
	if c == nil {
		t.Fatal("connectortest: Open returned nil")
	}
	if cl, ok := c.(connector.Closer); ok {
		t.Cleanup(func() {
			if err := cl.Close(); err != nil {
				t.Errorf("close connector: %v", err)
			}
		})
	}
	return c
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// granted is one grant made by the suite, with what Grant returned.
type granted struct {
	id   string
	resp *connector.GrantResponse
}

func newGrantID() string { return lapse.NewID(lapse.PrefixGrant, time.Now()) }

func (s *suite) grantRequest(id string) *connector.GrantRequest {
	return &connector.GrantRequest{
		GrantID:     id,
		Principal:   s.h.Principal,
		Entitlement: "connectortest/entitlement",
		Spec:        s.h.Spec,
		// An hour: long enough that no target-side expiry interferes with the
		// test, short enough that a crashed test run cleans itself up.
		ExpiresAt: time.Now().UTC().Add(time.Hour).Truncate(time.Second),
	}
}

// grant makes a grant with a fresh ID and registers a cleanup that revokes
// it, so a failing test leaves nothing behind on the real server.
func (s *suite) grant(ctx context.Context, t *testing.T, c connector.Connector) granted {
	t.Helper()
	id := newGrantID()
	s.cleanupRevoke(t, c, id)
	resp, err := c.Grant(ctx, s.grantRequest(id))
	if err != nil {
		t.Fatalf("Grant(%s): %v", id, err)
	}
	checkGrantResponse(t, resp)
	return granted{id: id, resp: resp}
}

func checkGrantResponse(t *testing.T, resp *connector.GrantResponse) {
	t.Helper()
	if resp == nil {
		t.Fatal("Grant returned a nil response")
	}
	if len(resp.Secret) == 0 {
		t.Fatal("Grant returned no Secret: a credential has a secret part the grantee must receive")
	}
	for k, v := range resp.Secret {
		if v == "" {
			t.Fatalf("Grant returned an empty Secret[%q]", k)
		}
	}
}

func (s *suite) cleanupRevoke(t *testing.T, c connector.Connector, id string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if _, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Principal: s.h.Principal, Spec: s.h.Spec}); err != nil {
			t.Errorf("cleanup: Revoke(%s): %v", id, err)
		}
	})
}

func (s *suite) revoke(ctx context.Context, t *testing.T, c connector.Connector, g granted, state json.RawMessage) *connector.RevokeResponse {
	t.Helper()
	resp, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: g.id, Principal: s.h.Principal, Spec: s.h.Spec, State: state})
	if err != nil {
		t.Fatalf("Revoke(%s): %v", g.id, err)
	}
	if resp == nil {
		t.Fatalf("Revoke(%s) returned a nil response", g.id)
	}
	return resp
}

func (s *suite) verify(ctx context.Context, t *testing.T, c connector.Connector, id string, state json.RawMessage, probe map[string]string) *connector.VerifyResponse {
	t.Helper()
	resp, err := c.Verify(ctx, &connector.VerifyRequest{GrantID: id, Principal: s.h.Principal, Spec: s.h.Spec, State: state, Probe: probe})
	if err != nil {
		t.Fatalf("Verify(%s): %v", id, err)
	}
	if resp == nil {
		t.Fatalf("Verify(%s) returned a nil response", id)
	}
	return resp
}

// verifyFor returns the State and Probe the broker sends to Verify after a
// normal grant.
func verifyFor(g granted) (json.RawMessage, map[string]string) { return g.resp.State, g.resp.Probe }

// requireGone checks that every checkpoint confirmed revocation with
// evidence, and that every checkpoint Grant declared was checked.
func requireGone(t *testing.T, v *connector.VerifyResponse, declared []connector.CheckpointSpec) {
	t.Helper()
	if len(v.Checkpoints) == 0 {
		t.Fatal("Verify returned no checkpoints")
	}
	for _, c := range v.Checkpoints {
		if !c.Gone {
			t.Errorf("checkpoint %s (%s) not gone after Revoke: residue %v, evidence %v", c.Name, c.Kind, c.Residue, c.Evidence)
			continue
		}
		if len(c.Evidence) == 0 {
			t.Errorf("checkpoint %s (%s) is gone without evidence", c.Name, c.Kind)
		}
		if _, err := json.Marshal(c.Evidence); err != nil {
			t.Errorf("checkpoint %s evidence is not JSON-encodable: %v", c.Name, err)
		}
	}
	if !v.Gone() {
		t.Error("VerifyResponse.Gone() is false after Revoke")
	}
	requireCovers(t, v, declared)
}

// requireCovers checks that Verify reported each checkpoint Grant declared.
func requireCovers(t *testing.T, v *connector.VerifyResponse, declared []connector.CheckpointSpec) {
	t.Helper()
	for _, d := range declared {
		found := false
		for _, c := range v.Checkpoints {
			if c.Name == d.Name {
				found = true
				if c.Kind != d.Kind {
					t.Errorf("checkpoint %s: Grant declared kind %q, Verify reported %q", d.Name, d.Kind, c.Kind)
				}
			}
		}
		if !found {
			t.Errorf("Verify did not report checkpoint %s that Grant declared", d.Name)
		}
	}
}

// secretForms returns the byte strings under which a secret value could
// leak: as is, JSON-escaped and base64-encoded.
func secretForms(v string) [][]byte {
	forms := [][]byte{[]byte(v)}
	if j, err := json.Marshal(v); err == nil {
		forms = append(forms, bytes.Trim(j, `"`))
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		forms = append(forms, []byte(enc.EncodeToString([]byte(v))))
	}
	return forms
}

// noSecret fails the test if any secret or probe value of resp appears in
// blob. what says where blob came from.
func noSecret(t *testing.T, resp *connector.GrantResponse, what string, blob []byte) {
	t.Helper()
	check := func(kind string, m map[string]string) {
		for k, v := range m {
			for _, f := range secretForms(v) {
				if len(f) > 0 && bytes.Contains(blob, f) {
					t.Errorf("%s contains the value of %s[%q]", what, kind, k)
					break
				}
			}
		}
	}
	check("Secret", resp.Secret)
	check("Probe", resp.Probe)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return b
}

func (s *suite) testGrantUseVerifyActive(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	if err := s.h.Use(ctx, t, g.resp); err != nil {
		t.Fatalf("Use with fresh credentials: %v", err)
	}
	state, probe := verifyFor(g)
	v := s.verify(ctx, t, s.conn, g.id, state, probe)
	if v.Gone() {
		t.Fatal("Verify reports the privilege gone while the grant is active")
	}
	requireCovers(t, v, g.resp.Checkpoints)
	notGone := 0
	for _, c := range v.Checkpoints {
		if c.Gone {
			continue
		}
		notGone++
		if len(c.Residue) == 0 {
			t.Errorf("checkpoint %s (%s) is not gone but lists no residue", c.Name, c.Kind)
		}
	}
	if notGone == 0 {
		t.Error("no checkpoint reports the active privilege")
	}
	noSecret(t, g.resp, "Verify result", mustJSON(t, v))
	// Verify is read-only: the privilege must still work after it.
	if err := s.h.Use(ctx, t, g.resp); err != nil {
		t.Fatalf("Use after Verify: %v (Verify must be read-only)", err)
	}
}

func (s *suite) testNoSecretInStateOrInfo(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	if len(g.resp.State) > 0 && !json.Valid(g.resp.State) {
		t.Errorf("State is not valid JSON: the store keeps it as a JSON document")
	}
	noSecret(t, g.resp, "State", g.resp.State)
	noSecret(t, g.resp, "Info", mustJSON(t, g.resp.Info))
	noSecret(t, g.resp, "Checkpoints", mustJSON(t, g.resp.Checkpoints))
	d, err := s.conn.Discover(ctx, &connector.DiscoverRequest{Specs: []map[string]any{s.h.Spec}})
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	noSecret(t, g.resp, "Discover result", mustJSON(t, d))
	r := s.revoke(ctx, t, s.conn, g, g.resp.State)
	noSecret(t, g.resp, "Revoke actions", mustJSON(t, r))
	state, probe := verifyFor(g)
	v := s.verify(ctx, t, s.conn, g.id, state, probe)
	noSecret(t, g.resp, "Verify result", mustJSON(t, v))
}

func (s *suite) testCheckpoints(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	if len(g.resp.Checkpoints) == 0 {
		t.Fatal("Grant declared no checkpoints: the broker could never confirm revocation")
	}
	valid := []lapse.CheckpointKind{lapse.CheckpointTarget, lapse.CheckpointSessions, lapse.CheckpointCache, lapse.CheckpointConsumer}
	seen := map[string]bool{}
	for _, c := range g.resp.Checkpoints {
		if c.Name == "" {
			t.Error("a checkpoint has no name")
		}
		if seen[c.Name] {
			t.Errorf("checkpoint %s is declared twice", c.Name)
		}
		seen[c.Name] = true
		if !slices.Contains(valid, c.Kind) {
			t.Errorf("checkpoint %s has unknown kind %q", c.Name, c.Kind)
		}
	}
}

func (s *suite) testGrantTwice(t *testing.T) {
	ctx := ctxFor(t)
	g1 := s.grant(ctx, t, s.conn)
	resp2, err := s.conn.Grant(ctx, s.grantRequest(g1.id))
	if err != nil {
		t.Fatalf("second Grant for the same grant ID: %v", err)
	}
	checkGrantResponse(t, resp2)
	g2 := granted{id: g1.id, resp: resp2}
	// The second response is what the broker keeps if the first was lost,
	// so its credentials must work.
	if err := s.h.Use(ctx, t, g2.resp); err != nil {
		t.Fatalf("Use with the second Grant's credentials: %v", err)
	}
	s.revoke(ctx, t, s.conn, g2, g2.resp.State)
	for i, g := range []granted{g1, g2} {
		state, probe := verifyFor(g)
		requireGone(t, s.verify(ctx, t, s.conn, g.id, state, probe), g.resp.Checkpoints)
		if err := s.h.Use(ctx, t, g.resp); err == nil {
			t.Errorf("Use with the credentials of Grant call %d still works after one Revoke: Grant made a second privilege", i+1)
		}
	}
}

func (s *suite) testRevokeVerifyGone(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	if err := s.h.Use(ctx, t, g.resp); err != nil {
		t.Fatalf("Use before Revoke: %v", err)
	}
	var probe func(context.Context) error
	if s.h.Hold != nil {
		p, release, err := s.h.Hold(ctx, t, g.resp)
		if err != nil {
			t.Fatalf("Hold: %v", err)
		}
		if release != nil {
			t.Cleanup(release)
		}
		if p == nil {
			t.Fatal("Hold returned no probe")
		}
		if err := p(ctx); err != nil {
			t.Fatalf("held session cannot act before Revoke: %v", err)
		}
		probe = p
	}
	s.revoke(ctx, t, s.conn, g, g.resp.State)
	state, pr := verifyFor(g)
	requireGone(t, s.verify(ctx, t, s.conn, g.id, state, pr), g.resp.Checkpoints)
	if err := s.h.Use(ctx, t, g.resp); err == nil {
		t.Error("Use still works after Revoke")
	}
	if probe != nil {
		if err := probe(ctx); err == nil {
			t.Error("a session opened before Revoke can still act after it")
		}
	} else {
		t.Log("Harness.Hold is not set: live sessions are not checked")
	}
}

func (s *suite) testRevokeTwice(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	s.revoke(ctx, t, s.conn, g, g.resp.State)
	s.revoke(ctx, t, s.conn, g, g.resp.State)
	state, probe := verifyFor(g)
	requireGone(t, s.verify(ctx, t, s.conn, g.id, state, probe), g.resp.Checkpoints)
	if err := s.h.Use(ctx, t, g.resp); err == nil {
		t.Error("Use still works after two Revokes")
	}
}

func (s *suite) testRevokeWithoutState(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	// The broker crashed before Grant returned: it has neither State nor
	// Probe, and must still be able to revoke and to verify.
	s.revoke(ctx, t, s.conn, g, nil)
	if err := s.h.Use(ctx, t, g.resp); err == nil {
		t.Error("Use still works after Revoke without State")
	}
	requireGone(t, s.verify(ctx, t, s.conn, g.id, nil, nil), g.resp.Checkpoints)
	state, probe := verifyFor(g)
	requireGone(t, s.verify(ctx, t, s.conn, g.id, state, probe), g.resp.Checkpoints)
}

func (s *suite) testRevokeAfterRestart(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	// A restarted broker (another instance) revokes and verifies with what
	// the store kept; nothing may depend on the first instance's memory.
	other := s.open(t)
	s.revoke(ctx, t, other, g, g.resp.State)
	state, probe := verifyFor(g)
	requireGone(t, s.verify(ctx, t, other, g.id, state, probe), g.resp.Checkpoints)
	requireGone(t, s.verify(ctx, t, s.conn, g.id, state, probe), g.resp.Checkpoints)
	if err := s.h.Use(ctx, t, g.resp); err == nil {
		t.Error("Use still works after Revoke by another connector instance")
	}
}

func (s *suite) testRevokeNeverGranted(t *testing.T) {
	ctx := ctxFor(t)
	id := newGrantID()
	resp, err := s.conn.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Principal: s.h.Principal, Spec: s.h.Spec})
	if err != nil {
		t.Fatalf("Revoke of a grant that never existed: %v", err)
	}
	if resp == nil {
		t.Fatal("Revoke returned a nil response")
	}
	v := s.verify(ctx, t, s.conn, id, nil, nil)
	requireGone(t, v, nil)
}

// listed returns the discovered principal that stands for g, or nil. A
// connector that cannot tell the grant ID must name the principal by a
// value that appears in Info (its user or role name).
func listed(d *connector.DiscoverResponse, g granted) *connector.DiscoveredPrincipal {
	for i := range d.Principals {
		p := &d.Principals[i]
		if p.GrantID == g.id {
			return p
		}
		if p.GrantID == "" && p.Name != "" {
			for _, v := range g.resp.Info {
				if v == p.Name {
					return p
				}
			}
		}
	}
	return nil
}

func (s *suite) testDiscover(t *testing.T) {
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	req := &connector.DiscoverRequest{Specs: []map[string]any{s.h.Spec}}
	d, err := s.conn.Discover(ctx, req)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	p := listed(d, g)
	if p == nil {
		t.Fatalf("Discover does not list the principal of active grant %s (%d principals listed)", g.id, len(d.Principals))
	}
	if !p.Ephemeral {
		t.Errorf("Discover lists %s as not ephemeral, but Lapse made it", p.Name)
	}
	if p.Name == "" {
		t.Error("a discovered principal has no name")
	}
	if p.GrantID != "" && p.GrantID != g.id {
		t.Errorf("discovered GrantID = %q, want %q", p.GrantID, g.id)
	}
	s.revoke(ctx, t, s.conn, g, g.resp.State)
	d, err = s.conn.Discover(ctx, req)
	if err != nil {
		t.Fatalf("Discover after Revoke: %v", err)
	}
	if p := listed(d, g); p != nil {
		t.Errorf("Discover still lists %s after Revoke", p.Name)
	}
}

func (s *suite) testValidateSpec(t *testing.T) {
	v, ok := s.conn.(connector.SpecValidator)
	if !ok {
		if len(s.h.BadSpecs) > 0 {
			t.Fatal("Harness.BadSpecs is set but the connector does not implement connector.SpecValidator")
		}
		t.Skip("the connector does not implement connector.SpecValidator")
	}
	if err := v.ValidateSpec(s.h.Spec); err != nil {
		t.Fatalf("ValidateSpec(Harness.Spec): %v", err)
	}
	ctx := ctxFor(t)
	for i, bad := range s.h.BadSpecs {
		err := v.ValidateSpec(bad)
		if err == nil {
			t.Errorf("BadSpecs[%d] %v: ValidateSpec accepted it", i, bad)
			continue
		}
		if code := lapse.ErrorCode(err); code != lapse.EINVALID {
			t.Errorf("BadSpecs[%d]: ValidateSpec returned code %q, want %q", i, code, lapse.EINVALID)
		}
		// Grant must not trust that the catalog was validated.
		id := newGrantID()
		s.cleanupRevoke(t, s.conn, id)
		req := s.grantRequest(id)
		req.Spec = bad
		if _, err := s.conn.Grant(ctx, req); err == nil {
			t.Errorf("BadSpecs[%d]: Grant accepted it", i)
		}
	}
}

// testExtend checks connector.Extender, for connectors that implement it:
// a live grant is extended and its credential keeps working; a repeat and
// an earlier deadline are accepted (Extend is idempotent and never
// shortens); a restarted broker extends with what the store kept; a
// revoked grant, or one that never existed, is ENOTFOUND.
func (s *suite) testExtend(t *testing.T) {
	x, ok := s.conn.(connector.Extender)
	if !ok {
		t.Skip("the connector does not implement connector.Extender")
	}
	ctx := ctxFor(t)
	g := s.grant(ctx, t, s.conn)
	granted := s.grantRequest(g.id).ExpiresAt // within a second of the grant's own
	extend := func(x connector.Extender, id string, at time.Time) error {
		return x.Extend(ctx, &connector.ExtendRequest{GrantID: id, Principal: s.h.Principal, Entitlement: "connectortest/entitlement", Spec: s.h.Spec, State: g.resp.State, ExpiresAt: at})
	}
	later := granted.Add(time.Hour)
	if err := extend(x, g.id, later); err != nil {
		t.Fatalf("Extend(%s): %v", g.id, err)
	}
	if err := s.h.Use(ctx, t, g.resp); err != nil {
		t.Fatalf("Use after Extend: %v", err)
	}
	if err := extend(x, g.id, later); err != nil {
		t.Errorf("repeated Extend: %v (Extend must be idempotent)", err)
	}
	if err := extend(x, g.id, granted.Add(-30*time.Minute)); err != nil {
		t.Errorf("Extend to an earlier deadline: %v (it must be accepted and change nothing)", err)
	}
	if err := s.h.Use(ctx, t, g.resp); err != nil {
		t.Fatalf("Use after Extend to an earlier deadline: %v", err)
	}
	// A harness may hand out later instances behind a wrapper that hides
	// optional interfaces (the in-memory fake does, so the suite cannot
	// close its target); then this step is left out.
	if other, ok := s.open(t).(connector.Extender); !ok {
		t.Log("the second connector instance does not expose connector.Extender: Extend after a restart is not checked")
	} else if err := extend(other, g.id, later.Add(time.Hour)); err != nil {
		t.Errorf("Extend by another connector instance: %v", err)
	}
	s.revoke(ctx, t, s.conn, g, g.resp.State)
	err := extend(x, g.id, later.Add(2*time.Hour))
	if code := lapse.ErrorCode(err); code != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want code %q", err, lapse.ENOTFOUND)
	}
	if err != nil {
		noSecret(t, g.resp, "Extend error", []byte(err.Error()))
	}
	if err := extend(x, newGrantID(), later); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend of a grant that never existed: %v, want code %q", err, lapse.ENOTFOUND)
	}
	if err := s.h.Use(ctx, t, g.resp); err == nil {
		t.Error("Use works after Revoke and a refused Extend")
	}
}

func (s *suite) testParallel(t *testing.T) {
	ctx := ctxFor(t)
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		errs  []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		errs = append(errs, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	ids := make([]string, parallelGrants)
	for i := range ids {
		ids[i] = newGrantID()
		s.cleanupRevoke(t, s.conn, ids[i])
	}
	for i := range parallelGrants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id := ids[i]
			resp, err := s.conn.Grant(ctx, s.grantRequest(id))
			if err != nil {
				fail("grant %d: Grant: %v", i, err)
				return
			}
			if len(resp.Secret) == 0 {
				fail("grant %d: no Secret", i)
				return
			}
			if err := s.h.Use(ctx, t, resp); err != nil {
				fail("grant %d: Use: %v", i, err)
			}
			if _, err := s.conn.Revoke(ctx, &connector.RevokeRequest{GrantID: id, Principal: s.h.Principal, Spec: s.h.Spec, State: resp.State}); err != nil {
				fail("grant %d: Revoke: %v", i, err)
				return
			}
			v, err := s.conn.Verify(ctx, &connector.VerifyRequest{GrantID: id, Principal: s.h.Principal, Spec: s.h.Spec, State: resp.State, Probe: resp.Probe})
			if err != nil {
				fail("grant %d: Verify: %v", i, err)
				return
			}
			if !v.Gone() {
				var residue []string
				for _, c := range v.Checkpoints {
					residue = append(residue, c.Residue...)
				}
				fail("grant %d: not gone after Revoke: %s", i, strings.Join(residue, "; "))
			}
			if err := s.h.Use(ctx, t, resp); err == nil {
				fail("grant %d: Use still works after Revoke", i)
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
}
