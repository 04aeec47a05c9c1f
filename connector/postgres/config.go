package postgres

import (
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// What Revoke does with the objects a grant's role owns (tables it created,
// default privileges it set, privileges it granted to others).
const (
	// OwnedDrop runs DROP OWNED BY in every database where the role owns or
	// holds something. It is the default: whatever a temporary principal
	// made goes with it, including the privileges it granted to others.
	OwnedDrop = "drop"
	// OwnedReassign runs REASSIGN OWNED BY … TO ReassignTo and then DROP
	// OWNED BY, so the objects survive under another owner. Privileges the
	// role granted on its own objects then stay in place with the new owner
	// as grantor (PostgreSQL rewrites them); choose it only where the data
	// must outlive the grant.
	OwnedReassign = "reassign"
)

// How Grant commits: see Config.GrantCommit.
const (
	GrantCommitAsync = "async"
	GrantCommitSync  = "sync"
)

// Defaults.
const (
	DefaultPrefix              = "lapse_"
	DefaultMaxConns            = 8
	DefaultDatabaseConns       = 2
	DefaultPreparedCredentials = 64
	DefaultTerminateWait       = 10 * time.Second
	DefaultProbeTimeout        = 5 * time.Second
	// DefaultSCRAMIterations is the PBKDF2 iteration count of the SCRAM
	// verifiers Lapse computes. The count exists to slow down guessing of a
	// low-entropy (human) password from a stolen verifier; Lapse's passwords
	// are 256 uniformly random bits, which no iteration count makes harder
	// or easier to guess in practice (2^256 guesses either way). A small
	// count keeps verifier computation at a few microseconds, so issuance
	// is bound by the server's catalog write, and every login of the
	// grantee (whose client repeats PBKDF2 with this count) stays fast.
	// docs/connectors/postgres.md has the full reasoning.
	DefaultSCRAMIterations = 32
)

// Bounds.
const (
	// MaxRoleNameLength is PostgreSQL's identifier limit (NAMEDATALEN-1).
	// Longer names are silently truncated by the server, so the connector
	// never builds one.
	MaxRoleNameLength = 63
	// MaxPrefixLength bounds Prefix so that every name the connector makes
	// fits: prefix + "e_" + 27 characters that identify the grant.
	MaxPrefixLength = 24
	// MaxSCRAMIterations bounds ScramIterations (pgx refuses more than ten
	// million; a million already costs each login seconds).
	MaxSCRAMIterations = 1_000_000
)

// Config is a PostgreSQL target's configuration (the target's `config:`
// block).
type Config struct {
	// DSN is the administrative connection, as a libpq/pgx connection
	// string ("postgres://lapse_admin@db.internal:5432/postgres?sslmode=verify-full").
	// The account must be able to create and drop roles, signal other
	// backends and drop what those roles own: a superuser, or a role with
	// CREATEROLE and pg_signal_backend that is granted each role it drops
	// (see docs/connectors/postgres.md).
	DSN lapse.SecretRef `json:"dsn" yaml:"dsn"`
	// Prefix starts every role name Lapse creates; Discover finds them by
	// it. Lower-case letters, digits and underscores, starting with a
	// letter, at most 24 characters. Default "lapse_".
	Prefix string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	// Host, Port and Database are where grantees connect, shown in Info and
	// used by Verify's login probe. Default: those of the DSN.
	Host     string `json:"host,omitempty" yaml:"host,omitempty"`
	Port     int    `json:"port,omitempty" yaml:"port,omitempty"`
	Database string `json:"database,omitempty" yaml:"database,omitempty"`
	// Databases limits the databases in which Revoke may clean up what a
	// role owns. Empty means every database that accepts connections.
	// Revoke only visits databases where the catalog (pg_shdepend) records
	// something of the role, so the list costs nothing for roles that made
	// nothing; a role that owns something in a database outside the list
	// cannot be dropped and Verify reports it.
	Databases []string `json:"databases,omitempty" yaml:"databases,omitempty"`
	// Owned says what Revoke does with objects the role owns: "drop"
	// (default) or "reassign".
	Owned string `json:"owned,omitempty" yaml:"owned,omitempty"`
	// ReassignTo is the role that receives reassigned objects when Owned is
	// "reassign". It must exist.
	ReassignTo string `json:"reassign_to,omitempty" yaml:"reassign_to,omitempty"`
	// GrantCommit is how Grant's transaction commits: "async" (default)
	// makes the new role visible at once without waiting for the WAL
	// flush (synchronous_commit = off for that transaction only), "sync"
	// waits for it. A crash of the server can lose at most the last few
	// hundred milliseconds of async grants: the failure mode is a grant
	// that stops working, never a privilege that outlives its revocation,
	// because Revoke's DROP ROLE always commits synchronously.
	GrantCommit string `json:"grant_commit,omitempty" yaml:"grant_commit,omitempty"`
	// MaxConns bounds the administrative connection pool. Default 8.
	MaxConns int `json:"max_conns,omitempty" yaml:"max_conns,omitempty"`
	// SCRAMIterations is the PBKDF2 iteration count of the verifiers Lapse
	// computes (1 to 1,000,000). Default 32; see DefaultSCRAMIterations.
	SCRAMIterations int `json:"scram_iterations,omitempty" yaml:"scram_iterations,omitempty"`
	// PreparedCredentials is how many passwords and verifiers a background
	// goroutine keeps ready, so Grant never waits for randomness or
	// hashing. Default 64.
	PreparedCredentials int `json:"prepared_credentials,omitempty" yaml:"prepared_credentials,omitempty"`
	// NoLoginProbe turns off Verify's real login attempt. The probe costs
	// the server one backend start per verification, which bounds how many
	// revocations per second a small server can prove; without it Verify
	// relies on the catalog alone (PostgreSQL only authenticates roles that
	// exist in pg_authid, and Verify checks there is none by the grant's
	// name or OID). Default false: every Verify makes the login attempt.
	NoLoginProbe bool `json:"no_login_probe,omitempty" yaml:"no_login_probe,omitempty"`
	// TerminateWait bounds how long Revoke waits for terminated sessions to
	// exit. Default 10s.
	TerminateWait lapse.Duration `json:"terminate_wait,omitempty" yaml:"terminate_wait,omitempty"`
	// ProbeTimeout bounds Verify's login attempt. Default 5s.
	ProbeTimeout lapse.Duration `json:"probe_timeout,omitempty" yaml:"probe_timeout,omitempty"`
}

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	// identRE is the allow-list for every role name that reaches a
	// statement from configuration or an entitlement spec. Quoting would
	// make any name safe, but a name that needs more than this is almost
	// certainly a mistake or an attack, and rejecting it keeps every
	// statement Lapse builds readable in the server log.
	identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
	hostRE  = regexp.MustCompile(`^[A-Za-z0-9.:\[\]_/-]+$`)
)

