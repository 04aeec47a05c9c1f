package postgres

import (
	"crypto/sha256"
	"encoding/base32"
	"regexp"
	"strings"

	"github.com/lapsehq/lapse"
)

// Role names are derived from the grant ID alone, so Revoke and Verify find
// them without State, and a name is never reused because grant IDs are
// never reused.
//
//	ephemeral login role:       <prefix><body>
//	elevation per-grant role:   <prefix>e_<body>
//
// body is the 26 base32 characters of a canonical grant ID ("gr_<26>"), or
// "h" followed by 26 base32 characters of SHA-256 of any other grant ID.
// The two forms differ in length, so a name maps back to its grant ID
// without ambiguity. Every character is in [a-z0-9_], and the longest name
// is MaxPrefixLength + 2 + 27 = 53 bytes, below PostgreSQL's 63.

const (
	elevationInfix = "e_"
	hashedMarker   = "h"
	bodyLength     = 26
)

// hashEncoding is lapse.NewID's alphabet, so hashed names are lower-case
// letters and digits like canonical ones.
var hashEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// grantIDRE is the allow-list for grant IDs that are not canonical: they
// are hashed into the name, but a caller-supplied ID with quotes, spaces,
// control bytes or invalid UTF-8 is refused outright.
var grantIDRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// grantBody returns the part of a role name that identifies grantID.
// Returns EINVALID for a grant ID outside the allow-list.
func grantBody(grantID string) (string, error) {
	if lapse.ValidID(lapse.PrefixGrant, grantID) {
		return strings.TrimPrefix(grantID, lapse.PrefixGrant+"_"), nil
	}
	if !grantIDRE.MatchString(grantID) {
		return "", lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID must be 1 to 128 letters, digits or . _ : -")
	}
	sum := sha256.Sum256([]byte(grantID))
	return hashedMarker + hashEncoding.EncodeToString(sum[:])[:bodyLength], nil
}

// roleNames returns the ephemeral login role name and the elevation
// per-grant role name for grantID.
func roleNames(prefix, grantID string) (login, elevation string, err error) {
	body, err := grantBody(grantID)
	if err != nil {
		return "", "", err
	}
	login, elevation = prefix+body, prefix+elevationInfix+body
	if len(elevation) > MaxRoleNameLength {
		// Unreachable with a validated prefix; kept so that a future change
		// of the bounds cannot make the server truncate a name silently.
		return "", "", lapse.Errorf(lapse.EINVALID, "role name would exceed %d bytes", MaxRoleNameLength)
	}
	return login, elevation, nil
}

// parseRoleName maps a role name back to its grant: whether it is an
// elevation role, and the grant ID when the name carries a canonical one
// ("" for hashed names). ok is false for names without the prefix.
func parseRoleName(prefix, name string) (grantID string, elevation, ok bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return "", false, false
	}
	if r, e := strings.CutPrefix(rest, elevationInfix); e {
		rest, elevation = r, true
	}
	if len(rest) == bodyLength {
		if id := lapse.PrefixGrant + "_" + rest; lapse.ValidID(lapse.PrefixGrant, id) {
			return id, elevation, true
		}
	}
	return "", elevation, true
}
