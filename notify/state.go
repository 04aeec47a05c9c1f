package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// stateVersion is the cursor file's format. A file of another version is
// set aside like a damaged one.
const stateVersion = 1

// state is the notifier's durable memory, one small JSON file: per webhook,
// the last event sequence it is done with (delivered, given up on, or not
// for it) and the grants it has warned about. A restart resumes from it, so
// it neither loses notifications nor sends old ones again (beyond the one
// in flight at a crash: delivery is at least once).
type state struct {
	path string

	// writeMu orders writes: a snapshot is taken and written under it, so
	// an older snapshot never lands after a newer one.
	writeMu sync.Mutex

	mu   sync.Mutex
	file stateFile
}

type stateFile struct {
	Version  int                   `json:"version"`
	Webhooks map[string]*hookState `json:"webhooks"`
}

type hookState struct {
	// AfterSeq is the sequence of the last event this webhook is done
	// with; the next pass reads the events after it.
	AfterSeq int64 `json:"after_seq"`
	// Warned maps a grant ID to the expiry it was warned about. A grant
	// whose expiry moves (an extension) is warned again; a marker is
	// dropped once its expiry has passed, by when the grant has ended.
	Warned map[string]time.Time `json:"warned,omitempty"`
}

// loadState reads the file at path. A missing file is an empty state. A
// file that cannot be decoded is renamed aside (path.damaged-UNIX) and the
// state starts empty, so a damaged cursor never keeps the server from
// starting; aside says where it went ("" when nothing was set aside).
func loadState(path string, now time.Time) (st *state, aside string, err error) {
	st = &state{path: path, file: stateFile{Version: stateVersion, Webhooks: map[string]*hookState{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read notification state %s: %w", path, err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != stateVersion {
		aside = path + ".damaged-" + strconv.FormatInt(now.Unix(), 10)
		if err := os.Rename(path, aside); err != nil {
			return nil, "", fmt.Errorf("set aside the damaged notification state %s: %w", path, err)
		}
		return st, aside, nil
	}
	for name, h := range f.Webhooks {
		if h == nil {
			delete(f.Webhooks, name)
		}
	}
	if f.Webhooks == nil {
		f.Webhooks = map[string]*hookState{}
	}
	st.file = f
	return st, "", nil
}

// hook returns the webhook's state, and whether it existed.
func (s *state) hook(name string) (hookState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.file.Webhooks[name]
	if !ok {
		return hookState{}, false
	}
	return *h, true
}

func (s *state) entry(name string) *hookState {
	h := s.file.Webhooks[name]
	if h == nil {
		h = &hookState{}
		s.file.Webhooks[name] = h
	}
	return h
}

func (s *state) cursor(name string) int64 {
	h, _ := s.hook(name)
	return h.AfterSeq
}

func (s *state) setCursor(name string, seq int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entry(name).AfterSeq = seq
}

// warned reports whether the webhook warned about the grant's expiry at.
func (s *state) warned(name, grantID string, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.file.Webhooks[name]
	if h == nil {
		return false
	}
	t, ok := h.Warned[grantID]
	return ok && t.Equal(at)
}

func (s *state) markWarned(name, grantID string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.entry(name)
	if h.Warned == nil {
		h.Warned = map[string]time.Time{}
	}
	h.Warned[grantID] = at
}

// pruneWarned drops the markers whose expiry is at or before now, and
// reports whether it dropped any.
func (s *state) pruneWarned(name string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.file.Webhooks[name]
	if h == nil {
		return false
	}
	n := len(h.Warned)
	for id, at := range h.Warned {
		if !at.After(now) {
			delete(h.Warned, id)
		}
	}
	return len(h.Warned) != n
}

// keepOnly forgets webhooks no longer configured.
func (s *state) keepOnly(names map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.file.Webhooks {
		if !names[name] {
			delete(s.file.Webhooks, name)
		}
	}
}

// save writes the state atomically: a temporary file in the same
// directory, synced, renamed over the old one, and the directory synced, so
// a crash leaves either the old file or the new one, never a torn one.
func (s *state) save() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	b, err := json.MarshalIndent(&s.file, "", "  ")
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode notification state: %w", err)
	}
	return writeAtomic(s.path, append(b, '\n'))
}

func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// CreateTemp makes the file with mode 0600.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write notification state: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write notification state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync notification state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write notification state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace notification state %s: %w", path, err)
	}
	// The rename is durable once the directory is; some systems cannot
	// sync a directory, and the file is whole either way.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
