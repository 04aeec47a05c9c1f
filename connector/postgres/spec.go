package postgres

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/lapsehq/lapse"
)

// MaxRoles bounds how many entitled roles one spec may name.
const MaxRoles = 32

// Spec is an entitlement's spec for a PostgreSQL target: which existing
// group roles the grant makes its principal a member of.
//
// Ephemeral mode (no Account): Grant creates a login role with a fresh
// password that is a member of Roles.
//
//	spec:
//	  roles: [app_read]
//	  inherit: true          # default; false makes the grantee SET ROLE explicitly
//	  connection_limit: 5    # optional
//
// Elevation mode (Account set): Grant gives the existing Account temporary
// membership in Roles, through a per-grant role, and hands out no password.
//
//	spec:
//	  account: app_service
//	  roles: [app_write]
//
// In both modes Grant refuses entitled roles through which the principal
// could pass privileges on beyond the grant (grant options, ownership,
// ADMIN OPTION, CREATEROLE, SUPERUSER: see grantoption.go), unless
// accept_grant_option_risk is true.
type Spec struct {
	// Roles are the entitled group roles. They must exist on the server.
	Roles []string `json:"roles"`
	// Account, when set, selects elevation mode: the existing role that
	// receives the temporary membership.
	Account string `json:"account,omitempty"`
	// Inherit says whether the ephemeral role uses the privileges of Roles
	// without SET ROLE (ephemeral mode only). Default true.
	Inherit *bool `json:"inherit,omitempty"`
	// ConnectionLimit caps concurrent sessions of the ephemeral role
	// (ephemeral mode only). Default: no limit.
	ConnectionLimit *int `json:"connection_limit,omitempty"`
	// AcceptGrantOptionRisk lets Grant proceed although an entitled role
	// (or a role it is a member of) holds a grant option, owns objects,
	// holds ADMIN OPTION or has CREATEROLE or SUPERUSER: a privilege the
	// principal passes on with it is recorded with that role as grantor
	// and survives Revoke. The risk is then named in the grant's Info and
	// in Discover.
	AcceptGrantOptionRisk bool `json:"accept_grant_option_risk,omitempty"`
}

// elevation reports whether the spec selects elevation mode.
func (s *Spec) elevation() bool { return s.Account != "" }

// inherit reports the effective INHERIT attribute.
func (s *Spec) inherit() bool { return s.Inherit == nil || *s.Inherit }

// parseSpec decodes and validates an entitlement spec. Every identifier is
// checked against the allow-list here, before any statement is built.
// Returns EINVALID naming the offending field.
func parseSpec(m map[string]any, prefix string) (*Spec, error) {
	if m == nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec is required")
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec cannot be encoded")
	}
	// Invalid UTF-8 in a string becomes U+FFFD when encoded; refuse it
	// explicitly so the error names the cause rather than the pattern.
	if bytes.Contains(raw, []byte(`\ufffd`)) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec contains invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec", "spec must have roles (a list of role names), and optionally account, inherit, connection_limit, accept_grant_option_risk")
	}
	if err := s.validate(prefix); err != nil {
		return nil, err
	}
	return &s, nil
}

func (s *Spec) validate(prefix string) error {
	if len(s.Roles) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.roles", "at least one entitled role is required")
	}
	if len(s.Roles) > MaxRoles {
		return lapse.FieldErrorf(lapse.ETOOLARGE, "spec.roles", "at most %d roles", MaxRoles)
	}
	seen := make(map[string]bool, len(s.Roles))
	for _, r := range s.Roles {
		if err := checkRoleName("spec.roles", r, prefix); err != nil {
			return err
		}
		if seen[r] {
			return lapse.FieldErrorf(lapse.EINVALID, "spec.roles", "role %s is listed twice", r)
		}
		seen[r] = true
	}
	if s.Account != "" {
		if err := checkRoleName("spec.account", s.Account, prefix); err != nil {
			return err
		}
		if seen[s.Account] {
			return lapse.FieldErrorf(lapse.EINVALID, "spec.account", "the account cannot also be an entitled role")
		}
		if s.Inherit != nil {
			return lapse.FieldErrorf(lapse.EINVALID, "spec.inherit", "inherit applies to ephemeral roles; in elevation mode the account's own INHERIT attribute decides")
		}
		if s.ConnectionLimit != nil {
			return lapse.FieldErrorf(lapse.EINVALID, "spec.connection_limit", "connection_limit applies to ephemeral roles only")
		}
	}
	if s.ConnectionLimit != nil && (*s.ConnectionLimit < 1 || *s.ConnectionLimit > 10_000) {
		return lapse.FieldErrorf(lapse.EINVALID, "spec.connection_limit", "connection_limit must be between 1 and 10000")
	}
	return nil
}

// checkRoleName validates one role name from a spec or State.
func checkRoleName(field, name, prefix string) error {
	if !validIdent(name) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "role names are 1 to %d letters, digits, _ or -, starting with a letter or _", MaxRoleNameLength)
	}
	if strings.HasPrefix(name, prefix) {
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is a name Lapse makes for grants, not an entitled role or account", name)
	}
	switch strings.ToLower(name) {
	case "public", "current_role", "current_user", "session_user", "none", "all":
		// Reserved words that GRANT and ALTER ROLE read as pseudo-roles
		// even when quoted in some positions.
		return lapse.FieldErrorf(lapse.EINVALID, field, "%s is a reserved role name", name)
	}
	return nil
}
