package mariadb

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse/connector"
)

// Admin powers (connector.EscalationChecker). A grant's user holds the
// spec's grants and, through its roles, everything those roles hold and
// every role granted to them. It counts as admin powers:
//
//   - WITH GRANT OPTION, at any level: the user can pass privileges on,
//     and MariaDB records no grantor for database-level grants, so Revoke
//     cannot take them back.
//   - ADMIN OPTION on a role: granting that role to anyone.
//   - global privileges that manage accounts, act as another account,
//     bypass access control or control the server: ALL PRIVILEGES, SUPER,
//     CREATE USER, SET USER, FILE, RELOAD, SHUTDOWN, CONNECTION ADMIN,
//     READ_ONLY ADMIN, FEDERATED ADMIN, BINLOG ADMIN, BINLOG REPLAY and
//     the replication privileges (REPLICATION SLAVE streams every row of
//     the server's binary log, whatever the table privileges say);
//   - PROXY: logging in as another account;
//   - any privilege on the mysql schema, directly, through a database
//     pattern that matches it (`m%`.*) or through a global table
//     privilege (SELECT on *.*): it holds the accounts, their password
//     hashes, roles and grants.
//
// PROCESS and SHOW DATABASES do not count: they show what runs and what
// exists, and change nothing.

// adminGlobal are the global privileges that count as admin powers, as
// SHOW GRANTS spells them.
var adminGlobal = map[string]bool{
	"ALL PRIVILEGES": true, "SUPER": true, "CREATE USER": true, "SET USER": true,
	"FILE": true, "RELOAD": true, "SHUTDOWN": true, "CONNECTION ADMIN": true,
	"READ_ONLY ADMIN": true, "FEDERATED ADMIN": true, "BINLOG ADMIN": true,
	"BINLOG REPLAY": true, "REPLICATION SLAVE": true, "REPLICATION REPLICA": true,
	"REPLICATION MASTER ADMIN": true, "REPLICATION SLAVE ADMIN": true,
	"REPLICA ADMIN": true,
}

// harmlessGlobal are the global privileges that reach no table of the
// mysql schema and change nothing (REPLICATION CLIENT is BINLOG MONITOR:
// log positions only); every other global privilege that is not in
// adminGlobal (SELECT, INSERT, …) applies to the mysql schema too.
var harmlessGlobal = map[string]bool{
	"USAGE": true, "PROCESS": true, "SHOW DATABASES": true, "REPLICATION CLIENT": true,
	"BINLOG MONITOR": true, "SLAVE MONITOR": true, "REPLICA MONITOR": true,
	"CREATE TEMPORARY TABLES": true,
}

// maxEscalationRoles bounds the roles one check follows: a catalog's role
// graph is small, and a cycle or a huge graph must not make it run away.
const maxEscalationRoles = 256

// erNonexistingGrant is MariaDB's error for SHOW GRANTS FOR an unknown
// role or user.
const erNonexistingGrant = 1141

// AdminPowers implements connector.EscalationChecker: the admin powers
// (see above) of the spec's own grants and, read with SHOW GRANTS, of its
// roles and every role they reach. A role that does not exist carries
// nothing (Grant refuses it). Returns EINVALID for a bad spec and
// EUNAVAILABLE if the server cannot be read.
func (c *Conn) AdminPowers(ctx context.Context, spec map[string]any) ([]string, error) {
	s, err := c.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	var out []string
	add := func(line string) {
		if !slices.Contains(out, line) {
			out = append(out, line)
		}
	}
	if s.GrantOption {
		add("the spec grants its privileges WITH GRANT OPTION")
	}
	for _, g := range s.Grants {
		if g.scope() != scopeGlobal {
			continue // the spec refuses the mysql schema by name, and escapes _
		}
		if powers := globalPowers(g.Privileges); powers != "" {
			add("the spec grants " + powers)
		}
	}

	// SHOW GRANTS FOR a role lists the grants of every role it reaches
	// too, each under its own grantee, so one query per entitled role
	// usually covers the graph; roles it does not cover are followed.
	type visit struct{ role, via string }
	queue := make([]visit, 0, len(s.Roles))
	for _, r := range s.Roles {
		queue = append(queue, visit{r, r})
	}
	seen := map[string]bool{}
	for len(queue) > 0 && len(seen) < maxEscalationRoles {
		v := queue[0]
		queue = queue[1:]
		if seen[v.role] {
			continue
		}
		seen[v.role] = true
		lines, err := c.showGrants(ctx, v.role)
		if err != nil {
			return nil, err
		}
		covered := map[string]bool{}
		for _, line := range lines {
			g, ok := parseGrantLine(line)
			if !ok {
				continue
			}
			covered[g.grantee] = true
			who := "role " + v.via
			if g.grantee != v.via {
				who += " (through its membership in " + g.grantee + ")"
			}
			if g.role != "" {
				if g.admin {
					add(who + " holds ADMIN OPTION on role " + g.role)
				}
				if !seen[g.role] {
					queue = append(queue, visit{g.role, v.via})
				}
				continue
			}
			for _, p := range g.powers() {
				add(who + " " + p)
			}
		}
		// Roles SHOW GRANTS already expanded need no query of their own.
		for i := range queue {
			if covered[queue[i].role] {
				seen[queue[i].role] = true
			}
		}
	}
	for i, line := range out {
		out[i] = printable(line)
	}
	return out, nil
}

