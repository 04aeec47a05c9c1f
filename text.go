package lapse

import (
	"unicode"
	"unicode/utf8"
)

// CheckText validates free text a caller sends (a reason, a comment, a
// name): valid UTF-8, at most max bytes, and free of control and format
// characters other than newline, tab and the zero-width joiner of emoji
// sequences. Newlines and tabs are stored, and escaped wherever they are
// shown. The error names field.
func CheckText(field, s string, max int) error {
	if len(s) > max {
		return FieldErrorf(ETOOLARGE, field, "%s is longer than %d bytes", field, max)
	}
	if !utf8.ValidString(s) {
		return FieldErrorf(EINVALID, field, "%s is not valid UTF-8", field)
	}
	for _, r := range s {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r) && r != '\u200d') {
			return FieldErrorf(EINVALID, field, "%s contains a control character", field)
		}
	}
	return nil
}
