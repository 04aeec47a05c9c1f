package broker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
)

// metrics are the broker's Prometheus series. Names are stable: dashboards
// and alerts depend on them (docs/operations.md).
type metrics struct {
	overshoot      prometheus.Histogram
	revokeFailures *prometheus.CounterVec
	calls          *prometheus.CounterVec
	callSeconds    *prometheus.HistogramVec
	fenced         prometheus.Counter
	unknown        *prometheus.GaugeVec
	reservedGrants prometheus.Gauge
}

func newMetrics(b *Broker, reg prometheus.Registerer) *metrics {
	m := &metrics{
		overshoot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lapse_revocation_overshoot_seconds",
			Help:    "Time from a grant's deadline until its revocation was verified.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		revokeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lapse_revoke_failures_total",
			Help: "Revocation attempts that failed or whose verification found residue.",
		}, []string{"target"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lapse_connector_calls_total",
			Help: "Connector calls by target, operation and outcome.",
		}, []string{"target", "op", "outcome"}),
		callSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lapse_connector_call_seconds",
			Help:    "Connector call latency.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"target", "op"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lapse_engine_fenced_total",
			Help: "Steps skipped because this process's lease on the grant had lapsed or moved.",
		}),
		unknown: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_grants_unknown_target",
			Help: "Due grants whose target is not configured in this process (cannot be revoked here).",
		}, []string{"target"}),
		reservedGrants: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lapse_engine_reserved_expiries",
			Help: "Active grants whose expiry this process reserved ahead of the deadline and has not yet started.",
		}),
	}
	// Every target's failure counter exists from the start at 0, so an
	// alert on its rate sees the first failure instead of a new series.
	for _, t := range b.targetList {
		m.revokeFailures.WithLabelValues(t.name)
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.overshoot, m.revokeFailures, m.calls, m.callSeconds, m.fenced, m.unknown, m.reservedGrants, &storeCollector{b: b})
	return m
}

func (m *metrics) call(target, op string, err error, d time.Duration) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.calls.WithLabelValues(target, op, outcome).Inc()
	m.callSeconds.WithLabelValues(target, op).Observe(d.Seconds())
}

func (m *metrics) revoked(g *lapse.Grant, now time.Time) {
	if g.EndReason == lapse.EndExpired {
		m.overshoot.Observe(max(g.RevokedAt.Sub(g.ExpiresAt), 0).Seconds())
	}
}

func (m *metrics) unknownTarget(name string, n int) {
	m.unknown.WithLabelValues(name).Set(float64(n))
}

// storeCollector reports gauges read from the store at scrape time: grants
// by state and due work per target, plus in-flight work per target.
type storeCollector struct{ b *Broker }

var (
	grantsDesc   = prometheus.NewDesc("lapse_grants", "Grants by state.", []string{"state"}, nil)
	dueDesc      = prometheus.NewDesc("lapse_queue_due", "Grants due for action now, per target (the engine's queue in the store).", []string{"target"}, nil)
	inflightDesc = prometheus.NewDesc("lapse_queue_inflight", "Grants claimed by this process and not yet written back, per target.", []string{"target"}, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- grantsDesc
	ch <- dueDesc
	ch <- inflightDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if counts, err := c.b.store.CountGrantsByState(ctx); err == nil {
		for _, s := range lapse.AllGrantStates {
			ch <- prometheus.MustNewConstMetric(grantsDesc, prometheus.GaugeValue, float64(counts[s]), string(s))
		}
	}
	due, _ := c.b.store.DueCounts(ctx, c.b.clock.Now())
	for name, t := range c.b.targets {
		ch <- prometheus.MustNewConstMetric(dueDesc, prometheus.GaugeValue, float64(due[name]), name)
		ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(t.inflight.Load()), name)
	}
}
