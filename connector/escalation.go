package connector

import "context"

// Escalation lint (docs/configuration.md, "Escalation"). A just-in-time
// grant is only as temporary as the powers it carries: a grant that lets
// its holder create accounts, hand out roles or grants, act as another
// account, bypass the target's access control or run code as the server
// can be turned into access that outlives it, and a grant that lets its
// holder approve requests or change policy defeats the approval that made
// it. The broker asks the connectors below when a catalog is installed and
// refuses such entitlements, or serves them with the highest approval
// tier; it never lets them be requested silently.

// EscalationChecker is implemented by connectors that can tell whether a
// grant of an entitlement's spec would carry admin powers on the target:
// for example a PostgreSQL role with CREATEROLE or a member of a superuser,
// a MariaDB role with GRANT OPTION, a Redis rule such as +@admin. Each
// connector's documentation (docs/connectors/) says what it counts.
type EscalationChecker interface {
	// AdminPowers returns one line per admin power a grant of spec would
	// carry, for people and safe to log ("role app_admin has CREATEROLE",
	// "role app_read (through its membership in app_admin) holds ADMIN
	// OPTION on role app_write", "rule +@admin"), or none. spec has
	// passed ValidateSpec. It may read the target's catalog but changes
	// nothing. An error means the check could not run (the target is
	// unreachable): the broker then treats the entitlement as flagged,
	// never as clean.
	AdminPowers(ctx context.Context, spec map[string]any) ([]string, error)
}

// GroupGranter is implemented by connectors whose grants assert that
// their holder is a member of named groups, to whatever reads the
// credential: a token's groups claim. The broker flags an entitlement
// whose grant would name a group that one of the catalog's approval rules
// (or the highest approval tier) lists as approvers: its holders could
// approve requests, including requests for more of the same.
type GroupGranter interface {
	// GrantedGroups returns the group names (as an identity provider
	// would report them, without "group:") a grant of spec asserts. spec
	// has passed ValidateSpec; the call does no I/O.
	GrantedGroups(spec map[string]any) []string
}
