package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/transparency-dev/merkle/compact"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// AuditLog is the storage of the audit log's Merkle tree and checkpoints
// (migrations/0002_audit.sql) next to the store's events. It implements
// audit.Backend. It only inserts and reads: no statement here updates or
// deletes a row.
type AuditLog struct {
	s *Store

	mu  sync.Mutex
	sql map[string]string // query template → rendered for the dialect
}

var _ audit.Backend = (*AuditLog)(nil)

// Audit returns the audit log storage of s.
func (s *Store) Audit() *AuditLog {
	return &AuditLog{s: s, sql: make(map[string]string)}
}

// Rows per multi-row insert: far below SQLite's 32766 and PostgreSQL's
// 65535 bound parameters.
const auditChunk = 1000

// auditEventCols are the event columns the log reads: all of them, in
// scanEvent's order, since every field is part of the leaf.
const auditEventCols = eventCols

func (a *AuditLog) q(template string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	text, ok := a.sql[template]
	if !ok {
		text = a.s.d.render(template)
		a.sql[template] = text
	}
	return text
}

func (a *AuditLog) reader() (*sql.DB, error) {
	if a.s.closed.Load() {
		return nil, errClosed()
	}
	return a.s.r, nil
}

// Size implements audit.Backend.
func (a *AuditLog) Size(ctx context.Context) (uint64, error) {
	db, err := a.reader()
	if err != nil {
		return 0, err
	}
	var n int64
	if err := db.QueryRowContext(ctx, a.q("SELECT COALESCE(MAX(seq), 0) FROM audit_leaves")).Scan(&n); err != nil {
		return 0, a.s.classify("audit: tree size", err)
	}
	return uint64(n), nil
}

// Events implements audit.Backend.
func (a *AuditLog) Events(ctx context.Context, after int64, limit int) ([]*lapse.Event, error) {
	db, err := a.reader()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, a.q("SELECT "+auditEventCols+" FROM events WHERE seq > ? ORDER BY seq LIMIT ?"), after, limit)
	if err != nil {
		return nil, a.s.classify("audit: read events", err)
	}
	defer rows.Close()
	var out []*lapse.Event
	for rows.Next() {
		ev, err := scanEvent(rows)
		if err != nil {
			return nil, a.s.classify("audit: read events", err)
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, a.s.classify("audit: read events", err)
	}
	return out, nil
}

// GrantEvent implements audit.Backend. The events_grant index serves it,
// newest first.
func (a *AuditLog) GrantEvent(ctx context.Context, grantID, typ string) (*lapse.Event, error) {
	if err := noNUL("grant_id", grantID); err != nil {
		return nil, err
	}
	if err := noNUL("type", typ); err != nil {
		return nil, err
	}
	db, err := a.reader()
	if err != nil {
		return nil, err
	}
	ev, err := scanEvent(db.QueryRowContext(ctx, a.q("SELECT "+auditEventCols+" FROM events WHERE grant_id = ? AND event_type = ? ORDER BY seq DESC LIMIT 1"), grantID, typ))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, a.s.classify("audit: find grant event", err)
	}
	return ev, nil
}

// AppendEvent implements audit.Backend, through the store's own
// transaction so the sequence stays gap-free.
func (a *AuditLog) AppendEvent(ctx context.Context, ev *lapse.Event) error {
	return a.s.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, ev) })
}

