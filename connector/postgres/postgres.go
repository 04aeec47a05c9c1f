// Package postgres is the PostgreSQL connector: ephemeral login roles with a
// SCRAM verifier computed by Lapse (the password never reaches the server),
// or temporary, reference-counted membership for an existing account; and a
// revocation that ends every session of the role, removes what it owned or
// granted in every database, drops it, and proves all of that with a
// read-only check and a real login attempt.
//
// docs/connectors/postgres.md describes the configuration, the spec and the
// exact statements.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/internal/batch"
)

// Batching bounds: the most grants one set of statements handles, and how
// long one batch may take on top of waiting for sessions to end.
const (
	maxBatch     = 200
	batchTimeout = time.Minute
)

// Checkpoint names. Both modes use the same two, so Verify can report them
// even when it cannot tell which mode a grant used.
const (
	CheckpointRole     = "role"
	CheckpointSessions = "sessions"
)

// Modes recorded in State.
const (
	modeEphemeral = "ephemeral"
	modeElevation = "elevation"
)

// SQLSTATE codes the connector acts on.
const (
	sqlstateDuplicateObject    = "42710"
	sqlstateUndefinedObject    = "42704"
	sqlstateDependentObjects   = "2BP01"
	sqlstateInvalidAuthPrefix  = "28" // invalid_authorization_specification, invalid_password
	sqlstateInsufficientPriv   = "42501"
	sqlstateInvalidParamValue  = "22023"
	sqlstateObjectInUse        = "55006"
	sqlstateTooManyConnections = "53300"
)

// Conn is a connector to one PostgreSQL cluster.
type Conn struct {
	cfg    Config
	clock  lapse.Clock
	logger *slog.Logger

	pool       *pgxpool.Pool
	poolConfig *pgxpool.Config // template of the per-database pools
	// adminUser is the administrative session user; elevation of it is
	// refused (Revoke would terminate the connector's own sessions).
	adminUser string
	// probeBase is the connection configuration of login probes: the
	// admin's address and TLS settings, nothing of its identity.
	probeBase *pgconn.Config
	host      string
	port      int
	database  string
	// paramACL is whether the server has pg_parameter_acl (PostgreSQL 15
	// and later), whose grant options the grant-option check reads.
	paramACL bool

	creds    *preparer
	revokes  *batch.Batcher[*revokeItem]
	verifies *batch.Batcher[*verifyItem]

	mu      sync.Mutex
	dbPools map[string]*pgxpool.Pool // per-database pools for cleanup, opened on demand
	closed  bool

	// riskMu guards riskChecks: recent grant-option checks by set of
	// entitled roles (see checkGrantOptions).
	riskMu     sync.Mutex
	renewals   sync.WaitGroup // background renewals of risk checks
	riskChecks map[string]*riskCheck

	// skip names a revoke step to leave out; set only by tests (export_test.go)
	// to prove that Verify catches an incomplete revocation.
	skip string
}

// Open opens a PostgreSQL connector from its configuration block. It
// matches connector.Factory.
func Open(env connector.Env, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := New(ctx, cfg, env)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return c, nil
}

