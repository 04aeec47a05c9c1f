package zsp_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/zsp"
)

// Every real connector passes the session-level test: after the verified
// revocation a new login is refused and the held session has ended. Each
// run is recorded in the canary grant's history with its timings.
func TestSessionLevelTestsPassOnRealTargets(t *testing.T) {
	store := openStore(t)
	st := tester(t, store,
		postgresTarget(t, "pg"),
		mariadbTarget(t, "maria", false),
		redisTarget(t, "cache"),
		tokenTarget(t, "api", store),
	)
	reg := prometheus.NewRegistry()
	st.Metrics = zsp.NewCanaryMetrics(reg, st.Targets())
	results, err := st.Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 4 {
		t.Fatalf("%d results, want 4", len(results))
	}
	for _, r := range results {
		if !r.Passed() {
			t.Errorf("%s: %s: %v (surviving %v)", r.Target, r.Result, r.Problems, r.Surviving)
			continue
		}
		if r.GrantState != lapse.GrantRevoked || r.Timings.VerifiedMS == nil || r.Timings.LoginDeniedMS == nil || r.Timings.SessionEndedMS == nil {
			t.Errorf("%s: state %s, timings %+v: want revoked and every time measured", r.Target, r.GrantState, r.Timings)
		}
		evs, err := store.ListEvents(context.Background(), lapse.EventFilter{GrantID: r.GrantID})
		if err != nil {
			t.Fatal(err)
		}
		last := evs[len(evs)-1]
		if last.Type != lapse.EventCanaryPassed {
			t.Errorf("%s: last event of the canary grant is %s, want %s", r.Target, last.Type, lapse.EventCanaryPassed)
		}
		var data struct {
			Target  string      `json:"target"`
			Timings zsp.Timings `json:"timings"`
		}
		if err := json.Unmarshal(last.Data, &data); err != nil || data.Target != r.Target || data.Timings.SessionEndedMS == nil {
			t.Errorf("%s: event data %s", r.Target, last.Data)
		}
		if got := counter(t, reg, "lapse_canary_runs_total", r.Target, zsp.ResultPassed); got != 1 {
			t.Errorf("%s: lapse_canary_runs_total{result=passed} = %v", r.Target, got)
		}
	}
}

// A deliberately weakened configuration (MariaDB with
// unsafe_skip_session_kill) passes its own Verify — the grant is
// "revoked" — and fails the session-level test, which names the held
// connection that survived.
func TestWeakenedConfigurationFailsNamingTheSession(t *testing.T) {
	store := openStore(t)
	st := tester(t, store, mariadbTarget(t, "maria", true))
	results, err := st.Run(context.Background(), []string{"maria"})
	if err != nil {
		t.Fatal(err)
	}
	r := results[0]
	if r.Passed() {
		t.Fatal("the weakened configuration passed the session-level test")
	}
	if r.GrantState != lapse.GrantRevoked {
		t.Errorf("grant is %s: the weakened Verify should have passed (%v)", r.GrantState, r.Problems)
	}
	if len(r.Surviving) != 1 || !strings.Contains(r.Surviving[0], "mariadb connection") || r.Surviving[0] != r.HeldSession {
		t.Errorf("surviving = %q, want the held session %q", r.Surviving, r.HeldSession)
	}
	if r.Timings.LoginDeniedMS == nil || r.Timings.SessionEndedMS != nil {
		t.Errorf("timings = %+v: the login is refused, the session never ended", r.Timings)
	}
	evs, _ := store.ListEvents(context.Background(), lapse.EventFilter{GrantID: r.GrantID})
	if last := evs[len(evs)-1]; last.Type != lapse.EventCanaryFailed || !strings.Contains(string(last.Data), "mariadb connection") {
		t.Errorf("last event = %s %s, want %s naming the session", last.Type, last.Data, lapse.EventCanaryFailed)
	}
}

// A target whose connector cannot exercise grants is skipped when every
// target runs, and fails when it is named.
func TestUnknownAndUnexercisableTargets(t *testing.T) {
	store := openStore(t)
	st := tester(t, store, tokenTarget(t, "api", store))
	if _, err := st.Run(context.Background(), []string{"nope"}); lapse.ErrorCode(err) != lapse.EINVALID {
		t.Errorf("unknown target = %v, want invalid", err)
	}
	st.Connectors["api"] = struct{ connector.Connector }{st.Connectors["api"]}
	rs, _ := st.Run(context.Background(), nil)
	if rs[0].Result != zsp.ResultSkipped {
		t.Errorf("unexercisable target, all targets: %s, want skipped", rs[0].Result)
	}
	rs, _ = st.Run(context.Background(), []string{"api"})
	if rs[0].Result != zsp.ResultFailed {
		t.Errorf("unexercisable target, named: %s, want failed", rs[0].Result)
	}
}

// counter reads one series of a counter from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, target, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["target"] == target && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}
