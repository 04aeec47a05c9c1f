package mariadb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
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
	hosts, err := c.accountHosts(ctx, user)
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		act("no account %s on the server", user)
	}
	if !c.sabotage[stepDrop] {
		for _, h := range hosts {
			if _, err := c.db.ExecContext(ctx, "DROP USER IF EXISTS "+account(user, h)); err != nil {
				return c.unavailable("mariadb: revoke: drop user "+user+"@"+h, err)
			}
			act("dropped user %s@%s", user, h)
		}
	}
	switch {
	case c.cfg.UnsafeSkipSessionKill:
		c.logger.Warn("UNSAFE: unsafe_skip_session_kill is set: live sessions of the user were left running", "user", user)
		act("UNSAFE: did not kill connections of %s (unsafe_skip_session_kill)", user)
	case !c.sabotage[stepKill]:
		n, err := c.killSessions(ctx, user)
		if err != nil {
			return err
		}
		act("killed %d connections of %s", n, user)
	}
	objs, grants, err := c.scanMadeBy(ctx, user)
	if err != nil {
		return err
	}
	if !c.sabotage[stepDefiners] {
		for _, o := range objs {
			a, err := c.handleDefiner(ctx, o)
			if err != nil {
				return err
			}
			act("%s", a)
		}
	}
	if !c.sabotage[stepGrantor] {
		for _, g := range grants {
			a, err := c.revokeMadeGrant(ctx, g)
			if err != nil {
				return err
			}
			act("%s", a)
		}
	}
	return nil
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

// killSessions kills every connection of user and waits until the process
// list shows none, killing again while any appears. A killed connection
// stays listed until its thread has rolled back and exited. It returns how
// many were killed, and gives up (without error: Verify reports what is
// left) after KillWait.
func (c *Conn) killSessions(ctx context.Context, user string) (int, error) {
	killed := 0
	deadline := time.Now().Add(c.cfg.KillWait.D())
	pause := time.Millisecond
	for {
		res, err := c.db.ExecContext(ctx, "KILL HARD CONNECTION USER "+quoteIdent(user))
		if err != nil {
			var me *mysql.MySQLError
			if !errors.As(err, &me) || me.Number != errUnknownThread {
				return killed, c.unavailable("mariadb: revoke: kill connections of "+user, err)
			}
		} else if n, err := res.RowsAffected(); err == nil {
			killed += int(n)
			if killed == 0 {
				// Nothing was connected, and with the account dropped nothing
				// can connect: there is nothing to wait for.
				return 0, nil
			}
		}
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
	}
}

// thread is one row of the process list.
type thread struct {
	ID      int64
	Host    string
	Command string
	Time    int64
}

// processList returns the connections of user. It reads SHOW PROCESSLIST
// rather than information_schema.PROCESSLIST: the latter materialises an
// on-disk temporary table on every query and costs milliseconds; the
// former reads the thread list directly. Both need the PROCESS privilege
// to see other users' threads, which New checks.
func (c *Conn) processList(ctx context.Context, user string) ([]thread, error) {
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
		if vals[idx["user"]].String != user {
			continue
		}
		var t thread
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

// madeByQuery finds everything a user left behind that outlives DROP USER:
// objects it is the DEFINER of, and privileges it granted (Grantor). The
// definer and grantor columns hold "user@host"; comparing the part before
// the first "@" matches every host of the user exactly (no LIKE, so no
// wildcard in the name can widen the match). Views and triggers live in
// table definitions, which the server must open to read: the two virtual
// schemas, where nobody can create either, are excluded, which makes the
// scan an order of magnitude cheaper.
const madeByQuery = `
SELECT 'o', type, db, name, definer, '', '', '' FROM mysql.proc WHERE LEFT(definer, ?) = ?
UNION ALL SELECT 'o', 'EVENT', db, name, definer, '', '', '' FROM mysql.event WHERE LEFT(definer, ?) = ?
UNION ALL SELECT 'o', 'VIEW', TABLE_SCHEMA, TABLE_NAME, DEFINER, '', '', '' FROM information_schema.VIEWS
  WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema') AND LEFT(DEFINER, ?) = ?
UNION ALL SELECT 'o', 'TRIGGER', TRIGGER_SCHEMA, TRIGGER_NAME, DEFINER, '', '', '' FROM information_schema.TRIGGERS
  WHERE TRIGGER_SCHEMA NOT IN ('information_schema', 'performance_schema') AND LEFT(DEFINER, ?) = ?
UNION ALL SELECT 'g', 'TABLE', Db, Table_name, Grantor, User, Host, Table_priv FROM mysql.tables_priv WHERE LEFT(Grantor, ?) = ? AND User <> ?
UNION ALL SELECT 'g', Routine_type, Db, Routine_name, Grantor, User, Host, Proc_priv FROM mysql.procs_priv WHERE LEFT(Grantor, ?) = ? AND User <> ?`

func (c *Conn) scanMadeBy(ctx context.Context, user string) ([]madeObject, []madeGrant, error) {
	pat := user + "@"
	n := len(pat)
	rows, err := c.db.QueryContext(ctx, madeByQuery, n, pat, n, pat, n, pat, n, pat, n, pat, user, n, pat, user)
	if err != nil {
		return nil, nil, c.unavailable("mariadb: find objects and grants made by "+user, err)
	}
	defer rows.Close()
	var objs []madeObject
	var grants []madeGrant
	for rows.Next() {
		var what, kind, schema, name, by, gu, gh, privs string
		if err := rows.Scan(&what, &kind, &schema, &name, &by, &gu, &gh, &privs); err != nil {
			return nil, nil, lapse.Internal("mariadb: scan objects made by "+user, err)
		}
		if what == "o" {
			objs = append(objs, madeObject{Kind: kind, Schema: schema, Name: name, Definer: by})
		} else {
			grants = append(grants, madeGrant{Kind: kind, Schema: schema, Object: name, User: gu, Host: gh, Privs: privs})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, c.unavailable("mariadb: find objects and grants made by "+user, err)
	}
	return objs, grants, nil
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
