package lapse

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns prefix + "_" + 26 lowercase base32 characters: 48 bits of
// millisecond time (so IDs sort by creation) and 80 random bits. IDs are
// never reused, which connectors rely on when they derive target-side names
// from a grant ID.
func NewID(prefix string, now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic("lapse: crypto/rand failed: " + err.Error()) // unrecoverable: no safe IDs without randomness
	}
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}

// ValidID reports whether s looks like an ID made by NewID with prefix. It
// is a cheap syntactic check for input validation.
func ValidID(prefix, s string) bool {
	rest, ok := strings.CutPrefix(s, prefix+"_")
	if !ok || len(rest) != 26 {
		return false
	}
	_, err := idEncoding.DecodeString(rest)
	return err == nil
}

// ID prefixes.
const (
	PrefixRequest = "req"
	PrefixGrant   = "gr"
	PrefixMandate = "mdt"
)
