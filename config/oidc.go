package config

import (
	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/oidc"
)

// OIDC configures human sign-in with OpenID Connect (docs/oidc.md): the
// identity providers whose ID tokens Lapse accepts as bearer credentials.
// Paths in the issuers are absolute.
type OIDC struct {
	Issuers []oidc.IssuerConfig
}

type rawOIDC struct {
	Issuers []rawOIDCIssuer `yaml:"issuers"`
}

type rawOIDCIssuer struct {
	Name         string          `yaml:"name"`
	Issuer       string          `yaml:"issuer"`
	Audiences    []string        `yaml:"audiences"`
	Algorithms   []string        `yaml:"algorithms"`
	ClockSkew    *lapse.Duration `yaml:"clock_skew"`
	MaxAge       *lapse.Duration `yaml:"max_age"`
	CAFile       string          `yaml:"ca_file"`
	IDClaim      string          `yaml:"id_claim"`
	IDPrefix     string          `yaml:"id_prefix"`
	GroupsClaim  string          `yaml:"groups_claim"`
	GroupsPrefix string          `yaml:"groups_prefix"`
	// Scopes is a pointer so that "scopes: []" (none) differs from no
	// scopes key (the defaults).
	Scopes     *[]string          `yaml:"scopes"`
	ScopeRules []rawOIDCScopeRule `yaml:"scope_rules"`
}

type rawOIDCScopeRule struct {
	Group  string   `yaml:"group"`
	Scopes []string `yaml:"scopes"`
}

// oidc validates the identity providers and resolves their relative paths.
func (v *validator) oidc(r *rawOIDC, rel func(string) string) OIDC {
	var o OIDC
	for _, ri := range r.Issuers {
		c := oidc.IssuerConfig{
			Name:         ri.Name,
			Issuer:       ri.Issuer,
			Audiences:    ri.Audiences,
			Algorithms:   ri.Algorithms,
			CAFile:       rel(ri.CAFile),
			IDClaim:      ri.IDClaim,
			IDPrefix:     ri.IDPrefix,
			GroupsClaim:  ri.GroupsClaim,
			GroupsPrefix: ri.GroupsPrefix,
		}
		if ri.ClockSkew != nil {
			c.ClockSkew = ri.ClockSkew.D()
		}
		if ri.MaxAge != nil {
			c.MaxAge = ri.MaxAge.D()
		}
		if ri.Scopes != nil {
			c.Scopes = append([]string{}, *ri.Scopes...)
		}
		for _, rr := range ri.ScopeRules {
			c.ScopeRules = append(c.ScopeRules, oidc.ScopeRule{Group: rr.Group, Scopes: rr.Scopes})
		}
		o.Issuers = append(o.Issuers, c)
	}
	for _, err := range oidc.ValidateAll(o.Issuers) {
		v.errs = append(v.errs, oidcIssuers.at(v.file, v.root, err))
	}
	return o
}

// oidcIssuers positions the errors of the OIDC verifier's issuers.
var oidcIssuers = issuerList[*oidc.IssuerError]{"oidc", func(ie *oidc.IssuerError) (int, error) { return ie.Index, ie.Err }}

// OIDCError positions an error of building the OIDC verifier (a CA file
// that cannot be read) at the issuer's field.
func (c *Config) OIDCError(err error) error { return oidcIssuers.positioned(c, err) }
