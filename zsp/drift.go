// The drift reconciler (DESIGN.md §5, docs/zsp.md): it lists what every
// target's connector discovers and flags each privilege that no active
// grant explains — a principal Lapse made whose grant is not live in the
// store (an orphan), or an account that holds an entitled privilege on its
// own (standing privilege) — records what it found and did as audit
// events, and, when told to, removes the orphans with the connector's own
// Revoke and Verify.

package zsp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Kinds of drift.
const (
	// DriftOrphan is a principal Lapse made (by its name) that no live
	// grant of its target explains: the grant is unknown to the store,
	// revoked, on another target, or never provisioned.
	DriftOrphan = "orphan"
	// DriftStanding is an account or role Lapse did not make that holds
	// an entitled privilege outside any grant.
	DriftStanding = "standing"
)

// What the reconciler did about a finding.
const (
	ActionReported     = "reported"      // recorded, left in place
	ActionRemoved      = "removed"       // Revoke ran and Verify confirmed it gone
	ActionRemoveFailed = "remove_failed" // Revoke or Verify failed, or Verify found residue
	ActionNotRemovable = "not_removable" // an orphan whose name carries no grant ID to revoke by
)

// DefaultDriftTimeout bounds one target's Discover and one removal.
const DefaultDriftTimeout = 2 * time.Minute

// DriftConfig is what NewReconciler needs.
type DriftConfig struct {
	Store lapse.Store
	Clock lapse.Clock // nil = lapse.SystemClock{}
	// Logger receives a line per finding and per pass; nil discards.
	Logger *slog.Logger
	// Catalog is the entitlement catalog: its specs tell each connector
	// which roles and privileges are entitled.
	Catalog []*lapse.Entitlement
	// Targets are the connectors to look at, by target name.
	Targets map[string]connector.Connector
	// Remove makes the reconciler remove orphans: Revoke, then Verify,
	// with a request built from what Discover returned and what the store
	// knows of the grant. Standing privilege is never removed (docs/zsp.md
	// says why); it is always reported.
	Remove bool
	// Actor is who the events name, with the context's channel; nil means
	// the server itself (actor lapse, channel engine).
	Actor *lapse.Principal
	// Timeout bounds each target's Discover and each removal; 0 means
	// DefaultDriftTimeout.
	Timeout time.Duration
}

// Reconciler finds drift. Check runs one pass; Run runs passes on a
// schedule. It is safe for concurrent use; passes run one at a time.
type Reconciler struct {
	cfg     DriftConfig
	policy  string
	specs   map[string][]map[string]any // target → specs of its entitlements
	catalog map[string]*lapse.Entitlement
	mu      sync.Mutex // one pass at a time
}

// NewReconciler validates cfg. It returns an error when the store is
// missing or an entitlement names a target without a connector.
func NewReconciler(cfg DriftConfig) (*Reconciler, error) {
	if cfg.Store == nil {
		return nil, errors.New("zsp: drift: no store")
	}
	if cfg.Clock == nil {
		cfg.Clock = lapse.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDriftTimeout
	}
	r := &Reconciler{cfg: cfg, specs: map[string][]map[string]any{}, catalog: map[string]*lapse.Entitlement{}}
	for _, e := range cfg.Catalog {
		if _, ok := cfg.Targets[e.Target]; !ok {
			return nil, fmt.Errorf("zsp: drift: entitlement %s: no connector for target %s", e.Name, e.Target)
		}
		r.catalog[e.Name] = e
		if e.Spec != nil {
			r.specs[e.Target] = append(r.specs[e.Target], e.Spec)
		}
	}
	v, err := lapse.PolicyVersion(cfg.Catalog)
	if err != nil {
		return nil, fmt.Errorf("zsp: drift: catalog version: %w", err)
	}
	r.policy = v
	return r, nil
}

// DriftReport is the result of one pass.
type DriftReport struct {
	Time     time.Time      `json:"time"`
	Targets  []TargetReport `json:"targets"`
	Findings []Finding      `json:"findings"`
	// Remove is true when the pass was told to remove orphans.
	Remove bool `json:"remove"`
}

// TargetReport is what one target's pass saw.
type TargetReport struct {
	Name string `json:"name"`
	// Principals is how many principals Discover listed.
	Principals int `json:"principals"`
	// Explained is how many of them a live grant explains.
	Explained int `json:"explained"`
	Findings  int `json:"findings"`
	// Error says why the target could not be checked; its drift is then
	// unknown.
	Error string `json:"error,omitempty"`
}

