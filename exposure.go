package lapse

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Where a checkpoint path was declared.
const (
	PathFromConnector = "connector" // the target's connector knows it (connector.Mapper)
	PathFromConfig    = "config"    // the configuration adds it (a pooler, a cache)
)

// What happens to a request whose entitlement's exposure bound exceeds its
// limit (Exposure.OverLimit).
const (
	// OverLimitRefuse refuses the request (the default).
	OverLimitRefuse = "refuse"
	// OverLimitApproval makes the request need Exposure.Approval, the
	// higher approval tier, instead of the entitlement's own rule.
	OverLimitApproval = "approval"
)

// CheckpointPath is one place on an entitlement's checkpoint map (DESIGN.md
// §5): where access is created or consumed — the target itself, its
// sessions, a pooler, an API server that caches tokens — how it is killed
// and verified there on revocation, and how long it can keep working there
// after Lapse has revoked it.
type CheckpointPath struct {
	Name string         `json:"name"`
	Kind CheckpointKind `json:"kind"`
	// Source is PathFromConnector or PathFromConfig (a configured path
	// with the name of a connector's path replaces it).
	Source string `json:"source"`
	// CreatedAt and ConsumedAt say where the access is made and where it
	// is used, in words ("PostgreSQL role lapse_<grant> on db:5432",
	// "pgbouncer 10.0.0.5:6432").
	CreatedAt  string `json:"created_at,omitempty"`
	ConsumedAt string `json:"consumed_at,omitempty"`
	// Kill is what ends the access there; Verify what proves it ended.
	Kill   string `json:"kill,omitempty"`
	Verify string `json:"verify,omitempty"`
	// Outlives is how long the access can keep working at this path after
	// revocation (a cache's TTL); zero when revocation ends it.
	Outlives Duration `json:"outlives,omitzero"`
	// UntilExpiry: the path accepts the access until the grant's own
	// deadline (a token's exp, verified offline), so its window is the
	// entitlement's max_duration plus Outlives.
	UntilExpiry bool `json:"until_expiry,omitempty"`
	// Unbounded: nothing Lapse does ends the access there (privileges
	// passed on with a grant option).
	Unbounded bool `json:"unbounded,omitempty"`
}

// Window returns how long access can keep working at p after revocation,
// for a grant of at most maxDuration, and false when nothing bounds it.
func (p *CheckpointPath) Window(maxDuration time.Duration) (time.Duration, bool) {
	if p.Unbounded {
		return 0, false
	}
	w := p.Outlives.D()
	if p.UntilExpiry {
		w += maxDuration
	}
	return w, true
}

// OutlivesText describes p's window for people: "0", "30s", "until expiry
// (max_duration) + 1m", "unbounded".
func (p *CheckpointPath) OutlivesText() string {
	switch {
	case p.Unbounded:
		return "unbounded"
	case p.UntilExpiry && p.Outlives > 0:
		return "until expiry + " + p.Outlives.String()
	case p.UntilExpiry:
		return "until expiry"
	case p.Outlives == 0:
		return "0"
	}
	return p.Outlives.String()
}

// Exposure is an entitlement's checkpoint map and the worst-case exposure
// it implies: how long, at most, a grant's access can outlive its
// revocation somewhere. The configuration sets the policy (Limit,
// OverLimit, Approval) and the paths only it knows; the broker completes
// it with the paths the target's connector declares (Complete), before any
// request is filed.
type Exposure struct {
	Paths []CheckpointPath `json:"paths,omitempty"`
	// RevocationLatency is what the connector declares as the longest a
	// revocation takes to end the access it knows of (waiting for killed
	// sessions to go).
	RevocationLatency Duration `json:"revocation_latency,omitzero"`
	// Bound is the worst-case exposure after revocation: the largest
	// window of any path plus RevocationLatency. Meaningless when
	// Unbounded.
	Bound     Duration `json:"bound,omitzero"`
	Unbounded bool     `json:"unbounded,omitempty"`
	// BoundBy names the path whose window sets the bound ("" when no path
	// outlives revocation).
	BoundBy string `json:"bound_by,omitempty"`
	// Limit is the most exposure policy accepts (the entitlement's own, or
	// zsp.max_exposure); zero means no limit.
	Limit Duration `json:"limit,omitzero"`
	// OverLimit is OverLimitRefuse or OverLimitApproval ("" = refuse).
	OverLimit string `json:"over_limit,omitempty"`
	// Approval is the higher approval tier that replaces the entitlement's
	// own rule when the bound exceeds the limit and OverLimit is approval.
	Approval *ApprovalRule `json:"approval,omitempty"`
	// Exceeded reports that the bound exceeds the limit.
	Exceeded bool `json:"exceeded,omitempty"`
}

