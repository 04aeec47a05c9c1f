package sqlstore_test

import (
	"context"
	"database/sql"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
	"github.com/lapsehq/lapse/sqlstore/storetest"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) lapse.Store { return sqltest.OpenSQLite(t) })
}

// TestPostgres runs the suite with each test in its own schema of one test
// database (a database per test would cost seconds each).
func TestPostgres(t *testing.T) {
	dsn := sqltest.PostgresDSN(t)
	storetest.Run(t, func(t *testing.T) lapse.Store { return sqltest.OpenPostgresSchema(t, dsn) })
}

// TestPostgresDatabase checks the database-per-store helper itself.
func TestPostgresDatabase(t *testing.T) {
	ctx := context.Background()
	a, b := sqltest.OpenPostgres(t), sqltest.OpenPostgres(t)
	if err := a.Update(ctx, func(tx lapse.Tx) error {
		return tx.AppendEvent(ctx, &lapse.Event{Type: lapse.EventGrantCreated})
	}); err != nil {
		t.Fatal(err)
	}
	if evs, err := b.ListEvents(ctx, lapse.EventFilter{}); err != nil || len(evs) != 0 {
		t.Fatalf("a second store sees the first one's events: %v, %v", evs, err)
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := lapse.ErrorCode(err); got != code {
		t.Fatalf("error code = %q, want %q (error: %v)", got, code, err)
	}
}

func TestOpenInvalid(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ driver, dsn string }{
		{"mysql", "x"},
		{sqlstore.DriverSQLite, ""},
		{sqlstore.DriverSQLite, ":memory:"},
		{sqlstore.DriverPostgres, "postgres://user:hunter2@[::1"},
	} {
		s, err := sqlstore.Open(ctx, tc.driver, tc.dsn)
		if err == nil {
			s.Close()
		}
		wantCode(t, err, lapse.EINVALID)
		if tc.dsn != "" && len(tc.dsn) > 4 && contains(err.Error(), "hunter2") {
			t.Fatalf("error reveals the password: %v", err)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestOpenUnreachable(t *testing.T) {
	ctx := context.Background()
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx2, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = sqlstore.Open(ctx2, sqlstore.DriverPostgres, "postgres://postgres:s3cret@"+addr+"/x?sslmode=disable&connect_timeout=5")
	wantCode(t, err, lapse.EUNAVAILABLE)
	if contains(err.Error(), "s3cret") {
		t.Fatalf("error reveals the password: %v", err)
	}

	_, err = sqlstore.Open(ctx, sqlstore.DriverSQLite, filepath.Join(t.TempDir(), "no", "such", "dir", "lapse.db"))
	wantCode(t, err, lapse.EUNAVAILABLE)
}

func TestClosedStore(t *testing.T) {
	ctx := context.Background()
	s, err := sqlstore.Open(ctx, sqlstore.DriverSQLite, sqltest.SQLitePath(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Driver() != sqlstore.DriverSQLite {
		t.Fatalf("Driver() = %q", s.Driver())
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.Ping(ctx), lapse.EUNAVAILABLE)
	_, err = s.GetGrant(ctx, "gr_x")
	wantCode(t, err, lapse.EUNAVAILABLE)
	wantCode(t, s.Update(ctx, func(lapse.Tx) error { return nil }), lapse.EUNAVAILABLE)
	_, err = s.ListGrants(ctx, lapse.GrantFilter{})
	wantCode(t, err, lapse.EUNAVAILABLE)
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestSQLitePersistsAndMigratesOnce reopens a database: the data is there
// and the migrations are not applied again.
func TestSQLitePersistsAndMigratesOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "odd ?#% name.db")
	s, err := sqlstore.Open(ctx, sqlstore.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx lapse.Tx) error {
		return tx.AppendEvent(ctx, &lapse.Event{Type: lapse.EventGrantCreated})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the database is not at the path given: %v", err)
	}
	s, err = sqlstore.Open(ctx, sqlstore.DriverSQLite, "file:"+escapePath(path)+"?_pragma=synchronous(FULL)")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.ListEvents(ctx, lapse.EventFilter{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("events after reopening: %v, %v", evs, err)
	}
	db, err := sql.Open("sqlite", "file:"+escapePath(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil || n != sqlstore.SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, sqlstore.SchemaVersion())
	}
	var journal string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&journal); err != nil || journal != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", journal, err)
	}
}

func escapePath(p string) string {
	out := ""
	for _, c := range p {
		switch c {
		case '%':
			out += "%25"
		case '?':
			out += "%3f"
		case '#':
			out += "%23"
		default:
			out += string(c)
		}
	}
	return out
}

// TestRefusesNewerSchema: a binary never runs on a schema it does not know.
func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := sqltest.SQLitePath(t)
	s, err := sqlstore.Open(ctx, sqlstore.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future.sql', 0)", sqlstore.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = sqlstore.Open(ctx, sqlstore.DriverSQLite, path)
	wantCode(t, err, lapse.EINTERNAL)
}

// TestPostgresConcurrentOpen: replicas starting together on a fresh
// database migrate it once, without errors.
func TestPostgresConcurrentOpen(t *testing.T) {
	dsn := sqltest.PostgresDSN(t)
	ctx := context.Background()
	const replicas = 4
	stores := make([]*sqlstore.Store, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = sqlstore.Open(ctx, sqlstore.DriverPostgres, dsn)
		}()
	}
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		defer stores[i].Close()
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil || n != sqlstore.SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, sqlstore.SchemaVersion())
	}
	// The replicas share one event sequence.
	for i, s := range stores {
		e := &lapse.Event{Type: lapse.EventGrantCreated}
		if err := s.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, e) }); err != nil {
			t.Fatal(err)
		}
		if e.Seq != int64(i+1) {
			t.Fatalf("replica %d appended seq %d, want %d", i, e.Seq, i+1)
		}
	}
}

