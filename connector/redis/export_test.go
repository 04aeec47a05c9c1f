package redis

import "context"

// SabotageRevoke makes Revoke, on every node for which sabotage returns
// true, do what brokers that leave access behind do instead of deleting
// the user and closing its connections: mode "off" runs
// `ACL SETUSER <user> off` (new logins fail, authenticated connections
// keep working), mode "skip" does nothing. It exists only in tests, to
// prove that Verify catches a revocation that silently did not happen.
func SabotageRevoke(c *Conn, mode string, sabotage func(node string) bool) {
	real := revokeOnNode
	c.revokeNode = func(ctx context.Context, n *node, user string) (nodeRevocation, error) {
		if !sabotage(n.name) {
			return real(ctx, n, user)
		}
		if mode == "off" {
			if err := n.admin.Do(ctx, "ACL", "SETUSER", user, "off").Err(); err != nil {
				return nodeRevocation{}, err
			}
		}
		// Report success, as a broken connector would.
		return nodeRevocation{deleted: true}, nil
	}
}

// RestoreRevoke undoes SabotageRevoke.
func RestoreRevoke(c *Conn) { c.revokeNode = revokeOnNode }

// CheckerIdentity returns the user the connection Verify uses on a node is
// logged in as (ACL WHOAMI), so tests can check that an accepted login
// probe did not leave it logged in as the grant's user.
func CheckerIdentity(ctx context.Context, c *Conn, node string) (string, error) {
	return c.byName[node].checker.Load().Do(ctx, "ACL", "WHOAMI").Text()
}
