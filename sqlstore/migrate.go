package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLock is the PostgreSQL advisory lock key held while migrating, so
// that replicas starting together apply each migration once ("lapse" in
// ASCII).
const migrationLock = 0x6c61707365

type migration struct {
	version int
	name    string
	stmts   []string
}

// loadMigrations reads the embedded migrations: files named NNNN_name.sql,
// numbered 1, 2, 3 … without gaps.
func loadMigrations() ([]migration, error) {
	return parseMigrations(migrationFS, "migrations")
}

func parseMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", name)
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: name, stmts: splitStatements(string(b))})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// splitStatements splits a migration into statements: each ends at a line
// whose last character is ";". Whole-line comments are dropped.
func splitStatements(text string) []string {
	var stmts []string
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			stmts = append(stmts, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		stmts = append(stmts, rest)
	}
	return stmts
}

// SchemaVersion is the schema version this build migrates databases to.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// schema migrates the database, or checks that it needs no migration.
func (s *Store) schema(ctx context.Context, opts Options) error {
	if opts.SkipMigrations {
		return s.checkSchema(ctx)
	}
	return s.migrate(ctx)
}

// checkSchema returns EUNAVAILABLE unless the database is at exactly this
// build's schema version: a server that may not migrate must not run on a
// schema that lacks what it needs, nor on one a newer build changed.
func (s *Store) checkSchema(ctx context.Context) error {
	want := SchemaVersion()
	var have sql.NullInt64
	err := s.w.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&have)
	if err != nil && isUnavailable(err) {
		return s.classify("check schema", err)
	}
	switch {
	case err != nil || have.Int64 < int64(want):
		// A missing table is the same story as an old schema: an
		// error reading it is not worth telling apart.
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Err: err, Message: fmt.Sprintf(
			"the database schema is at version %d, this build needs %d: apply the migrations as the schema's owner (lapse admin migrate)", have.Int64, want)}
	case have.Int64 > int64(want):
		return lapse.Errorf(lapse.EINTERNAL,
			"the database schema is at version %d, newer than this build of Lapse supports (%d)", have.Int64, want)
	}
	return nil
}

// migrate applies pending migrations in one transaction. On PostgreSQL it
// holds an advisory lock, so a second replica waits and then finds nothing
// left to do. It refuses a database whose schema is newer than this build.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return lapse.Internal("migrate", err)
	}
	for attempt := 1; ; attempt++ {
		err := s.migrateOnce(ctx, ms)
		if err == nil || !isRetryable(err) || attempt == maxAttempts {
			return s.classify("migrate", err)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return s.classify("migrate", err)
		}
	}
}

func (s *Store) migrateOnce(ctx context.Context, ms []migration) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.driver == DriverPostgres {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    BIGINT PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at BIGINT NOT NULL
)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	applied, err := appliedVersions(ctx, tx)
	if err != nil {
		return err
	}
	for v := range applied {
		if v > len(ms) {
			return lapse.Errorf(lapse.EINTERNAL,
				"the database schema is at version %d, newer than this build of Lapse supports (%d)", v, len(ms))
		}
	}
	insert := s.d.render("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)")
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		for i, stmt := range m.stmts {
			if _, err := tx.ExecContext(ctx, s.d.render(stmt)); err != nil {
				return fmt.Errorf("apply %s, statement %d: %w", m.name, i+1, err)
			}
		}
		// applied_at is informational: the wall clock, not the injected one.
		if _, err := tx.ExecContext(ctx, insert, m.version, m.name, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("record %s: %w", m.name, err)
		}
	}
	return tx.Commit()
}

func appliedVersions(ctx context.Context, tx *sql.Tx) (map[int]bool, error) {
	rows, err := tx.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	applied := map[int]bool{}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	return applied, rows.Err()
}
