// Package sqlstore implements lapse.Store over database/sql, on SQLite
// (modernc.org/sqlite, pure Go: the embedded default for one node) and on
// PostgreSQL (pgx: several replicas share one database).
//
// Both databases run one set of SQL (queries.go, migrations/) through a small
// dialect seam (dialect.go): placeholders, row locks, and the event sequence.
//
// Consistency. Every change runs in a transaction (Store.Update). Requests
// and grants carry a version; UpdateRequest and UpdateGrant are
// compare-and-swap on it. On PostgreSQL transactions run at READ COMMITTED
// with explicit row locks (Tx.GetRequest and Tx.GetGrant use SELECT … FOR
// UPDATE, ClaimDueGrants uses FOR UPDATE SKIP LOCKED); on SQLite a single
// writer connection runs every transaction as BEGIN IMMEDIATE, so writers are
// serialised and readers (a separate pool, WAL mode) never block them.
//
// Immutable fields. UpdateRequest writes only what may change after a
// request is filed (State, Required, GrantID, DecisionNote, ExpiresAt,
// DecidedAt); the fields the request hash covers, the requester and the
// channel are never rewritten. UpdateGrant likewise never rewrites ID,
// RequestID, Principal, Entitlement, Target, TaskID and CreatedAt.
//
// Encoding. Times are BIGINT Unix nanoseconds (UTC), so they round-trip
// exactly; the zero time is NULL. String lists, string maps, evidence and
// event data are TEXT holding JSON (nil is NULL, so nil and empty lists and
// maps stay distinct); byte fields are BLOB/BYTEA, and an empty byte field or
// raw JSON value reads back as nil.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/lapsehq/lapse"
)

// Driver names accepted by Open.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Pool sizes. SQLite has exactly one writer connection; readers share a
// small pool. PostgreSQL connections are bounded so that several replicas and
// their tools stay well below the server's max_connections.
const (
	sqliteReaders = 4
	// sqliteCheckpointEvery is how often a background connection copies
	// the write-ahead log into the database file (a PASSIVE checkpoint,
	// which never blocks the writer or readers). Left to the writer, the
	// checkpoint runs inside whichever commit crosses the threshold and
	// costs that commit — and everything queued behind the single writer —
	// a copy of megabytes and an fsync.
	sqliteCheckpointEvery = 100 * time.Millisecond
	// sqliteAutoCheckpoint is the writer's own threshold, in pages: a
	// safety net should the background checkpoints fall behind.
	sqliteAutoCheckpoint = 16384
	postgresMaxOpen      = 10
	postgresMaxIdle      = 4
)

// Retry policy for Update on serialisation failures, deadlocks and SQLite
// BUSY.
const (
	maxAttempts = 12
	baseBackoff = 2 * time.Millisecond
	maxBackoff  = 250 * time.Millisecond
)

// Store is a lapse.Store on SQLite or PostgreSQL. It is safe for concurrent
// use. Do not call Store methods from inside an Update function: on SQLite
// the single writer connection is held by the running transaction, so a
// nested Update or ClaimDueGrants would wait forever.
type Store struct {
	driver string
	d      *dialect
	w      *sql.DB // writer: the one SQLite connection, or the PostgreSQL pool
	r      *sql.DB // readers: a separate SQLite pool, or the same PostgreSQL pool

	// sql holds every fixed query rendered for the dialect. On SQLite, wst
	// and rst hold them prepared on the writer and reader pools (database/sql
	// re-prepares a Stmt lazily on each connection that runs it); PostgreSQL
	// needs no Stmt objects because pgx caches prepared statements per
	// connection by query text.
	sql      [numQueries]string
	wst, rst [numQueries]*sql.Stmt

	// bulkSQL and bulkStmts hold the bulk inserts of 1, 2, 4 … bulkChunk
	// rows (index i is 1<<i rows); any number of rows is written as a sum
	// of these, so the set of statements stays small and prepared.
	bulkSQL   [numBulk][bulkSizes]string
	bulkStmts [numBulk][bulkSizes]*sql.Stmt

	dynMu sync.Mutex
	dyn   map[string]string // rendered dynamic (filtered list) queries

	closed atomic.Bool

	// On SQLite, the background checkpointer: its connection, and a channel
	// closed to stop it (ckptDone is closed when it has).
	ckpt               *sql.DB
	ckptStop, ckptDone chan struct{}

	// file is the SQLite database file, for the engine lock (enginelock.go).
	file string
}

var _ lapse.Store = (*Store)(nil)

