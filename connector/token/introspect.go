package token

import (
	"context"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// maxTokenLength bounds what Introspect parses; Lapse's tokens are far
// smaller, so anything longer is not one of them.
const maxTokenLength = 16 << 10

// Introspection is an RFC 7662 introspection response. When Active is
// false every other field is empty, so an inactive answer tells the caller
// nothing about why.
type Introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Nbf       int64  `json:"nbf,omitempty"`
	Sub       string `json:"sub,omitempty"`
	Aud       string `json:"aud,omitempty"`
	Iss       string `json:"iss,omitempty"`
	Jti       string `json:"jti,omitempty"`
	// Kind and Entitlement are Lapse's own claims (lapse_kind, ent).
	Kind        string `json:"lapse_kind,omitempty"`
	Entitlement string `json:"ent,omitempty"`
	// Act is the token's RFC 8693 act claim: who uses it on Sub's behalf
	// (an agent acting for its sponsor). Nil when Sub acts for itself.
	Act *Actor `json:"act,omitempty"`
}

// lapseClaims are the non-registered claims Introspect reads.
type lapseClaims struct {
	Scope       string `json:"scope"`
	Kind        string `json:"lapse_kind"`
	Entitlement string `json:"ent"`
	Act         *Actor `json:"act"`
}

// Introspect reports whether raw is an active token of this target: signed
// by its key with EdDSA, for its issuer and exactly its audience, within
// nbf and exp, and not on the revocation feed. A bad token of any kind is
// simply inactive; an error means the store could not be asked (EUNAVAILABLE),
// and the caller must then treat the token as inactive too.
func (c *Conn) Introspect(ctx context.Context, raw string) (*Introspection, error) {
	inactive := &Introspection{Active: false}
	if raw == "" || len(raw) > maxTokenLength {
		return inactive, nil
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 {
		return inactive, nil
	}
	h := tok.Headers[0]
	if h.KeyID != c.kid || h.Algorithm != string(jose.EdDSA) {
		return inactive, nil
	}
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" {
		return inactive, nil
	}
	var std jwt.Claims
	var own lapseClaims
	if err := tok.Claims(c.pub, &std, &own); err != nil {
		return inactive, nil
	}
	now := c.clock.Now()
	switch {
	case std.Issuer != c.issuer,
		len(std.Audience) != 1 || std.Audience[0] != c.audience,
		std.ID == "", std.Subject == "",
		std.Expiry == nil || !now.Before(std.Expiry.Time()),
		std.NotBefore == nil || now.Before(std.NotBefore.Time()),
		std.IssuedAt == nil || now.Before(std.IssuedAt.Time().Add(-time.Minute)):
		return inactive, nil
	}
	revoked, err := c.store.TokenRevoked(ctx, c.name, std.ID)
	if err != nil {
		return inactive, unavailable("token revocation cannot be checked now", fmt.Errorf("token: introspect %s: %w", std.ID, err))
	}
	if revoked {
		return inactive, nil
	}
	return &Introspection{
		Active:      true,
		Scope:       own.Scope,
		TokenType:   "Bearer",
		Exp:         int64(*std.Expiry),
		Iat:         int64(*std.IssuedAt),
		Nbf:         int64(*std.NotBefore),
		Sub:         std.Subject,
		Aud:         std.Audience[0],
		Iss:         std.Issuer,
		Jti:         std.ID,
		Kind:        own.Kind,
		Entitlement: own.Entitlement,
		Act:         own.Act,
	}, nil
}
