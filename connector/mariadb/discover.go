package mariadb

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// acct identifies an account or a role (Host "" for roles).
type acct struct{ user, host string }

func (a acct) String() string {
	if a.host == "" {
		return a.user
	}
	return a.user + "@" + a.host
}

// catalog is the part of the privilege tables Discover reads.
type catalog struct {
	isRole  map[acct]bool
	global  map[acct]map[string]bool // account → privilege columns set to Y
	dbRows  []dbRow
	tblRows []tblRow
	roles   []roleRow
}

type dbRow struct {
	a    acct
	db   string // a pattern: % and _ are wildcards, \ escapes
	cols map[string]bool
}

type tblRow struct {
	a            acct
	db, table    string
	tablePrivSet map[string]bool
}

type roleRow struct {
	a    acct
	role string
}

// Discover lists the users Lapse made (by prefix), with the roles and
// entitled privileges they hold, and every other account or role that
// holds an entitled role or privilege — directly, through a wildcard
// database grant, a global privilege, or a chain of roles. Those are
// standing privilege, which a zero-standing-privilege target should not
// have. Returns EINVALID if a spec is invalid, EUNAVAILABLE if the server
// cannot be reached.
func (c *Conn) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	var specs []*Spec
	for i, raw := range req.Specs {
		s, err := c.ParseSpec(raw)
		if err != nil {
			return nil, lapse.FieldErrorf(lapse.EINVALID, fmt.Sprintf("specs[%d]", i), "%s", lapse.ErrorMessage(err))
		}
		specs = append(specs, s)
	}
	cat, err := c.readCatalog(ctx)
	if err != nil {
		return nil, err
	}

	held := map[acct][]string{} // entitled privileges held directly
	add := func(a acct, p string) {
		if !slices.Contains(held[a], p) {
			held[a] = append(held[a], p)
		}
	}
	entitledRoles := map[string]bool{}
	for _, s := range specs {
		for _, r := range s.Roles {
			entitledRoles[r] = true
		}
		for _, g := range s.Grants {
			cat.holders(g, add)
		}
	}

	// Close over role membership: whoever holds a role that carries an
	// entitled privilege (or is an entitled role) holds it too.
	privRoles := map[string]bool{}
	for r := range entitledRoles {
		privRoles[r] = true
	}
	for a := range held {
		if cat.isRole[a] {
			privRoles[a.user] = true
		}
	}
	viaRole := map[acct][]string{}
	for changed := true; changed; {
		changed = false
		for _, m := range cat.roles {
			if !privRoles[m.role] || slices.Contains(viaRole[m.a], "role:"+m.role) {
				continue
			}
			viaRole[m.a] = append(viaRole[m.a], "role:"+m.role)
			changed = true
			if cat.isRole[m.a] && !privRoles[m.a.user] {
				privRoles[m.a.user] = true
			}
		}
	}

	var out []connector.DiscoveredPrincipal
	seen := map[acct]bool{}
	// Every account with the prefix is Lapse's, whatever it holds.
	for a := range cat.global {
		if cat.isRole[a] || !strings.HasPrefix(a.user, c.cfg.Prefix) {
			continue
		}
		seen[a] = true
		privs := append([]string{}, held[a]...)
		for _, m := range cat.roles {
			if m.a == a && !slices.Contains(privs, "role:"+m.role) {
				privs = append(privs, "role:"+m.role)
			}
		}
		sort.Strings(privs)
		out = append(out, connector.DiscoveredPrincipal{
			Name:       a.String(),
			Ephemeral:  true,
			GrantID:    grantIDFromUser(c.cfg.Prefix, a.user),
			Privileges: privs,
		})
	}
	standing := map[acct][]string{}
	for a, p := range held {
		standing[a] = append(standing[a], p...)
	}
	for a, p := range viaRole {
		standing[a] = append(standing[a], p...)
	}
	for a, privs := range standing {
		if seen[a] || (cat.isRole[a] && entitledRoles[a.user]) {
			continue
		}
		sort.Strings(privs)
		out = append(out, connector.DiscoveredPrincipal{Name: a.String(), Privileges: slices.Compact(privs)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return &connector.DiscoverResponse{Principals: out}, nil
}

// holders calls add for every account that holds a privilege of g.
func (cat *catalog) holders(g Grant, add func(acct, string)) {
	scope := g.scope()
	var defs []privDef
	if len(g.Privileges) == 1 && g.Privileges[0] == allPrivileges {
		for _, d := range privileges {
			if d.scopes&scope != 0 {
				defs = append(defs, d)
			}
		}
	} else {
		for _, p := range g.Privileges {
			d, _ := lookupPriv(p)
			defs = append(defs, d)
		}
	}
	for _, d := range defs {
		for a, cols := range cat.global {
			if cols[d.column] {
				add(a, d.keyword+" on *.*")
			}
		}
		if scope == scopeGlobal {
			continue
		}
		for _, r := range cat.dbRows {
			if r.cols[d.column] && dbPatternMatch(r.db, g.Database) {
				add(r.a, d.keyword+" on "+r.db+".*")
			}
		}
		if scope == scopeTable && d.tableAs != "" {
			for _, r := range cat.tblRows {
				if r.db == g.Database && r.table == g.Table && r.tablePrivSet[d.tableAs] {
					add(r.a, d.keyword+" on "+r.db+"."+r.table)
				}
			}
		}
	}
}

// privColumns lists the privilege columns Discover reads; they come from
// the allow-list, never from input.
func privColumns(global bool) []string {
	var cols []string
	for _, d := range privileges {
		if global || d.scopes&scopeDatabase != 0 {
			cols = append(cols, d.column)
		}
	}
	return cols
}

func (c *Conn) readCatalog(ctx context.Context) (*catalog, error) {
	cat := &catalog{isRole: map[acct]bool{}, global: map[acct]map[string]bool{}}
	gcols := privColumns(true)
	// mysql.user is a view over mysql.global_priv with one column per
	// global privilege. Its Password and authentication_string columns are
	// deliberately not read.
	rows, err := c.db.QueryContext(ctx, "SELECT User, Host, is_role, "+strings.Join(gcols, ", ")+" FROM mysql.user")
	if err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.user", err)
	}
	if err := scanPrivRows(rows, len(gcols), func(key []string, ys []string) {
		a := acct{key[0], key[1]}
		cat.isRole[a] = key[2] == "Y"
		cat.global[a] = yesSet(gcols, ys)
	}, 3); err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.user", err)
	}
	dcols := privColumns(false)
	rows, err = c.db.QueryContext(ctx, "SELECT User, Host, Db, "+strings.Join(dcols, ", ")+" FROM mysql.db")
	if err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.db", err)
	}
	if err := scanPrivRows(rows, len(dcols), func(key []string, ys []string) {
		cat.dbRows = append(cat.dbRows, dbRow{a: acct{key[0], key[1]}, db: key[2], cols: yesSet(dcols, ys)})
	}, 3); err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.db", err)
	}
	rows, err = c.db.QueryContext(ctx, "SELECT User, Host, Db, Table_name, Table_priv FROM mysql.tables_priv")
	if err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.tables_priv", err)
	}
	if err := scanPrivRows(rows, 0, func(key []string, _ []string) {
		set := map[string]bool{}
		for _, p := range strings.Split(key[4], ",") {
			set[p] = true
		}
		cat.tblRows = append(cat.tblRows, tblRow{a: acct{key[0], key[1]}, db: key[2], table: key[3], tablePrivSet: set})
	}, 5); err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.tables_priv", err)
	}
	rows, err = c.db.QueryContext(ctx, "SELECT User, Host, Role FROM mysql.roles_mapping")
	if err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.roles_mapping", err)
	}
	if err := scanPrivRows(rows, 0, func(key []string, _ []string) {
		cat.roles = append(cat.roles, roleRow{a: acct{key[0], key[1]}, role: key[2]})
	}, 3); err != nil {
		return nil, c.unavailable("mariadb: discover: read mysql.roles_mapping", err)
	}
	return cat, nil
}

