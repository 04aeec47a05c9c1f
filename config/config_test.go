package config_test

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
)

// base is a valid configuration that the error cases extend. Line numbers
// in the cases below count from its first line.
const base = `listen: 127.0.0.1:8700
sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  demo-api:
    kind: token
    config:
      audience: demo
entitlements:
  - name: demo-api/read
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
`

// mustParse parses src as lapse.yaml in a temporary directory.
func mustParse(t *testing.T, src string) *config.Config {
	t.Helper()
	c, err := config.Parse(filepath.Join(t.TempDir(), "lapse.yaml"), []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

// configError asserts that err is a positioned configuration error with
// code EINVALID and returns it.
func configError(t *testing.T, err error) *config.Error {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error is %T, not *config.Error: %v", err, err)
	}
	if code := lapse.ErrorCode(ce); code != lapse.EINVALID {
		t.Errorf("code = %q, want %q (%v)", code, lapse.EINVALID, err)
	}
	return ce
}

func TestParseDefaults(t *testing.T) {
	c := mustParse(t, `sealing_key: {file: keys/sealing.key}
targets:
  demo-api: {kind: token}
entitlements:
  - name: demo-api/read
    target: demo-api
    max_duration: 2h
    approval:
      required: 1
      approvers: ["group:Approvers", " Bob "]
    requesters: ["ＡＬＩＣＥ", "group:Dev"]
`)
	if c.Listen != config.DefaultListen {
		t.Errorf("Listen = %q, want %q", c.Listen, config.DefaultListen)
	}
	if c.DataDir != c.Dir || !filepath.IsAbs(c.Dir) {
		t.Errorf("DataDir = %q, Dir = %q; want the configuration's absolute directory", c.DataDir, c.Dir)
	}
	if c.Log.Level != "info" || c.Log.Format != "json" {
		t.Errorf("Log = %+v", c.Log)
	}
	if c.Store.Driver != "sqlite" {
		t.Errorf("Store.Driver = %q", c.Store.Driver)
	}
	dsn, err := c.ResolveStoreDSN()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(c.DataDir, "lapse.db"); dsn != want {
		t.Errorf("DSN = %q, want %q", dsn, want)
	}
	if want := filepath.Join(c.Dir, "keys", "sealing.key"); c.SealingKey.File != want {
		t.Errorf("SealingKey.File = %q, want %q (relative to the file)", c.SealingKey.File, want)
	}
	if c.Engine != (config.Engine{}) {
		t.Errorf("Engine = %+v, want zero (engine defaults)", c.Engine)
	}
	if len(c.Entitlements) != 1 {
		t.Fatalf("got %d entitlements", len(c.Entitlements))
	}
	e := c.Entitlements[0]
	if e.DefaultDuration.D() != 2*time.Hour || e.MaxDuration.D() != 2*time.Hour {
		t.Errorf("durations = %s/%s, want default = max = 2h", e.DefaultDuration, e.MaxDuration)
	}
	if e.PendingTimeout.D() != config.DefaultPendingTimeout {
		t.Errorf("PendingTimeout = %s", e.PendingTimeout)
	}
	if !slices.Equal(e.Lanes, []lapse.PrincipalKind{lapse.KindHuman}) {
		t.Errorf("Lanes = %v, want [human]", e.Lanes)
	}
	if want := []string{"group:approvers", "bob"}; !slices.Equal(e.Approval.Approvers, want) {
		t.Errorf("Approvers = %q, want %q", e.Approval.Approvers, want)
	}
	if want := []string{"alice", "group:dev"}; !slices.Equal(e.Requesters, want) {
		t.Errorf("Requesters = %q, want %q", e.Requesters, want)
	}
	if e.Approval.Required != 1 || e.Approval.Auto {
		t.Errorf("Approval = %+v", e.Approval)
	}
}

func TestParseFull(t *testing.T) {
	c := mustParse(t, `listen: 0.0.0.0:9000
data_dir: /var/lib/lapse
log: {level: debug, format: text}
store:
  driver: postgres
  dsn: {env: LAPSE_DSN}
sealing_key: {env: LAPSE_SEALING_KEY}
engine:
  lease: 45s
  batch_size: 100
  poll_interval: 250ms
  retry_base: 2s
  retry_max: 10m
  overdue_rate: 200.5
targets:
  b: {kind: fake, concurrency: 4}
  a: {kind: token}
entitlements:
  - name: b/x
    description: something
    target: b
    lanes: [service, agent]
    default_duration: 5m
    max_duration: 10m
    pending_timeout: 1h
    require_reason: true
    require_ticket: true
    approval: {auto: true}
    spec: {roles: [reader], nested: {n: 1}}
`)
	if c.Listen != "0.0.0.0:9000" || c.DataDir != "/var/lib/lapse" {
		t.Errorf("Listen/DataDir = %q/%q", c.Listen, c.DataDir)
	}
	if c.Log != (config.Log{Level: "debug", Format: "text"}) {
		t.Errorf("Log = %+v", c.Log)
	}
	if c.Store.Driver != "postgres" || c.Store.DSN.Env != "LAPSE_DSN" {
		t.Errorf("Store = %v %v", c.Store.Driver, c.Store.DSN)
	}
	want := config.Engine{Lease: 45 * time.Second, BatchSize: 100, PollInterval: 250 * time.Millisecond,
		RetryBase: 2 * time.Second, RetryMax: 10 * time.Minute, OverdueRate: 200.5}
	if c.Engine != want {
		t.Errorf("Engine = %+v, want %+v", c.Engine, want)
	}
	if got := c.TargetNames(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("TargetNames = %v", got)
	}
	if tg := c.Targets["b"]; tg.Kind != "fake" || tg.Concurrency != 4 || tg.Name != "b" {
		t.Errorf("target b = %+v", tg)
	}
	e := c.Entitlements[0]
	if !slices.Equal(e.Lanes, []lapse.PrincipalKind{lapse.KindService, lapse.KindAgent}) || !e.RequireReason || !e.RequireTicket ||
		e.DefaultDuration.D() != 5*time.Minute || e.PendingTimeout.D() != time.Hour || !e.Approval.Auto || e.Description != "something" {
		t.Errorf("entitlement = %+v", e)
	}
	roles, ok := e.Spec["roles"].([]any)
	if !ok || len(roles) != 1 || roles[0] != "reader" {
		t.Errorf("Spec = %#v", e.Spec)
	}
}

// TestParseErrors checks that each mistake is reported at its line and
// field. The cases append to or replace parts of base.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int
		path string
	}{
		{"unknown top-level key", base + "listne: x\n", 13, "listne"},
		{"unknown nested key", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_duraton: 2h\n", 1), 12, "entitlements[0].max_duraton"},
		{"unknown key in a target", strings.Replace(base, "    kind: token\n", "    kind: token\n    concurency: 3\n", 1), 6, "targets.demo-api.concurency"},
		{"bad duration", strings.Replace(base, "max_duration: 1h", "max_duration: 1hour", 1), 11, "entitlements[0].max_duration"},
		{"bad duration in a later entitlement", base + `  - name: demo-api/write
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
  - name: demo-api/admin
    target: demo-api
    max_duration: 1h
    default_duration: forever
    approval: {auto: true}
`, 20, "entitlements[2].default_duration"},
		{"zero duration", strings.Replace(base, "max_duration: 1h", "max_duration: 0s", 1), 11, "entitlements[0].max_duration"},
		{"negative duration", strings.Replace(base, "max_duration: 1h", "max_duration: -5m", 1), 11, "entitlements[0].max_duration"},
		{"absurd duration", strings.Replace(base, "max_duration: 1h", "max_duration: 100000h", 1), 11, "entitlements[0].max_duration"},
		{"default above max", strings.Replace(base, "max_duration: 1h", "max_duration: 1h\n    default_duration: 2h", 1), 12, "entitlements[0].default_duration"},
		{"missing max_duration", strings.Replace(base, "    max_duration: 1h\n", "", 1), 9, "entitlements[0].max_duration"},
		{"unknown target", strings.Replace(base, "    target: demo-api\n", "    target: demo-apx\n", 1), 10, "entitlements[0].target"},
		{"duplicate entitlement", base + `  - name: demo-api/read
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
`, 13, "entitlements[1].name"},
		{"bad entitlement name", strings.Replace(base, "demo-api/read", "Demo API/read", 1), 9, "entitlements[0].name"},
		{"long entitlement name", strings.Replace(base, "demo-api/read", "a/"+strings.Repeat("b", 127), 1), 9, "entitlements[0].name"},
		{"bad lane", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    lanes: [human, robot]\n", 1), 12, "entitlements[0].lanes[1]"},
		{"zero max_uses", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_uses: 0\n", 1), 12, "entitlements[0].max_uses"},
		{"negative max_uses", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_uses: -3\n", 1), 12, "entitlements[0].max_uses"},
		{"absurd max_uses", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_uses: 10000000000\n", 1), 12, "entitlements[0].max_uses"},
		{"max_uses not a number", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_uses: twice\n", 1), 12, "entitlements[0].max_uses"},
		{"no approval", strings.Replace(base, "    approval: {auto: true}\n", "", 1), 9, "entitlements[0].approval"},
		{"approval without approvers", strings.Replace(base, "{auto: true}", "{required: 1}", 1), 12, "entitlements[0].approval.approvers"},
		{"approval zero required", strings.Replace(base, "{auto: true}", "{required: 0, approvers: [bob]}", 1), 12, "entitlements[0].approval.required"},
		{"approval absurd quorum", strings.Replace(base, "{auto: true}", "{required: 50, approvers: [\"group:ops\"]}", 1), 12, "entitlements[0].approval.required"},
		{"approval quorum unreachable", strings.Replace(base, "{auto: true}", "{required: 2, approvers: [bob]}", 1), 12, "entitlements[0].approval.required"},
		{"auto with approvers", strings.Replace(base, "{auto: true}", "{auto: true, approvers: [bob]}", 1), 12, "entitlements[0].approval.approvers"},
		{"duplicate approver", strings.Replace(base, "{auto: true}", "\n      required: 1\n      approvers: [Bob, bob]", 1), 14, "entitlements[0].approval.approvers[1]"},
		{"bad requester", strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    requesters: [\"al ice\"]\n", 1), 12, "entitlements[0].requesters[0]"},
		{"bad secret ref", strings.Replace(base, "{env: LAPSE_TEST_SEALING_KEY}", "{env: A, file: b}", 1), 2, "sealing_key"},
		{"secret ref with unknown key", strings.Replace(base, "{env: LAPSE_TEST_SEALING_KEY}", "{path: b}", 1), 2, "sealing_key"},
		{"missing sealing key", strings.Replace(base, "sealing_key: {env: LAPSE_TEST_SEALING_KEY}\n", "", 1), 1, "sealing_key"},
		{"bad secret ref in store", base + "store:\n  driver: postgres\n  dsn: [a, b]\n", 15, "store.dsn"},
		{"postgres without dsn", base + "store:\n  driver: postgres\n", 13, "store.dsn"},
		{"bad store driver", base + "store:\n  driver: mysql\n", 14, "store.driver"},
		{"wrong type", strings.Replace(base, "    kind: token\n", "    kind: token\n    concurrency: many\n", 1), 6, "targets.demo-api.concurrency"},
		{"negative concurrency", strings.Replace(base, "    kind: token\n", "    kind: token\n    concurrency: -1\n", 1), 6, "targets.demo-api.concurrency"},
		{"missing kind", strings.Replace(base, "    kind: token\n", "", 1), 4, "targets.demo-api.kind"},
		{"bad target name", strings.Replace(base, "  demo-api:\n", "  Demo.API:\n", 1), 4, "targets.'Demo.API'"},
		{"bad listen", strings.Replace(base, "127.0.0.1:8700", "localhost", 1), 1, "listen"},
		{"bad log level", base + "log: {level: loud}\n", 13, "log.level"},
		{"bad log format", base + "log:\n  format: xml\n", 14, "log.format"},
		{"bad engine duration", base + "engine:\n  lease: soon\n", 14, "engine.lease"},
		{"engine out of bounds", base + "engine:\n  lease: 1ms\n", 14, "engine.lease"},
		{"engine retry_max below base", base + "engine:\n  retry_base: 1m\n  retry_max: 1s\n", 15, "engine.retry_max"},
		{"entitlements not a list", strings.Replace(base, "entitlements:\n", "entitlements:\n  x: 1\nignored:\n", 1), 9, "entitlements"},
		{"syntax error", base + "bad: [1, 2\n", 13, ""},
		{"duplicate key", base + "listen: 127.0.0.1:1\n", 13, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("lapse.yaml", []byte(tt.src))
			ce := configError(t, err)
			if ce.File != "lapse.yaml" {
				t.Errorf("File = %q", ce.File)
			}
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, err)
			}
			if tt.line > 0 && ce.Column == 0 {
				t.Errorf("no column (%v)", err)
			}
			prefix := "lapse.yaml:"
			if tt.line == 0 {
				prefix = "lapse.yaml: "
			}
			if msg := ce.Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, tt.path) {
				t.Errorf("message %q does not start with the file and name the field", msg)
			}
		})
	}
}

// TestParseReportsEveryError checks that semantic errors are collected, so
// one run shows them all, in file order.
func TestParseReportsEveryError(t *testing.T) {
	src := strings.Replace(base, "    target: demo-api\n", "    target: nope\n    lanes: [robot]\n", 1) + "log: {format: xml}\n"
	_, err := config.Parse("lapse.yaml", []byte(src))
	configError(t, err)
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d errors, want 3:\n%v", len(lines), err)
	}
	for i, want := range []string{"lapse.yaml:10:", "lapse.yaml:11:", "lapse.yaml:14:"} {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("error %d = %q, want prefix %q", i, lines[i], want)
		}
	}
}

