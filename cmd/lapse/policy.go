package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/policy"
)

// policyCommand is `lapse policy`: the policy tooling, offline (no server):
// check a policy, run its decision tests, explain one decision. Each
// subcommand lives in its own file: policy_check.go, policy_test_cmd.go,
// policy_explain.go. All three load the policy the way lapse server does
// (config.Load, then policy.Compile) and ask it the same functions the
// broker asks, so what they say is what the server would do.
func (m *Main) policyCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Check a policy, run its decision tests, explain a decision",
		Long: `Work with the policy offline, exactly as lapse server compiles and applies it
(docs/policy.md): check that it compiles and lint it (check), run its
decision tests (test), and explain why a principal may or may not get an
entitlement and who can approve it (explain).`,
	}
	for _, sub := range policySubcommands {
		c.AddCommand(sub(m))
	}
	return c
}

// policySubcommands are registered by the files that define them (init),
// so each subcommand stays in its own file.
var policySubcommands []func(*Main) *cobra.Command

// loadedPolicy is a configuration and the policy compiled from it.
type loadedPolicy struct {
	cfg *config.Config
	pol *policy.Policy
}

// escalationOf is the broker's escalation policy from the configuration.
func escalationOf(cfg *config.Config) broker.EscalationPolicy {
	x := cfg.Escalation
	return broker.EscalationPolicy{Mode: x.Mode, Approval: x.Approval, Acknowledged: x.Acknowledged}
}

// version is the policy version lapse server gives cfg's policy: its
// content hash, with the escalation policy.
func (lp *loadedPolicy) version() string {
	v, err := broker.PolicyVersion(lp.cfg.PolicyDocument(), escalationOf(lp.cfg))
	if err != nil {
		return lp.pol.Version()
	}
	return v
}

// loadPolicy loads the configuration at path and compiles its policy, as
// lapse server does. Errors are *config.Error values when the file is at
// fault (positioned, joined when there are several).
func loadPolicy(path string) (*loadedPolicy, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	doc := cfg.PolicyDocument()
	pol, err := policy.Compile(doc)
	if err != nil {
		return nil, compileErrors(cfg, doc, err)
	}
	return &loadedPolicy{cfg: cfg, pol: pol}, nil
}

// compileErrors positions the errors of policy.Compile. Compile stops at
// the first error and names the entitlement only in its message, so each
// entitlement is compiled on its own to find every one at fault and place
// it at its field; an error no single entitlement has (a name defined
// twice) is returned as Compile gave it.
func compileErrors(cfg *config.Config, doc policy.Document, whole error) error {
	var errs []error
	for _, e := range doc.Entitlements {
		one := policy.Document{Entitlements: []*lapse.Entitlement{e}, Groups: doc.Groups, OnCall: doc.OnCall}
		if _, err := policy.Compile(one); err != nil {
			field, _, _ := strings.Cut(lapse.ErrorField(err), ".")
			errs = append(errs, cfg.EntitlementError(e.Name, field, err))
		}
	}
	if len(errs) == 0 {
		return &config.Error{File: cfg.File, Err: whole}
	}
	return errors.Join(errs...)
}

// diagnostic is one error or warning of lapse policy check or lapse
// policy test, at a place in a file.
type diagnostic struct {
	File     string `json:"file"`
	Line     int    `json:"line,omitempty"`
	Column   int    `json:"column,omitempty"`
	Field    string `json:"field,omitempty"`
	Severity string `json:"severity"` // "error" or "warning"
	// Code is the stable code: a Lapse error code for errors, a lint code
	// (policy.Lint*) for warnings.
	Code    string `json:"code"`
	Message string `json:"message"`
}

// String renders d the way compilers do, so editors can jump to it:
// "policy/db.yaml:14:7: entitlements[0].approval: message", with
// "warning: " before the message of a warning and its code after it.
func (d diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d", d.Line)
		if d.Column > 0 {
			fmt.Fprintf(&b, ":%d", d.Column)
		}
	}
	b.WriteString(": ")
	if d.Field != "" {
		b.WriteString(d.Field + ": ")
	}
	if d.Severity == severityWarning {
		b.WriteString("warning: " + d.Message + " [" + d.Code + "]")
	} else {
		b.WriteString(d.Message)
	}
	// A CEL error spans lines (the expression, a caret under the fault):
	// keep them, indented under the first, each cleaned on its own.
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(clean(l), " ")
	}
	return strings.Join(lines, "\n    ")
}

// sortDiagnostics orders ds by file, line and column, as an editor lists
// them.
func sortDiagnostics(ds []diagnostic) {
	slices.SortStableFunc(ds, func(a, b diagnostic) int {
		if c := strings.Compare(a.File, b.File); c != 0 {
			return c
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
}

const (
	severityError   = "error"
	severityWarning = "warning"
)

// diagnostics flattens err (joined errors included) into diagnostics.
// fallback names the file of an error that carries no position.
func diagnostics(err error, severity, fallback string) []diagnostic {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []diagnostic
		for _, e := range j.Unwrap() {
			out = append(out, diagnostics(e, severity, fallback)...)
		}
		return out
	}
	d := diagnostic{File: shownPath(fallback), Severity: severity, Code: lapse.ErrorCode(err), Message: err.Error()}
	var ce *config.Error
	var fe *policy.FixtureError
	switch {
	case errors.As(err, &ce):
		d.File, d.Line, d.Column, d.Field, d.Message = shownPath(ce.File), ce.Line, ce.Column, ce.Path, causeMessage(ce.Err)
		d.Code = lapse.ErrorCode(ce.Err)
	case errors.As(err, &fe):
		d.File, d.Line, d.Column, d.Field, d.Message = shownPath(fe.File), fe.Line, fe.Column, fe.Field, causeMessage(fe.Err)
	default:
		var le *lapse.Error
		if errors.As(err, &le) {
			d.Message, d.Field = causeMessage(le), le.Field
		}
	}
	return []diagnostic{d}
}

// causeMessage is what an operator reads about err, the way config.Error
// words it: a *lapse.Error's message and its cause.
func causeMessage(err error) string {
	var le *lapse.Error
	if errors.As(err, &le) && le.Message != "" {
		if le.Err != nil {
			return le.Message + ": " + le.Err.Error()
		}
		return le.Message
	}
	if err == nil {
		return "invalid"
	}
	return err.Error()
}

// shownPath shows an absolute path (the configuration resolves policy
// files to absolute paths) relative to the working directory when it can,
// so that output names files the way the user named them and does not
// depend on where the checkout is.
func shownPath(p string) string {
	if !filepath.IsAbs(p) {
		return filepath.ToSlash(p)
	}
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if rel, err := filepath.Rel(wd, p); err == nil {
		return filepath.ToSlash(rel)
	}
	return p
}

// policyStats says what a policy holds: "9 entitlements, 4 groups, 2
// on-call lists".
func policyStats(doc policy.Document) string {
	return fmt.Sprintf("%s, %s, %s", plural(len(doc.Entitlements), "entitlement", "entitlements"),
		plural(len(doc.Groups), "group", "groups"), plural(len(doc.OnCall), "on-call list", "on-call lists"))
}

// checkOutput validates -o for the policy commands.
func checkOutput(c *cobra.Command, output string) error {
	if output != outputTable && output != outputJSON {
		return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table or json"), command: c.CommandPath()}
	}
	return nil
}

// requireConfig refuses a missing --config.
func requireConfig(c *cobra.Command, path string) error {
	if path == "" {
		return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
	}
	return nil
}
