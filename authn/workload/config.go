package workload

import (
	"regexp"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/internal/jwks"
	"github.com/lapsehq/lapse/authn/internal/validate"
)

// Defaults and bounds of an issuer's configuration.
const (
	// DefaultLeeway is the clock skew allowed on exp, nbf and iat when an
	// issuer does not say: small, because a workload token lives minutes.
	DefaultLeeway = 30 * time.Second
	// MaxLeeway bounds the configurable leeway.
	MaxLeeway = 5 * time.Minute
	// MaxAudiences bounds an issuer's accepted audiences.
	MaxAudiences = 16
	// MaxExpressionLength bounds one CEL expression of a mapping.
	MaxExpressionLength = 4096
)

// DefaultAlgorithms are the signature algorithms accepted when an issuer
// does not list its own: the ones Kubernetes, the CI providers and SPIRE
// sign with. HMAC and "none" are never accepted, whatever the list says.
var DefaultAlgorithms = []string{string(jose.EdDSA), string(jose.ES256), string(jose.RS256)}

// exampleURL is the issuer URL that messages about a bad URL show.
const exampleURL = "https://issuer.example.com"

// IssuerConfig is one trusted issuer of workload tokens, as configured
// (docs/machine-lane.md). Exactly one key source is set: Discovery (OIDC
// discovery at Issuer), JWKSURL or JWKSFile.
type IssuerConfig struct {
	// Name identifies the issuer in logs, errors and the audit trail
	// ("k8s-prod", "github"). Lowercase letters, digits, - and _.
	Name string `yaml:"name"`
	// Issuer is the exact iss claim of its tokens, and with Discovery the
	// base of /.well-known/openid-configuration. Optional only for a SPIFFE
	// trust domain whose JWT-SVIDs carry no iss.
	Issuer string `yaml:"issuer"`
	// Discovery finds the JWKS through OIDC discovery at Issuer.
	Discovery bool `yaml:"discovery"`
	// JWKSURL is where the issuer publishes its public keys.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSFile holds the public keys (a JWKS or a SPIFFE trust bundle),
	// re-read when a token names a key it does not hold.
	JWKSFile string `yaml:"jwks_file"`
	// CAFile, when set, is the only CA trusted for HTTPS to the issuer
	// (a Kubernetes API server's cluster CA).
	CAFile string `yaml:"ca_file"`
	// SPIFFETrustDomain makes the issuer a SPIFFE trust domain: the sub of
	// its tokens must be a SPIFFE ID in it, and JWT-SVIDs without iss are
	// routed to it by that trust domain.
	SPIFFETrustDomain string `yaml:"spiffe_trust_domain"`
	// Audiences are the aud values accepted; a token must carry one.
	Audiences []string `yaml:"audiences"`
	// Algorithms is the allow-list of signature algorithms (default
	// DefaultAlgorithms).
	Algorithms []string `yaml:"algorithms"`
	// Leeway is the clock skew allowed on exp, nbf and iat (default
	// DefaultLeeway; 0 allows none).
	Leeway *Leeway `yaml:"leeway"`

	// Principal is a CEL expression of type string over the token's claims
	// (the variable claims) that gives the service principal's ID, e.g.
	// '"svc:" + claims.sub'.
	Principal string `yaml:"principal"`
	// Groups, when set, is a CEL expression of type list(string): the
	// principal's groups.
	Groups string `yaml:"groups"`
	// DisplayName, when set, is a CEL expression of type string: how the
	// principal is shown (default: its ID).
	DisplayName string `yaml:"display_name"`
	// Require, when set, is a CEL expression of type bool that a token must
	// satisfy, e.g. 'claims.repository_owner == "acme"'. An issuer shared by
	// many tenants (a public CI provider) needs one.
	Require string `yaml:"require"`
	// Kind is the kind of principal the issuer's tokens identify: service
	// (the default) or agent, for an AI agent's runtime that gets its
	// identity from a platform. An agent's token is only ever the actor of
	// a delegation (docs/agents.md), never a subject of its own.
	Kind lapse.PrincipalKind `yaml:"kind"`
}

