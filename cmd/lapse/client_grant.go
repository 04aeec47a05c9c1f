package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
)

func (d *clientDeps) grantsCmd() *cobra.Command {
	var (
		state      string
		live, mine bool
		limit      int
	)
	c := &cobra.Command{
		Use:   "grants",
		Short: "List grants you may see",
		Long: `List grants you may see.

--live lists grants whose privilege may exist on a target (provisioning,
active, revoking, verifying, revoke_failed); --mine only your own.`,
		Example: `  lapse grants --mine --live
  lapse grants --state revoke_failed -o json`,
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		f := lapse.GrantFilter{State: lapse.GrantState(state), Live: live, Limit: limit}
		if state != "" && !slices.Contains(lapse.AllGrantStates, f.State) {
			return usageFieldErrorf("state", "state must be one of %s", joinStates(lapse.AllGrantStates))
		}
		if limit < 0 || limit > lapse.MaxListLimit {
			return usageFieldErrorf("limit", "limit must be between 1 and %d", lapse.MaxListLimit)
		}
		if mine {
			me, err := cr.svc.Whoami(ctx)
			if err != nil {
				return err
			}
			f.PrincipalID = me.ID
		}
		list, err := cr.svc.ListGrants(ctx, f)
		if err != nil {
			return err
		}
		if list == nil {
			list = []*lapse.Grant{}
		}
		if cr.json() {
			return writeJSON(cr.stdout, map[string]any{"grants": list})
		}
		if len(list) == 0 {
			fmt.Fprintln(cr.stderr, "No grants.")
			return nil
		}
		p := cr.printer()
		tw := p.table("ID", "STATE", "ENTITLEMENT", "PRINCIPAL", "TARGET", "EXPIRES", "ENDED")
		for _, g := range list {
			row(tw, g.ID, string(g.State), g.Entitlement, principalName(g.Principal), g.Target,
				p.short(g.ExpiresAt), endedCell(p, g))
		}
		return tw.Flush()
	})
	f := c.Flags()
	f.StringVar(&state, "state", "", "only grants in this state: "+joinStates(lapse.AllGrantStates))
	f.BoolVar(&live, "live", false, "only grants whose privilege may exist on a target")
	f.BoolVar(&mine, "mine", false, "only your own grants")
	f.IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many (default %d)", lapse.DefaultListLimit))
	return c
}

// endedCell says when and why a grant ended, or that it is ending.
func endedCell(p *printer, g *lapse.Grant) string {
	switch {
	case !g.RevokedAt.IsZero():
		return p.short(g.RevokedAt) + " " + string(g.EndReason)
	case g.EndReason != "":
		return "ending: " + string(g.EndReason)
	}
	return ""
}

func (d *clientDeps) grantCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "grant ID",
		Short: "Show one grant, its revocation checkpoints and its history",
		Long: `Show one grant: its fields, the checkpoints that must confirm its
revocation (created, revoked, verified, with a summary of the evidence), and
its event history.`,
		Example: "  lapse grant gr_01j...",
	}
	d.newClientCommand(c, []string{"ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		g, err := cr.svc.GetGrant(ctx, args[0])
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, g)
		}
		printGrant(cr.printer(), g)
		return nil
	})
	return c
}

// printGrant prints a grant's detail view.
func printGrant(p *printer, g *lapse.Grant) {
	claimed := "not claimed"
	if g.CredentialsClaimed {
		claimed = "claimed"
	}
	p.fields(
		"ID", g.ID,
		"State", string(g.State),
		"End reason", string(g.EndReason),
		"Entitlement", g.Entitlement,
		"Target", g.Target,
		"Principal", principalName(g.Principal)+" ("+string(g.Principal.Kind)+")",
		"Request", g.RequestID,
		"Task", g.TaskID,
		"Starts", p.when(g.StartsAt),
		"Expires", p.when(g.ExpiresAt),
		"Activated", p.when(g.ActivatedAt),
		"Revoke started", p.when(g.RevokeStartedAt),
		"Revoked", p.when(g.RevokedAt),
		"Next action", nextAction(p, g),
		"Credentials", claimed,
		"Info", joinMap(g.Info),
		"Attempts", attempts(g),
		"Last error", g.LastError,
	)
	if len(g.Checkpoints) > 0 {
		fmt.Fprintln(p.w, "\nCheckpoints:")
		tw := p.table("NAME", "KIND", "CREATED", "REVOKED", "VERIFIED", "EVIDENCE")
		for _, c := range g.Checkpoints {
			if c == nil {
				continue
			}
			evidence := summarizeJSON(c.Evidence, 70)
			if len(c.Residue) > 0 {
				evidence = truncate("residue: "+strings.Join(c.Residue, ", "), 70)
			}
			row(tw, c.Name, string(c.Kind), p.short(c.CreatedAt), p.short(c.RevokedAt), p.short(c.VerifiedAt), evidence)
		}
		tw.Flush()
	}
	if len(g.Events) > 0 {
		fmt.Fprintln(p.w, "\nHistory:")
		tw := p.table("SEQ", "TIME", "EVENT", "ACTOR", "CHANNEL", "OUTCOME", "DETAIL")
		for _, e := range g.Events {
			if e == nil {
				continue
			}
			row(tw, fmt.Sprint(e.Seq), p.short(e.Time), e.Type, e.ActorID, e.Channel, e.Outcome, summarizeJSON(e.Data, 60))
		}
		tw.Flush()
	}
}