// Options tune OpenWith. The zero value is what Open does.
type Options struct {
	// SkipMigrations makes the store check that the schema is current
	// instead of applying migrations: for a database role that may not
	// change the schema, while migrations run as the schema's owner
	// (Migrate, or `lapse admin migrate`). See docs/audit.md, "Database
	// roles".
	SkipMigrations bool
}

// Open opens a store and applies pending migrations; see OpenWith.
func Open(ctx context.Context, driver, dsn string) (*Store, error) {
	return OpenWith(ctx, driver, dsn, Options{})
}

// OpenWith opens a store and applies pending migrations, or with
// opts.SkipMigrations only checks that none is pending.
//
// For driver "sqlite" dsn is a file path or a "file:" URI. Open sets, unless
// the URI already sets them: busy_timeout, journal_mode=WAL, foreign_keys=ON
// and synchronous=NORMAL. synchronous=NORMAL under WAL never corrupts the
// database and loses nothing on a process crash; after a power loss it can
// lose the last transactions before the WAL was synced. That is acceptable
// here because every target-side privilege also carries its own expiry and
// the reconciler finds what a lost row no longer explains, while FULL would
// add an fsync to every commit of the revocation path. Set
// _pragma=synchronous(FULL) in the URI to choose durability over latency.
//
// For driver "postgres" dsn is a libpq key/value string or a postgres:// URL.
//
// Returns EINVALID for an unknown driver or a DSN that cannot be parsed,
// EUNAVAILABLE if the database cannot be reached or (SkipMigrations) its
// schema is behind this build, EINTERNAL if migrations fail.
func OpenWith(ctx context.Context, driver, dsn string, opts Options) (*Store, error) {
	s := &Store{driver: driver, dyn: make(map[string]string)}
	var err error
	switch driver {
	case DriverSQLite:
		s.d = sqliteDialect
		err = s.openSQLite(ctx, dsn, opts)
	case DriverPostgres:
		s.d = postgresDialect
		err = s.openPostgres(ctx, dsn, opts)
	default:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "driver", "unknown store driver %q (want sqlite or postgres)", driver)
	}
	if err != nil {
		s.closeDBs()
		return nil, err
	}
	return s, nil
}

func (s *Store) openSQLite(ctx context.Context, dsn string, opts Options) error {
	wdsn, rdsn, err := sqliteDSNs(dsn)
	if err != nil {
		return err
	}
	if s.w, err = sql.Open("sqlite", wdsn); err != nil {
		return lapse.Internal("sqlite: open writer", err)
	}
	// One writer connection, never closed while idle: every transaction is
	// BEGIN IMMEDIATE on it, so writers queue in database/sql instead of
	// meeting SQLITE_BUSY, and the per-connection prepared statements stay.
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxIdleTime(0)
	s.w.SetConnMaxLifetime(0)
	if err := s.w.PingContext(ctx); err != nil {
		return s.classify("sqlite: open", err)
	}
	if err := s.schema(ctx, opts); err != nil {
		return err
	}
	if err := s.w.QueryRowContext(ctx, "SELECT file FROM pragma_database_list WHERE name = 'main'").Scan(&s.file); err != nil {
		return s.classify("sqlite: database file", err)
	}
	// Readers open after the writer so that the database file exists and is
	// already in WAL mode.
	if s.r, err = sql.Open("sqlite", rdsn); err != nil {
		return lapse.Internal("sqlite: open readers", err)
	}
	s.r.SetMaxOpenConns(sqliteReaders)
	s.r.SetMaxIdleConns(sqliteReaders)
	s.r.SetConnMaxIdleTime(0)
	if err := s.r.PingContext(ctx); err != nil {
		return s.classify("sqlite: open readers", err)
	}
	if s.ckpt, err = sql.Open("sqlite", wdsn); err != nil {
		return lapse.Internal("sqlite: open checkpointer", err)
	}
	s.ckpt.SetMaxOpenConns(1)
	s.ckpt.SetMaxIdleConns(1)
	s.ckpt.SetConnMaxIdleTime(0)
	if err := s.ckpt.PingContext(ctx); err != nil {
		return s.classify("sqlite: open checkpointer", err)
	}
	s.ckptStop, s.ckptDone = make(chan struct{}), make(chan struct{})
	go s.checkpointLoop()
	return s.prepare(ctx)
}

