package lapse

import (
	"errors"
	"fmt"
)

// Application error codes. They are transport-neutral; the HTTP layer maps
// each to one status in exactly one table (api/errors.go). Clients and tests
// match on codes, never on message text.
const (
	ECONFLICT     = "conflict"     // the object changed or is in a state that forbids the operation
	EINTERNAL     = "internal"     // a bug or an unexpected failure; details are logged, not shown
	EINVALID      = "invalid"      // the input is wrong; Field names what
	ENOTFOUND     = "not_found"    // no such object, or the caller may not know it exists
	EUNAUTHORIZED = "unauthorized" // no credential, or a bad, expired or revoked one
	EFORBIDDEN    = "forbidden"    // authenticated, but not allowed
	EUNAVAILABLE  = "unavailable"  // a dependency (store, target) cannot be reached; retry later
	ETOOLARGE     = "too_large"    // the input exceeds a size limit
	EGONE         = "gone"         // the object existed but is no longer available (credentials already claimed)
	ERATELIMITED  = "rate_limited" // too many requests
)

// Reasons refine a code where a caller must tell one cause from the others
// of the same code without reading the message. Like codes they are stable
// and sent over the wire.
const (
	// ReasonAuditDegraded: the audit log cannot integrate, sign or publish
	// its checkpoints, so no new approval or grant is made (EUNAVAILABLE).
	// Revocations continue. Retry once the log has recovered.
	ReasonAuditDegraded = "audit_degraded"
	// ReasonExposureOverLimit: the entitlement's worst-case exposure after
	// revocation exceeds its limit and policy refuses such grants
	// (EFORBIDDEN). The message names the path and the bound.
	ReasonExposureOverLimit = "exposure_over_limit"
	// ReasonFenced: an earlier grant of the same entitlement to the same
	// principal is not yet revoked and verified, and the entitlement's
	// fence refuses a new one until it is (ECONFLICT). Release the earlier
	// grant, wait for its verified revocation, and ask again.
	ReasonFenced = "fenced"
)

// Error is Lapse's application error. Message is safe to show to the caller;
// Err is the internal cause, which is logged but never sent over the wire.
type Error struct {
	Code    string
	Field   string // the offending input field, when Code is EINVALID or ETOOLARGE
	Reason  string // a stable refinement of Code (the Reason constants), or ""
	Message string
	Err     error
}

func (e *Error) Error() string {
	s := e.Code
	if e.Field != "" {
		s += " (" + e.Field + ")"
	}
	if e.Reason != "" {
		s += " [" + e.Reason + "]"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldErrorf returns an *Error that names the offending input field.
func FieldErrorf(code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Internal wraps an unexpected error. The caller sees only "internal error".
func Internal(op string, err error) *Error {
	return &Error{Code: EINTERNAL, Message: "internal error", Err: fmt.Errorf("%s: %w", op, err)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorField returns the offending field of the first *Error in err's chain.
func ErrorField(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Field
	}
	return ""
}

// ErrorReason returns the reason of the first *Error in err's chain that
// has one, or "".
func ErrorReason(err error) string {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return ""
		}
		if e.Reason != "" {
			return e.Reason
		}
		err = e.Err
	}
	return ""
}

// ErrorMessage returns the message of the first *Error in err's chain that
// is safe to show to a caller; other errors become "internal error".
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Message == "" {
			return e.Code
		}
		return e.Message
	}
	return "internal error"
}
