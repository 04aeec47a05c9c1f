// Package workload authenticates machines by the identity tokens their
// platform gives them: Kubernetes service-account tokens, CI OIDC tokens
// (GitHub Actions and the like) and SPIFFE JWT-SVIDs. A token is trusted
// only when it is signed, with an allowed asymmetric algorithm, by a key of
// a configured issuer's JWKS (from OIDC discovery, a URL or a file), for an
// accepted audience, within its validity; then a CEL mapping from its
// claims names the service principal (DESIGN.md §3, machine lane).
//
// What a token says about its own keys is never used: a jku, x5u, x5c or
// embedded jwk header refuses the token outright, and only kid selects a
// key, from the configured set.
package workload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/internal/jwks"
	"github.com/lapsehq/lapse/authn/internal/validate"
)

// MaxTokenLength bounds a subject token. Platform tokens are 1–2 KiB; the
// bound keeps parsing cheap for anything else.
const MaxTokenLength = 8 << 10

// Options are what a Verifier needs besides its issuers. Zero values get
// defaults.
type Options struct {
	// Clock tells the time for exp, nbf and iat, and for the key cache.
	Clock lapse.Clock
	// Logger receives key-fetch problems and refused tokens (never a token).
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
	cfg     IssuerConfig
	algs    []jose.SignatureAlgorithm
	leeway  time.Duration
	keys    *jwks.Cache
	mapping *mapping
}

// Verifier authenticates workload tokens against the configured issuers.
// It is safe for concurrent use.
type Verifier struct {
	byIssuer      map[string]*issuer
	byTrustDomain map[string]*issuer
	clock         lapse.Clock
	log           *slog.Logger
}

// New builds a verifier. It compiles every mapping and reads every key
// file now; nothing is fetched until a token needs it. Errors are
// *lapse.Error values whose Field names the option, wrapped with the
// issuer's index: use IssuerIndex to find it.
func New(issuers []IssuerConfig, opts Options) (*Verifier, error) {
	ko := jwks.Options{Clock: opts.Clock, Logger: opts.Logger, MaxAge: opts.KeyMaxAge, MinRefresh: opts.KeyMinRefresh}.WithDefaults()
	v := &Verifier{byIssuer: map[string]*issuer{}, byTrustDomain: map[string]*issuer{}, clock: ko.Clock, log: ko.Logger}
	if errs := ValidateAll(issuers); len(errs) > 0 {
		return nil, errs[0]
	}
	for i := range issuers {
		c := issuers[i]
		m, errs := compileMapping(&c)
		if len(errs) > 0 {
			return nil, &IssuerError{Index: i, Err: errs[0]}
		}
		ks, err := newKeySource(&c, ko, opts.HTTPClient)
		if err != nil {
			return nil, &IssuerError{Index: i, Err: err}
		}
		is := &issuer{cfg: c, algs: c.algorithms(), leeway: c.leeway(), keys: ks, mapping: m}
		if c.Issuer != "" {
			v.byIssuer[c.Issuer] = is
		}
		if c.SPIFFETrustDomain != "" {
			v.byTrustDomain[c.SPIFFETrustDomain] = is
		}
	}
	return v, nil
}

// IssuerError is a problem with the issuer at Index of the list.
type IssuerError struct {
	Index int
	Err   error
}

func (e *IssuerError) Error() string { return fmt.Sprintf("issuer %d: %v", e.Index, e.Err) }

// Unwrap returns the cause (a *lapse.Error naming the field).
func (e *IssuerError) Unwrap() error { return e.Err }

// ValidateAll validates every issuer and what they must not share: names,
// issuer values and trust domains. Errors are *IssuerError values.
func ValidateAll(issuers []IssuerConfig) []error {
	return validate.All(issuers, (*IssuerConfig).Validate, func(c *IssuerConfig) []validate.Unique {
		return []validate.Unique{
			{Field: "name", What: "this name", Value: c.Name},
			{Field: "issuer", What: "this issuer", Value: c.Issuer},
			{Field: "spiffe_trust_domain", What: "this trust domain", Value: c.SPIFFETrustDomain},
		}
	}, func(i int, err error) error { return &IssuerError{Index: i, Err: err} })
}

// Reasons refine EUNAUTHORIZED for a refused token: which check failed.
// They are stable, for tests and logs; the message that goes with each is
// safe to show the caller (it never quotes the token).
const (
	ReasonMalformed   = "token_malformed"
	ReasonKeyHeader   = "token_names_key"
	ReasonIssuer      = "issuer_not_trusted"
	ReasonAlgorithm   = "algorithm_not_allowed"
	ReasonSignature   = "bad_signature"
	ReasonUnknownKey  = "unknown_key"
	ReasonAudience    = "audience_not_accepted"
	ReasonExpired     = "token_expired"
	ReasonNotYetValid = "token_not_yet_valid"
	ReasonNoExpiry    = "token_without_expiry"
	ReasonSPIFFE      = "not_a_spiffe_id_of_trust_domain"
	ReasonMapping     = "claims_do_not_map"
	ReasonRequire     = "require_rule_not_met"
)

