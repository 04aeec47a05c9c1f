// Package oidc signs people in with OpenID Connect: it verifies the ID
// tokens of configured identity providers and maps their claims to a
// human lapse.Principal (DESIGN.md §3, human lane; docs/oidc.md).
//
// An ID token is trusted only when it is signed, with an allowed
// asymmetric algorithm, by a key its issuer publishes (found by OIDC
// discovery, fetched lazily and cached), for one of the issuer's client
// IDs, within its validity and maximum age. What a token says about its
// own keys is never used: a jku, x5u, x5c or embedded jwk header refuses
// it outright. The token itself is never logged nor put in an error.
package oidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"

	gooidc "github.com/coreos/go-oidc/v3/oidc"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/internal/jwks"
)

// MaxTokenLength bounds an ID token. They are 1–2 KiB, more with many
// groups; the bound keeps parsing cheap for anything else.
const MaxTokenLength = 8 << 10

// MaxGroups bounds the groups one ID token may list. A person in more
// groups is refused rather than given a truncated set that might miss the
// group an approval needs: the identity provider's group filter is the
// place to narrow what it sends.
const MaxGroups = 256

// Options are what a Verifier needs besides its issuers. Zero values get
// defaults.
type Options struct {
	// Clock tells the time for exp, nbf, iat and the key cache.
	Clock lapse.Clock
	// Logger receives key-fetch problems and refused tokens (never a
	// token).
	Logger *slog.Logger
	// KeyMaxAge and KeyMinRefresh tune the key cache (DefaultKeyMaxAge,
	// DefaultKeyMinRefresh).
	KeyMaxAge     time.Duration
	KeyMinRefresh time.Duration
	// HTTPClient, when set, fetches discovery documents and key sets
	// instead of the verifier's own bounded client (for tests).
	HTTPClient *http.Client
}

// issuer is one configured issuer, ready to verify.
type issuer struct {
	cfg   IssuerConfig
	algs  []string
	skew  time.Duration
	keys  *jwks.Cache
	rules []ScopeRule
}

// Verifier authenticates ID tokens against the configured issuers. It is
// safe for concurrent use.
type Verifier struct {
	byIssuer map[string]*issuer
	clock    lapse.Clock
	log      *slog.Logger
}

// New builds a verifier. It validates the issuers and reads their CA
// files now; nothing is fetched until a token needs it, so an identity
// provider that cannot be reached never stops a server from starting.
// Errors are *lapse.Error values whose Field names the option, wrapped in
// an *IssuerError with the issuer's index.
func New(issuers []IssuerConfig, opts Options) (*Verifier, error) {
	ko := jwks.Options{Clock: opts.Clock, Logger: opts.Logger, MaxAge: opts.KeyMaxAge, MinRefresh: opts.KeyMinRefresh}.WithDefaults()
	if errs := ValidateAll(issuers); len(errs) > 0 {
		return nil, errs[0]
	}
	v := &Verifier{byIssuer: map[string]*issuer{}, clock: ko.Clock, log: ko.Logger}
	for i := range issuers {
		c := issuers[i]
		client := opts.HTTPClient
		if client == nil {
			var err error
			if client, err = keysFlavor.NewHTTPClient(c.CAFile); err != nil {
				return nil, &IssuerError{Index: i, Err: lapse.FieldErrorf(lapse.EINVALID, "ca_file", "%v", err)}
			}
		}
		d := &jwks.Discovery{Flavor: keysFlavor, Issuer: c.Issuer, Client: client}
		v.byIssuer[c.Issuer] = &issuer{
			cfg:   c,
			algs:  c.algorithms(),
			skew:  c.clockSkew(),
			keys:  &jwks.Cache{Name: c.Name, Flavor: keysFlavor, Fetch: d.Fetch, Options: ko},
			rules: c.ScopeRules,
		}
	}
	return v, nil
}

// Reasons refine EUNAUTHORIZED for a refused token: which check failed.
// They are stable, for tests and logs; the message that goes with each is
// safe to show the caller (it never quotes the token).
const (
	ReasonMalformed        = "token_malformed"
	ReasonKeyHeader        = "token_names_key"
	ReasonNotIDToken       = "not_an_id_token"
	ReasonIssuer           = "issuer_not_trusted"
	ReasonAlgorithm        = "algorithm_not_allowed"
	ReasonSignature        = "bad_signature"
	ReasonUnknownKey       = "unknown_key"
	ReasonAudience         = "audience_not_accepted"
	ReasonExpired          = "token_expired"
	ReasonNotYetValid      = "token_not_yet_valid"
	ReasonTooOld           = "token_too_old"
	ReasonEmailNotVerified = "email_not_verified"
	ReasonMapping          = "claims_do_not_map"
)