// checkpointLoop runs PASSIVE checkpoints until the store closes. A
// checkpoint that fails (the database is busy with another checkpoint, say)
// is simply tried again at the next tick: the WAL stays correct, only
// longer, and the writer's own threshold bounds it.
func (s *Store) checkpointLoop() {
	defer close(s.ckptDone)
	t := time.NewTicker(sqliteCheckpointEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ckptStop:
			return
		case <-t.C:
			_, _ = s.ckpt.Exec("PRAGMA wal_checkpoint(PASSIVE)")
		}
	}
}

// sqliteDSNs builds the writer and reader DSNs from a path or file: URI.
func sqliteDSNs(dsn string) (writer, reader string, err error) {
	if dsn == "" || dsn == ":memory:" || strings.Contains(dsn, "mode=memory") {
		return "", "", lapse.FieldErrorf(lapse.EINVALID, "dsn", "the sqlite store needs a database file")
	}
	base, rawQuery := "", ""
	if rest, ok := strings.CutPrefix(dsn, "file:"); ok {
		base, rawQuery, _ = strings.Cut(rest, "?")
		base = "file:" + base
	} else {
		// A plain path: escape what a URI would otherwise interpret.
		base = "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(dsn)
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", "", lapse.FieldErrorf(lapse.EINVALID, "dsn", "the sqlite DSN has a malformed query string")
	}
	has := func(name string) bool {
		for _, p := range q["_pragma"] {
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(p)), name) {
				return true
			}
		}
		return false
	}
	for _, p := range []struct{ name, value string }{
		{"busy_timeout", "busy_timeout(10000)"},
		{"journal_mode", "journal_mode(WAL)"},
		{"synchronous", "synchronous(NORMAL)"},
		{"foreign_keys", "foreign_keys(1)"},
		// Multi-row statements keep a statement journal; in memory it costs
		// no system calls.
		{"temp_store", "temp_store(MEMORY)"},
		{"wal_autocheckpoint", fmt.Sprintf("wal_autocheckpoint(%d)", sqliteAutoCheckpoint)},
	} {
		if !has(p.name) {
			q.Add("_pragma", p.value)
		}
	}
	q.Set("_txlock", "immediate")
	writer = base + "?" + q.Encode()

	rq := url.Values{}
	for k, v := range q {
		rq[k] = append([]string(nil), v...)
	}
	rq.Del("_txlock")
	rq["_pragma"] = nil
	for _, p := range q["_pragma"] {
		// The journal mode is a property of the file, set by the writer.
		if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(p)), "journal_mode") {
			rq.Add("_pragma", p)
		}
	}
	rq.Add("_pragma", "query_only(1)")
	reader = base + "?" + rq.Encode()
	return writer, reader, nil
}

func (s *Store) openPostgres(ctx context.Context, dsn string, opts Options) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error can quote the DSN, which may hold a password.
		return lapse.FieldErrorf(lapse.EINVALID, "dsn", "the postgres DSN cannot be parsed")
	}
	s.w = stdlib.OpenDB(*cfg)
	s.w.SetMaxOpenConns(postgresMaxOpen)
	s.w.SetMaxIdleConns(postgresMaxIdle)
	s.w.SetConnMaxIdleTime(5 * time.Minute)
	s.r = s.w
	if err := s.w.PingContext(ctx); err != nil {
		return s.classify("postgres: connect", err)
	}
	if err := s.schema(ctx, opts); err != nil {
		return err
	}
	return s.prepare(ctx)
}

// prepare renders every fixed query for the dialect and, on SQLite, prepares
// it on both pools, so a typo in SQL fails Open rather than a revocation.
func (s *Store) prepare(ctx context.Context) error {
	for q := range numQueries {
		s.sql[q] = s.d.render(queryText[q])
	}
	for b := range numBulk {
		for i := range bulkSizes {
			s.bulkSQL[b][i] = s.d.render(bulkQuery(b, 1<<i))
		}
	}
	if !s.d.prepareStatements {
		return nil
	}
	for q := range numQueries {
		var err error
		if s.wst[q], err = s.w.PrepareContext(ctx, s.sql[q]); err != nil {
			return s.classify(fmt.Sprintf("sqlite: prepare %q", s.sql[q]), err)
		}
		if s.rst[q], err = s.r.PrepareContext(ctx, s.sql[q]); err != nil {
			return s.classify(fmt.Sprintf("sqlite: prepare %q", s.sql[q]), err)
		}
	}
	for b := range numBulk {
		for i := range bulkSizes {
			var err error
			if s.bulkStmts[b][i], err = s.w.PrepareContext(ctx, s.bulkSQL[b][i]); err != nil {
				return s.classify("sqlite: prepare bulk insert", err)
			}
		}
	}
	return nil
}

