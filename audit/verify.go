package audit

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sort"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// VerifyOptions parameterises Verify.
type VerifyOptions struct {
	// Verifier checks the signatures of checkpoints. Required.
	Verifier note.Verifier
	// External are checkpoints read from a sink (see ReadDir), already
	// verified. They are what detects a truncated tail: the stored
	// checkpoints can be deleted together with the entries they cover.
	External []*Checkpoint
	// ExternalName names their source in problems ("dir:/…").
	ExternalName string
}

// Problem is one finding of Verify.
type Problem struct {
	// Seq is the first entry the problem affects, 0 when it affects none
	// in particular.
	Seq     int64  `json:"seq,omitempty"`
	Message string `json:"message"`
}

// Report is what Verify found.
type Report struct {
	// Entries is how many events the store holds; Integrated how many of
	// them have a stored leaf hash.
	Entries    int64  `json:"entries"`
	Integrated uint64 `json:"integrated"`
	// Signed is the largest checkpoint size that matched the recomputed
	// tree; entries after it are not yet covered by a signature.
	Signed uint64 `json:"signed"`
	// Checkpoints and External count the stored and external checkpoints
	// that were checked.
	Checkpoints int `json:"checkpoints"`
	External    int `json:"external"`
	// Root is the recomputed root over all entries.
	Root []byte `json:"root"`
	// FirstBad is the first entry that is missing, altered, moved,
	// duplicated or inserted, or 0 when there is none.
	FirstBad int64     `json:"first_bad,omitempty"`
	Problems []Problem `json:"problems,omitempty"`
	// Duration is how long the verification took.
	Duration time.Duration `json:"duration_ns"`
}

// OK reports whether nothing was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) add(seq int64, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Seq: seq, Message: fmt.Sprintf(format, args...)})
	if seq > 0 && (r.FirstBad == 0 || seq < r.FirstBad) {
		r.FirstBad = seq
	}
}

// headCheck is one signed tree head the recomputed tree must match.
type headCheck struct {
	size   uint64
	root   []byte
	source string
}

