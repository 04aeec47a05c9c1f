package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// errConnectionKilled is ER_CONNECTION_KILLED: the server ended the
// session (KILL CONNECTION).
const errConnectionKilled = 1927

// Use logs in as the grant's user with its password, with the same driver,
// address and TLS settings as Verify's login probe, and runs one query. A
// refusal of the credentials (access denied, account locked) is a denial;
// anything else is an error.
func (c *Conn) Use(ctx context.Context, req *connector.ExerciseRequest) error {
	db, user, err := c.exerciseDB(req)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout.D())
	defer cancel()
	var who string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&who); err != nil {
		return loginError(user, err)
	}
	return nil
}

// Hold opens one connection as the grant's user and keeps it, idle, until
// it is closed: what a connection pool does. The connection is pinned: if
// it ends, the held session has ended; it is never replaced.
func (c *Conn) Hold(ctx context.Context, req *connector.ExerciseRequest) (connector.HeldSession, error) {
	db, user, err := c.exerciseDB(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout.D())
	defer cancel()
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, loginError(user, err)
	}
	h := &heldSession{db: db, conn: conn, user: user, addr: c.cfg.Address}
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&h.id); err != nil {
		h.Close()
		return nil, loginError(user, err)
	}
	return h, nil
}

// exerciseDB returns a client that logs in as the grant's user, holding at
// most one connection.
func (c *Conn) exerciseDB(req *connector.ExerciseRequest) (*sql.DB, string, error) {
	user, password := req.Info["user"], req.Secret["password"]
	if user == "" || password == "" {
		return nil, "", lapse.Errorf(lapse.EINVALID, "mariadb: the grant carries no login credential; it cannot be exercised")
	}
	if !userRE.MatchString(user) || user == c.admin.User {
		return nil, "", lapse.FieldErrorf(lapse.EINVALID, "info.user", "not a user this connector makes")
	}
	pc := c.admin.Clone()
	pc.User, pc.Passwd, pc.DBName = user, password, ""
	pc.Timeout = c.cfg.ProbeTimeout.D()
	pc.InterpolateParams = false
	pc.AllowCleartextPasswords = false
	if c.cfg.Address != c.admin.Addr {
		pc.Net, pc.Addr = "tcp", c.cfg.Address
	}
	mc, err := mysql.NewConnector(pc)
	if err != nil {
		return nil, "", lapse.Internal("mariadb: exercise: client config", err)
	}
	db := sql.OpenDB(mc)
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	return db, user, nil
}

// loginError classifies the error of a login and its first query.
func loginError(user string, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case errAccessDenied, errAccessDeniedNoPassword, errAccountLocked:
			return fmt.Errorf("mariadb: login as %s refused (error %d): %w", user, me.Number, connector.ErrDenied)
		}
		return fmt.Errorf("mariadb: exercise as %s: server error %d", user, me.Number)
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot reach the MariaDB target to exercise the grant", Err: fmt.Errorf("mariadb: login as %s: %w", user, err)}
}

// heldSession is one connection of the grant's user, kept open.
type heldSession struct {
	mu   sync.Mutex
	db   *sql.DB
	conn *sql.Conn
	user string
	addr string
	id   int64
}

// Check runs a query on the held connection. A killed or lost connection
// is a denial.
func (h *heldSession) Check(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var one int
	err := h.conn.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	if err == nil {
		return nil
	}
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == errConnectionKilled:
		return fmt.Errorf("mariadb: connection %d was killed: %w", h.id, connector.ErrDenied)
	case errors.As(err, &me):
		return fmt.Errorf("mariadb: check connection %d: server error %d", h.id, me.Number)
	case ctx.Err() != nil:
		return fmt.Errorf("mariadb: check connection %d: %w", h.id, ctx.Err())
	default:
		// The pinned connection is gone (invalid connection, EOF, bad
		// connection): database/sql will not hand out another one on it.
		return fmt.Errorf("mariadb: connection %d lost (%s): %w", h.id, strings.TrimSpace(err.Error()), connector.ErrDenied)
	}
}

// Describe implements connector.HeldSession.
func (h *heldSession) Describe() string {
	return fmt.Sprintf("mariadb connection %d of user %s on %s", h.id, h.user, h.addr)
}

// Close implements connector.HeldSession.
func (h *heldSession) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.conn.Close()
	return h.db.Close()
}

var _ connector.Exerciser = (*Conn)(nil)
