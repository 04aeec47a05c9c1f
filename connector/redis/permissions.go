package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
)

// RequiredPermissions are the ACL rules the connector's administrative
// account needs on every node, in the order they are reported:
//
//	ACL SETUSER lapse-admin on >… +acl|setuser +acl|deluser +acl|getuser +acl|list +acl|cat
//	    +client|kill +client|list +client|setname +multi +exec +ping
//
// acl|setuser, acl|deluser and acl|getuser make, delete and check users;
// acl|list and acl|cat are for Discover; client|kill and client|list end
// and find sessions; client|setname names the connector's connections
// "lapse" (without it every command fails); multi and exec wrap Revoke's
// commands in one transaction; ping is the readiness check (Ping).
// "+acl" instead of the five acl subcommands also works.
var RequiredPermissions = []string{
	"acl|setuser", "acl|deluser", "acl|getuser", "acl|list", "acl|cat",
	"client|kill", "client|list", "client|setname", "multi", "exec", "ping",
}

// nopermRE finds the command a NOPERM error names, in the wording of Redis
// 6 and 7 ("NOPERM this user has no permissions to run the 'multi'
// command", "NOPERM User x has no permissions to run the 'multi' command"),
// also inside an EXECABORT.
var nopermRE = regexp.MustCompile(`no permissions to run the '([a-z0-9_|-]+)' command`)

// refusedCommand returns the command a permission error names, or "".
func refusedCommand(err error) string {
	if err == nil {
		return ""
	}
	if m := nopermRE.FindStringSubmatch(err.Error()); m != nil {
		return m[1]
	}
	return ""
}

// isPermissionError reports whether err is the server refusing a command
// to the account, also when it aborted a transaction for that.
func isPermissionError(err error) bool {
	return goredis.IsPermissionError(err) || refusedCommand(err) != ""
}

// errCheckNotRun says a node could not be checked (unreachable, or it
// refused the admin credentials): that is left to the first real command.
var errCheckNotRun = errors.New("permission check not run")

// checkPermissions runs, on one connection of its own, a harmless command
// for each of RequiredPermissions, and returns the ones the server refused.
// Nothing changes on the server: the users it names are random and do not
// exist, ACL SETUSER gets a rule the server rejects after the permission
// check (so it creates nothing), and MULTI is followed by an empty EXEC. It
// returns an error wrapping errCheckNotRun if the node cannot be reached or
// refuses the credentials.
func checkPermissions(ctx context.Context, opt *goredis.Options) ([]string, error) {
	opt.ClientName = "" // tested below, explicitly
	opt.PoolSize = 1
	opt.MinIdleConns = 0
	cl := goredis.NewClient(opt)
	defer cl.Close()
	cn := cl.Conn()
	defer cn.Close()

	var b [8]byte
	_, _ = rand.Read(b[:])
	nobody := "lapse-permission-check-" + hex.EncodeToString(b[:])
	checks := []struct {
		perm string
		args []any
	}{
		{"ping", []any{"PING"}},
		{"client|setname", []any{"CLIENT", "SETNAME", "lapse-permission-check"}},
		{"acl|getuser", []any{"ACL", "GETUSER", nobody}},
		{"acl|deluser", []any{"ACL", "DELUSER", nobody}},
		{"acl|setuser", []any{"ACL", "SETUSER", nobody, "%"}}, // "%" alone is no valid rule
		{"acl|list", []any{"ACL", "LIST"}},
		{"acl|cat", []any{"ACL", "CAT"}},
		{"client|kill", []any{"CLIENT", "KILL", "USER", nobody}},
		{"client|list", []any{"CLIENT", "LIST", "ID", "9223372036854775807"}},
	}
	var missing []string
	for _, ch := range checks {
		err := cn.Do(ctx, ch.args...).Err()
		switch {
		case err == nil || errors.Is(err, goredis.Nil):
		case isPermissionError(err):
			missing = append(missing, ch.perm)
		case isReplyError(err):
			// The command ran (a user that does not exist, a rule the
			// server rejects): the permission is there.
		default:
			return nil, fmt.Errorf("%w: %w", errCheckNotRun, err)
		}
	}
	// MULTI with an empty EXEC. If MULTI is refused, EXEC runs outside a
	// transaction and fails either for its own permission or with "EXEC
	// without MULTI"; if only EXEC is refused, the server discards the
	// transaction (EXECABORT). The connection is closed after the check,
	// so it can never stay inside MULTI.
	var multi, exec *goredis.Cmd
	_, err := cn.Pipelined(ctx, func(p goredis.Pipeliner) error {
		multi = p.Do(ctx, "MULTI")
		exec = p.Do(ctx, "EXEC")
		return nil
	})
	if err != nil && !isReplyError(err) {
		return nil, fmt.Errorf("%w: %w", errCheckNotRun, err)
	}
	for _, e := range []error{multi.Err(), exec.Err()} {
		if cmd := refusedCommand(e); cmd == "multi" || cmd == "exec" {
			missing = append(missing, cmd)
		}
	}
	slices.SortStableFunc(missing, func(a, b string) int {
		return slices.Index(RequiredPermissions, a) - slices.Index(RequiredPermissions, b)
	})
	return slices.Compact(missing), nil
}

// isReplyError reports whether err is an error reply of the server (as
// opposed to a failure to reach it). An authentication failure is not:
// the check could not run as the admin.
func isReplyError(err error) bool {
	var rerr goredis.Error
	return errors.As(err, &rerr) && !goredis.IsAuthError(err) && !strings.HasPrefix(err.Error(), "NOAUTH")
}

// checkNodes checks the admin account's permissions on every node, each
// bounded by the connection and command timeouts. A node whose account
// lacks a permission makes it return EINVALID naming the node and the
// rules to add. A node that cannot be reached, or refuses the admin
// credentials, is only logged: it must not stop the broker from starting,
// and the first grant or revocation that needs it reports it.
func (c *Conn) checkNodes(ctx context.Context, options []*goredis.Options) error {
	errs := c.eachIndexed(ctx, func(ctx context.Context, i int, n *node) error {
		ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout.D()+2*c.cfg.Timeout.D())
		defer cancel()
		missing, err := checkPermissions(ctx, options[i])
		if err != nil {
			c.log.Warn("redis: could not check the admin account's permissions; the first command will show them", "node", n.name, "err", err)
			return nil
		}
		if len(missing) == 0 {
			return nil
		}
		rules := make([]string, len(missing))
		for j, m := range missing {
			rules[j] = "+" + m
		}
		return &lapse.Error{Code: lapse.EINVALID, Field: fmt.Sprintf("nodes[%d].username", i),
			Message: fmt.Sprintf("the admin account of redis node %s lacks permissions the connector needs: %s (ACL SETUSER %s %s)",
				n.name, strings.Join(rules, " "), adminName(c.cfg.Nodes[i].Username), strings.Join(rules, " ")),
			Err: fmt.Errorf("redis: node %s: missing permissions %s", n.name, strings.Join(missing, ", "))}
	})
	return firstError(errs)
}

func adminName(username string) string {
	if username == "" {
		return "default"
	}
	return username
}
