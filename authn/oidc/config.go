package oidc

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/internal/jwks"
	"github.com/lapsehq/lapse/authn/internal/validate"
)

// Defaults and bounds of an issuer's configuration.
const (
	// DefaultClockSkew is the skew allowed on exp, nbf and iat when an
	// issuer does not say.
	DefaultClockSkew = 30 * time.Second
	// MaxClockSkew bounds the configurable skew.
	MaxClockSkew = 5 * time.Minute
	// DefaultMaxAge refuses an ID token issued longer ago than this,
	// whatever its exp says: some identity providers issue ID tokens that
	// live for days, and a stolen one should not.
	DefaultMaxAge = 24 * time.Hour
	// MinMaxAge and MaxMaxAge bound the configurable maximum age.
	MinMaxAge = time.Minute
	MaxMaxAge = 30 * 24 * time.Hour
	// MaxAudiences bounds an issuer's accepted audiences (client IDs).
	MaxAudiences = 16
	// MaxScopeRules bounds an issuer's group → scope rules.
	MaxScopeRules = 64
	// MaxPrefixLength bounds id_prefix and groups_prefix.
	MaxPrefixLength = 32
)

// The claim names with a meaning of their own in IDClaim.
const (
	// ClaimEmail: the ID is the email address, and only when the
	// identity provider says it verified it (email_verified is true).
	ClaimEmail = "email"
	// ClaimSub: the ID is the issuer's name, ":" and the subject. The
	// subject never changes and is unique within its issuer, so this is
	// the safest choice, at the price of IDs that people cannot read.
	ClaimSub = "sub"
)

// DefaultAlgorithms are the signature algorithms accepted when an issuer
// does not list its own. HMAC and "none" are never accepted, whatever the
// list says: with HS256 anyone who knows the "key" (for an ID token, the
// client secret, or for a confused verifier, the public key) could sign.
var DefaultAlgorithms = []string{string(jose.RS256), string(jose.ES256), string(jose.EdDSA)}

// exampleURL is the issuer URL that messages about a bad URL show.
const exampleURL = "https://login.example.com"

// DefaultScopes are the credential scopes every person signed in through
// an issuer gets when the issuer does not list its own: see what they may
// request, and ask for it. Approving, revoking and administering come from
// scope rules.
var DefaultScopes = []string{lapse.ScopeRead, lapse.ScopeRequest}

// IssuerConfig is one trusted OpenID Connect identity provider whose ID
// tokens sign people in (docs/oidc.md). Zero values get the defaults named
// on each field.
type IssuerConfig struct {
	// Name identifies the issuer in logs, errors, credential IDs and, with
	// IDClaim "sub", in principal IDs ("corp:248289761001"). Lowercase
	// letters, digits, - and _. Renaming an issuer renames those people.
	Name string
	// Issuer is the exact iss of its ID tokens and the base of OIDC
	// discovery (ISSUER/.well-known/openid-configuration).
	Issuer string
	// Audiences are the client IDs whose ID tokens are accepted: the aud
	// of a token must hold one, and its azp, when present, must be one.
	Audiences []string
	// Algorithms is the allow-list of signature algorithms (default
	// DefaultAlgorithms).
	Algorithms []string
	// ClockSkew is allowed on exp, nbf and iat (default DefaultClockSkew).
	ClockSkew time.Duration
	// MaxAge refuses tokens whose iat is older (default DefaultMaxAge).
	MaxAge time.Duration
	// CAFile, when set, is the only CA trusted for HTTPS to the issuer.
	CAFile string

	// IDClaim names the claim that gives the principal's ID: ClaimEmail
	// (the default), ClaimSub, or another claim whose value is a string
	// (preferred_username, upn). Anything but sub can change, or be
	// reassigned to another person, at the identity provider: docs/oidc.md
	// says what that risks.
	IDClaim string
	// IDPrefix is put before the ID from any claim but sub, whose prefix
	// is always Name + ":".
	IDPrefix string
	// GroupsClaim names the claim that lists the person's groups (default
	// "groups"): a list of strings, or one string. Names that are not
	// valid Lapse identifiers (they contain spaces, say) are skipped.
	GroupsClaim string
	// GroupsPrefix is put before every group name, so that groups of two
	// issuers cannot be mistaken for each other.
	GroupsPrefix string
	// Scopes are the credential scopes every person of this issuer gets.
	// nil means DefaultScopes; an empty, non-nil list means none (only the
	// scope rules give scopes).
	Scopes []string
	// ScopeRules give more scopes to members of groups.
	ScopeRules []ScopeRule
}

// ScopeRule gives Scopes to the members of Group: a group name as Lapse
// sees it, after GroupsPrefix.
type ScopeRule struct {
	Group  string
	Scopes []string
}

func (c *IssuerConfig) clockSkew() time.Duration {
	if c.ClockSkew == 0 {
		return DefaultClockSkew
	}
	return c.ClockSkew
}

func (c *IssuerConfig) maxAge() time.Duration {
	if c.MaxAge == 0 {
		return DefaultMaxAge
	}
	return c.MaxAge
}