var reasonMessages = map[string]string{
	ReasonMalformed:   "the subject token is not a signed JWT in compact form",
	ReasonKeyHeader:   "the subject token names its own key (jku, x5u, x5c or jwk header) or a critical extension; keys come only from the issuer's configured key set",
	ReasonIssuer:      "the subject token's issuer is not trusted",
	ReasonAlgorithm:   "the subject token's signature algorithm is not allowed for its issuer",
	ReasonSignature:   "the subject token's signature does not verify with its issuer's keys",
	ReasonUnknownKey:  "the subject token is signed with a key its issuer does not publish",
	ReasonAudience:    "the subject token is not for an accepted audience",
	ReasonExpired:     "the subject token has expired",
	ReasonNotYetValid: "the subject token is not valid yet",
	ReasonNoExpiry:    "the subject token has no expiry (exp); tokens that never expire are refused",
	ReasonSPIFFE:      "the subject token's sub is not a SPIFFE ID of the issuer's trust domain",
	ReasonMapping:     "the subject token's claims do not map to a service principal under this issuer's rules",
	ReasonRequire:     "the subject token does not satisfy this issuer's require rule",
}

// refusal is an EUNAUTHORIZED error with a stable reason, a safe message
// and an internal cause for the log.
func refusal(reason string, cause error) error {
	return &lapse.Error{Code: lapse.EUNAUTHORIZED, Reason: reason, Message: reasonMessages[reason], Err: cause}
}

// Authenticate verifies a workload token and returns its service
// principal. Returns EUNAUTHORIZED (with a safe message saying which check
// failed) for every bad token, and EUNAVAILABLE when the issuer's keys
// cannot be had now.
func (v *Verifier) Authenticate(ctx context.Context, token string) (*lapse.Principal, error) {
	if len(token) == 0 || len(token) > MaxTokenLength {
		return nil, refusal(ReasonMalformed, errors.New("empty or too long"))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, refusal(ReasonMalformed, errors.New("not three dot-separated parts"))
	}
	header, err := jwks.DecodeSegment(parts[0], true)
	if err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("header: %w", err))
	}
	if h, ok := jwks.KeyHeader(header); ok {
		return nil, refusal(ReasonKeyHeader, fmt.Errorf("header %s present", h))
	}
	alg, _ := header["alg"].(string)
	if alg == "" || alg == "none" || strings.HasPrefix(alg, "HS") {
		return nil, refusal(ReasonAlgorithm, fmt.Errorf("alg %q", alg))
	}
	if parts[2] == "" {
		return nil, refusal(ReasonMalformed, errors.New("no signature"))
	}

	// The issuer is chosen from the unverified payload: its keys are what
	// verifies the rest. Nothing else from it is used before that.
	unverified, err := jwks.DecodeSegment(parts[1], true)
	if err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("payload: %w", err))
	}
	is, err := v.route(unverified)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(is.algs, jose.SignatureAlgorithm(alg)) {
		return nil, refusal(ReasonAlgorithm, fmt.Errorf("issuer %s: alg %s not in the allow-list", is.cfg.Name, alg))
	}
	jws, err := jose.ParseSignedCompact(token, is.algs)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: parse: %v", is.cfg.Name, err))
	}
	payload, err := v.verifySignature(ctx, is, jws)
	if err != nil {
		return nil, err
	}
	return v.checkClaims(is, payload)
}

// route picks the issuer of a token: by its iss claim, or, for a JWT-SVID
// without iss, by the trust domain of its SPIFFE ID.
func (v *Verifier) route(claims map[string]any) (*issuer, error) {
	if iss, ok := claims["iss"].(string); ok && iss != "" {
		if is := v.byIssuer[iss]; is != nil {
			return is, nil
		}
		return nil, refusal(ReasonIssuer, errors.New("iss is not configured"))
	}
	if _, has := claims["iss"]; !has {
		if sub, ok := claims["sub"].(string); ok {
			if td, _, ok := splitSPIFFEID(sub); ok {
				if is := v.byTrustDomain[td]; is != nil {
					return is, nil
				}
			}
		}
	}
	return nil, refusal(ReasonIssuer, errors.New("no iss, and no configured SPIFFE trust domain"))
}