// Finding is one privilege no active grant explains.
type Finding struct {
	Target    string `json:"target"`
	Principal string `json:"principal"`
	Kind      string `json:"kind"` // DriftOrphan or DriftStanding
	// GrantID is the grant the principal's name carries, if any.
	GrantID string `json:"grant_id,omitempty"`
	// GrantState is that grant's state in the store, when it is there.
	GrantState lapse.GrantState `json:"grant_state,omitempty"`
	Privileges []string         `json:"privileges,omitempty"`
	Reason     string           `json:"reason"`
	Action     string           `json:"action"`
	// Removal is what the removal did, when one was attempted.
	Removal *Removal `json:"removal,omitempty"`

	grant *lapse.Grant // from the store, when it is there
}

// Removal is the outcome of removing an orphan.
type Removal struct {
	// Actions are what Revoke reported doing.
	Actions []string `json:"actions,omitempty"`
	// Checkpoints are what Verify observed afterwards.
	Checkpoints []RemovalCheckpoint `json:"checkpoints,omitempty"`
	// Error says why Revoke or Verify could not run.
	Error string `json:"error,omitempty"`
}

// RemovalCheckpoint is one checkpoint of the Verify that follows a removal.
type RemovalCheckpoint struct {
	Name     string               `json:"name"`
	Kind     lapse.CheckpointKind `json:"kind"`
	Gone     bool                 `json:"gone"`
	Residue  []string             `json:"residue,omitempty"`
	Evidence map[string]any       `json:"evidence,omitempty"`
}

// Drift returns how many findings the pass made.
func (r *DriftReport) Drift() int { return len(r.Findings) }

// Incomplete returns the targets that could not be checked.
func (r *DriftReport) Incomplete() []string {
	var out []string
	for _, t := range r.Targets {
		if t.Error != "" {
			out = append(out, t.Name)
		}
	}
	return out
}

// Clean reports whether every target was checked and nothing was found.
func (r *DriftReport) Clean() bool { return r.Drift() == 0 && len(r.Incomplete()) == 0 }