// TestPostgresUnavailable: when the connection to PostgreSQL breaks, calls
// fail with EUNAVAILABLE, and work again once it is back.
func TestPostgresUnavailable(t *testing.T) {
	dsn := sqltest.PostgresDSN(t)
	cfgDSN, upstream := proxiedDSN(t, dsn)
	p := newProxy(t, upstream)
	ctx := context.Background()
	s, err := sqlstore.Open(ctx, sqlstore.DriverPostgres, cfgDSN(p.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	p.cut()
	wantCode(t, s.Ping(ctx), lapse.EUNAVAILABLE)
	_, err = s.GetGrant(ctx, "gr_x")
	wantCode(t, err, lapse.EUNAVAILABLE)
	err = s.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, &lapse.Event{Type: "x"}) })
	wantCode(t, err, lapse.EUNAVAILABLE)
	_, err = s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "o", Now: time.Now(), Lease: time.Second, Limit: 1})
	wantCode(t, err, lapse.EUNAVAILABLE)
	p.restore()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("after the connection is back: %v", err)
	}
	_, err = s.GetGrant(ctx, "gr_x")
	wantCode(t, err, lapse.ENOTFOUND)
}

// proxy forwards TCP connections to upstream until cut, which closes every
// connection and refuses new ones.
type proxy struct {
	t        *testing.T
	l        net.Listener
	upstream string
	mu       sync.Mutex
	down     bool
	conns    []net.Conn
}

func newProxy(t *testing.T, upstream string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, upstream: upstream}
	t.Cleanup(func() { l.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { io.Copy(u, c); u.Close() }()
		go func() { io.Copy(c, u); c.Close() }()
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// proxiedDSN returns a function that makes a DSN for the database of dsn
// reached through addr, and the real address of the server.
func proxiedDSN(t *testing.T, dsn string) (func(addr string) string, string) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	upstream := net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	return func(addr string) string {
		u := url.URL{Scheme: "postgres", Host: addr, Path: "/" + cfg.Database, RawQuery: "sslmode=disable&connect_timeout=5"}
		if cfg.Password != "" {
			u.User = url.UserPassword(cfg.User, cfg.Password)
		} else {
			u.User = url.User(cfg.User)
		}
		return u.String()
	}, upstream
}

// The write-ahead log is copied into the database file in the background,
// not only when a commit crosses the writer's threshold (which this test's
// few hundred pages do not reach).
func TestSQLiteCheckpointsInTheBackground(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lapse.db")
	s, err := sqlstore.Open(ctx, sqlstore.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	data := []byte(`{"note":"` + strings.Repeat("x", 2000) + `"}`)
	if err := s.Update(ctx, func(tx lapse.Tx) error {
		for range 500 {
			if err := tx.AppendEvent(ctx, &lapse.Event{Type: lapse.EventGrantCreated, Data: data}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); size() < before+500*2000; {
		if time.Now().After(deadline) {
			t.Fatalf("the database file is still %d bytes (was %d): the log was never checkpointed", size(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