// New validates cfg, connects to the server and starts preparing
// credentials. Returns EINVALID for a bad configuration and EUNAVAILABLE if
// the server cannot be reached.
func New(ctx context.Context, cfg Config, env connector.Env) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	dsn, err := cfg.DSN.Resolve()
	if err != nil {
		return nil, &lapse.Error{Code: lapse.EINVALID, Field: "dsn", Message: "cannot read the connection string", Err: err}
	}
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote the string, password included.
		return nil, lapse.FieldErrorf(lapse.EINVALID, "dsn", "not a valid PostgreSQL connection string")
	}
	pcfg.MaxConns = int32(cfg.MaxConns)
	// The connector's prepared statements are catalog lookups whose
	// parameters are arrays of a few names or OIDs. PostgreSQL plans such a
	// statement anew at each execution while it estimates that a plan for
	// the arrays at hand is cheaper than a generic one, and the planning
	// then costs about as much as the execution (1.4 ms against 1.6 ms per
	// Verify batch in a wave of 1,000 revocations). A generic plan serves
	// every execution: the lookups use the same indexes whatever the arrays
	// hold. A DSN that sets plan_cache_mode itself keeps its setting.
	if _, set := pcfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		pcfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	}
	c := &Conn{
		cfg:        cfg,
		clock:      env.Clock,
		logger:     env.Logger,
		dbPools:    make(map[string]*pgxpool.Pool),
		riskChecks: make(map[string]*riskCheck),
		host:       cfg.Host,
		port:       cfg.Port,
		database:   cfg.Database,
	}
	if c.clock == nil {
		c.clock = lapse.SystemClock{}
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	cc := pcfg.ConnConfig
	if c.host == "" {
		c.host = cc.Host
	}
	if c.port == 0 {
		c.port = int(cc.Port)
	}
	if c.database == "" {
		c.database = cc.Database
	}
	probe := cc.Config.Copy()
	probe.User, probe.Password, probe.Database = "", "", c.database
	probe.Host, probe.Port = c.host, uint16(c.port)
	// Runtime parameters of the admin DSN (log settings, roles) are not
	// the grantee's: a non-superuser login would be refused for them and
	// the probe would misread that as "login rejected".
	probe.RuntimeParams = map[string]string{"application_name": "lapse-verify"}
	probe.ConnectTimeout = cfg.ProbeTimeout.D()
	probe.ValidateConnect, probe.AfterConnect = nil, nil
	if cfg.Host != "" && cfg.Host != cc.Host {
		probe.Fallbacks = nil
		if probe.TLSConfig != nil {
			probe.TLSConfig = probe.TLSConfig.Clone()
			probe.TLSConfig.ServerName = cfg.Host
		}
	}
	c.probeBase = probe
	c.poolConfig = pcfg

	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot connect to the PostgreSQL target", Err: fmt.Errorf("postgres: open pool: %w", err)}
	}
	if err := pool.QueryRow(ctx, "SELECT current_user, to_regclass('pg_catalog.pg_parameter_acl') IS NOT NULL").Scan(&c.adminUser, &c.paramACL); err != nil {
		pool.Close()
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot connect to the PostgreSQL target", Err: fmt.Errorf("postgres: connect: %w", err)}
	}
	if cfg.Owned == OwnedReassign {
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", cfg.ReassignTo).Scan(&ok); err != nil {
			pool.Close()
			return nil, dbError("check reassign_to role", err)
		}
		if !ok {
			pool.Close()
			return nil, lapse.FieldErrorf(lapse.EINVALID, "reassign_to", "role %s does not exist", cfg.ReassignTo)
		}
	}
	c.pool = pool
	c.creds = newPreparer(cfg.SCRAMIterations, cfg.PreparedCredentials)
	// A quarter of the pool per kind of batch: two leaders by default,
	// each turning whatever is pending into one set of statements.
	leaders := max(1, cfg.MaxConns/4)
	c.revokes = &batch.Batcher[*revokeItem]{MaxRunning: leaders, MaxBatch: maxBatch, Timeout: cfg.TerminateWait.D() + batchTimeout, Run: c.revokeBatch}
	c.verifies = &batch.Batcher[*verifyItem]{MaxRunning: leaders, MaxBatch: maxBatch, Timeout: batchTimeout, Run: c.verifyBatch}
	return c, nil
}

// Close stops credential preparation and closes every pool.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	pools := c.dbPools
	c.dbPools = nil
	c.mu.Unlock()
	c.creds.close()
	c.renewals.Wait()
	for _, p := range pools {
		p.Close()
	}
	c.pool.Close()
	return nil
}

// ValidateSpec checks an entitlement spec, and then looks at the server for
// grant options, ownership, ADMIN OPTION, CREATEROLE or SUPERUSER of its
// entitled roles (see checkGrantOptions) that the spec does not accept.
// Returns EINVALID naming the offending field. If the server cannot be asked, the spec is
// accepted with a warning in the log: Grant repeats the check and fails
// closed, and loading the catalog must not depend on the target being up.
func (c *Conn) ValidateSpec(spec map[string]any) error {
	s, err := parseSpec(spec, c.cfg.Prefix)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), validateTimeout)
	defer cancel()
	accepted, err := c.checkGrantOptions(ctx, s, true)
	switch {
	case lapse.ErrorCode(err) == lapse.EINVALID:
		return err
	case err != nil:
		c.logger.Warn("postgres: cannot check the entitled roles for grant options now; every Grant checks again", "roles", strings.Join(s.Roles, ","), "err", err)
	case accepted != "":
		c.logger.Warn("postgres: the spec accepts grant-option risks of its entitled roles", "roles", strings.Join(s.Roles, ","), "risks", accepted)
	}
	return nil
}

