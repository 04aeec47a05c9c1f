package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/internal/testlock"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// secretsConfig has a target of every kind that issues a credential, each
// with an auto-approved entitlement. {{…}} are filled per test.
const secretsConfig = `data_dir: {{DIR}}
log: {level: debug}
sealing_key: {file: sealing.key}
audit:
  interval: 50ms
targets:
  api:
    kind: token
    config:
      issuer: http://127.0.0.1:8700
      audience: secrets-test
      generate_key: true
  pg:
    kind: postgres
    config:
      dsn: "{{PG_DSN}}"
      prefix: {{PG_PREFIX}}
      databases: [{{PG_DATABASE}}]
  maria:
    kind: mariadb
    config:
      dsn: "{{MARIA_DSN}}"
      prefix: {{MARIA_PREFIX}}
  cache:
    kind: redis
    config:
      prefix: {{REDIS_PREFIX}}
      nodes:
        - name: main
          addr: {{REDIS_ADDR}}
entitlements:
  - name: api/read
    target: api
    lanes: [human, service]
    max_duration: 10m
    approval: {auto: true}
    spec:
      scopes: ["secrets:read"]
  - name: pg/read
    target: pg
    max_duration: 10m
    approval: {auto: true}
    spec:
      roles: [{{PG_GROUP}}]
  - name: maria/read
    target: maria
    max_duration: 10m
    approval: {auto: true}
    spec:
      roles: [{{MARIA_ROLE}}]
      grants:
        - database: {{MARIA_DB}}
          privileges: [SELECT]
  - name: cache/use
    target: cache
    max_duration: 10m
    approval: {auto: true}
    spec:
      commands: [get, set]
      keys: ["{{REDIS_KEYS}}"]
`

