package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Use logs in as the grant's user (AUTH with its password) on every node,
// as a grantee may reach any of them (a replica accepts logins too), and
// sends one command. It returns nil if any node accepted the credentials,
// a denial if every node refused them with WRONGPASS, and an error if a
// node could not be asked.
func (c *Conn) Use(ctx context.Context, req *connector.ExerciseRequest) error {
	user, password, err := c.exerciseCredentials(req)
	if err != nil {
		return err
	}
	errs := c.each(ctx, func(ctx context.Context, n *node) error {
		o := n.base()
		o.Username, o.Password = user, password
		o.PoolSize, o.MaxIdleConns = 1, 0
		cl := goredis.NewClient(o)
		defer cl.Close()
		return grantee(n, user, cl.Ping(ctx).Err())
	})
	var denied, other []string
	for i, err := range errs {
		switch {
		case err == nil:
			return nil
		case connector.Denied(err):
			denied = append(denied, c.nodes[i].name)
		default:
			other = append(other, err.Error())
		}
	}
	if len(other) > 0 {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot reach every Redis node to exercise the grant", Err: errors.New(strings.Join(other, "; "))}
	}
	return fmt.Errorf("redis: AUTH as %s refused (WRONGPASS) on %s: %w", user, strings.Join(denied, ", "), connector.ErrDenied)
}

// grantee classifies the reply of a command sent as the grant's user. A
// reply from the server, even NOPERM (the user may not PING), means the
// login was accepted; WRONGPASS means it was refused.
func grantee(n *node, user string, err error) error {
	var re goredis.Error
	switch {
	case err == nil:
		return nil
	case goredis.HasErrorPrefix(err, "WRONGPASS"):
		return fmt.Errorf("redis: node %s: AUTH as %s refused: %w", n.name, user, connector.ErrDenied)
	case goredis.HasErrorPrefix(err, "NOPERM"):
		return nil
	case errors.As(err, &re):
		return fmt.Errorf("redis: node %s: exercise as %s: %s", n.name, user, re.Error())
	default:
		return fmt.Errorf("redis: node %s: exercise as %s: %w", n.name, user, err)
	}
}

// Hold opens one connection as the grant's user on every node and keeps
// them, idle, as long-lived clients would. Each is pinned: its client
// refuses to dial a second time, so a connection the server closed is not
// silently replaced by a new login.
func (c *Conn) Hold(ctx context.Context, req *connector.ExerciseRequest) (connector.HeldSession, error) {
	user, password, err := c.exerciseCredentials(req)
	if err != nil {
		return nil, err
	}
	h := &heldSessions{user: user}
	for _, n := range c.nodes {
		s := &heldNode{node: n}
		o := n.base()
		o.Username, o.Password = user, password
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 1, 0, 1
		dial := goredis.NewDialer(o)
		o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.dialed {
				return nil, errHeldEnded
			}
			conn, err := dial(ctx, network, addr)
			if err == nil {
				s.dialed = true
				s.local = conn.LocalAddr().String()
			}
			return conn, err
		}
		s.client = goredis.NewClient(o)
		h.nodes = append(h.nodes, s)
		if err := grantee(n, user, s.client.Ping(ctx).Err()); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// errHeldEnded is what a held session's client returns instead of logging
// in again.
var errHeldEnded = errors.New("the held connection ended; a held session does not reconnect")

func (c *Conn) exerciseCredentials(req *connector.ExerciseRequest) (user, password string, err error) {
	user, password = req.Info["username"], req.Secret["password"]
	if user == "" || password == "" {
		return "", "", lapse.Errorf(lapse.EINVALID, "redis: the grant carries no credential; it cannot be exercised")
	}
	if !safeName(user, MaxUserNameLength) || !strings.HasPrefix(user, c.cfg.Prefix) {
		return "", "", lapse.FieldErrorf(lapse.EINVALID, "info.username", "not a user this connector makes")
	}
	return user, password, nil
}

// heldSessions are the held connections of one grant, one per node.
type heldSessions struct {
	user  string
	nodes []*heldNode
}

type heldNode struct {
	node   *node
	client *goredis.Client
	mu     sync.Mutex // guards dialed and local
	dialed bool
	local  string
	alive  bool // at the last Check
}

// Check sends PING on every held connection. It returns nil while any of
// them still works (Describe then names those), a denial once all have
// ended, and an error if a node could not tell.
func (h *heldSessions) Check(ctx context.Context) error {
	var alive bool
	var unknown []string
	for _, s := range h.nodes {
		err := s.client.Ping(ctx).Err()
		s.alive = false
		switch {
		case err == nil || goredis.HasErrorPrefix(err, "NOPERM"):
			s.alive = true
			alive = true
		case ctx.Err() != nil:
			unknown = append(unknown, fmt.Sprintf("node %s: %v", s.node.name, ctx.Err()))
		}
		// Anything else — EOF, a reset, a refused second dial, an AUTH
		// that now fails — means this connection has ended.
	}
	switch {
	case alive:
		return nil
	case len(unknown) > 0:
		return fmt.Errorf("redis: check held sessions: %s", strings.Join(unknown, "; "))
	default:
		return fmt.Errorf("redis: every held connection of %s has ended: %w", h.user, connector.ErrDenied)
	}
}

// Describe names the held connections: after a Check that found some
// still working, only those.
func (h *heldSessions) Describe() string {
	var all, alive []string
	for _, s := range h.nodes {
		s.mu.Lock()
		d := fmt.Sprintf("redis connection of user %s on node %s (%s, client %s)", h.user, s.node.name, s.node.addr, s.local)
		s.mu.Unlock()
		all = append(all, d)
		if s.alive {
			alive = append(alive, d)
		}
	}
	if len(alive) > 0 {
		return strings.Join(alive, "; ")
	}
	return strings.Join(all, "; ")
}

// Close implements connector.HeldSession.
func (h *heldSessions) Close() error {
	var errs []error
	for _, s := range h.nodes {
		errs = append(errs, s.client.Close())
	}
	return errors.Join(errs...)
}

var _ connector.Exerciser = (*Conn)(nil)
