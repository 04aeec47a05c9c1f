package mariadb

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/lapsehq/lapse"
)

// The reads Revoke and Verify make are set-wise: one statement answers for
// every user of a batch (internal/batch), so concurrent calls share the scans
// that dominate their cost. For a single user each is the same statement
// with a list of one.

// placeholders returns n comma-separated placeholders.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// userOf returns an expression that is the 1-based index, among n user
// names given as "name@" parameters, of the user named by col ("user@host",
// as DEFINER and Grantor columns hold it, unquoted), or 0. The user part is
// everything before the last "@" (a host name holds none; a user name may),
// so every host of a user matches and "name@evil@%" is not name's. The
// comparison is binary: information_schema compares case- and
// accent-insensitively, and MariaDB's user names are neither, so without
// it "LAPSE_…" would be taken for "lapse_…". Names are compared whole (no
// LIKE: a wildcard in a name widens nothing).
func userOf(col string, n int) string {
	return "FIELD(BINARY LEFT(" + col + ", CHAR_LENGTH(" + col + ") - CHAR_LENGTH(SUBSTRING_INDEX(" + col + ", '@', -1))), " + placeholders(n) + ")"
}

// The traces of users are read with two statements, run side by side.
// Every row of both starts with the index of its user and a tag:
//
//	o: an object (kind, schema, name, definer)
//	g: a grant made to another account (kind, schema, object, grantor, user, host, privileges)
//	n: the number of rows in a privilege table (kind names the table; the count is last)
//	p: a mysql.proxies_priv row naming users (first as User, last as Proxied_user; 0: neither)
//
// The privilege tables are kept out of the statement that scans table
// definitions because a statement holds its table locks until it ends:
// reading them in the same statement as the scans would make every DROP
// USER on the server wait for a whole scan.

// definitionsSQL finds the views and triggers whose DEFINER is one of n
// users. They live in table definitions, which the server opens to read
// them: that is most of the cost of Revoke and Verify. The two virtual
// schemas, where nobody can create either, are left out, which makes each
// scan an order of magnitude cheaper.
func definitionsSQL(n int) string {
	def := userOf("DEFINER", n)
	return "SELECT " + def + ", 'o', 'VIEW', TABLE_SCHEMA, TABLE_NAME, DEFINER, '', '', '' FROM information_schema.VIEWS" +
		" WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema') AND " + def + " > 0" +
		" UNION ALL SELECT " + def + ", 'o', 'TRIGGER', TRIGGER_SCHEMA, TRIGGER_NAME, DEFINER, '', '', '' FROM information_schema.TRIGGERS" +
		" WHERE TRIGGER_SCHEMA NOT IN ('information_schema', 'performance_schema') AND " + def + " > 0"
}

// catalogSQL finds the routines and events whose DEFINER is one of n
// users and the table and routine privileges they granted (Grantor) to
// other accounts and, with counts, counts their rows in every privilege
// table.
func catalogSQL(n int, counts bool) string {
	def := userOf("definer", n)
	grantor := userOf("Grantor", n)
	ph := placeholders(n)
	var b strings.Builder
	b.WriteString("SELECT " + def + ", 'o', type, db, name, definer, '', '', '' FROM mysql.proc WHERE " + def + " > 0")
	b.WriteString(" UNION ALL SELECT " + def + ", 'o', 'EVENT', db, name, definer, '', '', '' FROM mysql.event WHERE " + def + " > 0")
	// A user's grants to itself are its own privilege rows, which the
	// counts cover.
	b.WriteString(" UNION ALL SELECT " + grantor + ", 'g', 'TABLE', Db, Table_name, Grantor, User, Host, Table_priv FROM mysql.tables_priv" +
		" WHERE " + grantor + " > 0 AND User <> ELT(" + grantor + ", " + ph + ")")
	b.WriteString(" UNION ALL SELECT " + grantor + ", 'g', Routine_type, Db, Routine_name, Grantor, User, Host, Proc_priv FROM mysql.procs_priv" +
		" WHERE " + grantor + " > 0 AND User <> ELT(" + grantor + ", " + ph + ")")
	if counts {
		for _, table := range privTables {
			b.WriteString(" UNION ALL SELECT FIELD(User, " + ph + "), 'n', '" + table + "', '', '', '', '', '', COUNT(*) FROM mysql." + table +
				" WHERE User IN (" + ph + ") GROUP BY 1")
		}
		b.WriteString(" UNION ALL SELECT FIELD(User, " + ph + "), 'p', '', '', '', '', '', '', FIELD(Proxied_user, " + ph + ") FROM mysql.proxies_priv" +
			" WHERE User IN (" + ph + ") OR Proxied_user IN (" + ph + ")")
	}
	return b.String()
}

