package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/zsp"
)

func init() { zspSubcommands = append(zspSubcommands, (*Main).zspReportCommand) }

const outputHTML = "html"

func (m *Main) zspReportCommand() *cobra.Command {
	var (
		f      adminFlags
		output string
		since  time.Duration
		slow   time.Duration
	)
	c := &cobra.Command{
		Use:   "report --config FILE",
		Short: "Report standing privilege, revocation latency, failures and canary results",
		Long: `Report, from the store named by --config, what zero standing privilege looked
like (docs/zsp.md, "Report"): the standing privileges the drift reconciler
found, grants by lane, revocation latency per target (p50, p90, p99, max;
from the deadline, release or revocation until revocation was verified),
revocations that failed (now or ever) or were slower than --slow, and the
session-level tests' results.

-o html writes one self-contained page (inline CSS and SVG charts of the
latency over time and of each grant's exposure window; no script, font or
network access) to standard output.`,
		Example: `  lapse zsp report --config lapse.yaml --since 168h
  lapse zsp report -c lapse.yaml -o html --since 720h > zsp-report.html
  lapse zsp report -c lapse.yaml -o json | jq '.revocation_latency'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch output {
			case outputTable, outputJSON, outputHTML:
			default:
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table, json or html"), command: c.CommandPath()}
			}
			if since < 0 || since > lapse.MaxAnyDuration*10 || slow < 0 {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "since", "--since and --slow must not be negative"), command: c.CommandPath()}
			}
			ctx := c.Context()
			store, err := f.openStore(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			rep, err := zsp.BuildReport(ctx, store, zsp.ReportOptions{Since: since, Slow: slow, Now: m.clock().Now()})
			if err != nil {
				return serverErr(err)
			}
			switch output {
			case outputJSON:
				return writeJSON(m.Stdout, rep)
			case outputHTML:
				return zsp.WriteHTML(m.Stdout, rep)
			}
			printZSPReport(m.Stdout, rep)
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table, json or html")
	c.Flags().DurationVar(&since, "since", 0, "report only the last DUR (e.g. 168h); default: the whole store")
	c.Flags().DurationVar(&slow, "slow", 0, "list revocations slower than this (default 10s)")
	return c
}

// printZSPReport writes the report for a terminal. Every value from the
// store goes through clean (row and fields do it).
func printZSPReport(w io.Writer, rep *zsp.Report) {
	p := &printer{w: w}
	window := "the whole store"
	if !rep.Since.IsZero() {
		window = rep.Since.Format(time.RFC3339) + " to " + rep.GeneratedAt.Format(time.RFC3339)
	}
	p.fields("report", window, "slow threshold", fmtMS(rep.SlowMS))
	section := func(title string) { fmt.Fprintf(w, "\n%s\n%s\n", title, strings.Repeat("-", len(title))) }
	n := strconv.Itoa

	section("Standing privileges found")
	if len(rep.Standing) == 0 {
		fmt.Fprintln(w, "none")
	} else {
		tw := p.table("FOUND", "TARGET", "PRINCIPAL", "KIND", "PRIVILEGES", "REMOVED")
		for _, s := range rep.Standing {
			row(tw, s.Time.Format(time.RFC3339), s.Target, s.Principal, s.Kind, strings.Join(s.Privileges, ","), yesNo(s.Removed))
		}
		tw.Flush()
	}

	section("Grants by lane")
	if len(rep.Lanes) == 0 {
		fmt.Fprintln(w, "none")
	} else {
		tw := p.table("LANE", "GRANTS", "REVOKED", "LIVE")
		for _, l := range rep.Lanes {
			row(tw, l.Lane, n(l.Grants), n(l.Revoked), n(l.Live))
		}
		tw.Flush()
	}

	section("Revocation latency (end → verified; canary grants not counted)")
	if len(rep.Latency) == 0 {
		fmt.Fprintln(w, "no verified revocations")
	} else {
		tw := p.table("TARGET", "REVOCATIONS", "P50", "P90", "P99", "MAX")
		for _, l := range rep.Latency {
			row(tw, l.Target, n(l.Count), fmtMS(l.P50MS), fmtMS(l.P90MS), fmtMS(l.P99MS), fmtMS(l.MaxMS))
		}
		tw.Flush()
	}

	section("Failed or slow revocations")
	if len(rep.Problems) == 0 {
		fmt.Fprintln(w, "none")
	} else {
		tw := p.table("GRANT", "TARGET", "ENTITLEMENT", "STATE", "WHY", "FAILURES", "LATENCY", "LAST ERROR")
		for _, x := range rep.Problems {
			lat := "-"
			if x.LatencyMS > 0 {
				lat = fmtMS(x.LatencyMS)
			}
			row(tw, x.GrantID, x.Target, x.Entitlement, string(x.State), x.Why, n(x.Failures), lat, x.LastError)
		}
		tw.Flush()
	}

	section("Canary results")
	if len(rep.Canaries) == 0 {
		fmt.Fprintln(w, "none (lapse zsp test, or zsp.canary.interval)")
	} else {
		tw := p.table("TIME", "TARGET", "RESULT", "VERIFIED", "LOGIN REFUSED", "SESSION ENDED", "SURVIVING")
		for _, c := range rep.Canaries {
			row(tw, c.Time.Format(time.RFC3339), c.Target, c.Result, fmtMSP(c.Timings.VerifiedMS), fmtMSP(c.Timings.LoginDeniedMS),
				fmtMSP(c.Timings.SessionEndedMS), strings.Join(c.Surviving, "; "))
		}
		tw.Flush()
	}
}

func fmtMS(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2fs", v/1000)
	}
	return fmt.Sprintf("%.1fms", v)
}

func fmtMSP(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmtMS(*v)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