// withDefaults returns c with defaults filled in.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Owned == "" {
		c.Owned = OwnedDrop
	}
	if c.GrantCommit == "" {
		c.GrantCommit = GrantCommitAsync
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.SCRAMIterations == 0 {
		c.SCRAMIterations = DefaultSCRAMIterations
	}
	if c.PreparedCredentials == 0 {
		c.PreparedCredentials = DefaultPreparedCredentials
	}
	if c.TerminateWait == 0 {
		c.TerminateWait = lapse.Duration(DefaultTerminateWait)
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = lapse.Duration(DefaultProbeTimeout)
	}
	return c
}

// Validate checks the configuration without connecting. Returns EINVALID
// naming the offending field.
func (c *Config) Validate() error {
	d := c.withDefaults()
	if c.DSN.IsZero() {
		return lapse.FieldErrorf(lapse.EINVALID, "dsn", "the administrative connection string is required")
	}
	if len(d.Prefix) > MaxPrefixLength || !prefixRE.MatchString(d.Prefix) {
		return lapse.FieldErrorf(lapse.EINVALID, "prefix", "prefix must be a lower-case letter followed by at most %d lower-case letters, digits or underscores", MaxPrefixLength-1)
	}
	if d.Host != "" && (len(d.Host) > 255 || !hostRE.MatchString(d.Host)) {
		return lapse.FieldErrorf(lapse.EINVALID, "host", "host must be a host name, an IP address or a socket directory")
	}
	if d.Port < 0 || d.Port > 65535 {
		return lapse.FieldErrorf(lapse.EINVALID, "port", "port must be between 1 and 65535")
	}
	if d.Database != "" && !validDatabaseName(d.Database) {
		return lapse.FieldErrorf(lapse.EINVALID, "database", "not a valid database name")
	}
	for _, db := range d.Databases {
		if !validDatabaseName(db) {
			return lapse.FieldErrorf(lapse.EINVALID, "databases", "not a valid database name")
		}
	}
	switch d.Owned {
	case OwnedDrop:
		if d.ReassignTo != "" {
			return lapse.FieldErrorf(lapse.EINVALID, "reassign_to", "reassign_to is only used when owned is %q", OwnedReassign)
		}
	case OwnedReassign:
		if !validIdent(d.ReassignTo) {
			return lapse.FieldErrorf(lapse.EINVALID, "reassign_to", "owned %q needs reassign_to, an existing role name of letters, digits, _ and -", OwnedReassign)
		}
		if strings.HasPrefix(d.ReassignTo, d.Prefix) {
			return lapse.FieldErrorf(lapse.EINVALID, "reassign_to", "reassign_to must not be a role Lapse makes")
		}
	default:
		return lapse.FieldErrorf(lapse.EINVALID, "owned", "owned must be %q or %q", OwnedDrop, OwnedReassign)
	}
	if d.GrantCommit != GrantCommitAsync && d.GrantCommit != GrantCommitSync {
		return lapse.FieldErrorf(lapse.EINVALID, "grant_commit", "grant_commit must be %q or %q", GrantCommitAsync, GrantCommitSync)
	}
	if d.MaxConns < 1 || d.MaxConns > 1000 {
		return lapse.FieldErrorf(lapse.EINVALID, "max_conns", "max_conns must be between 1 and 1000")
	}
	if d.SCRAMIterations < 1 || d.SCRAMIterations > MaxSCRAMIterations {
		return lapse.FieldErrorf(lapse.EINVALID, "scram_iterations", "scram_iterations must be between 1 and %d", MaxSCRAMIterations)
	}
	if d.PreparedCredentials < 0 || d.PreparedCredentials > 100_000 {
		return lapse.FieldErrorf(lapse.EINVALID, "prepared_credentials", "prepared_credentials must be between 0 and 100000")
	}
	if d.TerminateWait.D() < 0 || d.ProbeTimeout.D() < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "terminate_wait", "durations must not be negative")
	}
	return nil
}

// validIdent reports whether s is a role name the connector will put into a
// statement.
func validIdent(s string) bool {
	return len(s) > 0 && len(s) <= MaxRoleNameLength && identRE.MatchString(s)
}

// validDatabaseName admits what PostgreSQL can name a database, minus
// control characters. Database names are only ever connection parameters,
// never statement text.
func validDatabaseName(s string) bool {
	if s == "" || len(s) > MaxRoleNameLength || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
