package sqlstore

import (
	"context"
	"database/sql"
	"strings"
	"sync"

	"github.com/lapsehq/lapse"
)

// conn runs the store's queries on a transaction (tx) or directly on a pool
// (db), through prepared statements where the dialect keeps them.
type conn struct {
	s    *Store
	tx   *sql.Tx
	db   *sql.DB
	pool *[numQueries]*sql.Stmt // the pool's prepared statements (SQLite)

	// bound holds pool statements bound to tx, made on first use: binding
	// allocates, and the revocation path runs the same few statements
	// hundreds of times per transaction.
	bound *[numQueries]*sql.Stmt

	// retry is set when a statement failed with a serialisation failure,
	// deadlock or BUSY: the transaction must run again (see Store.Update).
	retry    bool
	retryErr error
}

var boundPool = sync.Pool{New: func() any { return new([numQueries]*sql.Stmt) }}

// stmt returns the prepared statement for q, or nil when the dialect runs
// query text.
func (c *conn) stmt(ctx context.Context, q qid) *sql.Stmt {
	if !c.s.d.prepareStatements {
		return nil
	}
	ps := c.pool[q]
	if c.tx == nil {
		return ps
	}
	if c.bound == nil {
		c.bound = boundPool.Get().(*[numQueries]*sql.Stmt)
	}
	if st := c.bound[q]; st != nil {
		return st
	}
	st := c.tx.StmtContext(ctx, ps)
	c.bound[q] = st
	return st
}

// release returns per-transaction buffers. The bound statements themselves
// are closed by database/sql when the transaction ends.
func (c *conn) release() {
	if c.bound != nil {
		*c.bound = [numQueries]*sql.Stmt{}
		boundPool.Put(c.bound)
		c.bound = nil
	}
}

// stmtContext returns the context for one statement. Inside a SQLite
// transaction it drops ctx's cancellation: modernc.org/sqlite starts a
// watcher goroutine for every statement run with a cancellable context,
// which costs more than the short statements themselves. Cancellation still
// ends the transaction, through database/sql, between statements.
func (c *conn) stmtContext(ctx context.Context) context.Context {
	if c.tx != nil && c.s.d.prepareStatements && ctx.Done() != nil {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

func (c *conn) query(ctx context.Context, q qid, args ...any) (*sql.Rows, error) {
	ctx = c.stmtContext(ctx)
	if st := c.stmt(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	if c.tx != nil {
		return c.tx.QueryContext(ctx, c.s.sql[q], args...)
	}
	return c.db.QueryContext(ctx, c.s.sql[q], args...)
}

func (c *conn) queryRow(ctx context.Context, q qid, args ...any) *sql.Row {
	ctx = c.stmtContext(ctx)
	if st := c.stmt(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	if c.tx != nil {
		return c.tx.QueryRowContext(ctx, c.s.sql[q], args...)
	}
	return c.db.QueryRowContext(ctx, c.s.sql[q], args...)
}

func (c *conn) exec(ctx context.Context, q qid, args ...any) (sql.Result, error) {
	ctx = c.stmtContext(ctx)
	if st := c.stmt(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	if c.tx != nil {
		return c.tx.ExecContext(ctx, c.s.sql[q], args...)
	}
	return c.db.ExecContext(ctx, c.s.sql[q], args...)
}

// dynamic renders a statement template built at run time for this
// store's dialect, once per template: the rendering is cached, the
// statement is not kept, as these are not hot.
func (s *Store) dynamic(template string) string {
	s.dynMu.Lock()
	defer s.dynMu.Unlock()
	text, ok := s.dyn[template]
	if !ok {
		text = s.d.render(template)
		s.dyn[template] = text
	}
	return text
}

// queryDynamic runs a query built at run time (a filtered list).
func (c *conn) queryDynamic(ctx context.Context, template string, args ...any) (*sql.Rows, error) {
	text := c.s.dynamic(template)
	if c.tx != nil {
		return c.tx.QueryContext(ctx, text, args...)
	}
	return c.db.QueryContext(ctx, text, args...)
}

// execDynamic runs a statement built at run time.
func (c *conn) execDynamic(ctx context.Context, template string, args ...any) (sql.Result, error) {
	text := c.s.dynamic(template)
	if c.tx != nil {
		return c.tx.ExecContext(ctx, text, args...)
	}
	return c.db.ExecContext(ctx, text, args...)
}

// fail classifies err for op and remembers whether the transaction must be
// retried.
func (c *conn) fail(op string, err error) error {
	if isRetryable(err) {
		c.retry = true
		c.retryErr = err
	}
	return c.s.classify(op, err)
}

// rowsAffected returns how many rows an UPDATE or INSERT changed.
func (c *conn) rowsAffected(op string, res sql.Result) (int64, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return 0, c.fail(op, err)
	}
	return n, nil
}

// idList returns the membership argument for {IN IDS}.
func (c *conn) idList(ids []string) any { return c.s.d.idListArg(ids) }

// undoEntry restores an int64 field (a version, an event sequence) that a
// transaction attempt set, when the attempt does not commit.
type undoEntry struct {
	p   *int64
	old int64
}

// tx implements lapse.Tx.
type tx struct {
	conn
	undoLog []undoEntry
	buf     buffer
}

var _ lapse.Tx = (*tx)(nil)

func newTx(s *Store, stx *sql.Tx) *tx {
	return &tx{conn: conn{s: s, tx: stx, pool: &s.wst}}
}

// set assigns v to *p and records the old value for undo.
func (t *tx) set(p *int64, v int64) {
	t.undoLog = append(t.undoLog, undoEntry{p, *p})
	*p = v
}

func (t *tx) undo() {
	for i := len(t.undoLog) - 1; i >= 0; i-- {
		*t.undoLog[i].p = t.undoLog[i].old
	}
	t.undoLog = t.undoLog[:0]
}

// where builds "WHERE a AND b …" for dynamic queries.
type where struct {
	conds []string
	args  []any
	err   error // the first filter value that cannot match (see addText)
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

// addText adds a condition on one text value. A value with a NUL byte is
// refused, naming field: nothing stored holds one, and PostgreSQL would
// fail the whole query on it.
func (w *where) addText(cond, field, v string) {
	if w.err == nil {
		w.err = noNUL(field, v)
	}
	w.add(cond, v)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// listLimit applies the default and the cap of list calls.
func listLimit(n int) int {
	switch {
	case n <= 0:
		return lapse.DefaultListLimit
	case n > lapse.MaxListLimit:
		return lapse.MaxListLimit
	}
	return n
}

// listRows runs a list query (a template for queryDynamic) on a reader and
// scans every row with scan; op names the operation in errors.
func listRows[T any](ctx context.Context, s *Store, op, q string, args []any, scan func(scanner) (T, error)) ([]T, error) {
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.queryDynamic(ctx, q, args...)
	if err != nil {
		return nil, c.fail(op, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, c.fail(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail(op, err)
	}
	return out, nil
}
