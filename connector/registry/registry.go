// Package registry is the one reviewable list of code that can touch a
// target: every connector kind Lapse can open, by the name a configuration
// uses in a target's kind. Adding a connector means adding a line here, and
// nothing else can reach a production system.
package registry

import (
	"context"
	"sort"
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/connector/mariadb"
	"github.com/lapsehq/lapse/connector/postgres"
	"github.com/lapsehq/lapse/connector/redis"
	"github.com/lapsehq/lapse/connector/token"
)

// Kinds maps a target kind to the factory that opens it.
var Kinds = map[string]connector.Factory{
	"fake":     fake.Open,
	"mariadb":  mariadb.Open,
	"postgres": postgres.Open,
	"redis":    redis.Open,
	"token":    token.Open,
}

// KnownKinds returns the registered kinds, sorted and comma-separated, for
// error messages and help.
func KnownKinds() string {
	names := make([]string, 0, len(Kinds))
	for k := range Kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Open opens a connector of the given kind. decode strictly decodes the
// target's configuration block (see config.Target.Decode).
//
// Returns EINVALID (field "kind") for an unknown kind, listing the known
// ones; otherwise whatever the connector's factory returns.
func Open(ctx context.Context, kind string, env connector.Env, decode func(any) error) (connector.Connector, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	open, ok := Kinds[kind]
	if !ok {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "kind", "unknown connector kind %q (known: %s)", kind, KnownKinds())
	}
	if decode == nil {
		decode = func(any) error { return nil }
	}
	return open(env, decode)
}
