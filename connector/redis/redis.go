// Package redis is the connector for Redis 7 deployments: each grant gets
// its own ACL user with exact rules on every configured node (ACLs are not
// replicated), and revocation deletes the user and closes its connections
// on every node, then proves it: no ACL user, no client of that user, and a
// real AUTH with the grant's password fails.
//
// Redis ACLs have no expiry of their own; the broker's durable deadline is
// the only control that ends a grant (see docs/connectors/redis.md).
package redis

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Conn is a Redis target. It is safe for concurrent use. Grants of
// different grants proceed in parallel, limited only by the per-node
// connection pool; concurrent revocations on a node share one transaction,
// and concurrent verifications one pipeline (see batcher).
type Conn struct {
	cfg    Config
	clock  lapse.Clock
	log    *slog.Logger
	nodes  []*node
	byName map[string]*node

	// What every Grant returns about the nodes, built once in New.
	nodeNames   []string
	nodeList    string // node names, comma-separated (Info["nodes"])
	nodesJSON   []byte // node names as a JSON array (State)
	checkpoints []connector.CheckpointSpec

	// revokeNode is the per-node revocation step. Tests replace it (see
	// export_test.go) to prove that Verify catches a revocation that
	// silently did not happen.
	revokeNode func(ctx context.Context, n *node, user string) (nodeRevocation, error)
}

type node struct {
	name  string
	addr  string
	admin *goredis.Client
	// checker holds the connection verifications use (see observe): it
	// logs in as the admin account, like admin, but is used for nothing
	// else, because a (wrongly) accepted login probe on it may change its
	// identity until it is logged back in or replaced.
	checker        atomic.Pointer[goredis.Client]
	checkerOptions func() *goredis.Options
	// adminUser and adminPassword log the checker back in after an
	// accepted probe.
	adminUser, adminPassword string
	// base returns the node's connection options (address, TLS, timeouts)
	// without credentials, for clients that act as a grantee (exercise.go).
	base func() *goredis.Options
	mu   sync.Mutex // guards replacing checker, and probeAddrs
	// probeAddrs are the local addresses of the checker's connections, so
	// Verify does not count its own connection, logged in for a moment
	// when a login is (wrongly) accepted, as a session of the user.
	probeAddrs map[string]bool
	// revoker and verifier batch the commands of concurrent revocations
	// and verifications (see batcher).
	revoker  *batcher[string, revocation]
	verifier *batcher[check, observation]
}

// clientName names the connector's own connections in CLIENT LIST.
const clientName = "lapse"

// maxBatch bounds the requests that share one pipeline, so a batch of
// revocations (one transaction, in which CLIENT KILL USER and ACL DELUSER
// each scan every client) holds the server for a short time only.
const maxBatch = 32

// trackingDialer wraps dial to record the local address of each checker
// connection while it is open.
func (n *node) trackingDialer(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		local := cn.LocalAddr().String()
		n.mu.Lock()
		n.probeAddrs[local] = true
		n.mu.Unlock()
		return &trackedConn{Conn: cn, onClose: func() {
			n.mu.Lock()
			delete(n.probeAddrs, local)
			n.mu.Unlock()
		}}, nil
	}
}

func (n *node) isProbeAddr(addr string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.probeAddrs[addr]
}

type trackedConn struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}

