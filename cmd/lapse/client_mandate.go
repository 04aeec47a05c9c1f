package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
)

// lapse mandate: a human sponsor gives an AI agent the right to ask for
// access on the sponsor's behalf (docs/agents.md), lists and revokes it.

func (d *clientDeps) mandateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "mandate",
		Short: "Give an AI agent a mandate to ask for access on your behalf; list and revoke mandates",
		Long: `Give an AI agent a mandate to ask for access on your behalf; list and revoke mandates.

A mandate names the agent, the entitlements it may ask for (each one you may
request yourself, and open to agents), the longest grant it may get, and
when the mandate ends. The agent's requests are then decided as yours,
within that ceiling, and recorded as the agent's acting for you. You can
never approve what your agent asked for you: another person must. Revoking
a mandate also ends what the agent holds under it.`,
		Args:          withUsageHint(mandateArgs),
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(c *cobra.Command, _ []string) error {
			return c.Help()
		},
	}
	c.AddCommand(d.mandateCreateCmd(), d.mandateListCmd(), d.mandateRevokeCmd())
	return c
}

func mandateArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown subcommand %q of %s: use create, list or revoke", args[0], c.CommandPath())
	}
	return nil
}

func (d *clientDeps) mandateCreateCmd() *cobra.Command {
	var (
		agent, maxDuration, expiresIn string
		ents                          []string
	)
	c := &cobra.Command{
		Use:   "create --agent ID --entitlement NAME... --max-duration D --expires-in D",
		Short: "Give an agent a mandate to ask for access on your behalf",
		Example: `  lapse mandate create --agent ci-helper --entitlement demo-api/status --entitlement demo-api/read --max-duration 15m --expires-in 8h
  lapse mandate create --agent coder --entitlement prod-db/read --max-duration 30m --expires-in 7d -o json`,
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		if strings.TrimSpace(agent) == "" {
			return usageFieldErrorf("agent_id", "--agent is required: the agent's principal ID")
		}
		if len(ents) == 0 {
			return usageFieldErrorf("entitlements", "at least one --entitlement is required")
		}
		in := lapse.MandateInput{AgentID: agent, Entitlements: ents}
		for _, f := range []struct {
			flag, field, value string
			dst                *lapse.Duration
		}{{"max-duration", "max_duration", maxDuration, &in.MaxDuration}, {"expires-in", "expires_in", expiresIn, &in.ExpiresIn}} {
			if f.value == "" {
				return usageFieldErrorf(f.field, "--%s is required, like 15m or 8h", f.flag)
			}
			v, err := parseTTL(f.value)
			if err != nil {
				return usageFieldErrorf(f.field, "--%s must be a positive duration like 15m, 8h or 7d", f.flag)
			}
			*f.dst = lapse.Duration(v)
		}
		m, err := cr.svc.CreateMandate(ctx, in)
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, m)
		}
		fmt.Fprintf(cr.stdout, "Gave agent %s mandate %s.\n", clean(m.AgentID), clean(m.ID))
		p := cr.printer()
		p.fields(mandateFields(p, m)...)
		fmt.Fprintf(cr.stderr, "Its requests are decided as yours, within this ceiling; someone else approves what needs approval. Revoke it with \"lapse mandate revoke %s\".\n", clean(m.ID))
		return nil
	})
	f := c.Flags()
	f.StringVar(&agent, "agent", "", "the agent's principal ID (required)")
	f.StringSliceVar(&ents, "entitlement", nil, "an entitlement the agent may ask for (repeat or comma-separate; required)")
	f.StringVar(&maxDuration, "max-duration", "", "the longest grant the agent may get, like 15m (required)")
	f.StringVar(&expiresIn, "expires-in", "", "how long the mandate lasts, like 8h or 7d, at most 31d (required)")
	return c
}

func (d *clientDeps) mandateListCmd() *cobra.Command {
	var (
		agent, sponsor string
		all            bool
		limit          int
	)
	c := &cobra.Command{
		Use:   "list",
		Short: "List mandates: yours, or all with scope approve, revoke or admin",
		Long: `List mandates, newest first: those you gave, or hold as an agent; every
mandate for a credential with scope approve, revoke or admin. Only mandates
in force are shown unless --all is given.`,
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		if limit < 0 || limit > lapse.MaxListLimit {
			return usageFieldErrorf("limit", "--limit must be between 1 and %d", lapse.MaxListLimit)
		}
		list, err := cr.svc.ListMandates(ctx, lapse.MandateFilter{AgentID: agent, SponsorID: sponsor, Live: !all, Limit: limit})
		if err != nil {
			return err
		}
		if list == nil {
			list = []*lapse.Mandate{}
		}
		if cr.json() {
			return writeJSON(cr.stdout, map[string]any{"mandates": list})
		}
		if len(list) == 0 {
			fmt.Fprintln(cr.stderr, "No mandates.")
			return nil
		}
		p := cr.printer()
		tw := p.table("ID", "STATE", "AGENT", "SPONSOR", "ENTITLEMENTS", "MAX", "EXPIRES")
		for _, m := range list {
			row(tw, m.ID, mandateState(p, m), m.AgentID, principalName(m.Sponsor), truncate(strings.Join(m.Entitlements, ","), 60),
				humanDuration(m.MaxDuration.D()), p.short(m.ExpiresAt))
		}
		return tw.Flush()
	})
	f := c.Flags()
	f.StringVar(&agent, "agent", "", "only mandates for this agent")
	f.StringVar(&sponsor, "sponsor", "", "only mandates given by this sponsor")
	f.BoolVar(&all, "all", false, "also revoked and expired mandates")
	f.IntVar(&limit, "limit", 0, "at most this many (default 100)")
	return c
}

func (d *clientDeps) mandateRevokeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a mandate at once, ending what the agent holds under it",
	}
	d.newClientCommand(c, []string{"ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		if !lapse.ValidID(lapse.PrefixMandate, args[0]) {
			return usageFieldErrorf("id", "%q is not a mandate ID (mdt_...)", truncate(args[0], 40))
		}
		m, err := cr.svc.RevokeMandate(ctx, args[0])
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, m)
		}
		fmt.Fprintf(cr.stdout, "Revoked mandate %s of agent %s; its grants under the mandate are being revoked.\n", clean(m.ID), clean(m.AgentID))
		p := cr.printer()
		p.fields(mandateFields(p, m)...)
		return nil
	})
	return c
}

// mandateFields is the detail view of a mandate, as label/value pairs.
func mandateFields(p *printer, m *lapse.Mandate) []string {
	return []string{
		"ID", m.ID,
		"State", mandateState(p, m),
		"Agent", m.AgentID,
		"Sponsor", principalName(m.Sponsor),
		"Entitlements", strings.Join(m.Entitlements, ", "),
		"Max duration", humanDuration(m.MaxDuration.D()),
		"Created", p.when(m.CreatedAt),
		"Expires", p.when(m.ExpiresAt),
		"Revoked", p.when(m.RevokedAt),
		"Revoked by", m.RevokedBy,
	}
}

func mandateState(p *printer, m *lapse.Mandate) string {
	switch {
	case !m.RevokedAt.IsZero():
		return "revoked"
	case !p.now.Before(m.ExpiresAt):
		return "expired"
	}
	return "live"
}
