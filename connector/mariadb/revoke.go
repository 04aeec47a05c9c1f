package mariadb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Revoke steps, by name; tests can sabotage each one (export_test.go).
const (
	stepDrop     = "drop"
	stepKill     = "kill"
	stepDefiners = "definers"
	stepGrantor  = "grantor"
	stepEvent    = "event"
)

// Revoke removes the grant's user and everything that carries its
// privilege, in an order that leaves no gap:
//
//  1. DROP USER IF EXISTS on every account of the user: from here on no
//     login can succeed. (DROP USER does not end existing connections.)
//  2. KILL HARD CONNECTION USER, then wait until the process list shows no
//     connection of the user, killing again while one appears (a login
//     that had passed authentication as the account was dropped).
//  3. Objects whose DEFINER is the user: dropped, re-created with another
//     definer, or kept, per Config.Definers. This runs after every session
//     is gone, so none can create another one behind the scan.
//  4. Table and routine privileges the user granted to others: revoked.
//  5. The expiry event, if any: dropped.
//
// Dropping first makes a separate ACCOUNT LOCK unnecessary: both close the
// door to new logins, and DROP does it in the statement that has to run
// anyway. Every step is idempotent and found by name, so Revoke can be
// repeated after a crash at any point, and works without State. Returns
// EINVALID for a bad grant ID and EUNAVAILABLE if the server cannot be
// reached.
func (c *Conn) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	if err := checkGrantID(req.GrantID); err != nil {
		return nil, err
	}
	st := c.decodeState(req.GrantID, req.State)
	users := c.users(req.GrantID, st)
	resp := &connector.RevokeResponse{}
	for _, u := range users {
		if err := c.revokeUser(ctx, u, resp); err != nil {
			return nil, err
		}
	}
	if !c.sabotage[stepEvent] {
		for _, e := range c.events(users, st) {
			schema, name, _ := strings.Cut(e, ".")
			if _, err := c.db.ExecContext(ctx, "DROP EVENT IF EXISTS "+quoteIdent(schema)+"."+quoteIdent(name)); err != nil {
				return nil, c.unavailable("mariadb: revoke: drop event "+e, err)
			}
		}
	}
	return resp, nil
}

func (c *Conn) revokeUser(ctx context.Context, user string, resp *connector.RevokeResponse) error {
	if user == c.admin.User {
		// Unreachable by construction (users are bound to the grant ID);
		// kept because killing the broker's own connections and dropping
		// its account would take the whole target out of its reach.
		return lapse.Internal("mariadb: revoke", fmt.Errorf("refusing to act on user %s", user))
	}
	act := func(format string, args ...any) {
		a := fmt.Sprintf(format, args...)
		resp.Actions = append(resp.Actions, a)
		c.logger.Info("revoke", "user", user, "action", a)
	}
	// Steps 1 and 2, for this user and any others being revoked at the
	// same time.
	it := &dropItem{user: user}
	if err := c.dropBatches.Do(ctx, it); err != nil {
		return c.unavailable("mariadb: revoke: drop and kill user "+user, err)
	}
	if it.alone {
		c.dropAlone(ctx, it)
	}
	if it.err != nil {
		return it.err
	}
	if len(it.hosts) == 0 {
		act("no account %s on the server", user)
	}
	if c.dropping() {
		for _, h := range it.hosts {
			act("dropped user %s@%s", user, h)
		}
	}
	kill := c.killing()
	switch {
	case c.cfg.UnsafeSkipSessionKill:
		c.logger.Warn("UNSAFE: unsafe_skip_session_kill is set: live sessions of the user were left running", "user", user)
		act("UNSAFE: did not kill connections of %s (unsafe_skip_session_kill)", user)
	case kill:
		n, err := c.killSessions(ctx, user, it.killed)
		if err != nil {
			return err
		}
		act("killed %d connections of %s", n, user)
	}
	tr, err := c.traces(ctx, []string{user}, false)
	if err != nil {
		return err
	}
	if !c.sabotage[stepDefiners] {
		for _, o := range tr[0].objects {
			a, err := c.handleDefiner(ctx, o)
			if err != nil {
				return err
			}
			act("%s", a)
		}
	}
	if !c.sabotage[stepGrantor] {
		for _, g := range tr[0].grants {
			a, err := c.revokeMadeGrant(ctx, g)
			if err != nil {
				return err
			}
			act("%s", a)
		}
	}
	return nil
}

