// Package mariadb is the MariaDB connector: one ephemeral user per grant,
// with a host limit, a random password sent to the server only as its
// mysql_native_password hash, and the entitled roles and privileges.
// Revoke drops the account, kills every connection of the user (DROP USER
// alone leaves them running), and deals with objects whose DEFINER it is
// and with grants it made. Verify checks all of that again, read-only, and
// tries a real login with the grant's password.
//
// See docs/connectors/mariadb.md for configuration, the spec and the
// security reasoning.
package mariadb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/internal/batch"
)

// Bounds of the batches concurrent Revokes and Verifies share.
const (
	// batchTimeout bounds one batch. A batch serves several callers, so it
	// does not end when the caller that happens to run it gives up.
	batchTimeout = time.Minute
	// maxBatch bounds how many callers one batch serves, and so the size
	// of the statement it sends.
	maxBatch = 32
)

// Conn is a MariaDB connector. It is safe for concurrent use. Grant takes
// no lock. Concurrent Revokes and Verifies share their reads and drops in
// batches (internal/batch): a batch serves every caller waiting when it starts,
// and a lone caller runs at once.
type Conn struct {
	cfg    Config
	name   string
	db     *sql.DB
	admin  *mysql.Config // parsed administrative DSN; holds a password, never logged
	logger *slog.Logger
	clock  lapse.Clock
	// sabotage makes named Revoke steps silently do nothing. Only tests set
	// it (export_test.go), to prove that Verify catches what Revoke left.
	sabotage map[string]bool
	// Concurrent Revokes and Verifies share their catalog scans and
	// process list reads (internal/batch, reads.go).
	traceBatches   *batch.Batcher[*traceItem]
	processBatches *batch.Batcher[*processItem]
	// Concurrent Revokes drop their accounts together (revoke.go).
	dropBatches *batch.Batcher[*dropItem]
}

// state is what Grant hands the broker to keep. It never holds a secret.
type state struct {
	V     int    `json:"v"`
	User  string `json:"user"`
	Host  string `json:"host"`
	Event string `json:"event,omitempty"`
}

// Checkpoint name suffixes; the full name is "<target>:account" and
// "<target>:sessions".
const (
	checkpointAccount  = "account"
	checkpointSessions = "sessions"
)

// MySQL/MariaDB error numbers the connector interprets.
const (
	errAccessDenied = 1045 // ER_ACCESS_DENIED_ERROR
	// ER_ACCESS_DENIED_NO_PASSWORD_ERROR: the server's answer when the
	// account vanished during the handshake.
	errAccessDeniedNoPassword = 1698
	errAccountLocked          = 4151 // ER_ACCOUNT_HAS_BEEN_LOCKED
	errUserLimitReached       = 1226 // ER_USER_LIMIT_REACHED: authenticated, then refused
	errUnknownThread          = 1094 // ER_NO_SUCH_THREAD
	errInvalidRole            = 1959 // ER_INVALID_ROLE
	errCannotUser             = 1396 // ER_CANNOT_USER
	errNoSuchTable            = 1146 // ER_NO_SUCH_TABLE
	errNoSuchRoutine          = 1305 // ER_SP_DOES_NOT_EXIST
	errNoSuchTrigger          = 1360 // ER_TRG_DOES_NOT_EXIST
	errNoSuchEvent            = 1539 // ER_EVENT_DOES_NOT_EXIST
	errNoSuchGrant            = 1141 // ER_NONEXISTING_GRANT
	errNoSuchTableGrant       = 1147 // ER_NONEXISTING_TABLE_GRANT
	errNoSuchProcGrant        = 1403 // ER_NONEXISTING_PROC_GRANT
)