// Integrate implements audit.Backend. On PostgreSQL two sequencers that
// read the same size both insert leaf start+1; the second waits for the
// first and then fails on the primary key, which is ECONFLICT.
func (a *AuditLog) Integrate(ctx context.Context, start uint64, leaves [][]byte, nodes []audit.Node) error {
	if a.s.closed.Load() {
		return errClosed()
	}
	tx, err := a.s.w.BeginTx(ctx, nil)
	if err != nil {
		return a.s.classify("audit: begin", err)
	}
	defer tx.Rollback()
	var size int64
	if err := tx.QueryRowContext(ctx, a.q("SELECT COALESCE(MAX(seq), 0) FROM audit_leaves")).Scan(&size); err != nil {
		return a.s.classify("audit: tree size", err)
	}
	if uint64(size) != start {
		return lapse.Errorf(lapse.ECONFLICT, "the audit tree has %d entries, not %d", size, start)
	}
	args := make([]any, 0, 3*auditChunk)
	for i := 0; i < len(leaves); i += auditChunk {
		chunk := leaves[i:min(i+auditChunk, len(leaves))]
		args = args[:0]
		for j, h := range chunk {
			args = append(args, int64(start)+int64(i+j)+1, h)
		}
		if _, err := tx.ExecContext(ctx, a.q(insertRows("INSERT INTO audit_leaves (seq, hash) VALUES ", 2, len(chunk))), args...); err != nil {
			return a.s.classify("audit: insert leaves", err)
		}
	}
	for i := 0; i < len(nodes); i += auditChunk {
		chunk := nodes[i:min(i+auditChunk, len(nodes))]
		args = args[:0]
		for _, n := range chunk {
			args = append(args, int64(n.Level), int64(n.Index), n.Hash)
		}
		if _, err := tx.ExecContext(ctx, a.q(insertRows("INSERT INTO audit_nodes (level, idx, hash) VALUES ", 3, len(chunk))), args...); err != nil {
			return a.s.classify("audit: insert nodes", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return a.s.classify("audit: commit", err)
	}
	return nil
}

// insertRows returns prefix followed by rows groups of cols placeholders.
func insertRows(prefix string, cols, rows int) string {
	group := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	var b strings.Builder
	b.Grow(len(prefix) + rows*(len(group)+2))
	b.WriteString(prefix)
	for i := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(group)
	}
	return b.String()
}

// Nodes implements audit.NodeReader: level 0 from audit_leaves, the rest
// from audit_nodes. Returns EINTERNAL naming the first node that is absent.
func (a *AuditLog) Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	db, err := a.reader()
	if err != nil {
		return nil, err
	}
	var leafConds, nodeConds []string
	var leafArgs, nodeArgs []any
	for _, id := range ids {
		if id.Level == 0 {
			leafConds = append(leafConds, "?")
			leafArgs = append(leafArgs, int64(id.Index)+1)
		} else {
			nodeConds = append(nodeConds, "(level = ? AND idx = ?)")
			nodeArgs = append(nodeArgs, int64(id.Level), int64(id.Index))
		}
	}
	found := make(map[compact.NodeID][]byte, len(ids))
	read := func(q string, args []any, leaf bool) error {
		rows, err := db.QueryContext(ctx, a.q(q), args...)
		if err != nil {
			return a.s.classify("audit: read nodes", err)
		}
		defer rows.Close()
		for rows.Next() {
			var level, idx int64
			var h []byte
			if leaf {
				err = rows.Scan(&idx, &h)
				idx--
			} else {
				err = rows.Scan(&level, &idx, &h)
			}
			if err != nil {
				return a.s.classify("audit: read nodes", err)
			}
			found[compact.NewNodeID(uint(level), uint64(idx))] = h
		}
		return a.s.classify("audit: read nodes", rows.Err())
	}
	if len(leafConds) > 0 {
		if err := read("SELECT seq, hash FROM audit_leaves WHERE seq IN ("+strings.Join(leafConds, ", ")+")", leafArgs, true); err != nil {
			return nil, err
		}
	}
	if len(nodeConds) > 0 {
		if err := read("SELECT level, idx, hash FROM audit_nodes WHERE "+strings.Join(nodeConds, " OR "), nodeArgs, false); err != nil {
			return nil, err
		}
	}
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, ok := found[id]
		if !ok {
			return nil, lapse.Errorf(lapse.EINTERNAL, "audit: tree node (%d, %d) is missing", id.Level, id.Index)
		}
		out[i] = h
	}
	return out, nil
}

// PutCheckpoint implements audit.Backend.
func (a *AuditLog) PutCheckpoint(ctx context.Context, cp *audit.StoredCheckpoint) error {
	if a.s.closed.Load() {
		return errClosed()
	}
	var e enc
	at := e.time("signed_at", cp.SignedAt)
	if e.err != nil {
		return e.err
	}
	_, err := a.s.w.ExecContext(ctx, a.q("INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?) ON CONFLICT (size) DO NOTHING"),
		int64(cp.Size), cp.Root, string(cp.Note), at)
	return a.s.classify("audit: store checkpoint", err)
}

