package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// serverConfig is a valid server configuration; {{DIR}} is replaced by a
// test directory. Line numbers in TestServerConfigErrors count from here.
const serverConfig = `data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
targets:
  demo-api:
    kind: token
    config:
      issuer: http://127.0.0.1:8700
      audience: demo-api
      generate_key: true
  scratch:
    kind: fake
entitlements:
  - name: demo-api/read
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
    spec:
      scopes: ["demo:read"]
  - name: scratch/use
    target: scratch
    max_duration: 10m
    approval:
      required: 1
      approvers: [bob]
`

// writeServerConfig writes a configuration and a sealing key into a new
// directory and returns the configuration's path.
func writeServerConfig(t testing.TB, src string) string {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sealing.key"), []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "lapse.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(src, "{{DIR}}", filepath.Join(dir, "data"))), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServerConfigErrors starts lapse server with broken configurations:
// each must fail before serving, with an error naming the file, line and
// field, and exit non-zero.
func TestServerConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(string) string
		line int
		path string
	}{
		{"unknown key", func(s string) string { return s + "listn: 127.0.0.1:1\n" }, 26, "listn"},
		{"bad duration", func(s string) string { return strings.Replace(s, "max_duration: 10m", "max_duration: ten minutes", 1) }, 22, "entitlements[1].max_duration"},
		{"unknown target", func(s string) string { return strings.Replace(s, "target: scratch", "target: scrach", 1) }, 21, "entitlements[1].target"},
		{"duplicate entitlement", func(s string) string { return strings.Replace(s, "name: scratch/use", "name: demo-api/read", 1) }, 20, "entitlements[1].name"},
		{"bad secret ref", func(s string) string {
			return strings.Replace(s, "{file: sealing.key}", "{file: sealing.key, env: LAPSE_SEALING_KEY}", 1)
		}, 3, "sealing_key"},
		{"secret file missing", func(s string) string { return strings.Replace(s, "{file: sealing.key}", "{file: missing.key}", 1) }, 3, "sealing_key"},
		{"secret env unset", func(s string) string {
			return strings.Replace(s, "{file: sealing.key}", "{env: LAPSE_TEST_SURELY_UNSET_VARIABLE}", 1)
		}, 3, "sealing_key"},
		{"unknown connector kind", func(s string) string { return strings.Replace(s, "kind: fake", "kind: ldap", 1) }, 12, "targets.scratch.kind"},
		{"typo in a connector's option", func(s string) string { return strings.Replace(s, "audience: demo-api", "audiense: demo-api", 1) }, 9, "targets.demo-api.config.audiense"},
		{"connector rejects an option", func(s string) string {
			return strings.Replace(s, "issuer: http://127.0.0.1:8700", "issuer: not a url", 1)
		}, 8, "targets.demo-api.config.issuer"},
		{"connector rejects a spec", func(s string) string { return strings.Replace(s, `scopes: ["demo:read"]`, `scopes: "demo:read"`, 1) }, 19, "entitlements[0].spec.scopes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeServerConfig(t, tt.edit(serverConfig))
			_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a configuration error", err, err)
			}
			if ce.File != path || ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("error at %s:%d %q, want line %d field %q: %v", ce.File, ce.Line, ce.Path, tt.line, tt.path, err)
			}
			var errb strings.Builder
			m := &Main{Stderr: &errb}
			if code := m.ExitStatus(err); code == exitOK {
				t.Error("exit status 0")
			}
			if want := path + ":" + strconv.Itoa(tt.line) + ":"; !strings.Contains(errb.String(), want) {
				t.Errorf("printed %q, want it to contain %q", errb.String(), want)
			}
		})
	}
}

