package mariadb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/lapsehq/lapse"
)

// Spec is what an entitlement grants on a MariaDB target. In YAML:
//
//	spec:
//	  roles: [app_read]            # existing roles; the first is the default role
//	  grants:
//	    - database: app
//	      table: orders            # omit, or "*", for every table of the database
//	      privileges: [SELECT, UPDATE]
//	  max_user_connections: 5      # optional per-account connection limit
//
// Every name is checked against an allow-list before any statement is
// built. A spec must grant at least one role or privilege.
type Spec struct {
	// Roles are existing MariaDB roles granted to the user. MariaDB
	// activates one role at login: DefaultRole, or else the first.
	Roles []string `json:"roles,omitempty"`
	// DefaultRole is the role active at login; it must be one of Roles.
	DefaultRole string `json:"default_role,omitempty"`
	// Grants are object privileges granted to the user directly.
	Grants []Grant `json:"grants,omitempty"`
	// GrantOption adds WITH GRANT OPTION to Grants. It lets the temporary
	// user pass its privileges on, which Lapse can undo only for table and
	// routine grants (MariaDB records no grantor for database-level grants),
	// so it is flagged in Info and should be avoided.
	GrantOption bool `json:"grant_option,omitempty"`
	// MaxUserConnections limits simultaneous connections of the user
	// (0: the server's default).
	MaxUserConnections int `json:"max_user_connections,omitempty"`
}

// Grant is a list of privileges on a database, a table, or everything
// (Database "*").
type Grant struct {
	Database   string   `json:"database"`
	Table      string   `json:"table,omitempty"`
	Privileges []string `json:"privileges"`
}

// Limits on a spec's size: catalogs are written by people, and a spec far
// beyond these is a mistake.
const (
	maxRoles              = 16
	maxGrants             = 64
	maxPrivilegesPerGrant = 32
	maxUserConnections    = 10000
	maxSpecBytes          = 64 << 10
)

// identRE admits the names a spec may use for roles, databases and tables:
// ASCII letters, digits and underscores. Anything else (quotes, `;`, NUL,
// spaces, `%`, non-ASCII, invalid UTF-8) is rejected before a statement is
// built.
var identRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// privScope says where a privilege may be granted.
type privScope uint8

const (
	scopeGlobal privScope = 1 << iota
	scopeDatabase
	scopeTable
	scopeAll = scopeGlobal | scopeDatabase | scopeTable
)

// privDef is one grantable privilege: its SQL keyword, the mysql.user and
// mysql.db column that records it, and its mysql.tables_priv name.
type privDef struct {
	keyword string
	column  string
	tableAs string
	scopes  privScope
}

// privileges is the allow-list of privilege keywords a spec may grant.
// Administrative privileges (SUPER, FILE, SHUTDOWN, CREATE USER, GRANT
// OPTION, global ALL, …) are absent on purpose: a temporary account that
// holds them could make itself permanent.
var privileges = []privDef{
	{"SELECT", "Select_priv", "Select", scopeAll},
	{"INSERT", "Insert_priv", "Insert", scopeAll},
	{"UPDATE", "Update_priv", "Update", scopeAll},
	{"DELETE", "Delete_priv", "Delete", scopeAll},
	{"CREATE", "Create_priv", "Create", scopeAll},
	{"DROP", "Drop_priv", "Drop", scopeAll},
	{"INDEX", "Index_priv", "Index", scopeAll},
	{"ALTER", "Alter_priv", "Alter", scopeAll},
	{"REFERENCES", "References_priv", "References", scopeAll},
	{"TRIGGER", "Trigger_priv", "Trigger", scopeAll},
	{"CREATE VIEW", "Create_view_priv", "Create View", scopeAll},
	{"SHOW VIEW", "Show_view_priv", "Show view", scopeAll},
	{"DELETE HISTORY", "Delete_history_priv", "Delete versioning rows", scopeAll},
	{"CREATE TEMPORARY TABLES", "Create_tmp_table_priv", "", scopeGlobal | scopeDatabase},
	{"LOCK TABLES", "Lock_tables_priv", "", scopeGlobal | scopeDatabase},
	{"EXECUTE", "Execute_priv", "", scopeGlobal | scopeDatabase},
	{"CREATE ROUTINE", "Create_routine_priv", "", scopeGlobal | scopeDatabase},
	{"ALTER ROUTINE", "Alter_routine_priv", "", scopeGlobal | scopeDatabase},
	{"EVENT", "Event_priv", "", scopeGlobal | scopeDatabase},
	{"PROCESS", "Process_priv", "", scopeGlobal},
	{"SHOW DATABASES", "Show_db_priv", "", scopeGlobal},
}