// maxFindingText bounds one line of AdminPowers.
const maxFindingText = 300

// printable bounds s and replaces control characters: role and object
// names come from the server's catalog and may hold anything.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= maxFindingText {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// showGrants returns SHOW GRANTS FOR role, or nothing if there is no such
// role.
func (c *Conn) showGrants(ctx context.Context, role string) ([]string, error) {
	// The name has passed identRE (spec roles) or comes from the server's
	// own output, and quoteIdent doubles any backquote.
	lines, err := c.queryLines(ctx, "SHOW GRANTS FOR "+quoteIdent(role))
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == erNonexistingGrant {
		return nil, nil
	}
	if err != nil {
		return nil, c.unavailable("mariadb: check the entitled roles for admin powers", err)
	}
	return lines, nil
}

// queryLines runs a statement whose result is one text column.
func (c *Conn) queryLines(ctx context.Context, q string) ([]string, error) {
	rows, err := c.db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return nil, err
		}
		lines = append(lines, l)
	}
	return lines, rows.Err()
}

// grantLine is one line of SHOW GRANTS: a role granted to grantee (role
// set), or privileges on an object.
type grantLine struct {
	grantee string
	// role is the granted role, and admin its WITH ADMIN OPTION.
	role  string
	admin bool
	// privileges are the keywords (column lists dropped), on the object:
	// global (*.*), a database pattern (db.*), a table or routine in a
	// database, or a PROXY account.
	privileges []string
	global     bool
	db         string // unquoted; a LIKE pattern when table is ""
	table      string
	proxy      string
	grantOpt   bool
}

// powers describes the admin powers of a privilege line.
func (g *grantLine) powers() []string {
	var out []string
	if g.proxy != "" {
		out = append(out, "holds PROXY on "+g.proxy+" (it can log in as that account)")
	}
	on := g.db + "." + g.table
	switch {
	case g.global:
		on = "*.*"
		if p := globalPowers(g.privileges); p != "" {
			out = append(out, "holds "+p)
		}
	case g.proxy == "" && ((g.table == "*" && likeMatch(g.db, "mysql")) || (g.table != "*" && strings.EqualFold(g.db, "mysql"))):
		if privs := withoutUsage(g.privileges); len(privs) > 0 {
			out = append(out, "holds "+strings.Join(privs, ", ")+" on "+on+", which covers the mysql schema (accounts, password hashes, roles and grants)")
		}
	}
	if g.grantOpt && g.proxy == "" {
		out = append(out, "holds GRANT OPTION on "+on)
	}
	return out
}

// globalPowers describes what of privileges, granted on *.*, is an admin
// power, or returns "".
func globalPowers(privileges []string) string {
	var admin, tables []string
	for _, p := range privileges {
		switch {
		case adminGlobal[p]:
			admin = append(admin, p)
		case !harmlessGlobal[p]:
			tables = append(tables, p)
		}
	}
	var parts []string
	if len(admin) > 0 {
		parts = append(parts, strings.Join(admin, ", ")+" on *.*")
	}
	if len(tables) > 0 {
		parts = append(parts, strings.Join(tables, ", ")+" on *.*, which covers the mysql schema (accounts, password hashes, roles and grants)")
	}
	return strings.Join(parts, "; ")
}

func withoutUsage(privileges []string) []string {
	var out []string
	for _, p := range privileges {
		if p != "USAGE" {
			out = append(out, p)
		}
	}
	return out
}

