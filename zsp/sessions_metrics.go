package zsp

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CanaryMetrics are the session-level tests' Prometheus series. Names are
// stable: dashboards and alerts depend on them (docs/zsp.md).
type CanaryMetrics struct {
	runs        *prometheus.CounterVec
	denial      *prometheus.GaugeVec
	verified    *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
}

// NewCanaryMetrics creates the series for targets (so every target's counters
// exist from the start at 0) and registers them with reg, when it is set.
func NewCanaryMetrics(reg prometheus.Registerer, targets []string) *CanaryMetrics {
	m := &CanaryMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lapse_canary_runs_total",
			Help: "Session-level tests (lapse zsp test, the scheduled canary) by target and result.",
		}, []string{"target", "result"}),
		denial: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_canary_denial_seconds",
			Help: "Last session-level test: time from the canary grant's release until a new login was refused (check=login) or the held session ended (check=session).",
		}, []string{"target", "check"}),
		verified: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_canary_revocation_seconds",
			Help: "Last session-level test: time from the canary grant's release until its revocation was verified.",
		}, []string{"target"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_canary_last_success_timestamp_seconds",
			Help: "When the session-level test of the target last passed (Unix time).",
		}, []string{"target"}),
	}
	for _, t := range targets {
		for _, r := range []string{ResultPassed, ResultFailed, ResultSkipped} {
			m.runs.WithLabelValues(t, r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.denial, m.verified, m.lastSuccess)
	}
	return m
}

func (m *CanaryMetrics) observe(r *SessionResult) {
	// The counter goes last: a scrape that sees a run counted must also
	// see that run's timings.
	// A time that was not measured leaves the last measured one.
	set := func(g *prometheus.GaugeVec, v *float64, labels ...string) {
		if v != nil {
			g.WithLabelValues(labels...).Set(*v / 1000)
		}
	}
	set(m.denial, r.Timings.LoginDeniedMS, r.Target, "login")
	set(m.denial, r.Timings.SessionEndedMS, r.Target, "session")
	set(m.verified, r.Timings.VerifiedMS, r.Target)
	if r.Passed() {
		m.lastSuccess.WithLabelValues(r.Target).Set(float64(time.Now().Unix()))
	}
	m.runs.WithLabelValues(r.Target, r.Result).Inc()
}
