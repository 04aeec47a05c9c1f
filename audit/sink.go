package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// Sink receives every signed checkpoint, somewhere the database's owner
// cannot rewrite: that is what makes truncating the tail of the log
// detectable. Publish must be idempotent: the same checkpoint may be
// published again after a failure or by another replica.
type Sink interface {
	Publish(ctx context.Context, cp *Checkpoint) error
	// String names the sink in logs and reports.
	String() string
}

// checkpointSuffix ends the name of every checkpoint file a DirSink
// writes: <20-digit size>.checkpoint, so names sort by size.
const checkpointSuffix = ".checkpoint"

// DirSink writes each checkpoint to its own file in Dir, named by its tree
// size. Mount Dir from somewhere else (another host, a write-once bucket,
// an append-only volume) for it to be evidence.
type DirSink struct {
	Dir string
}

func (d *DirSink) String() string { return "dir:" + d.Dir }

// Publish implements Sink. It never replaces an existing file that holds a
// different checkpoint of the same size: that would be a fork of the log,
// and it is reported as an error instead.
func (d *DirSink) Publish(ctx context.Context, cp *Checkpoint) error {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("audit: checkpoint directory: %w", err)
	}
	path := filepath.Join(d.Dir, fmt.Sprintf("%020d%s", cp.Size, checkpointSuffix))
	if old, err := os.ReadFile(path); err == nil {
		if bytes.Equal(old, cp.Note) {
			return nil
		}
		return fmt.Errorf("audit: %s already holds a different checkpoint of size %d", path, cp.Size)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("audit: read %s: %w", path, err)
	}
	f, err := os.CreateTemp(d.Dir, ".checkpoint-*")
	if err != nil {
		return fmt.Errorf("audit: write checkpoint: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the link
	if _, err := f.Write(cp.Note); err != nil {
		f.Close()
		return fmt.Errorf("audit: write checkpoint: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit: write checkpoint: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("audit: write checkpoint: %w", err)
	}
	// A hard link, unlike a rename, fails if the name exists: two
	// replicas publishing at once cannot overwrite each other.
	if err := os.Link(f.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			if old, rerr := os.ReadFile(path); rerr == nil && bytes.Equal(old, cp.Note) {
				return nil
			}
		}
		return fmt.Errorf("audit: publish checkpoint: %w", err)
	}
	return nil
}

// ReadDir reads and verifies every checkpoint file in dir. A file that
// does not verify is an error naming it: a sink holds only what Lapse
// wrote.
func ReadDir(dir string, v note.Verifier) ([]*Checkpoint, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: read checkpoint directory: %w", err)
	}
	var out []*Checkpoint
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, checkpointSuffix) || strings.HasPrefix(name, ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("audit: read %s: %w", name, err)
		}
		cp, err := OpenCheckpoint(b, v)
		if err != nil {
			return nil, fmt.Errorf("audit: %s: %w", name, err)
		}
		if size, err := strconv.ParseUint(strings.TrimSuffix(name, checkpointSuffix), 10, 64); err != nil || size != cp.Size {
			return nil, fmt.Errorf("audit: %s holds the checkpoint of size %d", name, cp.Size)
		}
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Size < out[j].Size })
	return out, nil
}

// HTTPSink POSTs each checkpoint (the signed note, text/plain) to URL, for
// a witness or a collector that keeps them. Any 2xx answer is success.
type HTTPSink struct {
	URL    string
	Client *http.Client // nil = a client with a 10 s timeout
}

func (h *HTTPSink) String() string { return "http:" + h.URL }

// Publish implements Sink.
func (h *HTTPSink) Publish(ctx context.Context, cp *Checkpoint) error {
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(cp.Note))
	if err != nil {
		return fmt.Errorf("audit: checkpoint sink: %w", err)
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("audit: checkpoint sink: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("audit: checkpoint sink answered HTTP %d", resp.StatusCode)
	}
	return nil
}
