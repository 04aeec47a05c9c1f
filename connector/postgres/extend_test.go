package postgres_test

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/postgres"
)

// validUntil reads a role's VALID UNTIL as the server keeps it.
func validUntil(t *testing.T, f *fixture, role string) time.Time {
	t.Helper()
	var at time.Time
	mustScan(t, f.admin.QueryRow(bg(t), "SELECT rolvaliduntil FROM pg_catalog.pg_roles WHERE rolname = $1", role), &at)
	return at
}

func extendRequest(id string, spec map[string]any, g *connector.GrantResponse, at time.Time) *connector.ExtendRequest {
	req := &connector.ExtendRequest{GrantID: id, Entitlement: "pg/read", Spec: spec, ExpiresAt: at}
	if g != nil {
		req.State = g.State
	}
	return req
}

// TestExtendMovesValidUntil: Extend moves the role's VALID UNTIL to the new
// deadline, to the second, and the grantee still logs in; an earlier
// deadline leaves it alone; a repeat is harmless; a broker that lost
// State and spec still extends; after Revoke there is nothing to extend.
func TestExtendMovesValidUntil(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	role := g.Info["user"]
	granted := validUntil(t, f, role)

	later := granted.Add(2 * time.Hour)
	if err := c.Extend(ctx, extendRequest(id, f.spec(), g, later)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if got := validUntil(t, f, role); !got.Truncate(time.Second).Equal(later.Truncate(time.Second)) {
		t.Fatalf("VALID UNTIL after Extend = %s, want %s", got.UTC(), later.UTC())
	}
	conn, err := login(ctx, t, g, "")
	if err != nil {
		t.Fatalf("login after Extend: %v", err)
	}
	if err := readTable(ctx, conn, f.table); err != nil {
		t.Errorf("the extended grant cannot read: %v", err)
	}
	_ = conn.Close(ctx)

	if err := c.Extend(ctx, extendRequest(id, f.spec(), g, later)); err != nil {
		t.Errorf("repeated Extend: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, f.spec(), g, granted.Add(time.Minute))); err != nil {
		t.Errorf("Extend to an earlier deadline: %v", err)
	}
	if got := validUntil(t, f, role); !got.Equal(later) {
		t.Errorf("an earlier deadline changed VALID UNTIL to %s; it must stay %s", got.UTC(), later.UTC())
	}

	latest := later.Add(time.Hour)
	if err := c.Extend(ctx, extendRequest(id, nil, nil, latest)); err != nil {
		t.Fatalf("Extend without spec and State: %v", err)
	}
	if got := validUntil(t, f, role); !got.Equal(latest) {
		t.Errorf("VALID UNTIL after Extend without spec and State = %s, want %s", got.UTC(), latest.UTC())
	}

	revoke(t, c, id, f.spec(), g)
	if err := c.Extend(ctx, extendRequest(id, f.spec(), g, latest.Add(time.Hour))); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want %s", err, lapse.ENOTFOUND)
	}
	if err := c.Extend(ctx, extendRequest(newGrantID(), f.spec(), nil, latest)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend of a grant that never existed: %v, want %s", err, lapse.ENOTFOUND)
	}
}

// TestExtendConcurrentNeverShortens: extensions of one grant to different
// deadlines, all at once, leave the latest of them in force whatever order
// the server runs them in.
func TestExtendConcurrentNeverShortens(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	base := validUntil(t, f, g.Info["user"])
	const n = 8
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = c.Extend(ctx, extendRequest(id, f.spec(), g, base.Add(time.Duration(i+1)*time.Minute)))
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Extend %d: %v", i, err)
		}
	}
	if got, want := validUntil(t, f, g.Info["user"]), base.Add(n*time.Minute); !got.Equal(want) {
		t.Errorf("VALID UNTIL after concurrent extensions = %s, want the latest %s", got.UTC(), want.UTC())
	}
	revoke(t, c, id, f.spec(), g)
}

