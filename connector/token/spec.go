package token

import (
	"math"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// reservedClaims are the claims an entitlement's spec may not set. The
// registered claims (RFC 7519 §4.1) carry the grant itself; lapse_kind, ent
// scope and lapse_max_uses are set by the connector; act, may_act, client_id and cnf change
// who a consumer believes is acting or holding the token (RFC 8693, RFC
// 7800), which only the broker may decide.
var reservedClaims = []string{
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti",
	"lapse_kind", "ent", "scope", "lapse_max_uses",
	"act", "may_act", "client_id", "cnf",
}

// Limits on a spec, so a catalog cannot make tokens absurdly large.
const (
	maxClaims      = 32
	maxClaimName   = 64
	maxClaimString = 1024
	maxClaimList   = 64
	maxScopes      = 32
	maxScopeLength = 64
)

// spec is a parsed entitlement spec:
//
//	scopes: [payments:refund, payments:read]
//	claims: {tenant: acme, tier: 2, beta: true, regions: [eu, us]}
type spec struct {
	Scopes []string
	Claims map[string]any
}

// scope returns the space-separated scope claim (RFC 8693 §4.2), or "".
func (s *spec) scope() string { return strings.Join(s.Scopes, " ") }

// parseSpec validates and normalises an entitlement spec. It returns
// EINVALID naming the offending field.
func parseSpec(m map[string]any) (*spec, error) {
	s := &spec{Claims: map[string]any{}}
	for k, v := range m {
		switch k {
		case "scopes":
			list, ok := stringList(v)
			if !ok {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.scopes", "scopes must be a list of strings")
			}
			if len(list) > maxScopes {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.scopes", "at most %d scopes", maxScopes)
			}
			for _, sc := range list {
				if !validScope(sc) {
					return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.scopes", "scope %q must be 1 to %d characters of letters, digits and ._:/-", truncate(sc), maxScopeLength)
				}
				if slices.Contains(s.Scopes, sc) {
					return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.scopes", "scope %q is listed twice", sc)
				}
				s.Scopes = append(s.Scopes, sc)
			}
		case "claims":
			claims, ok := v.(map[string]any)
			if !ok {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.claims", "claims must be a map of claim names to values")
			}
			if len(claims) > maxClaims {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.claims", "at most %d claims", maxClaims)
			}
			for name, val := range claims {
				field := "spec.claims." + truncate(name)
				if !validClaimName(name) {
					return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.claims", "claim name %q must be 1 to %d printable characters", truncate(name), maxClaimName)
				}
				if slices.Contains(reservedClaims, name) {
					return nil, lapse.FieldErrorf(lapse.EINVALID, field, "claim %q is set by Lapse and cannot be overridden", name)
				}
				norm, err := claimValue(field, val)
				if err != nil {
					return nil, err
				}
				s.Claims[name] = norm
			}
		default:
			return nil, lapse.FieldErrorf(lapse.EINVALID, "spec."+truncate(k), "unknown key %q in token spec (want scopes, claims)", truncate(k))
		}
	}
	return s, nil
}

// claimValue accepts strings, finite numbers, bools and lists of strings.
func claimValue(field string, v any) (any, error) {
	switch v := v.(type) {
	case string:
		if !validText(v, maxClaimString) {
			return nil, lapse.FieldErrorf(lapse.EINVALID, field, "a claim string must be valid UTF-8 without control characters, at most %d bytes", maxClaimString)
		}
		return v, nil
	case bool:
		return v, nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return v, nil
	case float32:
		return claimValue(field, float64(v))
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, lapse.FieldErrorf(lapse.EINVALID, field, "a claim number must be finite")
		}
		return v, nil
	}
	list, ok := stringList(v)
	if !ok {
		return nil, lapse.FieldErrorf(lapse.EINVALID, field, "a claim must be a string, a number, a bool or a list of strings")
	}
	if len(list) > maxClaimList {
		return nil, lapse.FieldErrorf(lapse.EINVALID, field, "a claim list holds at most %d strings", maxClaimList)
	}
	for _, s := range list {
		if !validText(s, maxClaimString) {
			return nil, lapse.FieldErrorf(lapse.EINVALID, field, "a claim string must be valid UTF-8 without control characters, at most %d bytes", maxClaimString)
		}
	}
	return list, nil
}

// stringList accepts []string and []any holding only strings (YAML and
// JSON decode lists as []any).
func stringList(v any) ([]string, bool) {
	switch v := v.(type) {
	case []string:
		return slices.Clone(v), true
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// validScope allows a conservative subset of RFC 6749's scope-token
// characters: no spaces (the separator), no quotes or backslashes.
func validScope(s string) bool {
	if s == "" || len(s) > maxScopeLength {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:/-", r)) {
			return false
		}
	}
	return true
}

func validClaimName(s string) bool {
	if s == "" || len(s) > maxClaimName {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:/-", r)) {
			return false
		}
	}
	return true
}

func validText(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return false
		}
	}
	return true
}

// truncate shortens caller-supplied text quoted in an error message.
func truncate(s string) string {
	if len(s) <= 40 {
		return s
	}
	cut := 40
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
