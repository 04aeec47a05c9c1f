package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/authn/oidc"
	"github.com/lapsehq/lapse/authn/workload"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/registry"
	"github.com/lapsehq/lapse/notify"
	"github.com/lapsehq/lapse/sqlstore"
)

// HTTP server limits. WriteTimeout bounds the longest call, a release or
// revoke that waits for verified revocation, so it is generous; the others
// protect against slow or idle clients holding connections.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// shutdownTimeout bounds how long in-flight HTTP calls may take to
	// finish after a shutdown signal before their connections are closed.
	shutdownTimeout = 30 * time.Second
)

func (m *Main) serverCommand() *cobra.Command {
	var configPath, listen string
	c := &cobra.Command{
		Use:   "server --config FILE",
		Short: "Run the Lapse server",
		Long: `Run the Lapse server: the HTTP API, the lifecycle engine that provisions,
expires, revokes and verifies grants, and the token targets' endpoints.

The configuration is documented in docs/configuration.md. Several servers may
share one PostgreSQL store (see examples/ha.md). SIGINT or SIGTERM stops
accepting calls, lets running ones finish, and waits for the engine to write
what it is doing before exiting; a second signal exits at once.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if configPath == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
			}
			cfg, err := config.Load(configPath)
			if err != nil {
				return err
			}
			logger, err := m.newLogger(cfg)
			if err != nil {
				return err
			}
			return m.serve(c.Context(), &Server{Config: cfg, Logger: logger, Clock: m.Clock, Listen: listen}, nil)
		},
	}
	c.Flags().StringVarP(&configPath, "config", "c", "", "configuration file (YAML)")
	c.Flags().StringVar(&listen, "listen", "", "listen address, overriding the configuration's (use 127.0.0.1:0 for any free port)")
	return c
}

// serve opens s, runs it until ctx ends or it fails, then shuts it down.
// announce, when set, is called once the server listens.
func (m *Main) serve(ctx context.Context, s *Server, announce func(*Server)) error {
	if err := s.Open(ctx); err != nil {
		return serverErr(err)
	}
	if announce != nil {
		announce(s)
	}
	m.serving(s)
	var runErr error
	select {
	case <-ctx.Done():
		s.Logger.Info("shutting down")
	case runErr = <-s.Failed():
		s.Logger.Error("shutting down after a failure", "err", runErr)
	}
	closeErr := s.Close()
	if runErr != nil {
		return serverErr(runErr)
	}
	return serverErr(closeErr)
}

// Server is one running Lapse server: the store, the targets' connectors,
// the broker with its engine, and the HTTP API. Fill the exported fields,
// call Open, and Close to shut down.
type Server struct {
	Config *config.Config
	Logger *slog.Logger // nil discards
	Clock  lapse.Clock  // nil is the system clock
	// Listen overrides Config.Listen when set.
	Listen string
	// Prepare, when set, runs after the store, targets and broker are open
	// and before the first connection is accepted (lapse dev creates its
	// users here).
	Prepare func(ctx context.Context, s *Server) error

	// Set by Open.
	Store      *sqlstore.Store
	Broker     *broker.Broker
	Connectors map[string]connector.Connector
	Audit      *audit.Log

	ln           net.Listener
	http         *http.Server
	engineCancel context.CancelFunc
	engineDone   chan struct{}
	auditCancel  context.CancelFunc
	auditDone    chan struct{}
	driftCancel  context.CancelFunc
	driftDone    chan struct{}
	canary       *canary // the scheduled session-level test (zsp_test_cmd.go)
	notifyCancel context.CancelFunc
	notifyDone   chan struct{}
	policyCancel context.CancelFunc // the policy reloader (server_policy.go)
	policyDone   chan struct{}
	failed       chan error
	closing      chan struct{}
	closeOnce    sync.Once
	closeErr     error
	opened       []string // target names in open order, for closing in reverse
}

// Open opens everything in order and starts serving. On error, whatever was
// opened is closed again.
func (s *Server) Open(ctx context.Context) (err error) {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Clock == nil {
		s.Clock = lapse.SystemClock{}
	}
	s.failed = make(chan error, 2)
	s.closing = make(chan struct{})
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	cfg := s.Config

	// Everything that can be checked without touching a system is checked
	// first, so a typo fails in milliseconds and changes nothing.
	sealingKey, err := cfg.ResolveSealingKey()
	if err != nil {
		return err
	}
	for _, name := range cfg.TargetNames() {
		if _, ok := registry.Kinds[cfg.Targets[name].Kind]; !ok {
			return cfg.TargetError(name, "kind", lapse.FieldErrorf(lapse.EINVALID, "kind", "unknown connector kind %q (known: %s)", cfg.Targets[name].Kind, registry.KnownKinds()))
		}
	}
	dsn, err := cfg.ResolveStoreDSN()
	if err != nil {
		return err
	}
	addr := cfg.Listen
	if s.Listen != "" {
		addr = s.Listen
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return lapse.FieldErrorf(lapse.EINVALID, "listen", "listen address %q is not host:port", addr)
	}

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	if cfg.Store.Driver == sqlstore.DriverSQLite {
		if err := createPrivate(sqlitePath(dsn)); err != nil {
			return fmt.Errorf("create the SQLite database: %w", err)
		}
	}
	s.Store, err = sqlstore.OpenWith(ctx, cfg.Store.Driver, dsn, sqlstore.Options{SkipMigrations: cfg.Store.SkipMigrations})
	if err != nil {
		return fmt.Errorf("open %s store (%s): %w", cfg.Store.Driver, cfg.Store.DSN, err)
	}
	if err := s.Store.Ping(ctx); err != nil {
		return fmt.Errorf("ping %s store: %w", cfg.Store.Driver, err)
	}

	s.Connectors = map[string]connector.Connector{}
	targets := map[string]broker.Target{}
	tokens := map[string]api.TokenTarget{}
	for _, name := range cfg.TargetNames() {
		t := cfg.Targets[name]
		env := connector.Env{
			Name:    name,
			Clock:   s.Clock,
			Store:   s.Store,
			Logger:  s.Logger.With("target", name, "kind", t.Kind),
			DataDir: cfg.DataDir, // connectors name their files after the target
		}
		conn, err := registry.Open(ctx, t.Kind, env, t.Decode)
		if err != nil {
			return cfg.TargetError(name, "config", fmt.Errorf("open %s target: %w", t.Kind, err))
		}
		s.Connectors[name] = conn
		s.opened = append(s.opened, name)
		targets[name] = broker.Target{Kind: t.Kind, Connector: conn, Concurrency: t.Concurrency}
		// Targets that issue tokens also serve JWKS, introspection and
		// the revocation feed.
		if tt, ok := conn.(api.TokenTarget); ok {
			tokens[name] = tt
		}
	}
	for _, e := range cfg.Entitlements {
		if v, ok := s.Connectors[e.Target].(connector.SpecValidator); ok {
			if err := v.ValidateSpec(e.Spec); err != nil {
				return cfg.EntitlementError(e.Name, "spec", err)
			}
		}
		// A use limit holds only where the target counts uses.
		if ul, ok := s.Connectors[e.Target].(connector.UseLimiter); e.MaxUses > 0 && (!ok || !ul.CountsUses()) {
			return cfg.EntitlementError(e.Name, "max_uses", lapse.Errorf(lapse.EINVALID,
				"entitlement %s: target %s (kind %s) cannot count uses; max_uses needs a token target", e.Name, e.Target, cfg.Targets[e.Target].Kind))
		}
	}

	// The audit log opens before the broker: the broker asks it before
	// every new approval and grant (fail closed), and a replica whose key
	// differs from the one that signed the stored checkpoints must not
	// start at all.
	if s.Audit, err = openAuditLog(cfg, s.Store, s.Clock, s.Logger); err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	if err := s.Audit.CheckKey(ctx); err != nil {
		return fmt.Errorf("audit log %s: %w", cfg.Audit.SigningKeyFile, err)
	}

	// Workload identity: key files are read and mappings compiled now;
	// issuers are asked for keys only when a token needs them, so an
	// unreachable issuer never stops a server that must keep revoking.
	var workloads api.Authenticator
	if len(cfg.Workload.Issuers) > 0 {
		v, err := workload.New(cfg.Workload.Issuers, workload.Options{Clock: s.Clock, Logger: s.Logger.With("component", "workload")})
		if err != nil {
			return cfg.WorkloadError(err)
		}
		workloads = v
	}

	// Human sign-in: a bearer that is a JWT goes to the OIDC verifier,
	// anything else to the API keys. Like the workload issuers, identity
	// providers are asked for keys only when an ID token needs them.
	var bearer api.Authenticator = &authn.APIKeys{Keys: s.Store, Clock: s.Clock}
	if len(cfg.OIDC.Issuers) > 0 {
		v, err := oidc.New(cfg.OIDC.Issuers, oidc.Options{Clock: s.Clock, Logger: s.Logger.With("component", "oidc")})
		if err != nil {
			return cfg.OIDCError(err)
		}
		bearer = &authn.Chain{APIKeys: bearer, OIDC: v}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.Broker, err = broker.New(broker.Config{
		Store:      s.Store,
		Clock:      s.Clock,
		Logger:     s.Logger,
		Policy:     cfg.PolicyDocument(),
		Targets:    targets,
		SealingKey: sealingKey,
		Engine: broker.EngineConfig{
			Lease:        cfg.Engine.Lease,
			BatchSize:    cfg.Engine.BatchSize,
			PollInterval: cfg.Engine.PollInterval,
			RetryBase:    cfg.Engine.RetryBase,
			RetryMax:     cfg.Engine.RetryMax,
			OverdueRate:  cfg.Engine.OverdueRate,
			OverdueGrace: cfg.Engine.OverdueGrace,
			ClaimAhead:   cfg.Engine.ClaimAhead,
		},
		Registerer: reg,
		AuditGate:  func(context.Context) error { return s.Audit.Healthy() },
		Escalation: escalationOf(cfg),
	})
	if ee := (*broker.EscalationError)(nil); errors.As(err, &ee) {
		// Admin powers refused by the escalation policy: point at the
		// first such entitlement; the message lists them all.
		return cfg.EntitlementError(ee.Entitlement, "spec", err)
	}
	if err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	reg.MustRegister(auditDegradedGauge(s.Audit))
	if s.Prepare != nil {
		if err := s.Prepare(ctx, s); err != nil {
			return err
		}
	}

	s.ln, err = net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}

	// The engine outlives ctx (the start-up context): it stops in Close,
	// after the HTTP server has drained.
	engineCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.engineCancel = cancel
	s.engineDone = make(chan struct{})
	go func() {
		defer close(s.engineDone)
		err := s.Broker.Run(engineCtx)
		select {
		case <-s.closing:
		default:
			if err == nil {
				err = errors.New("the lifecycle engine stopped")
			}
			s.failed <- fmt.Errorf("lifecycle engine: %w", err)
		}
	}()

	// The sequencer stops after the engine, so the engine's last events
	// are signed.
	auditCtx, auditCancel := context.WithCancel(context.WithoutCancel(ctx))
	s.auditCancel = auditCancel
	s.auditDone = runAudit(auditCtx, s.Audit, s.Logger)

	// The drift reconciler (zsp.drift.interval) stops before the engine
	// and the sequencer, so its last events are signed too.
	if err := s.startDrift(ctx); err != nil {
		return err
	}
	// Webhooks (notify:) tail the event log from their cursor, found
	// before the first call is accepted so none of its events is missed.
	if err := s.startNotify(ctx, reg); err != nil {
		return err
	}
	// The policy in force is recorded, and reloaded on SIGHUP or when
	// one of its files changes.
	if err := s.startPolicyReload(ctx, reg); err != nil {
		return fmt.Errorf("record the policy: %w", err)
	}

	// Announce the server only once it is ready, so /readyz answers 200
	// from the first connection on.
	s.waitReady(ctx)
	if err := s.startCanary(ctx, reg); err != nil {
		return fmt.Errorf("start the canary: %w", err)
	}

	handler := (&api.Server{
		Service:  s.Broker,
		Auth:     bearer,
		Workload: workloads,
		Tokens:   tokens,
		Gatherer: reg,
		Ready:    s.Broker.Ready,
		Degraded: func(context.Context) error { return s.Audit.Healthy() },
		Logger:   s.Logger,
		Audit:    s.Audit,
	}).Handler()
	s.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.failed <- fmt.Errorf("http server: %w", err)
		}
	}()

	s.Logger.Info("lapse server started",
		"version", versionString(),
		"addr", s.ln.Addr().String(),
		"store", cfg.Store.Driver,
		"data_dir", cfg.DataDir,
		"targets", cfg.TargetNames(),
		"entitlements", len(cfg.Entitlements))
	return nil
}

// readyWait bounds how long Open waits for the engine to report ready; it
// is a guard, not an expectation: the engine starts in microseconds.
const readyWait = 30 * time.Second

// waitReady waits until the broker reports ready (the engine runs and the
// store answers), or gives up after readyWait and lets /readyz tell.
func (s *Server) waitReady(ctx context.Context) {
	deadline := time.Now().Add(readyWait)
	for {
		err := s.Broker.Ready(ctx)
		if err == nil {
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			s.Logger.Warn("serving before the broker is ready", "err", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-s.engineDone:
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Failed delivers an error if the HTTP server or the engine stops on its
// own.
func (s *Server) Failed() <-chan error { return s.failed }

// Close shuts down in the order that leaves nothing half done: stop
// accepting and let in-flight calls finish, then stop the engine and wait
// until it has written what it was doing, then close the targets and the
// store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.release() })
	return s.closeErr
}

// release closes whatever Open got to.
func (s *Server) release() error {
	if s.closing != nil {
		select {
		case <-s.closing:
		default:
			close(s.closing)
		}
	}
	var errs []error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := s.http.Shutdown(ctx); err != nil {
			s.Logger.Warn("http calls did not finish in time; closing their connections", "err", err)
			errs = append(errs, s.http.Close())
		}
		cancel()
	} else if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	s.stopCanary() // its revocation in progress is the engine's to finish
	if s.policyCancel != nil {
		s.policyCancel()
		<-s.policyDone
	}
	if s.notifyCancel != nil {
		s.notifyCancel() // what is in flight is sent again after a restart
		waitLogged(s.Logger, s.notifyDone, "waiting for the webhooks' calls in flight to end")
	}
	if s.driftCancel != nil {
		s.driftCancel()
		waitLogged(s.Logger, s.driftDone, "waiting for the drift reconciler to finish its pass")
	}
	if s.engineCancel != nil {
		s.engineCancel()
		waitLogged(s.Logger, s.engineDone, "waiting for the lifecycle engine to finish writing")
	}
	if s.auditCancel != nil {
		s.auditCancel()
		waitLogged(s.Logger, s.auditDone, "waiting for the audit log's last checkpoint")
	}
	for _, name := range slices.Backward(s.opened) {
		if c, ok := s.Connectors[name].(connector.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close target %s: %w", name, err))
			}
		}
	}
	s.opened = nil
	if s.Store != nil {
		if err := s.Store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
		s.Store = nil
	}
	if len(errs) == 0 {
		s.Logger.Info("lapse server stopped")
	}
	return errors.Join(errs...)
}

// waitLogged waits for done, logging every ten seconds, so a shutdown that
// hangs says what it waits for.
func waitLogged(log *slog.Logger, done <-chan struct{}, msg string) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			log.Warn(msg)
		}
	}
}

// sqlitePath returns the file a SQLite DSN names, or "" for a URI whose
// file cannot be told without parsing it as SQLite would.
func sqlitePath(dsn string) string {
	rest, ok := strings.CutPrefix(dsn, "file:")
	if !ok {
		return dsn
	}
	if strings.ContainsAny(rest, "?%#") || strings.HasPrefix(rest, "//") {
		return ""
	}
	return rest
}

// createPrivate creates path empty with mode 0600 if it does not exist, so
// the database (and the WAL files SQLite creates with the same mode) are
// readable by their owner only, whatever the umask.
func createPrivate(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// notifyStateFile is the webhooks' cursor file under data_dir.
const notifyStateFile = "notify-state.json"

// startNotify starts the webhooks of notify: when any is configured. They
// read the store only, each on its own goroutine, so a receiver that is
// slow or gone never holds up the broker; Close stops them.
func (s *Server) startNotify(ctx context.Context, reg prometheus.Registerer) error {
	cfg := s.Config.Notify
	if len(cfg.Webhooks) == 0 {
		return nil
	}
	log := s.Logger.With("component", "notify")
	n, err := notify.New(ctx, notify.Config{
		Store:         s.Store,
		Webhooks:      cfg.Webhooks,
		ExpiryWarning: cfg.ExpiryWarning,
		StateFile:     filepath.Join(s.Config.DataDir, notifyStateFile),
		Clock:         s.Clock,
		Logger:        s.Logger, // the notifier names itself (component=notify)
		Registerer:    reg,
	})
	if err != nil {
		return s.Config.NotifyError(err)
	}
	nctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.notifyCancel = cancel
	s.notifyDone = make(chan struct{})
	go func() {
		defer close(s.notifyDone)
		_ = n.Run(nctx)
	}()
	log.Info("webhooks started", "webhooks", len(cfg.Webhooks), "expiry_warning", cfg.ExpiryWarning.String())
	return nil
}