// userRE matches the user names this connector makes and will act on.
var userRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// Open is the connector.Factory for MariaDB targets.
func Open(env connector.Env, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, fmt.Errorf("mariadb: target %s: config: %w", env.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return New(ctx, cfg, env)
}

// New validates cfg, connects to the server and checks that what the
// configuration names exists. Returns EINVALID for a bad configuration and
// EUNAVAILABLE if the server cannot be reached.
func New(ctx context.Context, cfg Config, env connector.Env) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	dsn, err := cfg.DSN.Resolve()
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "dsn", "cannot resolve dsn from %s", cfg.DSN.String())
	}
	admin, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	// Client-side interpolation saves a prepare round trip per query; the
	// driver refuses it for character sets where escaping is unsafe.
	admin.InterpolateParams = true
	if admin.Timeout == 0 {
		admin.Timeout = 10 * time.Second
	}
	if cfg.Address == "" {
		cfg.Address = admin.Addr
	}
	mc, err := mysql.NewConnector(admin)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "dsn", "dsn is not usable")
	}
	db := sql.OpenDB(mc)
	db.SetMaxOpenConns(cfg.MaxOpenConns)
	db.SetMaxIdleConns(cfg.MaxOpenConns)
	db.SetConnMaxLifetime(10 * time.Minute)
	name := env.Name
	if name == "" {
		name = "mariadb"
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Conn{cfg: cfg, name: name, db: db, admin: admin, clock: env.Clock, logger: logger.With("connector", "mariadb", "target", name)}
	// One batch of each kind at a time per eight pooled connections: the
	// reads batched are server-bound (the scans, the process list, DROP
	// USER under the server's privilege lock), so one batch serving every
	// pending caller beats several running side by side, and a lone caller
	// still runs at once.
	leaders := max(1, cfg.MaxOpenConns/8)
	c.traceBatches = &batch.Batcher[*traceItem]{MaxRunning: leaders, MaxBatch: maxBatch, Timeout: batchTimeout, Run: c.traceBatch}
	c.processBatches = &batch.Batcher[*processItem]{MaxRunning: leaders, MaxBatch: maxBatch, Timeout: batchTimeout, Run: c.processBatch}
	c.dropBatches = &batch.Batcher[*dropItem]{MaxRunning: leaders, MaxBatch: maxBatch, Timeout: batchTimeout, Run: c.dropBatch}
	if err := c.check(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if cfg.UnsafeSkipSessionKill {
		c.logger.Error("UNSAFE: unsafe_skip_session_kill is set: Revoke leaves live sessions running and Verify does not check for them; use it only to test lapse zsp test, never on a real target")
	}
	return c, nil
}

// check connects and verifies what the configuration refers to.
func (c *Conn) check(ctx context.Context) error {
	if err := c.db.PingContext(ctx); err != nil {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "mariadb server is unreachable", Err: fmt.Errorf("mariadb: ping %s: %w", c.admin.Addr, err)}
	}
	// Without PROCESS the process list shows only the broker's own
	// connections, and Verify would see no session where there are some;
	// without CONNECTION ADMIN (or SUPER) KILL fails. Both are checked on
	// the account's own global privileges.
	rows, err := c.db.QueryContext(ctx, `SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES
		WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')`)
	if err != nil {
		return c.unavailable("mariadb: read the admin account's privileges", err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return lapse.Internal("mariadb: read the admin account's privileges", err)
		}
		have[p] = true
	}
	rows.Close()
	if !have["PROCESS"] {
		return lapse.FieldErrorf(lapse.EINVALID, "dsn", "the admin account needs the global PROCESS privilege (granted directly, not through a role)")
	}
	if !have["CONNECTION ADMIN"] && !have["SUPER"] {
		return lapse.FieldErrorf(lapse.EINVALID, "dsn", "the admin account needs the global CONNECTION ADMIN (or SUPER) privilege")
	}
	if c.cfg.Definers == DefinerReassign {
		m := accountRE.FindStringSubmatch(c.cfg.DefinerReassignTo)
		var n int
		if err := c.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM mysql.global_priv WHERE User = ? AND Host = ?`, m[1], m[2]).Scan(&n); err != nil {
			return lapse.Internal("mariadb: look up definer_reassign_to", err)
		}
		if n == 0 {
			return lapse.FieldErrorf(lapse.EINVALID, "definer_reassign_to", "account %s does not exist", c.cfg.DefinerReassignTo)
		}
	}
	if c.cfg.ExpiryEventSchema != "" {
		var n int
		if err := c.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?`, c.cfg.ExpiryEventSchema).Scan(&n); err != nil {
			return lapse.Internal("mariadb: look up expiry_event_schema", err)
		}
		if n == 0 {
			return lapse.FieldErrorf(lapse.EINVALID, "expiry_event_schema", "schema %s does not exist", c.cfg.ExpiryEventSchema)
		}
		var sched string
		if err := c.db.QueryRowContext(ctx, `SELECT @@GLOBAL.event_scheduler`).Scan(&sched); err != nil {
			return lapse.Internal("mariadb: read event_scheduler", err)
		}
		if !strings.EqualFold(sched, "ON") {
			c.logger.Warn("expiry events are configured but the server's event_scheduler is not ON: they will not fire", "event_scheduler", sched)
		}
	}
	return nil
}

