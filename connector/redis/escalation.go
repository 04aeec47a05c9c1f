package redis

import (
	"context"
	"slices"
	"strings"

	"github.com/lapsehq/lapse/connector"
)

// Admin powers (connector.EscalationChecker). Redis has no roles: what a
// grant can do is exactly its ACL rules, so the check reads the spec and
// asks the server nothing. It counts as admin powers the categories @all,
// @admin and @dangerous, and the commands that manage users (ACL), load
// code (MODULE), change or read the server's configuration and secrets
// (CONFIG: with CONFIG SET dir and SAVE a user writes files as the server),
// debug it (DEBUG), stop it (SHUTDOWN), change replication or the cluster
// (REPLICAOF, SLAVEOF, FAILOVER, SYNC, PSYNC, CLUSTER's changing
// subcommands) or see every other client's commands (MONITOR, which
// ignores the grant's key patterns).
//
// A spec names them as written, before the connector's own guards: ACL
// and MODULE are never granted and the spec is refused if it names them,
// and without privileged: true the rules end with -@dangerous. The lint
// reports what the entitlement asks for, so an entitlement that asks for
// admin powers is flagged even where a guard would take some of them away.
// A deny_commands or deny_categories entry that removes a rule again
// cancels it.

// adminCommands are the commands that count, with why. A subcommand counts
// when its parent does, unless harmlessSubcommands lists it.
var adminCommands = map[string]string{
	"acl":       "manages users and their rules",
	"module":    "loads code into the server",
	"config":    "reads and changes the server's configuration, including its passwords and where it writes files",
	"debug":     "debugs and can crash the server",
	"shutdown":  "stops the server",
	"replicaof": "makes the server a replica of another",
	"slaveof":   "makes the server a replica of another",
	"failover":  "hands the primary role to a replica",
	"sync":      "copies the whole dataset, whatever the key patterns",
	"psync":     "copies the whole dataset, whatever the key patterns",
	"monitor":   "sees every command of every client, whatever the key patterns",
	"cluster":   "changes the cluster's slots and nodes",
}

// harmlessSubcommands read nothing secret and change nothing.
var harmlessSubcommands = map[string]bool{
	"acl|whoami": true, "acl|cat": true, "acl|genpass": true, "acl|help": true,
	"config|help": true, "config|resetstat": true,
	"cluster|info": true, "cluster|nodes": true, "cluster|slots": true, "cluster|shards": true,
	"cluster|myid": true, "cluster|myshardid": true, "cluster|keyslot": true, "cluster|countkeysinslot": true,
	"cluster|getkeysinslot": true, "cluster|help": true, "cluster|links": true,
}

// adminCategories are the categories that count, with why.
var adminCategories = map[string]string{
	"all":       "every command, including ACL, CONFIG and MODULE",
	"admin":     "administrative commands: CONFIG, ACL, SHUTDOWN, DEBUG, replication",
	"dangerous": "every command Redis calls dangerous, the administrative ones included",
}

// cancelledBy says which denied categories take an admin category away
// again (@admin is part of @dangerous, and both are part of @all).
var cancelledBy = map[string][]string{
	"all":       {"dangerous"},
	"admin":     {"admin", "dangerous"},
	"dangerous": {"dangerous"},
}

// AdminPowers implements connector.EscalationChecker from the spec alone
// (see above); it never fails for a spec that passed ValidateSpec, and
// returns EINVALID for lists that are not lists of strings.
func (c *Conn) AdminPowers(_ context.Context, spec map[string]any) ([]string, error) {
	lists := map[string][]string{}
	for _, k := range []string{"commands", "categories", "deny_commands", "deny_categories"} {
		l, err := stringList("spec."+k, spec[k])
		if err != nil {
			return nil, err
		}
		lists[k] = l
	}
	denied := func(list string, v string) bool { return slices.Contains(lists[list], v) }
	var out []string
	for _, cat := range lists["categories"] {
		why, ok := adminCategories[cat]
		if !ok || slices.ContainsFunc(cancelledBy[cat], func(d string) bool { return denied("deny_categories", d) }) {
			continue
		}
		out = append(out, "rule +@"+cat+": "+why)
	}
	for _, cmd := range lists["commands"] {
		parent, _, _ := strings.Cut(cmd, "|")
		why, ok := adminCommands[parent]
		if !ok || harmlessSubcommands[cmd] || denied("deny_commands", cmd) || denied("deny_commands", parent) ||
			denied("deny_categories", "admin") || denied("deny_categories", "dangerous") {
			continue
		}
		out = append(out, "rule +"+cmd+": "+why)
	}
	return out, nil
}

var _ connector.EscalationChecker = (*Conn)(nil)
