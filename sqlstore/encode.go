package sqlstore

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// enc converts domain values into column values and remembers the first
// value that cannot be stored, so an insert reads as one list of arguments.
type enc struct{ err error }

// time stores t as Unix nanoseconds, and the zero time as NULL. Times that
// do not fit (before 1678 or after 2262) are refused rather than stored
// wrongly.
func (e *enc) time(field string, t time.Time) any {
	if t.IsZero() {
		return nil
	}
	n := t.UnixNano()
	if !time.Unix(0, n).Equal(t) {
		if e.err == nil {
			e.err = lapse.FieldErrorf(lapse.EINVALID, field, "time is out of the storable range")
		}
		return nil
	}
	return n
}

// strings stores a string list as a JSON array; nil is NULL, so an empty
// list reads back empty and a nil one nil.
func (e *enc) strings(v []string) any {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil && e.err == nil {
		e.err = lapse.Internal("encode list", err)
	}
	return string(b)
}

// stringMap stores a map as a JSON object; nil is NULL.
func (e *enc) stringMap(v map[string]string) any {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil && e.err == nil {
		e.err = lapse.Internal("encode map", err)
	}
	return string(b)
}

// text passes s through to a text column, and records EINVALID naming
// field if it holds a NUL byte. PostgreSQL refuses NUL in text (an internal
// error, after the statement was sent) while SQLite stores it; refusing it
// here, on both, keeps the two databases interchangeable and makes it what
// it is: bad input. Lists and maps are not checked: their JSON encoding
// escapes NUL, so it never reaches a column and round-trips unchanged.
func (e *enc) text(field, s string) string {
	if e.err == nil {
		e.err = noNUL(field, s)
	}
	return s
}

// noNUL returns EINVALID naming field if s holds a NUL byte.
func noNUL(field, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s contains a NUL byte, which cannot be stored", field)
	}
	return nil
}

// diagnostic makes text a target produced storable by replacing each NUL
// byte with U+FFFD. It is for a grant's last error only: that text comes
// from the targets and is written on the revocation path, and a revocation
// must never fail to be recorded because of what a target said.
func diagnostic(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// rawJSON stores a raw JSON value as text; an empty value is NULL. Valid
// JSON never holds a NUL byte (control characters in strings are escaped),
// so one is refused as bad input naming field.
func (e *enc) rawJSON(field string, v json.RawMessage) any {
	if len(v) == 0 {
		return nil
	}
	if e.err == nil && bytes.IndexByte(v, 0) >= 0 {
		e.err = lapse.FieldErrorf(lapse.EINVALID, field, "%s contains a NUL byte, which cannot be stored", field)
	}
	return string(v)
}

// blob stores bytes; an empty value is NULL.
func blob(v []byte) any {
	if len(v) == 0 {
		return nil
	}
	return v
}

// dec converts column values back into domain values.
type dec struct{ err error }

func timeOf(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

func (d *dec) strings(s sql.NullString) []string {
	if !s.Valid {
		return nil
	}
	v := []string{}
	if err := json.Unmarshal([]byte(s.String), &v); err != nil && d.err == nil {
		d.err = err
	}
	return v
}

func (d *dec) stringMap(s sql.NullString) map[string]string {
	if !s.Valid {
		return nil
	}
	v := map[string]string{}
	if err := json.Unmarshal([]byte(s.String), &v); err != nil && d.err == nil {
		d.err = err
	}
	return v
}

func rawOf(s sql.NullString) json.RawMessage {
	if !s.Valid || s.String == "" {
		return nil
	}
	return json.RawMessage(s.String)
}

func bytesOf(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// principalCols holds the scanned columns of an embedded principal.
type principalCols struct {
	kind                string
	groups, scopes, act sql.NullString
}

// dests returns the scan destinations of the six principal columns, in the
// order of the *_id, *_kind, *_name, *_groups, *_scopes, *_credential_id
// columns.
func (pc *principalCols) dests(p *lapse.Principal) []any {
	return []any{&p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID}
}

func (pc *principalCols) fill(d *dec, p *lapse.Principal) {
	p.Kind = lapse.PrincipalKind(pc.kind)
	p.Groups = d.strings(pc.groups)
	p.Scopes = d.strings(pc.scopes)
	p.Act = d.strings(pc.act)
}

// principal returns the six principal columns' values; field names the
// principal in errors ("requester", "approver", "principal").
func (e *enc) principal(field string, p *lapse.Principal) [6]any {
	return [6]any{e.text(field+".id", p.ID), e.text(field+".kind", string(p.Kind)), e.text(field+".name", p.Name),
		e.strings(p.Groups), e.strings(p.Scopes), e.text(field+".credential_id", p.CredentialID)}
}

// nonEmpty returns EINVALID naming field if v is empty.
func nonEmpty(field, v string) error {
	if v == "" {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is required", field)
	}
	return nil
}
