package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/sqlstore"
)

// auditOrigin is the name of a generated audit key, the first line of
// its checkpoints. A random suffix keeps two deployments' logs apart.
func auditOrigin() string {
	return "lapse/audit/" + strings.ToLower(lapse.NewID("a", time.Now())[2:14])
}

// verifierKeyFile is where the public key of the audit key at path is
// written, for `lapse audit verify` and `lapse receipt verify`.
func verifierKeyFile(keyPath string) string {
	return strings.TrimSuffix(keyPath, filepath.Ext(keyPath)) + ".pub"
}

// loadAuditKey reads the audit signing key at path, generating it (and its
// .pub file) first if it does not exist, like the dev keys: written once,
// mode 0600, never overwritten.
func loadAuditKey(path string, log *slog.Logger) (skey string, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		skey, vkey, err := audit.GenerateKey(auditOrigin())
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return "", fmt.Errorf("audit key directory: %w", err)
		}
		if err := writeNew(path, []byte(skey+"\n")); err != nil {
			return "", fmt.Errorf("write audit key: %w", err)
		}
		if b, err = os.ReadFile(path); err != nil {
			return "", fmt.Errorf("read audit key: %w", err)
		}
		if strings.TrimSpace(string(b)) == skey {
			log.Info("generated the audit log's signing key", "file", path, "verifier_key", vkey)
		}
	} else if err != nil {
		return "", fmt.Errorf("read audit key: %w", err)
	}
	skey = strings.TrimSpace(string(b))
	vkey, err := audit.VerifierKeyOf(skey)
	if err != nil {
		return "", fmt.Errorf("audit key %s: %w", path, err)
	}
	// The public half is rewritten when missing; it is not a secret.
	if err := writeNew(verifierKeyFile(path), []byte(vkey+"\n")); err != nil {
		return "", fmt.Errorf("write audit verifier key: %w", err)
	}
	return skey, nil
}

// openAuditLog builds the audit log of a server from its configuration.
func openAuditLog(cfg *config.Config, store *sqlstore.Store, clock lapse.Clock, log *slog.Logger) (*audit.Log, error) {
	skey, err := loadAuditKey(cfg.Audit.SigningKeyFile, log)
	if err != nil {
		return nil, err
	}
	sinks := []audit.Sink{&audit.DirSink{Dir: cfg.Audit.CheckpointDir}}
	if cfg.Audit.CheckpointURL != "" {
		sinks = append(sinks, &audit.HTTPSink{URL: cfg.Audit.CheckpointURL})
	}
	return audit.NewLog(audit.Config{
		Backend:    store.Audit(),
		SigningKey: skey,
		Sinks:      sinks,
		Clock:      clock,
		Logger:     log.With("component", "audit"),
		Interval:   cfg.Audit.Interval,
		SinkGrace:  cfg.Audit.SinkGrace,
	})
}

// runAudit runs the sequencer until ctx ends, then integrates and signs
// once more so that a clean shutdown leaves every event under a signed
// checkpoint. The returned channel closes when it is done.
func runAudit(ctx context.Context, l *audit.Log, log *slog.Logger) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Run(ctx)
		final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := l.Sync(final); err != nil {
			log.Warn("audit log: final checkpoint failed; the next start signs it", "err", err)
		}
	}()
	return done
}

// auditDegradedGauge exports the log's health as lapse_audit_degraded: 1
// while new approvals and grants are refused because the log cannot
// integrate, sign or publish, 0 otherwise. It is read at scrape time.
func auditDegradedGauge(l *audit.Log) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lapse_audit_degraded",
		Help: "1 while the audit log is degraded and no new approval or grant is made (revocations continue), else 0.",
	}, func() float64 {
		if l.Healthy() != nil {
			return 1
		}
		return 0
	})
}
