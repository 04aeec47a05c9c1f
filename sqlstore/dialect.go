package sqlstore

import (
	"encoding/json"
	"strconv"
	"strings"
)

// dialect is the seam between SQLite and PostgreSQL. Queries and migrations
// are written once, with "?" placeholders and a few {TOKENS} that render
// differently per database:
//
//	{FOR UPDATE}   " FOR UPDATE" on PostgreSQL; nothing on SQLite, where the
//	               immediate transaction already excludes other writers
//	{SKIP LOCKED}  " FOR UPDATE SKIP LOCKED" on PostgreSQL; nothing on SQLite
//	{IN IDS}       a membership test against one bound list of IDs (see idList)
//	{BYTES}        the binary column type: BLOB or BYTEA
//	{SEQ PK}       the event sequence column: SQLite's INTEGER PRIMARY KEY
//	               (the rowid itself) or PostgreSQL's BIGINT PRIMARY KEY
//	{WITHOUT ROWID} SQLite's clustered-key tables; nothing on PostgreSQL
type dialect struct {
	name    string
	dollar  bool // rebind ? to $1, $2, …
	replace *strings.Replacer
	// prepareStatements says whether the store keeps database/sql Stmt
	// objects. modernc.org/sqlite compiles every unprepared query anew;
	// pgx caches prepared statements per connection by itself.
	prepareStatements bool
	// idListArg converts a list of IDs into the one argument {IN IDS}
	// expects.
	idListArg func(ids []string) any
}

var sqliteDialect = &dialect{
	name: DriverSQLite,
	replace: strings.NewReplacer(
		"{FOR UPDATE}", "",
		"{SKIP LOCKED}", "",
		"{IN IDS}", "IN (SELECT value FROM json_each(?))",
		"{BYTES}", "BLOB",
		"{SEQ PK}", "INTEGER PRIMARY KEY",
		"{WITHOUT ROWID}", " WITHOUT ROWID",
	),
	prepareStatements: true,
	idListArg: func(ids []string) any {
		b, _ := json.Marshal(ids) // a []string always encodes
		return string(b)
	},
}

var postgresDialect = &dialect{
	name:   DriverPostgres,
	dollar: true,
	replace: strings.NewReplacer(
		"{FOR UPDATE}", " FOR UPDATE",
		"{SKIP LOCKED}", " FOR UPDATE SKIP LOCKED",
		"{IN IDS}", "= ANY(?)",
		"{BYTES}", "BYTEA",
		"{SEQ PK}", "BIGINT PRIMARY KEY",
		"{WITHOUT ROWID}", "",
	),
	idListArg: func(ids []string) any { return ids }, // pgx sends a text[]
}

// render turns a query template into this dialect's SQL.
func (d *dialect) render(q string) string {
	q = d.replace.Replace(q)
	if d.dollar {
		q = rebind(q)
	}
	return q
}

// rebind replaces each ? placeholder outside quotes and comments with $1,
// $2, … in order.
func rebind(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := strings.IndexByte(q[i+1:], c)
			if j < 0 {
				b.WriteString(q[i:])
				return b.String()
			}
			b.WriteString(q[i : i+j+2])
			i += j + 1
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				b.WriteString(q[i:])
				return b.String()
			}
			b.WriteString(q[i : i+j+1])
			i += j
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
