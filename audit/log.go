package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/lapsehq/lapse"
)

// Defaults of Config.
const (
	DefaultInterval  = time.Second
	DefaultBatchSize = 10000
	// maxUnpublished bounds the checkpoints kept for a sink that is down;
	// the newest are kept, since the newest one alone protects the whole
	// log against truncation.
	maxUnpublished = 1024
)

// Config is what NewLog needs.
type Config struct {
	Backend Backend
	// SigningKey is the private key (see GenerateKey); its name is the
	// log's origin.
	SigningKey string
	// VerifierKey is the matching public key, served to clients and
	// checked against SigningKey at start; empty derives it.
	VerifierKey string
	// Sinks receive every signed checkpoint.
	Sinks  []Sink
	Clock  lapse.Clock  // nil = system clock
	Logger *slog.Logger // nil = discard
	// Interval is how often Run integrates new events and signs a new
	// checkpoint when the log grew. It bounds the window in which a
	// committed event is not yet covered by a signed checkpoint.
	// 0 = DefaultInterval.
	Interval time.Duration
	// BatchSize is the most events integrated per store transaction.
	// 0 = DefaultBatchSize.
	BatchSize int
	// SinkGrace is how long publishing to a sink may keep failing before
	// the log reports itself degraded (Healthy), which stops new approvals
	// and grants. Checkpoints are still signed and stored meanwhile. 0 =
	// none: the first failed publication degrades the log.
	SinkGrace time.Duration
}

// StallAfter is how long one round of integrating, signing and publishing
// may run before Healthy reports the log degraded: a round that hangs (a
// database that does not answer) must not leave new events unsigned while
// approvals carry on as if nothing were wrong.
const StallAfter = time.Minute

// Log is the tamper-evident log over a Backend: the sequencer that
// integrates committed events into the Merkle tree and signs checkpoints,
// and the proofs and receipts served from it. It is safe for concurrent
// use; several processes may run Logs over one Backend (replicas), as long
// as they share the signing key.
type Log struct {
	b        Backend
	signer   note.Signer
	verifier note.Verifier
	vkey     string
	sinks    []Sink
	clock    lapse.Clock
	log      *slog.Logger
	interval time.Duration
	batch    int
	grace    time.Duration

	mu          sync.Mutex     // one Sync at a time in this process
	rng         *compact.Range // the tree as last integrated, or nil
	unpublished []*Checkpoint  // signed but not yet accepted by every sink
	published   uint64         // largest size every sink accepted
	status      Status         // sizes as of the running Sync
	wake        chan struct{}  // nudges Run

	// health is what Status and Healthy read. It has its own lock so that
	// they answer at once while a Sync waits on a slow sink or database:
	// the broker asks before every approval.
	health struct {
		sync.Mutex
		status Status
		err    error // the last round's failure
		// sinkSince is when publishing started failing (zero while it
		// succeeds); roundStarted when the running round began (zero
		// between rounds).
		sinkSince, roundStarted time.Time
	}
}