// Check runs one pass over every target: Discover, explain each principal
// by a live grant, record a zsp.drift_found event for every finding (in
// one transaction, before anything is removed), remove orphans when
// configured (a zsp.drift_removed event each), and record the pass as
// zsp.drift_checked. A target that cannot be discovered is reported with
// its error and the others are still checked. It returns an error only
// when the findings could not be recorded: then nothing was removed.
func (r *Reconciler) Check(ctx context.Context) (*DriftReport, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.cfg.Clock.Now()
	rep := &DriftReport{Time: start, Remove: r.cfg.Remove, Findings: []Finding{}}

	names := make([]string, 0, len(r.cfg.Targets))
	for n := range r.cfg.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	rep.Targets = make([]TargetReport, len(names))
	found := make([][]Finding, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.Targets[i], found[i] = r.checkTarget(ctx, name, start)
		}()
	}
	wg.Wait()
	for i := range names {
		rep.Findings = append(rep.Findings, found[i]...)
	}
	for i := range rep.Findings {
		f := &rep.Findings[i]
		switch {
		case f.Kind == DriftStanding || !r.cfg.Remove:
			f.Action = ActionReported
		case f.GrantID == "":
			f.Action = ActionNotRemovable
		default:
			f.Action = ActionRemoved // intended; corrected after the removal
		}
	}

	// Intent first: every finding is on record before any removal.
	err := r.cfg.Store.Update(ctx, func(tx lapse.Tx) error {
		for i := range rep.Findings {
			f := &rep.Findings[i]
			data := findingData(f)
			if f.Action == ActionRemoved {
				data["action"] = "remove"
			}
			if err := tx.AppendEvent(ctx, r.event(ctx, lapse.EventDriftFound, f, f.Kind, data)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("zsp: drift: record findings: %w", err)
	}
	for i := range rep.Findings {
		f := &rep.Findings[i]
		r.cfg.Logger.Warn("drift: a privilege no active grant explains", "target", f.Target, "principal", f.Principal,
			"kind", f.Kind, "grant", f.GrantID, "reason", f.Reason)
		if f.Action != ActionRemoved {
			continue
		}
		r.remove(ctx, f)
		outcome := "removed"
		if f.Action != ActionRemoved {
			outcome = "failed"
			r.cfg.Logger.Error("drift: removal failed", "target", f.Target, "principal", f.Principal, "err", f.Removal.Error)
		}
		data := findingData(f)
		data["removal"] = f.Removal
		err := r.cfg.Store.Update(ctx, func(tx lapse.Tx) error {
			return tx.AppendEvent(ctx, r.event(ctx, lapse.EventDriftRemoved, f, outcome, data))
		})
		if err != nil {
			// The removal happened; the next pass finds nothing and says so.
			r.cfg.Logger.Error("drift: cannot record a removal", "target", f.Target, "principal", f.Principal, "err", err)
		}
	}

	outcome := "clean"
	switch {
	case rep.Drift() > 0:
		outcome = "drift"
	case len(rep.Incomplete()) > 0:
		outcome = "incomplete"
	}
	counts := map[string]int{}
	for _, f := range rep.Findings {
		counts[f.Kind]++
		counts[f.Action]++
	}
	summary := map[string]any{"targets": rep.Targets, "findings": rep.Drift(), "remove": r.cfg.Remove, "counts": counts}
	err = r.cfg.Store.Update(ctx, func(tx lapse.Tx) error {
		return tx.AppendEvent(ctx, r.event(ctx, lapse.EventDriftChecked, nil, outcome, summary))
	})
	if err != nil {
		return rep, fmt.Errorf("zsp: drift: record the pass: %w", err)
	}
	r.cfg.Logger.Info("drift check", "outcome", outcome, "findings", rep.Drift(), "incomplete", rep.Incomplete())
	return rep, nil
}

// checkTarget discovers one target and explains what it lists.
func (r *Reconciler) checkTarget(ctx context.Context, name string, start time.Time) (TargetReport, []Finding) {
	tr := TargetReport{Name: name}
	conn := r.cfg.Targets[name]
	dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	resp, err := conn.Discover(dctx, &connector.DiscoverRequest{Specs: r.specs[name]})
	cancel()
	if err != nil {
		tr.Error = "discover: " + lapse.ErrorMessage(err)
		r.cfg.Logger.Error("drift: cannot discover the target", "target", name, "err", err)
		return tr, nil
	}
	tr.Principals = len(resp.Principals)
	// The store is read after the target, so a grant made while Discover
	// ran is seen (its row precedes its principal).
	live, err := r.cfg.Store.ListGrants(ctx, lapse.GrantFilter{Target: name, Live: true, Limit: lapse.MaxListLimit})
	if err != nil {
		tr.Error = "list live grants: " + lapse.ErrorMessage(err)
		return tr, nil
	}
	byID := make(map[string]*lapse.Grant, len(live))
	for _, g := range live {
		byID[g.ID] = g
	}
	var out []Finding
	for _, p := range resp.Principals {
		var f *Finding
		switch {
		case p.Ephemeral:
			f, err = r.explain(ctx, name, p, byID, start)
			if err != nil {
				tr.Error = "read grant " + p.GrantID + ": " + lapse.ErrorMessage(err)
				return tr, nil
			}
		case len(p.Privileges) > 0:
			f = &Finding{Target: name, Principal: p.Name, Kind: DriftStanding, Privileges: p.Privileges,
				Reason: "holds entitled privileges outside any grant (standing privilege)"}
		}
		if f == nil {
			tr.Explained++
			continue
		}
		out = append(out, *f)
	}
	tr.Findings = len(out)
	return tr, out
}

// explain returns nil when a live grant of the target explains the
// Lapse-made principal p, and the finding otherwise.
func (r *Reconciler) explain(ctx context.Context, target string, p connector.DiscoveredPrincipal, live map[string]*lapse.Grant, start time.Time) (*Finding, error) {
	f := &Finding{Target: target, Principal: p.Name, Kind: DriftOrphan, GrantID: p.GrantID, Privileges: p.Privileges}
	if p.GrantID == "" {
		f.Reason = "made by Lapse (by its name), but the name carries no grant ID"
		return f, nil
	}
	if g := live[p.GrantID]; g != nil {
		return nil, nil
	}
	g, err := r.cfg.Store.GetGrant(ctx, p.GrantID)
	switch {
	case lapse.ErrorCode(err) == lapse.ENOTFOUND:
		f.Reason = "no grant " + p.GrantID + " in the store"
		return f, nil
	case err != nil:
		return nil, err
	}
	f.grant, f.GrantState = g, g.State
	switch {
	case g.Target != target:
		f.Reason = "grant " + g.ID + " is on target " + g.Target + ", not this one"
	case g.State.Live():
		return nil, nil // live, beyond the listing's limit
	case g.State == lapse.GrantRevoked && !g.RevokedAt.Before(start):
		return nil, nil // revoked while Discover ran: it was live when seen
	case g.State == lapse.GrantRevoked:
		f.Reason = "grant " + g.ID + " was revoked (verified " + g.RevokedAt.UTC().Format(time.RFC3339) + "), yet its principal is there"
	default:
		f.Reason = "grant " + g.ID + " is " + string(g.State) + ": it was never provisioned"
	}
	return f, nil
}

// remove revokes and verifies an orphan with a request built from what
// Discover returned (the grant ID its name carries) and what the store
// knows of the grant (its principal, its connector state, its
// entitlement's spec), and sets f.Action and f.Removal.
func (r *Reconciler) remove(ctx context.Context, f *Finding) {
	conn := r.cfg.Targets[f.Target]
	var (
		principal lapse.Principal
		state     json.RawMessage
		spec      map[string]any
	)
	if g := f.grant; g != nil && g.Target == f.Target {
		principal, state = g.Principal, g.ConnectorState
		if e := r.catalog[g.Entitlement]; e != nil && e.Target == f.Target {
			spec = e.Spec
		}
	}
	rctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	f.Removal = &Removal{}
	f.Action = ActionRemoveFailed
	rev, err := conn.Revoke(rctx, &connector.RevokeRequest{GrantID: f.GrantID, Principal: principal, Spec: spec, State: state})
	if err != nil {
		f.Removal.Error = "revoke: " + lapse.ErrorMessage(err)
		return
	}
	f.Removal.Actions = rev.Actions
	ver, err := conn.Verify(rctx, &connector.VerifyRequest{GrantID: f.GrantID, Principal: principal, Spec: spec, State: state})
	if err != nil {
		f.Removal.Error = "verify: " + lapse.ErrorMessage(err)
		return
	}
	for _, c := range ver.Checkpoints {
		f.Removal.Checkpoints = append(f.Removal.Checkpoints, RemovalCheckpoint{Name: c.Name, Kind: c.Kind, Gone: c.Gone, Residue: c.Residue, Evidence: c.Evidence})
	}
	if !ver.Gone() {
		var residue []string
		for _, c := range ver.Checkpoints {
			residue = append(residue, c.Residue...)
		}
		f.Removal.Error = "verify found residue: " + strings.Join(residue, "; ")
		return
	}
	f.Action = ActionRemoved
}

// findingData is a finding as event data.
func findingData(f *Finding) map[string]any {
	d := map[string]any{"target": f.Target, "principal": f.Principal, "kind": f.Kind, "reason": f.Reason, "action": f.Action}
	if f.GrantID != "" {
		d["grant_id"] = f.GrantID
	}
	if f.GrantState != "" {
		d["grant_state"] = f.GrantState
	}
	if len(f.Privileges) > 0 {
		d["privileges"] = slices.Clone(f.Privileges)
	}
	return d
}

// event builds a drift event. It names the grant when the store has it,
// so the grant's own history shows the drift.
func (r *Reconciler) event(ctx context.Context, typ string, f *Finding, outcome string, data map[string]any) *lapse.Event {
	e := &lapse.Event{Time: r.cfg.Clock.Now(), Type: typ, Outcome: outcome, PolicyVersion: r.policy,
		ActorID: "lapse", Channel: lapse.ChannelEngine}
	if a := r.cfg.Actor; a != nil {
		e.ActorID, e.ActorKind, e.Act, e.Channel = a.ID, a.Kind, a.Act, lapse.ChannelFrom(ctx)
	}
	if f != nil && f.grant != nil {
		e.GrantID, e.RequestID, e.RequestHash = f.grant.ID, f.grant.RequestID, f.grant.RequestHash
	}
	b, err := json.Marshal(data)
	if err != nil {
		b = []byte(`{"error":"unencodable event data"}`)
	}
	e.Data = b
	return e
}

// Run runs a pass at once and then every interval until ctx ends. A pass
// that fails is logged and the schedule goes on. It returns nil when ctx
// ends.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("zsp: drift: the interval must be positive")
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.Check(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.Error("drift check failed", "err", err)
		}
		t.Reset(interval)
	}
}
