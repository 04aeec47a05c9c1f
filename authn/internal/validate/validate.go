// Package validate holds the checks that the configurations of both kinds
// of JWT issuer share (OIDC identity providers in authn/oidc, workload
// issuers in authn/workload), so that the same mistake is found the same
// way, and reported with the same message, in both.
package validate

import (
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
)

// AllowedAlgorithms are every signature algorithm an issuer may list:
// asymmetric signatures only. HS256/384/512 would let anyone who knows the
// key sign (the public key, which is everyone's, for a confused verifier),
// and "none" is no signature at all.
var AllowedAlgorithms = []string{
	string(jose.EdDSA),
	string(jose.ES256), string(jose.ES384), string(jose.ES512),
	string(jose.RS256), string(jose.RS384), string(jose.RS512),
	string(jose.PS256), string(jose.PS384), string(jose.PS512),
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// Errors are the problems of one issuer's configuration, in the order
// found: each a *lapse.Error (EINVALID) whose Field names the option.
type Errors []error

// Add records a problem with field.
func (e *Errors) Add(field, format string, args ...any) {
	*e = append(*e, lapse.FieldErrorf(lapse.EINVALID, field, format, args...))
}

// Name checks an issuer's name: present (missing says what it is for) and
// a short lowercase identifier.
func (e *Errors) Name(name, missing string) {
	if name == "" {
		e.Add("name", "%s", missing)
	} else if !nameRE.MatchString(name) {
		e.Add("name", "issuer names are lowercase letters, digits, - and _ (at most 64)")
	}
}

// Audiences checks the accepted audiences: present (missing says what
// they are), at most max, each a non-empty string without surrounding
// space, none listed twice.
func (e *Errors) Audiences(list []string, max int, missing string) {
	if len(list) == 0 {
		e.Add("audiences", "%s", missing)
	}
	if len(list) > max {
		e.Add("audiences", "at most %d audiences", max)
	}
	for i, a := range list {
		switch {
		case strings.TrimSpace(a) == "" || a != strings.TrimSpace(a):
			e.Add(Indexed("audiences", i), "an audience must be a non-empty string without surrounding space")
		case slices.Index(list, a) != i:
			e.Add(Indexed("audiences", i), "audience %q is listed twice", a)
		}
	}
}

// Algorithms checks an allow-list of signature algorithms: each one of
// AllowedAlgorithms, none listed twice.
func (e *Errors) Algorithms(list []string) {
	for i, a := range list {
		switch {
		case !slices.Contains(AllowedAlgorithms, a):
			e.Add(Indexed("algorithms", i), "algorithm %q is not accepted: use asymmetric signatures only (%s)", a, strings.Join(AllowedAlgorithms, ", "))
		case slices.Index(list, a) != i:
			e.Add(Indexed("algorithms", i), "algorithm %q is listed twice", a)
		}
	}
}

// Indexed names element i of a list option: "audiences[1]".
func Indexed(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}

// Unique is a value that no two issuers of a list may share: its option's
// Field, what the error calls it ("this name") and the issuer's Value. An
// empty Value is not compared.
type Unique struct {
	Field, What, Value string
}

// All validates every issuer of a list with check, and that no two share
// a Unique value; wrap gives each error its issuer's index (the lane's
// IssuerError). Errors come in list order, each issuer's own first, then
// those of its values an earlier issuer already uses.
func All[C any](issuers []C, check func(*C) []error, unique func(*C) []Unique, wrap func(i int, err error) error) []error {
	var errs []error
	seen := map[string]map[string]int{} // by field, then value: the first issuer's index
	for i := range issuers {
		c := &issuers[i]
		for _, err := range check(c) {
			errs = append(errs, wrap(i, err))
		}
		for _, u := range unique(c) {
			if u.Value == "" {
				continue
			}
			if seen[u.Field] == nil {
				seen[u.Field] = map[string]int{}
			}
			if j, ok := seen[u.Field][u.Value]; ok {
				errs = append(errs, wrap(i, lapse.FieldErrorf(lapse.EINVALID, u.Field, "%s is already used by issuer %d", u.What, j)))
				continue
			}
			seen[u.Field][u.Value] = i
		}
	}
	return errs
}
