package authn

import (
	"context"
	"strings"

	"github.com/lapsehq/lapse"
)

// Authenticator turns a presented bearer credential into the calling
// principal: EUNAUTHORIZED for a bad credential, EUNAVAILABLE when it
// cannot be checked now.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (*lapse.Principal, error)
}

// Chain sends each bearer credential to the authenticator of its kind: a
// JWT (an OpenID Connect ID token, when people sign in with an identity
// provider) to OIDC, anything else to APIKeys. The two never both see one
// credential, so a key store outage cannot refuse people who sign in with
// OIDC, and a down identity provider cannot refuse API keys.
type Chain struct {
	APIKeys Authenticator
	// OIDC verifies ID tokens (*oidc.Verifier); nil when no identity
	// provider is configured, and then a JWT goes to APIKeys, which
	// refuses it like any credential it does not know.
	OIDC Authenticator
}

var (
	_ Authenticator = (*Chain)(nil)
	_ Authenticator = (*APIKeys)(nil)
)

// Authenticate asks the authenticator for the credential's kind.
func (c *Chain) Authenticate(ctx context.Context, secret string) (*lapse.Principal, error) {
	if c.OIDC != nil && IsJWT(secret) {
		return c.OIDC.Authenticate(ctx, secret)
	}
	if c.APIKeys == nil {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "invalid, expired or revoked credential")
	}
	return c.APIKeys.Authenticate(ctx, secret)
}

// IsJWT reports whether s has the shape of a JWS in compact form: three
// dot-separated base64url parts, the first two non-empty. It says nothing
// about whether the token is valid. A Lapse API key never has this shape
// (it holds no dot).
func IsJWT(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return false
	}
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
