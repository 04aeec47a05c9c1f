package mariadb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// extendLockWait bounds how long Extend waits for another extension of
// the same grant to finish.
const extendLockWait = 10 * time.Second

// Extend implements connector.Extender. The server enforces a deadline
// only through the optional expiry event (Config.ExpiryEventSchema), so
// with one Extend moves its schedule to req.ExpiresAt, and only ever
// later; without one nothing on the server holds the deadline and Extend
// only checks that the grant's user still exists.
//
// An event is moved wherever it exists, also if expiry_event_schema was
// turned off since Grant (State names it): left alone, it would drop the
// user at the earlier deadline.
//
// Returns ENOTFOUND if the grant's user is not on the server (revoked, or
// dropped by its expiry event), EINVALID for a bad grant ID or a missing
// deadline, and EUNAVAILABLE if the server cannot be reached or another
// extension of the grant holds it up.
func (c *Conn) Extend(ctx context.Context, req *connector.ExtendRequest) error {
	if err := checkGrantID(req.GrantID); err != nil {
		return err
	}
	if req.ExpiresAt.IsZero() {
		return lapse.FieldErrorf(lapse.EINVALID, "expires_at", "an extension needs a deadline")
	}
	st := c.decodeState(req.GrantID, req.State)
	var live []string
	for _, u := range c.users(req.GrantID, st) {
		hosts, err := c.accountHosts(ctx, u)
		if err != nil {
			return err
		}
		if len(hosts) > 0 {
			live = append(live, u)
		}
	}
	if len(live) == 0 {
		return lapse.Errorf(lapse.ENOTFOUND, "the grant's user %s does not exist on the MariaDB target", c.UserName(req.GrantID))
	}
	st.Event = eventOf(st.Event, live)
	moved := 0
	for _, e := range c.events(live, st) {
		ok, err := c.moveEvent(ctx, e, req.ExpiresAt)
		if err != nil {
			return err
		}
		if ok {
			moved++
		}
	}
	if moved == 0 {
		c.logger.Info("extend: no expiry event holds the deadline; nothing to move", "user", live[0], "grant_id", req.GrantID)
	}
	return nil
}

// eventOf keeps State's event only if it belongs to a user that exists:
// an event is named after its user.
func eventOf(event string, live []string) string {
	_, name, _ := strings.Cut(event, ".")
	for _, u := range live {
		if name == u {
			return event
		}
	}
	return ""
}

// moveEvent moves the expiry event's schedule to at if that is later
// than its current one. It reports whether the event exists.
//
// A named lock serialises extensions of the event (ALTER EVENT commits
// implicitly, so no transaction could): the current time is read and
// replaced while no other Extend can, so racing extensions leave the
// latest deadline. The schedule is written with the session in UTC
// (SET STATEMENT, for that statement only): a local time zone would make
// FROM_UNIXTIME ambiguous in the hour a daylight-saving change repeats.
func (c *Conn) moveEvent(ctx context.Context, event string, at time.Time) (bool, error) {
	schema, name, _ := strings.Cut(event, ".")
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return false, c.unavailable("mariadb: extend: connect", err)
	}
	defer conn.Close()
	sum := sha256.Sum256([]byte(event))
	lock := "lapse.extend." + hex.EncodeToString(sum[:20]) // GET_LOCK names are at most 64 characters
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?)", lock, int(extendLockWait/time.Second)).Scan(&got); err != nil {
		return false, c.unavailable("mariadb: extend: lock event "+event, err)
	}
	if got.Int64 != 1 {
		return false, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "another extension of this grant is running; try again",
			Err: fmt.Errorf("mariadb: extend: lock event %s: not acquired within %s", event, extendLockWait)}
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), extendLockWait)
		defer cancel()
		if _, err := conn.ExecContext(rctx, "DO RELEASE_LOCK(?)", lock); err != nil {
			// Drop the connection rather than return it to the pool still
			// holding the lock: the server releases it with the session.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()

	// mysql.event keeps the schedule in UTC, whatever the event's time
	// zone (information_schema.EVENTS shows it converted).
	var current sql.NullInt64
	err = conn.QueryRowContext(ctx, "SELECT TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', execute_at) FROM mysql.event WHERE db = ? AND name = ?", schema, name).Scan(&current)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, c.unavailable("mariadb: extend: read event "+event, err)
	}
	if !current.Valid {
		// A recurring event: not one Grant made, so not Lapse's to move.
		c.logger.Warn("extend: the grant's expiry event has no single schedule; left alone", "event", event)
		return true, nil
	}
	// The event fires at whole seconds; Grant rounds down the same way.
	if at.Unix() <= current.Int64 {
		return true, nil // idempotent, and never earlier
	}
	alter := "SET STATEMENT time_zone = '+00:00' FOR ALTER EVENT " + quoteIdent(schema) + "." + quoteIdent(name) +
		fmt.Sprintf(" ON SCHEDULE AT FROM_UNIXTIME(%d)", at.Unix())
	if _, err := conn.ExecContext(ctx, alter); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && me.Number == errNoSuchEvent {
			// It fired (dropping the user) or a Revoke dropped it after the
			// read above.
			return false, lapse.Errorf(lapse.ENOTFOUND, "the grant's expiry event %s is gone: the grant ended", event)
		}
		return false, c.unavailable("mariadb: extend: alter event "+event, err)
	}
	c.logger.Info("extend: moved the expiry event", "event", event, "execute_at", at.UTC().Truncate(time.Second).Format(time.RFC3339))
	return true, nil
}

var _ connector.Extender = (*Conn)(nil)