// state is the connector's State: everything Revoke and Verify may want
// beyond what the grant ID gives, and nothing secret.
type state struct {
	V       int      `json:"v"`
	Mode    string   `json:"mode"`
	Role    string   `json:"role"`
	OID     uint32   `json:"oid,omitempty"`
	Account string   `json:"account,omitempty"`
	Roles   []string `json:"roles,omitempty"`
}

// parseState decodes and checks a State handed back by the broker. The
// role name must be the one derived from the grant ID; every other name
// passes the same allow-list as a spec. A nil State gives a nil result.
func (c *Conn) parseState(raw json.RawMessage, login, elevation string) (*state, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var st state
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "state", "not a PostgreSQL connector state")
	}
	switch {
	case st.Mode == modeEphemeral && st.Role == login:
	case st.Mode == modeElevation && st.Role == elevation:
	default:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "state", "state does not belong to this grant")
	}
	if st.Account != "" {
		if err := checkRoleName("state.account", st.Account, c.cfg.Prefix); err != nil {
			return nil, err
		}
	}
	for _, r := range st.Roles {
		if err := checkRoleName("state.roles", r, c.cfg.Prefix); err != nil {
			return nil, err
		}
	}
	return &st, nil
}

// Grant creates the grant's role. Calling it again for the same grant
// re-issues the credential of the same role (a fresh password replaces the
// one that was never delivered) instead of creating a second one.
// Returns EINVALID for a bad spec, grant ID or deadline, an entitled role
// or account that does not exist, or entitled roles through which the
// grantee could pass privileges on beyond the grant (checkGrantOptions)
// when the spec does not accept that risk; EUNAVAILABLE if the server
// cannot be reached. An accepted risk is named in Info
// ("grant_option_risk").
func (c *Conn) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	login, elev, err := roleNames(c.cfg.Prefix, req.GrantID)
	if err != nil {
		return nil, err
	}
	spec, err := parseSpec(req.Spec, c.cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if req.ExpiresAt.IsZero() {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_at", "a grant needs a deadline")
	}
	// Checked for every Grant, not only when the catalog is loaded: a
	// grant option given to an entitled role since then counts as well.
	risk, err := c.checkGrantOptions(ctx, spec, false)
	if err != nil {
		return nil, err
	}
	var resp *connector.GrantResponse
	if spec.elevation() {
		resp, err = c.grantElevation(ctx, req, spec, elev)
	} else {
		resp, err = c.grantEphemeral(ctx, req, spec, login)
	}
	if err == nil && risk != "" {
		resp.Info["grant_option_risk"] = risk
		c.logger.Warn("postgres: granted with an accepted grant-option risk", "grant_id", req.GrantID, "risks", risk)
	}
	return resp, err
}

