// Package jwks keeps the public keys of the issuers whose JWTs Lapse
// verifies, for both lanes that verify them: people's ID tokens
// (authn/oidc) and workload tokens (authn/workload). It gets a key set
// from a file, a URL or through OIDC discovery (over a client bounded in
// time and size), keeps only the keys that can verify a signature Lapse
// accepts, caches them, and picks the ones that may have signed a token.
// It also reads a token's header, the part that picks the key, and
// refuses one that names a key of its own: keys come only from the
// issuer's set.
//
// The two lanes name their issuers differently in errors and logs and
// settled a few details of fetching separately; a Flavor holds those
// differences, so that each lane keeps the behaviour it had while the
// logic is written once.
package jwks

import (
	"log/slog"
	"time"

	"github.com/lapsehq/lapse"
)

// Limits of fetching and holding keys.
const (
	// MaxDocumentSize bounds a JWKS, a trust bundle or a discovery
	// document, fetched or read.
	MaxDocumentSize = 1 << 20
	// MaxKeys bounds the keys of one issuer.
	MaxKeys = 100
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = 2048
	// FetchTimeout bounds one discovery or JWKS fetch.
	FetchTimeout = 10 * time.Second
)

// Default cache policy of an issuer's keys.
const (
	// DefaultMaxAge: keys are fetched again when older than this, so a key
	// the issuer withdrew stops being trusted within it.
	DefaultMaxAge = 10 * time.Minute
	// DefaultMinRefresh: keys are not fetched more often than this,
	// however many tokens name a key the cached set lacks, so made-up key
	// IDs cannot make Lapse hammer an issuer.
	DefaultMinRefresh = 10 * time.Second
)

// Flavor is what differs between the lanes that keep keys here; each lane
// has one value of its own.
type Flavor struct {
	// Noun is what errors call an issuer before its name: "the keys of
	// issuer k8s", "the keys of identity provider corp".
	Noun string
	// LogNoun is what logs call one: "cannot fetch the keys of a workload
	// issuer".
	LogNoun string
	// ExampleURL is the issuer URL that messages about a bad URL show as
	// an example (https://login.example.com).
	ExampleURL string
	// SPIFFE also takes keys whose use is "jwt-svid" as signing keys: the
	// JWT authorities of a SPIFFE trust bundle.
	SPIFFE bool
	// NameCAFile puts the CA file's path in the errors about it.
	NameCAFile bool
	// TruncateBodies cuts a response body one byte past MaxDocumentSize,
	// for its reader to refuse, instead of failing the read itself. The
	// OIDC lane was written so; it is kept so that the causes it logs do
	// not change.
	TruncateBodies bool
}

// Options are the cache policy of an issuer's keys, and the clock and log
// it runs on. WithDefaults fills the zero fields.
type Options struct {
	// Clock tells the age of the keys.
	Clock lapse.Clock
	// Logger receives fetch problems.
	Logger *slog.Logger
	// MaxAge and MinRefresh: DefaultMaxAge and DefaultMinRefresh.
	MaxAge     time.Duration
	MinRefresh time.Duration
}

// WithDefaults returns o with its zero (or negative) fields set to the
// defaults: the system clock, a log that discards, DefaultMaxAge and
// DefaultMinRefresh.
func (o Options) WithDefaults() Options {
	if o.Clock == nil {
		o.Clock = lapse.SystemClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MinRefresh <= 0 {
		o.MinRefresh = DefaultMinRefresh
	}
	return o
}
