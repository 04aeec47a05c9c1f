package mariadb

import (
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // mysql_native_password is defined with SHA-1; the password is a 256-bit random secret
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// grantIDSuffixLength is the length of the random part of a lapse grant ID
// ("gr_" + 26 characters), which becomes the user name's suffix.
const grantIDSuffixLength = 26

// hashSuffixLength is the suffix length for grant IDs that are not lapse
// IDs. It differs from grantIDSuffixLength so that Discover never mistakes
// a hashed name for one that carries its grant ID.
const hashSuffixLength = 25

// maxGrantIDLength bounds the grant IDs the connector accepts.
const maxGrantIDLength = 256

// nameEncoding is lapse's ID alphabet: lower-case letters and digits only.
var nameEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// UserName returns the user name for a grant: prefix followed by the
// random part of the grant ID when it is a lapse grant ID (so the name maps
// back to the grant), or by 25 characters of its SHA-256 otherwise. Names
// are at most len(prefix)+26 ≤ 32 characters of [a-z0-9_], and are never
// reused because grant IDs are not.
func UserName(prefix, grantID string) string {
	if lapse.ValidID(lapse.PrefixGrant, grantID) {
		return prefix + grantID[len(lapse.PrefixGrant)+1:]
	}
	sum := sha256.Sum256([]byte(grantID))
	return prefix + nameEncoding.EncodeToString(sum[:])[:hashSuffixLength]
}

// grantIDFromUser returns the grant ID a user name was derived from, or ""
// if it was hashed or is not one of ours.
func grantIDFromUser(prefix, user string) string {
	rest, ok := strings.CutPrefix(user, prefix)
	if !ok || len(rest) != grantIDSuffixLength {
		return ""
	}
	id := lapse.PrefixGrant + "_" + rest
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return ""
	}
	return id
}

// checkGrantID rejects grant IDs no broker makes. Any accepted ID is only
// ever hashed or, for lapse IDs, used after ValidID proved its alphabet, so
// nothing of it reaches a statement unchecked.
func checkGrantID(id string) error {
	if id == "" {
		return lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID is empty")
	}
	if len(id) > maxGrantIDLength {
		return lapse.FieldErrorf(lapse.ETOOLARGE, "grant_id", "grant ID is longer than %d bytes", maxGrantIDLength)
	}
	if !utf8.ValidString(id) {
		return lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID is not valid UTF-8")
	}
	for _, r := range id {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID contains a space or control character")
		}
	}
	return nil
}

// quoteIdent quotes an identifier by MariaDB's rules: backticks, with a
// backtick inside doubled. Every identifier passed here has already been
// checked against an allow-list; quoting is the second wall.
func quoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "``") + "`"
}

// account returns a quoted account name `user`@`host`.
func account(user, host string) string {
	return quoteIdent(user) + "@" + quoteIdent(host)
}

// quoteString returns a single-quoted SQL string literal for values read
// from the server's own catalog (sql_mode, character sets). Backslashes and
// quotes are escaped, so the result is safe whatever NO_BACKSLASH_ESCAPES
// says: a backslash is doubled and a quote is doubled.
func quoteString(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "'" + s + "'"
}

// passwordBytes is the password's entropy: 256 bits.
const passwordBytes = 32

// newPassword returns a random password of 256 bits, base64url-encoded
// (43 characters of [A-Za-z0-9_-], safe in DSNs and shells).
func newPassword() (string, error) {
	var b [passwordBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// nativePasswordHash returns the mysql_native_password hash of password:
// "*" and the upper-case hex of SHA1(SHA1(password)). Sending it in
// IDENTIFIED BY PASSWORD keeps the password itself off the wire and out of
// the server's general log, binary log and process list.
func nativePasswordHash(password string) string {
	h1 := sha1.Sum([]byte(password)) //nolint:gosec // protocol-defined hash
	h2 := sha1.Sum(h1[:])            //nolint:gosec // protocol-defined hash
	return "*" + strings.ToUpper(hex.EncodeToString(h2[:]))
}
