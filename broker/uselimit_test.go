package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// TestMaxUsesNeedsAUseLimiter: the catalog refuses max_uses on a target
// whose connector cannot count uses (the fake), naming the entitlement,
// and keeps the catalog it had.
func TestMaxUsesNeedsAUseLimiter(t *testing.T) {
	e := newEnv(t, sqltest.OpenSQLite(t))
	before := e.broker.PolicyVersion()
	limited := &lapse.Entitlement{
		Name: "db/once", Target: "fake", Lanes: []lapse.PrincipalKind{lapse.KindService},
		DefaultDuration: lapse.Duration(time.Minute), MaxDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Auto: true}, MaxUses: 1,
	}
	err := e.broker.SetCatalog(append(catalog(), limited))
	if err == nil || !strings.Contains(err.Error(), "db/once") || !strings.Contains(err.Error(), "max_uses") {
		t.Fatalf("SetCatalog = %v, want a refusal naming db/once and max_uses", err)
	}
	if e.broker.PolicyVersion() != before {
		t.Error("a refused catalog was installed")
	}
	limited.MaxUses = -1
	if err := e.broker.SetCatalog(append(catalog(), limited)); err == nil {
		t.Error("a negative max_uses was accepted")
	}
}
