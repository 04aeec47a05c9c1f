package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

func init() { policySubcommands = append(policySubcommands, (*Main).policyExplainCommand) }

func (m *Main) policyExplainCommand() *cobra.Command {
	var (
		configPath, output, id, kind, at, duration, reason, ticket, task, startAt string
		groups, act                                                               []string
		breakGlass                                                                bool
	)
	c := &cobra.Command{
		Use:   "explain ENTITLEMENT --config FILE --principal ID",
		Short: "Explain why a principal may or may not get an entitlement, and who can approve",
		Long: `Explain what the policy says of a request for ENTITLEMENT by a principal: each
check in the order lapse server makes it (lane, requesters, the input's
duration, reason, ticket and scheduled start, the condition with its
source and result, break glass, auto, auto_when, the stages), the outcome
the server would reach, the break-glass path and its limits, and the
stages with the approver entries of each group and, for the groups the
policy defines itself, their members. The principal never approves their
own request, so they are left out of every list.

The principal is who the identity layer would present: --principal ID,
--kind (human, service or agent), the groups their identity provider
gives them (--group, repeatable; the policy's own groups are added from
the policy), and for an agent the principals it acts for (--act). The
request is described by --for, --reason, --ticket, --task, --start-at and
--break-glass, as lapse request takes them.

--at sets the time the request is decided (RFC 3339; default now).
--start-at is an RFC 3339 time or a duration after --at, like 2h.
The exit status is 0 whatever the outcome: a refusal is an answer.`,
		Example: `  lapse policy explain db/prod-read --config lapse.yaml --principal alice --group developers
  lapse policy explain db/prod-write -c lapse.yaml --principal bob --at 2026-03-02T22:00:00Z --break-glass --reason "INC-4411: primary is down"
  lapse policy explain deploy/ci -c lapse.yaml --principal gha:acme/app@refs/heads/main --kind service -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := requireConfig(c, configPath); err != nil {
				return err
			}
			if err := checkOutput(c, output); err != nil {
				return err
			}
			usage := func(field, format string, a ...any) error {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, field, format, a...), command: c.CommandPath()}
			}
			if id == "" {
				return usage("principal", "--principal ID is required: who asks")
			}
			pr := &lapse.Principal{Kind: lapse.PrincipalKind(kind)}
			var err error
			if pr.ID, err = lapse.NormalizeID(id); err != nil {
				return usage("principal", "--principal: %s", lapse.ErrorMessage(err))
			}
			if !pr.Kind.Valid() {
				return usage("kind", "--kind must be human, service or agent")
			}
			for _, g := range groups {
				n, err := lapse.NormalizeID(strings.TrimPrefix(g, "group:"))
				if err != nil {
					return usage("group", "--group %q: %s", g, lapse.ErrorMessage(err))
				}
				pr.Groups = append(pr.Groups, n)
			}
			for _, a := range act {
				n, err := lapse.NormalizeID(a)
				if err != nil {
					return usage("act", "--act %q: %s", a, lapse.ErrorMessage(err))
				}
				pr.Act = append(pr.Act, n)
			}
			now := m.clock().Now()
			if at != "" {
				if now, err = time.Parse(time.RFC3339, at); err != nil {
					return usage("at", "--at must be an RFC 3339 time like 2026-03-02T09:30:00Z")
				}
			}
			in := lapse.RequestInput{Entitlement: args[0], Reason: reason, Ticket: ticket, TaskID: task, BreakGlass: breakGlass}
			if duration != "" {
				d, err := lapse.ParseDuration(duration)
				if err != nil {
					return usage("for", "--for must be a duration like 30m or 2h")
				}
				in.Duration = lapse.Duration(d)
			}
			if startAt != "" {
				if d, err := lapse.ParseDuration(startAt); err == nil {
					in.StartsAt = now.Add(d)
				} else if in.StartsAt, err = time.Parse(time.RFC3339, startAt); err != nil {
					return usage("start-at", "--start-at must be an RFC 3339 time or a duration after --at, like 2h")
				}
			}

			lp, err := loadPolicy(configPath)
			if err != nil {
				return err
			}
			x := lp.pol.Explain(pr, in, now)
			if output == outputJSON {
				return writeJSON(m.Stdout, x)
			}
			printExplanation(m.Stdout, x, time.UTC)
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&configPath, "config", "c", "", "configuration file (required)")
	f.StringVar(&id, "principal", "", "the principal's ID (required)")
	f.StringVar(&kind, "kind", string(lapse.KindHuman), "the principal's kind: human, service or agent")
	f.StringArrayVar(&groups, "group", nil, "a group the identity provider gives the principal (repeatable)")
	f.StringArrayVar(&act, "act", nil, "a principal the principal acts for, an agent's sponsor first (repeatable)")
	f.StringVar(&at, "at", "", "when the request is decided, RFC 3339 (default now)")
	f.StringVar(&duration, "for", "", "the duration asked for, like 15m or 8h (default: the entitlement's)")
	f.StringVar(&reason, "reason", "", "the request's reason")
	f.StringVar(&ticket, "ticket", "", "the request's ticket")
	f.StringVar(&task, "task", "", "the request's task ID")
	f.StringVar(&startAt, "start-at", "", "a scheduled start: RFC 3339, or a duration after --at")
	f.BoolVar(&breakGlass, "break-glass", false, "ask for the break-glass path")
	f.StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	return c
}

// printExplanation writes an explanation for people: who asks for what and
// when, the outcome, the checks in order, break glass, then the stages.
// Times are shown in loc.
func printExplanation(w io.Writer, x *policy.Explanation, loc *time.Location) {
	fmt.Fprintf(w, "%s (%s) asks for %s at %s\n", clean(x.Principal.ID), x.Principal.Kind, clean(x.Entitlement), x.At.In(loc).Format("2006-01-02 15:04:05 MST (Monday)"))
	groups := "none"
	if len(x.Groups) > 0 {
		groups = strings.Join(x.Groups, ", ")
	}
	p := &printer{w: w, loc: loc}
	p.fields("Policy", x.Version, "Groups", groups+" (as the policy sees them)", "Acts for", strings.Join(x.Principal.Act, ", "))

	fmt.Fprintln(w)
	outcome := string(x.Outcome) + " (rule: " + x.Rule + ")"
	if x.Error != nil {
		outcome = fmt.Sprintf("refused by %s: %s (code: %s%s)", x.Rule, x.Error.Message, x.Error.Code, fieldNote(x.Error.Field))
	}
	dur := ""
	if x.Duration > 0 {
		dur = humanDuration(x.Duration.D())
	}
	p.fields("Outcome", outcome, "Duration", dur)

	fmt.Fprintln(w, "\nChecks")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, ck := range x.Checks {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", ck.Result, ck.Name, clean(ck.Detail))
		if ck.Source != "" {
			fmt.Fprintf(tw, "  \t\t%s\n", clean(ck.Source))
			fmt.Fprintf(tw, "  \t\t= %s\n", clean(ck.Value))
		}
	}
	tw.Flush()

	if bg := x.BreakGlass; bg != nil {
		fmt.Fprintln(w, "\nBreak glass")
		state := "available"
		if !bg.Available {
			state = "not available"
			if bg.Refusal != nil {
				state += ": " + bg.Refusal.Message
			}
		}
		p.fields("  State", state,
			"  Limits", fmt.Sprintf("at most %s, a reason of at least %d characters; reviewed by someone else within %s", humanDuration(bg.MaxDuration.D()), policy.MinBreakGlassReason, humanDuration(bg.ReviewWithin.D())),
			"  Condition", bg.Condition)
		if bg.Condition != "" {
			p.fields("  ", "= "+bg.Value)
		}
		fmt.Fprintln(w, "  Reviewers")
		printEntries(w, bg.Reviewers, "    ")
	}

	if len(x.Stages) > 0 {
		fmt.Fprintf(w, "\nStages (they pass with everyone the policy knows approving: %s)\n", x.StagesPass)
		for i, s := range x.Stages {
			fmt.Fprintf(w, "  %d. %s  (passes on its own: %s)\n", i+1, clean(s.Name), s.Passes)
			for j, g := range s.Groups {
				name := g.Name
				if name == "" {
					name = fmt.Sprint(j + 1)
				}
				fmt.Fprintf(w, "     group %s: %d of\n", clean(name), g.Required)
				printEntries(w, g.Approvers, "       ")
			}
		}
	}
}

// printEntries lists approver entries and the people behind them.
func printEntries(w io.Writer, entries []policy.ApproverEntry, indent string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, e := range entries {
		var who string
		switch e.Kind {
		case policy.EntryPolicyGroup:
			who = "policy group: " + orNobody(e.Members)
		case policy.EntryIdPGroup:
			who = "members from the identity provider"
		default:
			who = "person"
		}
		if len(e.Excluded) > 0 {
			who += "; not " + strings.Join(e.Excluded, ", ") + ": nobody approves their own request"
		}
		fmt.Fprintf(tw, "%s%s\t%s\n", indent, clean(e.Entry), clean(who))
	}
	if len(entries) == 0 {
		fmt.Fprintf(tw, "%snone\n", indent)
	}
	tw.Flush()
}

func orNobody(ids []string) string {
	if len(ids) == 0 {
		return "nobody"
	}
	return strings.Join(ids, ", ")
}

func fieldNote(f string) string {
	if f == "" {
		return ""
	}
	return ", field: " + f
}