func killStatement(user string) string { return "KILL HARD CONNECTION USER " + quoteIdent(user) }

// dropping and killing say whether steps 1 and 2 run.
func (c *Conn) dropping() bool { return !c.sabotage[stepDrop] }
func (c *Conn) killing() bool  { return !c.cfg.UnsafeSkipSessionKill && !c.sabotage[stepKill] }

// dropItem is one user's steps 1 and 2.
type dropItem struct {
	user       string
	hosts      []string // the hosts of the user's accounts, as found before the drop
	hostsKnown bool
	killed     int64 // connections the KILL ended; -1 if not known
	alone      bool  // the batch failed: the caller runs the steps on its own
	err        error
}

// dropAlone runs steps 1 and 2 for one user in two round trips: its
// accounts' hosts (unless a failed batch found them already), then DROP
// USER for all of them and KILL, in that order, in one compound statement.
func (c *Conn) dropAlone(ctx context.Context, it *dropItem) {
	if !it.hostsKnown {
		hosts, err := c.accountHosts(ctx, it.user)
		if err != nil {
			it.err = err
			return
		}
		it.hosts, it.hostsKnown = hosts, true
	}
	hosts := it.hosts
	var stmts []string
	if c.dropping() && len(hosts) > 0 {
		stmts = append(stmts, dropStatement(map[string][]string{it.user: hosts}, []string{it.user}))
	}
	kill := c.killing()
	if kill {
		stmts = append(stmts, killStatement(it.user))
	}
	killed, _, err := c.execBlock(ctx, stmts)
	if err != nil {
		var me *mysql.MySQLError
		if !kill || !errors.As(err, &me) || me.Number != errUnknownThread {
			it.err = c.unavailable("mariadb: revoke: drop and kill user "+it.user, err)
			return
		}
		// The KILL, which runs last, found no thread to end: the drop
		// stands, and the process list says whether anything is left.
		killed = -1
	}
	it.killed = killed
}

// dropStatement drops every account of users, hosts[user] each.
func dropStatement(hosts map[string][]string, users []string) string {
	var accts []string
	for _, u := range users {
		for _, h := range hosts[u] {
			accts = append(accts, account(u, h))
		}
	}
	return "DROP USER IF EXISTS " + strings.Join(accts, ", ")
}

// dropBatch runs steps 1 and 2 for every user of a batch in two round
// trips: the hosts of all their accounts; then one DROP USER for all of
// them — one pass through the server's privilege tables instead of one per
// user — and a KILL per user, each after the drop, in one compound
// statement that returns how many connections each KILL ended. If the
// batch fails, each caller runs its own steps, so that an error is its
// own.
func (c *Conn) dropBatch(ctx context.Context, items []*dropItem) {
	if len(items) == 1 {
		// Run here, not by the caller: while this batch runs, others
		// gather for the next.
		for _, it := range items {
			c.dropAlone(ctx, it)
		}
		return
	}
	var users []string
	index := map[string]int{}
	for _, it := range items {
		if _, ok := index[it.user]; !ok {
			index[it.user] = len(users)
			users = append(users, it.user)
		}
	}
	hosts, err := c.hostsOf(ctx, users)
	if err != nil {
		for _, it := range items {
			it.alone = true
		}
		return
	}
	for _, it := range items {
		it.hosts, it.hostsKnown = hosts[it.user], true
	}
	killed := make([]int64, len(users))
	if err := c.dropAndKill(ctx, users, hosts, killed); err != nil {
		// Some of it may have run; every step is idempotent.
		for _, it := range items {
			it.alone = true
		}
		return
	}
	for _, it := range items {
		it.killed = killed[index[it.user]]
	}
}

