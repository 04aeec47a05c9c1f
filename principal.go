package lapse

import (
	"context"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mtibben/confusables"
	"golang.org/x/text/unicode/norm"
)

// PrincipalKind says which lane a principal acts in.
type PrincipalKind string

// The three lanes of DESIGN.md §3.
const (
	KindHuman   PrincipalKind = "human"
	KindService PrincipalKind = "service"
	KindAgent   PrincipalKind = "agent"
)

// Valid reports whether k is one of the known kinds.
func (k PrincipalKind) Valid() bool {
	return k == KindHuman || k == KindService || k == KindAgent
}

// Principal is who acts: a person, a workload or an AI agent.
type Principal struct {
	// ID is the normalised, stable identifier (see NormalizeID). Every
	// comparison between principals — self-approval, ownership, one vote per
	// human — compares IDs, never display names.
	ID   string        `json:"id"`
	Kind PrincipalKind `json:"kind"`
	// Name is how the principal is shown; it is never compared.
	Name string `json:"name,omitempty"`
	// Groups are normalised group names the principal belongs to.
	Groups []string `json:"groups,omitempty"`
	// Scopes limit what this credential may do (see the Scope constants).
	// Empty means the principal authenticated without a scoped credential.
	Scopes []string `json:"scopes,omitempty"`
	// CredentialID names the credential the caller authenticated with (an
	// API key's public prefix), for the audit trail. Never a secret.
	CredentialID string `json:"credential_id,omitempty"`
	// Act is the delegation chain: the normalised IDs of the principals
	// this one acts for, the one it acts for directly first (an agent's
	// sponsor). Empty when the principal acts for itself. It is recorded
	// with everything the principal does, so a delegated action is never
	// mistaken for the sponsor's own.
	Act []string `json:"act,omitempty"`
}

// InGroup reports whether the principal is a member of group (normalised).
func (p *Principal) InGroup(group string) bool {
	g, err := NormalizeID(group)
	if err != nil {
		return false
	}
	for _, have := range p.Groups {
		if have == g {
			return true
		}
	}
	return false
}

// HasScope reports whether the principal's credential carries scope.
// ScopeAdmin implies every scope.
func (p *Principal) HasScope(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope || s == ScopeAdmin {
			return true
		}
	}
	return false
}

// Credential scopes. A credential only does what its scopes allow, whatever
// its principal could otherwise do.
const (
	ScopeRead       = "read"       // list and show requests, grants, entitlements
	ScopeRequest    = "request"    // file requests, claim credentials, release own grants
	ScopeApprove    = "approve"    // approve and deny other principals' requests
	ScopeRevoke     = "revoke"     // revoke any grant
	ScopeIntrospect = "introspect" // RFC 7662 introspection and the revocation feed (API servers)
	ScopeAdmin      = "admin"      // everything, including API key management
)

// AllScopes lists every scope, for validation.
var AllScopes = []string{ScopeRead, ScopeRequest, ScopeApprove, ScopeRevoke, ScopeIntrospect, ScopeAdmin}

// MaxIDLength bounds principal, group and entitlement identifiers.
const MaxIDLength = 128

// NormalizeID returns the canonical form of an identifier (a principal ID,
// a group name): Unicode NFKC, then case-folded, with surrounding space
// removed. Two spellings that a person would read as the same name map to
// one ID, so "Alice", " alice " and "ＡＬＩＣＥ" (full-width) are one
// principal. It returns EINVALID for an empty or over-long identifier,
// invalid UTF-8, or one that contains control or space characters inside.
func NormalizeID(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", FieldErrorf(EINVALID, "id", "identifier is not valid UTF-8")
	}
	s = norm.NFKC.String(strings.TrimSpace(s))
	s = strings.ToLower(s)
	s = norm.NFKC.String(s)
	if s == "" {
		return "", FieldErrorf(EINVALID, "id", "identifier is empty")
	}
	if len(s) > MaxIDLength {
		return "", FieldErrorf(EINVALID, "id", "identifier is longer than %d bytes", MaxIDLength)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == unicode.ReplacementChar || invisible(r) {
			return "", FieldErrorf(EINVALID, "id", "identifier contains a space, control, format or invisible character")
		}
	}
	return s, nil
}

// SameHuman reports whether two normalised principal IDs name the same
// identity as a person reads them: equal, or equal once confusable
// characters are mapped to their prototype (Unicode UTS #39 skeletons), so
// "alice" and "аlice" (with a Cyrillic а) are one human. Every comparison
// that keeps a person from deciding their own request, or from counting
// twice, goes through it.
func SameHuman(a, b string) bool {
	return a == b || HumanKey(a) == HumanKey(b)
}

// HumanKey is the key under which a normalised principal ID counts as one
// human: its confusable skeleton. Two IDs with the same key are the same
// person for every approval rule. IDs are lower-cased, but the UTS #39
// tables map some characters to an upper-case prototype (the digit 0 to
// O): the skeleton is lower-cased and taken again, so that "b0b" is "bob".
func HumanKey(id string) string {
	return confusables.Skeleton(strings.ToLower(confusables.Skeleton(id)))
}

// invisible reports characters that render as nothing, so that "alice"
// with one of them inside reads as "alice" but is another string: format
// characters (zero-width joiners, bidi overrides), variation selectors and
// the other default-ignorable code points of Unicode (the combining
// grapheme joiner, Hangul fillers), and the blank Braille pattern.
func invisible(r rune) bool {
	return unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Variation_Selector, r) ||
		unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r) ||
		r == '\u2800' // Braille pattern blank: renders as a space, is not one

}

type principalKey struct{}

// NewContext returns a context that carries the authenticated caller.
func NewContext(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the authenticated caller, or nil.
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

type channelKey struct{}

// WithChannel returns a context that records the channel an action arrived
// through (ChannelAPI, ChannelCLI, …), for the audit trail.
func WithChannel(ctx context.Context, channel string) context.Context {
	return context.WithValue(ctx, channelKey{}, channel)
}

// ChannelFrom returns the channel recorded in ctx, or ChannelAPI.
func ChannelFrom(ctx context.Context) string {
	if c, ok := ctx.Value(channelKey{}).(string); ok && c != "" {
		return c
	}
	return ChannelAPI
}