// nextAction shows when the engine acts next on a grant that is not done.
func nextAction(p *printer, g *lapse.Grant) string {
	if g.State == lapse.GrantActive || g.State.Terminal() {
		return "" // Expires already says it
	}
	return p.when(g.DueAt)
}

func attempts(g *lapse.Grant) string {
	if g.Attempts == 0 {
		return ""
	}
	return fmt.Sprint(g.Attempts)
}

func (d *clientDeps) credentialsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "credentials GRANT_ID",
		Short: "Claim an active grant's credentials (once)",
		Long: `Claim an active grant's credentials. They are shown once: Lapse keeps no
copy it could show again, and a second claim fails (code: gone).`,
		Example: "  lapse credentials gr_01j... -o json > creds.json",
	}
	d.newClientCommand(c, []string{"GRANT_ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		// Not interruptible once sent: see waitForCredentials.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
		defer cancel()
		creds, err := cr.svc.ClaimCredentials(cctx, args[0])
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, creds)
		}
		return cr.printCredentials(creds)
	})
	return c
}

// bearerKeys are the secret names that hold a bearer token (the token
// target's credential), for which a ready-to-use header line is printed.
var bearerKeys = []string{"token", "access_token"}

// printCredentials prints credentials for a person. It is the only place
// in the CLI that writes a secret, and it writes it only to stdout.
func (cr *clientRun) printCredentials(c *lapse.Credentials) error {
	if cr.json() {
		return writeJSON(cr.stdout, c)
	}
	if c == nil {
		return lapse.Errorf(lapse.EINTERNAL, "the server returned no credentials")
	}
	p := cr.printer()
	fmt.Fprintln(cr.stderr, "Warning: these credentials are shown once; Lapse cannot show them again. Keep them safe and do not paste them into tickets or chat.")
	kv := []string{
		"Grant", c.GrantID,
		"Target", c.Target,
		"Expires", p.when(c.ExpiresAt),
	}
	for _, k := range sortedKeys(c.Info) {
		kv = append(kv, k, c.Info[k])
	}
	var blocks []string
	for _, k := range sortedKeys(c.Secret) {
		v := c.Secret[k]
		if strings.ContainsAny(v, "\r\n") {
			blocks = append(blocks, k) // a key or certificate: printed as a block below
			continue
		}
		kv = append(kv, k, v)
	}
	p.fields(kv...)
	for _, k := range blocks {
		fmt.Fprintf(cr.stdout, "\n%s:\n", clean(k))
		for _, line := range strings.Split(strings.TrimRight(c.Secret[k], "\r\n"), "\n") {
			fmt.Fprintln(cr.stdout, clean(strings.TrimRight(line, "\r")))
		}
	}
	for _, k := range bearerKeys {
		if tok := c.Secret[k]; tok != "" && !strings.ContainsAny(tok, " \r\n") {
			fmt.Fprintf(cr.stdout, "\nAuthorization: Bearer %s\n", clean(tok))
			break
		}
	}
	return nil
}

func (d *clientDeps) releaseCmd() *cobra.Command {
	var noWait bool
	c := &cobra.Command{
		Use:   "release GRANT_ID",
		Short: "Give your grant back now",
		Long: `Give your grant back now.

By default the command returns when revocation is verified on every
checkpoint and exits with status 1 if it could not be verified (Lapse keeps
retrying; follow it with "lapse grant ID"). --no-wait returns at once.`,
		Example: "  lapse release gr_01j...",
	}
	d.newClientCommand(c, []string{"GRANT_ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		return cr.endGrant(ctx, args[0], !noWait, "released", func(ctx context.Context) (*lapse.Grant, error) {
			return cr.svc.Release(ctx, args[0], lapse.ReleaseInput{Wait: !noWait})
		})
	})
	c.Flags().BoolVar(&noWait, "no-wait", false, "return without waiting for revocation to be verified")
	return c
}

