package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/lapsehq/lapse"
)

func errClosed() error {
	return lapse.Errorf(lapse.EUNAVAILABLE, "the store is closed")
}

// isRetryable reports whether err means "run the transaction again":
// serialisation failure or deadlock on PostgreSQL, BUSY or LOCKED on SQLite.
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40001" || pe.Code == "40P01"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}

// isUnavailable reports whether err means the database cannot be reached or
// cannot work right now, as opposed to a bug or bad data.
func isUnavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, pgconn.ErrConnClosed) ||
		pgconn.Timeout(err) || isRetryable(err) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case len(pe.Code) == 5 && pe.Code[:2] == "08": // connection exception
			return true
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, cannot connect now
			pe.Code == "53300", pe.Code == "53100", pe.Code == "53200", // too many connections, disk full, out of memory
			pe.Code == "3D000", pe.Code == "55P03", pe.Code == "57014": // database gone, lock timeout, statement cancelled
			return true
		}
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
			sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_INTERRUPT:
			return true
		}
	}
	return false
}

// isUniqueViolation reports a primary key or unique constraint violation.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return false
}

// isForeignKeyViolation reports a reference to a row that does not exist.
func isForeignKeyViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	return false
}

// classify turns a database error into a *lapse.Error naming the operation.
// The message is safe to show; the cause stays in Err for the logs.
func (s *Store) classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var le *lapse.Error
	if errors.As(err, &le) {
		return err
	}
	cause := fmt.Errorf("%s: %s: %w", s.driver, op, err)
	switch {
	case isUniqueViolation(err):
		return &lapse.Error{Code: lapse.ECONFLICT, Message: "the object already exists", Err: cause}
	case isForeignKeyViolation(err):
		return &lapse.Error{Code: lapse.ENOTFOUND, Message: "a referenced object does not exist", Err: cause}
	case isRetryable(err):
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the store is busy; try again", Err: cause}
	case isUnavailable(err):
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the store is unavailable", Err: cause}
	}
	return &lapse.Error{Code: lapse.EINTERNAL, Message: "internal error", Err: cause}
}
