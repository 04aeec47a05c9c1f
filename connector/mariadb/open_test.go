package mariadb_test

import (
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// TestOpenDecodesYAML opens the connector through its factory from a
// target's YAML config block, as the server does (strict decoding), with
// the DSN from the environment so it never sits in the file.
func TestOpenDecodesYAML(t *testing.T) {
	mustAdmin(t)
	t.Setenv("LAPSE_TEST_MARIADB_ADMIN_DSN", testDSN())
	decoder := func(src string) func(any) error {
		return func(v any) error { return yaml.UnmarshalWithOptions([]byte(src), v, yaml.Strict()) }
	}
	c, err := mariadb.Open(connector.Env{Name: "db"}, decoder(`
dsn: {env: LAPSE_TEST_MARIADB_ADMIN_DSN}
prefix: jit_
account_host: "10.0.%"
definers: keep
kill_wait: 5s
`))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if cl, ok := c.(connector.Closer); ok {
		cl.Close()
	}
	if _, err := mariadb.Open(connector.Env{}, decoder("dsn: x\nunknown_key: 1\n")); err == nil {
		t.Error("Open accepted an unknown config key")
	}
	_, err = mariadb.Open(connector.Env{}, decoder("dsn: {env: LAPSE_TEST_MARIADB_ADMIN_DSN}\nprefix: much_too_long_\n"))
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "prefix" {
		t.Errorf("Open with a long prefix: %v, want invalid prefix", err)
	}
}