// verifySignature finds the key by kid in the issuer's set (fetching the
// set again once when the kid is unknown, for a key rotation) and checks
// the signature. A key whose JWK names an alg verifies only that alg.
func (v *Verifier) verifySignature(ctx context.Context, is *issuer, jws *jose.JSONWebSignature) ([]byte, error) {
	h := jws.Signatures[0].Header
	cands, err := is.keys.Candidates(ctx, h.KeyID, h.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return nil, refusal(ReasonUnknownKey, fmt.Errorf("issuer %s: no key for kid %q", is.cfg.Name, h.KeyID))
	}
	for i := range cands {
		// go-jose checks that the algorithm suits the key's type, so an
		// HS256 "signature" keyed with a public key cannot verify here
		// even if the allow-list were wrong.
		if payload, err := jws.Verify(&cands[i]); err == nil {
			return payload, nil
		}
	}
	return nil, refusal(ReasonSignature, fmt.Errorf("issuer %s: signature does not verify", is.cfg.Name))
}

// checkClaims validates the verified claims and maps them to a principal.
func (v *Verifier) checkClaims(is *issuer, payload []byte) (*lapse.Principal, error) {
	var std jwt.Claims
	if err := json.Unmarshal(payload, &std); err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: registered claims: %v", is.cfg.Name, err))
	}
	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: claims: %v", is.cfg.Name, err))
	}
	if is.cfg.Issuer != "" && std.Issuer != is.cfg.Issuer {
		return nil, refusal(ReasonIssuer, fmt.Errorf("issuer %s: iss does not match", is.cfg.Name))
	}
	if std.Expiry == nil {
		return nil, refusal(ReasonNoExpiry, fmt.Errorf("issuer %s: no exp", is.cfg.Name))
	}
	now := v.clock.Now()
	err = std.ValidateWithLeeway(jwt.Expected{AnyAudience: is.cfg.Audiences, Time: now}, is.leeway)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrInvalidAudience):
		return nil, refusal(ReasonAudience, fmt.Errorf("issuer %s: %v", is.cfg.Name, err))
	case errors.Is(err, jwt.ErrExpired):
		return nil, refusal(ReasonExpired, fmt.Errorf("issuer %s: %v", is.cfg.Name, err))
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, refusal(ReasonNotYetValid, fmt.Errorf("issuer %s: %v", is.cfg.Name, err))
	default:
		return nil, refusal(ReasonMalformed, fmt.Errorf("issuer %s: %v", is.cfg.Name, err))
	}
	// RFC 7519: not accepted on or after exp (go-jose accepts at exp).
	if !now.Before(std.Expiry.Time().Add(is.leeway)) {
		return nil, refusal(ReasonExpired, fmt.Errorf("issuer %s: at or after exp", is.cfg.Name))
	}
	if td := is.cfg.SPIFFETrustDomain; td != "" {
		if got, _, ok := splitSPIFFEID(std.Subject); !ok || got != td {
			return nil, refusal(ReasonSPIFFE, fmt.Errorf("issuer %s: sub is not a SPIFFE ID in %s", is.cfg.Name, td))
		}
	}
	id, err := is.mapping.apply(claims)
	if err != nil {
		if e, ok := errors.AsType[*lapse.Error](err); ok {
			e.Err = fmt.Errorf("issuer %s: %w", is.cfg.Name, e.Err)
		}
		return nil, err
	}
	return &lapse.Principal{
		ID:     id.id,
		Kind:   is.cfg.kind(),
		Name:   id.name,
		Groups: id.groups,
		// A workload token does one thing: ask for (and give back) its
		// own grants through the token endpoint.
		Scopes:       []string{lapse.ScopeRequest},
		CredentialID: "workload:" + is.cfg.Name,
	}, nil
}

// decodeClaims decodes the claims for CEL: JSON numbers that are whole
// become int, the rest double, so that claims.iat > 0 and
// claims.run_number == 42 mean what they say.
func decodeClaims(payload []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	for k, x := range m {
		m[k] = numbers(x)
	}
	return m, nil
}

func numbers(x any) any {
	switch x := x.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if f, err := x.Float64(); err == nil && !math.IsInf(f, 0) {
			return f
		}
		return x.String()
	case map[string]any:
		for k, y := range x {
			x[k] = numbers(y)
		}
	case []any:
		for i, y := range x {
			x[i] = numbers(y)
		}
	}
	return x
}

// splitSPIFFEID splits "spiffe://trust-domain/path" (the SPIFFE ID
// standard: lowercase trust domain, a non-empty path of segments without
// "." or "..", no query, fragment, port or user).
func splitSPIFFEID(s string) (td, path string, ok bool) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok || len(s) > 2048 {
		return "", "", false
	}
	td, path, ok = strings.Cut(rest, "/")
	if !ok || !trustDomainRE.MatchString(td) || path == "" {
		return "", "", false
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", "", false
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return "", "", false
			}
		}
	}
	return td, "/" + path, true
}