// rowScanner is the part of *sql.Rows scanPrivRows uses.
type rowScanner interface {
	Next() bool
	Scan(...any) error
	Err() error
	Close() error
}

// scanPrivRows reads rows of nKey string columns followed by nCols Y/N
// columns.
func scanPrivRows(rows rowScanner, nCols int, f func(key, ys []string), nKey int) error {
	defer rows.Close()
	for rows.Next() {
		vals := make([]string, nKey+nCols)
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		f(vals[:nKey], vals[nKey:])
	}
	return rows.Err()
}

func yesSet(cols, ys []string) map[string]bool {
	m := map[string]bool{}
	for i, y := range ys {
		if y == "Y" {
			m[cols[i]] = true
		}
	}
	return m
}

// dbPatternMatch reports whether a mysql.db Db pattern matches name, by the
// server's rules: % matches any run, _ any one character, \ escapes.
func dbPatternMatch(pattern, name string) bool {
	if pattern == "" {
		return name == ""
	}
	switch pattern[0] {
	case '%':
		for i := 0; i <= len(name); i++ {
			if dbPatternMatch(pattern[1:], name[i:]) {
				return true
			}
		}
		return false
	case '_':
		return name != "" && dbPatternMatch(pattern[1:], name[1:])
	case '\\':
		if len(pattern) > 1 {
			return name != "" && name[0] == pattern[1] && dbPatternMatch(pattern[2:], name[1:])
		}
	}
	return name != "" && name[0] == pattern[0] && dbPatternMatch(pattern[1:], name[1:])
}