// New opens a connector for cfg. It validates cfg, resolves the admin
// secrets, builds the connection pools and checks, on every node it can
// reach, that the admin account holds RequiredPermissions. A node that is
// down at start-up, or refuses the admin credentials, does not stop the
// broker from starting: it is logged, and the first command that needs it
// fails (use Ping for a readiness check). Returns EINVALID for a bad
// configuration, including an admin account that lacks a permission.
func New(ctx context.Context, cfg Config, env connector.Env) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:    cfg,
		clock:  env.Clock,
		log:    env.Logger,
		byName: map[string]*node{},
	}
	if c.clock == nil {
		c.clock = lapse.SystemClock{}
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c.revokeNode = revokeOnNode
	var checkOptions []*goredis.Options
	for i, nc := range cfg.Nodes {
		password, err := nc.Password.Resolve()
		if err != nil {
			c.Close()
			return nil, &lapse.Error{Code: lapse.EINVALID, Field: fmt.Sprintf("nodes[%d].password", i),
				Message: "cannot read the node's admin password", Err: err}
		}
		tlsConfig, err := nc.TLS.build(nc.Addr)
		if err != nil {
			c.Close()
			return nil, &lapse.Error{Code: lapse.EINVALID, Field: fmt.Sprintf("nodes[%d].tls", i),
				Message: "cannot load the node's TLS files", Err: err}
		}
		base := func() *goredis.Options {
			return &goredis.Options{
				Addr:                  nc.Addr,
				Protocol:              2,
				DisableIdentity:       true,
				DialTimeout:           cfg.DialTimeout.D(),
				ReadTimeout:           cfg.Timeout.D(),
				WriteTimeout:          cfg.Timeout.D(),
				ContextTimeoutEnabled: true,
				// A failed command is reported, and the broker, which
				// knows whether repeating it is wanted, retries.
				MaxRetries:    -1,
				DialerRetries: 1,
				TLSConfig:     tlsConfig,
			}
		}
		permCheck := base()
		permCheck.Username, permCheck.Password = nc.Username, password
		checkOptions = append(checkOptions, permCheck)
		admin := base()
		admin.Username, admin.Password = nc.Username, password
		admin.ClientName = clientName
		admin.PoolSize = cfg.PoolSize
		n := &node{name: nc.Name, addr: nc.Addr, admin: goredis.NewClient(admin), probeAddrs: map[string]bool{},
			adminUser: nc.Username, adminPassword: password}
		n.base = base
		n.revoker = &batcher[string, revocation]{max: maxBatch, writes: true, run: n.revokeUsers}
		n.verifier = &batcher[check, observation]{max: maxBatch, run: n.observe}
		n.checkerOptions = func() *goredis.Options {
			o := base()
			o.Username, o.Password = nc.Username, password
			o.ClientName = clientName
			// Batches run one at a time per node, on one connection.
			o.PoolSize = 1
			dial := goredis.NewDialer(o)
			o.Dialer = n.trackingDialer(dial)
			return o
		}
		n.checker.Store(goredis.NewClient(n.checkerOptions()))
		c.nodes = append(c.nodes, n)
		c.byName[n.name] = n
	}
	names := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		names[i] = n.name
		c.checkpoints = append(c.checkpoints,
			connector.CheckpointSpec{Name: n.name + "/acl", Kind: lapse.CheckpointTarget},
			connector.CheckpointSpec{Name: n.name + "/sessions", Kind: lapse.CheckpointSessions})
	}
	c.nodeNames = names
	c.nodeList = strings.Join(names, ",")
	var err error
	if c.nodesJSON, err = json.Marshal(names); err != nil {
		c.Close()
		return nil, lapse.Internal("redis: encode node names", err)
	}
	if err := c.checkNodes(ctx, checkOptions); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Open is the connector.Factory for Redis targets.
