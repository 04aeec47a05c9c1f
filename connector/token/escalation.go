package token

import (
	"context"
	"net/url"
	"strings"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Escalation (connector.EscalationChecker, connector.GroupGranter). A
// token's powers are whatever its audience makes of its scopes and claims;
// the connector cannot know that of an arbitrary API. It knows it for one
// audience: Lapse itself. When the audience is this Lapse server (an
// absolute URL with the issuer's scheme, host and port), scopes with the
// names of Lapse's own credential scopes that approve requests, revoke
// grants or administer Lapse (approve, revoke, admin, optionally written
// lapse:approve) are admin powers. For any other audience scopes are the
// API's business and are not flagged.
//
// The groups claim is different: it is how identity providers and
// workload mappings tell a consumer whom to treat as a member of a group,
// and group names are shared across the systems of one organisation. A
// token that asserts membership in a group is reported (GrantedGroups)
// whatever its audience, and the broker flags it when that group approves
// requests.

// lapseAdminScopes are Lapse's credential scopes that decide or undo
// other principals' access.
var lapseAdminScopes = map[string]bool{
	lapse.ScopeApprove: true, lapse.ScopeRevoke: true, lapse.ScopeAdmin: true,
}

// groupsClaim is the claim that carries group memberships (OIDC, and the
// workload mappings of docs/machine-lane.md).
const groupsClaim = "groups"

// forLapse reports whether the target's audience is this Lapse server.
func (c *Conn) forLapse() bool {
	a, err := url.Parse(c.audience)
	if err != nil || a.Host == "" {
		return false
	}
	i, err := url.Parse(c.issuer)
	if err != nil {
		return false
	}
	return strings.EqualFold(a.Scheme, i.Scheme) && strings.EqualFold(a.Host, i.Host)
}

// AdminPowers implements connector.EscalationChecker (see above). It does
// no I/O; it returns EINVALID for a bad spec.
func (c *Conn) AdminPowers(_ context.Context, spec map[string]any) ([]string, error) {
	s, err := parseSpec(spec)
	if err != nil {
		return nil, err
	}
	if !c.forLapse() {
		return nil, nil
	}
	var out []string
	for _, sc := range s.Scopes {
		name := strings.ToLower(sc)
		name = strings.TrimPrefix(strings.TrimPrefix(name, "lapse:"), "lapse.")
		if lapseAdminScopes[name] {
			out = append(out, "scope "+sc+" on a token for Lapse's own API ("+c.audience+"): it would "+scopeWhat(name))
		}
	}
	return out, nil
}

func scopeWhat(scope string) string {
	switch scope {
	case lapse.ScopeApprove:
		return "approve and deny requests"
	case lapse.ScopeRevoke:
		return "revoke any grant"
	}
	return "administer Lapse, its API keys included"
}

// GrantedGroups implements connector.GroupGranter: the values of the
// spec's groups claim (a string or a list of strings).
func (c *Conn) GrantedGroups(spec map[string]any) []string {
	s, err := parseSpec(spec)
	if err != nil {
		return nil
	}
	switch v := s.Claims[groupsClaim].(type) {
	case string:
		return []string{v}
	case []string:
		return v
	}
	return nil
}

var (
	_ connector.EscalationChecker = (*Conn)(nil)
	_ connector.GroupGranter      = (*Conn)(nil)
)