// Verify recomputes the log from the stored events: every leaf from its
// event, every stored leaf hash, the gap-free sequence, the root at the
// size of every stored and external checkpoint, and duplicated entries. It
// returns an error only when it could not read; what it finds is in the
// Report, whose FirstBad names the first bad entry.
//
// What each finding means is in docs/audit.md. In short: an edited, moved
// or swapped entry differs from its stored leaf hash; an entry inserted or
// edited together with recomputed leaf hashes changes the root under the
// checkpoints signed after it; a removed tail leaves checkpoints (in an
// external sink) larger than the log.
func Verify(ctx context.Context, b Backend, opts VerifyOptions) (*Report, error) {
	start := time.Now()
	r := &Report{}
	heads, err := checkHeads(ctx, b, opts, r)
	if err != nil {
		return nil, err
	}
	treeSize, err := b.Size(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: read tree size: %w", err)
	}

	var (
		arena      hashArena
		rng        = arena.rangeFactory().NewEmptyRange(0)
		expected   = int64(1)
		pendingAt  int64 // first entry without a leaf hash
		repeats    = newRepeatFinder()
		nextHead   = 0
		lastGood   uint64
		headFailed bool
	)
	// The store is read on a goroutine of its own, which encodes each
	// entry's leaf into batches; this one hashes and checks them, in
	// sequence order, exactly as if it read the entries itself. Reading
	// (the database and its driver) takes longer than hashing and
	// checking, so on two cores the checks cost almost no time of their
	// own (docs/benchmarks.md).
	err = scanBatches(ctx, b, func(bt *entryBatch) error {
		for i := range bt.ents {
			be := &bt.ents[i]
			seq := be.seq
			if seq != expected {
				if seq > expected {
					r.add(expected, "entries %d to %d are missing", expected, seq-1)
				} else {
					r.add(seq, "entry %d is out of order", seq)
				}
				expected = seq
			}
			expected++
			r.Entries++
			// bt.buf holds 0x00 || leaf: the RFC 6962 leaf hash input.
			prefixed := bt.buf[be.start:be.leafEnd]
			h := arena.next()
			*(*[HashSize]byte)(h) = sha256.Sum256(prefixed)
			switch {
			case !be.integrated:
				if pendingAt == 0 {
					pendingAt = seq
				}
			case pendingAt != 0:
				r.add(pendingAt, "entry %d has no leaf hash but entry %d after it has one", pendingAt, seq)
				pendingAt = -1 // reported once
			default:
				r.Integrated++
				if !bytes.Equal(bt.buf[be.leafEnd:be.hashEnd], h) {
					r.add(seq, "entry %d does not match its leaf hash: it was altered, moved or replaced", seq)
				}
			}
			// Everything but the prefix, the version and the sequence
			// number: two entries with the same content are one entry
			// written twice.
			repeats.add(prefixed[1+9:], seq)
			if err := rng.Append(h, nil); err != nil {
				return err
			}
			for nextHead < len(heads) && heads[nextHead].size == rng.End() {
				hd := heads[nextHead]
				nextHead++
				if bytes.Equal(rootOf(rng), hd.root) {
					if !headFailed {
						lastGood = hd.size
					}
					continue
				}
				if !headFailed {
					// A finding about one entry in the range explains the
					// mismatch and names the entry more precisely.
					at := int64(lastGood) + 1
					if r.FirstBad > at {
						at = r.FirstBad
					}
					r.add(at, "the %s checkpoint of size %d does not match the entries: an entry from %d to %d was altered, inserted or removed",
						hd.source, hd.size, lastGood+1, hd.size)
				}
				headFailed = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: scan the log: %w", err)
	}
	r.Root = rootOf(rng)
	if !headFailed {
		r.Signed = lastGood
	}
	for ; nextHead < len(heads); nextHead++ {
		hd := heads[nextHead]
		r.add(r.Entries+1, "the %s checkpoint covers %d entries but the log has %d: entries %d to %d were removed",
			hd.source, hd.size, r.Entries, r.Entries+1, hd.size)
	}
	if treeSize > uint64(r.Entries) {
		r.add(r.Entries+1, "the tree has %d leaves but the log only %d entries: entries were removed", treeSize, r.Entries)
	}
	for _, d := range repeats.pairs() {
		same, err := sameContent(ctx, b, d[0], d[1])
		if err != nil {
			return nil, err
		}
		if same {
			r.add(d[1], "entry %d repeats entry %d", d[1], d[0])
		}
	}
	sort.SliceStable(r.Problems, func(i, j int) bool { return r.Problems[i].Seq < r.Problems[j].Seq })
	r.Duration = time.Since(start)
	return r, nil
}

// checkHeads collects the stored and external checkpoints, sorted by size,
// and reports those that do not verify and forks (two roots for one size).
func checkHeads(ctx context.Context, b Backend, opts VerifyOptions, r *Report) ([]headCheck, error) {
	if opts.Verifier == nil {
		return nil, fmt.Errorf("audit: verify needs the log's public key")
	}
	stored, err := b.Checkpoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: read checkpoints: %w", err)
	}
	var heads []headCheck
	for _, st := range stored {
		cp, err := OpenCheckpoint(st.Note, opts.Verifier)
		if err != nil {
			r.add(0, "the stored checkpoint of size %d does not verify: %v", st.Size, err)
			continue
		}
		if cp.Size != st.Size || !bytes.Equal(cp.Root, st.Root) {
			r.add(0, "the stored checkpoint of size %d is filed under size %d or another root", cp.Size, st.Size)
		}
		heads = append(heads, headCheck{size: cp.Size, root: cp.Root, source: "stored"})
		r.Checkpoints++
	}
	ext := opts.ExternalName
	if ext == "" {
		ext = "external"
	}
	for _, cp := range opts.External {
		if cp.Origin != opts.Verifier.Name() {
			r.add(0, "the %s checkpoint of size %d is of another log (%s)", ext, cp.Size, cp.Origin)
			continue
		}
		heads = append(heads, headCheck{size: cp.Size, root: cp.Root, source: ext})
		r.External++
	}
	sort.SliceStable(heads, func(i, j int) bool { return heads[i].size < heads[j].size })
	for i := 1; i < len(heads); i++ {
		if heads[i].size == heads[i-1].size && !bytes.Equal(heads[i].root, heads[i-1].root) {
			r.add(0, "two checkpoints of size %d (%s, %s) have different roots: the log was forked",
				heads[i].size, heads[i-1].source, heads[i].source)
		}
	}
	// The empty tree is not checked: there is nothing to compare.
	for len(heads) > 0 && heads[0].size == 0 {
		heads = heads[1:]
	}
	return heads, nil
}

// sameContent reports whether entries a and b are equal but for their
// sequence numbers (the map of content hashes can collide; this cannot).
func sameContent(ctx context.Context, b Backend, a, c int64) (bool, error) {
	ea, err := b.Events(ctx, a-1, 1)
	if err != nil {
		return false, err
	}
	ec, err := b.Events(ctx, c-1, 1)
	if err != nil {
		return false, err
	}
	if len(ea) != 1 || len(ec) != 1 || ea[0].Seq != a || ec[0].Seq != c {
		return false, nil
	}
	la, lc := EncodeLeaf(ea[0]), EncodeLeaf(ec[0])
	return bytes.Equal(la[9:], lc[9:]), nil
}

// Batches handed from the reading goroutine to the checking one. A batch
// is large enough that handing it over costs nothing per entry, and small
// enough that the batches in flight stay in the CPUs' caches.
const (
	batchEntries = 512
	batchBytes   = 128 << 10
	batchesInUse = 4
)

// entryBatch is a run of entries as the checking goroutine needs them:
// each one's leaf, prefixed with 0x00, and its stored leaf hash, back to
// back in buf.
type entryBatch struct {
	buf  []byte
	ents []batchEntry
}

type batchEntry struct {
	seq int64
	// buf[start:leafEnd] is 0x00 || leaf; buf[leafEnd:hashEnd] the stored
	// leaf hash, valid when integrated.
	start, leafEnd, hashEnd int
	integrated              bool
}

var errScanStopped = errors.New("audit: scan stopped")

// scanBatches reads every entry of b on a new goroutine, encodes the
// leaves into batches and calls check with each batch, in sequence order,
// on the calling goroutine. Batches are recycled, so the scan allocates
// nothing per entry. It returns the first error of the scan or of check.
func scanBatches(ctx context.Context, b Backend, check func(*entryBatch) error) error {
	var (
		full    = make(chan *entryBatch, batchesInUse)
		free    = make(chan *entryBatch, batchesInUse)
		stop    = make(chan struct{})
		scanErr error
	)
	for range batchesInUse {
		free <- &entryBatch{buf: make([]byte, 0, batchBytes+4096), ents: make([]batchEntry, 0, batchEntries)}
	}
	go func() {
		defer close(full)
		bt := <-free
		send := func() error {
			select {
			case full <- bt:
			case <-stop:
				return errScanStopped
			}
			select {
			case bt = <-free:
			case <-stop:
				return errScanStopped
			}
			bt.buf, bt.ents = bt.buf[:0], bt.ents[:0]
			return nil
		}
		scanErr = b.Scan(ctx, 0, 0, func(e *Entry) error {
			start := len(bt.buf)
			bt.buf = append(bt.buf, rfc6962.RFC6962LeafHashPrefix)
			bt.buf = AppendLeaf(bt.buf, e)
			leafEnd := len(bt.buf)
			bt.buf = append(bt.buf, e.Leaf...)
			bt.ents = append(bt.ents, batchEntry{seq: e.Seq, start: start, leafEnd: leafEnd, hashEnd: len(bt.buf), integrated: e.Leaf != nil})
			if len(bt.ents) == batchEntries || len(bt.buf) >= batchBytes {
				return send()
			}
			return nil
		})
		if scanErr == nil && len(bt.ents) > 0 {
			scanErr = send()
		}
	}()
	var checkErr error
	for bt := range full {
		if checkErr == nil {
			if checkErr = check(bt); checkErr != nil {
				close(stop) // the scan ends at its next entry; drain until it has
			}
		}
		free <- bt
	}
	// full is closed: the scanning goroutine has set scanErr and ended.
	if checkErr != nil {
		return checkErr
	}
	return scanErr
}

// hashArena hands out hash-sized slices cut from larger blocks. The
// compact range keeps the slices it is given, so the verifier cannot reuse
// one buffer; an allocation per leaf and per interior node was a
// measurable part of its time. A block is freed once the range holds no
// hash in it.
type hashArena struct{ block []byte }

func (a *hashArena) next() []byte {
	if len(a.block) < HashSize {
		a.block = make([]byte, 1024*HashSize)
	}
	h := a.block[:HashSize:HashSize]
	a.block = a.block[HashSize:]
	return h
}

// rangeFactory returns a compact range factory whose node hashes come
// from the arena.
func (a *hashArena) rangeFactory() *compact.RangeFactory {
	return &compact.RangeFactory{Hash: func(l, r []byte) []byte {
		var in [1 + 2*HashSize]byte
		in[0] = rfc6962.RFC6962NodeHashPrefix
		copy(in[1:], l)
		copy(in[1+HashSize:], r)
		h := a.next()
		*(*[HashSize]byte)(h) = sha256.Sum256(in[:])
		return h
	}}
}

// repeatFinder finds entries with equal content (by a hash of it; Verify
// compares the candidates' content afterwards). A map from content hash to
// first entry, probed once per entry, cost a cache miss per entry at a
// million entries: a third of the checking goroutine's time. Instead the
// hashes are appended to one of 256 partitions by their top byte, in scan
// order, and each partition — a few thousand entries, small enough to
// stay in cache — is searched at the end.
type repeatFinder struct {
	seed  maphash.Seed
	n     int64 // entries added: the scan position of the next one
	parts [256][]contentHash
}

type contentHash struct {
	hash uint64
	seq  int64
	pos  int64 // scan position
}

func newRepeatFinder() *repeatFinder { return &repeatFinder{seed: maphash.MakeSeed()} }

func (f *repeatFinder) add(content []byte, seq int64) {
	h := maphash.Bytes(f.seed, content)
	p := &f.parts[h>>56]
	*p = append(*p, contentHash{hash: h, seq: seq, pos: f.n})
	f.n++
}

// pairs returns, for every entry whose content hash equals an earlier
// entry's, the sequence numbers of the first entry with that hash and of
// the entry, in scan order of the latter.
func (f *repeatFinder) pairs() [][2]int64 {
	type pair struct {
		pos        int64
		first, seq int64
	}
	var found []pair
	first := make(map[uint64]int64)
	for _, p := range f.parts {
		clear(first)
		for _, c := range p { // in scan order: partitions are appended to in order
			if s, ok := first[c.hash]; ok {
				found = append(found, pair{c.pos, s, c.seq})
			} else {
				first[c.hash] = c.seq
			}
		}
	}
	slices.SortFunc(found, func(a, b pair) int { return cmp.Compare(a.pos, b.pos) })
	out := make([][2]int64, len(found))
	for i, p := range found {
		out[i] = [2]int64{p.first, p.seq}
	}
	return out
}