func (c *Conn) grantEphemeral(ctx context.Context, req *connector.GrantRequest, spec *Spec, role string) (*connector.GrantResponse, error) {
	cred, err := c.creds.get()
	if err != nil {
		return nil, lapse.Internal("postgres: prepare credential", err)
	}
	validUntil := req.ExpiresAt.UTC()
	attrs, err := roleAttributes(spec, cred.verifier, validUntil)
	if err != nil {
		return nil, err
	}
	name := quoteIdent(role)
	groups := quoteIdents(spec.Roles)
	// One round trip: the statements and the read of the new role's OID run
	// in one implicit transaction (simple protocol, no parameters: utility
	// statements take none, and every part was validated and quoted above).
	create := c.commitMode() + "CREATE ROLE " + name + " " + attrs + " IN ROLE " + groups + ";\n" + selectOID(role)
	oid, err := c.execOID(ctx, create)
	if pgCode(err) == sqlstateDuplicateObject {
		// A repeated Grant (the broker crashed before it stored the first
		// response): same role, fresh password, the spec's memberships.
		again := c.commitMode() + "ALTER ROLE " + name + " " + attrs + ";\nGRANT " + groups + " TO " + name + ";\n" + selectOID(role)
		oid, err = c.execOID(ctx, again)
	}
	if err != nil {
		return nil, grantError("create role "+role, err)
	}
	st := state{V: 1, Mode: modeEphemeral, Role: role, OID: oid, Roles: spec.Roles}
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, lapse.Internal("postgres: encode state", err)
	}
	info := map[string]string{
		"user":        role,
		"host":        c.host,
		"port":        strconv.Itoa(c.port),
		"database":    c.database,
		"roles":       strings.Join(spec.Roles, ","),
		"valid_until": validUntil.Format(time.RFC3339),
	}
	secret := map[string]string{"password": cred.password}
	if u := c.url(role, cred.password); u != "" {
		secret["url"] = u
	}
	c.logger.Info("postgres: granted", "role", role, "grant_id", req.GrantID)
	return &connector.GrantResponse{
		Secret: secret,
		Info:   info,
		State:  raw,
		Checkpoints: []connector.CheckpointSpec{
			{Name: CheckpointRole, Kind: lapse.CheckpointTarget},
			{Name: CheckpointSessions, Kind: lapse.CheckpointSessions},
		},
		Probe: map[string]string{"password": cred.password},
	}, nil
}

func (c *Conn) grantElevation(ctx context.Context, req *connector.GrantRequest, spec *Spec, role string) (*connector.GrantResponse, error) {
	if spec.Account == c.adminUser {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.account", "the connector's own account cannot be elevated")
	}
	name, account, groups := quoteIdent(role), quoteIdent(spec.Account), quoteIdents(spec.Roles)
	// The per-grant role carries the membership; the account is a member of
	// it. Dropping it removes exactly this grant's path and leaves any other
	// grant's per-grant role, and so its membership, in place: that is the
	// reference count, kept by the server's catalog.
	create := c.commitMode() + "CREATE ROLE " + name + " NOLOGIN INHERIT IN ROLE " + groups + ";\nGRANT " + name + " TO " + account + ";\n" + selectOID(role)
	oid, err := c.execOID(ctx, create)
	if pgCode(err) == sqlstateDuplicateObject {
		again := c.commitMode() + "GRANT " + groups + " TO " + name + ";\nGRANT " + name + " TO " + account + ";\n" + selectOID(role)
		oid, err = c.execOID(ctx, again)
	}
	if err != nil {
		return nil, grantError("create elevation role "+role, err)
	}
	st := state{V: 1, Mode: modeElevation, Role: role, OID: oid, Account: spec.Account, Roles: spec.Roles}
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, lapse.Internal("postgres: encode state", err)
	}
	c.logger.Info("postgres: elevated", "role", role, "account", spec.Account, "grant_id", req.GrantID)
	return &connector.GrantResponse{
		Info: map[string]string{
			"account":  spec.Account,
			"role":     role,
			"roles":    strings.Join(spec.Roles, ","),
			"host":     c.host,
			"port":     strconv.Itoa(c.port),
			"database": c.database,
		},
		State: raw,
		Checkpoints: []connector.CheckpointSpec{
			{Name: CheckpointRole, Kind: lapse.CheckpointTarget},
			{Name: CheckpointSessions, Kind: lapse.CheckpointSessions},
		},
	}, nil
}

// roleAttributes builds the attribute list of an ephemeral role. The
// verifier and the deadline are the only literals; both are checked against
// a strict character set before quoting.
func roleAttributes(spec *Spec, verifier string, validUntil time.Time) (string, error) {
	pw, err := quoteLiteral(verifier)
	if err != nil {
		return "", lapse.Internal("postgres: quote verifier", err)
	}
	until, err := quoteLiteral(validUntil.Format("2006-01-02 15:04:05.999999") + "+00")
	if err != nil {
		return "", lapse.Internal("postgres: quote deadline", err)
	}
	var b strings.Builder
	b.WriteString("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS ")
	if spec.inherit() {
		b.WriteString("INHERIT")
	} else {
		b.WriteString("NOINHERIT")
	}
	if spec.ConnectionLimit != nil {
		b.WriteString(" CONNECTION LIMIT " + strconv.Itoa(*spec.ConnectionLimit))
	} else {
		b.WriteString(" CONNECTION LIMIT -1")
	}
	b.WriteString(" PASSWORD " + pw + " VALID UNTIL " + until)
	return b.String(), nil
}