func Open(env connector.Env, decode func(v any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(context.Background(), cfg, env)
}

func (t *TLSConfig) build(addr string) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if t.ServerName != "" {
		cfg.ServerName = t.ServerName
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("redis: read CA file %s: %w", t.CAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis: CA file %s holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("redis: load client certificate %s: %w", t.CertFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Close releases every connection pool.
func (c *Conn) Close() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.admin.Close(), n.checker.Load().Close())
	}
	return errors.Join(errs...)
}

// Ping checks that every node answers with the admin credentials. Returns
// EUNAVAILABLE naming the first node that does not.
func (c *Conn) Ping(ctx context.Context) error {
	return firstError(c.each(ctx, func(ctx context.Context, n *node) error {
		if err := n.admin.Ping(ctx).Err(); err != nil {
			return nodeError(n, "ping", err)
		}
		return nil
	}))
}

// ValidateSpec checks an entitlement spec without contacting a server.
func (c *Conn) ValidateSpec(spec map[string]any) error {
	_, err := parseSpec(spec)
	return err
}

// UserName returns the ACL user name of a grant: the prefix followed by the
// grant ID, at most MaxUserNameLength bytes from a-z 0-9 _ -. Returns
// EINVALID for a grant ID outside that alphabet or longer than
// MaxGrantIDLength.
func (c *Conn) UserName(grantID string) (string, error) {
	if !safeName(grantID, MaxGrantIDLength) || grantID[0] == '_' || grantID[0] == '-' {
		return "", lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID must be 1 to %d characters of a-z 0-9 _ - starting with a letter or digit", MaxGrantIDLength)
	}
	name := c.cfg.Prefix + grantID
	if len(name) > MaxUserNameLength {
		return "", lapse.FieldErrorf(lapse.EINVALID, "grant_id", "user name would exceed %d bytes", MaxUserNameLength)
	}
	return name, nil
}

// state is what the broker keeps for a grant. It holds no secret.
type state struct {
	User  string   `json:"user"`
	Nodes []string `json:"nodes"`
}

// Grant creates the grant's ACL user on every node, with the spec's exact
// rules and a fresh 256-bit password that the server only ever sees as its
// SHA-256. Calling it again for the same grant resets the same user to a
// new password. If any node fails, the user is removed from every node
// again. Returns EINVALID for a bad grant ID or spec (or rules a server
// rejects) and EUNAVAILABLE when a node cannot be reached.
func (c *Conn) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	user, err := c.UserName(req.GrantID)
	if err != nil {
		return nil, err
	}
	spec, err := parseSpec(req.Spec)
	if err != nil {
		return nil, err
	}
	password, hash, err := newPassword()
	if err != nil {
		return nil, lapse.Internal("redis: generate password", err)
	}
	args := spec.setUserArgs(user, hash)
	errs := c.each(ctx, func(ctx context.Context, n *node) error {
		err := n.admin.Do(ctx, args...).Err()
		switch {
		case err == nil:
			return nil
		case goredis.HasErrorPrefix(err, "Error in ACL SETUSER"):
			// The rules passed the spec grammar but this server does not
			// know one of them (a command of a newer version, say).
			return &lapse.Error{Code: lapse.EINVALID, Field: "spec",
				Message: fmt.Sprintf("redis node %s rejected the ACL rules", n.name),
				Err:     fmt.Errorf("redis: node %s: set user %s: %w", n.name, user, err)}
		default:
			return nodeError(n, "set user "+user, err)
		}
	})
	if err := firstError(errs); err != nil {
		// Undo on every node, not only those that succeeded: a timeout
		// may hide a command the server did run. Use a fresh context so
		// a cancelled request still cleans up.
		undoCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout.D())
		defer cancel()
		for _, uerr := range c.each(undoCtx, func(ctx context.Context, n *node) error {
			_, err := revokeOnNode(ctx, n, user)
			return err
		}) {
			if uerr != nil {
				c.log.Warn("redis: undo of a failed grant did not finish; revocation will retry", "user", user, "err", uerr)
			}
		}
		return nil, err
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.Debug("redis: granted", "user", user, "nodes", len(c.nodes))
	}
	return &connector.GrantResponse{
		Secret:      map[string]string{"password": password},
		Info:        map[string]string{"username": user, "addr": c.cfg.ClientAddr, "nodes": c.nodeList},
		State:       c.encodeState(user),
		Checkpoints: slices.Clone(c.checkpoints),
		Probe:       map[string]string{"password": password},
	}, nil
}

// encodeState returns the JSON of state{user, every configured node}. The
// node list is encoded once, in New; user is a safeName, which JSON never
// escapes, so the result is what json.Marshal makes (a test checks it).
func (c *Conn) encodeState(user string) json.RawMessage {
	b := make([]byte, 0, len(`{"user":"","nodes":}`)+len(user)+len(c.nodesJSON))
	b = append(b, `{"user":"`...)
	b = append(b, user...)
	b = append(b, `","nodes":`...)
	b = append(b, c.nodesJSON...)
	return append(b, '}')
}

// newPassword returns 256 random bits as unpadded base64url (43 characters)
// and the hex SHA-256 that ACL SETUSER accepts as `#<hash>`. A hash of a
// random 256-bit secret needs no salt or stretching: there is nothing to
// guess.
func newPassword() (password, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	password = base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(password))
	return password, hex.EncodeToString(sum[:]), nil
}

// nodeRevocation is what revocation did on one node.
type nodeRevocation struct {
	deleted bool
	killed  int64
}

// revokeOnNode closes the user's connections and deletes the user in one
// MULTI/EXEC, so no login can slip in between the two. ACL DELUSER (never
// `off`, which keeps authenticated connections) also closes connections
// itself; CLIENT KILL USER makes that explicit and counts them. Concurrent
// revocations on a node share one transaction (see revokeUsers).
//
// A failure of the transaction itself — the connection, MULTI or EXEC
// refused, the server discarding it — is reported as such, naming the
// permission the admin account lacks; only when EXEC ran are the two
// replies read. If MULTI was refused, the server ran the two commands
// outside a transaction (they were already sent), which the error says.
func revokeOnNode(ctx context.Context, n *node, user string) (nodeRevocation, error) {
	r, err := n.revoker.do(ctx, user)
	if err != nil {
		return nodeRevocation{}, err
	}
	return r.nodeRevocation, r.err
}