// allPrivileges is ALL [PRIVILEGES], allowed on a database or a table only;
// it never includes GRANT OPTION.
const allPrivileges = "ALL PRIVILEGES"

func lookupPriv(keyword string) (privDef, bool) {
	for _, p := range privileges {
		if p.keyword == keyword {
			return p, true
		}
	}
	return privDef{}, false
}

// reservedRoles are names MariaDB gives a meaning to in role statements.
var reservedRoles = []string{"none", "public", "current_role", "current_user"}

// ParseSpec decodes and validates an entitlement spec. Unknown keys, wrong
// types and every name or keyword outside the allow-lists are EINVALID,
// naming the field.
func (c *Conn) ParseSpec(raw map[string]any) (*Spec, error) {
	return parseSpec(raw, c.cfg.Prefix)
}

func parseSpec(raw map[string]any, prefix string) (*Spec, error) {
	if raw == nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec is required")
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec is not a JSON-compatible map")
	}
	if len(b) > maxSpecBytes {
		return nil, lapse.FieldErrorf(lapse.ETOOLARGE, "spec", "spec is larger than %d bytes", maxSpecBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec does not match the MariaDB spec: %s", safeDecodeError(err))
	}
	if err := s.normalize(prefix); err != nil {
		return nil, err
	}
	return &s, nil
}

// safeDecodeError describes a JSON decoding error without echoing input
// values (which could be anything a catalog author pasted).
func safeDecodeError(err error) string {
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("field %s has the wrong type", typeErr.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// The field name is a map key of the catalog; report it only if it is
		// a plain identifier.
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		if identRE.MatchString(name) {
			return "unknown field " + name
		}
		return "unknown field"
	}
	return "malformed"
}

// normalize checks every field and rewrites keywords to their canonical
// upper-case form.
func (s *Spec) normalize(prefix string) error {
	if len(s.Roles) == 0 && len(s.Grants) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec", "spec grants nothing: set roles or grants")
	}
	if len(s.Roles) > maxRoles {
		return lapse.FieldErrorf(lapse.ETOOLARGE, "spec.roles", "at most %d roles", maxRoles)
	}
	seen := map[string]bool{}
	for i, r := range s.Roles {
		field := fmt.Sprintf("spec.roles[%d]", i)
		if err := checkRole(r, prefix, field); err != nil {
			return err
		}
		if seen[r] {
			return lapse.FieldErrorf(lapse.EINVALID, field, "role is listed twice")
		}
		seen[r] = true
	}
	if s.DefaultRole != "" {
		if !slices.Contains(s.Roles, s.DefaultRole) {
			return lapse.FieldErrorf(lapse.EINVALID, "spec.default_role", "default_role must be one of roles")
		}
	} else if len(s.Roles) > 0 {
		s.DefaultRole = s.Roles[0]
	}
	if len(s.Grants) > maxGrants {
		return lapse.FieldErrorf(lapse.ETOOLARGE, "spec.grants", "at most %d grants", maxGrants)
	}
	for i := range s.Grants {
		if err := s.Grants[i].normalize(fmt.Sprintf("spec.grants[%d]", i)); err != nil {
			return err
		}
	}
	if s.MaxUserConnections < 0 || s.MaxUserConnections > maxUserConnections {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.max_user_connections", "max_user_connections must be between 0 and %d", maxUserConnections)
	}
	if s.GrantOption && len(s.Grants) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.grant_option", "grant_option applies to grants, and there are none")
	}
	return nil
}

func checkRole(r, prefix, field string) error {
	if !identRE.MatchString(r) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "a role name is 1 to 64 ASCII letters, digits or underscores")
	}
	if slices.Contains(reservedRoles, strings.ToLower(r)) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "role name is reserved")
	}
	if strings.HasPrefix(r, prefix) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "role name must not start with the prefix of ephemeral users")
	}
	return nil
}

