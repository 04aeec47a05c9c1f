package audit_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// failingBackend is a store whose Integrate or AppendEvent fail on demand.
type failingBackend struct {
	*sqlstore.AuditLog
	integrate, appendEvent atomic.Bool
}

func (f *failingBackend) Integrate(ctx context.Context, start uint64, leaves [][]byte, nodes []audit.Node) error {
	if f.integrate.Load() {
		return errors.New("disk full")
	}
	return f.AuditLog.Integrate(ctx, start, leaves, nodes)
}

func (f *failingBackend) AppendEvent(ctx context.Context, ev *lapse.Event) error {
	if f.appendEvent.Load() {
		return errors.New("disk full")
	}
	return f.AuditLog.AppendEvent(ctx, ev)
}

// blockingSink blocks in Publish until released, after saying it did.
type blockingSink struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingSink) Publish(ctx context.Context, cp *audit.Checkpoint) error {
	b.entered <- struct{}{}
	<-b.release
	return nil
}

func (b *blockingSink) String() string { return "blocking" }

func wantDegraded(t *testing.T, l *audit.Log) {
	t.Helper()
	err := l.Healthy()
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE || lapse.ErrorReason(err) != lapse.ReasonAuditDegraded {
		t.Fatalf("Healthy = %v, want EUNAVAILABLE with reason %s", err, lapse.ReasonAuditDegraded)
	}
	if !strings.HasPrefix(lapse.ErrorMessage(err), "audit log degraded: ") {
		t.Fatalf("message %q does not say the audit log is degraded", lapse.ErrorMessage(err))
	}
}

func wantHealthy(t *testing.T, l *audit.Log) {
	t.Helper()
	if err := l.Healthy(); err != nil {
		t.Fatalf("Healthy = %v, want nil", err)
	}
}

func newHealthEnv(t *testing.T) (*env, *failingBackend, *fakeclock.Clock) {
	t.Helper()
	s := open(t, sqlstore.DriverSQLite, sqltest.SQLitePath(t))
	e := newEnv(t, "sqlite", s, nil, false)
	return e, &failingBackend{AuditLog: e.backend}, fakeclock.New(t0)
}

// TestSinkGrace: a failing sink degrades the log only once it has failed
// for longer than SinkGrace; checkpoints are signed meanwhile, and the
// failure's start is reset when the sink accepts again.
func TestSinkGrace(t *testing.T) {
	e, fb, clock := newHealthEnv(t)
	sink := &flakySink{down: true}
	skey, _, _ := audit.GenerateKey("lapse.test/audit")
	l, err := audit.NewLog(audit.Config{Backend: fb, SigningKey: skey, Sinks: []audit.Sink{sink}, Clock: clock, SinkGrace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.appendEvents(t, 3, 3, 0)
	if _, err := l.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded with the sink down")
	}
	wantHealthy(t, l) // within the grace
	if st := l.Status(); !st.SinkFailingSince.Equal(t0) || st.Signed != 3 || st.Unpublished != 1 {
		t.Fatalf("status = %+v", st)
	}
	clock.Advance(59 * time.Second)
	e.appendEvents(t, 1, 1, 0)
	l.Sync(ctx)
	wantHealthy(t, l) // failing since t0, not since the last round
	clock.Advance(time.Second)
	wantDegraded(t, l)

	sink.down = false
	if _, err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wantHealthy(t, l)
	if st := l.Status(); !st.SinkFailingSince.IsZero() || st.Unpublished != 0 || st.Error != "" {
		t.Fatalf("status after recovery = %+v", st)
	}
	// A new outage starts a new grace.
	sink.down = true
	e.appendEvents(t, 1, 1, 0)
	l.Sync(ctx)
	wantHealthy(t, l)
}

// TestIntegrationFailureDegradesAtOnce: the grace is for sinks only; a log
// that cannot integrate or sign is degraded from the first failed round.
func TestIntegrationFailureDegradesAtOnce(t *testing.T) {
	e, fb, clock := newHealthEnv(t)
	skey, _, _ := audit.GenerateKey("lapse.test/audit")
	l, err := audit.NewLog(audit.Config{Backend: fb, SigningKey: skey, Clock: clock, SinkGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.appendEvents(t, 2, 2, 0)
	fb.integrate.Store(true)
	if _, err := l.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded without integrating")
	}
	wantDegraded(t, l)
	if st := l.Status(); st.Size != 0 || !strings.Contains(st.Error, "disk full") {
		t.Fatalf("status = %+v", st)
	}
	// The events stayed in the events table; they are integrated and
	// signed once the store accepts writes again.
	fb.integrate.Store(false)
	cp, err := l.Sync(ctx)
	if err != nil || cp.Size != 2 {
		t.Fatalf("Sync after recovery: %v, %v", cp, err)
	}
	wantHealthy(t, l)
}

// TestStalledRoundDegrades: a round that hangs degrades the log after
// StallAfter, and Status and Healthy answer at once meanwhile instead of
// waiting for it.
func TestStalledRoundDegrades(t *testing.T) {
	e, fb, clock := newHealthEnv(t)
	sink := &blockingSink{entered: make(chan struct{}), release: make(chan struct{})}
	skey, _, _ := audit.GenerateKey("lapse.test/audit")
	l, err := audit.NewLog(audit.Config{Backend: fb, SigningKey: skey, Sinks: []audit.Sink{sink}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	e.appendEvents(t, 1, 1, 0)
	done := make(chan error, 1)
	go func() { _, err := l.Sync(context.Background()); done <- err }()
	<-sink.entered // the round is now stuck in Publish
	wantHealthy(t, l)
	_ = l.Status()
	clock.Advance(audit.StallAfter)
	wantDegraded(t, l)
	close(sink.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wantHealthy(t, l)
}

// TestCheckKey: a log refuses a store whose checkpoints another key signed,
// naming both keys; its own key passes, and so does an empty store.
func TestCheckKey(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		if err := e.log.CheckKey(ctx); err != nil {
			t.Fatalf("empty store: %v", err)
		}
		e.appendEvents(t, 5, 5, 5)
		if err := e.log.CheckKey(ctx); err != nil {
			t.Fatalf("own key: %v", err)
		}
		other, _, _ := audit.GenerateKey("lapse.test/other")
		l, err := audit.NewLog(audit.Config{Backend: e.backend, SigningKey: other})
		if err != nil {
			t.Fatal(err)
		}
		err = l.CheckKey(ctx)
		if !errors.Is(err, audit.ErrForeignKey) || !strings.Contains(err.Error(), "lapse.test/audit+") || !strings.Contains(err.Error(), "lapse.test/other+") {
			t.Fatalf("another key: %v", err)
		}
		// The same name with another key is another key too.
		same, _, _ := audit.GenerateKey("lapse.test/audit")
		l, _ = audit.NewLog(audit.Config{Backend: e.backend, SigningKey: same})
		if err := l.CheckKey(ctx); !errors.Is(err, audit.ErrForeignKey) {
			t.Fatalf("same origin, another key: %v", err)
		}
		// A stored checkpoint that names this key but does not verify is
		// tampering, not a key mix-up: the start goes on and Sync (which
		// degrades the log) reports it.
		e.exec(t, "UPDATE audit_checkpoints SET note = REPLACE(note, '\n5\n', '\n6\n')")
		if err := e.log.CheckKey(ctx); err != nil {
			t.Fatalf("tampered checkpoint: %v", err)
		}
		if _, err := e.log.Sync(ctx); err == nil {
			t.Fatal("Sync accepted a tampered checkpoint")
		}
	})
}