var reasonMessages = map[string]string{
	ReasonMalformed:        "the ID token is not a signed JWT in compact form with the claims OpenID Connect requires",
	ReasonKeyHeader:        "the ID token names its own key (jku, x5u, x5c or jwk header) or a critical extension; keys come only from the identity provider",
	ReasonNotIDToken:       "the token is an access token, not an ID token",
	ReasonIssuer:           "the ID token's issuer is not trusted",
	ReasonAlgorithm:        "the ID token's signature algorithm is not allowed for its issuer",
	ReasonSignature:        "the ID token's signature does not verify with its issuer's keys",
	ReasonUnknownKey:       "the ID token is signed with a key its issuer does not publish",
	ReasonAudience:         "the ID token is not for a client ID this server accepts",
	ReasonExpired:          "the ID token has expired: sign in again (lapse login)",
	ReasonNotYetValid:      "the ID token is not valid yet (check the clocks)",
	ReasonTooOld:           "the ID token was issued too long ago: sign in again (lapse login)",
	ReasonEmailNotVerified: "the identity provider has not verified the email address the ID token names",
	ReasonMapping:          "the ID token's claims do not name a person under this issuer's rules",
}

// refusal is an EUNAUTHORIZED error with a stable reason, a safe message
// and an internal cause for the log.
func refusal(reason string, cause error) error {
	return &lapse.Error{Code: lapse.EUNAUTHORIZED, Reason: reason, Message: reasonMessages[reason], Err: cause}
}

// Authenticate verifies an ID token and returns its person. Returns
// EUNAUTHORIZED (with a reason saying which check failed) for every bad
// token, and EUNAVAILABLE when the issuer's keys cannot be had now.
func (v *Verifier) Authenticate(ctx context.Context, token string) (*lapse.Principal, error) {
	p, err := v.authenticate(ctx, token)
	switch {
	case err == nil:
	case lapse.ErrorCode(err) == lapse.EUNAVAILABLE:
		v.log.Warn("cannot check an ID token now", "err", lapse.ErrorMessage(err))
	default:
		// The cause names the issuer and the check, never the token.
		v.log.Info("refused an ID token", "reason", lapse.ErrorReason(err), "err", errors.Unwrap(err))
	}
	return p, err
}

func (v *Verifier) authenticate(ctx context.Context, token string) (*lapse.Principal, error) {
	if len(token) == 0 || len(token) > MaxTokenLength {
		return nil, refusal(ReasonMalformed, errors.New("empty or too long"))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[2] == "" {
		return nil, refusal(ReasonMalformed, errors.New("not three dot-separated parts with a signature"))
	}
	header, err := jwks.DecodeSegment(parts[0], false)
	if err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("header: %w", err))
	}
	if h, ok := jwks.KeyHeader(header); ok {
		return nil, refusal(ReasonKeyHeader, fmt.Errorf("header %s present", h))
	}
	if typ, _ := header["typ"].(string); strings.EqualFold(typ, "at+jwt") || strings.EqualFold(typ, "application/at+jwt") {
		// RFC 9068 access tokens can carry the client ID as aud too;
		// they say who may call an API, not who signed in.
		return nil, refusal(ReasonNotIDToken, errors.New("typ at+jwt"))
	}
	alg, _ := header["alg"].(string)
	if alg == "" || alg == "none" || strings.HasPrefix(strings.ToUpper(alg), "HS") {
		return nil, refusal(ReasonAlgorithm, fmt.Errorf("alg %q", alg))
	}
	kid, _ := header["kid"].(string)

	// The issuer is chosen from the unverified payload: its keys are what
	// verifies the rest. Nothing else from it is used before that.
	unverified, err := jwks.DecodeSegment(parts[1], false)
	if err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("payload: %w", err))
	}
	iss, _ := unverified["iss"].(string)
	is := v.byIssuer[iss]
	if is == nil {
		return nil, refusal(ReasonIssuer, errors.New("iss is not configured"))
	}
	if !slices.Contains(is.algs, alg) {
		return nil, refusal(ReasonAlgorithm, fmt.Errorf("issuer %s: alg %s not in the allow-list", is.cfg.Name, alg))
	}

	// A kid the cached keys lack is a key rotation: the cache fetches
	// again (and bounds how often).
	cands, err := is.keys.Candidates(ctx, kid, alg)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return nil, refusal(ReasonUnknownKey, fmt.Errorf("issuer %s: no key for kid %q", is.cfg.Name, kid))
	}

	// go-oidc checks the algorithm against the allow-list, the single
	// signature and iss; Lapse checks the times itself, with the issuer's
	// skew and its own clock, and the audience against every client ID.
	ks := &keySet{keys: cands}
	idt, err := gooidc.NewVerifier(is.cfg.Issuer, ks, &gooidc.Config{
		SupportedSigningAlgs: is.algs,
		SkipClientIDCheck:    true,
		SkipExpiryCheck:      true,
	}).Verify(ctx, token)
	switch {
	case err == nil:
	case ks.failed:
		return nil, refusal(ReasonSignature, fmt.Errorf("issuer %s: the signature does not verify with its keys", is.cfg.Name))
	default:
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: %v", is.cfg.Name, err))
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: claims: %v", is.cfg.Name, err))
	}
	if err := v.checkClaims(is, idt, claims); err != nil {
		return nil, err
	}
	return v.principal(is, claims, token)
}