// revocation is the outcome of revokeOnNode for one user.
type revocation struct {
	nodeRevocation
	err error
}

// revokeUsers runs the revocations of a batch in one MULTI/EXEC: CLIENT
// KILL USER and ACL DELUSER for each user, in the order asked. Each user's
// two replies are read as if the transaction were its own; a failure of
// the transaction as a whole is every user's.
func (n *node) revokeUsers(ctx context.Context, users []string) []revocation {
	kills := make([]*goredis.Cmd, len(users))
	dels := make([]*goredis.Cmd, len(users))
	_, err := n.admin.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		for i, u := range users {
			kills[i] = p.Do(ctx, "CLIENT", "KILL", "USER", u)
			dels[i] = p.Do(ctx, "ACL", "DELUSER", u)
		}
		return nil
	})
	// The same error on every command: the transaction failed as a whole
	// (EXEC's own reply), not commands inside it.
	whole := err != nil
	for i := range users {
		whole = whole && kills[i] != nil && kills[i].Err() == err && dels[i] != nil && dels[i].Err() == err
	}
	out := make([]revocation, len(users))
	for i, u := range users {
		out[i].nodeRevocation, out[i].err = readRevocation(n, u, err, whole, kills[i], dels[i])
	}
	return out
}

// readRevocation reads one user's replies of a revocation transaction
// whose overall error (TxPipelined's) is err; whole says the transaction
// failed as a whole.
func readRevocation(n *node, user string, err error, whole bool, kill, del *goredis.Cmd) (nodeRevocation, error) {
	var r nodeRevocation
	if err := transactionError(n, user, err, whole, kill, del); err != nil {
		return r, err
	}
	killed, kerr := kill.Int64()
	switch {
	case kerr == nil:
		r.killed = killed
	case goredis.HasErrorPrefix(kerr, "No such user"):
		// The user is already gone, and with it its connections.
	default:
		return r, nodeError(n, "kill clients of "+user, kerr)
	}
	deleted, derr := del.Int64()
	if derr != nil {
		return r, nodeError(n, "delete user "+user, derr)
	}
	r.deleted = deleted > 0
	return r, nil
}

// transactionError returns the failure of revokeOnNode's transaction as a
// whole, or nil if EXEC ran and its replies are in kill and del (err is
// then the first command's own error, such as "No such user", which the
// caller reads from the command).
func transactionError(n *node, user string, err error, whole bool, kill, del *goredis.Cmd) error {
	if err == nil {
		return nil
	}
	op := "revoke " + user
	var rerr goredis.Error
	switch {
	case kill == nil || del == nil || !errors.As(err, &rerr):
		// Not a reply of the server: the connection failed.
		return nodeError(n, op, err)
	case refusedCommand(err) == "multi":
		return &lapse.Error{Code: lapse.EUNAVAILABLE,
			Message: fmt.Sprintf("redis node %s refused MULTI to the connector's admin account (add +multi +exec to its ACL); the revocation's commands ran outside a transaction", n.name),
			Err:     fmt.Errorf("redis: node %s: %s: MULTI refused: %w", n.name, op, err)}
	case goredis.HasErrorPrefix(err, "EXECABORT"):
		// The server discarded the transaction: nothing ran. The cause is
		// in the error (EXEC refused) or in the command refused when
		// queued.
		cause := err
		for _, cmd := range []*goredis.Cmd{kill, del} {
			if e := cmd.Err(); e != nil && !goredis.HasErrorPrefix(e, "EXECABORT") {
				cause = e
				break
			}
		}
		msg := fmt.Sprintf("redis node %s discarded the revocation's transaction", n.name)
		if c := refusedCommand(cause); c != "" {
			msg = fmt.Sprintf("redis node %s discarded the revocation's transaction: the connector's admin account may not run %s (add +%s to its ACL)", n.name, commandText(c), c)
		}
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: msg,
			Err: fmt.Errorf("redis: node %s: %s: transaction discarded: %w", n.name, op, cause)}
	case whole:
		return nodeError(n, op, err)
	}
	return nil
}