func TestParseEmptyAndMultiDocument(t *testing.T) {
	for _, src := range []string{"", "# only a comment\n", base + "---\nlisten: x\n", "- a\n- b\n"} {
		_, err := config.Parse("lapse.yaml", []byte(src))
		configError(t, err)
	}
	_, err := config.Parse("lapse.yaml", make([]byte, config.MaxFileSize+1))
	configError(t, err)
}

// connectorConfig stands in for a connector's own configuration type.
type connectorConfig struct {
	Audience string         `yaml:"audience"`
	TTL      lapse.Duration `yaml:"ttl"`
	Leeway   time.Duration  `yaml:"leeway"`
	Nested   struct {
		Keys []lapse.Duration `yaml:"keys"`
	} `yaml:"nested"`
}

func TestTargetDecode(t *testing.T) {
	tests := []struct {
		name  string
		block string
		line  int
		path  string
	}{
		{"unknown key", "      audience: x\n      audiense: y\n", 8, "targets.demo-api.config.audiense"},
		{"bad lapse duration", "      ttl: 5 minutes\n", 7, "targets.demo-api.config.ttl"},
		{"bad time duration", "      audience: x\n      leeway: 5x\n", 8, "targets.demo-api.config.leeway"},
		{"bad nested duration", "      nested:\n        keys: [1m, 2x]\n", 8, "targets.demo-api.config.nested.keys[1]"},
		{"wrong type", "      audience: [a]\n", 7, "targets.demo-api.config.audience"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(base, "      audience: demo\n", tt.block, 1)
			c, err := config.Parse("lapse.yaml", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			var cc connectorConfig
			ce := configError(t, c.Targets["demo-api"].Decode(&cc))
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, ce)
			}
		})
	}

	c := mustParse(t, strings.Replace(base, "      audience: demo\n", "      audience: demo\n      ttl: 5m\n      leeway: 2s\n", 1))
	var cc connectorConfig
	if err := c.Targets["demo-api"].Decode(&cc); err != nil {
		t.Fatal(err)
	}
	if cc.Audience != "demo" || cc.TTL.D() != 5*time.Minute || cc.Leeway != 2*time.Second {
		t.Errorf("decoded %+v", cc)
	}

	// A target without a config block leaves the value untouched.
	c = mustParse(t, strings.Replace(base, "    config:\n      audience: demo\n", "", 1))
	cc = connectorConfig{Audience: "preset"}
	if err := c.Targets["demo-api"].Decode(&cc); err != nil || cc.Audience != "preset" {
		t.Errorf("Decode of a missing block = %v, %+v", err, cc)
	}
}

