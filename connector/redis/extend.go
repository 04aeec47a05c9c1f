package redis

import (
	"context"
	"errors"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Extend implements connector.Extender. Redis ACL users carry no deadline
// (only the broker's revocation ends a grant), so there is nothing to move:
// Extend checks, read-only, that the grant's user exists on every
// configured node, and returns nil. A node that lost the user (restarted
// without an ACL file, or revoked) means the grant no longer works there,
// which is worth more to the broker than an extension it cannot use.
//
// Returns ENOTFOUND if the user is missing on any node (reported ahead of
// an unreachable node: it is the definite answer), EINVALID for a bad
// grant ID, and EUNAVAILABLE if a node cannot be asked.
func (c *Conn) Extend(ctx context.Context, req *connector.ExtendRequest) error {
	user, err := c.UserName(req.GrantID)
	if err != nil {
		return err
	}
	st, _ := c.grantState(req.GrantID, req.State) // a State not the grant's is ignored, as by Revoke
	users := grantUsers(user, st)
	errs := c.each(ctx, func(ctx context.Context, n *node) error {
		pipe := n.admin.Pipeline()
		gets := make([]*goredis.Cmd, len(users))
		for i, u := range users {
			gets[i] = pipe.Do(ctx, "ACL", "GETUSER", u)
		}
		_, _ = pipe.Exec(ctx) // read per command below
		for i, g := range gets {
			err := g.Err()
			switch {
			case err == nil:
				return nil // the grant's user, under this or State's prefix
			case !errors.Is(err, goredis.Nil):
				return nodeError(n, "get user "+users[i], err)
			}
		}
		return lapse.Errorf(lapse.ENOTFOUND, "the grant's ACL user %s does not exist on redis node %s", user, n.name)
	})
	for _, err := range errs {
		if lapse.ErrorCode(err) == lapse.ENOTFOUND {
			return err
		}
	}
	return firstError(errs)
}

var _ connector.Extender = (*Conn)(nil)