// Close closes the administrative pool.
func (c *Conn) Close() error { return c.db.Close() }

// UserName returns the user name this connector uses for grantID.
func (c *Conn) UserName(grantID string) string { return UserName(c.cfg.Prefix, grantID) }

func (c *Conn) checkpoints() []connector.CheckpointSpec {
	if c.cfg.UnsafeSkipSessionKill {
		// Nothing ends or checks sessions, so none is claimed.
		return []connector.CheckpointSpec{{Name: c.name + ":" + checkpointAccount, Kind: lapse.CheckpointTarget}}
	}
	return []connector.CheckpointSpec{
		{Name: c.name + ":" + checkpointAccount, Kind: lapse.CheckpointTarget},
		{Name: c.name + ":" + checkpointSessions, Kind: lapse.CheckpointSessions},
	}
}

// Grant creates (or, on a repeated call, re-creates with a new password)
// the grant's user and gives it the spec's roles and privileges. Returns
// EINVALID for a bad spec or grant ID, or a role that does not exist, and
// EUNAVAILABLE if the server cannot be reached. On failure it removes what
// it made.
func (c *Conn) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	if err := checkGrantID(req.GrantID); err != nil {
		return nil, err
	}
	spec, err := c.ParseSpec(req.Spec)
	if err != nil {
		return nil, err
	}
	user := UserName(c.cfg.Prefix, req.GrantID)
	host := c.cfg.AccountHost
	password, err := newPassword()
	if err != nil {
		return nil, lapse.Internal("mariadb: generate password", err)
	}
	st := state{V: 1, User: user, Host: host}
	if c.cfg.ExpiryEventSchema != "" && !req.ExpiresAt.IsZero() {
		st.Event = c.cfg.ExpiryEventSchema + "." + user
	}
	stmts := grantStatements(user, host, nativePasswordHash(password), spec, st.Event, req.ExpiresAt)
	// The account and its privileges go in one round trip; the expiry
	// event, which a compound statement cannot create, in a second.
	groups := [][]stmt{stmts}
	if st.Event != "" {
		groups = [][]stmt{stmts[:len(stmts)-1], stmts[len(stmts)-1:]}
	}
	done := 0
	for _, g := range groups {
		sqls := make([]string, len(g))
		for i, s := range g {
			sqls[i] = s.sql
		}
		_, failed, err := c.execBlock(ctx, sqls)
		if err != nil {
			c.undoGrant(user, host, st.Event)
			var me *mysql.MySQLError
			if errors.As(err, &me) && me.Number == errInvalidRole {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.roles", "a role of the spec does not exist on the target")
			}
			// The step is named by what; the statement holds the password
			// hash, and a server message can quote the statement ("near
			// '…'"), so a server error is reduced to its number.
			op := fmt.Sprintf("mariadb: grant %s: %s", user, stepsOf(g, done, failed))
			if me != nil {
				return nil, lapse.Internal(op, fmt.Errorf("server error %d (%s)", me.Number, string(me.SQLState[:])))
			}
			return nil, c.unavailable(op, err)
		}
		done += len(g)
	}
	info := map[string]string{
		"user":         user,
		"account_host": host,
		"account":      user + "@" + host,
		"address":      c.cfg.Address,
	}
	if spec.DefaultRole != "" {
		info["default_role"] = spec.DefaultRole
	}
	if len(spec.Roles) > 1 {
		info["roles"] = strings.Join(spec.Roles, ",")
	}
	if spec.GrantOption {
		info["grant_option"] = "true"
	}
	if st.Event != "" {
		info["native_expiry"] = "event " + st.Event
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, lapse.Internal("mariadb: encode state", err)
	}
	return &connector.GrantResponse{
		Secret:      map[string]string{"password": password},
		Info:        info,
		State:       b,
		Checkpoints: c.checkpoints(),
		Probe:       map[string]string{"password": password},
	}, nil
}