// commandText writes a command as a client sends it: "client|kill" is
// CLIENT KILL.
func commandText(cmd string) string {
	return strings.ToUpper(strings.ReplaceAll(cmd, "|", " "))
}

// Revoke deletes the grant's ACL user and closes its connections on every
// configured node. It needs neither State nor a successful Grant: the user
// name comes from the grant ID. If State belongs to the grant and records
// the user under another prefix (the prefix was changed since Grant), that
// user is deleted too. Repeating it is harmless. Returns EUNAVAILABLE,
// after acting on every reachable node, if a node failed.
func (c *Conn) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	user, err := c.UserName(req.GrantID)
	if err != nil {
		return nil, err
	}
	st, ok := c.grantState(req.GrantID, req.State)
	users := grantUsers(user, st)
	results := make([][]nodeRevocation, len(c.nodes))
	failed := make([][]bool, len(c.nodes))
	errs := c.eachIndexed(ctx, func(ctx context.Context, i int, n *node) error {
		var first error
		results[i] = make([]nodeRevocation, len(users))
		failed[i] = make([]bool, len(users))
		for j, u := range users {
			r, err := c.revokeNode(ctx, n, u)
			results[i][j] = r
			if err != nil {
				failed[i][j] = true
				if first == nil {
					first = err
				}
			}
		}
		return first
	})
	resp := &connector.RevokeResponse{}
	for i, n := range c.nodes {
		for j, u := range users {
			r := results[i][j]
			switch {
			case failed[i][j]:
				resp.Actions = append(resp.Actions, fmt.Sprintf("node %s: revocation of ACL user %s failed", n.name, u))
			case r.deleted:
				resp.Actions = append(resp.Actions, fmt.Sprintf("node %s: deleted ACL user %s, closed %d connections", n.name, u, r.killed))
			default:
				resp.Actions = append(resp.Actions, fmt.Sprintf("node %s: ACL user %s already absent, closed %d connections", n.name, u, r.killed))
			}
		}
	}
	if !ok {
		resp.Actions = append(resp.Actions, stateIgnored)
	}
	for _, name := range c.missingNodes(st) {
		resp.Actions = append(resp.Actions, fmt.Sprintf("node %s: held the grant but is no longer configured; cannot revoke there", name))
	}
	if err := firstError(errs); err != nil {
		return nil, err
	}
	c.log.Debug("redis: revoked", "user", user, "actions", resp.Actions)
	return resp, nil
}

// stateIgnored is the note Revoke and Verify record when a grant's state
// is not the grant's own.
const stateIgnored = "state ignored: it does not belong to this grant"

// grantState decodes a grant's state. State comes from the broker's store
// and is not trusted: it is used only if its user is this grant's — a
// prefix of the allowed form (the prefix may have been reconfigured since
// Grant) followed by the grant ID. ok is false when a state was given but
// does not belong to the grant; st is then nil, as it is without a state.
func (c *Conn) grantState(grantID string, raw json.RawMessage) (st *state, ok bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, true
	}
	if c.isCurrentState(grantID, raw) {
		return &state{User: c.cfg.Prefix + grantID, Nodes: c.nodeNames}, true
	}
	st = &state{}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, false
	}
	prefix, found := strings.CutSuffix(st.User, grantID)
	if !found || !safeName(prefix, MaxPrefixLength) || !isLower(prefix[0]) {
		return nil, false
	}
	return st, true
}

// isCurrentState reports whether raw is, byte for byte, the state Grant
// returns for grantID with today's configuration (see encodeState), which
// is what the broker normally passes back. It spares Revoke and Verify
// decoding JSON on every call; any other state is decoded and checked.
func (c *Conn) isCurrentState(grantID string, raw []byte) bool {
	i := 0
	for _, part := range [...]string{`{"user":"`, c.cfg.Prefix, grantID, `","nodes":`} {
		if len(raw)-i < len(part) || string(raw[i:i+len(part)]) != part {
			return false
		}
		i += len(part)
	}
	rest := raw[i:]
	return len(rest) == len(c.nodesJSON)+1 && bytes.Equal(rest[:len(c.nodesJSON)], c.nodesJSON) && rest[len(rest)-1] == '}'
}