// LatestCheckpoint implements audit.Backend.
func (a *AuditLog) LatestCheckpoint(ctx context.Context) (*audit.StoredCheckpoint, error) {
	cps, err := a.checkpoints(ctx, "SELECT size, root, note, signed_at FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
	if err != nil || len(cps) == 0 {
		return nil, err
	}
	return cps[0], nil
}

// Checkpoints implements audit.Backend.
func (a *AuditLog) Checkpoints(ctx context.Context) ([]*audit.StoredCheckpoint, error) {
	return a.checkpoints(ctx, "SELECT size, root, note, signed_at FROM audit_checkpoints ORDER BY size")
}

func (a *AuditLog) checkpoints(ctx context.Context, q string) ([]*audit.StoredCheckpoint, error) {
	db, err := a.reader()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, a.q(q))
	if err != nil {
		return nil, a.s.classify("audit: read checkpoints", err)
	}
	defer rows.Close()
	var out []*audit.StoredCheckpoint
	for rows.Next() {
		var (
			size int64
			note string
			at   sql.NullInt64
			cp   audit.StoredCheckpoint
		)
		if err := rows.Scan(&size, &cp.Root, &note, &at); err != nil {
			return nil, a.s.classify("audit: read checkpoints", err)
		}
		cp.Size, cp.Note, cp.SignedAt = uint64(size), []byte(note), timeOf(at)
		out = append(out, &cp)
	}
	return out, a.s.classify("audit: read checkpoints", rows.Err())
}

// auditScanSQL is the query of Scan, without its ORDER BY (scanOrder):
// the sequence number, the time, every other column a leaf is built from
// (as scanFields lists them), and the stored leaf hash (NULL until
// integrated).
const auditScanSQL = "SELECT e.seq, e.event_time, e.event_type, e.actor_id, e.actor_kind, e.channel, e.request_id, e.grant_id, e.outcome, " +
	"e.act, e.request_hash, e.policy_version, e.data, l.hash " +
	"FROM events e LEFT JOIN audit_leaves l ON l.seq = e.seq WHERE e.seq > ?"

const scanOrder = " ORDER BY e.seq"

// auditScanCols is the number of columns auditScanSQL returns: seq,
// event_time, then the byte columns of scanFields.
const auditScanCols = 14

// scanFields returns the fields of e that the byte columns of
// auditScanSQL (all but the first two) fill, in column order. The last
// is the stored leaf hash.
func scanFields(e *audit.Entry) [auditScanCols - 2]*[]byte {
	return [...]*[]byte{&e.Type, &e.ActorID, &e.ActorKind, &e.Channel, &e.RequestID, &e.GrantID, &e.Outcome,
		&e.Act, &e.RequestHash, &e.PolicyVersion, &e.Data, &e.Leaf}
}

// Scan implements audit.Backend. It reads in one read-only transaction
// (REPEATABLE READ on PostgreSQL, a WAL snapshot on SQLite) or, for a
// whole scan on SQLite, in several transactions on one snapshot (see
// scanSQLiteParallel), into buffers reused from row to row.
//
// It reads through the driver's own interface rather than database/sql's
// Rows.Scan. `lapse audit verify` reads every entry of the log, and the
// per-value work of database/sql — on PostgreSQL an allocated string per
// text column, on both a lock per row and a conversion and copy per column
// — was a large part of its time (docs/benchmarks.md). What a value reads
// as is unchanged: the same bytes database/sql would scan into
// sql.RawBytes.
func (a *AuditLog) Scan(ctx context.Context, after int64, limit int, fn func(*audit.Entry) error) error {
	if a.s.closed.Load() {
		return errClosed()
	}
	// fn's own error (Export's early stop, a write that failed) is returned
	// as it is; only the database's errors are classified.
	var fnErr error
	call := func(e *audit.Entry) error {
		fnErr = fn(e)
		return fnErr
	}
	var err error
	if a.s.driver == DriverSQLite && limit == 0 {
		err = a.scanSQLiteParallel(ctx, after, call)
	} else {
		err = a.scanOne(ctx, after, limit, call)
	}
	if fnErr != nil {
		return fnErr
	}
	return a.s.classify("audit: scan", err)
}

