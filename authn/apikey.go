// Package authn decides who is calling: it turns a presented credential into
// a lapse.Principal. Today: API keys (the dev users hold API keys too).
package authn

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// API key wire format: "lapse_" + prefix (12 base32 chars) + "_" + secret
// (43 base64url chars, 256 bits). The prefix is public and identifies the
// key; only SHA-256 of the whole string is stored.
const (
	keyScheme    = "lapse_"
	prefixLength = 12
	secretBytes  = 32
)

// GenerateAPIKey makes a new key for p with the given scopes. It returns the
// stored form and the secret, which the caller shows once and forgets.
func GenerateAPIKey(p lapse.Principal, scopes []string, name string, now time.Time, ttl time.Duration) (*lapse.APIKey, string, error) {
	var pb [8]byte
	if _, err := rand.Read(pb[:]); err != nil {
		return nil, "", lapse.Internal("generate api key", err)
	}
	prefix := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(pb[:]))[:prefixLength]
	var sb [secretBytes]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return nil, "", lapse.Internal("generate api key", err)
	}
	secret := keyScheme + prefix + "_" + base64.RawURLEncoding.EncodeToString(sb[:])
	sum := sha256.Sum256([]byte(secret))
	k := &lapse.APIKey{
		ID:        prefix,
		Prefix:    prefix,
		Principal: p,
		Scopes:    scopes,
		Name:      name,
		Hash:      sum[:],
		CreatedAt: now,
	}
	if ttl > 0 {
		k.ExpiresAt = now.Add(ttl)
	}
	return k, secret, nil
}

// ParseAPIKey extracts the public prefix from a presented key. It returns
// ok=false for anything that is not syntactically a Lapse API key, before any
// store lookup.
func ParseAPIKey(secret string) (prefix string, ok bool) {
	rest, ok := strings.CutPrefix(secret, keyScheme)
	if !ok || len(rest) != prefixLength+1+43 || rest[prefixLength] != '_' {
		return "", false
	}
	prefix = rest[:prefixLength]
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return "", false
		}
	}
	if _, err := base64.RawURLEncoding.DecodeString(rest[prefixLength+1:]); err != nil {
		return "", false
	}
	return prefix, true
}

// KeyLookup is the part of the store the authenticator reads.
type KeyLookup interface {
	GetAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error)
}

// APIKeys authenticates callers by API key.
type APIKeys struct {
	Keys  KeyLookup
	Clock lapse.Clock
}

// Authenticate returns the principal of a valid key, with the key's scopes.
// Every failure — malformed, unknown, wrong secret, expired, revoked — is the
// same EUNAUTHORIZED, so a caller cannot probe which prefixes exist. The hash
// comparison is constant-time.
func (a *APIKeys) Authenticate(ctx context.Context, secret string) (*lapse.Principal, error) {
	deny := lapse.Errorf(lapse.EUNAUTHORIZED, "invalid, expired or revoked credential")
	prefix, ok := ParseAPIKey(secret)
	if !ok {
		return nil, deny
	}
	k, err := a.Keys.GetAPIKey(ctx, prefix)
	if lapse.ErrorCode(err) == lapse.ENOTFOUND {
		return nil, deny
	} else if err != nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "cannot check credential now")
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], k.Hash) != 1 {
		return nil, deny
	}
	now := a.Clock.Now()
	if !k.RevokedAt.IsZero() || (!k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)) {
		return nil, deny
	}
	p := k.Principal
	p.Scopes = append([]string(nil), k.Scopes...)
	p.CredentialID = k.Prefix
	return &p, nil
}
