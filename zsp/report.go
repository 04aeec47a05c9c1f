package zsp

// This file is the zero-standing-privilege report (docs/zsp.md,
// "Report"): what the store says about standing privilege, the lanes,
// revocation latency, failed or slow revocations and the canary, over a
// window of time. It reads only the store: the log of events for what
// happened, each grant it names for its times.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
)

// DefaultSlowRevocation is the revocation latency above which the report
// lists a revocation as slow.
const DefaultSlowRevocation = 10 * time.Second

// ReportOptions select what a report covers.
type ReportOptions struct {
	// Since, when positive, limits the report to the last Since before
	// Now: grants created or ended then, and events written then.
	Since time.Duration
	// Now is the end of the window; zero means the time of the call.
	Now time.Time
	// Slow is the latency above which a revocation is listed as slow;
	// zero means DefaultSlowRevocation.
	Slow time.Duration
}

// Report is the zero-standing-privilege report.
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Since is the start of the window (zero: the whole store).
	Since  time.Time `json:"since,omitzero"`
	SlowMS float64   `json:"slow_threshold_ms"`
	// Standing lists the privileges the drift reconciler found that no
	// active grant explained (zsp.drift_found).
	Standing []StandingPrivilege `json:"standing_privileges"`
	// Lanes counts grants by the kind of their principal; canary grants
	// are counted apart, as lane "canary".
	Lanes []LaneCount `json:"grants_by_lane"`
	// Latency is the revocation latency per target: from the deadline (or
	// the release or revocation) until revocation was verified. Canary
	// grants are not counted here (see Canaries).
	Latency []TargetLatency `json:"revocation_latency"`
	// Problems are revocations that failed at least once (revoke_failed or
	// a failed verification, now or ever) or were slower than the
	// threshold.
	Problems []RevocationProblem `json:"failed_or_slow_revocations"`
	// Canaries are the session-level tests' results, newest last.
	Canaries []CanaryRun `json:"canary_results"`
	// Windows are the grants' exposure windows per target (for the
	// charts): when each was active and how long it outlived its end.
	Windows []GrantWindow `json:"exposure_windows"`
}

// StandingPrivilege is one zsp.drift_found event.
type StandingPrivilege struct {
	Time       time.Time `json:"time"`
	Target     string    `json:"target"`
	Principal  string    `json:"principal"`
	Kind       string    `json:"kind"`
	Reason     string    `json:"reason,omitempty"`
	Privileges []string  `json:"privileges,omitempty"`
	GrantID    string    `json:"grant_id,omitempty"`
	// Removed is true when a later zsp.drift_removed event says the
	// reconciler removed it.
	Removed bool `json:"removed"`
}

// LaneCount is how many grants a lane received in the window.
type LaneCount struct {
	Lane    string `json:"lane"`
	Grants  int    `json:"grants"`
	Revoked int    `json:"revoked"`
	Live    int    `json:"live"`
}