// NewLog checks cfg and returns a Log.
func NewLog(cfg Config) (*Log, error) {
	if cfg.Backend == nil {
		return nil, errors.New("audit: no backend")
	}
	s, err := NewSigner(cfg.SigningKey)
	if err != nil {
		return nil, err
	}
	if cfg.VerifierKey == "" {
		if cfg.VerifierKey, err = VerifierKeyOf(cfg.SigningKey); err != nil {
			return nil, err
		}
	}
	v, err := NewVerifier(cfg.VerifierKey)
	if err != nil {
		return nil, err
	}
	probe := []byte("lapse audit key check\n")
	sig, err := s.Sign(probe)
	if err != nil || v.Name() != s.Name() || v.KeyHash() != s.KeyHash() || !v.Verify(probe, sig) {
		return nil, errors.New("audit: the verifier key does not match the signing key")
	}
	l := &Log{
		b: cfg.Backend, signer: s, verifier: v, vkey: cfg.VerifierKey,
		sinks: cfg.Sinks, clock: cfg.Clock, log: cfg.Logger,
		interval: cfg.Interval, batch: cfg.BatchSize, grace: max(cfg.SinkGrace, 0),
		wake: make(chan struct{}, 1),
	}
	if l.clock == nil {
		l.clock = lapse.SystemClock{}
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.interval <= 0 {
		l.interval = DefaultInterval
	}
	if l.batch <= 0 {
		l.batch = DefaultBatchSize
	}
	return l, nil
}

// CheckKey returns an error wrapping ErrForeignKey when the latest
// checkpoint in the store was signed by another key than the log's. Replicas
// must share one key: a replica with its own key would sign heads that the
// others cannot open, and fail every round from then on. Servers call it at
// start so the mistake stops the start, naming the key, instead of logging
// errors forever. A stored checkpoint that names this log's key but does
// not verify is not a key mix-up but tampering: CheckKey lets it pass, and
// Sync (which then degrades the log) and Verify report it.
func (l *Log) CheckKey(ctx context.Context) error {
	st, err := l.b.LatestCheckpoint(ctx)
	if err != nil {
		return fmt.Errorf("audit: read latest checkpoint: %w", err)
	}
	if st == nil {
		return nil
	}
	if _, err := OpenCheckpoint(st.Note, l.verifier); err == nil {
		return nil
	}
	name, hash, ok := noteSigner(st.Note)
	if !ok || name == l.verifier.Name() && hash == l.verifier.KeyHash() {
		return nil
	}
	return fmt.Errorf("%w: the latest checkpoint in the store (tree size %d) is signed by key %s+%08x, but this log's key is %s+%08x",
		ErrForeignKey, st.Size, name, hash, l.verifier.Name(), l.verifier.KeyHash())
}

// Origin returns the log's name, the first line of its checkpoints.
func (l *Log) Origin() string { return l.signer.Name() }

// VerifierKey returns the public key that verifies checkpoints and
// receipts.
func (l *Log) VerifierKey() string { return l.vkey }

// Verifier returns the note verifier of the log's key.
func (l *Log) Verifier() note.Verifier { return l.verifier }

// Status is the sequencer's health.
type Status struct {
	// Size is how many entries are integrated; Signed the size of the
	// latest signed checkpoint.
	Size   uint64 `json:"size"`
	Signed uint64 `json:"signed"`
	// Unpublished counts checkpoints that some sink has not accepted yet.
	Unpublished int `json:"unpublished"`
	// SinkFailingSince is when publishing to a sink started failing; zero
	// while every sink accepts.
	SinkFailingSince time.Time `json:"sink_failing_since,omitzero"`
	// Error is the last failure, empty when the last round succeeded.
	Error string `json:"error,omitempty"`
}

// Status returns the state after the last Sync. It does not wait for a
// Sync in progress.
func (l *Log) Status() Status {
	l.health.Lock()
	defer l.health.Unlock()
	st := l.health.status
	st.SinkFailingSince = l.health.sinkSince
	if l.health.err != nil {
		st.Error = l.health.err.Error()
	}
	return st
}

// Healthy returns nil while the log is keeping up, and otherwise an
// EUNAVAILABLE error with reason lapse.ReasonAuditDegraded whose message
// (safe to show) says why; the cause is in its Err. The log is degraded when
//
//   - the last round could not integrate or sign the new events;
//   - publishing to a sink has been failing for longer than SinkGrace;
//   - a round has been running for longer than StallAfter.
//
// Events are still written durably with every state change meanwhile;
// they are integrated, signed and published when the cause is gone. It
// does not wait for a Sync in progress.
func (l *Log) Healthy() error {
	now := l.clock.Now()
	l.health.Lock()
	err, since, started := l.health.err, l.health.sinkSince, l.health.roundStarted
	unpublished := l.health.status.Unpublished
	l.health.Unlock()
	degraded := func(cause error, format string, args ...any) error {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Reason: lapse.ReasonAuditDegraded,
			Message: "audit log degraded: " + fmt.Sprintf(format, args...), Err: cause}
	}
	var pe *publishError
	switch {
	case !started.IsZero() && now.Sub(started) >= StallAfter:
		return degraded(nil, "a round of integrating and signing has not finished for %s", now.Sub(started).Round(time.Second))
	case err != nil && !errors.As(err, &pe):
		return degraded(err, "cannot integrate or sign new events")
	case unpublished > 0 && !since.IsZero() && now.Sub(since) >= l.grace:
		return degraded(err, "%d checkpoints not published to every sink for %s", unpublished, now.Sub(since).Round(time.Second))
	}
	return nil
}

// Run integrates and signs every Interval, or sooner when Nudge is called,
// until ctx ends. Failures are logged and retried; Run returns only ctx's
// error.
func (l *Log) Run(ctx context.Context) error {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	failing := false
	for {
		_, err := l.Sync(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				l.log.Error("audit log: cannot integrate or sign; retrying", "err", err)
			}
			failing = true
		case err == nil && failing:
			l.log.Info("audit log: recovered")
			failing = false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-l.wake:
		}
	}
}

