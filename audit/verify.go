package audit

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
	"sort"
	"time"

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
		rng        = rangeFactory.NewEmptyRange(0)
		expected   = int64(1)
		pendingAt  int64 // first entry without a leaf hash
		leafBuf    = make([]byte, 0, 1024)
		hashBuf    = make([]byte, 0, 1025)
		seed       = maphash.MakeSeed()
		seen       = make(map[uint64]int64, 1<<16)
		dupes      [][2]int64
		nextHead   = 0
		lastGood   uint64
		headFailed bool
	)
	err = b.Scan(ctx, 0, 0, func(e *Entry) error {
		if e.Seq != expected {
			if e.Seq > expected {
				r.add(expected, "entries %d to %d are missing", expected, e.Seq-1)
			} else {
				r.add(e.Seq, "entry %d is out of order", e.Seq)
			}
			expected = e.Seq
		}
		expected++
		r.Entries++
		leafBuf = AppendLeaf(leafBuf[:0], e)
		h := hashLeaf(leafBuf, hashBuf)
		switch {
		case e.Leaf == nil:
			if pendingAt == 0 {
				pendingAt = e.Seq
			}
		case pendingAt != 0:
			r.add(pendingAt, "entry %d has no leaf hash but entry %d after it has one", pendingAt, e.Seq)
			pendingAt = -1 // reported once
		default:
			r.Integrated++
			if !bytes.Equal(e.Leaf, h[:]) {
				r.add(e.Seq, "entry %d does not match its leaf hash: it was altered, moved or replaced", e.Seq)
			}
		}
		// Everything but the version and the sequence number: two entries
		// with the same content are one entry written twice.
		k := maphash.Bytes(seed, leafBuf[9:])
		if first, ok := seen[k]; ok {
			dupes = append(dupes, [2]int64{first, e.Seq})
		} else {
			seen[k] = e.Seq
		}
		if err := rng.Append(h[:], nil); err != nil {
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
	for _, d := range dupes {
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