func (g *Grant) normalize(field string) error {
	if g.Table == "" {
		g.Table = "*"
	}
	switch {
	case g.Database == "*":
		if g.Table != "*" {
			return lapse.FieldErrorf(lapse.EINVALID, field+".table", "a global grant (database \"*\") has no table")
		}
	case !identRE.MatchString(g.Database):
		return lapse.FieldErrorf(lapse.EINVALID, field+".database", "a database name is 1 to 64 ASCII letters, digits or underscores, or \"*\"")
	case strings.EqualFold(g.Database, "mysql"):
		// Privileges on the mysql schema let an account rewrite accounts.
		return lapse.FieldErrorf(lapse.EINVALID, field+".database", "grants on the mysql schema are not allowed")
	case g.Table != "*" && !identRE.MatchString(g.Table):
		return lapse.FieldErrorf(lapse.EINVALID, field+".table", "a table name is 1 to 64 ASCII letters, digits or underscores, or \"*\"")
	}
	scope := g.scope()
	if len(g.Privileges) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, field+".privileges", "privileges is empty")
	}
	if len(g.Privileges) > maxPrivilegesPerGrant {
		return lapse.FieldErrorf(lapse.ETOOLARGE, field+".privileges", "at most %d privileges", maxPrivilegesPerGrant)
	}
	out := make([]string, 0, len(g.Privileges))
	for j, p := range g.Privileges {
		pf := fmt.Sprintf("%s.privileges[%d]", field, j)
		kw, err := canonicalPrivilege(p, pf)
		if err != nil {
			return err
		}
		if kw == allPrivileges {
			if scope == scopeGlobal {
				return lapse.FieldErrorf(lapse.EINVALID, pf, "ALL PRIVILEGES is not allowed globally")
			}
		} else if d, _ := lookupPriv(kw); d.scopes&scope == 0 {
			return lapse.FieldErrorf(lapse.EINVALID, pf, "%s cannot be granted at this level", kw)
		}
		if slices.Contains(out, kw) {
			return lapse.FieldErrorf(lapse.EINVALID, pf, "privilege is listed twice")
		}
		out = append(out, kw)
	}
	if slices.Contains(out, allPrivileges) && len(out) > 1 {
		return lapse.FieldErrorf(lapse.EINVALID, field+".privileges", "ALL PRIVILEGES cannot be combined with other privileges")
	}
	g.Privileges = out
	return nil
}

// canonicalPrivilege maps a privilege as written in a catalog (any case,
// single spaces) to its keyword, or rejects it.
func canonicalPrivilege(p, field string) (string, error) {
	if len(p) > 32 {
		return "", lapse.FieldErrorf(lapse.EINVALID, field, "unknown privilege")
	}
	for _, r := range p {
		if (r < 'A' || r > 'Z') && (r < 'a' || r > 'z') && r != ' ' {
			return "", lapse.FieldErrorf(lapse.EINVALID, field, "unknown privilege")
		}
	}
	kw := strings.ToUpper(p)
	if kw == "ALL" || kw == allPrivileges {
		return allPrivileges, nil
	}
	if _, ok := lookupPriv(kw); !ok {
		return "", lapse.FieldErrorf(lapse.EINVALID, field, "unknown or disallowed privilege")
	}
	return kw, nil
}

func (g *Grant) scope() privScope {
	switch {
	case g.Database == "*":
		return scopeGlobal
	case g.Table == "*":
		return scopeDatabase
	}
	return scopeTable
}

// object returns the quoted ON clause of the grant. At database level
// MariaDB reads `_` and `%` in the database name as wildcards, so `_` is
// escaped: `app_db`.* must not also grant on `appXdb`.
func (g *Grant) object() string {
	switch g.scope() {
	case scopeGlobal:
		return "*.*"
	case scopeDatabase:
		return quoteIdent(strings.ReplaceAll(g.Database, "_", `\_`)) + ".*"
	}
	return quoteIdent(g.Database) + "." + quoteIdent(g.Table)
}

// String describes the grant as it appears in Discover and Info.
func (g *Grant) String() string {
	on := g.Database + "." + g.Table
	if g.scope() == scopeGlobal {
		on = "*.*"
	}
	return strings.Join(g.Privileges, ",") + " on " + on
}

// ValidateSpec checks an entitlement spec when the catalog is loaded.
// Returns EINVALID (or ETOOLARGE) naming the field.
func (c *Conn) ValidateSpec(spec map[string]any) error {
	_, err := c.ParseSpec(spec)
	return err
}
