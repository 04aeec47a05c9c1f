package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
)

func (d *clientDeps) requestCmd() *cobra.Command {
	var (
		dur, reason, ticket, task string
		onBehalfOf, startAt       string
		wait, breakGlass          bool
		timeout                   time.Duration
	)
	c := &cobra.Command{
		Use:   "request ENTITLEMENT",
		Short: "Ask for an entitlement for a while",
		Long: `Ask for an entitlement for a while.

Without --wait the command files the request and prints it. If policy
approves it at once, the grant's credentials come back immediately and are
printed; they are shown once.

With --wait it then waits for the decision and for the grant to become
active, claims the credentials and prints them. On a terminal a live status
line shows on stderr; otherwise one line per state change. Ctrl-C or
--timeout stop the wait but leave the request filed (cancel it with
"lapse cancel ID"). A denied, expired or cancelled request exits with
status 1 and says why.`,
		Example: `  lapse request prod-db/read --for 30m --reason "INC-1234: check replication lag" --wait
  lapse request prod-db/owner --start-at 2026-12-05T22:00:00Z --for 2h --reason "maintenance window MW-7"
  lapse request prod-db/admin --break-glass --reason "primary down, failover stuck (INC-1300)" --wait
  lapse request cache/flush --ticket OPS-88 -o json
  lapse request prod-db/read --on-behalf-of alice   # an agent key, when several sponsors' mandates cover it`,
	}
	d.newClientCommand(c, []string{"ENTITLEMENT"}, func(ctx context.Context, cr *clientRun, args []string) error {
		in := lapse.RequestInput{Entitlement: args[0], Reason: reason, Ticket: ticket, TaskID: task, OnBehalfOf: onBehalfOf, BreakGlass: breakGlass}
		if startAt != "" {
			t, err := time.Parse(time.RFC3339, startAt)
			if err != nil {
				return usageFieldErrorf("starts_at", "--start-at must be a time like 2026-12-05T22:00:00Z")
			}
			in.StartsAt = t
		}
		if dur != "" {
			v, err := lapse.ParseDuration(dur)
			if err != nil {
				return asUsage(err)
			}
			if v <= 0 {
				return usageFieldErrorf("duration", "--for must be a positive duration like 15m")
			}
			in.Duration = lapse.Duration(v)
		}
		if timeout <= 0 {
			return usageFieldErrorf("timeout", "--timeout must be a positive duration like 30m")
		}
		res, err := cr.svc.CreateRequest(ctx, in)
		if err != nil {
			return err
		}
		if !wait || res.Credentials != nil {
			return cr.printRequestResult(res)
		}
		res, err = cr.waitForCredentials(ctx, res, timeout)
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, res)
		}
		return cr.printCredentials(res.Credentials)
	})
	f := c.Flags()
	f.StringVar(&dur, "for", "", "how long the access should last, like 15m or 8h (default: the entitlement's default)")
	f.StringVar(&reason, "reason", "", "why you need it (some entitlements require it)")
	f.StringVar(&ticket, "ticket", "", "ticket or incident reference (some entitlements require it)")
	f.StringVar(&task, "task", "", "task ID; the grant ends when the task releases it")
	f.StringVar(&onBehalfOf, "on-behalf-of", "", "for an agent: the sponsor to ask for, when mandates of several sponsors cover the request")
	f.BoolVar(&wait, "wait", false, "wait for the decision and the grant, then print the credentials")
	f.BoolVar(&breakGlass, "break-glass", false, "emergency: approve it yourself under the entitlement's break-glass rule (needs --reason; the approvers are notified and review it afterwards)")
	f.StringVar(&startAt, "start-at", "", "schedule the grant's start (RFC 3339), where the entitlement allows it")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "with --wait, how long to wait at most")
	return c
}

// printRequestResult prints a freshly filed request and, when it was
// approved at once, its credentials.
func (cr *clientRun) printRequestResult(res *lapse.RequestResult) error {
	if cr.json() {
		return writeJSON(cr.stdout, res)
	}
	r := res.Request
	if r == nil {
		return lapse.Errorf(lapse.EINTERNAL, "the server returned no request")
	}
	p := cr.printer()
	fmt.Fprintf(cr.stdout, "Filed request %s for %s: %s.\n", clean(r.ID), clean(r.Entitlement), clean(string(r.State)))
	printRequestFields(p, r)
	if res.Credentials != nil {
		fmt.Fprintln(cr.stdout)
		return cr.printCredentials(res.Credentials)
	}
	switch {
	case res.Grant != nil && res.Grant.State == lapse.GrantScheduled && res.Grant.StartsAt.After(r.CreatedAt):
		fmt.Fprintf(cr.stderr, "Grant %s starts at %s. Claim the credentials with \"lapse credentials %s\" once it is active.\n",
			clean(res.Grant.ID), res.Grant.StartsAt.UTC().Format(time.RFC3339), clean(res.Grant.ID))
	case res.Grant != nil && res.Grant.State == lapse.GrantScheduled:
		fmt.Fprintf(cr.stderr, "Grant %s waits: an earlier grant of %s must be revoked and verified first. Claim the credentials with \"lapse credentials %s\" once it is active.\n",
			clean(res.Grant.ID), clean(r.Entitlement), clean(res.Grant.ID))
	case r.State == lapse.RequestPending:
		fmt.Fprintf(cr.stderr, "Waiting for %s. Check with \"lapse requests --mine\"; withdraw with \"lapse cancel %s\".\n",
			plural(r.Required-countApprovals(r), "approval", "approvals"), clean(r.ID))
	case r.GrantID != "":
		fmt.Fprintf(cr.stderr, "Claim the credentials with \"lapse credentials %s\" once the grant is active.\n", clean(r.GrantID))
	}
	return nil
}

