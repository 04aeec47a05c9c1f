// Package broker is Lapse's lifecycle: it files requests, counts approvals,
// creates grants, and drives every grant through provisioning, expiry,
// revocation and verification (DESIGN.md §2). It implements lapse.Service
// for the API and owns the engine that acts on durable deadlines.
//
// Two rules hold everywhere in this package. A state change is written to
// the store before a connector is called, so a crash at any point leaves a
// record the engine can finish. And only the holder of a grant's lease calls
// connectors for it: everyone else (an API call that releases or revokes)
// writes intent, and the lease holder — or, after its lease lapses, the next
// claimant — acts on it.
package broker

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/policy"
)

// Config is what New needs. Zero values take the documented defaults.
type Config struct {
	Store  lapse.Store
	Clock  lapse.Clock  // nil = lapse.SystemClock{}
	Logger *slog.Logger // nil = discard
	// Catalog is the entitlement catalog; Policy, when it has
	// entitlements, is the whole policy (catalog, groups, on-call lists)
	// and takes its place.
	Catalog    []*lapse.Entitlement
	Policy     policy.Document
	Targets    map[string]Target // by target name
	SealingKey []byte            // 32 bytes, AES-256-GCM
	Engine     EngineConfig
	Registerer prometheus.Registerer // nil = no metrics registered
	// AuditGate, when set, is asked before every new approval and every
	// new privilege: while it returns an error (the audit log cannot
	// integrate, sign or publish), approvals, auto-approved requests and
	// provisioning fail with EUNAVAILABLE and reason
	// lapse.ReasonAuditDegraded. Filing and denying requests, releases,
	// revocations, deadlines and retries carry on; their events are
	// stored with them and signed when the log recovers. nil = always
	// open. See auditgate.go.
	AuditGate func(ctx context.Context) error
	// Escalation says what happens to entitlements whose grants carry
	// admin powers (escalation.go); the zero value refuses them.
	Escalation EscalationPolicy
}

// Target is one configured connector instance.
type Target struct {
	Kind        string // connector kind, e.g. "token"
	Connector   connector.Connector
	Concurrency int // max concurrent connector calls on this target; 0 = 16
}

// EngineConfig tunes the lifecycle engine.
type EngineConfig struct {
	// Owner identifies this process in leases; "" = hostname-pid-random.
	Owner string
	// Lease is how long a claim on a grant lasts. A process that crashed
	// holding a claim delays that grant's revocation by at most this long.
	// Connector calls are cut off before the lease ends. 0 = 30s.
	Lease time.Duration
	// BatchSize is the most grants claimed in one store round trip. 0 = 512.
	BatchSize int
	// PollInterval bounds how long the engine sleeps without looking at the
	// store, so deadlines written by another replica are seen. 0 = 1s.
	PollInterval time.Duration
	// RetryBase and RetryMax shape the back-off of failed revocations:
	// attempt n waits min(RetryMax, RetryBase·2^(n-1)), jittered to between
	// half and all of it. Retries never stop. 0 = 1s and 5m.
	RetryBase time.Duration
	RetryMax  time.Duration
	// OverdueRate paces grants that were already overdue by more than
	// OverdueGrace when claimed (a backlog after downtime): at most this
	// many per second per target. Grants that fall due while the engine
	// runs are not paced. 0 = 2000/s.
	OverdueRate float64
	// OverdueGrace: see OverdueRate. 0 = 5s.
	OverdueGrace time.Duration
	// ClaimAhead is how long before an active grant's deadline the engine
	// reserves its expiry (reserve.go), so that when the deadline comes
	// only the connector calls remain. It is also how early an extension
	// must come: a grant whose expiry is reserved is no longer extended.
	// 0 = Lease/10; negative = never reserve (claim at the deadline).
	ClaimAhead time.Duration
}

func (c *EngineConfig) setDefaults() {
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), lapse.NewID("e", time.Now())[2:10])
	}
	if c.Lease <= 0 {
		c.Lease = 30 * time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.RetryMax < c.RetryBase {
		c.RetryMax = c.RetryBase
	}
	if c.OverdueRate <= 0 {
		c.OverdueRate = 2000
	}
	if c.OverdueGrace <= 0 {
		c.OverdueGrace = 5 * time.Second
	}
	switch {
	case c.ClaimAhead == 0:
		c.ClaimAhead = c.Lease / 10
	case c.ClaimAhead < 0:
		c.ClaimAhead = 0
	}
}

// DefaultPendingTimeout is how long a request waits for a decision when its
// entitlement does not say.
const DefaultPendingTimeout = 24 * time.Hour

// Broker implements lapse.Service and runs the lifecycle engine.
type Broker struct {
	store   lapse.Store
	clock   lapse.Clock
	log     *slog.Logger
	catalog atomic.Pointer[catalog]
	targets map[string]*target
	// targetList is targets in name order: the order the engine claims in.
	targetList []*target
	sealer     *sealer
	cfg        EngineConfig
	metrics    *metrics

	// auditGate is Config.AuditGate.
	auditGate func(ctx context.Context) error
	// escalation is Config.Escalation.
	escalation EscalationPolicy
	// pause waits out the pacing of an overdue backlog: time.Sleep, or a
	// recorder in tests, which read the delays instead of sleeping them.
	pause func(time.Duration)

	// wake nudges the engine loop (a grant became due now).
	wake chan struct{}
	// running is set while Run is active, for readiness.
	running atomic.Bool

	waitMu  sync.Mutex
	waiters map[string][]chan struct{} // grant ID → released when the grant settles

	engine *engine
}

