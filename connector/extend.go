package connector

import (
	"context"
	"encoding/json"
	"time"

	"github.com/lapsehq/lapse"
)

// Extender is implemented by connectors that can move the deadline of a
// live grant: those whose target keeps the deadline itself (PostgreSQL's
// VALID UNTIL, a MariaDB expiry event) and must be told, and those whose
// target keeps none (Redis ACL users), for which Extend checks nothing is
// needed and returns nil. A connector that does not implement it cannot
// extend a grant: its credentials carry their deadline (a signed token's
// exp claim), and a holder who needs more time asks for a new grant.
//
// Extend is idempotent and never shortens a deadline. The broker records
// the extension first and calls Extend after, as it does for every state
// change; if Extend fails, the target keeps the earlier deadline, so it
// refuses new logins sooner than the grant ends, never later, and the
// failure is logged and recorded.
type Extender interface {
	Extend(ctx context.Context, req *ExtendRequest) error
}

// ExtendRequest asks a connector to move a live grant's deadline.
type ExtendRequest struct {
	GrantID     string
	Principal   lapse.Principal
	Entitlement string
	Spec        map[string]any
	// State is what Grant returned.
	State json.RawMessage
	// ExpiresAt is the new deadline, later than the one the grant had.
	ExpiresAt time.Time
}