func TestPositionLaterErrors(t *testing.T) {
	c := mustParse(t, base)
	cause := lapse.FieldErrorf(lapse.EINVALID, "roles", "unknown role")
	err := c.EntitlementError("demo-api/read", "spec", cause)
	ce := configError(t, err)
	if ce.Line != 9 || ce.Path != "entitlements[0].spec" {
		t.Errorf("EntitlementError at %d %q, want the entitlement (line 9) since spec is absent", ce.Line, ce.Path)
	}
	if !errors.Is(err, cause) || lapse.ErrorField(err) != "roles" {
		t.Errorf("the cause is not kept: %v", err)
	}
	if got := c.EntitlementError("nope", "spec", cause); got != error(cause) {
		t.Errorf("unknown entitlement: got %v, want the cause unchanged", got)
	}
	ce = configError(t, c.TargetError("demo-api", "kind", lapse.Errorf(lapse.EINVALID, "unknown kind")))
	if ce.Line != 5 || ce.Path != "targets.demo-api.kind" {
		t.Errorf("TargetError at %d %q", ce.Line, ce.Path)
	}
	// A connector's error that names one of its options points at it.
	ce = configError(t, c.TargetError("demo-api", "config", lapse.FieldErrorf(lapse.EINVALID, "audience", "bad audience")))
	if ce.Line != 7 || ce.Path != "targets.demo-api.config.audience" {
		t.Errorf("TargetError for a connector option at %d %q", ce.Line, ce.Path)
	}
	// An option the block lacks is reported at the block, under its name.
	ce = configError(t, c.TargetError("demo-api", "config", lapse.FieldErrorf(lapse.EINVALID, "consumers[1]", "bad consumer")))
	if ce.Line != 6 || ce.Path != "targets.demo-api.config.consumers[1]" {
		t.Errorf("TargetError for a missing option at %d %q", ce.Line, ce.Path)
	}
	withSpec := mustParse(t, base+"    spec:\n      claims:\n        tier: [1]\n")
	ce = configError(t, withSpec.EntitlementError("demo-api/read", "spec", lapse.FieldErrorf(lapse.EINVALID, "spec.claims.tier", "bad claim")))
	if ce.Line != 15 || ce.Path != "entitlements[0].spec.claims.tier" {
		t.Errorf("EntitlementError for a spec field at %d %q", ce.Line, ce.Path)
	}
	// An error that already names its place is not re-positioned.
	var cc struct{ X int }
	inner := c.Targets["demo-api"].Decode(&cc)
	if got := c.TargetError("demo-api", "config", inner); got != inner {
		t.Errorf("TargetError re-positioned an positioned error: %v", got)
	}
}