// stmt is one statement and a description of it that is safe to log.
type stmt struct {
	sql  string
	what string
}

// grantStatements builds Grant's statements. Every identifier in them has
// passed an allow-list and is quoted; hash is "*" and 40 hex digits.
func grantStatements(user, host, hash string, spec *Spec, event string, expires time.Time) []stmt {
	acct := account(user, host)
	create := "CREATE OR REPLACE USER " + acct + " IDENTIFIED BY PASSWORD '" + hash + "'"
	if spec.MaxUserConnections > 0 {
		create += fmt.Sprintf(" WITH MAX_USER_CONNECTIONS %d", spec.MaxUserConnections)
	}
	out := []stmt{{create, "create user"}}
	for _, r := range spec.Roles {
		out = append(out, stmt{"GRANT " + quoteIdent(r) + " TO " + acct, "grant role " + r})
	}
	if spec.DefaultRole != "" {
		out = append(out, stmt{"SET DEFAULT ROLE " + quoteIdent(spec.DefaultRole) + " FOR " + acct, "set default role"})
	}
	for _, g := range spec.Grants {
		s := "GRANT " + strings.Join(g.Privileges, ", ") + " ON " + g.object() + " TO " + acct
		if spec.GrantOption {
			s += " WITH GRANT OPTION"
		}
		out = append(out, stmt{s, "grant " + g.String()})
	}
	if event != "" {
		schema, name, _ := strings.Cut(event, ".")
		// The event is the server's own expiry: if the broker is down at the
		// deadline, the server locks the account, ends its connections and
		// drops it. A handler lets each step run even if one fails.
		s := "CREATE OR REPLACE EVENT " + quoteIdent(schema) + "." + quoteIdent(name) +
			fmt.Sprintf(" ON SCHEDULE AT FROM_UNIXTIME(%d)", expires.Unix()) +
			" ON COMPLETION NOT PRESERVE DO BEGIN" +
			" DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;" +
			" ALTER USER IF EXISTS " + acct + " ACCOUNT LOCK;" +
			" KILL HARD CONNECTION USER " + quoteIdent(user) + ";" +
			" DROP USER IF EXISTS " + acct + ";" +
			" END"
		out = append(out, stmt{s, "create expiry event"})
	}
	return out
}

// stepsOf names the failed step of g (its index, or -1 if the block does
// not say which), numbered from done+1.
func stepsOf(g []stmt, done, failed int) string {
	if failed >= 0 {
		return fmt.Sprintf("step %d (%s)", done+failed+1, g[failed].what)
	}
	whats := make([]string, len(g))
	for i, s := range g {
		whats[i] = s.what
	}
	return fmt.Sprintf("one of steps %d-%d (%s)", done+1, done+len(g), strings.Join(whats, "; "))
}