// checkClaims checks what go-oidc left to Lapse: sub, the audience and
// authorised party, and the times.
func (v *Verifier) checkClaims(is *issuer, idt *gooidc.IDToken, claims map[string]any) error {
	name := is.cfg.Name
	if idt.Subject == "" {
		return refusal(ReasonMalformed, fmt.Errorf("issuer %s: no sub", name))
	}
	if !slices.ContainsFunc(idt.Audience, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return refusal(ReasonAudience, fmt.Errorf("issuer %s: aud %q is none of the accepted client IDs", name, idt.Audience))
	}
	// OpenID Connect Core §3.1.3.7: a token with an azp was issued to that
	// party, which must be one of ours.
	if azp, ok := claims["azp"]; ok {
		if s, _ := azp.(string); !slices.Contains(is.cfg.Audiences, s) {
			return refusal(ReasonAudience, fmt.Errorf("issuer %s: azp %q is not an accepted client ID", name, s))
		}
	}

	now := v.clock.Now()
	skew := is.skew
	exp, ok := numericDate(claims, "exp")
	if !ok {
		return refusal(ReasonMalformed, fmt.Errorf("issuer %s: no exp", name))
	}
	// RFC 7519: not accepted on or after exp.
	if !now.Before(exp.Add(skew)) {
		return refusal(ReasonExpired, fmt.Errorf("issuer %s: expired at %s", name, exp.Format(time.RFC3339)))
	}
	iat, ok := numericDate(claims, "iat")
	if !ok {
		return refusal(ReasonMalformed, fmt.Errorf("issuer %s: no iat", name))
	}
	if iat.After(now.Add(skew)) {
		return refusal(ReasonNotYetValid, fmt.Errorf("issuer %s: issued in the future (%s)", name, iat.Format(time.RFC3339)))
	}
	if _, present := claims["nbf"]; present {
		nbf, ok := numericDate(claims, "nbf")
		if !ok {
			return refusal(ReasonMalformed, fmt.Errorf("issuer %s: nbf is not a number", name))
		}
		if nbf.After(now.Add(skew)) {
			return refusal(ReasonNotYetValid, fmt.Errorf("issuer %s: not before %s", name, nbf.Format(time.RFC3339)))
		}
	}
	if now.Sub(iat) > is.cfg.maxAge()+skew {
		return refusal(ReasonTooOld, fmt.Errorf("issuer %s: issued at %s, more than %s ago", name, iat.Format(time.RFC3339), is.cfg.maxAge()))
	}
	return nil
}

// numericDate reads a NumericDate claim (seconds since the epoch).
func numericDate(claims map[string]any, key string) (time.Time, bool) {
	f, ok := claims[key].(float64)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
}