// TestExtendFencedRole: a role whose revocation has begun (fenced NOLOGIN,
// not yet dropped) is not a live grant: Extend says so rather than let the
// broker record an extension that cannot be used.
func TestExtendFencedRole(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	c := f.open(t)
	id, g := grant(t, c, f.spec())
	before := validUntil(t, f, g.Info["user"])
	postgres.SkipRevokeSteps(c, postgres.StepTerminate+","+postgres.StepDrop)
	revoke(t, c, id, f.spec(), g)
	if !roleExists(t, f.admin, g.Info["user"]) {
		t.Fatal("the sabotaged Revoke dropped the role; the test proves nothing")
	}
	if err := c.Extend(ctx, extendRequest(id, f.spec(), g, before.Add(time.Hour))); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend of a fenced role: %v, want %s", err, lapse.ENOTFOUND)
	}
	if got := validUntil(t, f, g.Info["user"]); !got.Equal(before) {
		t.Errorf("Extend moved the fenced role's VALID UNTIL to %s", got.UTC())
	}
	postgres.SkipRevokeSteps(c, "")
	revoke(t, c, id, f.spec(), g)
	requireGone(t, verify(t, c, id, f.spec(), g))
}

// TestExtendElevation: the account's membership has no deadline on the
// server, so Extend only checks it is still there: nil while the grant is
// live (with the spec, or with State alone), ENOTFOUND once revoked.
func TestExtendElevation(t *testing.T) {
	f := newFixture(t)
	ctx := bg(t)
	account := "lta_" + f.id + "_ext"
	f.exec(t, ctx, "CREATE ROLE "+ident(account)+" LOGIN")
	spec := map[string]any{"roles": []any{f.group}, "account": account}
	c := f.open(t)
	id, g := grant(t, c, spec)
	at := time.Now().Add(3 * time.Hour)
	if err := c.Extend(ctx, extendRequest(id, spec, g, at)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, nil, g, at)); err != nil {
		t.Errorf("Extend with State alone: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, nil, nil, at)); err != nil {
		t.Errorf("Extend without spec and State: %v", err)
	}
	if err := readTable(ctx, accountConn(t, account), f.table); err != nil {
		t.Errorf("the elevated account lost the privilege after Extend: %v", err)
	}
	other := "lta_" + f.id + "_other"
	f.exec(t, ctx, "CREATE ROLE "+ident(other)+" LOGIN")
	otherSpec := map[string]any{"roles": []any{f.group}, "account": other}
	if err := c.Extend(ctx, extendRequest(id, otherSpec, nil, at)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend for an account the grant did not elevate: %v, want %s", err, lapse.ENOTFOUND)
	}
	revoke(t, c, id, spec, g)
	if err := c.Extend(ctx, extendRequest(id, spec, g, at)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want %s", err, lapse.ENOTFOUND)
	}
}

// TestExtendRefusesBadInput: no deadline, or a grant ID outside the
// allow-list, is refused before any statement.
func TestExtendRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := bg(t)
	if err := c.Extend(ctx, extendRequest(newGrantID(), f.spec(), nil, time.Time{})); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Extend without a deadline: %v, want %s", err, lapse.EINVALID)
	}
	if err := c.Extend(ctx, extendRequest(`gr_x"; DROP ROLE postgres; --`, f.spec(), nil, time.Now().Add(time.Hour))); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Extend with a hostile grant ID: %v, want %s", err, lapse.EINVALID)
	}
}

// TestExtendStatementInServerLog logs every statement of the connector's
// admin sessions and reads the server's own log: the ALTER ROLE … VALID
// UNTIL is there, and neither the password nor a verifier is.
func TestExtendStatementInServerLog(t *testing.T) {
	f := newFixture(t)
	u, err := url.Parse(adminDSN())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("log_statement", "all") // a startup parameter of the admin sessions (superuser only)
	u.RawQuery = q.Encode()
	c := f.open(t, func(cfg *postgres.Config) { cfg.DSN = lapse.SecretRef{Value: u.String()} })
	id, g := grant(t, c, f.spec())
	role, password := g.Info["user"], g.Secret["password"]
	read := f.serverLog(t) // from here on: what Extend sends
	if err := c.Extend(bg(t), extendRequest(id, f.spec(), g, time.Now().Add(2*time.Hour))); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	log := read()
	revoke(t, c, id, f.spec(), g)

	stmt := []byte("ALTER ROLE \"" + role + "\" VALID UNTIL '")
	i := bytes.Index(log, stmt)
	if i < 0 {
		t.Fatalf("the server log does not show Extend's ALTER ROLE for %s: the log is not where this test looks", role)
	}
	line := log[i:]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	if bytes.Contains(line, []byte("PASSWORD")) || bytes.Contains(log, []byte("SCRAM-SHA-256$")) {
		t.Error("Extend sent a password or verifier")
	}
	for _, form := range []string{password, base64.StdEncoding.EncodeToString([]byte(password)), url.QueryEscape(password)} {
		if bytes.Contains(log, []byte(form)) {
			t.Fatal("the password appears in the server log")
		}
	}
}