// TargetLatency summarises the revocation latency of one target.
type TargetLatency struct {
	Target string  `json:"target"`
	Count  int     `json:"count"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
	// Points are the single revocations (time verified, latency), oldest
	// first, for the chart.
	Points []LatencyPoint `json:"points"`
}

// LatencyPoint is one verified revocation.
type LatencyPoint struct {
	GrantID   string    `json:"grant_id"`
	RevokedAt time.Time `json:"revoked_at"`
	LatencyMS float64   `json:"latency_ms"`
	EndReason string    `json:"end_reason"`
}

// RevocationProblem is a revocation that failed at least once or was slow.
type RevocationProblem struct {
	GrantID     string           `json:"grant_id"`
	Target      string           `json:"target"`
	Entitlement string           `json:"entitlement"`
	Principal   string           `json:"principal"`
	State       lapse.GrantState `json:"state"`
	// Failures counts grant.revoke_failed and grant.verify_failed events.
	Failures  int     `json:"failures"`
	LastError string  `json:"last_error,omitempty"`
	LatencyMS float64 `json:"latency_ms,omitempty"`
	// Why is "failing now", "failed before" or "slow" (and combinations).
	Why string `json:"why"`
}

// CanaryRun is one zsp.canary_passed or zsp.canary_failed event.
type CanaryRun struct {
	Time        time.Time `json:"time"`
	Target      string    `json:"target"`
	Entitlement string    `json:"entitlement,omitempty"`
	Result      string    `json:"result"`
	GrantID     string    `json:"grant_id,omitempty"`
	Timings     Timings   `json:"timings"`
	Surviving   []string  `json:"surviving,omitempty"`
	Problems    []string  `json:"problems,omitempty"`
}

// GrantWindow is when one grant's privilege existed.
type GrantWindow struct {
	GrantID string `json:"grant_id"`
	Target  string `json:"target"`
	// Start is when it became active (or was created, if never active);
	// End when it should have stopped (deadline, release or revocation,
	// zero while it has not ended); Revoked when revocation was verified
	// (zero while it has not been).
	Start   time.Time        `json:"start"`
	End     time.Time        `json:"end,omitzero"`
	Revoked time.Time        `json:"revoked,omitzero"`
	State   lapse.GrantState `json:"state"`
}

// eventPage is how many events BuildReport reads per store call.
const eventPage = 1000

// grantFacts is what the log says about one grant.
type grantFacts struct {
	failures int
}

// BuildReport reads the store and builds the report.
func BuildReport(ctx context.Context, store lapse.Store, opts ReportOptions) (*Report, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	slow := opts.Slow
	if slow <= 0 {
		slow = DefaultSlowRevocation
	}
	rep := &Report{GeneratedAt: now.UTC(), SlowMS: msf(slow),
		Standing: []StandingPrivilege{}, Lanes: []LaneCount{}, Latency: []TargetLatency{}, Problems: []RevocationProblem{}, Canaries: []CanaryRun{}, Windows: []GrantWindow{}}
	var since time.Time
	if opts.Since > 0 {
		since = now.Add(-opts.Since)
		rep.Since = since.UTC()
	}
	inWindow := func(t time.Time) bool { return !t.IsZero() && !t.Before(since) && !t.After(now) }

	facts := map[string]*grantFacts{}
	var order []string // grant IDs in the order the log first names them
	type driftKey struct{ target, principal string }
	driftAt := map[driftKey][]int{}
	for after := int64(0); ; {
		evs, err := store.ListEvents(ctx, lapse.EventFilter{AfterSeq: after, Limit: eventPage})
		if err != nil {
			return nil, fmt.Errorf("zsp: report: read the log after %d: %w", after, err)
		}
		for _, ev := range evs {
			after = ev.Seq
			if ev.GrantID != "" && facts[ev.GrantID] == nil {
				facts[ev.GrantID] = &grantFacts{}
				order = append(order, ev.GrantID)
			}
			switch ev.Type {
			case lapse.EventGrantRevokeFailed, lapse.EventGrantVerifyFailed:
				facts[ev.GrantID].failures++
			case lapse.EventDriftFound:
				if !inWindow(ev.Time) {
					continue
				}
				var d struct {
					Target, Principal, Kind, Reason string
					Privileges                      []string
					GrantID                         string `json:"grant_id"`
				}
				_ = json.Unmarshal(ev.Data, &d)
				k := driftKey{d.Target, d.Principal}
				driftAt[k] = append(driftAt[k], len(rep.Standing))
				rep.Standing = append(rep.Standing, StandingPrivilege{Time: ev.Time.UTC(), Target: d.Target, Principal: d.Principal,
					Kind: d.Kind, Reason: d.Reason, Privileges: d.Privileges, GrantID: d.GrantID})
			case lapse.EventDriftRemoved:
				if ev.Outcome != "removed" {
					continue
				}
				var d struct{ Target, Principal string }
				_ = json.Unmarshal(ev.Data, &d)
				for _, i := range driftAt[driftKey{d.Target, d.Principal}] {
					rep.Standing[i].Removed = true
				}
			case lapse.EventCanaryPassed, lapse.EventCanaryFailed:
				if !inWindow(ev.Time) {
					continue
				}
				var d struct {
					Target, Entitlement, Result string
					Timings                     Timings
					Surviving, Problems         []string
				}
				_ = json.Unmarshal(ev.Data, &d)
				if d.Result == "" {
					d.Result = ev.Outcome
				}
				rep.Canaries = append(rep.Canaries, CanaryRun{Time: ev.Time.UTC(), Target: d.Target, Entitlement: d.Entitlement, Result: d.Result,
					GrantID: ev.GrantID, Timings: d.Timings, Surviving: d.Surviving, Problems: d.Problems})
			}
		}
		if len(evs) < eventPage {
			break
		}
	}

	lanes := map[string]*LaneCount{}
	latency := map[string]*TargetLatency{}
	var samples = map[string][]float64{}
	for _, id := range order {
		g, err := store.GetGrant(ctx, id)
		if lapse.ErrorCode(err) == lapse.ENOTFOUND {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("zsp: report: read grant %s: %w", id, err)
		}
		end := endOf(g)
		if !inWindow(g.CreatedAt) && !inWindow(g.RevokedAt) && !inWindow(end) && !(g.State.Live() && g.CreatedAt.Before(now)) {
			continue
		}
		canary := g.Principal.ID == broker.CanaryPrincipal.ID
		lane := string(g.Principal.Kind)
		if canary {
			lane = "canary"
		}
		lc := lanes[lane]
		if lc == nil {
			lc = &LaneCount{Lane: lane}
			lanes[lane] = lc
		}
		lc.Grants++
		switch {
		case g.State == lapse.GrantRevoked:
			lc.Revoked++
		case g.State.Live():
			lc.Live++
		}
		if !canary {
			start := g.ActivatedAt
			if start.IsZero() {
				start = g.CreatedAt
			}
			rep.Windows = append(rep.Windows, GrantWindow{GrantID: g.ID, Target: g.Target, Start: start.UTC(), End: utc(end), Revoked: utc(g.RevokedAt), State: g.State})
		}
		var lat time.Duration
		measured := false
		if g.State == lapse.GrantRevoked && !end.IsZero() && countsAsRevocation(g.EndReason) && inWindow(g.RevokedAt) {
			lat = max(g.RevokedAt.Sub(end), 0)
			measured = true
			if !canary {
				tl := latency[g.Target]
				if tl == nil {
					tl = &TargetLatency{Target: g.Target}
					latency[g.Target] = tl
				}
				tl.Points = append(tl.Points, LatencyPoint{GrantID: g.ID, RevokedAt: g.RevokedAt.UTC(), LatencyMS: msf(lat), EndReason: string(g.EndReason)})
				samples[g.Target] = append(samples[g.Target], msf(lat))
			}
		}
		f := facts[id]
		var why []string
		if g.State == lapse.GrantRevokeFailed {
			why = append(why, "failing now")
		} else if f.failures > 0 {
			why = append(why, "failed before")
		}
		if measured && lat > slow {
			why = append(why, "slow")
		}
		if len(why) > 0 {
			p := RevocationProblem{GrantID: g.ID, Target: g.Target, Entitlement: g.Entitlement, Principal: g.Principal.ID, State: g.State,
				Failures: f.failures, LastError: g.LastError, Why: strings.Join(why, ", ")}
			if measured {
				p.LatencyMS = msf(lat)
			}
			rep.Problems = append(rep.Problems, p)
		}
	}
	for _, lc := range lanes {
		rep.Lanes = append(rep.Lanes, *lc)
	}
	sort.Slice(rep.Lanes, func(i, j int) bool { return laneOrder(rep.Lanes[i].Lane) < laneOrder(rep.Lanes[j].Lane) })
	for name, tl := range latency {
		xs := samples[name]
		sort.Float64s(xs)
		tl.Count = len(xs)
		tl.P50MS, tl.P90MS, tl.P99MS, tl.MaxMS = Percentile(xs, 50), Percentile(xs, 90), Percentile(xs, 99), xs[len(xs)-1]
		sort.Slice(tl.Points, func(i, j int) bool { return tl.Points[i].RevokedAt.Before(tl.Points[j].RevokedAt) })
		rep.Latency = append(rep.Latency, *tl)
	}
	sort.Slice(rep.Latency, func(i, j int) bool { return rep.Latency[i].Target < rep.Latency[j].Target })
	sort.SliceStable(rep.Problems, func(i, j int) bool { return rep.Problems[i].Target < rep.Problems[j].Target })
	return rep, nil
}

// endOf is when g's privilege should have stopped: its deadline if it
// expired, the start of its release or revocation otherwise; zero while
// it has not ended.
func endOf(g *lapse.Grant) time.Time {
	switch {
	case g.EndReason == lapse.EndExpired:
		return g.ExpiresAt
	case !g.RevokeStartedAt.IsZero():
		return g.RevokeStartedAt
	}
	return time.Time{}
}

// countsAsRevocation reports whether a grant that ended for reason ended
// an active privilege (a failed provisioning or a cancelled request did
// not give one).
func countsAsRevocation(reason lapse.EndReason) bool {
	return reason == lapse.EndExpired || reason == lapse.EndReleased || reason == lapse.EndRevoked
}

// Percentile returns the p-th percentile of sorted (nearest rank), or 0
// for no values.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func laneOrder(l string) int {
	switch lapse.PrincipalKind(l) {
	case lapse.KindHuman:
		return 0
	case lapse.KindService:
		return 1
	case lapse.KindAgent:
		return 2
	}
	return 3
}