func TestResolveSealingKey(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sealing.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "short.key"), []byte(base64.StdEncoding.EncodeToString(key[:16])), 0o600); err != nil {
		t.Fatal(err)
	}
	parse := func(ref string) *config.Config {
		t.Helper()
		c, err := config.Parse(filepath.Join(dir, "lapse.yaml"), []byte(strings.Replace(base, "{env: LAPSE_TEST_SEALING_KEY}", ref, 1)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	got, err := parse("{file: sealing.key}").ResolveSealingKey()
	if err != nil || string(got) != string(key) {
		t.Fatalf("from a relative file: %v", err)
	}
	t.Setenv("LAPSE_TEST_SEALING_KEY", base64.RawURLEncoding.EncodeToString(key))
	if got, err := parse("{env: LAPSE_TEST_SEALING_KEY}").ResolveSealingKey(); err != nil || string(got) != string(key) {
		t.Fatalf("from the environment: %v", err)
	}

	secret := base64.StdEncoding.EncodeToString(key[:16])
	for _, ref := range []string{"{file: short.key}", "{file: missing.key}", "{env: LAPSE_TEST_UNSET_VARIABLE}", "not-base64!", secret} {
		_, err := parse(ref).ResolveSealingKey()
		ce := configError(t, err)
		if ce.Line != 2 || ce.Path != "sealing_key" {
			t.Errorf("%s: at %d %q", ref, ce.Line, ce.Path)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the secret: %v", ref, err)
		}
	}
}

func TestResolveStoreDSN(t *testing.T) {
	c := mustParse(t, base+"store: {driver: sqlite, dsn: db/lapse.db}\n")
	dsn, err := c.ResolveStoreDSN()
	if err != nil || dsn != filepath.Join(c.Dir, "db", "lapse.db") {
		t.Errorf("relative SQLite path = %q, %v", dsn, err)
	}
	c = mustParse(t, base+"store: {driver: postgres, dsn: {env: LAPSE_TEST_UNSET_DSN}}\n")
	_, err = c.ResolveStoreDSN()
	if ce := configError(t, err); ce.Path != "store.dsn" || ce.Line != 13 {
		t.Errorf("unset env at %d %q", ce.Line, ce.Path)
	}
	t.Setenv("LAPSE_TEST_DSN", "postgres://u:pw@127.0.0.1/db")
	c = mustParse(t, base+"store: {driver: postgres, dsn: {env: LAPSE_TEST_DSN}}\n")
	if dsn, err := c.ResolveStoreDSN(); err != nil || dsn != "postgres://u:pw@127.0.0.1/db" {
		t.Errorf("postgres DSN = %q, %v", dsn, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lapse.yaml")
	if err := os.WriteFile(p, []byte(base+"listne: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(p)
	if ce := configError(t, err); ce.File != p || ce.Line != 13 {
		t.Errorf("error at %s:%d", ce.File, ce.Line)
	}
	_, err = config.Load(filepath.Join(dir, "missing.yaml"))
	configError(t, err)
}

// TestExamples loads every example configuration, so they cannot rot.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found %d example configurations, want at least 2", len(files))
	}
	for _, f := range files {
		c, err := config.Load(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(c.Targets) == 0 || len(c.Entitlements) == 0 {
			t.Errorf("%s: an example without targets or entitlements shows nothing", f)
		}
	}
}

// TestAnchorsAndMerges checks that a connector's block may reuse another
// block through an alias or a merge key, and that overriding a merged key
// is not mistaken for a duplicate.
func TestAnchorsAndMerges(t *testing.T) {
	c := mustParse(t, `sealing_key: x
targets:
  a:
    kind: token
    config: &common
      audience: demo
      ttl: 5m
  b:
    kind: token
    config:
      <<: *common
      audience: other
  c:
    kind: token
    config: *common
`)
	want := map[string]string{"a": "demo", "b": "other", "c": "demo"}
	for name, aud := range want {
		var cc connectorConfig
		if err := c.Targets[name].Decode(&cc); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if cc.Audience != aud || cc.TTL.D() != 5*time.Minute {
			t.Errorf("%s decoded %+v", name, cc)
		}
	}
	_, err := config.Parse("lapse.yaml", []byte("sealing_key: x\nlisten: 127.0.0.1:1\nlisten: 127.0.0.1:2\n"))
	if ce := configError(t, err); ce.Line != 3 {
		t.Errorf("a literal duplicate key is reported at line %d", ce.Line)
	}
}

// TestAgentsAndFence: an entitlement's agent lane policy and task fence,
// read strictly.
func TestAgentsAndFence(t *testing.T) {
	c := mustParse(t, strings.Replace(base, "    approval: {auto: true}\n", `    lanes: [human, agent]
    fence: wait
    agents: {approval: human}
    approval:
      auto: true
      approvers: ["group:leads"]
`, 1)+`  - name: demo-api/write
    target: demo-api
    lanes: [agent]
    max_duration: 1h
    fence: fail
    agents: {approval: policy}
    approval: {required: 2, approvers: ["group:leads"]}
  - name: demo-api/status
    target: demo-api
    max_duration: 1h
    fence: none
    approval: {auto: true}
`)
	read, write, status := c.Entitlements[0], c.Entitlements[1], c.Entitlements[2]
	if read.Fence != lapse.FenceWait || read.Agents == nil || read.Agents.Approval != lapse.AgentApprovalHuman ||
		!read.Approval.Auto || !slices.Equal(read.Approval.Approvers, []string{"group:leads"}) {
		t.Errorf("demo-api/read = fence %q agents %+v approval %+v", read.Fence, read.Agents, read.Approval)
	}
	if r := read.RuleFor(lapse.KindAgent); r.Auto || r.Required != 1 {
		t.Errorf("agent rule of demo-api/read = %+v, want 1 human approval", r)
	}
	if r := read.RuleFor(lapse.KindHuman); !r.Auto {
		t.Errorf("human rule of demo-api/read = %+v, want auto", r)
	}
	if write.Fence != lapse.FenceFail || write.Agents.Approval != lapse.AgentApprovalPolicy || write.RuleFor(lapse.KindAgent).Required != 2 {
		t.Errorf("demo-api/write = fence %q agents %+v", write.Fence, write.Agents)
	}
	if status.Fence != lapse.FenceNone || status.Agents != nil {
		t.Errorf("demo-api/status = fence %q agents %+v", status.Fence, status.Agents)
	}

	agentLanes := "    lanes: [human, agent]\n"
	for _, tt := range []struct {
		name, replace string
		line          int
		path          string
	}{
		{"unknown fence", "    fence: later\n    approval: {auto: true}\n", 12, "entitlements[0].fence"},
		{"unknown agents key", agentLanes + "    agents: {approval: human, risk: high}\n    approval: {auto: true, approvers: [bob]}\n", 13, "entitlements[0].agents.risk"},
		{"unknown agents approval", agentLanes + "    agents: {approval: sometimes}\n    approval: {auto: true}\n", 13, "entitlements[0].agents.approval"},
		{"agents without approval", agentLanes + "    agents: {}\n    approval: {auto: true}\n", 13, "entitlements[0].agents.approval"},
		{"agents without the agent lane", "    agents: {approval: human}\n    approval: {auto: true, approvers: [bob]}\n", 12, "entitlements[0].agents"},
		{"human approval of agents without approvers", agentLanes + "    agents: {approval: human}\n    approval: {auto: true}\n", 14, "entitlements[0].approval.approvers"},
		{"agents quorum unreachable", agentLanes + "    agents: {approval: human}\n    approval: {auto: true, required: 2, approvers: [bob]}\n", 14, "entitlements[0].approval.required"},
		{"approvers with auto for policy agents", agentLanes + "    agents: {approval: policy}\n    approval: {auto: true, approvers: [bob]}\n", 14, "entitlements[0].approval.approvers"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(base, "    approval: {auto: true}\n", tt.replace, 1)
			ce := configError(t, func() error { _, err := config.Parse("lapse.yaml", []byte(src)); return err }())
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, ce)
			}
		})
	}
}

// TestMaxUses: max_uses reaches the entitlement; absent means no limit.
// Whether the target can count uses is checked when the server opens the
// connectors (cmd/lapse TestUseLimitNeedsATokenTarget).
func TestMaxUses(t *testing.T) {
	c := mustParse(t, strings.Replace(base, "    max_duration: 1h\n", "    max_duration: 1h\n    max_uses: 2\n", 1))
	if got := c.Entitlements[0].MaxUses; got != 2 {
		t.Errorf("MaxUses = %d, want 2", got)
	}
	if got := mustParse(t, base).Entitlements[0].MaxUses; got != 0 {
		t.Errorf("MaxUses without max_uses = %d, want 0", got)
	}
}