var _ lapse.Service = (*Broker)(nil)

type catalog struct {
	byName map[string]*lapse.Entitlement
	names  []string
	// policy decides on the entitlements as served (byName).
	policy *policy.Policy
	// findings are why entitlements are served with the highest
	// approval tier (escalation.go).
	findings []Finding
	// version is the catalog's content hash (lapse.PolicyVersion),
	// recorded on every event written while it is in force.
	version string
}

// New validates cfg and returns a broker. It returns an error naming the
// entitlement when the catalog refers to an unknown target or has an invalid
// entry, and when a target's connector rejects an entitlement's spec.
func New(cfg Config) (*Broker, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("broker: no store")
	}
	if cfg.Clock == nil {
		cfg.Clock = lapse.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := newSealer(cfg.SealingKey)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	cfg.Engine.setDefaults()
	b := &Broker{
		store:     cfg.Store,
		clock:     cfg.Clock,
		log:       cfg.Logger,
		targets:   make(map[string]*target, len(cfg.Targets)),
		sealer:    s,
		cfg:       cfg.Engine,
		auditGate: cfg.AuditGate,
		wake:      make(chan struct{}, 1),
		waiters:   make(map[string][]chan struct{}),
		pause:     time.Sleep,
	}
	b.escalation = cfg.Escalation
	for name, t := range cfg.Targets {
		if t.Connector == nil {
			return nil, fmt.Errorf("broker: target %s has no connector", name)
		}
		if b.auditGate != nil {
			t.Connector = &gatedConnector{Connector: t.Connector, b: b}
		}
		b.targets[name] = newTarget(name, t, b.cfg)
	}
	for _, name := range slices.Sorted(maps.Keys(b.targets)) {
		b.targetList = append(b.targetList, b.targets[name])
	}
	doc := cfg.Policy
	if len(doc.Entitlements) == 0 {
		doc.Entitlements = cfg.Catalog
	}
	if err := b.SetPolicy(doc); err != nil {
		return nil, err
	}
	b.metrics = newMetrics(b, cfg.Registerer)
	b.engine = newEngine(b)
	return b, nil
}

// SetCatalog validates and installs a new entitlement catalog. Grants in
// flight keep the entitlement they were made for; a grant whose entitlement
// disappears before it is provisioned is never provisioned. On error the
// previous catalog stays in force.
func (b *Broker) SetCatalog(entries []*lapse.Entitlement) error {
	return b.SetPolicy(policy.Document{Entitlements: entries})
}

// SetPolicy validates, compiles and installs a new policy: its
// entitlement catalog as SetCatalog does, with its groups and on-call
// lists. On error the previous policy stays in force. Requests already
// decided are checked against the new policy when their grants start.
func (b *Broker) SetPolicy(doc policy.Document) error {
	entries := doc.Entitlements
	c := &catalog{byName: make(map[string]*lapse.Entitlement, len(entries))}
	for _, e := range entries {
		if e == nil || e.Name == "" {
			return fmt.Errorf("broker: catalog entry without a name")
		}
		if _, dup := c.byName[e.Name]; dup {
			return fmt.Errorf("broker: entitlement %s is defined twice", e.Name)
		}
		t, ok := b.targets[e.Target]
		if !ok {
			return fmt.Errorf("broker: entitlement %s: unknown target %q", e.Name, e.Target)
		}
		if e.MaxDuration <= 0 || e.DefaultDuration <= 0 || e.DefaultDuration > e.MaxDuration {
			return fmt.Errorf("broker: entitlement %s: need 0 < default_duration <= max_duration", e.Name)
		}
		if !e.Approval.Auto && len(e.Approval.StageList()) == 0 {
			return fmt.Errorf("broker: entitlement %s: approval needs auto, or required >= 1 and approvers, or stages", e.Name)
		}
		if err := checkAgentRules(e); err != nil { // agents.go
			return err
		}
		if err := checkMaxUses(e, t.conn); err != nil {
			return err
		}
		if v, ok := t.conn.(connector.SpecValidator); ok {
			if err := v.ValidateSpec(e.Spec); err != nil {
				return fmt.Errorf("broker: entitlement %s: spec: %w", e.Name, err)
			}
		}
		e, err := exposed(e, t.conn) // exposure.go
		if err != nil {
			return err
		}
		c.byName[e.Name] = e
		c.names = append(c.names, e.Name)
	}
	sort.Strings(c.names)
	if err := b.escalate(c, entries); err != nil { // escalation.go
		return err
	}
	served := make([]*lapse.Entitlement, 0, len(c.names))
	for _, n := range c.names {
		served = append(served, c.byName[n])
	}
	pol, err := policy.Compile(policy.Document{Entitlements: served, Groups: doc.Groups, OnCall: doc.OnCall})
	if err != nil {
		return fmt.Errorf("broker: %s", lapse.ErrorMessage(err))
	}
	c.policy = pol
	// The version is that of the policy as written, which is what a
	// reviewer hashes; the served entries differ only by what the broker
	// derives from it.
	v, err := b.versionOf(doc)
	if err != nil {
		return fmt.Errorf("broker: policy version: %w", err)
	}
	c.version = v
	b.catalog.Store(c)
	return nil
}