// TestServerRunsAndShutsDown starts lapse server on SQLite, uses it, and
// checks that a shutdown closes the store (it can be opened again).
func TestServerRunsAndShutsDown(t *testing.T) {
	path := writeServerConfig(t, serverConfig)
	stdout, _, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", "Alice", "--scope", "read,request")
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(stdout)
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "info")
	var health map[string]string
	if code := call(t, "GET", r.url+"/healthz", "", nil, &health); code != 200 || health["status"] != "ok" {
		t.Errorf("healthz: %d %v", code, health)
	}
	if code := call(t, "GET", r.url+"/readyz", "", nil, nil); code != 200 {
		t.Errorf("readyz: %d", code)
	}
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", key, lapse.RequestInput{Entitlement: "demo-api/read"}, &res); code != 201 || res.Credentials == nil {
		t.Fatalf("request: status %d %+v", code, res)
	}
	// The metrics of docs/operations.md, each with a series from the
	// start (failure counters at 0 per target), so alerts see the first
	// change rather than a series appearing.
	metrics := metricsText(t, r.url)
	for _, want := range []string{
		`lapse_grants{state="active"} 1`,
		"lapse_revocation_overshoot_seconds_count 0",
		`lapse_revoke_failures_total{target="demo-api"} 0`,
		`lapse_revoke_failures_total{target="scratch"} 0`,
		`lapse_queue_due{target="demo-api"}`,
		`lapse_queue_inflight{target="scratch"}`,
		`lapse_connector_calls_total{op="grant",outcome="ok",target="demo-api"} 1`,
		`lapse_connector_call_seconds_count{op="grant",target="demo-api"} 1`,
		"lapse_engine_fenced_total 0",
		"lapse_audit_degraded 0",
	} {
		if !strings.Contains(metrics, "\n"+want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	var jwks struct{ Keys []map[string]any }
	if code := call(t, "GET", r.url+"/v1/targets/demo-api/jwks.json", "", nil, &jwks); code != 200 || len(jwks.Keys) != 1 {
		t.Errorf("jwks: status %d, %d keys", code, len(jwks.Keys))
	}
	if !strings.Contains(r.stderr.String(), `"msg":"lapse server started"`) {
		t.Errorf("no JSON start-up log line:\n%s", r.stderr.String())
	}
	if err := r.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if !strings.Contains(r.stderr.String(), "lapse server stopped") {
		t.Error("no clean stop logged")
	}
	if strings.Contains(r.stderr.String(), key) || strings.Contains(r.stderr.String(), res.Credentials.Secret["token"]) {
		t.Error("a secret appears in the logs")
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dsn, _ := cfg.ResolveStoreDSN()
	s, err := sqlstore.Open(context.Background(), "sqlite", dsn)
	if err != nil {
		t.Fatalf("reopen the store after shutdown: %v", err)
	}
	defer s.Close()
	g, err := s.GetGrant(context.Background(), res.Grant.ID)
	if err != nil || g.State != lapse.GrantActive {
		t.Errorf("grant after shutdown: %v %v", g, err)
	}
}

// TestServerPostgres runs the server and lapse admin on a PostgreSQL store
// whose DSN comes from the environment.
func TestServerPostgres(t *testing.T) {
	dsn := sqltest.PostgresDSN(t)
	env := "LAPSE_TEST_DSN_" + strings.ToUpper(lapse.NewID("x", time.Now())[2:12])
	t.Setenv(env, dsn)
	src := strings.Replace(serverConfig, "sealing_key:", "store:\n  driver: postgres\n  dsn: {env: "+env+"}\nsealing_key:", 1)
	path := writeServerConfig(t, src)

	stdout, _, err := runLapse(t, "admin", "apikey", "create", "-c", path, "--principal", "ops", "--scope", "admin")
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(stdout)
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var p lapse.Principal
	if code := call(t, "GET", r.url+"/v1/whoami", key, nil, &p); code != 200 || p.ID != "ops" {
		t.Errorf("whoami: %d %+v", code, p)
	}
	if strings.Contains(r.stderr.String(), dsn) {
		t.Error("the DSN appears in the logs")
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestAdminAPIKey bootstraps keys directly in the store: create prints the
// secret once, list never shows it, revoke takes effect, and both leave an
// event in the audit log.
func TestAdminAPIKey(t *testing.T) {
	path := writeServerConfig(t, serverConfig)
	stdout, stderr, err := runLapse(t, "admin", "apikey", "create", "--config", path,
		"--principal", "Ops-Admin", "--kind", "human", "--group", "ops", "--scope", "admin", "--name", "bootstrap", "--ttl", "24h")
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(stdout)
	prefix, ok := authn.ParseAPIKey(secret)
	if !ok || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("create printed %q; want exactly the secret", stdout)
	}
	if !strings.Contains(stderr, prefix) || strings.Contains(stderr, secret) {
		t.Errorf("create's notice %q must name the prefix and not the secret", stderr)
	}

	stdout, _, err = runLapse(t, "admin", "apikey", "list", "--config", path, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stdout, secret) || strings.Contains(stdout, "hash") {
		t.Error("list shows the secret or its hash")
	}
	var list struct{ APIKeys []*lapse.APIKey }
	if err := json.Unmarshal([]byte(stdout), &list); err != nil || len(list.APIKeys) != 1 {
		t.Fatalf("list -o json = %s (%v)", stdout, err)
	}
	k := list.APIKeys[0]
	if k.Prefix != prefix || k.Principal.ID != "ops-admin" || k.Principal.Kind != lapse.KindHuman || k.Name != "bootstrap" ||
		len(k.Principal.Groups) != 1 || k.ExpiresAt.Sub(k.CreatedAt).Hours() != 24 || !strings.HasPrefix(k.CreatedBy, "local:") {
		t.Errorf("listed key = %+v", k)
	}
	stdout, _, err = runLapse(t, "admin", "apikey", "list", "--config", path)
	if err != nil || !strings.Contains(stdout, prefix) || !strings.Contains(stdout, "expires ") {
		t.Errorf("list table = %q, %v", stdout, err)
	}

	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dsn, _ := cfg.ResolveStoreDSN()
	openStore := func() *sqlstore.Store {
		s, err := sqlstore.Open(context.Background(), "sqlite", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	auth := &authn.APIKeys{Keys: openStore(), Clock: lapse.SystemClock{}}
	if _, err := auth.Authenticate(context.Background(), secret); err != nil {
		t.Errorf("the new key does not authenticate: %v", err)
	}

	if _, _, err := runLapse(t, "admin", "apikey", "revoke", "--config", path, prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Authenticate(context.Background(), secret); lapse.ErrorCode(err) != lapse.EUNAUTHORIZED {
		t.Errorf("the revoked key authenticates: %v", err)
	}
	_, _, err = runLapse(t, "admin", "apikey", "revoke", "--config", path, "aaaaaaaaaaaa")
	if lapse.ErrorCode(err) != lapse.ENOTFOUND {
		t.Errorf("revoke of an unknown prefix = %v", err)
	}

	events, err := openStore().ListEvents(context.Background(), lapse.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
		if !strings.HasPrefix(e.ActorID, "local:") || e.Channel != lapse.ChannelCLI || strings.Contains(string(e.Data), secret) {
			t.Errorf("event %+v", e)
		}
	}
	if strings.Join(types, ",") != lapse.EventAPIKeyCreated+","+lapse.EventAPIKeyRevoked {
		t.Errorf("events = %v", types)
	}
}

func TestAdminAPIKeyCreateInputErrors(t *testing.T) {
	path := writeServerConfig(t, serverConfig)
	for _, args := range [][]string{
		{"--principal", "x"},                    // no scope
		{"--scope", "read"},                     // no principal
		{"--principal", "x", "--scope", "root"}, // unknown scope
		{"--principal", "x", "--scope", "read", "--kind", "robot"},
		{"--principal", "x", "--scope", "read", "--ttl", "-1h"},
		{"--principal", "a b", "--scope", "read"},
	} {
		_, _, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", path}, args...)...)
		if lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("create %v = %v, want EINVALID", args, err)
		}
	}
}

// TestServerInsertOnlyAuditRole is the setup of docs/audit.md, "Database
// roles", through the CLI: the schema's owner runs lapse admin migrate and
// lapse admin grant-server-role; lapse server then runs as a role that
// may not migrate, issues and revokes a grant, and signs its events — and
// that role cannot rewrite or delete an audit row.
func TestServerInsertOnlyAuditRole(t *testing.T) {
	roles := sqltest.PostgresRoles(t)
	suffix := strings.ToUpper(lapse.NewID("x", time.Now())[2:12])
	ownerEnv, serverEnv := "LAPSE_TEST_OWNER_DSN_"+suffix, "LAPSE_TEST_SERVER_DSN_"+suffix
	t.Setenv(ownerEnv, roles.OwnerDSN)
	t.Setenv(serverEnv, roles.ServerDSN)
	ownerCfg := writeServerConfig(t, strings.Replace(serverConfig, "sealing_key:", "store:\n  driver: postgres\n  dsn: {env: "+ownerEnv+"}\nsealing_key:", 1))
	serverCfg := writeServerConfig(t, strings.Replace(serverConfig, "sealing_key:",
		"store:\n  driver: postgres\n  dsn: {env: "+serverEnv+"}\n  skip_migrations: true\nsealing_key:", 1))

	// Before the owner migrates, the server refuses to start, saying so.
	_, _, err := runLapse(t, "server", "--config", serverCfg, "--listen", "127.0.0.1:0")
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE || !strings.Contains(err.Error(), "lapse admin migrate") {
		t.Fatalf("server on an unmigrated schema: %v; want EUNAVAILABLE pointing at lapse admin migrate", err)
	}
	if out, _, err := runLapse(t, "admin", "migrate", "--config", ownerCfg); err != nil || !strings.Contains(out, "schema version") {
		t.Fatalf("admin migrate: %v %q", err, out)
	}
	if out, _, err := runLapse(t, "admin", "grant-server-role", "--config", ownerCfg, roles.Server); err != nil || !strings.Contains(out, roles.Server) {
		t.Fatalf("admin grant-server-role: %v %q", err, out)
	}
	out, _, err := runLapse(t, "admin", "apikey", "create", "--config", serverCfg, "--principal", "alice", "--scope", "read,request")
	if err != nil {
		t.Fatalf("admin apikey create as the server role: %v", err)
	}
	alice := strings.TrimSpace(out)

	r := startLapse(t, "server", "--config", serverCfg, "--listen", "127.0.0.1:0")
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/read"}, &res); code != 201 || res.Grant == nil {
		t.Fatalf("request as the server role: %d", code)
	}
	var g lapse.Grant
	if code := call(t, "POST", r.url+"/v1/grants/"+res.Grant.ID+"/release", alice, lapse.ReleaseInput{Wait: true}, &g); code != 200 || g.State != lapse.GrantRevoked {
		t.Fatalf("release as the server role: %d %s", code, g.State)
	}
	if err := r.stop(); err != nil { // the last round integrates and signs every event
		t.Fatal(err)
	}
	if out, stderr, err := runLapse(t, "audit", "verify", "--config", serverCfg); err != nil || !strings.Contains(out, "result        OK") {
		t.Fatalf("audit verify as the server role: %v\n%s%s", err, out, stderr)
	}

	raw := sqltest.OpenRaw(t, roles.ServerDSN)
	for _, q := range []string{
		"UPDATE events SET outcome = 'forged'",
		"DELETE FROM events",
		"UPDATE audit_leaves SET hash = hash",
		"DELETE FROM audit_checkpoints",
		"TRUNCATE audit_nodes",
		"UPDATE approvals SET comment = 'forged'",
	} {
		if _, err := raw.Exec(q); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the server role: %v, want permission denied", q, err)
		}
	}
	// The owner's grant-server-role is itself on the record.
	owner := sqltest.OpenRaw(t, roles.OwnerDSN)
	var n int
	if err := owner.QueryRow("SELECT count(*) FROM events WHERE event_type = $1", lapse.EventServerRoleGranted).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d %s events (%v), want 1", n, lapse.EventServerRoleGranted, err)
	}
}
