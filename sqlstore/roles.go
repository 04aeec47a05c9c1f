package sqlstore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/lapsehq/lapse"
)

// serverPrivileges is what the server's database role needs on each table,
// and no more. The audit log's tables (events and the tree and checkpoints
// over them) and approvals are insert-only: no statement of the store
// updates or deletes their rows, so the role that runs the server cannot
// either. Nothing is ever deleted, so no table grants DELETE or TRUNCATE.
//
// event_seq must be updatable: it is the counter every appending
// transaction locks and advances. Changing it rewrites no entry; it can only
// make the next append fail on a duplicate sequence number or leave a gap,
// which the sequencer and `lapse audit verify` report.
//
// Every table of the schema must be listed: GrantServerRole refuses a
// schema with a table it does not know, so a migration that adds a table
// cannot ship without deciding what the server may do with it.
var serverPrivileges = map[string]string{
	"schema_migrations": "SELECT",
	"requests":          "SELECT, INSERT, UPDATE",
	"approvals":         "SELECT, INSERT",
	"grants":            "SELECT, INSERT, UPDATE",
	"checkpoints":       "SELECT, INSERT, UPDATE", // upserted as verification proceeds
	"events":            "SELECT, INSERT",
	"event_seq":         "SELECT, UPDATE",
	"api_keys":          "SELECT, INSERT, UPDATE",
	"mandates":          "SELECT, INSERT, UPDATE", // revoked_at and revoked_by are set once
	"token_feeds":       "SELECT, INSERT, UPDATE",
	"token_revocations": "SELECT, INSERT",
	"token_acks":        "SELECT, INSERT, UPDATE",
	"token_uses":        "SELECT, INSERT, UPDATE", // a use count only grows
	"audit_leaves":      "SELECT, INSERT",
	"audit_nodes":       "SELECT, INSERT",
	"audit_checkpoints": "SELECT, INSERT",
}

// AuditTables are the tables of the tamper-evident log: the events and the
// Merkle tree and signed checkpoints over them. GrantServerRole grants
// only SELECT and INSERT on them.
var AuditTables = []string{"events", "audit_leaves", "audit_nodes", "audit_checkpoints"}

// GrantServerRole gives the PostgreSQL role named role exactly the
// privileges `lapse server` needs on the store's schema (the schema the
// store's connection uses): read and insert everywhere, update where state
// changes, and on the audit tables only read and insert. It first revokes
// whatever else the role held on those tables, so running it again after a
// migration converges. Run it as the schema's owner, after migrating; the
// server then connects as role with Options.SkipMigrations.
//
// Returns EINVALID on SQLite (which has no roles) or for an empty role
// name, EINTERNAL if the schema has a table this build does not know.
func (s *Store) GrantServerRole(ctx context.Context, role string) error {
	if s.driver != DriverPostgres {
		return lapse.Errorf(lapse.EINVALID, "database roles exist only on PostgreSQL")
	}
	if role == "" || strings.IndexByte(role, 0) >= 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "role", "not a role name")
	}
	if s.closed.Load() {
		return errClosed()
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.classify("grant: begin", err)
	}
	defer tx.Rollback()
	var schema string
	if err := tx.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return s.classify("grant: current schema", err)
	}
	rows, err := tx.QueryContext(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'", schema)
	if err != nil {
		return s.classify("grant: list tables", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return s.classify("grant: list tables", err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s.classify("grant: list tables", err)
	}
	slices.Sort(tables)
	for _, t := range tables {
		if _, ok := serverPrivileges[t]; !ok {
			return lapse.Errorf(lapse.EINTERNAL, "table %s.%s has no privileges defined for the server's role", schema, t)
		}
	}
	if len(tables) != len(serverPrivileges) {
		return lapse.Errorf(lapse.EUNAVAILABLE, "schema %s has %d of Lapse's %d tables: migrate it first", schema, len(tables), len(serverPrivileges))
	}
	r := pgx.Identifier{role}.Sanitize()
	stmts := []string{"GRANT USAGE ON SCHEMA " + pgx.Identifier{schema}.Sanitize() + " TO " + r}
	for _, t := range tables {
		qt := pgx.Identifier{schema, t}.Sanitize()
		stmts = append(stmts, "REVOKE ALL ON "+qt+" FROM "+r, "GRANT "+serverPrivileges[t]+" ON "+qt+" TO "+r)
	}
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return s.classify(fmt.Sprintf("grant: %s", q), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.classify("grant: commit", err)
	}
	return nil
}