// printRequestFields prints one request as a detail view, with its votes.
// breakGlassCell says where a break-glass request's post-review stands;
// empty for other requests.
func breakGlassCell(r *lapse.Request) string {
	if !r.BreakGlass || r.Review == nil {
		return ""
	}
	if r.Review.State == lapse.ReviewPending {
		return "review due " + r.Review.DueAt.UTC().Format(time.RFC3339)
	}
	return "reviewed: " + r.Review.State + " by " + r.Review.Reviewer
}

func printRequestFields(p *printer, r *lapse.Request) {
	p.fields(
		"ID", r.ID,
		"State", string(r.State),
		"Entitlement", r.Entitlement,
		"Requester", principalName(r.Requester)+" ("+string(r.Requester.Kind)+")",
		"For", humanDuration(r.Duration.D()),
		"Reason", r.Reason,
		"Ticket", r.Ticket,
		"Task", r.TaskID,
		"Approvals", approvalsCell(r),
		"Grant", r.GrantID,
		"Note", r.DecisionNote,
		"Starts", p.when(r.StartsAt),
		"Break glass", breakGlassCell(r),
		"Created", p.when(r.CreatedAt),
		"Decided", p.when(r.DecidedAt),
		pendingLabel(r), p.when(pendingTime(r)),
	)
	if len(r.Approvals) == 0 {
		return
	}
	fmt.Fprintln(p.w)
	tw := p.table("DECISION", "BY", "WHEN", "CHANNEL", "COMMENT")
	for _, a := range r.Approvals {
		if a == nil {
			continue
		}
		row(tw, string(a.Decision), principalName(a.Approver), p.short(a.CreatedAt), a.Channel, truncate(a.Comment, 60))
	}
	tw.Flush()
}

func pendingLabel(r *lapse.Request) string {
	if r.State == lapse.RequestPending {
		return "Times out"
	}
	return "Timeout"
}

