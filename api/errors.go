package api

import (
	"log/slog"
	"net/http"

	"github.com/lapsehq/lapse"
)

// codeMethodNotAllowed is the one error code that exists only at the HTTP
// layer: the path is known but not with this method. It is not a lapse code
// because no Service method can return it.
const codeMethodNotAllowed = "method_not_allowed"

// statusByCode is the one table that turns an error code into an HTTP
// status. Every error response, from the Service, the authenticator, input
// decoding or the router, goes through it.
var statusByCode = map[string]int{
	lapse.EINVALID:       http.StatusBadRequest,
	lapse.EUNAUTHORIZED:  http.StatusUnauthorized,
	lapse.EFORBIDDEN:     http.StatusForbidden,
	lapse.ENOTFOUND:      http.StatusNotFound,
	codeMethodNotAllowed: http.StatusMethodNotAllowed,
	lapse.ECONFLICT:      http.StatusConflict,
	lapse.EGONE:          http.StatusGone,
	lapse.ETOOLARGE:      http.StatusRequestEntityTooLarge,
	lapse.ERATELIMITED:   http.StatusTooManyRequests,
	lapse.EINTERNAL:      http.StatusInternalServerError,
	lapse.EUNAVAILABLE:   http.StatusServiceUnavailable,
}

// StatusCode returns the HTTP status for an error code; unknown codes are
// internal errors.
func StatusCode(code string) int {
	if s, ok := statusByCode[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// ErrorBody is the JSON body of every error response:
// {"error":{"code":"...","message":"...","field":"...","reason":"..."}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody. Message is safe to show; Field
// names the offending input, when there is one; Reason is a stable
// refinement of Code (lapse.ReasonAuditDegraded), when there is one.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// unauthorizedBody is the single answer to every authentication failure —
// missing, malformed, unknown, wrong, expired or revoked credential — so a
// caller cannot tell which it was.
var unauthorizedBody = ErrorBody{Error: ErrorDetail{
	Code:    lapse.EUNAUTHORIZED,
	Message: "missing, invalid, expired or revoked credential",
}}

// writeError answers with err's code, safe message and field. Internal
// causes are logged (with the request ID), never sent.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := lapse.ErrorCode(err)
	status := StatusCode(code)
	if code == lapse.EUNAUTHORIZED {
		w.Header().Set("WWW-Authenticate", `Bearer realm="lapse"`)
		writeJSON(w, status, &unauthorizedBody)
		return
	}
	if status >= 500 {
		s.logger().LogAttrs(r.Context(), slog.LevelError, "request failed",
			slog.String("request_id", w.Header().Get(headerRequestID)),
			slog.String("method", r.Method),
			slog.String("route", r.Pattern),
			slog.String("code", code),
			slog.String("error", err.Error()))
	}
	body := ErrorBody{Error: ErrorDetail{
		Code:    code,
		Message: lapse.ErrorMessage(err),
		Field:   lapse.ErrorField(err),
		Reason:  lapse.ErrorReason(err),
	}}
	if status == http.StatusInternalServerError {
		// Whatever the error said, the caller learns only that it failed.
		body.Error = ErrorDetail{Code: lapse.EINTERNAL, Message: "internal error"}
	}
	writeJSON(w, status, &body)
}

// errMethodNotAllowed answers a known path with an unsupported method.
var errMethodNotAllowed = &lapse.Error{Code: codeMethodNotAllowed, Message: "method not allowed on this path"}