// Complete returns the exposure of an entitlement whose policy (and
// configured paths) is x, which may be nil: the connector's paths, each
// replaced by a configured path of the same name, then the other
// configured paths, with the bound computed for grants of at most
// maxDuration. x is not changed.
func (x *Exposure) Complete(connector []CheckpointPath, latency, maxDuration time.Duration) *Exposure {
	out := &Exposure{RevocationLatency: Duration(latency)}
	var configured []CheckpointPath
	if x != nil {
		out.Limit, out.OverLimit = x.Limit, x.OverLimit
		if x.Approval != nil {
			a := *x.Approval
			a.Approvers = slices.Clone(a.Approvers)
			out.Approval = &a
		}
		configured = x.Paths
	}
	used := make([]bool, len(configured))
	for _, p := range connector {
		p.Source = PathFromConnector
		for i, c := range configured {
			if c.Name == p.Name {
				p, used[i] = override(p, c), true
				break
			}
		}
		out.Paths = append(out.Paths, p)
	}
	for i, c := range configured {
		if used[i] {
			continue
		}
		c.Source = PathFromConfig
		if c.Kind == "" {
			c.Kind = CheckpointConsumer
		}
		out.Paths = append(out.Paths, c)
	}
	var worst time.Duration
	for i := range out.Paths {
		p := &out.Paths[i]
		w, ok := p.Window(maxDuration)
		if !ok {
			if !out.Unbounded {
				out.Unbounded, out.BoundBy = true, p.Name
			}
			continue
		}
		if !out.Unbounded && w > worst {
			worst, out.BoundBy = w, p.Name
		}
	}
	if out.Unbounded {
		worst = 0
	}
	out.Bound = Duration(worst + latency)
	out.Exceeded = out.Limit > 0 && (out.Unbounded || out.Bound > out.Limit)
	return out
}

// override is connector path p replaced by configured path c: what c says,
// and what it leaves out from p.
func override(p, c CheckpointPath) CheckpointPath {
	c.Source = PathFromConfig
	if c.Kind == "" {
		c.Kind = p.Kind
	}
	if c.CreatedAt == "" {
		c.CreatedAt = p.CreatedAt
	}
	if c.ConsumedAt == "" {
		c.ConsumedAt = p.ConsumedAt
	}
	if c.Kill == "" {
		c.Kill = p.Kill
	}
	if c.Verify == "" {
		c.Verify = p.Verify
	}
	return c
}

// Policy returns OverLimit, or OverLimitRefuse when it is not set.
func (x *Exposure) Policy() string {
	if x == nil || x.OverLimit == "" {
		return OverLimitRefuse
	}
	return x.OverLimit
}

// BoundText describes the bound for people: "unbounded (path
// grant-options)", "45s (path pgbouncer outlives revocation by 30s, plus a
// revocation latency of 15s)", "0".
func (x *Exposure) BoundText(maxDuration time.Duration) string {
	if x == nil {
		return "0"
	}
	if x.Unbounded {
		return fmt.Sprintf("unbounded (path %s: nothing Lapse does ends the access there)", x.BoundBy)
	}
	var parts []string
	if x.BoundBy != "" {
		for i := range x.Paths {
			if p := &x.Paths[i]; p.Name == x.BoundBy {
				w, _ := p.Window(maxDuration)
				how := "outlives revocation by " + Duration(w).String()
				if p.UntilExpiry {
					how = "accepts the access until it expires, up to " + Duration(w).String()
				}
				parts = append(parts, "path "+p.Name+" "+how)
				break
			}
		}
	}
	if x.RevocationLatency > 0 {
		parts = append(parts, "a revocation latency of "+x.RevocationLatency.String())
	}
	if len(parts) == 0 {
		return "0 (revocation ends the access everywhere)"
	}
	return x.Bound.String() + " (" + strings.Join(parts, ", plus ") + ")"
}
