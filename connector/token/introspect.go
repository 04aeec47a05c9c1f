package token

import (
	"context"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/lapsehq/lapse"
)

// ClaimMaxUses is the private claim that carries an entitlement's
// max_uses in the token, so counting needs no lookup but the count.
const ClaimMaxUses = "lapse_max_uses"

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
	// MaxUses is the token's use limit (lapse_max_uses), and Uses the uses
	// counted so far, this introspection included; both absent for a token
	// without a limit. Uses is only counted by IntrospectUse.
	MaxUses int64 `json:"lapse_max_uses,omitempty"`
	Uses    int64 `json:"lapse_uses,omitempty"`

	// UseLimitReached is set, on an inactive answer of IntrospectUse, when
	// this introspection was the use past the limit: the token has just
	// been put on the revocation feed and the caller should end grant
	// GrantID. It is never serialised.
	UseLimitReached bool   `json:"-"`
	GrantID         string `json:"-"`
}

// lapseClaims are the non-registered claims Introspect reads.
type lapseClaims struct {
	Scope       string `json:"scope"`
	Kind        string `json:"lapse_kind"`
	Entitlement string `json:"ent"`
	Act         *Actor `json:"act"`
	MaxUses     *int64 `json:"lapse_max_uses"`
}

// Introspect reports whether raw is an active token of this target: signed
// by its key with EdDSA, for its issuer and exactly its audience, within
// nbf and exp, and not on the revocation feed. A bad token of any kind is
// simply inactive; an error means the store could not be asked (EUNAVAILABLE),
// and the caller must then treat the token as inactive too.
//
// Introspect counts no use: it is what Lapse itself asks (verification, the
// token endpoint's revocation), and answers active for a token within its
// limit whatever its count. The API's introspection endpoint uses
// IntrospectUse.
func (c *Conn) Introspect(ctx context.Context, raw string) (*Introspection, error) {
	return c.introspect(ctx, raw, false)
}

// IntrospectUse is Introspect for a consumer that asks before serving a
// request: when the token carries a use limit (lapse_max_uses) and would be
// active, it counts one use in the store. The use past the limit answers
// inactive, puts the token on the revocation feed in the same transaction
// (so followers drop it too, and every replica answers inactive from then
// on), and sets UseLimitReached: the caller then ends the grant.
func (c *Conn) IntrospectUse(ctx context.Context, raw string) (*Introspection, error) {
	return c.introspect(ctx, raw, true)
}

func (c *Conn) introspect(ctx context.Context, raw string, count bool) (*Introspection, error) {
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
	var maxUses, uses int64
	if own.MaxUses != nil {
		if maxUses = *own.MaxUses; maxUses <= 0 {
			return inactive, nil // Lapse never signs such a limit
		}
	}
	if count && maxUses > 0 {
		exp := std.Expiry.Time().UTC()
		var seq int64
		err := c.store.Update(ctx, func(tx lapse.Tx) error {
			var err error
			seq = 0
			if uses, err = tx.CountTokenUse(ctx, c.name, std.ID); err != nil || uses <= maxUses {
				return err
			}
			seq, err = tx.AddTokenRevocation(ctx, &lapse.TokenRevocation{
				Target: c.name, TokenID: std.ID, GrantID: std.ID, ExpiresAt: exp, RevokedAt: now,
			})
			return err
		})
		if err != nil {
			return inactive, unavailable("token uses cannot be counted now", fmt.Errorf("token: count use of %s: %w", std.ID, err))
		}
		if uses > maxUses {
			c.feed.put(std.ID, seq, exp, now, c.leeway)
			c.log.Info("token use limit reached", "jti", std.ID, "max_uses", maxUses)
			return &Introspection{Active: false, UseLimitReached: true, GrantID: std.ID}, nil
		}
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
		MaxUses:     maxUses,
		Uses:        uses,
	}, nil
}
