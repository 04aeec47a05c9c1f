package workload

import (
	"context"
	"net/http"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/internal/jwks"
)

// Limits of fetching and holding keys.
const (
	// MaxKeySetSize bounds a JWKS document, a trust bundle or a discovery
	// document, fetched or read.
	MaxKeySetSize = jwks.MaxDocumentSize
	// MaxKeys bounds the keys of one issuer.
	MaxKeys = jwks.MaxKeys
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = jwks.MinRSABits
)

// Default cache policy of an issuer's keys (Options override them).
const (
	// DefaultKeyMaxAge: keys are fetched again when older than this, so a
	// key the issuer withdrew stops being trusted within it.
	DefaultKeyMaxAge = jwks.DefaultMaxAge
	// DefaultKeyMinRefresh: keys are not fetched more often than this,
	// however many tokens name a key the cached set lacks, so garbage kids
	// cannot make Lapse hammer an issuer.
	DefaultKeyMinRefresh = jwks.DefaultMinRefresh
)

// keysFlavor is how this lane's issuers are named, and their keys read:
// SPIFFE trust bundles are key sets too.
var keysFlavor = jwks.Flavor{
	Noun:       "issuer",
	LogNoun:    "a workload issuer",
	ExampleURL: exampleURL,
	SPIFFE:     true,
}

// newKeySource builds the key cache over the key source an issuer's
// configuration names. client, when not nil, replaces the issuer's own.
func newKeySource(c *IssuerConfig, opts jwks.Options, client *http.Client) (*jwks.Cache, error) {
	ck := &jwks.Cache{Name: c.Name, Flavor: keysFlavor, Options: opts}
	if c.JWKSFile != "" {
		path := c.JWKSFile
		ck.Fetch = func(context.Context) ([]jose.JSONWebKey, error) { return keysFlavor.ReadKeyFile(path) }
		// The file is read now, so a missing or broken file stops the
		// server at start instead of failing the first token.
		keys, err := keysFlavor.ReadKeyFile(path)
		if err != nil {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "jwks_file", "%v", err)
		}
		ck.Set(keys)
		// A local file costs nothing to re-read; a rotated file is seen
		// within a minute, or at the first token that names a new key.
		ck.MaxAge = min(ck.MaxAge, time.Minute)
		return ck, nil
	}
	// The CA file is read even when client replaces it: a broken one is
	// a configuration error either way.
	own, err := keysFlavor.NewHTTPClient(c.CAFile)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "ca_file", "%v", err)
	}
	if client == nil {
		client = own
	}
	if c.JWKSURL != "" {
		u := c.JWKSURL
		ck.Fetch = func(ctx context.Context) ([]jose.JSONWebKey, error) { return keysFlavor.FetchKeys(ctx, client, u) }
		return ck, nil
	}
	// Discovery is lazy: a server whose issuer is unreachable at start
	// still starts (and revokes); tokens of that issuer are refused as
	// unavailable until discovery succeeds.
	d := &jwks.Discovery{Flavor: keysFlavor, Issuer: c.Issuer, Client: client}
	ck.Fetch = d.Fetch
	return ck, nil
}
