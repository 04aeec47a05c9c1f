package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/registry"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/zsp"
)

func init() { zspSubcommands = append(zspSubcommands, (*Main).zspTestCommand) }

func (m *Main) zspTestCommand() *cobra.Command {
	var (
		f            adminFlags
		output       string
		entitlements []string
		duration     time.Duration
		timeout      time.Duration
	)
	c := &cobra.Command{
		Use:   "test [TARGET...] --config FILE",
		Short: "Grant, use, revoke and prove that access is refused, held sessions included",
		Long: `Run the session-level test of each target (docs/zsp.md, "Session-level
tests"): grant the target's canary entitlement to the canary principal
lapse:canary (without approval: an administrative act, recorded), log in
with it and hold an extra session open, release it and carry out the
verified revocation, then check with the target's own client library that
a new login is refused and that the held session has ended. The times from
the release until each was refused are measured and recorded in the
canary grant's history (events zsp.canary_passed / zsp.canary_failed).

The canary entitlement of a target is the first of zsp.canary.entitlements
(or --entitlement) on it, else the target's first entitlement. Without
TARGET every target is tested and those that cannot be (no entitlement,
a connector that cannot act as a grantee) are skipped; a named target that
cannot be tested fails.

The command reads the configuration and the store directly, like lapse
admin, and needs no server. It carries out only its own grants'
revocations; a running server on the same store may do that work instead.
Exits 1 when any test fails, naming what survived.`,
		Example: `  lapse zsp test --config lapse.yaml
  lapse zsp test orders-db cache -c lapse.yaml -o json
  lapse zsp test orders-db -c lapse.yaml --entitlement orders-db/canary`,
		RunE: func(c *cobra.Command, targets []string) error {
			if output != outputTable && output != outputJSON {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table or json"), command: c.CommandPath()}
			}
			if f.config == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
			}
			if duration < 0 || duration > broker.MaxCanaryDuration || timeout < 0 {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "duration", "--duration must be at most %s, --timeout not negative", broker.MaxCanaryDuration), command: c.CommandPath()}
			}
			ctx := c.Context()
			cfg, err := config.Load(f.config)
			if err != nil {
				return err
			}
			logger, err := m.newLogger(cfg)
			if err != nil {
				return err
			}
			env, err := openTestEnv(ctx, cfg, m.clock(), logger)
			if err != nil {
				return serverErr(err)
			}
			defer env.Close()
			st := env.tester(cfg, entitlements)
			st.Duration, st.Timeout = duration, timeout
			if err := st.Validate(); err != nil {
				return &usageError{err: err, command: c.CommandPath()}
			}
			results, err := st.Run(ctx, targets)
			if err != nil {
				return &usageError{err: err, command: c.CommandPath()}
			}
			if output == outputJSON {
				if err := writeJSON(m.Stdout, map[string]any{"results": results}); err != nil {
					return err
				}
			} else {
				printSessionResults(m.Stdout, results)
			}
			var failed []string
			for _, r := range results {
				if r.Result == zsp.ResultFailed {
					failed = append(failed, r.Target)
				}
			}
			if len(failed) > 0 {
				return serverErr(fmt.Errorf("session-level test failed on %s", strings.Join(failed, ", ")))
			}
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	c.Flags().StringSliceVar(&entitlements, "entitlement", nil, "canary entitlement of its target (repeatable; overrides zsp.canary.entitlements for that target)")
	c.Flags().DurationVar(&duration, "duration", 0, "length of each canary grant (default 2m, at most 10m)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "bound on the test of one target (default 2m)")
	return c
}

// printSessionResults writes one block per target.
func printSessionResults(w io.Writer, results []*zsp.SessionResult) {
	ms := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", *v)
	}
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(w)
		}
		p := &printer{w: w}
		p.fields(
			"target", r.Target,
			"result", strings.ToUpper(r.Result),
			"entitlement", r.Entitlement,
			"grant", r.GrantID,
			"grant state", string(r.GrantState),
			"held session", r.HeldSession,
			"revocation verified", ms(r.Timings.VerifiedMS),
			"new login refused", ms(r.Timings.LoginDeniedMS),
			"held session ended", ms(r.Timings.SessionEndedMS),
		)
		for _, s := range r.Surviving {
			fmt.Fprintf(w, "  SURVIVED: %s\n", clean(s))
		}
		for _, s := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", clean(s))
		}
	}
}

// testEnv is what a session-level test needs outside a server: the store,
// the targets' connectors and a broker over them.
type testEnv struct {
	store      *sqlstore.Store
	broker     *broker.Broker
	connectors map[string]connector.Connector
	opened     []string
	logger     *slog.Logger
	// releaseLeases ends the broker's hold on the store's engine lock.
	releaseLeases func()
}