// pendingTime is when a pending request times out; once decided, that
// moment no longer matters and is not shown.
func pendingTime(r *lapse.Request) time.Time {
	if r.State == lapse.RequestPending {
		return r.ExpiresAt
	}
	return time.Time{}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

var requestStates = []lapse.RequestState{lapse.RequestPending, lapse.RequestApproved, lapse.RequestDenied, lapse.RequestCancelled, lapse.RequestExpired}

func (d *clientDeps) requestsCmd() *cobra.Command {
	var (
		state                           string
		approvable, mine, reviewPending bool
		limit                           int
	)
	c := &cobra.Command{
		Use:   "requests",
		Short: "List requests you may see",
		Long: `List requests you may see: yours, and those you may decide.

--approvable lists the pending requests you may approve or deny; --mine
only your own.`,
		Example: `  lapse requests --approvable
  lapse requests --mine --state pending -o json`,
	}
	d.newClientCommand(c, nil, func(ctx context.Context, cr *clientRun, _ []string) error {
		f := lapse.RequestFilter{State: lapse.RequestState(state), Approvable: approvable, ReviewPending: reviewPending, Limit: limit}
		if state != "" && !slices.Contains(requestStates, f.State) {
			return usageFieldErrorf("state", "state must be one of %s", joinStates(requestStates))
		}
		if limit < 0 || limit > lapse.MaxListLimit {
			return usageFieldErrorf("limit", "limit must be between 1 and %d", lapse.MaxListLimit)
		}
		if mine {
			me, err := cr.svc.Whoami(ctx)
			if err != nil {
				return err
			}
			f.RequesterID = me.ID
		}
		list, err := cr.svc.ListRequests(ctx, f)
		if err != nil {
			return err
		}
		if list == nil {
			list = []*lapse.Request{}
		}
		if cr.json() {
			return writeJSON(cr.stdout, map[string]any{"requests": list})
		}
		if len(list) == 0 {
			fmt.Fprintln(cr.stderr, "No requests.")
			return nil
		}
		p := cr.printer()
		tw := p.table("ID", "STATE", "ENTITLEMENT", "REQUESTER", "FOR", "APPROVALS", "CREATED", "REASON")
		for _, r := range list {
			row(tw, r.ID, string(r.State), r.Entitlement, principalName(r.Requester), humanDuration(r.Duration.D()),
				approvalsCell(r), p.short(r.CreatedAt), truncate(r.Reason, 50))
		}
		return tw.Flush()
	})
	f := c.Flags()
	f.StringVar(&state, "state", "", "only requests in this state: "+joinStates(requestStates))
	f.BoolVar(&approvable, "approvable", false, "only pending requests you may approve or deny")
	f.BoolVar(&mine, "mine", false, "only your own requests")
	f.BoolVar(&reviewPending, "review-pending", false, "only break-glass requests still waiting for their post-review")
	f.IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many (default %d)", lapse.DefaultListLimit))
	return c
}

func joinStates[S ~string](states []S) string {
	s := make([]string, len(states))
	for i, v := range states {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

func (d *clientDeps) approveCmd() *cobra.Command {
	return d.decisionCmd(lapse.DecisionApprove)
}

func (d *clientDeps) denyCmd() *cobra.Command {
	return d.decisionCmd(lapse.DecisionDeny)
}

// decisionCmd builds approve and deny. Both read the request first and send
// its hash with the decision, so the vote binds to exactly the request that
// was read: if it changed in between, the server refuses the vote.
func (d *clientDeps) decisionCmd(decision lapse.Decision) *cobra.Command {
	var comment string
	verb, done := "Approve", "Approved"
	if decision == lapse.DecisionDeny {
		verb, done = "Deny", "Denied"
	}
	c := &cobra.Command{
		Use:   strings.ToLower(verb) + " ID",
		Short: verb + " someone else's pending request",
		Long: verb + ` someone else's pending request.

The decision is bound to the request's hash as read just before it is sent,
so it cannot apply to a request that says something else.`,
		Example: "  lapse " + strings.ToLower(verb) + " req_01j... --comment \"ok for INC-1234\"",
	}
	d.newClientCommand(c, []string{"ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		r, err := cr.svc.GetRequest(ctx, args[0])
		if err != nil {
			return err
		}
		in := lapse.DecisionInput{Comment: comment, RequestHash: r.Hash}
		if decision == lapse.DecisionDeny {
			r, err = cr.svc.Deny(ctx, r.ID, in)
		} else {
			r, err = cr.svc.Approve(ctx, r.ID, in)
		}
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, r)
		}
		fmt.Fprintf(cr.stdout, "%s %s's request %s for %s (%s): now %s.\n", done, clean(principalName(r.Requester)), clean(r.ID),
			clean(r.Entitlement), humanDuration(r.Duration.D()), clean(string(r.State)))
		printRequestFields(cr.printer(), r)
		return nil
	})
	c.Flags().StringVar(&comment, "comment", "", "a note kept with your decision")
	return c
}

// reviewCmd records the post-review of a break-glass request.
func (d *clientDeps) reviewCmd() *cobra.Command {
	var (
		comment        string
		accept, reject bool
	)
	c := &cobra.Command{
		Use:   "review ID",
		Short: "Review someone else's break-glass request afterwards",
		Long: `Review someone else's break-glass request afterwards: --accept, or
--reject with a --comment saying what was wrong. A rejection ends the grant
if it is still active. "lapse requests --review-pending" lists what waits.`,
		Example: `  lapse review req_01j... --accept --comment "matches INC-1300"
  lapse review req_01j... --reject --comment "no incident on record"`,
	}
	d.newClientCommand(c, []string{"ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		if accept == reject {
			return usageFieldErrorf("outcome", "give exactly one of --accept or --reject")
		}
		in := lapse.ReviewInput{Outcome: lapse.ReviewAccepted, Comment: comment}
		if reject {
			in.Outcome = lapse.ReviewRejected
		}
		r, err := cr.svc.ReviewRequest(ctx, args[0], in)
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, r)
		}
		fmt.Fprintf(cr.stdout, "Reviewed break-glass request %s by %s: %s.\n", clean(r.ID), clean(principalName(r.Requester)), clean(in.Outcome))
		printRequestFields(cr.printer(), r)
		return nil
	})
	c.Flags().BoolVar(&accept, "accept", false, "the break-glass use was justified")
	c.Flags().BoolVar(&reject, "reject", false, "it was not (needs --comment); ends the grant if still active")
	c.Flags().StringVar(&comment, "comment", "", "what the review found")
	return c
}

func (d *clientDeps) cancelCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cancel ID",
		Short: "Withdraw your own pending request",
	}
	d.newClientCommand(c, []string{"ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		r, err := cr.svc.CancelRequest(ctx, args[0])
		if err != nil {
			return err
		}
		if cr.json() {
			return writeJSON(cr.stdout, r)
		}
		fmt.Fprintf(cr.stdout, "Cancelled request %s: now %s.\n", clean(r.ID), clean(string(r.State)))
		printRequestFields(cr.printer(), r)
		return nil
	})
	return c
}
