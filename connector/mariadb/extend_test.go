package mariadb_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// eventExecuteAt reads when the grant's expiry event runs, as
// information_schema.EVENTS shows it, converted from the event's time zone
// to a Unix time; ok is false when there is no such event.
func (f *fixture) eventExecuteAt(t *testing.T, user string) (unix int64, ok bool) {
	t.Helper()
	var at sql.NullInt64
	err := f.admin.QueryRow(`SELECT TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', CONVERT_TZ(EXECUTE_AT, TIME_ZONE, '+00:00'))
		FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? AND EVENT_NAME = ?`, f.db, user).Scan(&at)
	if err == sql.ErrNoRows {
		return 0, false
	}
	if err != nil {
		t.Fatalf("read the expiry event: %v", err)
	}
	if !at.Valid {
		t.Fatal("the expiry event's EXECUTE_AT does not convert to UTC")
	}
	return at.Int64, true
}

func extendRequest(id string, g *connector.GrantResponse, at time.Time) *connector.ExtendRequest {
	req := &connector.ExtendRequest{GrantID: id, Entitlement: "test/entitlement", ExpiresAt: at}
	if g != nil {
		req.State = g.State
	}
	return req
}

// TestExtendMovesExpiryEvent: with expiry_event_schema, Extend moves the
// event's EXECUTE_AT to the new deadline and the grantee still logs in;
// an earlier deadline or a repeat leaves it; without State the event is
// still found; after Revoke there is nothing to extend.
func TestExtendMovesExpiryEvent(t *testing.T) {
	f := newFixture(t)
	c := f.open(t, func(cfg *mariadb.Config) { cfg.ExpiryEventSchema = f.db })
	ctx := context.Background()
	id, g := f.grant(t, c, f.spec())
	user := g.Info["user"]
	granted, ok := f.eventExecuteAt(t, user)
	if !ok {
		t.Fatal("Grant made no expiry event")
	}

	later := time.Unix(granted, 0).Add(2 * time.Hour)
	if err := c.Extend(ctx, extendRequest(id, g, later)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if got, _ := f.eventExecuteAt(t, user); got != later.Unix() {
		t.Fatalf("EXECUTE_AT after Extend = %s, want %s", time.Unix(got, 0).UTC(), later.UTC())
	}
	if err := login(ctx, g, "SELECT COUNT(*) FROM `"+f.db+"`.items"); err != nil {
		t.Errorf("login after Extend: %v", err)
	}

	if err := c.Extend(ctx, extendRequest(id, g, later)); err != nil {
		t.Errorf("repeated Extend: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, g, time.Unix(granted, 0).Add(time.Minute))); err != nil {
		t.Errorf("Extend to an earlier deadline: %v", err)
	}
	if got, _ := f.eventExecuteAt(t, user); got != later.Unix() {
		t.Errorf("an earlier deadline moved EXECUTE_AT to %s; it must stay %s", time.Unix(got, 0).UTC(), later.UTC())
	}
	latest := later.Add(time.Hour)
	if err := c.Extend(ctx, extendRequest(id, nil, latest)); err != nil {
		t.Fatalf("Extend without State: %v", err)
	}
	if got, _ := f.eventExecuteAt(t, user); got != latest.Unix() {
		t.Errorf("EXECUTE_AT after Extend without State = %s, want %s", time.Unix(got, 0).UTC(), latest.UTC())
	}

	mustRevoke(t, c, id, g)
	if err := c.Extend(ctx, extendRequest(id, g, latest.Add(time.Hour))); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want %s", err, lapse.ENOTFOUND)
	}
}

// TestExtendEventAfterConfigChange: an event Grant made is still moved
// after expiry_event_schema is turned off (State names it); left alone it
// would drop the user at the earlier deadline.
func TestExtendEventAfterConfigChange(t *testing.T) {
	f := newFixture(t)
	with := f.open(t, func(cfg *mariadb.Config) { cfg.ExpiryEventSchema = f.db })
	id, g := f.grant(t, with, f.spec())
	granted, _ := f.eventExecuteAt(t, g.Info["user"])
	without := f.open(t)
	later := time.Unix(granted, 0).Add(time.Hour)
	if err := without.Extend(context.Background(), extendRequest(id, g, later)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if got, _ := f.eventExecuteAt(t, g.Info["user"]); got != later.Unix() {
		t.Errorf("EXECUTE_AT = %s, want %s", time.Unix(got, 0).UTC(), later.UTC())
	}
	mustRevoke(t, with, id, g)
}

// TestExtendConcurrentNeverShortens: extensions of one grant to different
// deadlines, all at once, leave the latest in force whatever order the
// server runs them in.
func TestExtendConcurrentNeverShortens(t *testing.T) {
	f := newFixture(t)
	c := f.open(t, func(cfg *mariadb.Config) { cfg.ExpiryEventSchema = f.db })
	id, g := f.grant(t, c, f.spec())
	granted, _ := f.eventExecuteAt(t, g.Info["user"])
	base := time.Unix(granted, 0)
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
			errs[i] = c.Extend(context.Background(), extendRequest(id, g, base.Add(time.Duration(i+1)*time.Minute)))
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Extend %d: %v", i, err)
		}
	}
	final, _ := f.eventExecuteAt(t, g.Info["user"])
	if got, want := time.Unix(final, 0), base.Add(n*time.Minute); !got.Equal(want) {
		t.Errorf("EXECUTE_AT after concurrent extensions = %s, want the latest %s", got.UTC(), want.UTC())
	}
}

// TestExtendWithoutExpiryEvent: without the event nothing on the server
// holds the deadline: Extend returns nil while the user exists, makes no
// event, and returns ENOTFOUND once the grant is revoked.
func TestExtendWithoutExpiryEvent(t *testing.T) {
	f := newFixture(t)
	c := f.open(t)
	ctx := context.Background()
	id, g := f.grant(t, c, f.spec())
	at := time.Now().Add(3 * time.Hour)
	if err := c.Extend(ctx, extendRequest(id, g, at)); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := c.Extend(ctx, extendRequest(id, nil, at)); err != nil {
		t.Errorf("Extend without State: %v", err)
	}
	if _, ok := f.eventExecuteAt(t, g.Info["user"]); ok {
		t.Error("Extend made an expiry event")
	}
	if err := login(ctx, g, "SELECT 1"); err != nil {
		t.Errorf("login after Extend: %v", err)
	}
	mustRevoke(t, c, id, g)
	if err := c.Extend(ctx, extendRequest(id, g, at)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend after Revoke: %v, want %s", err, lapse.ENOTFOUND)
	}
	never := lapse.NewID(lapse.PrefixGrant, time.Now())
	if err := c.Extend(ctx, extendRequest(never, nil, at)); lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("Extend of a grant that never existed: %v, want %s", err, lapse.ENOTFOUND)
	}
	if err := c.Extend(ctx, extendRequest(never, nil, time.Time{})); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("Extend without a deadline: %v, want %s", err, lapse.EINVALID)
	}
}
