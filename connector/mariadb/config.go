package mariadb

import (
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
)

// Definer policies: what Revoke does with views, routines, triggers and
// events whose DEFINER is the grant's user.
const (
	// DefinerDrop drops them. It is the default: the objects were made by a
	// temporary principal and, with their definer gone, a SQL SECURITY
	// DEFINER object can only fail when used.
	DefinerDrop = "drop"
	// DefinerReassign re-creates them with DefinerReassignTo as definer, so
	// they keep working. That account must be locked and must hold no more
	// than the objects need: every SQL SECURITY DEFINER object then runs
	// with its privileges.
	DefinerReassign = "reassign"
	// DefinerKeep leaves them, and Revoke and Verify only report them.
	DefinerKeep = "keep"
)

// Defaults.
const (
	DefaultPrefix       = "lapse_"
	DefaultAccountHost  = "%"
	DefaultMaxOpenConns = 8
	DefaultKillWait     = 10 * time.Second
	DefaultProbeTimeout = 5 * time.Second
)

// MaxPrefixLength bounds Prefix so that every user name fits in 32
// characters (MySQL 8 and most MySQL-family tools; MariaDB allows 80): the
// prefix plus the 26 characters that identify the grant.
const MaxPrefixLength = 6

// MaxUserLength is the longest user name the connector ever creates.
const MaxUserLength = 32