// checkMaxUses refuses a use limit that e's target cannot enforce: only a
// connector.UseLimiter counts uses, and a limit nobody counts would be a
// promise the broker does not keep.
func checkMaxUses(e *lapse.Entitlement, c connector.Connector) error {
	if e.MaxUses < 0 {
		return fmt.Errorf("broker: entitlement %s: max_uses must not be negative", e.Name)
	}
	if e.MaxUses == 0 {
		return nil
	}
	if ul, ok := c.(connector.UseLimiter); !ok || !ul.CountsUses() {
		return fmt.Errorf("broker: entitlement %s: max_uses: target %s cannot count uses (only token targets can)", e.Name, e.Target)
	}
	return nil
}

// PolicyVersion returns the content hash of the catalog in force.
func (b *Broker) PolicyVersion() string { return b.catalog.Load().version }

// policy is the compiled policy in force.
func (b *Broker) policy() *policy.Policy { return b.catalog.Load().policy }

func (b *Broker) entitlement(name string) *lapse.Entitlement {
	return b.catalog.Load().byName[name]
}

// Ready reports whether the broker can issue privileges: the engine is
// running and the store answers.
func (b *Broker) Ready(ctx context.Context) error {
	if !b.running.Load() {
		return lapse.Errorf(lapse.EUNAVAILABLE, "engine is not running")
	}
	if _, err := b.store.CountGrantsByState(ctx); err != nil {
		return lapse.Errorf(lapse.EUNAVAILABLE, "store is unavailable")
	}
	return nil
}

// nudge wakes the engine without blocking.
func (b *Broker) nudge() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// settled is called after a commit that moved a grant to a state a waiter
// may be waiting for.
func (b *Broker) settled(grantID string) {
	b.waitMu.Lock()
	ws := b.waiters[grantID]
	delete(b.waiters, grantID)
	b.waitMu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

func (b *Broker) waitChan(grantID string) chan struct{} {
	ch := make(chan struct{})
	b.waitMu.Lock()
	b.waiters[grantID] = append(b.waiters[grantID], ch)
	b.waitMu.Unlock()
	return ch
}

func (b *Broker) dropWaiter(grantID string, ch chan struct{}) {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	ws := b.waiters[grantID]
	for i, w := range ws {
		if w == ch {
			b.waiters[grantID] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(b.waiters[grantID]) == 0 {
		delete(b.waiters, grantID)
	}
}

// ReloadPolicy puts doc in force, as SetPolicy does, and records it in the
// audit log (policy.loaded, with the new and the previous version and
// source, such as "start", "signal" or "file change"). A document whose
// version is the one in force changes nothing and records nothing, unless
// force is set (the server records the policy it starts with). On error
// the policy in force stays, and nothing is recorded.
func (b *Broker) ReloadPolicy(ctx context.Context, doc policy.Document, source string, force bool) (changed bool, err error) {
	prev := b.PolicyVersion()
	v, err := b.versionOf(doc)
	if err != nil {
		return false, err
	}
	if v == prev && !force {
		return false, nil
	}
	if err := b.SetPolicy(doc); err != nil {
		return false, err
	}
	ev := &lapse.Event{Time: b.clock.Now(), Type: lapse.EventPolicyLoaded, Channel: lapse.ChannelSystem, ActorID: "lapse",
		Outcome: "loaded", PolicyVersion: v,
		Data: eventData(map[string]any{"version": v, "previous": prev, "source": source, "entitlements": len(doc.Entitlements)})}
	if err := b.store.Update(ctx, func(tx lapse.Tx) error { return tx.AppendEvent(ctx, ev) }); err != nil {
		// In force already: the decisions carry its version; the event
		// is what could not be written.
		return true, storeErr("record policy", err)
	}
	return true, nil
}

// versionOf is the version of doc as this broker serves it: its content
// hash, with the escalation policy when one is configured, since that too
// decides who approves.
func (b *Broker) versionOf(doc policy.Document) (string, error) {
	return PolicyVersion(doc, b.escalation)
}

// PolicyVersion is the version a broker with escalation policy esc gives
// doc (Broker.PolicyVersion), for tools that report it offline.
func PolicyVersion(doc policy.Document, esc EscalationPolicy) (string, error) {
	// The default (refuse, no tier) changes nothing a reviewer of the
	// catalog would not see: it is left out, so the version stays that of
	// the policy files alone.
	if esc.Approval != nil || len(esc.Acknowledged) > 0 {
		doc.Escalation = esc
	}
	return policy.Version(doc)
}