// hostsOf returns the hosts of the accounts of each of users.
func (c *Conn) hostsOf(ctx context.Context, users []string) (map[string][]string, error) {
	args := make([]any, 0, 2*len(users))
	for range 2 {
		for _, u := range users {
			args = append(args, u)
		}
	}
	rows, err := c.db.QueryContext(ctx, "SELECT FIELD(User, "+placeholders(len(users))+"), Host FROM mysql.global_priv WHERE User IN ("+placeholders(len(users))+")", args...)
	if err != nil {
		return nil, c.unavailable("mariadb: list accounts", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var i int
		var h string
		if err := rows.Scan(&i, &h); err != nil {
			return nil, lapse.Internal("mariadb: scan account host", err)
		}
		if i < 1 || i > len(users) {
			return nil, lapse.Internal("mariadb: list accounts", fmt.Errorf("row for user %d of %d", i, len(users)))
		}
		out[users[i-1]] = append(out[users[i-1]], h)
	}
	if err := rows.Err(); err != nil {
		return nil, c.unavailable("mariadb: list accounts", err)
	}
	return out, nil
}

// killCounts names the compound statement's variables that hold each
// user's KILL count: "k0, k1, …, k(n-1)".
func killCounts(n int) string {
	vs := make([]string, n)
	for i := range vs {
		vs[i] = "k" + strconv.Itoa(i)
	}
	return strings.Join(vs, ", ")
}

// dropAndKill drops the accounts of users and then kills each user's
// connections, recording in killed how many each KILL ended.
func (c *Conn) dropAndKill(ctx context.Context, users []string, hosts map[string][]string, killed []int64) error {
	var b strings.Builder
	b.WriteString("BEGIN NOT ATOMIC")
	kill := c.killing()
	if kill {
		b.WriteString(" DECLARE " + killCounts(len(users)) + " BIGINT DEFAULT 0;")
	}
	n := 0
	if c.dropping() && len(hosts) > 0 {
		b.WriteString(" " + dropStatement(hosts, users) + ";")
		n++
	}
	if kill {
		for i, u := range users {
			fmt.Fprintf(&b, " %s; SET k%d = ROW_COUNT();", killStatement(u), i)
		}
		b.WriteString(" SELECT " + killCounts(len(users)) + ";")
		n++
	}
	b.WriteString(" END")
	if n == 0 {
		return nil
	}
	if !kill {
		_, err := c.db.ExecContext(ctx, b.String())
		return err
	}
	rows, err := c.db.QueryContext(ctx, b.String())
	if err != nil {
		return err
	}
	defer rows.Close()
	ptrs := make([]any, len(killed))
	for i := range killed {
		ptrs[i] = &killed[i]
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return fmt.Errorf("no kill counts")
	}
	if err := rows.Scan(ptrs...); err != nil {
		return err
	}
	return rows.Close()
}

// accountHosts returns the host parts of every account named user.
func (c *Conn) accountHosts(ctx context.Context, user string) ([]string, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT Host FROM mysql.global_priv WHERE User = ?`, user)
	if err != nil {
		return nil, c.unavailable("mariadb: list accounts of "+user, err)
	}
	defer rows.Close()
	var hosts []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, lapse.Internal("mariadb: scan account host", err)
		}
		hosts = append(hosts, h)
	}
	if err := rows.Err(); err != nil {
		return nil, c.unavailable("mariadb: list accounts of "+user, err)
	}
	return hosts, nil
}

// killSessions waits, after a first KILL that ended killed connections
// (-1: unknown), until the process list shows none of user's, killing
// again while any appears (a login that had passed authentication as the
// account was dropped). A killed connection stays listed until its thread
// has rolled back and exited. It returns how many were killed in all, and
// gives up (without error: Verify reports what is left) after KillWait.
func (c *Conn) killSessions(ctx context.Context, user string, first int64) (int, error) {
	if first == 0 {
		// Nothing was connected, and with the account dropped nothing can
		// connect: there is nothing to wait for.
		return 0, nil
	}
	killed := int(max(first, 0))
	deadline := time.Now().Add(c.cfg.KillWait.D())
	pause := time.Millisecond
	for {
		left, err := c.processList(ctx, user)
		if err != nil {
			return killed, err
		}
		if len(left) == 0 || time.Now().After(deadline) {
			if len(left) > 0 {
				c.logger.Warn("connections still listed after kill", "user", user, "left", len(left))
			}
			return killed, nil
		}
		select {
		case <-ctx.Done():
			return killed, c.unavailable("mariadb: revoke: wait for killed connections of "+user, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 50*time.Millisecond)
		res, err := c.db.ExecContext(ctx, killStatement(user))
		if err != nil {
			var me *mysql.MySQLError
			if !errors.As(err, &me) || me.Number != errUnknownThread {
				return killed, c.unavailable("mariadb: revoke: kill connections of "+user, err)
			}
		} else if n, err := res.RowsAffected(); err == nil {
			killed += int(n)
		}
	}
}

// madeObject is a view, routine, trigger or event whose DEFINER is the
// grant's user.
type madeObject struct {
	Kind    string // VIEW, PROCEDURE, FUNCTION, PACKAGE, PACKAGE BODY, TRIGGER, EVENT
	Schema  string
	Name    string
	Definer string
}

func (o madeObject) String() string {
	return strings.ToLower(o.Kind) + " " + o.Schema + "." + o.Name + " (definer " + o.Definer + ")"
}

// madeGrant is a table or routine privilege the grant's user granted to
// another account (it held GRANT OPTION).
type madeGrant struct {
	Kind   string // TABLE, PROCEDURE, FUNCTION, PACKAGE, PACKAGE BODY
	Schema string
	Object string
	User   string
	Host   string
	Privs  string // the SET value: "Select,Insert"
}

func (g madeGrant) String() string {
	return fmt.Sprintf("%s on %s %s.%s to %s@%s", g.Privs, strings.ToLower(g.Kind), g.Schema, g.Object, g.User, g.Host)
}

// handleDefiner applies the definer policy to one object.
func (c *Conn) handleDefiner(ctx context.Context, o madeObject) (string, error) {
	switch c.cfg.Definers {
	case DefinerKeep:
		return "kept " + o.String(), nil
	case DefinerReassign:
		if err := c.reassign(ctx, o); err != nil {
			return "", err
		}
		return "reassigned " + o.String() + " to " + c.cfg.DefinerReassignTo, nil
	}
	obj := quoteIdent(o.Schema) + "." + quoteIdent(o.Name)
	var s string
	switch o.Kind {
	case "VIEW":
		s = "DROP VIEW IF EXISTS " + obj
	case "PROCEDURE", "FUNCTION", "PACKAGE", "PACKAGE BODY", "TRIGGER", "EVENT":
		s = "DROP " + o.Kind + " IF EXISTS " + obj
	default:
		return "", lapse.Internal("mariadb: drop definer object", fmt.Errorf("unknown object kind %q", o.Kind))
	}
	if _, err := c.db.ExecContext(ctx, s); err != nil {
		return "", c.unavailable("mariadb: revoke: drop "+o.String(), err)
	}
	return "dropped " + o.String(), nil
}

// showCreate names, per object kind, the SHOW CREATE statement, the column
// that holds the definition, and whether it reports sql_mode.
var showCreate = map[string]struct {
	kind, column string
	sqlMode      bool
}{
	"VIEW":         {"VIEW", "Create View", false},
	"PROCEDURE":    {"PROCEDURE", "Create Procedure", true},
	"FUNCTION":     {"FUNCTION", "Create Function", true},
	"PACKAGE":      {"PACKAGE", "Create Package", true},
	"PACKAGE BODY": {"PACKAGE BODY", "Create Package Body", true},
	"TRIGGER":      {"TRIGGER", "SQL Original Statement", true},
	"EVENT":        {"EVENT", "Create Event", true},
}

// reassign re-creates o with the configured definer: it reads the server's
// own SHOW CREATE output, replaces its DEFINER clause and runs it as CREATE
// OR REPLACE in the object's schema, under the sql_mode and character set
// the object was created with (as mysqldump does). It runs on a connection
// of its own that is discarded afterwards, so the session settings never
// leak into the pool.
func (c *Conn) reassign(ctx context.Context, o madeObject) error {
	sc, ok := showCreate[o.Kind]
	if !ok {
		return lapse.Internal("mariadb: reassign definer", fmt.Errorf("unknown object kind %q", o.Kind))
	}
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return c.unavailable("mariadb: reassign definer: connect", err)
	}
	defer func() {
		// Returning driver.ErrBadConn makes database/sql close the
		// connection instead of pooling it with a changed session.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}()
	rows, err := conn.QueryContext(ctx, "SHOW CREATE "+sc.kind+" "+quoteIdent(o.Schema)+"."+quoteIdent(o.Name))
	if err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == errNoSuchTable || me.Number == errNoSuchRoutine || me.Number == errNoSuchTrigger || me.Number == errNoSuchEvent) {
			return nil // already gone
		}
		return c.unavailable("mariadb: reassign: show create "+o.String(), err)
	}
	cols, err := rows.Columns()
	if err != nil {
		rows.Close()
		return c.unavailable("mariadb: reassign: show create "+o.String(), err)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if !rows.Next() {
		rows.Close()
		return nil // already gone
	}
	if err := rows.Scan(ptrs...); err != nil {
		rows.Close()
		return lapse.Internal("mariadb: reassign: scan show create", err)
	}
	rows.Close()
	get := func(name string) string {
		for i, c := range cols {
			if strings.EqualFold(c, name) {
				return vals[i].String
			}
		}
		return ""
	}
	def := get(sc.column)
	oldUser, oldHost, _ := strings.Cut(o.Definer, "@")
	oldClause := "DEFINER=" + account(oldUser, oldHost)
	newUser, newHost, _ := strings.Cut(c.cfg.DefinerReassignTo, "@")
	i := strings.Index(def, oldClause)
	if !strings.HasPrefix(def, "CREATE ") || i < 0 || i > 64 {
		return lapse.Internal("mariadb: reassign definer", fmt.Errorf("%s: unexpected SHOW CREATE output", o.String()))
	}
	def = "CREATE OR REPLACE " + def[len("CREATE "):i] + "DEFINER=" + account(newUser, newHost) + def[i+len(oldClause):]
	set := []string{"USE " + quoteIdent(o.Schema)}
	if cs := get("character_set_client"); cs != "" {
		set = append(set, "SET character_set_client = "+quoteString(cs))
	}
	if cl := get("collation_connection"); cl != "" {
		set = append(set, "SET collation_connection = "+quoteString(cl))
	}
	if sc.sqlMode {
		set = append(set, "SET SESSION sql_mode = "+quoteString(get("sql_mode")))
	}
	if o.Kind == "EVENT" {
		if tz := get("time_zone"); tz != "" {
			set = append(set, "SET time_zone = "+quoteString(tz))
		}
	}
	for _, s := range set {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return c.unavailable("mariadb: reassign: prepare session for "+o.String(), err)
		}
	}
	if _, err := conn.ExecContext(ctx, def); err != nil {
		return c.unavailable("mariadb: reassign: re-create "+o.String(), err)
	}
	return nil
}

// setPrivs maps the names MariaDB stores in tables_priv.Table_priv and
// procs_priv.Proc_priv to privilege keywords.
var setPrivs = map[string]string{
	"Select": "SELECT", "Insert": "INSERT", "Update": "UPDATE", "Delete": "DELETE",
	"Create": "CREATE", "Drop": "DROP", "Grant": "GRANT OPTION", "References": "REFERENCES",
	"Index": "INDEX", "Alter": "ALTER", "Create View": "CREATE VIEW", "Show view": "SHOW VIEW",
	"Trigger": "TRIGGER", "Delete versioning rows": "DELETE HISTORY",
	"Execute": "EXECUTE", "Alter Routine": "ALTER ROUTINE",
}

// revokeMadeGrant revokes a privilege the grant's user passed on. MariaDB
// keeps one row per grantee and object with the last grantor, so the
// privileges of that row are revoked as a whole: if another account also
// granted them, that grant is lost too — preferable to a privilege that
// outlives the grant it came from.
func (c *Conn) revokeMadeGrant(ctx context.Context, g madeGrant) (string, error) {
	var privs []string
	for _, p := range strings.Split(g.Privs, ",") {
		if kw, ok := setPrivs[p]; ok {
			privs = append(privs, kw)
		}
	}
	if len(privs) == 0 {
		return "nothing to revoke for " + g.String(), nil
	}
	on := quoteIdent(g.Schema) + "." + quoteIdent(g.Object)
	switch g.Kind {
	case "TABLE":
	case "PROCEDURE", "FUNCTION", "PACKAGE", "PACKAGE BODY":
		on = g.Kind + " " + on
	default:
		return "", lapse.Internal("mariadb: revoke made grant", fmt.Errorf("unknown object kind %q", g.Kind))
	}
	s := "REVOKE " + strings.Join(privs, ", ") + " ON " + on + " FROM " + account(g.User, g.Host)
	if _, err := c.db.ExecContext(ctx, s); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == errNoSuchTableGrant || me.Number == errNoSuchProcGrant || me.Number == errCannotUser || me.Number == errNoSuchGrant) {
			return "already gone: " + g.String(), nil // no such grant any more
		}
		return "", c.unavailable("mariadb: revoke: revoke "+g.String(), err)
	}
	return "revoked " + g.String(), nil
}
