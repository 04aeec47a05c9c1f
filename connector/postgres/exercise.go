package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Use logs in as the grant's role with its password, with the same client
// library, address and TLS settings as Verify's login probe, and runs one
// statement. A refusal by the server's authentication (SQLSTATE class 28:
// the role is gone, may not log in, or the password is wrong) is a denial;
// anything else is an error. Elevation grants carry no credential of their
// own and cannot be exercised (EINVALID).
func (c *Conn) Use(ctx context.Context, req *connector.ExerciseRequest) error {
	conn, err := c.exerciseConnect(ctx, req)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT current_user").ReadAll(); err != nil {
		return sessionError("use", err)
	}
	return nil
}

// Hold opens a session as the grant's role and keeps it, idle, until it is
// closed: what a connection pool does.
func (c *Conn) Hold(ctx context.Context, req *connector.ExerciseRequest) (connector.HeldSession, error) {
	conn, err := c.exerciseConnect(ctx, req)
	if err != nil {
		return nil, err
	}
	h := &heldSession{conn: conn, user: req.Info["user"], where: fmt.Sprintf("%s:%d/%s", c.host, c.port, c.database)}
	h.pid = conn.PID()
	return h, nil
}

// exerciseConnect logs in with the grant's credentials.
func (c *Conn) exerciseConnect(ctx context.Context, req *connector.ExerciseRequest) (*pgconn.PgConn, error) {
	user, password := req.Info["user"], req.Secret["password"]
	if password == "" || user == "" {
		return nil, lapse.Errorf(lapse.EINVALID, "postgres: the grant carries no login credential (an elevation grant uses the account's own); it cannot be exercised")
	}
	if !validIdent(user) || !strings.HasPrefix(user, c.cfg.Prefix) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "info.user", "not a role this connector makes")
	}
	cfg := c.probeBase.Copy()
	cfg.User, cfg.Password = user, password
	cfg.RuntimeParams = map[string]string{"application_name": "lapse-canary"}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout.D())
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && strings.HasPrefix(pe.Code, sqlstateInvalidAuthPrefix) {
			return nil, fmt.Errorf("postgres: login as %s refused (SQLSTATE %s): %w", user, pe.Code, connector.ErrDenied)
		}
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot reach the PostgreSQL target to exercise the grant", Err: fmt.Errorf("postgres: login as %s: %w", user, err)}
	}
	return conn, nil
}

// heldSession is one backend of the grant's role, kept open.
type heldSession struct {
	mu    sync.Mutex
	conn  *pgconn.PgConn
	user  string
	where string
	pid   uint32
}

// Check runs a statement on the held backend. A terminated backend (the
// connection is closed, or the server says it was terminated) is a denial.
func (h *heldSession) Check(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn.IsClosed() {
		return fmt.Errorf("postgres: backend %d is closed: %w", h.pid, connector.ErrDenied)
	}
	if _, err := h.conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		return sessionError("check held session", err)
	}
	return nil
}

// Describe implements connector.HeldSession.
func (h *heldSession) Describe() string {
	return fmt.Sprintf("postgres backend pid %d of role %s on %s", h.pid, h.user, h.where)
}

// Close implements connector.HeldSession.
func (h *heldSession) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultProbeTimeout)
	defer cancel()
	return h.conn.Close(ctx)
}

// sessionError classifies an error on an open session: the session ended
// (the server terminated it, or the connection is gone) is a denial; a
// cancelled check is not.
func sessionError(op string, err error) error {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "57") || strings.HasPrefix(pe.Code, sqlstateInvalidAuthPrefix)):
		return fmt.Errorf("postgres: %s: session ended by the server (SQLSTATE %s): %w", op, pe.Code, connector.ErrDenied)
	case errors.As(err, &pe):
		return fmt.Errorf("postgres: %s: SQLSTATE %s", op, pe.Code)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("postgres: %s: %w", op, err)
	default:
		// No answer from the server on an established session: the
		// connection is gone, and a held session never reconnects.
		return fmt.Errorf("postgres: %s: connection lost (%v): %w", op, err, connector.ErrDenied)
	}
}

var _ connector.Exerciser = (*Conn)(nil)
