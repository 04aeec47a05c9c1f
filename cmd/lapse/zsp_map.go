package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/registry"
	"github.com/lapsehq/lapse/sqlstore"
)

func init() { zspSubcommands = append(zspSubcommands, (*Main).zspMapCommand) }

// zspLocal is what lapse zsp map and lapse zsp drift open from --config,
// like lapse admin: the store and the targets' connectors, without a
// server.
type zspLocal struct {
	cfg    *config.Config
	store  *sqlstore.Store
	conns  map[string]connector.Connector
	failed map[string]error // targets that could not be opened
	opened []string
}

// openZSPLocal opens the store of cfg and the connectors of targets (all of them when targets is nil). A target that
// cannot be opened is recorded in failed; the others are still opened.
func (m *Main) openZSPLocal(ctx context.Context, c *cobra.Command, cfg *config.Config, targets []string) (*zspLocal, error) {
	f := adminFlags{config: cfg.File}
	store, err := f.openStore(ctx, c)
	if err != nil {
		return nil, err
	}
	level := slog.LevelWarn
	if m.logLevel != "" {
		if err := level.UnmarshalText([]byte(m.logLevel)); err != nil || !validLevel(m.logLevel) {
			store.Close()
			return nil, usageFieldErrorf("log-level", "--log-level must be debug, info, warn or error")
		}
	}
	logger := slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: level}))
	l := &zspLocal{cfg: cfg, store: store, conns: map[string]connector.Connector{}, failed: map[string]error{}}
	if targets == nil {
		targets = cfg.TargetNames()
	}
	for _, name := range targets {
		t := cfg.Targets[name]
		env := connector.Env{Name: name, Clock: m.clock(), Store: store, Logger: logger.With("target", name, "kind", t.Kind), DataDir: cfg.DataDir}
		conn, err := registry.Open(ctx, t.Kind, env, t.Decode)
		if err != nil {
			l.failed[name] = cfg.TargetError(name, "config", fmt.Errorf("open %s target: %w", t.Kind, err))
			continue
		}
		l.conns[name] = conn
		l.opened = append(l.opened, name)
	}
	return l, nil
}

// Close closes the connectors and the store.
func (l *zspLocal) Close() {
	for _, name := range slices.Backward(l.opened) {
		if c, ok := l.conns[name].(connector.Closer); ok {
			c.Close()
		}
	}
	l.store.Close()
}

// mappedEntitlement is one entitlement in lapse zsp map's JSON output.
type mappedEntitlement struct {
	Name        string          `json:"name"`
	Target      string          `json:"target"`
	Kind        string          `json:"target_kind"`
	MaxDuration lapse.Duration  `json:"max_duration"`
	Exposure    *lapse.Exposure `json:"exposure,omitempty"`
	// Error says why the target's connector could not be opened; the
	// exposure then holds only what the configuration says.
	Error string `json:"error,omitempty"`
}

