package broker

import (
	"context"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// The audit gate makes the broker fail closed when the audit log is
// degraded (DESIGN.md §1.4: no new privilege while the audit sink is
// unavailable; never block revoking). It is asked at two kinds of places:
//
//   - where a decision would be made — an approval vote and an
//     auto-approved request — so the caller gets a clear EUNAVAILABLE and
//     nothing is stored;
//   - at the connector's Grant, through gatedConnector, the one call
//     through which every privilege is issued, inline or by the engine. A
//     grant approved just before the log degraded is then not provisioned:
//     the engine records the refusal as a failed provisioning and runs the
//     ordinary verified revocation of whatever might exist, like any
//     other provisioning failure.
//
// Revoke and Verify pass through untouched, so releases, revocations,
// deadlines and retries carry on; their events are written with the state
// changes as always and integrated into the log when it recovers.

// errAuditDegraded is the refusal callers see. The cause (which sink, what
// error) stays in Err for the server's log.
func errAuditDegraded(cause error) error {
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Reason: lapse.ReasonAuditDegraded,
		Message: "the audit log is degraded: no new approval or grant until it recovers (revocations continue)", Err: cause}
}

// auditOpen returns nil while new approvals and privileges may be issued,
// and otherwise EUNAVAILABLE with reason lapse.ReasonAuditDegraded.
func (b *Broker) auditOpen(ctx context.Context) error {
	if b.auditGate == nil {
		return nil
	}
	if err := b.auditGate(ctx); err != nil {
		return errAuditDegraded(err)
	}
	return nil
}

// gatedConnector asks the audit gate before every Grant. Everything else
// is the connector's own.
type gatedConnector struct {
	connector.Connector
	b *Broker
}

// Grant implements connector.Connector. The refusal carries no cause: it
// is recorded in the grant's last error and its events, which the grantee
// may read, and the cause (a sink's address, a database error) is the
// operator's business, already in the server's log.
func (c *gatedConnector) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	if err := c.b.auditOpen(ctx); err != nil {
		return nil, errAuditDegraded(nil)
	}
	return c.Connector.Grant(ctx, req)
}

// ValidateSpec implements connector.SpecValidator when the connector does,
// so wrapping does not hide the catalog check.
func (c *gatedConnector) ValidateSpec(spec map[string]any) error {
	if v, ok := c.Connector.(connector.SpecValidator); ok {
		return v.ValidateSpec(spec)
	}
	return nil
}

// CountsUses implements connector.UseLimiter by asking the wrapped
// connector, so wrapping neither hides nor invents the ability to count.
func (c *gatedConnector) CountsUses() bool {
	ul, ok := c.Connector.(connector.UseLimiter)
	return ok && ul.CountsUses()
}

var (
	_ connector.Connector     = (*gatedConnector)(nil)
	_ connector.SpecValidator = (*gatedConnector)(nil)
	_ connector.UseLimiter    = (*gatedConnector)(nil)
)
