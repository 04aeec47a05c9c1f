package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/policy"
)

func init() { policySubcommands = append(policySubcommands, (*Main).policyCheckCommand) }

// checkReport is lapse policy check's JSON output.
type checkReport struct {
	File string `json:"file"`
	// Version is the policy's content hash; empty when it does not
	// compile.
	Version      string       `json:"version,omitempty"`
	Entitlements int          `json:"entitlements"`
	Errors       []diagnostic `json:"errors"`
	Warnings     []diagnostic `json:"warnings"`
	// Escalation says whether the escalation lint ran: "checked", or
	// "skipped" without --targets.
	Escalation string `json:"escalation"`
	Strict     bool   `json:"strict"`
	OK         bool   `json:"ok"`
}

func (m *Main) policyCheckCommand() *cobra.Command {
	var configPath, output string
	var strict, targets bool
	c := &cobra.Command{
		Use:   "check --config FILE",
		Short: "Compile and lint the policy; print its version",
		Long: `Load the configuration and its policy files, compile the policy as lapse
server would, and lint it. Errors (the server would not start with this
policy, or would keep the previous one on a reload) and warnings (it would
run, but not as its author meant: an approver group with no members, a
quorum the listed people cannot reach, a condition that reads an on-call
list that does not exist, ...) are printed one a line, as
FILE:LINE:COL: FIELD: MESSAGE. The policy version is printed last.

With --targets, the targets' connectors are opened (and so reached, with
the store, like lapse zsp map) to run the escalation lint the server runs
at start: entitlements whose grants would carry admin powers.

Exits 1 on any error, and with --strict on any warning.`,
		Example: `  lapse policy check --config lapse.yaml
  lapse policy check -c lapse.yaml --strict -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireConfig(c, configPath); err != nil {
				return err
			}
			if err := checkOutput(c, output); err != nil {
				return err
			}
			rep := &checkReport{File: shownPath(configPath), Escalation: "skipped", Strict: strict, Errors: []diagnostic{}, Warnings: []diagnostic{}}
			cfg, err := config.Load(configPath)
			if err != nil {
				rep.Errors = append(rep.Errors, diagnostics(err, severityError, configPath)...)
			} else {
				doc := cfg.PolicyDocument()
				rep.Entitlements = len(doc.Entitlements)
				pol, err := policy.Compile(doc)
				if err != nil {
					rep.Errors = append(rep.Errors, diagnostics(compileErrors(cfg, doc, err), severityError, configPath)...)
				} else {
					rep.Version = (&loadedPolicy{cfg: cfg, pol: pol}).version()
					for _, w := range pol.Lint() {
						rep.Warnings = append(rep.Warnings, lintDiagnostic(cfg, w))
					}
					if targets {
						rep.Escalation = "checked"
						errs, warns, err := m.escalationLint(c, cfg, doc)
						if err != nil {
							return err
						}
						rep.Errors = append(rep.Errors, errs...)
						rep.Warnings = append(rep.Warnings, warns...)
					}
				}
			}
			sortDiagnostics(rep.Warnings)
			rep.OK = len(rep.Errors) == 0 && (!strict || len(rep.Warnings) == 0)
			if output == outputJSON {
				if err := writeJSON(m.Stdout, rep); err != nil {
					return err
				}
			} else {
				printCheck(m.Stdout, rep)
			}
			if !rep.OK {
				return serverErr(fmt.Errorf("policy check failed: %s", countProblems(rep)))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&configPath, "config", "c", "", "configuration file (required)")
	c.Flags().BoolVar(&strict, "strict", false, "treat warnings as errors")
	c.Flags().BoolVar(&targets, "targets", false, "open the targets' connectors and the store to run the escalation lint")
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	return c
}

// lintDiagnostic positions a lint warning at its entitlement's field.
func lintDiagnostic(cfg *config.Config, w policy.Warning) diagnostic {
	msg := lapse.FieldErrorf(lapse.EINVALID, w.Field, "%s", w.Message)
	var err error = &config.Error{File: cfg.File, Path: w.Field, Err: msg}
	if w.Entitlement != "" {
		top, _, _ := strings.Cut(w.Field, ".")
		top, _, _ = strings.Cut(top, "[")
		err = cfg.EntitlementError(w.Entitlement, top, msg)
	}
	d := diagnostics(err, severityWarning, cfg.File)[0]
	d.Code = w.Code
	return d
}

// escalationLint runs broker.CheckEscalation, the check lapse server runs
// when it installs a catalog, on connectors opened like lapse zsp map
// opens them. What the server would refuse is an error; an entitlement it
// would serve with the highest approval tier is a warning.
func (m *Main) escalationLint(c *cobra.Command, cfg *config.Config, doc policy.Document) (errs, warns []diagnostic, err error) {
	l, err := m.openZSPLocal(c.Context(), c, cfg, nil)
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	for _, name := range cfg.TargetNames() {
		if err := l.failed[name]; err != nil {
			errs = append(errs, diagnostics(err, severityError, cfg.File)...)
		}
	}
	targets := map[string]broker.Target{}
	for name, conn := range l.conns {
		targets[name] = broker.Target{Kind: cfg.Targets[name].Kind, Connector: conn}
	}
	var checked []*lapse.Entitlement
	for _, e := range doc.Entitlements {
		if v, ok := l.conns[e.Target].(connector.SpecValidator); ok {
			if err := v.ValidateSpec(e.Spec); err != nil {
				errs = append(errs, diagnostics(cfg.EntitlementError(e.Name, "spec", err), severityError, cfg.File)...)
				continue
			}
		}
		checked = append(checked, e)
	}
	x := cfg.Escalation
	for _, f := range broker.CheckEscalation(c.Context(), checked, targets, escalationOf(cfg)) {
		// The broker refuses such an entitlement unless the policy serves
		// it with the highest tier (broker.escalate); say which it will do.
		_, acknowledged := x.Acknowledged[f.Entitlement]
		if x.Mode == config.EscalationHighestTier || acknowledged {
			warns = append(warns, lintDiagnostic(cfg, policy.Warning{Code: "escalation_" + f.Source, Entitlement: f.Entitlement, Field: "spec",
				Message: f.What + ": served with the highest approval tier"}))
			continue
		}
		err := cfg.EntitlementError(f.Entitlement, "spec", lapse.FieldErrorf(lapse.EFORBIDDEN, "spec", "%s: the server refuses this entitlement (escalation.mode refuse): take the powers away, or acknowledge it", f.What))
		errs = append(errs, diagnostics(err, severityError, cfg.File)...)
	}
	return errs, warns, nil
}

func printCheck(w io.Writer, rep *checkReport) {
	for _, d := range rep.Errors {
		fmt.Fprintln(w, d)
	}
	for _, d := range rep.Warnings {
		fmt.Fprintln(w, d)
	}
	if rep.Version != "" {
		fmt.Fprintf(w, "%s: policy %s (%s)\n", rep.File, rep.Version, plural(rep.Entitlements, "entitlement", "entitlements"))
	} else {
		fmt.Fprintf(w, "%s: the policy does not compile\n", rep.File)
	}
	if rep.Escalation == "skipped" && rep.Version != "" {
		fmt.Fprintln(w, "escalation lint skipped: --targets opens the targets to run it")
	}
	if rep.OK {
		fmt.Fprintf(w, "ok: %s\n", countProblems(rep))
	}
}

// countProblems says "no errors, 2 warnings".
func countProblems(rep *checkReport) string {
	count := func(n int, one, many string) string {
		if n == 0 {
			return "no " + many
		}
		return plural(n, one, many)
	}
	s := count(len(rep.Errors), "error", "errors") + ", " + count(len(rep.Warnings), "warning", "warnings")
	if rep.Strict && len(rep.Warnings) > 0 {
		s += " (errors with --strict)"
	}
	return s
}