func (d *clientDeps) revokeCmd() *cobra.Command {
	var (
		reason string
		noWait bool
	)
	c := &cobra.Command{
		Use:   "revoke GRANT_ID --reason TEXT",
		Short: "End anyone's grant now (scope revoke)",
		Long: `End anyone's grant now. Needs the revoke scope and a reason, which goes
into the audit log.

By default the command returns when revocation is verified on every
checkpoint and exits with status 1 if it could not be verified (Lapse keeps
retrying; follow it with "lapse grant ID"). --no-wait returns at once.`,
		Example: `  lapse revoke gr_01j... --reason "left the incident"`,
	}
	d.newClientCommand(c, []string{"GRANT_ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		if strings.TrimSpace(reason) == "" {
			return usageFieldErrorf("reason", "--reason is required")
		}
		return cr.endGrant(ctx, args[0], !noWait, "revoked", func(ctx context.Context) (*lapse.Grant, error) {
			return cr.svc.Revoke(ctx, args[0], lapse.RevokeInput{Reason: reason, Wait: !noWait})
		})
	})
	c.Flags().StringVar(&reason, "reason", "", "why the grant is revoked (required)")
	c.Flags().BoolVar(&noWait, "no-wait", false, "return without waiting for revocation to be verified")
	return c
}

// endGrant runs a release or revoke and reports the outcome. When it waited,
// a grant that is not verifiably revoked is an error: the command's promise
// was proof, and there is none yet.
func (cr *clientRun) endGrant(ctx context.Context, id string, wait bool, verb string, call func(context.Context) (*lapse.Grant, error)) error {
	ctx, stop := cr.d.interrupt(ctx)
	defer stop()
	if wait && !cr.json() {
		fmt.Fprintf(cr.stderr, "Waiting for revocation of %s to be verified…\n", clean(id))
	}
	g, err := call(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return &interruptedError{msg: fmt.Sprintf("stopped waiting; if the request reached the server, Lapse carries on revoking %s; check with \"lapse grant %s\"", id, id)}
		}
		return err
	}
	if cr.json() {
		if err := writeJSON(cr.stdout, g); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(cr.stdout, "%s %s: now %s.\n", strings.ToUpper(verb[:1])+verb[1:], clean(g.ID), clean(string(g.State)))
		printGrant(cr.printer(), g)
	}
	if wait && g.State != lapse.GrantRevoked {
		msg := fmt.Sprintf("revocation of %s is not verified yet: it is %s", g.ID, g.State)
		if g.LastError != "" {
			msg += " (" + g.LastError + ")"
		}
		return errors.New(msg + "; Lapse keeps retrying; follow it with \"lapse grant " + g.ID + "\"")
	}
	return nil
}

// extendCmd asks for more time on one's own active grant.
func (d *clientDeps) extendCmd() *cobra.Command {
	var dur, reason string
	c := &cobra.Command{
		Use:   "extend GRANT_ID --for DURATION",
		Short: "Ask for more time on your active grant",
		Long: `Ask for more time on your active grant, where its entitlement allows
extensions. The extension is a request of its own: approved at once, or by
the entitlement's approvers again (then "lapse requests --mine" shows it).
Once approved, the grant's deadline moves, and the target's own deadline
with it. The grant's whole length never exceeds the entitlement's maximum
with extensions. Grants on token targets cannot be extended: a token
carries its own expiry.`,
		Example: `  lapse extend gr_01j... --for 30m --reason "the migration runs long"`,
	}
	d.newClientCommand(c, []string{"GRANT_ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		v, err := lapse.ParseDuration(dur)
		if err != nil || v <= 0 {
			return usageFieldErrorf("duration", "--for must be a positive duration like 30m")
		}
		res, err := cr.svc.ExtendGrant(ctx, args[0], lapse.ExtendInput{Duration: lapse.Duration(v), Reason: reason})
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, res)
		}
		r := res.Request
		if res.Grant != nil {
			fmt.Fprintf(cr.stdout, "Extended grant %s by %s: it now ends %s.\n", clean(res.Grant.ID), humanDuration(v), res.Grant.ExpiresAt.UTC().Format(time.RFC3339))
			return nil
		}
		fmt.Fprintf(cr.stdout, "Filed extension request %s for grant %s: %s.\n", clean(r.ID), clean(args[0]), clean(string(r.State)))
		printRequestFields(cr.printer(), r)
		return nil
	})
	c.Flags().StringVar(&dur, "for", "", "how much longer, like 30m")
	c.Flags().StringVar(&reason, "reason", "", "why you need more time")
	return c
}