// privTables are the privilege tables counted by User; mysql.proxies_priv
// names users in two columns and is read row by row.
var privTables = []string{"global_priv", "roles_mapping", "db", "tables_priv", "columns_priv", "procs_priv"}

// definitionsArgs and catalogArgs return the statements' parameters for
// users.
func definitionsArgs(users []string) []any {
	pats, _ := userArgs(users)
	return concat(pats, pats, pats, pats)
}

func catalogArgs(users []string, counts bool) []any {
	pats, names := userArgs(users)
	args := concat(pats, pats, pats, pats, // proc, event
		pats, pats, pats, names, pats, pats, pats, names) // tables_priv, procs_priv
	if counts {
		for range privTables {
			args = append(args, concat(names, names)...)
		}
		args = append(args, concat(names, names, names, names)...) // proxies_priv
	}
	return args
}

// userArgs returns users as "name@" patterns and as names.
func userArgs(users []string) (pats, names []any) {
	pats = make([]any, len(users))
	names = make([]any, len(users))
	for i, u := range users {
		pats[i], names[i] = u+"@", u
	}
	return pats, names
}

func concat(vs ...[]any) []any {
	var out []any
	for _, v := range vs {
		out = append(out, v...)
	}
	return out
}

// catalogTables are the tables the reads cover, for the evidence.
var catalogTables = []string{
	"mysql.global_priv", "mysql.roles_mapping", "mysql.db", "mysql.tables_priv",
	"mysql.columns_priv", "mysql.procs_priv", "mysql.proxies_priv",
	"mysql.proc", "mysql.event", "information_schema.VIEWS", "information_schema.TRIGGERS",
}

// userTrace is what the catalog holds of one user.
type userTrace struct {
	accounts, roleGrants, dbGrants, tableGrants, columnGrants, routineGrants, proxyGrants int
	objects                                                                               []madeObject
	grants                                                                                []madeGrant
}

// traceItem asks for the traces of some users; counts asks for the
// privilege-table counts too (Verify), not only what they made (Revoke).
type traceItem struct {
	users  []string
	counts bool
	out    []*userTrace // per user
	err    error
}

// traces reads, through the batcher, the traces of users.
func (c *Conn) traces(ctx context.Context, users []string, counts bool) ([]*userTrace, error) {
	it := &traceItem{users: users, counts: counts}
	if err := c.traceBatches.Do(ctx, it); err != nil {
		return nil, c.unavailable("mariadb: read the catalog", err)
	}
	return it.out, it.err
}

// traceBatch reads the traces of every user of a batch at once.
func (c *Conn) traceBatch(ctx context.Context, items []*traceItem) {
	var users []string
	index := map[string]int{}
	counts := false
	for _, it := range items {
		for _, u := range it.users {
			if _, ok := index[u]; !ok {
				index[u] = len(users)
				users = append(users, u)
			}
		}
		counts = counts || it.counts
	}
	traces, err := c.readTraces(ctx, users, counts)
	for _, it := range items {
		if err != nil {
			it.err = err
			continue
		}
		it.out = make([]*userTrace, len(it.users))
		for j, u := range it.users {
			// Each caller gets its own copy: two may ask for the same user.
			t := *traces[index[u]]
			t.objects = append([]madeObject(nil), t.objects...)
			t.grants = append([]madeGrant(nil), t.grants...)
			it.out[j] = &t
		}
	}
}

// readTraces reads the traces of users: both statements at once, each on
// its own connection.
func (c *Conn) readTraces(ctx context.Context, users []string, counts bool) ([]*userTrace, error) {
	n := len(users)
	traces := make([]*userTrace, n)
	for i := range traces {
		traces[i] = &userTrace{}
	}
	// Each statement fills its own copy; they are merged below, routines
	// and events before views and triggers, the order in which Revoke
	// handles them.
	defs := make([]*userTrace, n)
	for i := range defs {
		defs[i] = &userTrace{}
	}
	var defErr error
	var wg sync.WaitGroup
	wg.Go(func() { defErr = c.readTraceRows(ctx, definitionsSQL(n), definitionsArgs(users), defs) })
	err := c.readTraceRows(ctx, catalogSQL(n, counts), catalogArgs(users, counts), traces)
	wg.Wait()
	if err == nil {
		err = defErr
	}
	if err != nil {
		return nil, err
	}
	for i, t := range traces {
		t.objects = append(t.objects, defs[i].objects...)
	}
	return traces, nil
}