// execBlock runs stmts, in order, in one round trip: as one anonymous
// compound statement (BEGIN NOT ATOMIC … END, MariaDB 10.1 and later),
// which is a single statement to the protocol, so the administrative
// connection still refuses multiple statements. The first statement that
// fails ends the block with its error; those before it stand, as they
// would one by one. It returns the rows affected by the last statement
// and, if there was only one, the index of the failed statement (-1
// otherwise).
func (c *Conn) execBlock(ctx context.Context, stmts []string) (int64, int, error) {
	var q string
	switch len(stmts) {
	case 0:
		return 0, -1, nil
	case 1:
		q = stmts[0]
	default:
		q = "BEGIN NOT ATOMIC " + strings.Join(stmts, "; ") + "; END"
	}
	res, err := c.db.ExecContext(ctx, q)
	if err != nil {
		if len(stmts) == 1 {
			return 0, 0, err
		}
		return 0, -1, err
	}
	n, _ := res.RowsAffected()
	return n, -1, nil
}

// undoGrant removes what a failed Grant made. It is best effort: the broker
// calls Revoke for a grant whose provisioning failed anyway.
func (c *Conn) undoGrant(user, host, event string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.db.ExecContext(ctx, "DROP USER IF EXISTS "+account(user, host)); err != nil {
		c.logger.Warn("undo failed grant: drop user", "user", user, "err", err)
	}
	if event != "" {
		schema, name, _ := strings.Cut(event, ".")
		if _, err := c.db.ExecContext(ctx, "DROP EVENT IF EXISTS "+quoteIdent(schema)+"."+quoteIdent(name)); err != nil {
			c.logger.Warn("undo failed grant: drop event", "event", event, "err", err)
		}
	}
}

// unavailable classifies a server error: connection problems are
// EUNAVAILABLE (retry later), the rest internal. The message names only
// the operation.
func (c *Conn) unavailable(op string, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return lapse.Internal(op, err)
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "mariadb server is unavailable", Err: fmt.Errorf("%s: %w", op, err)}
}

// decodeState reads State. State comes back from the broker's store, so it
// is not trusted to name what to act on: a user it names is used only if
// it is bound to the grant ID (the same grant-derived suffix, after a
// prefix of the allowed form — the prefix may have been reconfigured since
// the grant), and an event only if it is named after such a user.
// Anything else in State is ignored; Revoke and Verify work without it.
func (c *Conn) decodeState(grantID string, raw json.RawMessage) state {
	var st state
	if len(raw) == 0 || json.Unmarshal(raw, &st) != nil {
		return state{}
	}
	derived := UserName(c.cfg.Prefix, grantID)
	suffix := derived[len(c.cfg.Prefix):]
	p, ok := strings.CutSuffix(st.User, suffix)
	if st.User != derived && (!ok || !prefixRE.MatchString(p) || !userRE.MatchString(st.User)) {
		return state{}
	}
	if st.Event != "" {
		schema, name, ok := strings.Cut(st.Event, ".")
		if !ok || !identRE.MatchString(schema) || name != st.User {
			st.Event = ""
		}
	}
	return st
}

// users returns the user names a grant may have on the target: the one
// derived from the grant ID and, if State names another bound to the same
// grant (the prefix was changed since), that one too.
func (c *Conn) users(grantID string, st state) []string {
	u := UserName(c.cfg.Prefix, grantID)
	if st.User != "" && st.User != u {
		return []string{u, st.User}
	}
	return []string{u}
}

// events returns the expiry events that may exist for the grant.
func (c *Conn) events(users []string, st state) []string {
	var out []string
	if st.Event != "" {
		out = append(out, st.Event)
	}
	if c.cfg.ExpiryEventSchema != "" {
		for _, u := range users {
			e := c.cfg.ExpiryEventSchema + "." + u
			if e != st.Event {
				out = append(out, e)
			}
		}
	}
	return out
}

// Interface guards.
var (
	_ connector.Connector     = (*Conn)(nil)
	_ connector.SpecValidator = (*Conn)(nil)
	_ connector.Closer        = (*Conn)(nil)
	_ connector.Factory       = Open
)
