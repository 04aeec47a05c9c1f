package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
)

func (d *clientDeps) whoamiCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "whoami",
		Short: "Show who the server thinks you are",
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		me, err := cr.svc.Whoami(ctx)
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, me)
		}
		cr.printer().fields(
			"ID", me.ID,
			"Kind", string(me.Kind),
			"Name", me.Name,
			"Groups", strings.Join(me.Groups, ", "),
			"Scopes", strings.Join(me.Scopes, ", "),
			"Credential", me.CredentialID,
		)
		return nil
	})
	return c
}

func (d *clientDeps) entitlementsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "entitlements",
		Short: "List the entitlements you may request",
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		list, err := cr.svc.Entitlements(ctx)
		if err != nil {
			return err
		}
		if list == nil {
			list = []*lapse.Entitlement{}
		}
		if cr.json() {
			return writeJSON(cr.stdout, map[string]any{"entitlements": list})
		}
		if len(list) == 0 {
			fmt.Fprintln(cr.stderr, "No entitlements you may request.")
			return nil
		}
		tw := cr.printer().table("NAME", "TARGET", "DEFAULT", "MAX", "APPROVAL", "NEEDS", "EXPOSURE", "DESCRIPTION")
		for _, e := range list {
			row(tw, e.Name, e.Target, humanDuration(e.DefaultDuration.D()), humanDuration(e.MaxDuration.D()),
				approvalRule(e.Approval), needs(e), exposureCell(e.Exposure), truncate(e.Description, 60))
		}
		return tw.Flush()
	})
	return c
}

// exposureCell is an entitlement's worst-case exposure after revocation
// against its limit (docs/zsp.md), as lapse entitlements shows it.
func exposureCell(x *lapse.Exposure) string {
	if x == nil {
		return ""
	}
	bound := humanDuration(x.Bound.D())
	switch {
	case x.Unbounded:
		bound = "unbounded"
	case x.Bound == 0:
		bound = "0"
	}
	if x.Limit == 0 {
		return bound
	}
	s := bound + " (limit " + humanDuration(x.Limit.D()) + ")"
	if x.Exceeded {
		s += " over: " + x.Policy()
	}
	return s
}

func approvalRule(a lapse.ApprovalRule) string {
	if a.Auto {
		return "auto"
	}
	return plural(a.Required, "approval", "approvals")
}

// needs lists what a request for e must carry besides a duration.
func needs(e *lapse.Entitlement) string {
	var n []string
	if e.RequireReason {
		n = append(n, "reason")
	}
	if e.RequireTicket {
		n = append(n, "ticket")
	}
	return strings.Join(n, ", ")
}

func (d *clientDeps) apikeyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "apikey",
		Short: "Create, list and revoke API keys (scope admin)",
		Long: `Create, list and revoke API keys through the API. Needs the admin scope.

A key's secret is shown once, when it is created; the server keeps only its
hash. Keys are named by their public prefix.`,
		Args:          withUsageHint(apikeyArgs),
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(c *cobra.Command, _ []string) error {
			return c.Help()
		},
	}
	c.AddCommand(d.apikeyCreateCmd(), d.apikeyListCmd(), d.apikeyRevokeCmd())
	return c
}

func apikeyArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown subcommand %q of %s: use create, list or revoke", args[0], c.CommandPath())
	}
	return nil
}

