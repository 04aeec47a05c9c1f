package redis

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lapsehq/lapse"
)

// Spec is an entitlement's description of the ACL rules a grant receives.
// Each element becomes exactly one argument of ACL SETUSER, prefixed by the
// connector (`+`, `-`, `~`, `%R~`, `%W~`, `&`), so no element can carry a
// second rule. Every element is checked against a strict grammar before any
// command is built.
//
// In YAML:
//
//	spec:
//	  commands: [get, set, "client|setname"]
//	  categories: [read]
//	  keys: ["app:*"]
//	  channels: ["events:*"]
type Spec struct {
	// Commands are allowed commands (`get`) or subcommands (`config|get`).
	Commands []string `json:"commands,omitempty"`
	// Categories are allowed ACL categories without the `@` (`read`).
	Categories []string `json:"categories,omitempty"`
	// DenyCommands and DenyCategories are removed after the allowed ones,
	// to carve exceptions out of a category.
	DenyCommands   []string `json:"deny_commands,omitempty"`
	DenyCategories []string `json:"deny_categories,omitempty"`
	// Keys are key patterns readable and writable; ReadKeys and WriteKeys
	// are read-only and write-only patterns (Redis 7).
	Keys      []string `json:"keys,omitempty"`
	ReadKeys  []string `json:"read_keys,omitempty"`
	WriteKeys []string `json:"write_keys,omitempty"`
	// Channels are Pub/Sub channel patterns.
	Channels []string `json:"channels,omitempty"`
	// AllKeys and AllChannels grant every key or channel. A pattern that
	// matches everything (`*`, `?*`) is refused in the lists above, so
	// "all keys" is always an explicit, reviewable flag.
	AllKeys     bool `json:"all_keys,omitempty"`
	AllChannels bool `json:"all_channels,omitempty"`
	// Privileged allows the @admin and @dangerous categories and their
	// commands (CONFIG, FLUSHALL, KEYS, …). Without it the connector refuses
	// them in the spec and also appends `-@dangerous` to the rules, so a
	// broad category such as @read cannot smuggle in KEYS or INFO.
	// Even with it, ACL and MODULE are never granted: an ACL-capable user
	// could create accounts that outlive the grant, and a module runs
	// arbitrary code in the server.
	Privileged bool `json:"privileged,omitempty"`
}

// Limits on a spec, so a catalog entry cannot build an unbounded command.
const (
	maxSpecElements = 64
	maxRuleLength   = 128
)

// categories are Redis 7.0's ACL categories (ACL CAT).
var categories = map[string]bool{
	"keyspace": true, "read": true, "write": true, "set": true, "sortedset": true,
	"list": true, "hash": true, "string": true, "bitmap": true, "hyperloglog": true,
	"geo": true, "stream": true, "pubsub": true, "admin": true, "fast": true,
	"slow": true, "blocking": true, "dangerous": true, "connection": true,
	"transaction": true, "scripting": true,
}

// privilegedCategories need Spec.Privileged.
var privilegedCategories = map[string]bool{"admin": true, "dangerous": true}

// neverCommands are never granted, whatever the spec says (see
// Spec.Privileged). The check applies to the command and every subcommand.
var neverCommands = map[string]bool{"acl": true, "module": true}

// dangerousCommands are the commands and subcommands in Redis 7.0's
// @dangerous category (a superset of @admin), from `ACL CAT dangerous`. A
// spec without Privileged may not name them; the server-side `-@dangerous`
// guard covers commands a newer server adds to the category.
var dangerousCommands = toSet(`acl|deluser acl|dryrun acl|getuser acl|list acl|load acl|log acl|save
acl|setuser acl|users bgrewriteaof bgsave client|kill client|list client|no-evict client|pause
client|unblock client|unpause cluster|addslots cluster|addslotsrange cluster|bumpepoch
cluster|count-failure-reports cluster|delslots cluster|delslotsrange cluster|failover
cluster|flushslots cluster|forget cluster|meet cluster|replicas cluster|replicate cluster|reset
cluster|saveconfig cluster|set-config-epoch cluster|setslot cluster|slaves config|get
config|resetstat config|rewrite config|set debug failover flushall flushdb info keys lastsave
latency|doctor latency|graph latency|histogram latency|history latency|latest latency|reset
migrate module|list module|load module|loadex module|unload monitor pfdebug pfselftest psync
replconf replicaof restore restore-asking role save shutdown slaveof slowlog|get slowlog|len
slowlog|reset sort sort_ro swapdb sync`)

// dangerousParents are commands with at least one dangerous subcommand:
// granting the parent grants them all.
var dangerousParents = func() map[string]bool {
	m := map[string]bool{}
	for c := range dangerousCommands {
		if parent, _, ok := strings.Cut(c, "|"); ok {
			m[parent] = true
		}
	}
	return m
}()

func toSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Fields(s) {
		m[f] = true
	}
	return m
}

// parseSpec decodes and validates an entitlement spec. Unknown fields, wrong
// types and any element outside the grammar are EINVALID errors naming the
// field. It walks the map directly rather than round-tripping through
// JSON: it runs on every grant, and a spec is small and flat.
func parseSpec(raw map[string]any) (*Spec, error) {
	if raw == nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec is empty: name at least one command or category")
	}
	var s Spec
	for k, v := range raw {
		if dst := s.list(k); dst != nil {
			l, err := stringList("spec."+k, v)
			if err != nil {
				return nil, err
			}
			*dst = l
			continue
		}
		if dst := s.flag(k); dst != nil {
			b, isBool := v.(bool)
			if !isBool && v != nil {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec."+k, "must be true or false")
			}
			*dst = b
			continue
		}
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "unknown field %s in a redis spec", quote(k))
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// list returns the list field a spec key names, or nil.
func (s *Spec) list(key string) *[]string {
	switch key {
	case "commands":
		return &s.Commands
	case "categories":
		return &s.Categories
	case "deny_commands":
		return &s.DenyCommands
	case "deny_categories":
		return &s.DenyCategories
	case "keys":
		return &s.Keys
	case "read_keys":
		return &s.ReadKeys
	case "write_keys":
		return &s.WriteKeys
	case "channels":
		return &s.Channels
	}
	return nil
}

// flag returns the boolean field a spec key names, or nil.
func (s *Spec) flag(key string) *bool {
	switch key {
	case "all_keys":
		return &s.AllKeys
	case "all_channels":
		return &s.AllChannels
	case "privileged":
		return &s.Privileged
	}
	return nil
}

// stringList accepts a list of strings as YAML and JSON decoders produce
// it ([]any or []string), or null.
func stringList(field string, v any) ([]string, error) {
	switch l := v.(type) {
	case nil:
		return nil, nil
	case []string:
		if len(l) > maxSpecElements {
			return nil, lapse.FieldErrorf(lapse.ETOOLARGE, field, "at most %d elements", maxSpecElements)
		}
		return slices.Clone(l), nil
	case []any:
		if len(l) > maxSpecElements {
			return nil, lapse.FieldErrorf(lapse.ETOOLARGE, field, "at most %d elements", maxSpecElements)
		}
		out := make([]string, len(l))
		for i, e := range l {
			str, ok := e.(string)
			if !ok {
				return nil, lapse.FieldErrorf(lapse.EINVALID, fmt.Sprintf("%s[%d]", field, i), "must be a string")
			}
			out[i] = str
		}
		return out, nil
	default:
		return nil, lapse.FieldErrorf(lapse.EINVALID, field, "must be a list of strings")
	}
}

func (s *Spec) validate() error {
	lists := []struct {
		field string
		items []string
		check func(field, v string) error
	}{
		{"commands", s.Commands, s.checkAllowedCommand},
		{"categories", s.Categories, s.checkAllowedCategory},
		{"deny_commands", s.DenyCommands, checkCommandSyntax},
		{"deny_categories", s.DenyCategories, checkCategory},
		{"keys", s.Keys, checkPattern},
		{"read_keys", s.ReadKeys, checkPattern},
		{"write_keys", s.WriteKeys, checkPattern},
		{"channels", s.Channels, checkPattern},
	}
	for _, l := range lists {
		if len(l.items) > maxSpecElements {
			return lapse.FieldErrorf(lapse.ETOOLARGE, "spec."+l.field, "at most %d elements", maxSpecElements)
		}
		for i, v := range l.items {
			// The element's field name is only built for an error: this
			// runs on every grant.
			if err := l.check("", v); err != nil {
				if e, ok := err.(*lapse.Error); ok {
					e.Field = fmt.Sprintf("spec.%s[%d]", l.field, i)
				}
				return err
			}
		}
	}
	if len(s.Commands)+len(s.Categories) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.commands", "name at least one command or category")
	}
	if s.AllKeys && len(s.Keys)+len(s.ReadKeys)+len(s.WriteKeys) > 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.all_keys", "all_keys excludes keys, read_keys and write_keys")
	}
	if s.AllChannels && len(s.Channels) > 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.all_channels", "all_channels excludes channels")
	}
	return nil
}

// checkCommandSyntax accepts `cmd` or `cmd|sub`: lowercase letters, digits,
// `_` and `-`, starting with a letter, and nothing that the ACL DSL reads as
// a keyword of its own.
func checkCommandSyntax(field, v string) error {
	if len(v) == 0 || len(v) > maxRuleLength {
		return lapse.FieldErrorf(lapse.EINVALID, field, "command must be 1 to %d characters", maxRuleLength)
	}
	parent, sub, hasSub := strings.Cut(v, "|")
	if !isCommandWord(parent) || (hasSub && !isCommandWord(sub)) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is not a command name like get or config|get", quote(v))
	}
	return nil
}

