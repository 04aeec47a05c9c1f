package oidc

import (
	"context"
	"errors"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse/authn/internal/jwks"
	"github.com/lapsehq/lapse/authn/internal/validate"
)

// Limits of fetching and holding keys.
const (
	// MaxDocumentSize bounds a discovery document or a JWKS.
	MaxDocumentSize = jwks.MaxDocumentSize
	// MaxKeys bounds the keys of one issuer.
	MaxKeys = jwks.MaxKeys
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = jwks.MinRSABits
)

// Default cache policy of an issuer's keys (Options override them).
const (
	// DefaultKeyMaxAge: keys are fetched again when older than this, so a
	// key the identity provider withdrew stops being trusted within it.
	DefaultKeyMaxAge = jwks.DefaultMaxAge
	// DefaultKeyMinRefresh: keys are not fetched more often than this,
	// however many tokens name a key the cached set lacks, so made-up key
	// IDs cannot make Lapse hammer the identity provider.
	DefaultKeyMinRefresh = jwks.DefaultMinRefresh
)

// keysFlavor is how this lane's issuers are named in errors and logs. An
// identity provider's keys are found by OIDC discovery, fetched lazily and
// cached (jwks.Cache over a jwks.Discovery): one that is briefly down does
// not sign everybody out.
var keysFlavor = jwks.Flavor{
	Noun:           "identity provider",
	LogNoun:        "an OIDC identity provider",
	ExampleURL:     exampleURL,
	NameCAFile:     true,
	TruncateBodies: true,
}

// keySet is the go-oidc KeySet of one verification: the candidate keys,
// chosen before. It records a signature that does not verify, so that
// this failure can be told from the others after go-oidc has turned it
// into text.
type keySet struct {
	keys   []jose.JSONWebKey
	failed bool
}

var _ gooidc.KeySet = (*keySet)(nil)

func (s *keySet) VerifySignature(_ context.Context, token string) ([]byte, error) {
	jws, err := jose.ParseSigned(token, signingAlgorithms(validate.AllowedAlgorithms))
	if err != nil {
		return nil, err
	}
	for i := range s.keys {
		// go-jose checks that the algorithm suits the key's type, so an
		// HMAC "signature" keyed with a public key cannot verify here
		// even if the allow-list were wrong.
		if payload, err := jws.Verify(&s.keys[i]); err == nil {
			return payload, nil
		}
	}
	s.failed = true
	return nil, errors.New("the signature does not verify with the issuer's keys")
}

func signingAlgorithms(list []string) []jose.SignatureAlgorithm {
	out := make([]jose.SignatureAlgorithm, len(list))
	for i, a := range list {
		out[i] = jose.SignatureAlgorithm(a)
	}
	return out
}
