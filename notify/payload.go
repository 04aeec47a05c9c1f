package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// Notification kinds: the audit event types a webhook can subscribe to,
// and the expiry warning, which is no event.
const (
	KindRequestCreated = lapse.EventRequestCreated
	KindRequestDecided = lapse.EventRequestDecided
	KindGrantStarted   = lapse.EventGrantProvisioned // the privilege exists on the target
	KindGrantRevoked   = lapse.EventGrantRevoked     // revocation verified
	KindBreakGlass     = lapse.EventRequestBreakGlass
	// KindGrantExpiring warns that an active grant ends within the
	// configured window.
	KindGrantExpiring = "grant.expiring"
	// KindTest is what Notifier.Ping sends; no webhook subscribes to it.
	KindTest = "notify.test"
)

// Kinds lists the kinds a webhook's events may name.
var Kinds = []string{KindRequestCreated, KindRequestDecided, KindGrantStarted, KindGrantExpiring, KindGrantRevoked, KindBreakGlass}

// Formats of the body.
const (
	FormatJSON  = "json"  // a Notification
	FormatSlack = "slack" // {"text": ..., "blocks": [...]} for a Slack incoming webhook
)

// Notification is the JSON body of a call in the json format. It names
// what happened and to whom, never a credential: no field is copied from
// the grant's credentials, its connector state or the request's reason.
type Notification struct {
	// ID is the idempotency key: "event-<seq>" for an event,
	// "expiring-<grant>-<unix expiry>" for an expiry warning.
	ID   string    `json:"id"`
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// Seq is the audit log sequence of the event (0 for a warning).
	Seq         int64  `json:"seq,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
	GrantID     string `json:"grant_id,omitempty"`
	Entitlement string `json:"entitlement,omitempty"`
	// PrincipalID is who asked for or holds the privilege.
	PrincipalID string `json:"principal_id,omitempty"`
	// ActorID is who acted, when someone other than the principal did
	// (the approver whose vote decided, the operator who revoked), or
	// "lapse" for the engine.
	ActorID string `json:"actor_id,omitempty"`
	Outcome string `json:"outcome,omitempty"`
	// ExpiresAt is the grant's deadline (grant.provisioned, grant.expiring).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// SkippedApprovers are the approvers a break-glass request did not
	// wait for, each of whom must be told; ReviewDue is the deadline of
	// its mandatory post-review.
	SkippedApprovers []string  `json:"skipped_approvers,omitempty"`
	ReviewDue        time.Time `json:"review_due,omitzero"`
	// Text is one line for people.
	Text string `json:"text"`
}

// relevant reports whether events of type t become notifications.
func relevant(t string) bool {
	return t != KindGrantExpiring && slices.Contains(Kinds, t)
}

// eventNotification builds the notification of ev, reading the request or
// grant it is about for the entitlement and principal. A request or grant
// that is not found leaves those fields empty; other store errors are
// returned, so the event is tried again.
func eventNotification(ctx context.Context, st Store, ev *lapse.Event) (*Notification, error) {
	n := &Notification{
		ID: "event-" + strconv.FormatInt(ev.Seq, 10), Type: ev.Type, Time: ev.Time, Seq: ev.Seq,
		RequestID: ev.RequestID, GrantID: ev.GrantID, ActorID: ev.ActorID, Outcome: ev.Outcome,
	}
	var data struct {
		Entitlement      string    `json:"entitlement"`
		Duration         string    `json:"duration"`
		EndReason        string    `json:"end_reason"`
		SkippedApprovers []string  `json:"skipped_approvers"`
		ReviewDue        time.Time `json:"review_due"`
	}
	if len(ev.Data) > 0 {
		// Best effort: an event whose data has another shape still
		// notifies, with what the columns say.
		_ = json.Unmarshal(ev.Data, &data)
	}
	var duration string
	switch ev.Type {
	case KindGrantStarted, KindGrantRevoked:
		g, err := st.GetGrant(ctx, ev.GrantID)
		switch {
		case err == nil:
			n.Entitlement, n.PrincipalID, n.RequestID = g.Entitlement, g.Principal.ID, g.RequestID
			if ev.Type == KindGrantStarted {
				n.ExpiresAt = g.ExpiresAt
			}
		case lapse.ErrorCode(err) != lapse.ENOTFOUND:
			return nil, fmt.Errorf("read grant %s of event %d: %w", ev.GrantID, ev.Seq, err)
		}
	default:
		r, err := st.GetRequest(ctx, ev.RequestID)
		switch {
		case err == nil:
			n.Entitlement, n.PrincipalID = r.Entitlement, r.Requester.ID
			duration = r.Duration.String()
		case lapse.ErrorCode(err) != lapse.ENOTFOUND:
			return nil, fmt.Errorf("read request %s of event %d: %w", ev.RequestID, ev.Seq, err)
		}
	}
	if n.Entitlement == "" {
		n.Entitlement = data.Entitlement
	}
	if duration == "" {
		duration = data.Duration
	}
	if ev.Type == KindBreakGlass {
		n.SkippedApprovers = data.SkippedApprovers
		n.ReviewDue = data.ReviewDue
	}
	n.Text = eventText(n, duration, data.EndReason)
	return n, nil
}

// expiringNotification warns that g ends within the window.
func expiringNotification(g *lapse.Grant, now time.Time) *Notification {
	n := &Notification{
		ID:   "expiring-" + g.ID + "-" + strconv.FormatInt(g.ExpiresAt.Unix(), 10),
		Type: KindGrantExpiring, Time: now,
		RequestID: g.RequestID, GrantID: g.ID, Entitlement: g.Entitlement, PrincipalID: g.Principal.ID,
		Outcome: string(g.State), ExpiresAt: g.ExpiresAt,
	}
	left := g.ExpiresAt.Sub(now).Round(time.Second)
	n.Text = fmt.Sprintf("%s's %s expires in %s, at %s (grant %s)", who(n.PrincipalID), what(n.Entitlement), left, clock(g.ExpiresAt), g.ID)
	return n
}

func who(id string) string {
	if id == "" {
		return "someone"
	}
	return id
}

func what(ent string) string {
	if ent == "" {
		return "an entitlement"
	}
	return ent
}

func clock(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 MST") }

// eventText is the line for people.
func eventText(n *Notification, duration, endReason string) string {
	switch n.Type {
	case KindRequestCreated:
		s := fmt.Sprintf("%s requested %s", who(n.PrincipalID), what(n.Entitlement))
		if duration != "" {
			s += " for " + duration
		}
		return s + " (request " + n.RequestID + ")"
	case KindRequestDecided:
		s := fmt.Sprintf("The request of %s for %s was %s", who(n.PrincipalID), what(n.Entitlement), orDash(n.Outcome))
		if n.ActorID != "" && n.ActorID != "lapse" && n.ActorID != n.PrincipalID {
			s += " (decided by " + n.ActorID + ")"
		}
		return s + " (request " + n.RequestID + ")"
	case KindGrantStarted:
		s := fmt.Sprintf("%s now holds %s", who(n.PrincipalID), what(n.Entitlement))
		if !n.ExpiresAt.IsZero() {
			s += " until " + clock(n.ExpiresAt)
		}
		return s + " (grant " + n.GrantID + ")"
	case KindGrantRevoked:
		s := fmt.Sprintf("%s of %s is revoked, and the revocation verified", what(n.Entitlement), who(n.PrincipalID))
		if endReason != "" {
			s += " (" + endReason + ")"
		}
		return s + " (grant " + n.GrantID + ")"
	case KindBreakGlass:
		s := fmt.Sprintf("BREAK-GLASS: %s took %s without approval (request %s).", who(n.PrincipalID), what(n.Entitlement), n.RequestID)
		if len(n.SkippedApprovers) > 0 {
			s += " Skipped approvers: " + strings.Join(n.SkippedApprovers, ", ") + "."
		}
		if !n.ReviewDue.IsZero() {
			s += " Post-review due by " + clock(n.ReviewDue) + "."
		}
		return s
	}
	return n.Type
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning
// to, so an entitlement or principal name cannot become a link or an
// @channel mention.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks,omitempty"`
}

type slackBlock struct {
	Type     string      `json:"type"`
	Text     *slackText  `json:"text,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// encode renders n in format.
func encode(format string, n *Notification) ([]byte, error) {
	if format != FormatSlack {
		return json.Marshal(n)
	}
	text := slackEscape.Replace(n.Text)
	var ids []string
	for _, kv := range [][2]string{{"request", n.RequestID}, {"grant", n.GrantID}, {"event", n.Type}, {"id", n.ID}} {
		if kv[1] != "" {
			ids = append(ids, kv[0]+" `"+slackEscape.Replace(kv[1])+"`")
		}
	}
	msg := slackMessage{Text: text, Blocks: []slackBlock{
		{Type: "section", Text: &slackText{Type: "mrkdwn", Text: text}},
		{Type: "context", Elements: []slackText{{Type: "mrkdwn", Text: strings.Join(ids, " · ")}}},
	}}
	return json.Marshal(msg)
}