func isCommandWord(w string) bool {
	if w == "" || w[0] < 'a' || w[0] > 'z' {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Spec) checkAllowedCommand(field, v string) error {
	if err := checkCommandSyntax(field, v); err != nil {
		return err
	}
	parent, _, _ := strings.Cut(v, "|")
	if neverCommands[parent] {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is never granted: it could create access that outlives the grant", quote(v))
	}
	if !s.Privileged && (dangerousCommands[v] || dangerousParents[v]) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is an admin or dangerous command: set privileged: true to grant it", quote(v))
	}
	return nil
}

func checkCategory(field, v string) error {
	if !categories[v] {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is not an ACL category (write it without @)", quote(v))
	}
	return nil
}

func (s *Spec) checkAllowedCategory(field, v string) error {
	if v == "all" {
		return lapse.FieldErrorf(lapse.EINVALID, field, "the all category is never granted: it includes ACL")
	}
	if err := checkCategory(field, v); err != nil {
		return err
	}
	if privilegedCategories[v] && !s.Privileged {
		return lapse.FieldErrorf(lapse.EINVALID, field, "category %s needs privileged: true", v)
	}
	return nil
}

// checkPattern accepts key and channel patterns made of a conservative
// character set: no spaces, quotes, `%`, `[`, `\`, parentheses or control
// characters, so a pattern is one rule in ACL SETUSER, one token in ACL
// LIST and in an ACL file, and cannot open a selector. `*` and `?` are the
// only glob operators. A pattern of nothing but wildcards matches every key
// and is refused: use all_keys or all_channels to say so.
func checkPattern(field, v string) error {
	if len(v) == 0 || len(v) > maxRuleLength {
		return lapse.FieldErrorf(lapse.EINVALID, field, "pattern must be 1 to %d characters", maxRuleLength)
	}
	literal := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			literal = true
		case strings.IndexByte(":_.-/@{}#=+,", c) >= 0:
			literal = true
		case c == '*' || c == '?':
		default:
			return lapse.FieldErrorf(lapse.EINVALID, field, "pattern %s has a character outside A-Z a-z 0-9 : _ . - / @ { } # = + , * ?", quote(v))
		}
	}
	if !literal {
		return lapse.FieldErrorf(lapse.EINVALID, field, "pattern %s matches everything: use all_keys or all_channels", quote(v))
	}
	return nil
}

// quote renders caller input for an error message: escaped and bounded.
func quote(v string) string {
	if len(v) > 40 {
		v = v[:40] + "…"
	}
	return fmt.Sprintf("%q", v)
}

// setUserArgs returns the ACL SETUSER command that gives user the spec's
// rules: the rules follow the user name, in order. `reset` first makes the
// result exact whatever the user held before and whatever the server's
// defaults are (acl-pubsub-default): the user ends with these rules and
// nothing else. passwordHash is the hex SHA-256 of the password, so the
// clear password is never sent to the server.
func (s *Spec) setUserArgs(user, passwordHash string) []any {
	n := 3 + 4 + 2 + len(s.Keys) + len(s.ReadKeys) + len(s.WriteKeys) + len(s.Channels) +
		len(s.Categories) + len(s.Commands) + len(s.DenyCategories) + len(s.DenyCommands) + 2
	r := make([]any, 0, n)
	r = append(r, "ACL", "SETUSER", user, "reset", "resetchannels", "on", "#"+passwordHash)
	if s.AllKeys {
		r = append(r, "~*")
	}
	for _, k := range s.Keys {
		r = append(r, "~"+k)
	}
	for _, k := range s.ReadKeys {
		r = append(r, "%R~"+k)
	}
	for _, k := range s.WriteKeys {
		r = append(r, "%W~"+k)
	}
	if s.AllChannels {
		r = append(r, "&*")
	}
	for _, c := range s.Channels {
		r = append(r, "&"+c)
	}
	for _, c := range s.Categories {
		r = append(r, "+@"+c)
	}
	for _, c := range s.Commands {
		r = append(r, "+"+c)
	}
	for _, c := range s.DenyCategories {
		r = append(r, "-@"+c)
	}
	for _, c := range s.DenyCommands {
		r = append(r, "-"+c)
	}
	// The guards come last, because the last matching rule wins.
	if s.Privileged {
		r = append(r, "-acl", "-module")
	} else {
		r = append(r, "-@dangerous")
	}
	return r
}

// privileges lists the spec's grants as ACL tokens, for Discover.
func (s *Spec) privileges() []string {
	var p []string
	for _, c := range s.Categories {
		p = append(p, "+@"+c)
	}
	for _, c := range s.Commands {
		p = append(p, "+"+c)
	}
	return p
}