// readTraceRows runs one of the trace statements and adds what it finds to
// traces.
func (c *Conn) readTraceRows(ctx context.Context, q string, args []any, traces []*userTrace) error {
	const op = "mariadb: read what the grant's user left in the catalog"
	n := len(traces)
	rows, err := c.db.QueryContext(ctx, q, args...)
	if err != nil {
		return c.unavailable(op, err)
	}
	defer rows.Close()
	valid := func(i int) bool { return i >= 1 && i <= n }
	for rows.Next() {
		var i int
		var tag, kind, schema, name, by, gu, gh, last string
		if err := rows.Scan(&i, &tag, &kind, &schema, &name, &by, &gu, &gh, &last); err != nil {
			return lapse.Internal(op, err)
		}
		if tag == "p" {
			// One mysql.proxies_priv row: i and last are the users it names
			// as User and as Proxied_user; a row naming a user on both
			// sides counts once.
			k, _ := strconv.Atoi(last)
			if valid(i) {
				traces[i-1].proxyGrants++
			}
			if valid(k) && k != i {
				traces[k-1].proxyGrants++
			}
			continue
		}
		if !valid(i) {
			return lapse.Internal(op, fmt.Errorf("row for user %d of %d", i, n))
		}
		t := traces[i-1]
		switch tag {
		case "o":
			t.objects = append(t.objects, madeObject{Kind: kind, Schema: schema, Name: name, Definer: by})
		case "g":
			t.grants = append(t.grants, madeGrant{Kind: kind, Schema: schema, Object: name, User: gu, Host: gh, Privs: last})
		case "n":
			k, err := strconv.Atoi(last)
			if err != nil {
				return lapse.Internal(op, fmt.Errorf("count %q", last))
			}
			switch kind {
			case "global_priv":
				t.accounts += k
			case "roles_mapping":
				t.roleGrants += k
			case "db":
				t.dbGrants += k
			case "tables_priv":
				t.tableGrants += k
			case "columns_priv":
				t.columnGrants += k
			case "procs_priv":
				t.routineGrants += k
			default:
				return lapse.Internal(op, fmt.Errorf("count for table %q", kind))
			}
		default:
			return lapse.Internal(op, fmt.Errorf("row tagged %q", tag))
		}
	}
	if err := rows.Err(); err != nil {
		return c.unavailable(op, err)
	}
	return nil
}

// thread is one row of the process list.
type thread struct {
	ID      int64
	User    string
	Host    string
	Command string
	Time    int64
}

// processItem asks for the connections of some users.
type processItem struct {
	users []string
	out   []thread
	err   error
}

// processList returns the connections of users, from a process list read
// after the call (through the batcher, so that concurrent callers share
// one read).
func (c *Conn) processList(ctx context.Context, users ...string) ([]thread, error) {
	it := &processItem{users: users}
	if err := c.processBatches.Do(ctx, it); err != nil {
		return nil, c.unavailable("mariadb: read process list", err)
	}
	return it.out, it.err
}

// processBatch reads the process list once for a batch. It reads SHOW
// PROCESSLIST rather than information_schema.PROCESSLIST: the latter
// materialises an on-disk temporary table on every query and costs
// milliseconds; the former reads the thread list directly. Both need the
// PROCESS privilege to see other users' threads, which New checks.
func (c *Conn) processBatch(ctx context.Context, items []*processItem) {
	want := map[string]bool{}
	for _, it := range items {
		for _, u := range it.users {
			want[u] = true
		}
	}
	threads, err := c.readProcessList(ctx, want)
	for _, it := range items {
		if err != nil {
			it.err = err
			continue
		}
		for _, t := range threads {
			for _, u := range it.users {
				if t.User == u {
					it.out = append(it.out, t)
				}
			}
		}
	}
}

// readProcessList returns the connections of the wanted users.
func (c *Conn) readProcessList(ctx context.Context, want map[string]bool) ([]thread, error) {
	rows, err := c.db.QueryContext(ctx, "SHOW PROCESSLIST")
	if err != nil {
		return nil, c.unavailable("mariadb: read process list", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, c.unavailable("mariadb: read process list", err)
	}
	idx := map[string]int{}
	for i, name := range cols {
		idx[strings.ToLower(name)] = i
	}
	for _, need := range []string{"id", "user", "host", "command", "time"} {
		if _, ok := idx[need]; !ok {
			return nil, lapse.Internal("mariadb: read process list", fmt.Errorf("no column %s", need))
		}
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var out []thread
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, lapse.Internal("mariadb: scan process list", err)
		}
		if !want[vals[idx["user"]].String] {
			continue
		}
		t := thread{User: vals[idx["user"]].String}
		fmt.Sscan(vals[idx["id"]].String, &t.ID)
		fmt.Sscan(vals[idx["time"]].String, &t.Time)
		t.Host = vals[idx["host"]].String
		t.Command = vals[idx["command"]].String
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, c.unavailable("mariadb: read process list", err)
	}
	return out, nil
}