// grantUsers returns the user names Revoke and Verify act on: the one
// derived from the grant ID with today's prefix and, if a state that
// belongs to the grant records it under another prefix, that one too.
func grantUsers(derived string, st *state) []string {
	if st == nil || st.User == derived {
		return []string{derived}
	}
	return []string{derived, st.User}
}

// missingNodes returns the nodes named in a grant's state (already checked
// by grantState) that are not configured any more. A hostile or corrupt
// state can name nothing but a node-name-shaped string here: it is only
// reported, never dialled.
func (c *Conn) missingNodes(st *state) (missing []string) {
	if st == nil {
		return nil
	}
	for _, name := range st.Nodes {
		if _, ok := c.byName[name]; !ok && safeName(name, maxNodeNameLength) {
			missing = append(missing, name)
		}
	}
	return missing
}

// Verify checks every configured node, read-only: ACL GETUSER must return
// nil, CLIENT LIST must show no client of the user, and AUTH with the
// grant's own password (from req.Probe) must fail. It reports one target
// and one sessions checkpoint per node, with what it queried and saw. If
// State belongs to the grant and records the user under another prefix,
// that user is checked too, in the same checkpoints. A node named in State
// that is no longer configured is reported as residue. Returns
// EUNAVAILABLE if a node could not be checked.
func (c *Conn) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	user, err := c.UserName(req.GrantID)
	if err != nil {
		return nil, err
	}
	st, ok := c.grantState(req.GrantID, req.State)
	users := grantUsers(user, st)
	password := req.Probe["password"]
	results := make([][2]connector.CheckpointResult, len(c.nodes))
	errs := c.eachIndexed(ctx, func(ctx context.Context, i int, n *node) error {
		var err error
		results[i], err = c.verifyNode(ctx, n, users[0], password)
		for _, u := range users[1:] {
			if err != nil {
				break
			}
			var more [2]connector.CheckpointResult
			more, err = c.verifyNode(ctx, n, u, password)
			for k := range more {
				results[i][k] = mergeCheckpoint(results[i][k], more[k], u)
			}
		}
		return err
	})
	if err := firstError(errs); err != nil {
		return nil, err
	}
	resp := &connector.VerifyResponse{}
	for _, r := range results {
		if !ok {
			r[0].Evidence["state"] = stateIgnored
		}
		resp.Checkpoints = append(resp.Checkpoints, r[0], r[1])
	}
	for _, name := range c.missingNodes(st) {
		for _, kind := range []lapse.CheckpointKind{lapse.CheckpointTarget, lapse.CheckpointSessions} {
			suffix := "/acl"
			if kind == lapse.CheckpointSessions {
				suffix = "/sessions"
			}
			resp.Checkpoints = append(resp.Checkpoints, connector.CheckpointResult{
				Name: name + suffix, Kind: kind, Gone: false,
				Evidence: map[string]any{"node": name, "configured": false},
				Residue:  []string{"node " + name + " held the grant but is no longer configured, so it cannot be checked"},
			})
		}
	}
	return resp, nil
}

// mergeCheckpoint adds to a node's checkpoint what the check of the user
// State recorded under an earlier prefix found: its residue, and its
// evidence under state_user.
func mergeCheckpoint(cp, more connector.CheckpointResult, user string) connector.CheckpointResult {
	cp.Residue = append(cp.Residue, more.Residue...)
	cp.Gone = cp.Gone && more.Gone
	cp.Evidence["state_user"] = user
	cp.Evidence["state_user_evidence"] = more.Evidence
	return cp
}

