package redis

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Discover lists, from ACL LIST on every node:
//   - every user whose name starts with the prefix (Ephemeral, with the
//     grant ID the name encodes), with its command, key and channel rules;
//   - every other enabled user that can run a command the catalog's specs
//     entitle, with the entitled commands and categories it can run.
//
// Each principal also carries one "node:NAME" entry per node it was found
// on, so a user left on one replica shows as such. Whether another user
// can run an entitled command is computed from its command rules and the
// server's own ACL CAT lists; key and channel patterns are not compared.
// Returns EINVALID for a bad spec and EUNAVAILABLE if a node cannot be read.
func (c *Conn) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	var entitled []string
	for i, raw := range req.Specs {
		s, err := parseSpec(raw)
		if err != nil {
			return nil, &lapse.Error{Code: lapse.EINVALID, Field: fmt.Sprintf("specs[%d]", i), Message: lapse.ErrorMessage(err), Err: err}
		}
		for _, p := range s.privileges() {
			if !slices.Contains(entitled, p) {
				entitled = append(entitled, p)
			}
		}
	}
	sort.Strings(entitled)

	lists := make([][]string, len(c.nodes))
	errs := c.eachIndexed(ctx, func(ctx context.Context, i int, n *node) error {
		l, err := n.admin.Do(ctx, "ACL", "LIST").StringSlice()
		if err != nil {
			return nodeError(n, "acl list", err)
		}
		lists[i] = l
		return nil
	})
	if err := firstError(errs); err != nil {
		return nil, err
	}
	cats, err := c.categoryMembers(ctx)
	if err != nil {
		return nil, err
	}

	found := map[string]*connector.DiscoveredPrincipal{}
	var order []string
	for i, n := range c.nodes {
		for _, line := range lists[i] {
			u, ok := parseACLLine(line)
			if !ok {
				continue
			}
			var privs []string
			ephemeral := strings.HasPrefix(u.name, c.cfg.Prefix)
			if ephemeral {
				privs = u.ruleTokens()
			} else {
				if !u.enabled {
					continue
				}
				for _, e := range entitled {
					if u.canRunAny(e, cats) {
						privs = append(privs, e)
					}
				}
				if len(privs) == 0 {
					continue
				}
			}
			p := found[u.name]
			if p == nil {
				p = &connector.DiscoveredPrincipal{Name: u.name, Ephemeral: ephemeral}
				if ephemeral {
					if id := strings.TrimPrefix(u.name, c.cfg.Prefix); safeName(id, MaxGrantIDLength) {
						p.GrantID = id
					}
				}
				found[u.name] = p
				order = append(order, u.name)
			}
			for _, pr := range append(privs, "node:"+n.name) {
				if !slices.Contains(p.Privileges, pr) {
					p.Privileges = append(p.Privileges, pr)
				}
			}
		}
	}
	sort.Strings(order)
	resp := &connector.DiscoverResponse{}
	for _, name := range order {
		resp.Principals = append(resp.Principals, *found[name])
	}
	return resp, nil
}

// categoryMembers reads every ACL category's commands from the first node
// in one pipeline, so membership follows the server's version.
func (c *Conn) categoryMembers(ctx context.Context) (map[string]map[string]bool, error) {
	n := c.nodes[0]
	pipe := n.admin.Pipeline()
	cmds := map[string]*goredis.Cmd{}
	for cat := range categories {
		cmds[cat] = pipe.Do(ctx, "ACL", "CAT", cat)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nodeError(n, "acl cat", err)
	}
	out := map[string]map[string]bool{}
	for cat, cmd := range cmds {
		members, err := cmd.StringSlice()
		if err != nil {
			return nil, nodeError(n, "acl cat "+cat, err)
		}
		set := map[string]bool{}
		for _, m := range members {
			set[m] = true
			if parent, _, ok := strings.Cut(m, "|"); ok {
				// A category holding a subcommand lets a user run part
				// of the parent command.
				set[parent] = true
			}
		}
		out[cat] = set
	}
	return out, nil
}

// aclUser is one line of ACL LIST.
type aclUser struct {
	name    string
	enabled bool
	// rules holds the root rules and then each selector's rules.
	rules [][]string
}

// parseACLLine parses "user NAME on|off RULES… (SELECTOR RULES…)…".
// User names cannot contain spaces, so splitting on spaces is exact.
func parseACLLine(line string) (aclUser, bool) {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "user" {
		return aclUser{}, false
	}
	u := aclUser{name: f[1], rules: [][]string{nil}}
	inSelector := false
	for _, t := range f[2:] {
		switch t {
		case "on":
			u.enabled = true
			continue
		case "off":
			continue
		}
		if strings.HasPrefix(t, "(") {
			u.rules = append(u.rules, nil)
			t = t[1:]
			inSelector = true
		}
		closing := inSelector && strings.HasSuffix(t, ")")
		if closing {
			t = t[:len(t)-1]
		}
		if t != "" {
			last := len(u.rules) - 1
			if !inSelector {
				last = 0
			}
			u.rules[last] = append(u.rules[last], t)
		}
		if closing {
			inSelector = false
		}
	}
	return u, true
}

// ruleTokens returns the command, key and channel rules, never a password
// hash.
func (u aclUser) ruleTokens() []string {
	var out []string
	for _, rs := range u.rules {
		for _, t := range rs {
			if t == "" {
				continue
			}
			switch t[0] {
			case '+', '-', '~', '%', '&':
				out = append(out, t)
			default:
				if t == "allcommands" || t == "allkeys" || t == "allchannels" || t == "nopass" {
					out = append(out, t)
				}
			}
		}
	}
	return out
}

// canRunAny reports whether the user can run the command of an entitled
// token ("+get", "+config|get") or any command of an entitled category
// ("+@read").
func (u aclUser) canRunAny(token string, cats map[string]map[string]bool) bool {
	if cat, ok := strings.CutPrefix(token, "+@"); ok {
		for cmd := range cats[cat] {
			if u.canRun(cmd, cats) {
				return true
			}
		}
		return false
	}
	return u.canRun(strings.TrimPrefix(token, "+"), cats)
}

// canRun evaluates the rules in order for one command (the last rule that
// matches wins, as in Redis), in the root rules or any selector.
func (u aclUser) canRun(cmd string, cats map[string]map[string]bool) bool {
	parent, _, hasSub := strings.Cut(cmd, "|")
	for _, rs := range u.rules {
		allowed := false
		for _, t := range rs {
			switch {
			case t == "+@all" || t == "allcommands":
				allowed = true
			case t == "-@all" || t == "nocommands":
				allowed = false
			case strings.HasPrefix(t, "+@"):
				if cats[t[2:]][cmd] {
					allowed = true
				}
			case strings.HasPrefix(t, "-@"):
				if cats[t[2:]][cmd] {
					allowed = false
				}
			case strings.HasPrefix(t, "+"):
				x := t[1:]
				if x == cmd || (hasSub && x == parent) || (!hasSub && strings.HasPrefix(x, cmd+"|")) {
					allowed = true
				}
			case strings.HasPrefix(t, "-"):
				x := t[1:]
				if x == cmd || (hasSub && x == parent) {
					allowed = false
				}
			}
		}
		if allowed {
			return true
		}
	}
	return false
}