// Config is a MariaDB target's configuration (the target's `config:` block).
type Config struct {
	// DSN is the administrative connection in go-sql-driver/mysql form
	// ("user:password@tcp(host:3306)/?tls=true"). The account needs CREATE
	// USER, PROCESS, CONNECTION ADMIN (or SUPER), SELECT on the mysql schema,
	// and the privileges it hands out WITH GRANT OPTION (or the roles WITH
	// ADMIN OPTION).
	DSN lapse.SecretRef `json:"dsn" yaml:"dsn"`
	// Prefix starts every user name Lapse creates; Discover finds them by it.
	// Lower-case letters, digits and underscores, at most 6 characters.
	// Default "lapse_".
	Prefix string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	// AccountHost is the host part of every account created ("%",
	// "10.0.%", "192.168.1.0/255.255.255.0", "app.example.com").
	// Default "%".
	AccountHost string `json:"account_host,omitempty" yaml:"account_host,omitempty"`
	// Address is where grantees connect (host:port), shown in Info and used
	// by Verify's login probe. Default: the DSN's address.
	Address string `json:"address,omitempty" yaml:"address,omitempty"`
	// Definers is what Revoke does with objects whose DEFINER is the grant's
	// user: "drop" (default), "reassign" or "keep".
	Definers string `json:"definers,omitempty" yaml:"definers,omitempty"`
	// DefinerReassignTo is the account ("user@host") that becomes the
	// definer when Definers is "reassign". It must exist.
	DefinerReassignTo string `json:"definer_reassign_to,omitempty" yaml:"definer_reassign_to,omitempty"`
	// ExpiryEventSchema, when set, makes Grant create an event in this
	// schema that locks the account, kills its connections and drops it at
	// the grant's deadline: expiry enforced by the server itself if the
	// broker is down. It needs event_scheduler=ON to fire; the schema must
	// exist.
	ExpiryEventSchema string `json:"expiry_event_schema,omitempty" yaml:"expiry_event_schema,omitempty"`
	// MaxOpenConns bounds the administrative connection pool. Default 8.
	MaxOpenConns int `json:"max_open_conns,omitempty" yaml:"max_open_conns,omitempty"`
	// KillWait bounds how long Revoke waits for killed connections to leave
	// the process list. Default 10s.
	KillWait lapse.Duration `json:"kill_wait,omitempty" yaml:"kill_wait,omitempty"`
	// ProbeTimeout bounds Verify's login attempt. Default 5s.
	ProbeTimeout lapse.Duration `json:"probe_timeout,omitempty" yaml:"probe_timeout,omitempty"`
	// UnsafeSkipSessionKill makes the connector behave like a broker that
	// trusts DROP USER: Revoke does not kill the user's connections, and
	// grants have no sessions checkpoint, so Verify does not look for
	// them. A session opened during the grant then keeps working after a
	// "verified" revocation. It exists only so that `lapse zsp test` can
	// be shown to catch what a weakened verification misses
	// (docs/zsp.md); never set it on a real target. Default false; the
	// connector logs an error at start and a warning at every Revoke
	// while it is set.
	UnsafeSkipSessionKill bool `json:"unsafe_skip_session_kill,omitempty" yaml:"unsafe_skip_session_kill,omitempty"`
}

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,5}$`)
	// hostRE admits host names, IPv4/IPv6 literals, netmasks and the
	// MariaDB host wildcards % and _. Quotes, backticks, spaces and
	// anything else that could end a quoted account name are excluded.
	hostRE    = regexp.MustCompile(`^[A-Za-z0-9.:%_/-]{1,60}$`)
	accountRE = regexp.MustCompile(`^([A-Za-z0-9_]{1,80})@([A-Za-z0-9.:%_/-]{1,60})$`)
	addressRE = regexp.MustCompile(`^[A-Za-z0-9.:\[\]_-]{1,255}$`)
)

// withDefaults returns c with defaults filled in.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.AccountHost == "" {
		c.AccountHost = DefaultAccountHost
	}
	if c.Definers == "" {
		c.Definers = DefinerDrop
	}
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = DefaultMaxOpenConns
	}
	if c.KillWait == 0 {
		c.KillWait = lapse.Duration(DefaultKillWait)
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
		return lapse.FieldErrorf(lapse.EINVALID, "dsn", "dsn is required")
	}
	if !prefixRE.MatchString(d.Prefix) {
		return lapse.FieldErrorf(lapse.EINVALID, "prefix", "prefix must be 1 to %d lower-case letters, digits or underscores, starting with a letter", MaxPrefixLength)
	}
	if !hostRE.MatchString(d.AccountHost) {
		return lapse.FieldErrorf(lapse.EINVALID, "account_host", "account_host must be a host name, an address, a netmask or a %%-pattern")
	}
	if d.Address != "" && !addressRE.MatchString(d.Address) {
		return lapse.FieldErrorf(lapse.EINVALID, "address", "address must be host:port")
	}
	switch d.Definers {
	case DefinerDrop, DefinerKeep:
		if d.DefinerReassignTo != "" {
			return lapse.FieldErrorf(lapse.EINVALID, "definer_reassign_to", "definer_reassign_to is only used with definers: reassign")
		}
	case DefinerReassign:
		m := accountRE.FindStringSubmatch(d.DefinerReassignTo)
		if m == nil {
			return lapse.FieldErrorf(lapse.EINVALID, "definer_reassign_to", "definer_reassign_to must be an existing account user@host")
		}
		if strings.HasPrefix(m[1], d.Prefix) {
			return lapse.FieldErrorf(lapse.EINVALID, "definer_reassign_to", "definer_reassign_to must not start with the prefix of ephemeral users")
		}
	default:
		return lapse.FieldErrorf(lapse.EINVALID, "definers", "definers must be drop, reassign or keep")
	}
	if d.ExpiryEventSchema != "" && !identRE.MatchString(d.ExpiryEventSchema) {
		return lapse.FieldErrorf(lapse.EINVALID, "expiry_event_schema", "expiry_event_schema must be a plain schema name")
	}
	if d.MaxOpenConns < 1 || d.MaxOpenConns > 1000 {
		return lapse.FieldErrorf(lapse.EINVALID, "max_open_conns", "max_open_conns must be between 1 and 1000")
	}
	if d.KillWait.D() < 0 || d.KillWait.D() > 10*time.Minute {
		return lapse.FieldErrorf(lapse.EINVALID, "kill_wait", "kill_wait must be between 0 and 10m")
	}
	if d.ProbeTimeout.D() < 0 || d.ProbeTimeout.D() > time.Minute {
		return lapse.FieldErrorf(lapse.EINVALID, "probe_timeout", "probe_timeout must be between 0 and 1m")
	}
	if c.DSN.Value != "" {
		// An inline DSN can be checked now; a file or environment one is
		// checked when it is resolved in New.
		if _, err := parseDSN(c.DSN.Value); err != nil {
			return err
		}
	}
	return nil
}

// parseDSN parses an administrative DSN. Its errors never repeat the DSN,
// which holds a password.
func parseDSN(dsn string) (*mysql.Config, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "dsn", "dsn is not a valid go-sql-driver/mysql DSN")
	}
	if cfg.MultiStatements {
		// Every statement this connector sends is one statement; refusing
		// multiStatements removes a whole class of injection.
		return nil, lapse.FieldErrorf(lapse.EINVALID, "dsn", "dsn must not enable multiStatements")
	}
	return cfg, nil
}