// scanOne runs the scan as one query on one reader connection.
func (a *AuditLog) scanOne(ctx context.Context, after int64, limit int, fn func(*audit.Entry) error) error {
	q := auditScanSQL + scanOrder
	args := []any{after}
	if limit > 0 {
		q += " LIMIT ?"
		args = append(args, int64(limit))
	}
	q = a.q(q)
	c, err := a.s.r.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Raw(func(dc any) error {
		if a.s.driver == DriverPostgres {
			return scanPostgres(ctx, dc, q, args, fn)
		}
		tx, err := beginSQLite(ctx, dc)
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // read-only
		var (
			e      audit.Entry
			fields = scanFields(&e)
			buf    []byte
			row    sqliteRow
		)
		return querySQLite(ctx, dc, q, args, func(vals []driver.Value) error {
			var err error
			if buf, err = row.decode(vals, buf[:0]); err != nil {
				return err
			}
			row.entry(&e, &fields, buf)
			return fn(&e)
		})
	})
}

// scanPostgres runs the scan on pgx's own connection: RawValues hands out
// each row's values as they arrived, without a conversion or an
// allocation. The bigint and bytea columns come in binary format (eight
// big-endian bytes; the bytes themselves), the text columns in text
// format, which is the same bytes (the text in the client encoding,
// UTF-8) and cheaper for the server to send than binary.
func scanPostgres(ctx context.Context, dc any, q string, args []any, fn func(*audit.Entry) error) error {
	sc, ok := dc.(*stdlib.Conn)
	if !ok {
		return fmt.Errorf("unexpected driver connection %T", dc)
	}
	tx, err := sc.Conn().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	// A transaction left open (the rollback failed with ctx) makes
	// database/sql discard the connection (stdlib.Conn.ResetSession).
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	// The scan must stream in sequence order. Both tables are keyed by
	// seq, so a merge join of their primary-key index scans does; but with
	// statistics that lag a bulk load the planner picks a hash join and a
	// sort of the whole log instead, which spills hundreds of megabytes to
	// disk (at 1,000,000 events) before the first row arrives. These
	// settings last until the transaction ends. JIT compilation would only
	// add its own time to a plan this simple.
	if _, err := tx.Exec(ctx, "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_sort', 'off', true), set_config('jit', 'off', true)"); err != nil {
		return err
	}
	formats := make(pgx.QueryResultFormats, auditScanCols)
	formats[0], formats[1], formats[auditScanCols-1] = pgx.BinaryFormatCode, pgx.BinaryFormatCode, pgx.BinaryFormatCode
	rows, err := tx.Query(ctx, q, append([]any{formats}, args...)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	// The binary formats decoded below are those of the schema's types;
	// a column of another type (an altered table) fails the scan.
	for i, fd := range rows.FieldDescriptions() {
		want := uint32(pgtype.TextOID)
		switch i {
		case 0, 1:
			want = pgtype.Int8OID
		case auditScanCols - 1:
			want = pgtype.ByteaOID
		}
		if fd.DataTypeOID != want {
			return fmt.Errorf("column %s has type OID %d, not %d", fd.Name, fd.DataTypeOID, want)
		}
	}
	var e audit.Entry
	fields := scanFields(&e)
	for rows.Next() {
		v := rows.RawValues()
		if len(v) != auditScanCols || len(v[0]) != 8 || (v[1] != nil && len(v[1]) != 8) {
			return fmt.Errorf("malformed row")
		}
		e.Seq = int64(binary.BigEndian.Uint64(v[0]))
		e.HasTime = v[1] != nil
		e.Time = 0
		if e.HasTime {
			e.Time = int64(binary.BigEndian.Uint64(v[1]))
		}
		for i, f := range fields {
			*f = v[i+2]
		}
		if len(e.Leaf) == 0 {
			e.Leaf = nil
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Whole scans on SQLite read on several connections at once: each row
// costs modernc.org/sqlite about 2 µs of CPU to step and convert (one
// connection runs on one core, ≈ 500,000 rows/s at best), which is most of
// what verify spends. Reader k reads the ranges of sqliteScanRange
// sequence numbers k, k+sqliteScanReaders, …; the calling goroutine hands
// the rows to fn in order. While it hands over one reader's range the
// others read ahead into their batches, which therefore hold more than a
// range: with less they would stall in turn, as if there were one.
const (
	sqliteScanReaders = 2
	sqliteScanRange   = 2048
	sqliteScanBatch   = 256 // rows handed over at a time
	sqliteScanBatches = 12  // per reader: 3,072 rows of read-ahead
)

// scanConnsMu is held while a scan takes its reader connections.
var scanConnsMu sync.Mutex

// rowBatch holds decoded rows whose byte columns lie back to back in buf.
// rangeEnd marks the last batch of a range.
type rowBatch struct {
	buf      []byte
	rows     []sqliteRow
	rangeEnd bool
}

// scanReader is one reading connection of scanSQLiteParallel and its
// batches.
type scanReader struct {
	// snap receives, once, the log's last sequence number in the reader's
	// snapshot, or why it could not take one.
	snap       chan scanSnapshot
	full, free chan *rowBatch
	err        error // set before full is closed
}

type scanSnapshot struct {
	maxSeq int64
	err    error
}

// scanSQLiteParallel reads the entries after `after` as scanOne does, on
// sqliteScanReaders connections, and calls fn with them in sequence order.
//
// All readers must see one state of the log. SQLite cannot share a
// snapshot between connections, but a read transaction's snapshot is the
// database as of its first read, and no transaction can commit while the
// write lock is held: so the readers take their snapshots while this
// holds the writer's lock (BEGIN IMMEDIATE: the writer's DSN sets
// _txlock), for the few milliseconds that takes, and check that they
// agree on the log's last entry. Should the lock not be had (another
// process writing for longer than busy_timeout), the scan runs on one
// connection instead.
func (a *AuditLog) scanSQLiteParallel(ctx context.Context, after int64, fn func(*audit.Entry) error) error {
	// The connections come first: the lock must not be held while waiting
	// for a reader connection that another scan has. One scan at a time
	// takes them, so that scans cannot each hold part of the pool and wait
	// for the rest.
	conns := make([]*sql.Conn, sqliteScanReaders)
	scanConnsMu.Lock()
	for k := range conns {
		c, err := a.s.r.Conn(ctx)
		if err != nil {
			scanConnsMu.Unlock()
			return err
		}
		defer c.Close()
		conns[k] = c
	}
	scanConnsMu.Unlock()
	lock, err := a.s.w.BeginTx(ctx, nil)
	if err != nil {
		return a.scanOne(ctx, after, 0, fn)
	}
	defer lock.Rollback() //nolint:errcheck // nothing was written; released early below
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // readers waiting to hand over a batch give up
		wg.Wait()
	}()
	readers := make([]*scanReader, sqliteScanReaders)
	for k := range readers {
		r := &scanReader{
			snap: make(chan scanSnapshot, 1),
			full: make(chan *rowBatch, sqliteScanBatches), free: make(chan *rowBatch, sqliteScanBatches),
		}
		for range sqliteScanBatches {
			r.free <- &rowBatch{rows: make([]sqliteRow, 0, sqliteScanBatch)}
		}
		readers[k] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(r.full)
			r.err = a.readRanges(ctx, conns[k], plus(after, int64(k)*sqliteScanRange), r)
		}()
	}
	var maxSeq int64
	for k, r := range readers {
		snap := <-r.snap
		if snap.err != nil {
			return snap.err
		}
		if k > 0 && snap.maxSeq != maxSeq {
			return fmt.Errorf("the scan's readers see the log end at %d and at %d", maxSeq, snap.maxSeq)
		}
		maxSeq = snap.maxSeq
	}
	if err := lock.Rollback(); err != nil {
		return err
	}
	var (
		e      audit.Entry
		fields = scanFields(&e)
	)
	for i := 0; ; i++ {
		r := readers[i%sqliteScanReaders]
		for {
			bt, ok := <-r.full
			if !ok {
				// The reader is done: past its last range (then so is
				// every range after this one), after the rest of the log,
				// or failed.
				return r.err
			}
			for j := range bt.rows {
				bt.rows[j].entry(&e, &fields, bt.buf)
				if err := fn(&e); err != nil {
					return err
				}
			}
			end := bt.rangeEnd
			r.free <- bt
			if end {
				break
			}
		}
	}
}

// readRanges runs one reader of scanSQLiteParallel on c: it begins a read
// transaction, takes its snapshot and reports the log's last sequence
// number in it, then reads the ranges (from, from+sqliteScanRange],
// advancing by sqliteScanReaders ranges, into r's batches.
func (a *AuditLog) readRanges(ctx context.Context, c *sql.Conn, from int64, r *scanReader) (err error) {
	reported := false
	defer func() {
		if !reported {
			r.snap <- scanSnapshot{err: cmp.Or(err, errors.New("the reader ended before its snapshot"))}
		}
	}()
	return c.Raw(func(dc any) error {
		tx, err := beginSQLite(ctx, dc)
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // read-only
		var maxSeq int64
		err = querySQLite(ctx, dc, a.q("SELECT COALESCE(MAX(seq), 0) FROM events"), nil, func(v []driver.Value) error {
			var ok bool
			if maxSeq, ok = v[0].(int64); !ok {
				return fmt.Errorf("the last sequence number is of type %T", v[0])
			}
			return nil
		})
		if err != nil {
			return err
		}
		r.snap <- scanSnapshot{maxSeq: maxSeq}
		reported = true

		bt := <-r.free
		bt.buf, bt.rows, bt.rangeEnd = bt.buf[:0], bt.rows[:0], false
		send := func(rangeEnd bool) error {
			bt.rangeEnd = rangeEnd
			select {
			case r.full <- bt:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case bt = <-r.free:
			case <-ctx.Done():
				return ctx.Err()
			}
			bt.buf, bt.rows, bt.rangeEnd = bt.buf[:0], bt.rows[:0], false
			return nil
		}
		read := func(st any, q string, args ...any) (n int, err error) {
			err = querySQLite(ctx, st, q, args, func(vals []driver.Value) error {
				n++
				bt.rows = append(bt.rows, sqliteRow{})
				var err error
				if bt.buf, err = bt.rows[len(bt.rows)-1].decode(vals, bt.buf); err != nil {
					return err
				}
				if len(bt.rows) == sqliteScanBatch {
					return send(false)
				}
				return nil
			})
			return n, err
		}
		pc, ok := dc.(driver.ConnPrepareContext)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		st, err := pc.PrepareContext(ctx, a.q(auditScanSQL+" AND e.seq <= ?"+scanOrder))
		if err != nil {
			return err
		}
		defer st.Close()
		for lo := from; lo < maxSeq; lo = plus(lo, sqliteScanReaders*sqliteScanRange) {
			n, err := read(st, "", lo, plus(lo, sqliteScanRange))
			if err != nil {
				return err
			}
			if n == 0 {
				// A whole range is missing. Only a damaged log has such
				// a gap, and its sequence numbers may then run on to any
				// size: this reader reads all the rest in one query, and
				// the scan ends when it is done.
				if _, err := read(dc, a.q(auditScanSQL+scanOrder), lo); err != nil {
					return err
				}
				return send(false)
			}
			if err := send(true); err != nil {
				return err
			}
		}
		return nil
	})
}

// plus returns a+b for b >= 0, or math.MaxInt64 should that overflow.
func plus(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// beginSQLite begins a read transaction on a modernc.org/sqlite driver
// connection. Its snapshot is taken at its first read.
func beginSQLite(ctx context.Context, dc any) (driver.Tx, error) {
	bc, ok := dc.(driver.ConnBeginTx)
	if !ok {
		return nil, fmt.Errorf("unexpected driver connection %T", dc)
	}
	return bc.BeginTx(ctx, driver.TxOptions{ReadOnly: true})
}

// querySQLite runs q on a modernc.org/sqlite driver connection, or the
// statement dc prepared on one, and calls row with each row's values,
// which are valid until it returns. Reading below database/sql skips its
// lock, conversion and copy per value.
func querySQLite(ctx context.Context, dc any, q string, args []any, row func([]driver.Value) error) error {
	named := make([]driver.NamedValue, len(args))
	for i, v := range args {
		named[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	var (
		rows driver.Rows
		err  error
	)
	switch c := dc.(type) {
	case driver.StmtQueryContext:
		rows, err = c.QueryContext(ctx, named)
	case driver.QueryerContext:
		rows, err = c.QueryContext(ctx, q, named)
	default:
		err = fmt.Errorf("unexpected driver connection %T", dc)
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	vals := make([]driver.Value, len(rows.Columns()))
	done := ctx.Done()
	for n := 0; ; n++ {
		// database/sql would end the rows when ctx is done; the driver
		// only watches it while a statement starts.
		if n%1024 == 0 {
			select {
			case <-done:
				return ctx.Err()
			default:
			}
		}
		if err := rows.Next(vals); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := row(vals); err != nil {
			return err
		}
	}
}

// sqliteRow is one decoded row of auditScanSQL. Its byte columns lie back
// to back in a buffer from start, byte column i ending at ends[i].
type sqliteRow struct {
	seq, time int64
	hasTime   bool
	start     int
	ends      [auditScanCols - 2]int
}

// decode reads the values of one row and appends its byte columns to buf.
func (r *sqliteRow) decode(vals []driver.Value, buf []byte) ([]byte, error) {
	seq, ok := vals[0].(int64)
	if !ok {
		return buf, fmt.Errorf("an entry has a sequence number of type %T", vals[0])
	}
	r.seq = seq
	switch t := vals[1].(type) {
	case nil:
		r.time, r.hasTime = 0, false
	case int64:
		r.time, r.hasTime = t, true
	default:
		// What sql.NullInt64 refuses too: SQLite keeps a value it cannot
		// store as an integer in its original type.
		return buf, fmt.Errorf("entry %d has a time of type %T", seq, vals[1])
	}
	r.start = len(buf)
	for i := range r.ends {
		var err error
		if buf, err = appendRaw(buf, vals[i+2]); err != nil {
			return buf, fmt.Errorf("entry %d: column %d: %w", seq, i+2, err)
		}
		r.ends[i] = len(buf)
	}
	return buf, nil
}

// entry points e (whose scanFields are fields) at the row in buf.
func (r *sqliteRow) entry(e *audit.Entry, fields *[auditScanCols - 2]*[]byte, buf []byte) {
	e.Seq, e.Time, e.HasTime = r.seq, r.time, r.hasTime
	start := r.start
	for i, f := range fields {
		*f = buf[start:r.ends[i]:r.ends[i]]
		start = r.ends[i]
	}
	if len(e.Leaf) == 0 {
		e.Leaf = nil
	}
}

// appendRaw appends the bytes of a driver value as database/sql scans it
// into sql.RawBytes. SQLite keeps whatever type was written into a column,
// so a tampered row may hold a number or a blob where text or a hash
// belongs: it must read as the same bytes as before (and fail its leaf
// hash), not fail the scan.
func appendRaw(dst []byte, v driver.Value) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return dst, nil
	case string:
		return append(dst, v...), nil
	case []byte:
		return append(dst, v...), nil
	case int64:
		return strconv.AppendInt(dst, v, 10), nil
	case float64:
		return strconv.AppendFloat(dst, v, 'g', -1, 64), nil
	case bool:
		return strconv.AppendBool(dst, v), nil
	case time.Time:
		return v.AppendFormat(dst, time.RFC3339Nano), nil
	}
	return dst, fmt.Errorf("unsupported value of type %T", v)
}

func (a *AuditLog) String() string { return fmt.Sprintf("%s audit log", a.s.driver) }
