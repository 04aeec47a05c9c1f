package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/zsp"
)

func init() { zspSubcommands = append(zspSubcommands, (*Main).zspDriftCommand) }

func (m *Main) zspDriftCommand() *cobra.Command {
	var (
		configPath, output string
		remove             bool
	)
	c := &cobra.Command{
		Use:   "drift --config FILE",
		Short: "Find privileges on the targets that no active grant explains",
		Long: `List what every configured target holds (each connector's Discover, with
the catalog's specs) and flag every privilege no active grant explains: a
principal Lapse made whose grant is not live in the store (an orphan), or
an account that holds an entitled role or privilege on its own (standing
privilege). Every finding is recorded in the audit log (zsp.drift_found),
and the pass itself (zsp.drift_checked), as the operating-system user.

With --remove (default: the configuration's zsp.drift.remove) orphans are
removed with the connector's own Revoke and Verify, and each removal is
recorded (zsp.drift_removed). Standing privilege is only ever reported.
It reads the store and the targets directly, like lapse admin; lapse server
runs the same check every zsp.drift.interval (docs/zsp.md).

Exits 1 when drift is found or a target could not be checked.`,
		Example: `  lapse zsp drift --config lapse.yaml
  lapse zsp drift -c lapse.yaml --remove -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if configPath == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
			}
			if output != outputTable && output != outputJSON {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table or json"), command: c.CommandPath()}
			}
			ctx := lapse.WithChannel(c.Context(), lapse.ChannelCLI)
			cfg, err := config.Load(configPath)
			if err != nil {
				return err
			}
			if !c.Flags().Changed("remove") {
				remove = cfg.ZSP.Drift.Remove
			}
			l, err := m.openZSPLocal(ctx, c, cfg, nil)
			if err != nil {
				return err
			}
			defer l.Close()
			actor := localActor()
			r, err := zsp.NewReconciler(zsp.DriftConfig{
				Store: l.store, Clock: m.clock(), Catalog: catalogOf(cfg, l), Targets: l.conns, Remove: remove, Actor: &actor,
			})
			if err != nil {
				return serverErr(err)
			}
			rep, err := r.Check(ctx)
			if err != nil {
				return serverErr(err)
			}
			// Targets that could not even be opened are as unchecked as
			// those whose Discover failed.
			for _, name := range cfg.TargetNames() {
				if err := l.failed[name]; err != nil {
					rep.Targets = append(rep.Targets, zsp.TargetReport{Name: name, Error: "open: " + err.Error()})
				}
			}
			if output == outputJSON {
				if err := writeJSON(m.Stdout, rep); err != nil {
					return err
				}
			} else {
				printDrift(m.Stdout, rep)
			}
			var problems []string
			if n := rep.Drift(); n > 0 {
				problems = append(problems, fmt.Sprintf("drift found: %s no active grant explains", plural(n, "privilege", "privileges")))
			}
			if inc := rep.Incomplete(); len(inc) > 0 {
				problems = append(problems, "targets not checked: "+strings.Join(inc, ", "))
			}
			if len(problems) > 0 {
				return serverErr(fmt.Errorf("%s", strings.Join(problems, "; ")))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&configPath, "config", "c", "", "configuration file (required)")
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	c.Flags().BoolVar(&remove, "remove", false, "remove orphaned principals Lapse made (default: zsp.drift.remove)")
	return c
}

// catalogOf is the part of the catalog whose targets could be opened: the
// reconciler needs a connector for every entitlement it reads specs from.
func catalogOf(cfg *config.Config, l *zspLocal) []*lapse.Entitlement {
	var out []*lapse.Entitlement
	for _, e := range cfg.Entitlements {
		if _, ok := l.conns[e.Target]; ok {
			out = append(out, e)
		}
	}
	return out
}

// printDrift writes a drift report for people.
func printDrift(w io.Writer, rep *zsp.DriftReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tPRINCIPALS\tEXPLAINED\tDRIFT\tSTATUS")
	for _, t := range rep.Targets {
		status := "checked"
		if t.Error != "" {
			status = "NOT CHECKED: " + t.Error
		}
		row(tw, t.Name, fmt.Sprint(t.Principals), fmt.Sprint(t.Explained), fmt.Sprint(t.Findings), truncate(status, 120))
	}
	tw.Flush()
	if len(rep.Findings) == 0 {
		if len(rep.Incomplete()) == 0 {
			fmt.Fprintln(w, "\nNo drift: every privilege found is explained by an active grant.")
		}
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tKIND\tPRINCIPAL\tGRANT\tACTION\tPRIVILEGES\tREASON")
	for _, f := range rep.Findings {
		action := f.Action
		if f.Removal != nil && f.Removal.Error != "" {
			action += ": " + f.Removal.Error
		}
		row(tw, f.Target, f.Kind, f.Principal, f.GrantID, truncate(action, 80), truncate(strings.Join(f.Privileges, " "), 60), f.Reason)
	}
	tw.Flush()
}

// startDrift starts the drift reconciler of a server when the
// configuration schedules it (zsp.drift.interval), on the server's store
// and connectors. It runs a pass at once and then every interval; Close
// stops it.
func (s *Server) startDrift(ctx context.Context) error {
	z := s.Config.ZSP.Drift
	if z.Interval <= 0 {
		return nil
	}
	log := s.Logger.With("component", "drift")
	r, err := zsp.NewReconciler(zsp.DriftConfig{
		Store: s.Store, Clock: s.Clock, Logger: log, Catalog: s.Config.Entitlements, Targets: s.Connectors, Remove: z.Remove,
	})
	if err != nil {
		return fmt.Errorf("start the drift reconciler: %w", err)
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.driftCancel = cancel
	s.driftDone = make(chan struct{})
	go func() {
		defer close(s.driftDone)
		_ = r.Run(dctx, z.Interval)
	}()
	log.Info("drift reconciler started", "interval", z.Interval.String(), "remove", z.Remove)
	return nil
}
