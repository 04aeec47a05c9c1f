package main

import (
	"context"
	"crypto/sha256"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
)

// policyPoll is how often the server looks at its policy files for a
// change. Hashing a few small files every two seconds costs nothing, and,
// unlike inotify, it sees a file replaced by a rename (what editors and
// configuration management do) and works on every file system.
const policyPoll = 2 * time.Second

// policyReloader reloads the policy on SIGHUP and when the configuration
// file, a policy file or an on-call list changes. A policy that does not
// load or compile never replaces the one in force: the error is logged
// and counted, and the next change is tried again.
type policyReloader struct {
	s        *Server
	sums     map[string][32]byte
	failures prometheus.Counter
	loaded   prometheus.Counter
}

// startPolicyReload records the policy in force at start and starts the
// reloader; it stops when ctx ends.
func (s *Server) startPolicyReload(ctx context.Context, reg prometheus.Registerer) error {
	if _, err := s.Broker.ReloadPolicy(ctx, s.Config.PolicyDocument(), "start", true); err != nil {
		return err
	}
	r := &policyReloader{
		s: s,
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lapse_policy_reload_failures_total",
			Help: "Policy reloads refused because the new policy did not load or compile; the previous policy stayed in force.",
		}),
		loaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lapse_policy_reloads_total",
			Help: "New policies put in force after a signal or a file change.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.failures, r.loaded)
	}
	r.sums = r.checksums(s.Config)
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.policyCancel = cancel
	s.policyDone = make(chan struct{})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer close(s.policyDone)
		defer signal.Stop(hup)
		t := time.NewTicker(policyPoll)
		defer t.Stop()
		if !s.Config.PolicyWatch {
			t.Stop() // policy.watch: false — reloads come from SIGHUP only
		}
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				r.reload(rctx, "signal")
			case <-t.C:
				if !r.changed() {
					continue
				}
				r.reload(rctx, "file change")
			}
		}
	}()
	return nil
}

// files are the files the policy is read from.
func policyFilesOf(cfg *config.Config) []string {
	return append([]string{cfg.File}, cfg.PolicyFiles...)
}

func (r *policyReloader) checksums(cfg *config.Config) map[string][32]byte {
	sums := map[string][32]byte{}
	for _, f := range policyFilesOf(cfg) {
		if b, err := os.ReadFile(f); err == nil {
			sums[f] = sha256.Sum256(b)
		}
	}
	return sums
}

// changed reports whether a watched file's content differs from when the
// policy in force was loaded (or from the last failed attempt, so a broken
// file is reported once, not every poll).
func (r *policyReloader) changed() bool {
	for f, sum := range r.sums {
		b, err := os.ReadFile(f)
		if err != nil || sha256.Sum256(b) != sum {
			return true
		}
	}
	return false
}

func (r *policyReloader) reload(ctx context.Context, source string) {
	s := r.s
	log := s.Logger.With("component", "policy", "source", source)
	cfg, err := config.Load(s.Config.File)
	if err == nil {
		err = checkServerPolicy(cfg, s.Config)
	}
	if err != nil {
		r.failures.Inc()
		r.sums = r.checksumsOrEmpty(s.Config.File)
		log.Error("policy not reloaded; the policy in force stays", "err", err, "version", s.Broker.PolicyVersion())
		return
	}
	changed, err := s.Broker.ReloadPolicy(ctx, cfg.PolicyDocument(), source, false)
	r.sums = r.checksums(cfg)
	if err != nil && !changed {
		r.failures.Inc()
		log.Error("policy not reloaded; the policy in force stays", "err", err, "version", s.Broker.PolicyVersion())
		return
	}
	if err != nil {
		log.Error("policy in force, but its policy.loaded event was not recorded", "err", err)
	}
	if changed {
		r.loaded.Inc()
		log.Info("policy reloaded", "version", s.Broker.PolicyVersion(), "entitlements", len(cfg.Entitlements))
	}
}

// checksumsOrEmpty re-reads what can be read after a failed load, so the
// same broken content is not reloaded every poll.
func (r *policyReloader) checksumsOrEmpty(file string) map[string][32]byte {
	sums := r.checksums(r.s.Config)
	if b, err := os.ReadFile(file); err == nil {
		sums[file] = sha256.Sum256(b)
	}
	return sums
}

// checkServerPolicy refuses a reload that only a restart can apply: the
// policy may change, the targets and the rest of the server may not. The
// broker keeps the connectors and the escalation policy it started with,
// so a reload that changed them would be reported as done while the old
// ones stay in force (and, for escalation, would record a policy version
// that `lapse policy check` does not print).
func checkServerPolicy(next, running *config.Config) error {
	if !slices.Equal(next.TargetNames(), running.TargetNames()) {
		return &config.Error{File: next.File, Err: errTargetsChanged}
	}
	for _, name := range next.TargetNames() {
		a, aerr := targetSettings(next.Targets[name])
		b, berr := targetSettings(running.Targets[name])
		if aerr != nil || berr != nil || !reflect.DeepEqual(a, b) {
			return &config.Error{File: next.File, Err: lapse.Errorf(lapse.EINVALID, "the settings of target %s changed; that needs a restart (the policy was not reloaded)", name)}
		}
	}
	if !reflect.DeepEqual(escalationOf(next), escalationOf(running)) {
		return &config.Error{File: next.File, Err: errEscalationChanged}
	}
	return nil
}

// targetSettings is what a target is configured with, without where in
// the file it is written.
func targetSettings(t *config.Target) (any, error) {
	var block map[string]any
	if err := t.Decode(&block); err != nil {
		return nil, err
	}
	return struct {
		Kind        string
		Concurrency int
		Config      map[string]any
	}{t.Kind, t.Concurrency, block}, nil
}

var (
	errTargetsChanged    = lapse.Errorf(lapse.EINVALID, "the targets changed; a new target, or a removed one, needs a restart (the policy was not reloaded)")
	errEscalationChanged = lapse.Errorf(lapse.EINVALID, "the escalation policy changed; that needs a restart (the policy was not reloaded)")
)