// parseGrantLine reads one line of SHOW GRANTS. It returns false for lines
// it does not understand (SET DEFAULT ROLE, a future syntax), which carry
// no grant of their own.
func parseGrantLine(line string) (grantLine, bool) {
	var g grantLine
	rest, ok := strings.CutPrefix(line, "GRANT ")
	if !ok {
		return g, false
	}
	toks := splitTop(rest)
	on, to := -1, -1
	for i, t := range toks {
		switch {
		case t == "ON" && on < 0 && to < 0:
			on = i
		case t == "TO" && to < 0:
			to = i
		}
	}
	if to < 1 || to+1 >= len(toks) {
		return g, false
	}
	g.grantee = unquote(toks[to+1])
	tail := strings.Join(toks[to+2:], " ")
	g.grantOpt = strings.Contains(tail, "WITH GRANT OPTION")
	if on < 0 {
		// GRANT `role` TO `grantee` [WITH ADMIN OPTION]
		if to != 1 {
			return g, false
		}
		g.role = unquote(toks[0])
		g.admin = strings.Contains(tail, "WITH ADMIN OPTION")
		return g, true
	}
	g.privileges = privilegeKeywords(strings.Join(toks[:on], " "))
	obj := toks[on+1 : to]
	if len(obj) > 0 && slices.Contains([]string{"FUNCTION", "PROCEDURE", "PACKAGE"}, obj[0]) {
		obj = obj[1:]
		if len(obj) > 0 && obj[0] == "BODY" {
			obj = obj[1:]
		}
	}
	if len(obj) != 1 {
		return g, false
	}
	if slices.Contains(g.privileges, "PROXY") {
		g.proxy = obj[0]
		return g, true
	}
	if obj[0] == "*.*" {
		g.global = true
		return g, true
	}
	db, table, ok := splitObject(obj[0])
	if !ok {
		return g, false
	}
	g.db, g.table = db, table
	return g, true
}

// splitTop splits s at spaces outside backquotes, quotes and parentheses.
func splitTop(s string) []string {
	var out []string
	var cur strings.Builder
	var quote byte
	depth := 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0:
			cur.WriteByte(ch)
			if ch == '\\' && quote == '\'' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			} else if ch == quote {
				quote = 0
			}
		case ch == '`' || ch == '\'' || ch == '"':
			quote = ch
			cur.WriteByte(ch)
		case ch == '(':
			depth++
			cur.WriteByte(ch)
		case ch == ')':
			depth--
			cur.WriteByte(ch)
		case ch == ' ' && depth == 0:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(ch)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// privilegeKeywords reads "SELECT (`a`, `b`), UPDATE, CREATE USER" as its
// keywords, column lists dropped.
func privilegeKeywords(s string) []string {
	var out []string
	depth := 0
	var quote byte
	start := 0
	flush := func(end int) {
		p := s[start:end]
		if i := strings.IndexByte(p, '('); i >= 0 {
			p = p[:i]
		}
		if p = strings.Join(strings.Fields(p), " "); p != "" {
			out = append(out, strings.ToUpper(p))
		}
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			}
		case ch == '`' || ch == '\'':
			quote = ch
		case ch == '(':
			depth++
		case ch == ')':
			depth--
		case ch == ',' && depth == 0:
			flush(i)
			start = i + 1
		}
	}
	flush(len(s))
	return out
}

// splitObject reads `db`.* or `db`.`table`, unquoted.
func splitObject(s string) (db, table string, ok bool) {
	db, rest, ok := cutIdent(s)
	if !ok || !strings.HasPrefix(rest, ".") {
		return "", "", false
	}
	rest = rest[1:]
	if rest == "*" {
		return db, "*", true
	}
	table, rest, ok = cutIdent(rest)
	if !ok || rest != "" {
		return "", "", false
	}
	return db, table, true
}

// cutIdent reads one backquoted identifier at the start of s.
func cutIdent(s string) (ident, rest string, ok bool) {
	if !strings.HasPrefix(s, "`") {
		return "", "", false
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '`' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '`' {
			b.WriteByte('`')
			i++
			continue
		}
		return b.String(), s[i+1:], true
	}
	return "", "", false
}

// unquote removes the backquotes of a role name, or the quotes of a
// 'user'@'host' account, for messages.
func unquote(s string) string {
	if id, rest, ok := cutIdent(s); ok && rest == "" {
		return id
	}
	s = strings.NewReplacer("'@'", "@", "`@`", "@").Replace(s)
	return strings.Trim(s, "'`")
}

// likeMatch reports whether the database pattern p of a database-level
// grant (% and _ wildcards, \ escapes) matches name, case-insensitively as
// MariaDB compares database names on most systems.
func likeMatch(p, name string) bool {
	p, name = strings.ToLower(p), strings.ToLower(name)
	var match func(i, j int) bool
	match = func(i, j int) bool {
		for i < len(p) {
			switch p[i] {
			case '%':
				for k := j; k <= len(name); k++ {
					if match(i+1, k) {
						return true
					}
				}
				return false
			case '_':
				if j >= len(name) {
					return false
				}
			case '\\':
				if i+1 < len(p) {
					i++
				}
				if j >= len(name) || p[i] != name[j] {
					return false
				}
			default:
				if j >= len(name) || p[i] != name[j] {
					return false
				}
			}
			i++
			j++
		}
		return j == len(name)
	}
	return match(0, 0)
}

var _ connector.EscalationChecker = (*Conn)(nil)
