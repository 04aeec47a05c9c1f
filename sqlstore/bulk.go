package sqlstore

import (
	"context"
	"math/bits"

	"github.com/lapsehq/lapse"
)

// buffer holds the rows a transaction appends (events) or upserts
// (checkpoints) until they are written in bulk: when the transaction
// commits, or before it reads checkpoints again. The revocation path puts
// hundreds of grants through one transaction, each with an event and a
// checkpoint; one statement per 64 rows instead of per row saves most of the
// per-statement cost on SQLite and most of the round trips on PostgreSQL.
type buffer struct {
	events []any // bulkText[bulkEvents].cols values per row

	checkpoints []any          // bulkText[bulkCheckpoints].cols values per row
	cpRow       map[string]int // (grant ID, name) → row, so a repeated put replaces its row

	// nextSeq is the sequence number of the transaction's next event, or 0
	// before its first event has read the counter.
	nextSeq int64
}

func (b *buffer) reset() {
	b.events = b.events[:0]
	b.checkpoints = b.checkpoints[:0]
	clear(b.cpRow)
	b.nextSeq = 0
}

// putCheckpoint buffers the upsert of a checkpoint row. A second put of the
// same (grant, name) replaces the first: PostgreSQL refuses one statement
// that upserts a row twice.
func (b *buffer) putCheckpoint(row [8]any) {
	key := row[0].(string) + "\x00" + row[1].(string)
	cols := bulkText[bulkCheckpoints].cols
	if i, ok := b.cpRow[key]; ok {
		copy(b.checkpoints[i*cols:], row[:])
		return
	}
	if b.cpRow == nil {
		b.cpRow = make(map[string]int)
	}
	b.cpRow[key] = len(b.checkpoints) / cols
	b.checkpoints = append(b.checkpoints, row[:]...)
}

// flush writes the buffered rows. Events go last so that the event counter
// is written with them.
func (t *tx) flush(ctx context.Context) error {
	if err := t.flushCheckpoints(ctx); err != nil {
		return err
	}
	if len(t.buf.events) == 0 {
		return nil
	}
	if _, err := t.exec(ctx, qSetEventSeq, t.buf.nextSeq-1); err != nil {
		return t.fail("advance event sequence", err)
	}
	if err := t.writeBulk(ctx, bulkEvents, t.buf.events); err != nil {
		return t.fail("append events", err)
	}
	t.buf.events = t.buf.events[:0]
	return nil
}

func (t *tx) flushCheckpoints(ctx context.Context) error {
	if len(t.buf.checkpoints) == 0 {
		return nil
	}
	err := t.writeBulk(ctx, bulkCheckpoints, t.buf.checkpoints)
	if isForeignKeyViolation(err) {
		return lapse.Errorf(lapse.ENOTFOUND, "a checkpoint refers to a grant that does not exist")
	} else if err != nil {
		return t.fail("put checkpoints", err)
	}
	t.buf.checkpoints = t.buf.checkpoints[:0]
	clear(t.buf.cpRow)
	return nil
}

// writeBulk inserts rows with the fewest prepared bulk statements: chunks of
// the largest size, then the remainder as a sum of powers of two.
func (t *tx) writeBulk(ctx context.Context, b bulk, args []any) error {
	cols := bulkText[b].cols
	ctx = t.stmtContext(ctx)
	for rows := len(args) / cols; rows > 0; {
		i := min(bits.Len(uint(rows))-1, bulkSizes-1)
		n := 1 << i
		var err error
		if st := t.s.bulkStmts[b][i]; st != nil {
			_, err = t.tx.StmtContext(ctx, st).ExecContext(ctx, args[:n*cols]...)
		} else {
			_, err = t.tx.ExecContext(ctx, t.s.bulkSQL[b][i], args[:n*cols]...)
		}
		if err != nil {
			return err
		}
		args = args[n*cols:]
		rows -= n
	}
	return nil
}