// openTestEnv opens the store and every target of cfg, and a broker over
// them whose engine does not run (broker.ReleaseCanary does the canary's
// own revocations). On error whatever was opened is closed.
func openTestEnv(ctx context.Context, cfg *config.Config, clock lapse.Clock, logger *slog.Logger) (_ *testEnv, err error) {
	sealingKey, err := cfg.ResolveSealingKey()
	if err != nil {
		return nil, err
	}
	dsn, err := cfg.ResolveStoreDSN()
	if err != nil {
		return nil, err
	}
	e := &testEnv{connectors: map[string]connector.Connector{}, logger: logger}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	if cfg.Store.Driver == sqlstore.DriverSQLite {
		if err := createPrivate(sqlitePath(dsn)); err != nil {
			return nil, fmt.Errorf("create the SQLite database: %w", err)
		}
	}
	e.store, err = sqlstore.OpenWith(ctx, cfg.Store.Driver, dsn, sqlstore.Options{SkipMigrations: cfg.Store.SkipMigrations})
	if err != nil {
		return nil, fmt.Errorf("open %s store (%s): %w", cfg.Store.Driver, cfg.Store.DSN, err)
	}
	targets := map[string]broker.Target{}
	for _, name := range cfg.TargetNames() {
		t := cfg.Targets[name]
		env := connector.Env{Name: name, Clock: clock, Store: e.store, Logger: logger.With("target", name, "kind", t.Kind), DataDir: cfg.DataDir}
		conn, err := registry.Open(ctx, t.Kind, env, t.Decode)
		if err != nil {
			return nil, cfg.TargetError(name, "config", fmt.Errorf("open %s target: %w", t.Kind, err))
		}
		e.connectors[name] = conn
		e.opened = append(e.opened, name)
		targets[name] = broker.Target{Kind: t.Kind, Connector: conn, Concurrency: t.Concurrency}
	}
	// A random owner: this process's leases are its own.
	owner := "lapse-zsp-test-" + strings.ToLower(rand.Text()[:10])
	e.broker, err = broker.New(broker.Config{
		Store: e.store, Clock: clock, Logger: logger, Catalog: cfg.Entitlements, Targets: targets, SealingKey: sealingKey,
		Engine: broker.EngineConfig{Owner: owner, Lease: cfg.Engine.Lease},
	})
	if err != nil {
		return nil, err
	}
	// The canary holds leases without an engine: a server that starts
	// meanwhile must not free them as a dead process's.
	e.releaseLeases = e.broker.HoldLeases(ctx)
	return e, nil
}

// tester is a session tester over e with the configuration's canary
// entitlements; extra ones (the --entitlement flag) come first.
func (e *testEnv) tester(cfg *config.Config, extra []string) *zsp.SessionTester {
	return newSessionTester(cfg, e.broker, e.connectors, e.logger, extra)
}

// newSessionTester builds the session tester of a configuration.
func newSessionTester(cfg *config.Config, b *broker.Broker, conns map[string]connector.Connector, logger *slog.Logger, extra []string) *zsp.SessionTester {
	return &zsp.SessionTester{
		Broker:       b,
		Connectors:   conns,
		Catalog:      cfg.Entitlements,
		Entitlements: append(slices.Clone(extra), cfg.ZSP.Canary.Entitlements...),
		Logger:       logger.With("component", "zsp-canary"),
	}
}

// Close releases the engine lock, closes the targets in reverse order, then
// the store.
func (e *testEnv) Close() {
	if e.releaseLeases != nil {
		e.releaseLeases()
	}
	for _, name := range slices.Backward(e.opened) {
		if c, ok := e.connectors[name].(connector.Closer); ok {
			_ = c.Close()
		}
	}
	if e.store != nil {
		_ = e.store.Close()
	}
}

// canary is the scheduled session-level test of lapse server
// (zsp.canary.interval).
type canary struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startCanary starts the scheduled canary when the configuration asks for
// one, with its metrics on reg. It stops in stopCanary, before the engine.
func (s *Server) startCanary(ctx context.Context, reg prometheus.Registerer) error {
	interval := s.Config.ZSP.Canary.Interval
	if interval <= 0 {
		return nil
	}
	st := newSessionTester(s.Config, s.Broker, s.Connectors, s.Logger, nil)
	if err := st.Validate(); err != nil {
		return err
	}
	st.Metrics = zsp.NewCanaryMetrics(reg, st.Targets())
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.canary = &canary{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.canary.done)
		st.RunEvery(ctx, interval)
	}()
	return nil
}

// stopCanary stops the scheduled canary and waits for a run in progress
// to finish its revocation.
func (s *Server) stopCanary() {
	if s.canary == nil {
		return
	}
	s.canary.cancel()
	waitLogged(s.Logger, s.canary.done, "waiting for the canary's run to finish")
}