func (d *clientDeps) apikeyCreateCmd() *cobra.Command {
	var (
		principal, kind, name, ttl string
		groups, scopes             []string
	)
	c := &cobra.Command{
		Use:   "create --principal ID --scope SCOPE...",
		Short: "Create an API key; its secret is shown once",
		Example: `  lapse apikey create --principal ci-deploy --kind service --scope request --ttl 90d --name "deploy pipeline"
  lapse apikey create --principal alice --scope read --scope request --group oncall`,
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		if strings.TrimSpace(principal) == "" {
			return usageFieldErrorf("principal_id", "--principal is required")
		}
		k := lapse.PrincipalKind(kind)
		if !k.Valid() {
			return usageFieldErrorf("principal_kind", "--kind must be human, service or agent")
		}
		if len(scopes) == 0 {
			return usageFieldErrorf("scopes", "at least one --scope is required: %s", strings.Join(lapse.AllScopes, ", "))
		}
		for _, s := range scopes {
			if !slices.Contains(lapse.AllScopes, s) {
				return usageFieldErrorf("scopes", "unknown scope %q: use %s", s, strings.Join(lapse.AllScopes, ", "))
			}
		}
		in := lapse.APIKeyInput{PrincipalID: principal, PrincipalKind: k, Groups: groups, Scopes: scopes, Name: name}
		if ttl != "" {
			v, err := parseTTL(ttl)
			if err != nil {
				return asUsage(err)
			}
			in.TTL = lapse.Duration(v)
		}
		nk, err := cr.svc.CreateAPIKey(ctx, in)
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, nk)
		}
		fmt.Fprintln(cr.stderr, "Warning: the secret is shown once; Lapse keeps only its hash. Store it now, e.g. in a file with mode 0600 for --token-file.")
		p := cr.printer()
		p.fields(append(apikeyFields(p, &nk.APIKey), "Secret", nk.Secret)...)
		return nil
	})
	f := c.Flags()
	f.StringVar(&principal, "principal", "", "principal ID the key authenticates as (required)")
	f.StringVar(&kind, "kind", string(lapse.KindService), "principal kind: human, service or agent")
	f.StringSliceVar(&groups, "group", nil, "group of the principal (repeat or comma-separate)")
	f.StringSliceVar(&scopes, "scope", nil, "scope of the key (repeat or comma-separate): "+strings.Join(lapse.AllScopes, ", "))
	f.StringVar(&name, "name", "", "a label for the key")
	f.StringVar(&ttl, "ttl", "", "lifetime, like 12h or 90d (default: no expiry)")
	return c
}

// parseTTL reads a key lifetime: a Go duration, or whole days ("90d"), which
// is how key lifetimes are usually said.
func parseTTL(s string) (time.Duration, error) {
	var v time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || time.Duration(days)*24*time.Hour > lapse.MaxAnyDuration {
			return 0, lapse.FieldErrorf(lapse.EINVALID, "ttl", "ttl must be a positive duration like 12h or 90d")
		}
		v = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if v, err = lapse.ParseDuration(s); err != nil || v <= 0 {
			return 0, lapse.FieldErrorf(lapse.EINVALID, "ttl", "ttl must be a positive duration like 12h or 90d")
		}
	}
	return v, nil
}

// apikeyFields is the detail view of a key, as label/value pairs.
func apikeyFields(p *printer, k *lapse.APIKey) []string {
	return []string{
		"Prefix", k.Prefix,
		"State", apikeyState(p, k),
		"Principal", principalName(k.Principal) + " (" + string(k.Principal.Kind) + ")",
		"Groups", strings.Join(k.Principal.Groups, ", "),
		"Scopes", strings.Join(k.Scopes, ", "),
		"Name", k.Name,
		"Created", p.when(k.CreatedAt),
		"Created by", k.CreatedBy,
		"Expires", p.when(k.ExpiresAt),
		"Last used", p.when(k.LastUsedAt),
		"Revoked", p.when(k.RevokedAt),
	}
}

func apikeyState(p *printer, k *lapse.APIKey) string {
	switch {
	case !k.RevokedAt.IsZero():
		return "revoked"
	case !k.ExpiresAt.IsZero() && !p.now.Before(k.ExpiresAt):
		return "expired"
	}
	return "active"
}

func (d *clientDeps) apikeyListCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "list",
		Short: "List API keys",
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		list, err := cr.svc.ListAPIKeys(ctx)
		if err != nil {
			return err
		}
		if list == nil {
			list = []*lapse.APIKey{}
		}
		if cr.json() {
			return writeJSON(cr.stdout, map[string]any{"apikeys": list})
		}
		if len(list) == 0 {
			fmt.Fprintln(cr.stderr, "No API keys.")
			return nil
		}
		p := cr.printer()
		tw := p.table("PREFIX", "STATE", "PRINCIPAL", "KIND", "SCOPES", "NAME", "CREATED", "EXPIRES", "LAST USED")
		for _, k := range list {
			row(tw, k.Prefix, apikeyState(p, k), principalName(k.Principal), string(k.Principal.Kind),
				strings.Join(k.Scopes, ","), truncate(k.Name, 30), p.short(k.CreatedAt), p.short(k.ExpiresAt), p.short(k.LastUsedAt))
		}
		return tw.Flush()
	})
	return c
}

func (d *clientDeps) apikeyRevokeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "revoke PREFIX",
		Short: "Revoke an API key at once",
	}
	d.newClientCommand(c, []string{"PREFIX"}, func(ctx context.Context, cr *clientRun, args []string) error {
		k, err := cr.svc.RevokeAPIKey(ctx, args[0])
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, k)
		}
		fmt.Fprintf(cr.stdout, "Revoked API key %s.\n", clean(k.Prefix))
		p := cr.printer()
		p.fields(apikeyFields(p, k)...)
		return nil
	})
	return c
}