func (m *Main) zspMapCommand() *cobra.Command {
	var configPath, output string
	c := &cobra.Command{
		Use:   "map [ENTITLEMENT] --config FILE",
		Short: "Show each entitlement's checkpoint map and worst-case exposure after revocation",
		Long: `Show, for every entitlement (or the one named), where its access is
created and consumed, how each place is killed and verified on revocation,
how long access can outlive revocation there, and the entitlement's
worst-case exposure bound against its limit (docs/zsp.md). The map is the
target connector's own, completed with the paths the configuration adds,
exactly as lapse server enforces it. The targets' connectors are opened
(and so reached) to read their settings.

Exits 1 when an entitlement's bound exceeds its limit with over_limit:
refuse (no grant of it can be made), or a target cannot be opened.`,
		Example: `  lapse zsp map --config lapse.yaml
  lapse zsp map prod-db/read -c lapse.yaml -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if configPath == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
			}
			if output != outputTable && output != outputJSON {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table or json"), command: c.CommandPath()}
			}
			ctx := c.Context()
			cfg, err := config.Load(configPath)
			if err != nil {
				return err
			}
			ents := cfg.Entitlements
			if len(args) == 1 {
				i := slices.IndexFunc(ents, func(e *lapse.Entitlement) bool { return e.Name == args[0] })
				if i < 0 {
					return lapse.FieldErrorf(lapse.ENOTFOUND, "entitlement", "no entitlement named %s in %s", args[0], configPath)
				}
				ents = ents[i : i+1]
			}
			var targets []string
			for _, e := range ents {
				if !slices.Contains(targets, e.Target) {
					targets = append(targets, e.Target)
				}
			}
			l, err := m.openZSPLocal(ctx, c, cfg, targets)
			if err != nil {
				return err
			}
			defer l.Close()

			var out []mappedEntitlement
			var refused, broken []string
			for _, e := range ents {
				me := mappedEntitlement{Name: e.Name, Target: e.Target, Kind: l.cfg.Targets[e.Target].Kind, MaxDuration: e.MaxDuration}
				conn := l.conns[e.Target]
				if err := l.failed[e.Target]; err != nil {
					me.Error = err.Error()
					broken = append(broken, e.Target)
					conn = nil
				}
				me.Exposure = connector.Exposure(conn, e)
				if me.Exposure.Exceeded && me.Exposure.Policy() == lapse.OverLimitRefuse {
					refused = append(refused, e.Name)
				}
				out = append(out, me)
			}
			if output == outputJSON {
				if out == nil {
					out = []mappedEntitlement{}
				}
				if err := writeJSON(m.Stdout, map[string]any{"entitlements": out}); err != nil {
					return err
				}
			} else {
				for i := range out {
					printMap(m.Stdout, &out[i])
				}
			}
			switch {
			case len(broken) > 0:
				slices.Sort(broken)
				return serverErr(fmt.Errorf("targets could not be opened, their connectors' paths are missing: %s", strings.Join(slices.Compact(broken), ", ")))
			case len(refused) > 0:
				return serverErr(fmt.Errorf("%s: worst-case exposure exceeds the limit and over_limit is refuse, so no grant can be made", strings.Join(refused, ", ")))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&configPath, "config", "c", "", "configuration file (required)")
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	return c
}

// printMap writes one entitlement's map for people.
func printMap(w io.Writer, me *mappedEntitlement) {
	x := me.Exposure
	fmt.Fprintf(w, "%s  (target %s, %s; max_duration %s)\n", clean(me.Name), clean(me.Target), clean(me.Kind), me.MaxDuration)
	if me.Error != "" {
		fmt.Fprintf(w, "  ! %s\n", clean(me.Error))
	}
	for i := range x.Paths {
		p := &x.Paths[i]
		fmt.Fprintf(w, "  %s  [%s, from %s]\n", clean(p.Name), p.Kind, p.Source)
		for _, kv := range [][2]string{
			{"created at", p.CreatedAt}, {"consumed at", p.ConsumedAt}, {"kill", p.Kill}, {"verify", p.Verify}, {"outlives", p.OutlivesText()},
		} {
			v := kv[1]
			if v == "" {
				v = "-"
			}
			fmt.Fprintf(w, "      %-12s %s\n", kv[0], clean(v))
		}
	}
	if len(x.Paths) == 0 {
		fmt.Fprintln(w, "  (no paths: the connector declares none and the configuration adds none)")
	}
	fmt.Fprintf(w, "  %-14s %s\n", "bound", clean(x.BoundText(me.MaxDuration.D())))
	limit := "none"
	if x.Limit > 0 {
		limit = x.Limit.String() + " (over_limit: " + x.Policy() + ")"
	}
	verdict := "within the limit"
	switch {
	case x.Limit == 0:
		verdict = "no limit"
	case x.Exceeded && x.Policy() == lapse.OverLimitApproval && x.Approval != nil:
		verdict = fmt.Sprintf("EXCEEDED: requests need the higher tier, %s from %s", plural(x.Approval.Required, "approval", "approvals"), strings.Join(x.Approval.Approvers, ", "))
	case x.Exceeded:
		verdict = "EXCEEDED: requests are refused"
	}
	fmt.Fprintf(w, "  %-14s %s — %s\n\n", "limit", limit, clean(verdict))
}
