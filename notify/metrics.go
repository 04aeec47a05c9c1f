package notify

import "github.com/prometheus/client_golang/prometheus"

// metrics are the notifier's Prometheus series. Names are stable: alerts
// depend on them (docs/notifications.md).
type metrics struct {
	deliveries  *prometheus.CounterVec
	failures    *prometheus.CounterVec
	failing     *prometheus.GaugeVec
	cursor      *prometheus.GaugeVec
	stateWrites prometheus.Counter
}

// Outcomes of a notification, the label of lapse_notify_deliveries_total.
const (
	outcomeDelivered = "delivered"
	outcomeGaveUp    = "gave_up"
)

func newMetrics(reg prometheus.Registerer, hooks []string) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lapse_notify_deliveries_total",
			Help: "Notifications per webhook by outcome: delivered, or gave_up after retrying past the give-up horizon.",
		}, []string{"webhook", "outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lapse_notify_attempt_failures_total",
			Help: "Failed webhook calls (refused address, timeout, redirect, non-2xx answer).",
		}, []string{"webhook"}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_notify_failing",
			Help: "Consecutive failed attempts of the notification a webhook is retrying; 0 when it is not failing.",
		}, []string{"webhook"}),
		cursor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lapse_notify_cursor_seq",
			Help: "Audit log sequence up to which a webhook is done; compare with the log's size to see a backlog.",
		}, []string{"webhook"}),
		stateWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lapse_notify_state_write_failures_total",
			Help: "Failed writes of the notification cursor file; after a restart some notifications may be sent again.",
		}),
	}
	// Every webhook's series exist from the start at 0, so an alert on a
	// rate sees the first failure instead of a new series.
	for _, h := range hooks {
		m.deliveries.WithLabelValues(h, outcomeDelivered)
		m.deliveries.WithLabelValues(h, outcomeGaveUp)
		m.failures.WithLabelValues(h)
		m.failing.WithLabelValues(h)
		m.cursor.WithLabelValues(h)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.failures, m.failing, m.cursor, m.stateWrites} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