// principal maps verified claims to the person.
func (v *Verifier) principal(is *issuer, claims map[string]any, token string) (*lapse.Principal, error) {
	c := &is.cfg
	var raw string
	switch claim := c.idClaim(); claim {
	case ClaimEmail:
		email, _ := claims["email"].(string)
		if email == "" {
			return nil, refusal(ReasonMapping, fmt.Errorf("issuer %s: no email claim (ask for the email scope, or map another claim with id_claim)", c.Name))
		}
		// Without this check anybody who can set an unverified address at
		// the identity provider could sign in as its owner.
		if !verified(claims["email_verified"]) {
			return nil, refusal(ReasonEmailNotVerified, fmt.Errorf("issuer %s: email_verified is not true", c.Name))
		}
		raw = c.IDPrefix + email
	case ClaimSub:
		sub, _ := claims["sub"].(string)
		raw = c.Name + ":" + sub
	default:
		s, _ := claims[claim].(string)
		if s == "" {
			return nil, refusal(ReasonMapping, fmt.Errorf("issuer %s: no string claim %s", c.Name, claim))
		}
		raw = c.IDPrefix + s
	}
	id, err := lapse.NormalizeID(raw)
	if err != nil {
		return nil, refusal(ReasonMapping, fmt.Errorf("issuer %s: id_claim %s: %s", c.Name, c.idClaim(), lapse.ErrorMessage(err)))
	}
	groups, err := v.groups(is, claims)
	if err != nil {
		return nil, err
	}
	return &lapse.Principal{
		ID:           id,
		Kind:         lapse.KindHuman,
		Name:         displayName(claims, id),
		Groups:       groups,
		Scopes:       scopesFor(c.scopes(), is.rules, groups),
		CredentialID: credentialID(c, claims, token),
	}, nil
}

// verified reads email_verified: true, or the string "true" that some
// identity providers send.
func verified(v any) bool {
	switch v := v.(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// groups reads the groups claim: a list of strings or one string. Names
// that are not valid identifiers are skipped (an identity provider's
// group names may hold spaces); the count is logged.
func (v *Verifier) groups(is *issuer, claims map[string]any) ([]string, error) {
	var list []string
	switch g := claims[is.cfg.groupsClaim()].(type) {
	case nil:
		return nil, nil
	case string:
		list = []string{g}
	case []any:
		if len(g) > MaxGroups {
			return nil, refusal(ReasonMapping, fmt.Errorf("issuer %s: %d groups, more than %d", is.cfg.Name, len(g), MaxGroups))
		}
		for _, x := range g {
			if s, ok := x.(string); ok {
				list = append(list, s)
			}
		}
	default:
		return nil, refusal(ReasonMapping, fmt.Errorf("issuer %s: the groups claim %s is neither a list nor a string", is.cfg.Name, is.cfg.groupsClaim()))
	}
	var out []string
	skipped := 0
	for _, g := range list {
		n, err := lapse.NormalizeID(is.cfg.GroupsPrefix + g)
		if err != nil {
			skipped++
			continue
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if skipped > 0 {
		v.log.Debug("skipped group names that are not valid identifiers", "issuer", is.cfg.Name, "skipped", skipped)
	}
	return out, nil
}

// scopesFor is the issuer's fixed scopes and those of every rule whose
// group the person is in, in the order of lapse.AllScopes.
func scopesFor(fixed []string, rules []ScopeRule, groups []string) []string {
	have := map[string]bool{}
	for _, s := range fixed {
		have[s] = true
	}
	for _, r := range rules {
		if slices.Contains(groups, r.Group) {
			for _, s := range r.Scopes {
				have[s] = true
			}
		}
	}
	out := []string{}
	for _, s := range lapse.AllScopes {
		if have[s] {
			out = append(out, s)
		}
	}
	return out
}

// displayName is the name claim when it is printable and short, else id.
func displayName(claims map[string]any, id string) string {
	n, _ := claims["name"].(string)
	n = strings.TrimSpace(n)
	if n == "" || len(n) > lapse.MaxIDLength || strings.ContainsFunc(n, func(r rune) bool {
		return unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
	}) {
		return id
	}
	return n
}

// credentialID names the token for the audit trail without revealing it:
// the issuer's name and a hash of the token's jti (with its issuer), or of
// the whole token when it has none. A hash of a signed token is no use to
// anyone who does not hold the token.
func credentialID(c *IssuerConfig, claims map[string]any, token string) string {
	h := sha256.New()
	if jti, _ := claims["jti"].(string); jti != "" {
		h.Write([]byte("jti\x00" + c.Issuer + "\x00" + jti))
	} else {
		h.Write([]byte("token\x00" + token))
	}
	return "oidc:" + c.Name + ":" + hex.EncodeToString(h.Sum(nil)[:12])
}