func (c *Conn) verifyNode(ctx context.Context, n *node, user, password string) ([2]connector.CheckpointResult, error) {
	obs, err := n.verifier.do(ctx, check{user, password})
	checkedAt := c.clock.Now().Format(time.RFC3339Nano)
	var out [2]connector.CheckpointResult
	for _, err := range []error{err, obs.err, obs.probe.err} {
		if err != nil {
			return out, err
		}
	}
	probe := obs.probe

	// The ACL user itself, and the login probe.
	target := connector.CheckpointResult{Name: n.name + "/acl", Kind: lapse.CheckpointTarget}
	present := obs.present
	target.Evidence = map[string]any{
		"node":         n.name,
		"addr":         n.addr,
		"query":        "ACL GETUSER " + user,
		"user_present": present,
		"login_probe":  probe.outcome,
		"checked_at":   checkedAt,
	}
	if present {
		target.Residue = append(target.Residue, fmt.Sprintf("ACL user %s exists on node %s (%s)", user, n.name, describeUser(obs.reply)))
	}
	if probe.accepted {
		target.Residue = append(target.Residue, fmt.Sprintf("AUTH as %s with the grant's password succeeded on node %s", user, n.name))
	}
	target.Gone = len(target.Residue) == 0

	// Live connections of the user.
	sessions := connector.CheckpointResult{Name: n.name + "/sessions", Kind: lapse.CheckpointSessions}
	var mine []string
	excluded := 0
	for _, cl := range obs.clients {
		if n.isProbeAddr(cl.addr) {
			excluded++
			continue
		}
		mine = append(mine, fmt.Sprintf("id=%s addr=%s cmd=%s", cl.id, cl.addr, cl.cmd))
	}
	sessions.Evidence = map[string]any{
		"node":            n.name,
		"addr":            n.addr,
		"query":           "CLIENT LIST",
		"clients_seen":    obs.clientsSeen,
		"clients_of_user": len(mine),
		// The connector's own login probe, if the login was accepted.
		"probe_clients_excluded": excluded,
		// How many verifications shared this CLIENT LIST (see batcher).
		"listing_shared_by": obs.batch,
		"checked_at":        checkedAt,
	}
	for _, m := range mine {
		sessions.Residue = append(sessions.Residue, fmt.Sprintf("node %s: client %s", n.name, m))
	}
	sessions.Gone = len(mine) == 0
	out[0], out[1] = target, sessions
	return out, nil
}

func (n *node) replaceChecker(old *goredis.Client) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.checker.Load() != old {
		return
	}
	n.checker.Store(goredis.NewClient(n.checkerOptions()))
	_ = old.Close()
}

// describeUser summarises an ACL GETUSER reply (flags and command rules),
// leaving out the password hashes.
func describeUser(reply []any) string {
	var parts []string
	for i := 0; i+1 < len(reply); i += 2 {
		k, _ := reply[i].(string)
		switch k {
		case "flags":
			var flags []string
			if l, ok := reply[i+1].([]any); ok {
				for _, f := range l {
					if s, ok := f.(string); ok {
						flags = append(flags, s)
					}
				}
			}
			parts = append(parts, "flags: "+strings.Join(flags, " "))
		case "commands":
			if s, ok := reply[i+1].(string); ok {
				parts = append(parts, "commands: "+s)
			}
		}
	}
	return strings.Join(parts, "; ")
}

// each runs f on every node, in parallel when there are several, and
// returns one error slot per node.
func (c *Conn) each(ctx context.Context, f func(ctx context.Context, n *node) error) []error {
	return c.eachIndexed(ctx, func(ctx context.Context, _ int, n *node) error { return f(ctx, n) })
}

func (c *Conn) eachIndexed(ctx context.Context, f func(ctx context.Context, i int, n *node) error) []error {
	errs := make([]error, len(c.nodes))
	if len(c.nodes) == 1 {
		errs[0] = f(ctx, 0, c.nodes[0])
		return errs
	}
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(ctx, i, n)
		}()
	}
	wg.Wait()
	return errs
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// nodeError turns a failure on a node into an application error:
// EUNAVAILABLE, because the broker retries and the operator must look at
// the node. The message names the node, and the command the admin account
// was refused, never a credential; the cause is kept for the log.
func nodeError(n *node, op string, err error) error {
	cause := fmt.Errorf("redis: node %s: %s: %w", n.name, op, err)
	var msg string
	var rerr goredis.Error
	switch {
	case refusedCommand(err) != "":
		c := refusedCommand(err)
		msg = fmt.Sprintf("redis node %s refused %s to the connector's admin account (add +%s to its ACL)", n.name, commandText(c), c)
	case goredis.IsAuthError(err) || goredis.IsPermissionError(err):
		msg = fmt.Sprintf("redis node %s refused the connector's admin account", n.name)
	case errors.As(err, &rerr):
		msg = fmt.Sprintf("redis node %s returned an error", n.name)
	default:
		msg = fmt.Sprintf("redis node %s cannot be reached", n.name)
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: msg, Err: cause}
}

// Interface guards.
var (
	_ connector.Connector     = (*Conn)(nil)
	_ connector.SpecValidator = (*Conn)(nil)
	_ connector.Closer        = (*Conn)(nil)
	_ connector.Factory       = Open
)