// kind returns the effective principal kind.
func (c *IssuerConfig) kind() lapse.PrincipalKind {
	if c.Kind == "" {
		return lapse.KindService
	}
	return c.Kind
}

// Leeway is a non-negative duration ("30s", "0s") in configuration.
type Leeway time.Duration

// UnmarshalText implements encoding.TextUnmarshaler. Unlike lapse.Duration
// it accepts zero: no skew allowed at all is a legitimate choice.
func (l *Leeway) UnmarshalText(b []byte) error {
	d, err := lapse.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if d < 0 {
		return lapse.Errorf(lapse.EINVALID, "leeway must not be negative")
	}
	*l = Leeway(d)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (l Leeway) MarshalText() ([]byte, error) { return []byte(time.Duration(l).String()), nil }

// leeway returns the effective leeway.
func (c *IssuerConfig) leeway() time.Duration {
	if c.Leeway == nil {
		return DefaultLeeway
	}
	return time.Duration(*c.Leeway)
}

// algorithms returns the effective allow-list.
func (c *IssuerConfig) algorithms() []jose.SignatureAlgorithm {
	list := c.Algorithms
	if len(list) == 0 {
		list = DefaultAlgorithms
	}
	out := make([]jose.SignatureAlgorithm, len(list))
	for i, a := range list {
		out[i] = jose.SignatureAlgorithm(a)
	}
	return out
}

var trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)

// Validate checks one issuer on its own: shapes, allow-lists and the CEL
// mapping, which is compiled and type-checked here so a mistake fails at
// start. Every problem is a *lapse.Error (EINVALID) whose Field names the
// option ("audiences[1]", "principal"). Nothing is read or fetched.
func (c *IssuerConfig) Validate() []error {
	var errs validate.Errors
	bad := errs.Add
	errs.Name(c.Name, "required: a short name for logs and errors, like k8s-prod")

	if c.Issuer == "" && c.SPIFFETrustDomain == "" {
		bad("issuer", "required: the exact iss claim of the tokens (optional only with spiffe_trust_domain)")
	} else if c.Issuer != "" {
		if msg := jwks.CheckIssuerURL(c.Issuer, exampleURL); msg != "" {
			bad("issuer", "%s", msg)
		}
	}
	if c.SPIFFETrustDomain != "" && !trustDomainRE.MatchString(c.SPIFFETrustDomain) {
		bad("spiffe_trust_domain", "not a SPIFFE trust domain name like example.org (lowercase, no scheme)")
	}

	sources := 0
	for _, set := range []bool{c.Discovery, c.JWKSURL != "", c.JWKSFile != ""} {
		if set {
			sources++
		}
	}
	switch {
	case sources == 0:
		bad("jwks_url", "required: where the keys come from (discovery: true, jwks_url or jwks_file)")
	case sources > 1:
		bad("jwks_url", "give exactly one of discovery, jwks_url and jwks_file")
	}
	if c.Discovery && c.Issuer == "" {
		bad("discovery", "discovery needs issuer")
	}
	if c.JWKSURL != "" {
		if msg := jwks.CheckFetchURL(c.JWKSURL, exampleURL); msg != "" {
			bad("jwks_url", "%s", msg)
		}
	}
	if c.CAFile != "" && c.JWKSFile != "" {
		bad("ca_file", "ca_file is for fetching keys over HTTPS; it has no use with jwks_file")
	}

	errs.Audiences(c.Audiences, MaxAudiences, "required: the aud values Lapse accepts (a token for another audience is not for Lapse)")
	errs.Algorithms(c.Algorithms)
	if c.Leeway != nil && time.Duration(*c.Leeway) > MaxLeeway {
		bad("leeway", "must be at most %s", MaxLeeway)
	}
	if c.Kind != "" && c.Kind != lapse.KindService && c.Kind != lapse.KindAgent {
		bad("kind", "must be service or agent, not %q (people sign in, they are not workloads)", c.Kind)
	}

	if _, err := compileMapping(c); err != nil {
		errs = append(errs, err...)
	}
	return errs
}