// Nudge asks Run for a round now, without waiting for it.
func (l *Log) Nudge() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Sync integrates every committed event, signs a checkpoint if the tree
// grew, stores it, publishes what the sinks have not accepted yet, and
// returns the latest checkpoint (nil while the log is empty). Publishing
// failures make Sync return an error after the checkpoint is stored.
func (l *Log) Sync(ctx context.Context) (*Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.health.Lock()
	l.health.roundStarted = l.clock.Now()
	l.health.Unlock()
	cp, err := l.sync(ctx)
	l.health.Lock()
	defer l.health.Unlock()
	l.health.roundStarted = time.Time{}
	l.health.status = l.status
	l.health.status.Unpublished = len(l.unpublished)
	l.health.err = err
	var pe *publishError
	switch {
	case errors.As(err, &pe):
		if l.health.sinkSince.IsZero() {
			l.health.sinkSince = l.clock.Now()
		}
	case err == nil:
		l.health.sinkSince = time.Time{}
	}
	return cp, err
}

// publishError is a sink's refusal, told apart from a failure to integrate
// or sign: only the latter degrades the log at once (see Healthy).
type publishError struct{ err error }

func (e *publishError) Error() string { return e.err.Error() }
func (e *publishError) Unwrap() error { return e.err }

func (l *Log) sync(ctx context.Context) (*Checkpoint, error) {
	size, err := l.integrate(ctx)
	if err != nil {
		return nil, err
	}
	l.status.Size = size
	latest, err := l.b.LatestCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: read latest checkpoint: %w", err)
	}
	var cp *Checkpoint
	switch {
	case latest != nil && latest.Size > size:
		return nil, fmt.Errorf("audit: a stored checkpoint covers %d entries but the tree has %d", latest.Size, size)
	case latest != nil && latest.Size == size:
		if cp, err = OpenCheckpoint(latest.Note, l.verifier); err != nil {
			return nil, fmt.Errorf("audit: stored checkpoint of size %d: %w", latest.Size, err)
		}
		if string(cp.Root) != string(rootOf(l.rng)) {
			return nil, fmt.Errorf("audit: the stored checkpoint of size %d does not match the stored tree", size)
		}
	case size > 0:
		if cp, err = SignCheckpoint(l.signer, size, rootOf(l.rng)); err != nil {
			return nil, err
		}
		if err := l.b.PutCheckpoint(ctx, &StoredCheckpoint{Size: size, Root: cp.Root, Note: cp.Note, SignedAt: l.clock.Now()}); err != nil {
			return nil, fmt.Errorf("audit: store checkpoint: %w", err)
		}
	}
	if cp == nil {
		return nil, nil
	}
	l.status.Signed = cp.Size
	if cp.Size > l.published && (len(l.unpublished) == 0 || l.unpublished[len(l.unpublished)-1].Size < cp.Size) {
		l.unpublished = append(l.unpublished, cp)
		if n := len(l.unpublished); n > maxUnpublished {
			l.unpublished = append(l.unpublished[:0], l.unpublished[n-maxUnpublished:]...)
		}
	}
	return cp, l.publish(ctx)
}

// publish hands pending checkpoints to every sink, oldest first, and stops
// at the first failure so that sinks never see a gap they could not fill.
func (l *Log) publish(ctx context.Context) error {
	for len(l.unpublished) > 0 {
		cp := l.unpublished[0]
		for _, s := range l.sinks {
			if err := s.Publish(ctx, cp); err != nil {
				return &publishError{fmt.Errorf("publish checkpoint %d to %s: %w", cp.Size, s, err)}
			}
		}
		l.published = cp.Size
		l.unpublished = l.unpublished[1:]
	}
	return nil
}

// integrate appends every committed event after the tree's size to the
// tree, in batches, and returns the new size.
func (l *Log) integrate(ctx context.Context) (uint64, error) {
	for conflicts := 0; ; {
		size, err := l.b.Size(ctx)
		if err != nil {
			return 0, fmt.Errorf("audit: read tree size: %w", err)
		}
		if l.rng == nil || l.rng.End() != size {
			if l.rng, err = loadRange(ctx, l.b, size); err != nil {
				l.rng = nil
				return 0, fmt.Errorf("audit: load tree: %w", err)
			}
		}
		evs, err := l.b.Events(ctx, int64(size), l.batch)
		if err != nil {
			return 0, fmt.Errorf("audit: read events: %w", err)
		}
		if len(evs) == 0 {
			return size, nil
		}
		leaves := make([][]byte, 0, len(evs))
		var nodes []Node
		visit := func(id compact.NodeID, h []byte) {
			if id.Level > 0 {
				nodes = append(nodes, Node{Level: id.Level, Index: id.Index, Hash: h})
			}
		}
		next := l.rng
		l.rng = nil // re-established below only if the batch is stored
		buf := make([]byte, 0, 512)
		for i, ev := range evs {
			if want := int64(size) + 1 + int64(i); ev.Seq != want {
				// Sequence numbers are gap-free by construction; a gap
				// means rows were removed, and nothing after it may be
				// made to look legitimate.
				return 0, fmt.Errorf("audit: event %d is missing (found %d next)", want, ev.Seq)
			}
			en := EntryOf(ev)
			buf = AppendLeaf(buf[:0], &en)
			h := hashLeaf(buf, nil)
			leaves = append(leaves, h[:])
			if err := next.Append(h[:], visit); err != nil {
				return 0, fmt.Errorf("audit: extend tree: %w", err)
			}
		}
		err = l.b.Integrate(ctx, size, leaves, nodes)
		if lapse.ErrorCode(err) == lapse.ECONFLICT && conflicts < 10 {
			conflicts++ // another replica integrated first: start again from its tree
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("audit: store tree: %w", err)
		}
		l.rng = next
		if len(evs) < l.batch {
			return next.End(), nil
		}
	}
}