// TestNoSecretLeaves provisions on every connector through a real lapse
// server, collects every secret it issued (grant credentials and API
// keys), revokes everything, and then searches every place a secret must
// never reach: the server's log and output, the API's later answers and
// metrics, lapse audit export, tail and verify, every row of the store
// (the events table with its data column included), every file of the
// data directory (the database, its WAL, the checkpoint directory), and
// the PostgreSQL server's own log with every statement logged.
func TestNoSecretLeaves(t *testing.T) {
	id := secretsSuffix(t)
	pg := newSecretsPostgres(t, id)
	maria := newSecretsMariaDB(t, id)
	redisAddr := newSecretsRedis(t, id)

	src := strings.NewReplacer(
		"{{PG_DSN}}", pg.dsn, "{{PG_PREFIX}}", pg.prefix, "{{PG_DATABASE}}", pg.database, "{{PG_GROUP}}", pg.group,
		"{{MARIA_DSN}}", maria.dsn, "{{MARIA_PREFIX}}", maria.prefix, "{{MARIA_ROLE}}", maria.role, "{{MARIA_DB}}", maria.db,
		"{{REDIS_PREFIX}}", "ls"+id+"_", "{{REDIS_ADDR}}", redisAddr, "{{REDIS_KEYS}}", "lsec"+id+":*",
	).Replace(secretsConfig)
	path := writeServerConfig(t, src)
	dir := filepath.Dir(path)
	dataDir := filepath.Join(dir, "data")

	secrets := map[string]string{} // what it is → every secret issued
	newKey := func(principal, kind, scopes string) string {
		t.Helper()
		out, stderr, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", principal, "--kind", kind, "--scope", scopes)
		if err != nil {
			t.Fatalf("admin apikey create: %v\n%s", err, stderr)
		}
		key := strings.TrimSpace(out)
		secrets["the API key of "+principal] = key
		secrets["the secret part of the API key of "+principal] = apiKeySecretPart(t, key)
		return key
	}
	alice := newKey("alice", "human", "read,request")
	ops := newKey("ops", "human", "admin")

	pgLog := pg.serverLog(t)
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "debug")

	// An API key made through the API, for a service principal.
	var made lapse.NewAPIKey
	if code := call(t, "POST", r.url+"/v1/apikeys", ops, lapse.APIKeyInput{PrincipalID: "svc-bot", PrincipalKind: lapse.KindService, Scopes: []string{"read", "request"}}, &made); code != 201 || made.Secret == "" {
		t.Fatalf("POST /v1/apikeys: status %d", code)
	}
	secrets["the API key made through the API"] = made.Secret
	secrets["the secret part of the API key made through the API"] = apiKeySecretPart(t, made.Secret)

	type issued struct {
		entitlement string
		key         string
		res         lapse.RequestResult
	}
	grants := []*issued{
		{entitlement: "api/read", key: alice},
		{entitlement: "api/read", key: made.Secret},
		{entitlement: "pg/read", key: alice},
		{entitlement: "maria/read", key: alice},
		{entitlement: "cache/use", key: alice},
	}
	for _, g := range grants {
		if code := call(t, "POST", r.url+"/v1/requests", g.key, lapse.RequestInput{Entitlement: g.entitlement, Reason: "secrets test"}, &g.res); code != 201 || g.res.Grant == nil || g.res.Credentials == nil {
			t.Fatalf("request %s: status %d, stderr:\n%s", g.entitlement, code, r.stderr.String())
		}
		if len(g.res.Credentials.Secret) == 0 {
			t.Fatalf("grant of %s came with no secret", g.entitlement)
		}
		for k, v := range g.res.Credentials.Secret {
			if len(v) < 16 {
				t.Fatalf("secret %s of %s is %d bytes: too short to search for", k, g.entitlement, len(v))
			}
			what := fmt.Sprintf("secret %q of grant %s (%s)", k, g.res.Grant.ID, g.entitlement)
			secrets[what] = v
			if k == "token" { // the signature is what makes a JWT usable
				if parts := strings.Split(v, "."); len(parts) == 3 && len(parts[2]) >= 16 {
					secrets["the signature of the "+what] = parts[2]
				}
			}
		}
	}
	useSecrets(t, grants[2].res.Credentials, grants[3].res.Credentials, grants[4].res.Credentials, "lsec"+id+":x")

	// What the API shows later must not repeat a secret.
	var later []string
	for _, g := range grants {
		var raw json.RawMessage
		if code := call(t, "GET", r.url+"/v1/grants/"+g.res.Grant.ID, g.key, nil, &raw); code != 200 {
			t.Fatalf("GET grant %s: status %d", g.res.Grant.ID, code)
		}
		later = append(later, string(raw))
	}

	for _, g := range grants {
		var out lapse.Grant
		if code := call(t, "POST", r.url+"/v1/grants/"+g.res.Grant.ID+"/release", g.key, lapse.ReleaseInput{Wait: true}, &out); code != 200 || out.State != lapse.GrantRevoked {
			t.Fatalf("release %s (%s): status %d, state %s", g.res.Grant.ID, g.entitlement, code, out.State)
		}
	}
	for _, k := range []string{alice, ops} {
		var raw json.RawMessage
		call(t, "GET", r.url+"/v1/grants", k, nil, &raw)
		later = append(later, string(raw))
	}
	var keys json.RawMessage
	if code := call(t, "GET", r.url+"/v1/apikeys", ops, nil, &keys); code != 200 {
		t.Fatalf("GET /v1/apikeys: status %d", code)
	}
	later = append(later, string(keys), metricsText(t, r.url))

	if err := r.stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, r.stderr.String())
	}
	if !strings.Contains(r.stderr.String(), "lapse server stopped") {
		t.Fatalf("the server's log does not show its stop; is it where this test looks?\n%s", r.stderr.String())
	}

	places := map[string]string{
		"the server's log (stderr)": r.stderr.String(),
		"the server's stdout":       r.stdout.String(),
		"the API's later answers":   strings.Join(later, "\n"),
	}
	auditOut := func(name string, args ...string) {
		t.Helper()
		out, stderr, err := runLapse(t, append([]string{"audit"}, args...)...)
		if err != nil {
			t.Fatalf("lapse audit %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
		}
		places[name] = out + stderr
	}
	auditOut("lapse audit export", "export", "--config", path)
	auditOut("lapse audit tail", "tail", "--config", path, "-n", "100000")
	auditOut("lapse audit tail --json", "tail", "--config", path, "-n", "100000", "--json")
	auditOut("lapse audit verify", "verify", "--config", path)
	if exp := places["lapse audit export"]; !strings.Contains(exp, grants[2].res.Grant.ID) || !strings.Contains(exp, `"grant.revoked"`) {
		t.Fatalf("the export does not show the grants' revocations; is it what this test means to search?\n%s", exp)
	}
	if !strings.Contains(places["lapse audit verify"], "result        OK") {
		t.Errorf("audit verify:\n%s", places["lapse audit verify"])
	}

	rows, events := dumpSQLite(t, filepath.Join(dataDir, "lapse.db"))
	if events == 0 {
		t.Fatal("the events table is empty")
	}
	places["the store's rows"] = rows
	checkpoints := 0
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(dataDir, p); strings.HasPrefix(rel, "checkpoints"+string(filepath.Separator)) {
			checkpoints++
		}
		places["the file "+p] = string(b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if checkpoints == 0 {
		t.Errorf("no file in the checkpoint directory %s", filepath.Join(dataDir, "checkpoints"))
	}
	if pgLog != nil {
		text := pgLog()
		role := grants[2].res.Credentials.Info["user"]
		if !strings.Contains(text, `CREATE ROLE "`+role+`"`) {
			t.Fatalf("the PostgreSQL server log does not show CREATE ROLE for %s: the log is not where this test looks", role)
		}
		places["the PostgreSQL server's log"] = text
	}

	forms := 0
	for what, s := range secrets {
		for _, e := range encodings(s) {
			forms++
			for place, text := range places {
				if strings.Contains(text, e.text) {
					t.Errorf("%s appears (%s) in %s", what, e.form, place)
				}
			}
		}
	}
	t.Logf("searched %d secrets in %d forms in %d places", len(secrets), forms, len(places))
}

// encoding is one form a secret could take in text.
type encoding struct{ form, text string }

// encodings returns a secret itself and its obvious encodings, each text
// once (a base64url password is its own JSON and URL form).
func encodings(s string) []encoding {
	b := []byte(s)
	quoted, _ := json.Marshal(s)
	var out []encoding
	seen := map[string]bool{}
	for _, e := range []encoding{
		{"plain", s},
		{"base64", base64.RawStdEncoding.EncodeToString(b)},
		{"base64url", base64.RawURLEncoding.EncodeToString(b)},
		{"hex", hex.EncodeToString(b)},
		{"URL-escaped", url.QueryEscape(s)},
		{"JSON-escaped", strings.Trim(string(quoted), `"`)},
	} {
		if !seen[e.text] {
			seen[e.text] = true
			out = append(out, e)
		}
	}
	return out
}

// apiKeySecretPart returns the part of an API key after its public prefix:
// 43 base64url characters (which may hold '_' themselves).
func apiKeySecretPart(t *testing.T, key string) string {
	t.Helper()
	prefix, ok := authn.ParseAPIKey(key)
	if !ok {
		t.Fatalf("API key of unexpected form (%d characters)", len(key))
	}
	_, rest, _ := strings.Cut(key, prefix+"_")
	return rest
}

// useSecrets logs in with the database and cache credentials, so the
// secrets searched for are the ones that work.
func useSecrets(t *testing.T, pg, maria, cache *lapse.Credentials, cacheKey string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(pg.Secret["url"])
	if err != nil {
		t.Fatal("the PostgreSQL grant's url does not parse") // never print it
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("log in to PostgreSQL as the grantee: %v", err)
	}
	conn.Close(ctx)

	mc := mysql.NewConfig()
	mc.User, mc.Passwd, mc.Net, mc.Addr = maria.Info["user"], maria.Secret["password"], "tcp", maria.Info["address"]
	mc.Timeout = 5 * time.Second
	db, err := sql.Open("mysql", mc.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("log in to MariaDB as the grantee: %v", err)
	}

	rc := goredis.NewClient(&goredis.Options{Addr: cache.Info["addr"], Username: cache.Info["username"], Password: cache.Secret["password"], Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer rc.Close()
	if err := rc.Get(ctx, cacheKey).Err(); err != nil && err != goredis.Nil {
		t.Fatalf("log in to Redis as the grantee: %v", err)
	}
}

// dumpSQLite returns every row of every table of a SQLite database as
// text, and the number of rows in events.
func dumpSQLite(t *testing.T, path string) (string, int) {
	t.Helper()
	db := openRawSQLite(t, path)
	defer db.Close()
	names, err := db.Query("SELECT name FROM sqlite_master WHERE type = 'table'")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for names.Next() {
		var n string
		if err := names.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	names.Close()
	var out strings.Builder
	events := 0
	for _, table := range tables {
		rows, err := db.Query(`SELECT * FROM "` + table + `"`)
		if err != nil {
			t.Fatalf("read table %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			if table == "events" {
				events++
			}
			fmt.Fprintf(&out, "%s:", table)
			for i, v := range vals {
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				fmt.Fprintf(&out, " %s=%v", cols[i], v)
			}
			out.WriteByte('\n')
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return out.String(), events
}

func secretsSuffix(t *testing.T) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// unavailable fails the test under CI=true and skips it, loudly, otherwise.
func unavailable(t *testing.T, what string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s is not reachable: %v", what, err)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (required under CI=true)", msg)
	}
	t.Skip("!!! SKIPPED: " + msg + " !!!")
}

// secretsPostgres is the test's world on the PostgreSQL server: a group
// role and a connector prefix of its own, removed at cleanup with every
// role that carries the prefix.
type secretsPostgres struct {
	admin                        *sql.DB
	dsn, prefix, group, database string
	superuser                    bool
}

func newSecretsPostgres(t *testing.T, id string) *secretsPostgres {
	t.Helper()
	base := os.Getenv(sqltest.PostgresEnv)
	if base == "" {
		base = sqltest.DefaultPostgresDSN
	}
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatalf("%s cannot be parsed as a PostgreSQL DSN", sqltest.PostgresEnv)
	}
	admin := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := &secretsPostgres{admin: admin, dsn: base, prefix: "ls" + id + "_", group: "lsec_" + id + "_read", database: cfg.Database}
	if err := admin.QueryRowContext(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&p.superuser); err != nil {
		unavailable(t, "PostgreSQL at "+cfg.Host, err)
	}
	if p.superuser {
		// Every statement of the connector's sessions goes to the
		// server's log (a superuser-only run-time parameter).
		if u, err := url.Parse(base); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
			q := u.Query()
			q.Set("log_statement", "all")
			u.RawQuery = q.Encode()
			p.dsn = u.String()
		} else {
			p.dsn = base + " log_statement=all"
		}
	}
	t.Cleanup(func() { p.cleanup(t) })
	if _, err := admin.ExecContext(ctx, `CREATE ROLE "`+p.group+`" NOLOGIN`); err != nil {
		t.Fatalf("create group role: %v", err)
	}
	return p
}

func (p *secretsPostgres) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := p.admin.QueryContext(ctx, "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1) OR rolname = $2", p.prefix, p.group)
	if err != nil {
		t.Errorf("cleanup: list roles: %v", err)
		return
	}
	var names []string
	for rows.Next() {
		var n string
		if rows.Scan(&n) == nil {
			names = append(names, n)
		}
	}
	rows.Close()
	for _, n := range names {
		if n != p.group {
			t.Errorf("role %s was left behind on PostgreSQL", n)
		}
		p.admin.ExecContext(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", n)
		p.admin.ExecContext(ctx, `DROP OWNED BY "`+n+`"`)
		if _, err := p.admin.ExecContext(ctx, `DROP ROLE IF EXISTS "`+n+`"`); err != nil {
			t.Errorf("cleanup: drop role %s: %v", n, err)
		}
	}
}

// serverLog returns a reader of what the PostgreSQL server logs from now
// on (see connector/postgres/log_test.go), or nil, saying so, when this
// test cannot read the log.
func (p *secretsPostgres) serverLog(t *testing.T) func() string {
	t.Helper()
	if !p.superuser {
		t.Log("NOTE: not a superuser: the PostgreSQL server log is not searched")
		return nil
	}
	ctx := context.Background()
	path := "/proc/self/fd/2"
	var current sql.NullString
	if err := p.admin.QueryRowContext(ctx, "SELECT pg_current_logfile()").Scan(&current); err == nil && current.Valid {
		path = current.String
	}
	var size int64
	if err := p.admin.QueryRowContext(ctx, "SELECT size FROM pg_stat_file($1)", path).Scan(&size); err != nil {
		t.Logf("NOTE: the PostgreSQL server log is not readable (%v): it is not searched", err)
		return nil
	}
	return func() string {
		var b []byte
		if err := p.admin.QueryRowContext(ctx, "SELECT pg_read_binary_file($1, $2, (SELECT size FROM pg_stat_file($1)) - $2)", path, size).Scan(&b); err != nil {
			t.Fatalf("read the PostgreSQL server log: %v", err)
		}
		return string(b)
	}
}

// secretsMariaDB is the test's world on the MariaDB server: a database, a
// role with SELECT on it and a user prefix of its own, removed at cleanup.
type secretsMariaDB struct {
	admin                 *sql.DB
	dsn, prefix, role, db string
}

func newSecretsMariaDB(t *testing.T, id string) *secretsMariaDB {
	t.Helper()
	dsn := os.Getenv("LAPSE_TEST_MARIADB_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/"
	}
	admin, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("open MariaDB client: %v", err)
	}
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		unavailable(t, "MariaDB", err)
	}
	testlock.MariaDB(t, admin) // see internal/testlock
	m := &secretsMariaDB{admin: admin, dsn: dsn, prefix: "s" + id[:4] + "_", role: "lsec_" + id + "_role", db: "lsec_" + id + "_db"}
	exec := func(q string) {
		t.Helper()
		if _, err := admin.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { m.cleanup(t) })
	exec("CREATE DATABASE `" + m.db + "`")
	exec("CREATE ROLE `" + m.role + "`")
	exec("GRANT SELECT ON `" + strings.ReplaceAll(m.db, "_", `\_`) + "`.* TO `" + m.role + "`")
	return m
}