func (c *IssuerConfig) idClaim() string {
	if c.IDClaim == "" {
		return ClaimEmail
	}
	return c.IDClaim
}

func (c *IssuerConfig) groupsClaim() string {
	if c.GroupsClaim == "" {
		return "groups"
	}
	return c.GroupsClaim
}

func (c *IssuerConfig) algorithms() []string {
	if len(c.Algorithms) == 0 {
		return DefaultAlgorithms
	}
	return c.Algorithms
}

func (c *IssuerConfig) scopes() []string {
	if c.Scopes == nil {
		return DefaultScopes
	}
	return c.Scopes
}

var claimRE = regexp.MustCompile(`^[A-Za-z0-9_.:/-]{1,128}$`)

// Validate checks one issuer on its own: shapes, allow-lists and scope
// rules. Every problem is a *lapse.Error (EINVALID) whose Field names the
// option ("audiences[1]", "scope_rules[0].group"). Nothing is read or
// fetched.
func (c *IssuerConfig) Validate() []error {
	var errs validate.Errors
	bad := errs.Add
	errs.Name(c.Name, "required: a short name for logs, errors and principal IDs, like corp")
	if c.Issuer == "" {
		bad("issuer", "required: the exact iss of the ID tokens, like https://login.example.com")
	} else if msg := jwks.CheckIssuerURL(c.Issuer, exampleURL); msg != "" {
		bad("issuer", "%s", msg)
	}

	errs.Audiences(c.Audiences, MaxAudiences, "required: the client IDs whose ID tokens Lapse accepts (a token for another application is not for Lapse)")
	errs.Algorithms(c.Algorithms)
	if c.ClockSkew < 0 || c.ClockSkew > MaxClockSkew {
		bad("clock_skew", "must be at most %s", MaxClockSkew)
	}
	if c.MaxAge != 0 && (c.MaxAge < MinMaxAge || c.MaxAge > MaxMaxAge) {
		bad("max_age", "must be between %s and %s", MinMaxAge, MaxMaxAge)
	}

	switch claim := c.idClaim(); {
	case !claimRE.MatchString(claim):
		bad("id_claim", "not a claim name: email, sub or another claim like preferred_username")
	case claim == ClaimSub && c.IDPrefix != "":
		bad("id_prefix", "with id_claim: sub the prefix is always the issuer's name and a colon (%s:)", c.Name)
	}
	checkPrefix := func(field, p string) {
		if p == "" {
			return
		}
		if len(p) > MaxPrefixLength {
			bad(field, "at most %d bytes", MaxPrefixLength)
			return
		}
		if n, err := lapse.NormalizeID(p + "x"); err != nil || n != p+"x" {
			bad(field, "a prefix is lowercase, without spaces or control characters, like corp:")
		}
	}
	checkPrefix("id_prefix", c.IDPrefix)
	checkPrefix("groups_prefix", c.GroupsPrefix)
	if !claimRE.MatchString(c.groupsClaim()) {
		bad("groups_claim", "not a claim name like groups")
	}

	checkScopes := func(field string, list []string) {
		for i, s := range list {
			switch {
			case !slices.Contains(lapse.AllScopes, s):
				bad(validate.Indexed(field, i), "unknown scope %q (known: %s)", s, strings.Join(lapse.AllScopes, ", "))
			case slices.Index(list, s) != i:
				bad(validate.Indexed(field, i), "scope %q is listed twice", s)
			}
		}
	}
	checkScopes("scopes", c.Scopes)
	if len(c.ScopeRules) > MaxScopeRules {
		bad("scope_rules", "at most %d rules", MaxScopeRules)
	}
	for i, r := range c.ScopeRules {
		at := validate.Indexed("scope_rules", i)
		if g, err := lapse.NormalizeID(r.Group); err != nil {
			bad(at+".group", "required: a group name as Lapse sees it (after groups_prefix)")
		} else if g != r.Group {
			bad(at+".group", "write the group as Lapse normalises it: %q", g)
		}
		if len(r.Scopes) == 0 {
			bad(at+".scopes", "required: the scopes the group's members get, like [approve]")
		}
		checkScopes(at+".scopes", r.Scopes)
	}
	return errs
}

// IssuerError is a problem with the issuer at Index of the list.
type IssuerError struct {
	Index int
	Err   error
}

func (e *IssuerError) Error() string { return fmt.Sprintf("oidc issuer %d: %v", e.Index, e.Err) }

// Unwrap returns the cause (a *lapse.Error naming the field).
func (e *IssuerError) Unwrap() error { return e.Err }

// ValidateAll validates every issuer and what they must not share: names
// and issuer URLs. Errors are *IssuerError values.
func ValidateAll(issuers []IssuerConfig) []error {
	return validate.All(issuers, (*IssuerConfig).Validate, func(c *IssuerConfig) []validate.Unique {
		return []validate.Unique{
			{Field: "name", What: "this name", Value: c.Name},
			{Field: "issuer", What: "this issuer", Value: c.Issuer},
		}
	}, func(i int, err error) error { return &IssuerError{Index: i, Err: err} })
}