// Latest returns the latest signed checkpoint, checked against the log's
// key, or ENOTFOUND while there is none.
func (l *Log) Latest(ctx context.Context) (*Checkpoint, error) {
	st, err := l.b.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "the audit log has no signed checkpoint yet")
	}
	cp, err := OpenCheckpoint(st.Note, l.verifier)
	if err != nil {
		return nil, lapse.Internal("audit: stored checkpoint", err)
	}
	return cp, nil
}

// InclusionProof proves that an entry is in a signed tree.
type InclusionProof struct {
	// Seq is the entry; its leaf index is Seq-1.
	Seq      int64  `json:"seq"`
	TreeSize uint64 `json:"tree_size"`
	// LeafHash is the entry's RFC 6962 leaf hash.
	LeafHash []byte `json:"leaf_hash"`
	// Proof is the audit path, bottom up.
	Proof [][]byte `json:"proof"`
	// Checkpoint is the signed checkpoint of TreeSize, when the proof is
	// against the latest one.
	Checkpoint string `json:"checkpoint,omitempty"`
}

// Inclusion returns the inclusion proof of entry seq in the tree of size
// (0 = the latest signed checkpoint, which is then included).
// Returns EINVALID for a seq outside the tree, ENOTFOUND when nothing is
// signed yet.
func (l *Log) Inclusion(ctx context.Context, seq int64, size uint64) (*InclusionProof, error) {
	var cpNote string
	if size == 0 {
		cp, err := l.Latest(ctx)
		if err != nil {
			return nil, err
		}
		size, cpNote = cp.Size, string(cp.Note)
	} else if err := l.within(ctx, size); err != nil {
		return nil, err
	}
	if seq < 1 || uint64(seq) > size {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "seq", "entry %d is not in the tree of size %d", seq, size)
	}
	leaf, err := l.b.Nodes(ctx, []compact.NodeID{compact.NewNodeID(0, uint64(seq-1))})
	if err != nil {
		return nil, err
	}
	p, err := inclusionProof(ctx, l.b, uint64(seq-1), size)
	if err != nil {
		return nil, lapse.Internal("audit: inclusion proof", err)
	}
	return &InclusionProof{Seq: seq, TreeSize: size, LeafHash: leaf[0], Proof: p, Checkpoint: cpNote}, nil
}

// ConsistencyProof proves that the tree of size To extends the tree of
// size From.
type ConsistencyProof struct {
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	Proof [][]byte `json:"proof"`
}

// Consistency returns the consistency proof between two tree sizes; to = 0
// means the latest signed checkpoint.
// Returns EINVALID unless 0 < from <= to <= the integrated size.
func (l *Log) Consistency(ctx context.Context, from, to uint64) (*ConsistencyProof, error) {
	if to == 0 {
		cp, err := l.Latest(ctx)
		if err != nil {
			return nil, err
		}
		to = cp.Size
	} else if err := l.within(ctx, to); err != nil {
		return nil, err
	}
	if from < 1 || from > to {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "from", "want 1 <= from <= to (%d)", to)
	}
	p, err := consistencyProof(ctx, l.b, from, to)
	if err != nil {
		return nil, lapse.Internal("audit: consistency proof", err)
	}
	return &ConsistencyProof{From: from, To: to, Proof: p}, nil
}

func (l *Log) within(ctx context.Context, size uint64) error {
	n, err := l.b.Size(ctx)
	if err != nil {
		return err
	}
	if size > n {
		return lapse.FieldErrorf(lapse.EINVALID, "size", "the tree has %d entries", n)
	}
	return nil
}