func (m *secretsMariaDB) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := m.admin.QueryContext(ctx, "SELECT User, Host FROM mysql.global_priv WHERE LEFT(User, ?) = ?", len(m.prefix), m.prefix)
	if err != nil {
		t.Errorf("cleanup: list MariaDB users: %v", err)
	} else {
		var accts [][2]string
		for rows.Next() {
			var u, h string
			if rows.Scan(&u, &h) == nil {
				accts = append(accts, [2]string{u, h})
			}
		}
		rows.Close()
		for _, a := range accts {
			t.Errorf("user %s@%s was left behind on MariaDB", a[0], a[1])
			m.admin.ExecContext(ctx, "KILL HARD CONNECTION USER `"+a[0]+"`")
			m.admin.ExecContext(ctx, "DROP USER IF EXISTS `"+a[0]+"`@`"+a[1]+"`")
		}
	}
	for _, q := range []string{"DROP ROLE IF EXISTS `" + m.role + "`", "DROP DATABASE IF EXISTS `" + m.db + "`"} {
		if _, err := m.admin.ExecContext(ctx, q); err != nil {
			t.Errorf("cleanup: %s: %v", q, err)
		}
	}
}

// newSecretsRedis checks that the Redis server answers and, at cleanup,
// deletes every ACL user with the test's prefix. It returns the address.
func newSecretsRedis(t *testing.T, id string) string {
	t.Helper()
	addr := os.Getenv("LAPSE_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := goredis.NewClient(&goredis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1, DialTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		unavailable(t, "Redis at "+addr, err)
	}
	prefix := "ls" + id + "_"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		users, err := c.Do(ctx, "ACL", "USERS").StringSlice()
		if err != nil {
			t.Errorf("cleanup: ACL USERS: %v", err)
			return
		}
		for _, u := range users {
			if strings.HasPrefix(u, prefix) {
				t.Errorf("ACL user %s was left behind on Redis", u)
				c.Do(ctx, "ACL", "DELUSER", u)
			}
		}
	})
	return addr
}