// Driver returns "sqlite" or "postgres".
func (s *Store) Driver() string { return s.driver }

// SerialWrites reports whether write transactions run one at a time
// (lapse.SerialWriter): true on SQLite, whose single writer connection runs
// them in turn, false on PostgreSQL.
func (s *Store) SerialWrites() bool { return s.driver == DriverSQLite }

// Ping reports whether the database answers, for readiness checks.
// Returns EUNAVAILABLE if it does not.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return errClosed()
	}
	if err := s.w.PingContext(ctx); err != nil {
		return s.classify("ping", err)
	}
	if s.r != s.w {
		if err := s.r.PingContext(ctx); err != nil {
			return s.classify("ping readers", err)
		}
	}
	return nil
}

// Close closes the store. Calls after Close return EUNAVAILABLE.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.driver == DriverSQLite && s.w != nil {
		// Let SQLite refresh its planner statistics for the next start.
		_, _ = s.w.Exec("PRAGMA optimize")
	}
	return s.closeDBs()
}

func (s *Store) closeDBs() error {
	for q := range numQueries {
		if s.wst[q] != nil {
			s.wst[q].Close()
		}
		if s.rst[q] != nil {
			s.rst[q].Close()
		}
	}
	for b := range numBulk {
		for _, st := range s.bulkStmts[b] {
			if st != nil {
				st.Close()
			}
		}
	}
	var errs []error
	if s.ckptStop != nil {
		close(s.ckptStop)
		<-s.ckptDone
	}
	if s.ckpt != nil {
		errs = append(errs, s.ckpt.Close())
	}
	if s.r != nil && s.r != s.w {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return lapse.Internal(s.driver+": close", err)
	}
	return nil
}

// Update implements lapse.Store. It retries fn, with jittered exponential
// back-off, when the database reports a serialisation failure or deadlock
// (PostgreSQL) or BUSY (SQLite). A failed attempt leaves the structs it
// touched as they were: versions and event sequence numbers set by the
// attempt are restored.
// Returns fn's error unchanged, or EUNAVAILABLE if the database cannot be
// reached or stays busy.
func (s *Store) Update(ctx context.Context, fn func(tx lapse.Tx) error) error {
	for attempt := 1; ; attempt++ {
		retry, err := s.updateOnce(ctx, fn)
		if !retry {
			return err
		}
		if attempt == maxAttempts {
			return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the store stayed busy; try again", Err: err}
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return s.classify("update: back-off", err)
		}
	}
}

func (s *Store) updateOnce(ctx context.Context, fn func(tx lapse.Tx) error) (retry bool, err error) {
	if s.closed.Load() {
		return false, errClosed()
	}
	stx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return isRetryable(err), s.classify("begin", err)
	}
	t := newTx(s, stx)
	committed := false
	defer func() {
		// Also runs when fn panics: the transaction never stays open.
		if !committed {
			_ = stx.Rollback()
			t.undo()
		}
		t.release()
	}()
	if err := fn(t); err != nil {
		return t.retry, err
	}
	if err := t.flush(ctx); err != nil {
		return t.retry, err
	}
	if t.retry {
		// fn swallowed a serialisation failure; what it read may be stale
		// and on PostgreSQL the transaction is already aborted.
		return true, t.retryErr
	}
	if err := stx.Commit(); err != nil {
		return isRetryable(err), s.classify("commit", err)
	}
	committed = true
	return false, nil
}

// read runs fn in a read-only transaction on the reader pool, so that the
// several queries of one read see one snapshot.
func (s *Store) read(ctx context.Context, fn func(c *conn) error) error {
	if s.closed.Load() {
		return errClosed()
	}
	var opts *sql.TxOptions
	if s.driver == DriverPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	stx, err := s.r.BeginTx(ctx, opts)
	if err != nil {
		return s.classify("begin read", err)
	}
	c := conn{s: s, tx: stx, pool: &s.rst}
	defer c.release()
	if err := fn(&c); err != nil {
		_ = stx.Rollback()
		return err
	}
	if err := stx.Commit(); err != nil {
		return s.classify("commit read", err)
	}
	return nil
}

// reader returns a connection wrapper for a single-statement read outside a
// transaction.
func (s *Store) reader() (*conn, error) {
	if s.closed.Load() {
		return nil, errClosed()
	}
	return &conn{s: s, db: s.r, pool: &s.rst}, nil
}

func backoff(attempt int) time.Duration {
	d := baseBackoff << min(attempt-1, 16)
	if d > maxBackoff {
		d = maxBackoff
	}
	// Equal jitter: contenders that collided once spread out.
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
