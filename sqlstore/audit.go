package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

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

const auditEventCols = "seq, event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data"

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

// Scan implements audit.Backend. It reads in one read-only transaction
// (REPEATABLE READ on PostgreSQL, a WAL snapshot on SQLite) and into
// reused buffers, so scanning a million entries allocates almost nothing
// on SQLite.
func (a *AuditLog) Scan(ctx context.Context, after int64, limit int, fn func(*audit.Entry) error) error {
	if a.s.closed.Load() {
		return errClosed()
	}
	var opts *sql.TxOptions
	if a.s.driver == DriverPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := a.s.r.BeginTx(ctx, opts)
	if err != nil {
		return a.s.classify("audit: begin scan", err)
	}
	defer tx.Rollback()
	q := "SELECT e.seq, e.event_time, e.event_type, e.actor_id, e.actor_kind, e.channel, e.request_id, e.grant_id, e.outcome, e.data, l.hash " +
		"FROM events e LEFT JOIN audit_leaves l ON l.seq = e.seq WHERE e.seq > ? ORDER BY e.seq"
	args := []any{after}
	if limit > 0 {
		q += " LIMIT ?"
		args = append(args, limit)
	}
	rows, err := tx.QueryContext(ctx, a.q(q), args...)
	if err != nil {
		return a.s.classify("audit: scan", err)
	}
	defer rows.Close()
	var (
		e    audit.Entry
		at   sql.NullInt64
		raw  [9]sql.RawBytes
		dest = []any{&e.Seq, &at, &raw[0], &raw[1], &raw[2], &raw[3], &raw[4], &raw[5], &raw[6], &raw[7], &raw[8]}
	)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return a.s.classify("audit: scan", err)
		}
		e.Time, e.HasTime = at.Int64, at.Valid
		e.Type, e.ActorID, e.ActorKind, e.Channel = raw[0], raw[1], raw[2], raw[3]
		e.RequestID, e.GrantID, e.Outcome, e.Data = raw[4], raw[5], raw[6], raw[7]
		e.Leaf = raw[8]
		if len(e.Leaf) == 0 {
			e.Leaf = nil
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return a.s.classify("audit: scan", err)
	}
	return nil
}

func (a *AuditLog) String() string { return fmt.Sprintf("%s audit log", a.s.driver) }
