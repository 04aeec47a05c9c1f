package redis_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	lredis "github.com/lapsehq/lapse/connector/redis"
)

// offline is a connector whose node is never dialled: enough for spec and
// name checks that must not need a server.
func offline(t *testing.T, mod ...func(*lredis.Config)) *lredis.Conn {
	t.Helper()
	cfg := lredis.Config{Nodes: []lredis.NodeConfig{{Name: "n", Addr: "127.0.0.1:1"}}}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := lredis.New(context.Background(), cfg, connector.Env{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// hostileSpecs are specs that must be rejected before any command is
// built: each tries to smuggle a rule, a keyword or a character that
// could split or extend a rule, or asks for an escalation.
var hostileSpecs = map[string]map[string]any{
	"empty":                     {},
	"unknown field":             {"commands": []any{"get"}, "rules": []any{"+@all"}},
	"password field":            {"commands": []any{"get"}, "passwords": []any{">pw"}},
	"commands not a list":       {"commands": "get"},
	"command not a string":      {"commands": []any{1}},
	"privileged not a bool":     {"commands": []any{"get"}, "privileged": "yes"},
	"command with space":        {"commands": []any{"get nopass"}},
	"command with rule":         {"commands": []any{"+@all"}},
	"command with semicolon":    {"commands": []any{"get;flushall"}},
	"command with quote":        {"commands": []any{"get'"}},
	"command with dquote":       {"commands": []any{`get"`}},
	"command with NUL":          {"commands": []any{"get\x00"}},
	"command with CRLF":         {"commands": []any{"get\r\nACL SETUSER x on nopass +@all"}},
	"command invalid UTF-8":     {"commands": []any{"get\xff"}},
	"command non-ASCII":         {"commands": []any{"gét"}},
	"command with percent":      {"commands": []any{"get%"}},
	"command upper case":        {"commands": []any{"GET"}},
	"command password rule":     {"commands": []any{">pw"}},
	"command empty subcommand":  {"commands": []any{"config|"}},
	"command acl":               {"commands": []any{"acl"}},
	"command acl subcommand":    {"commands": []any{"acl|setuser"}},
	"command module":            {"commands": []any{"module|load"}, "privileged": true},
	"command acl privileged":    {"commands": []any{"acl|setuser"}, "privileged": true},
	"command dangerous":         {"commands": []any{"flushall"}},
	"command keys":              {"commands": []any{"keys"}},
	"command config set":        {"commands": []any{"config|set"}},
	"command dangerous parent":  {"commands": []any{"client"}},
	"command too long":          {"commands": []any{strings.Repeat("a", 129)}},
	"category all":              {"categories": []any{"all"}},
	"category all privileged":   {"categories": []any{"all"}, "privileged": true},
	"category admin":            {"categories": []any{"admin"}},
	"category dangerous":        {"categories": []any{"dangerous"}},
	"category with at":          {"categories": []any{"@read"}},
	"category with space":       {"categories": []any{"read +@all"}},
	"category unknown":          {"categories": []any{"nope"}},
	"deny command with space":   {"commands": []any{"get"}, "deny_commands": []any{"set +@all"}},
	"deny category unknown":     {"commands": []any{"get"}, "deny_categories": []any{"all;"}},
	"key star":                  {"commands": []any{"get"}, "keys": []any{"*"}},
	"key only wildcards":        {"commands": []any{"get"}, "keys": []any{"?*"}},
	"key with space":            {"commands": []any{"get"}, "keys": []any{"app:* allkeys"}},
	"key with rule":             {"commands": []any{"get"}, "keys": []any{"%R~*"}},
	"key with tilde":            {"commands": []any{"get"}, "keys": []any{"~*"}},
	"key with percent":          {"commands": []any{"get"}, "keys": []any{"app%"}},
	"key with quote":            {"commands": []any{"get"}, "keys": []any{"app'"}},
	"key with semicolon":        {"commands": []any{"get"}, "keys": []any{"app;x"}},
	"key with NUL":              {"commands": []any{"get"}, "keys": []any{"app\x00"}},
	"key invalid UTF-8":         {"commands": []any{"get"}, "keys": []any{"app\xff"}},
	"key selector":              {"commands": []any{"get"}, "keys": []any{"(app"}},
	"key bracket":               {"commands": []any{"get"}, "keys": []any{"[a]*"}},
	"key backslash":             {"commands": []any{"get"}, "keys": []any{`a\*`}},
	"key empty":                 {"commands": []any{"get"}, "keys": []any{""}},
	"key too long":              {"commands": []any{"get"}, "keys": []any{strings.Repeat("k", 129)}},
	"read key with space":       {"commands": []any{"get"}, "read_keys": []any{"a nopass"}},
	"write key star":            {"commands": []any{"get"}, "write_keys": []any{"*"}},
	"channel with space":        {"commands": []any{"get"}, "channels": []any{"c allchannels"}},
	"channel star":              {"commands": []any{"get"}, "channels": []any{"*"}},
	"all keys and keys":         {"commands": []any{"get"}, "all_keys": true, "keys": []any{"a:*"}},
	"all channels and channels": {"commands": []any{"get"}, "all_channels": true, "channels": []any{"a:*"}},
	"too many commands":         {"commands": manyCommands(65)},
}

func manyCommands(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = "get"
	}
	return out
}

func TestValidateSpecRejectsHostileInput(t *testing.T) {
	c := offline(t)
	for name, spec := range hostileSpecs {
		t.Run(name, func(t *testing.T) {
			err := c.ValidateSpec(spec)
			code := lapse.ErrorCode(err)
			if code != lapse.EINVALID && code != lapse.ETOOLARGE {
				t.Fatalf("ValidateSpec: %v (code %q), want invalid", err, code)
			}
			if lapse.ErrorField(err) == "" {
				t.Errorf("error %v names no field", err)
			}
		})
	}
}

func TestValidateSpecAccepts(t *testing.T) {
	c := offline(t)
	for name, spec := range map[string]map[string]any{
		"commands and keys":        {"commands": []any{"get", "set", "client|setname"}, "keys": []any{"app:*"}},
		"category":                 {"categories": []any{"read"}, "read_keys": []any{"cache:{user}:*"}, "write_keys": []any{"out:?"}},
		"keyword-like key literal": {"commands": []any{"get"}, "keys": []any{"allkeys", "nopass", "on"}},
		"all keys flagged":         {"commands": []any{"get"}, "all_keys": true, "all_channels": true},
		"privileged":               {"commands": []any{"config|get", "flushall"}, "categories": []any{"admin", "dangerous"}, "privileged": true},
		"deny":                     {"categories": []any{"read", "write"}, "deny_commands": []any{"del"}, "deny_categories": []any{"dangerous"}},
		"yaml-decoded types":       {"commands": []string{"get"}, "keys": []string{"a:*"}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := c.ValidateSpec(spec); err != nil {
				t.Fatalf("ValidateSpec: %v", err)
			}
		})
	}
}

func TestUserNameIsBoundedAndSafe(t *testing.T) {
	c := offline(t, func(cfg *lredis.Config) { cfg.Prefix = strings.Repeat("p", lredis.MaxPrefixLength) })
	longest := strings.Repeat("a", lredis.MaxGrantIDLength)
	name, err := c.UserName(longest)
	if err != nil {
		t.Fatalf("UserName(%d chars): %v", len(longest), err)
	}
	if len(name) != lredis.MaxUserNameLength || lredis.MaxUserNameLength != 64 {
		t.Errorf("len(name) = %d, bound %d", len(name), lredis.MaxUserNameLength)
	}
	for _, bad := range []string{
		longest + "a", "", "GR_ABC", "gr x", "gr'x", "gr;x", "gr\x00", "gr\xff", "gr%x", "_gr", "-gr", "gr|x", "gr~x", "gé",
	} {
		if _, err := c.UserName(bad); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("UserName(%q): %v, want invalid", bad, err)
		}
	}
	// The default prefix with a real grant ID.
	d := offline(t)
	id := grantID()
	if name, err := d.UserName(id); err != nil || name != "lapse_"+id {
		t.Errorf("UserName(%s) = %q, %v", id, name, err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() lredis.Config {
		return lredis.Config{Nodes: []lredis.NodeConfig{{Name: "primary", Addr: "10.0.0.1:6379"}, {Name: "replica-1", Addr: "10.0.0.2:6379"}}}
	}
	cfg := good()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if cfg.Prefix != lredis.DefaultPrefix || cfg.ClientAddr != "10.0.0.1:6379" || cfg.PoolSize == 0 || cfg.Timeout == 0 {
		t.Errorf("defaults not filled: %+v", cfg)
	}
	for name, mod := range map[string]func(*lredis.Config){
		"no nodes":           func(c *lredis.Config) { c.Nodes = nil },
		"duplicate name":     func(c *lredis.Config) { c.Nodes[1].Name = "primary" },
		"unsafe name":        func(c *lredis.Config) { c.Nodes[0].Name = "a b" },
		"no port":            func(c *lredis.Config) { c.Nodes[0].Addr = "10.0.0.1" },
		"bad port":           func(c *lredis.Config) { c.Nodes[0].Addr = "10.0.0.1:99999" },
		"prefix space":       func(c *lredis.Config) { c.Prefix = "lapse " },
		"prefix upper":       func(c *lredis.Config) { c.Prefix = "Lapse_" },
		"prefix digit first": func(c *lredis.Config) { c.Prefix = "1lapse" },
		"prefix too long":    func(c *lredis.Config) { c.Prefix = strings.Repeat("p", lredis.MaxPrefixLength+1) },
		"username space":     func(c *lredis.Config) { c.Nodes[0].Username = "admin x" },
		"pool too big":       func(c *lredis.Config) { c.PoolSize = 5000 },
		"negative timeout":   func(c *lredis.Config) { c.Timeout = -1 },
		"cert without key":   func(c *lredis.Config) { c.Nodes[0].TLS = &lredis.TLSConfig{CertFile: "c.pem"} },
		"bad client addr":    func(c *lredis.Config) { c.ClientAddr = "nowhere" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good()
			mod(&cfg)
			if err := cfg.Validate(); lapse.ErrorCode(err) != lapse.EINVALID && lapse.ErrorCode(err) != lapse.ETOOLARGE {
				t.Fatalf("Validate: %v, want invalid", err)
			}
		})
	}
}

// TestOpenDecodesYAML opens the connector the way the server does: the
// target's config block strictly decoded from YAML, with the admin
// password from the environment.
func TestOpenDecodesYAML(t *testing.T) {
	t.Setenv("LAPSE_TEST_REDIS_ADMIN", "s3cret-admin-password")
	block := `
prefix: jit_
timeout: 2s
nodes:
  - name: primary
    addr: 127.0.0.1:6379
    username: admin
    password: {env: LAPSE_TEST_REDIS_ADMIN}
`
	decode := func(src string) func(any) error {
		return func(v any) error { return yaml.UnmarshalWithOptions([]byte(src), v, yaml.Strict()) }
	}
	c, err := lredis.Open(connector.Env{Name: "cache"}, decode(block))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer c.(connector.Closer).Close()
	name, err := c.(*lredis.Conn).UserName("gr_x")
	if err != nil || name != "jit_gr_x" {
		t.Errorf("prefix from YAML not used: %q, %v", name, err)
	}
	if _, err := lredis.Open(connector.Env{}, decode(block+"    sentinel: true\n")); err == nil {
		t.Error("Open accepted an unknown key")
	}
	// A secret that cannot be read is EINVALID and does not leak others.
	dir := t.TempDir()
	missingFile := filepath.Join(dir, "absent")
	_, err = lredis.New(context.Background(), lredis.Config{Nodes: []lredis.NodeConfig{{Name: "a", Addr: "127.0.0.1:6379", Password: lapse.SecretRef{File: missingFile}}}}, connector.Env{})
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "nodes[0].password" {
		t.Errorf("unreadable secret: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("filed-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, err := lredis.New(context.Background(), lredis.Config{Nodes: []lredis.NodeConfig{{Name: "a", Addr: "127.0.0.1:6379", Password: lapse.SecretRef{File: filepath.Join(dir, "pw")}}}}, connector.Env{})
	if err != nil {
		t.Fatalf("New with a password file: %v", err)
	}
	fc.Close()
}

// TestAdminPasswordNeverInErrors: a wrong admin password makes Ping and
// Grant fail with EUNAVAILABLE, and the password is in no error text.
func TestAdminPasswordNeverInErrors(t *testing.T) {
	n := startServer(t, "primary", nil)
	wrong := "wrong-" + randHex(8)
	bad := n
	bad.password = wrong
	c := openConn(t, []node{bad})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := []error{c.Ping(ctx)}
	_, err := c.Grant(ctx, &connector.GrantRequest{GrantID: grantID(), Spec: testSpec()})
	errs = append(errs, err)
	_, err = c.Verify(ctx, &connector.VerifyRequest{GrantID: grantID()})
	errs = append(errs, err)
	for i, err := range errs {
		if lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
			t.Errorf("call %d: %v, want unavailable", i, err)
		}
		if err != nil && (strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), n.password)) {
			t.Errorf("call %d: error text contains an admin password", i)
		}
	}
}