// url returns a connection URL for the grantee, or "" when the host is a
// socket directory.
func (c *Conn) url(user, password string) string {
	if c.host == "" || strings.HasPrefix(c.host, "/") {
		return ""
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(user, password),
		Host:   net.JoinHostPort(c.host, strconv.Itoa(c.port)),
		Path:   "/" + c.database,
	}
	return u.String()
}

// execOID runs a multi-statement script over the simple protocol and
// returns the OID that its SELECT read.
func (c *Conn) execOID(ctx context.Context, script string) (uint32, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	results, err := conn.Conn().PgConn().Exec(ctx, script).ReadAll()
	if err != nil {
		return 0, err
	}
	for _, r := range results {
		if r.Err != nil {
			return 0, r.Err
		}
		if len(r.Rows) == 1 && len(r.Rows[0]) == 1 {
			v, err := strconv.ParseUint(string(r.Rows[0][0]), 10, 32)
			if err != nil {
				return 0, fmt.Errorf("read role oid: %w", err)
			}
			return uint32(v), nil
		}
	}
	return 0, errors.New("role oid not returned")
}

// commitMode starts a grant script. The statements of one simple-protocol
// query run as one implicit transaction (all or nothing, and an error
// leaves the session idle rather than in an aborted block), so SET LOCAL
// applies to exactly that transaction.
func (c *Conn) commitMode() string {
	if c.cfg.GrantCommit == GrantCommitSync {
		return ""
	}
	return "SET LOCAL synchronous_commit = off;\n"
}

// selectOID reads a role's OID; name is a validated role name.
func selectOID(name string) string {
	lit, _ := quoteLiteral(name) // role names pass the literal allow-list
	return "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = " + lit
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteIdents(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quoteIdent(n)
	}
	return strings.Join(q, ", ")
}

// quoteLiteral quotes s as an SQL string literal. It accepts only the
// characters that verifiers, timestamps and role names are made of, so no
// escaping rules (standard_conforming_strings, backslashes, encodings) can
// matter.
func quoteLiteral(s string) (string, error) {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || strings.IndexByte("+/=$:._- ", b) >= 0) {
			return "", fmt.Errorf("character %q not allowed in a literal", b)
		}
	}
	return "'" + s + "'", nil
}

// pgCode returns the SQLSTATE of a server error, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// grantError turns a failed grant statement into an application error.
// The message never quotes the statement (it holds the verifier).
func grantError(op string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case sqlstateUndefinedObject:
			// pe.Message names the missing role; it is catalog text, not input.
			return &lapse.Error{Code: lapse.EINVALID, Field: "spec", Message: "an entitled role or the account does not exist on the target", Err: fmt.Errorf("postgres: %s: %s", op, pe.Message)}
		case sqlstateInsufficientPriv:
			return &lapse.Error{Code: lapse.EFORBIDDEN, Message: "the connector's account may not grant this role", Err: fmt.Errorf("postgres: %s: %s", op, pe.Message)}
		}
		return &lapse.Error{Code: lapse.EINTERNAL, Message: "internal error", Err: fmt.Errorf("postgres: %s: %s (SQLSTATE %s)", op, pe.Message, pe.Code)}
	}
	return dbError(op, err)
}

// dbError classifies an error talking to the server.
func dbError(op string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &lapse.Error{Code: lapse.EINTERNAL, Message: "internal error", Err: fmt.Errorf("postgres: %s: %s (SQLSTATE %s)", op, pe.Message, pe.Code)}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the PostgreSQL target did not answer in time", Err: fmt.Errorf("postgres: %s: %w", op, err)}
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot reach the PostgreSQL target", Err: fmt.Errorf("postgres: %s: %w", op, err)}
}

var (
	_ connector.Connector     = (*Conn)(nil)
	_ connector.SpecValidator = (*Conn)(nil)
	_ connector.Closer        = (*Conn)(nil)
)
