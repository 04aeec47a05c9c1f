package broker

import (
	"fmt"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Exposure policy (DESIGN.md §5, docs/zsp.md). When the catalog is
// installed, each entitlement's checkpoint map is completed with the paths
// its target's connector declares and its worst-case exposure after
// revocation is computed, so it is known before any request is filed (and
// shown in the entitlement's exposure member). An entitlement whose bound
// exceeds its limit is then either refused — CreateRequest and every
// approval vote fail with EFORBIDDEN and reason
// lapse.ReasonExposureOverLimit, naming the path and the bound — or, with
// over_limit: approval, served with the higher tier as its approval rule,
// so that the tier's approvers and quorum are the ones requests are filed
// with and counted against (Request.Required, mayDecide).

// exposed returns e as the broker serves it: with its completed exposure
// and, when the bound exceeds the limit and over_limit is approval, the
// higher tier as its approval rule. e is not changed.
func exposed(e *lapse.Entitlement, conn connector.Connector) (*lapse.Entitlement, error) {
	out := *e
	out.Exposure = connector.Exposure(conn, e)
	if x := out.Exposure; x.Exceeded && x.Policy() == lapse.OverLimitApproval {
		rule, ok := tierRule(x.Approval) // escalation.go: shared with the escalation lint
		if !ok {
			return nil, fmt.Errorf("broker: entitlement %s: its exposure exceeds its limit and over_limit is approval, but no approval tier (required >= 1 and approvers) is set", e.Name)
		}
		out.Approval = rule
	}
	return &out, nil
}

// exposureRefused returns EFORBIDDEN with reason
// lapse.ReasonExposureOverLimit when e's worst-case exposure exceeds its
// limit and policy refuses such grants; otherwise nil.
func exposureRefused(e *lapse.Entitlement) error {
	x := e.Exposure
	if x == nil || !x.Exceeded || x.Policy() != lapse.OverLimitRefuse {
		return nil
	}
	return &lapse.Error{Code: lapse.EFORBIDDEN, Field: "entitlement", Reason: lapse.ReasonExposureOverLimit,
		Message: fmt.Sprintf("%s is refused by policy: its worst-case exposure after revocation is %s, over its limit of %s",
			e.Name, x.BoundText(e.MaxDuration.D()), x.Limit)}
}

// withExposure adds what the request's approvers need to know about the
// exposure to an event's data: the bound, the path that sets it and the
// limit, when there is anything to know.
func withExposure(e *lapse.Entitlement, data map[string]any) map[string]any {
	x := e.Exposure
	if x == nil || (x.Bound == 0 && !x.Unbounded && x.Limit == 0) {
		return data
	}
	ex := map[string]any{"bound": x.Bound.String()}
	if x.Unbounded {
		ex["bound"] = "unbounded"
	}
	if x.BoundBy != "" {
		ex["bound_by"] = x.BoundBy
	}
	if x.Limit > 0 {
		ex["limit"] = x.Limit.String()
		ex["exceeded"] = x.Exceeded
	}
	data["exposure"] = ex
	return data
}

// CheckpointMap implements connector.Mapper when the wrapped connector
// does, so the audit gate does not hide the checkpoint map.
func (c *gatedConnector) CheckpointMap(spec map[string]any) *connector.PathMap {
	if m, ok := c.Connector.(connector.Mapper); ok {
		return m.CheckpointMap(spec)
	}
	return nil
}

var _ connector.Mapper = (*gatedConnector)(nil)
