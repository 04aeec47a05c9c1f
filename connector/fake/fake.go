// Package fake is an in-memory connector for unit tests, benchmarks and
// demos. It behaves like a real target — a grant creates an account with a
// password, sessions opened with it stay alive until Revoke kills them,
// Verify checks independently what is left — and it lets tests inject what
// real targets do wrong: failures, slow calls, revokes that silently do
// nothing. It is cheap enough that the broker's benchmarks measure the
// broker, not the connector.
//
// By default state lives in memory. With Options.Dir each live grant is a
// file in that directory, so several processes share one "target"; with
// Options.Journal every effective Grant and Revoke is appended to a JSON
// lines file, so a multi-process test can check that each grant was
// provisioned and revoked exactly once.
//
// Configuration (a target of kind fake):
//
//	latency: 5ms          # added to every call
//	dir: fake-target      # optional: share the target between processes
//	journal: fake.jsonl   # optional: log effective grants and revokes
//
// An entitlement's spec may list privileges: {privileges: [read, write]}.
package fake

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Method names a connector call, for failure injection and call counts.
type Method string

// The connector calls.
const (
	Grant    Method = "grant"
	Revoke   Method = "revoke"
	Verify   Method = "verify"
	Discover Method = "discover"
	Extend   Method = "extend"
)

var methods = [...]Method{Grant, Revoke, Verify, Discover, Extend}

func (m Method) index() int {
	for i, x := range methods {
		if x == m {
			return i
		}
	}
	panic("fake: unknown method " + string(m))
}

// Checkpoint names reported by the fake.
const (
	CheckpointAccount  = "fake:account"
	CheckpointSessions = "fake:sessions"
)

// userPrefix starts every account name the fake makes, as real connectors
// mark the principals they create.
const userPrefix = "lapse_"

// Options configures a fake connector. The zero value is a fast in-memory
// target.
type Options struct {
	// Latency is added to every call (a slow target).
	Latency time.Duration
	// Dir, when set, keeps each live grant as a file in this directory
	// instead of in memory, so several processes share one target. Live
	// sessions are still per process.
	Dir string
	// Journal, when set, is a file to which every effective Grant (one that
	// created an account) and Revoke (one that removed one) is appended as
	// a JSON line (see JournalEntry), exactly once each, even when a
	// process is killed in the middle (journaled).
	Journal string
	// Clock is used for expiry checks and journal times (default: the
	// system clock).
	Clock lapse.Clock
}

// Config is the fake target's configuration block.
type Config struct {
	Latency lapse.Duration `yaml:"latency" json:"latency"`
	Dir     string         `yaml:"dir" json:"dir"`
	Journal string         `yaml:"journal" json:"journal"`
}

// JournalEntry is one line of the journal.
type JournalEntry struct {
	Op      string    `json:"op"` // "grant" or "revoke"
	GrantID string    `json:"grant_id"`
	PID     int       `json:"pid"`
	Time    time.Time `json:"time"`
}

// Open is the connector.Factory of the fake target.
func Open(env connector.Env, decode func(v any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.Latency < 0 {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "latency", "latency must not be negative")
	}
	c := New(Options{Latency: cfg.Latency.D(), Dir: cfg.Dir, Journal: cfg.Journal, Clock: env.Clock})
	if err := c.setup(); err != nil {
		return nil, err
	}
	return c, nil
}

// record is one live account on the fake target. It holds the hash of the
// password, never the password.
type record struct {
	GrantID     string    `json:"grant_id"`
	User        string    `json:"user"`
	PrincipalID string    `json:"principal_id"`
	Entitlement string    `json:"entitlement"`
	Privileges  []string  `json:"privileges,omitempty"`
	SecretHash  string    `json:"secret_hash"`
	ExpiresAt   time.Time `json:"expires_at"`
	CreatedAt   time.Time `json:"created_at"`
}

// state is what the fake returns as connector State.
type state struct {
	User string `json:"user"`
}

type rule struct {
	method    Method
	grantID   string // "" matches every grant
	remaining int    // < 0: until cleared
	err       error
}

type gate struct {
	methods map[Method]bool // empty: every method
	open    chan struct{}
}

// Conn is a fake connector. All methods are safe for concurrent use.
type Conn struct {
	opts  Options
	clock lapse.Clock

	setupOnce sync.Once
	setupErr  error
	journal   *os.File
	// journalMu orders this process's journaled changes; the file lock
	// orders them across processes (journaled).
	journalMu sync.Mutex

	mu          sync.Mutex
	grants      map[string]*record // memory mode only
	sessions    map[string]map[*Session]struct{}
	rules       []*rule
	sabotaged   map[string]bool
	sabotageAll bool
	calls       [len(methods)]int
	perGrant    map[string]*[len(methods)]int
	inFlight    int
	peak        int
	gate        *gate
	waiting     int
}

// New returns a fake connector. Errors in Dir or Journal surface on the
// first call (Open reports them at once).
func New(opts Options) *Conn {
	c := &Conn{
		opts:      opts,
		clock:     opts.Clock,
		grants:    map[string]*record{},
		sessions:  map[string]map[*Session]struct{}{},
		sabotaged: map[string]bool{},
		perGrant:  map[string]*[len(methods)]int{},
	}
	if c.clock == nil {
		c.clock = lapse.SystemClock{}
	}
	return c
}

func (c *Conn) setup() error {
	c.setupOnce.Do(func() {
		if c.opts.Dir != "" {
			if err := os.MkdirAll(c.opts.Dir, 0o700); err != nil {
				c.setupErr = fmt.Errorf("fake: create dir: %w", err)
				return
			}
		}
		if c.opts.Journal != "" {
			f, err := os.OpenFile(c.opts.Journal, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				c.setupErr = fmt.Errorf("fake: open journal: %w", err)
				return
			}
			c.journal = f
		}
	})
	return c.setupErr
}

// Close closes the journal.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.journal == nil {
		return nil
	}
	err := c.journal.Close()
	c.journal = nil
	return err
}

// --- failure injection and observation ---

// Fail makes every call of m for grantID (all grants if grantID is "")
// return err until ClearFailures. A nil err means an EUNAVAILABLE error.
func (c *Conn) Fail(m Method, grantID string, err error) { c.addRule(m, grantID, -1, err) }

// FailTimes makes the next n calls of m for grantID ("" for any grant)
// return err, then lets calls succeed again.
func (c *Conn) FailTimes(m Method, grantID string, n int, err error) {
	if n <= 0 {
		return
	}
	c.addRule(m, grantID, n, err)
}

func (c *Conn) addRule(m Method, grantID string, n int, err error) {
	m.index() // validates m
	if err == nil {
		err = lapse.Errorf(lapse.EUNAVAILABLE, "fake: injected %s failure", m)
	}
	c.mu.Lock()
	c.rules = append(c.rules, &rule{method: m, grantID: grantID, remaining: n, err: err})
	c.mu.Unlock()
}

// ClearFailures removes every injected failure.
func (c *Conn) ClearFailures() {
	c.mu.Lock()
	c.rules = nil
	c.mu.Unlock()
}

// Sabotage makes Revoke of grantID (every grant if "") report success while
// removing nothing — the statement that silently does nothing — so that
// Verify must find the residue.
func (c *Conn) Sabotage(grantID string) {
	c.mu.Lock()
	if grantID == "" {
		c.sabotageAll = true
	} else {
		c.sabotaged[grantID] = true
	}
	c.mu.Unlock()
}

// ClearSabotage makes Revoke work again.
func (c *Conn) ClearSabotage() {
	c.mu.Lock()
	c.sabotageAll = false
	clear(c.sabotaged)
	c.mu.Unlock()
}

// Block makes calls of the given methods (all methods if none) wait at
// entry until release is called or their context ends. A blocked call
// counts as in flight. release may be called more than once.
func (c *Conn) Block(ms ...Method) (release func()) {
	g := &gate{methods: map[Method]bool{}, open: make(chan struct{})}
	for _, m := range ms {
		m.index()
		g.methods[m] = true
	}
	c.mu.Lock()
	c.gate = g
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.gate == g {
				c.gate = nil
			}
			c.mu.Unlock()
			close(g.open)
		})
	}
}

// Waiting returns how many calls are blocked by Block right now, so a test
// can wait for them without sleeping blindly.
func (c *Conn) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting
}

// Calls returns how many times m was called (including failed calls).
func (c *Conn) Calls(m Method) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[m.index()]
}

// CallsFor returns how many times m was called for grantID.
func (c *Conn) CallsFor(m Method, grantID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.perGrant[grantID]; n != nil {
		return n[m.index()]
	}
	return 0
}

// InFlight returns how many calls are running now.
func (c *Conn) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight
}

// PeakConcurrency returns the largest number of calls that were in flight
// at once since the connector was made or ResetPeak was called.
func (c *Conn) PeakConcurrency() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}

// ResetPeak restarts peak concurrency tracking from the current level.
func (c *Conn) ResetPeak() {
	c.mu.Lock()
	c.peak = c.inFlight
	c.mu.Unlock()
}

// enter accounts for a call, applies the gate, the latency and injected
// failures. The returned function must be called when the call ends.
func (c *Conn) enter(ctx context.Context, m Method, grantID string) (func(), error) {
	i := m.index()
	c.mu.Lock()
	c.calls[i]++
	if grantID != "" {
		n := c.perGrant[grantID]
		if n == nil {
			n = new([len(methods)]int)
			c.perGrant[grantID] = n
		}
		n[i]++
	}
	c.inFlight++
	if c.inFlight > c.peak {
		c.peak = c.inFlight
	}
	g := c.gate
	blocked := g != nil && (len(g.methods) == 0 || g.methods[m])
	if blocked {
		c.waiting++
	}
	c.mu.Unlock()
	done := func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
	}
	if blocked {
		var err error
		select {
		case <-g.open:
		case <-ctx.Done():
			err = ctx.Err()
		}
		c.mu.Lock()
		c.waiting--
		c.mu.Unlock()
		if err != nil {
			done()
			return nil, fmt.Errorf("fake: %s blocked: %w", m, err)
		}
	}
	if c.opts.Latency > 0 {
		t := time.NewTimer(c.opts.Latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			done()
			return nil, fmt.Errorf("fake: %s: %w", m, ctx.Err())
		}
	}
	if err := c.injected(m, grantID); err != nil {
		done()
		return nil, err
	}
	if err := c.setup(); err != nil {
		done()
		return nil, err
	}
	return done, nil
}

func (c *Conn) injected(m Method, grantID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, r := range c.rules {
		if r.method != m || (r.grantID != "" && r.grantID != grantID) {
			continue
		}
		if r.remaining > 0 {
			r.remaining--
			if r.remaining == 0 {
				c.rules = append(c.rules[:i], c.rules[i+1:]...)
			}
		}
		return r.err
	}
	return nil
}

func (c *Conn) isSabotaged(grantID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sabotageAll || c.sabotaged[grantID]
}

// --- the target's state ---

// validGrantID keeps grant IDs usable as file and account names.
func validGrantID(id string) error {
	if id == "" || len(id) > 128 {
		return lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID must be 1 to 128 characters")
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return lapse.FieldErrorf(lapse.EINVALID, "grant_id", "grant ID may only hold letters, digits, _ and -")
		}
	}
	return nil
}

func userFor(grantID string) string { return userPrefix + grantID }

func (c *Conn) path(grantID string) string { return filepath.Join(c.opts.Dir, grantID+".json") }

// put stores rec; created reports whether the account did not exist.
func (c *Conn) put(rec *record) (created bool, err error) {
	if c.opts.Dir == "" {
		c.mu.Lock()
		_, existed := c.grants[rec.GrantID]
		c.grants[rec.GrantID] = rec
		c.mu.Unlock()
		return !existed, nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("fake: encode record: %w", err)
	}
	final := c.path(rec.GrantID)
	tmp := fmt.Sprintf("%s.tmp-%d-%s", final, os.Getpid(), randomToken(6))
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return false, fmt.Errorf("fake: write record %s: %w", rec.GrantID, err)
	}
	defer os.Remove(tmp)
	// Link does not replace an existing file, so exactly one process sees
	// a grant as newly created; a repeated Grant then replaces the record
	// (a password reset).
	if err := os.Link(tmp, final); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("fake: create record %s: %w", rec.GrantID, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return false, fmt.Errorf("fake: replace record %s: %w", rec.GrantID, err)
	}
	return false, nil
}

// get returns the record of grantID, or nil.
func (c *Conn) get(grantID string) (*record, error) {
	if c.opts.Dir == "" {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.grants[grantID], nil
	}
	b, err := os.ReadFile(c.path(grantID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("fake: read record %s: %w", grantID, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("fake: decode record %s: %w", grantID, err)
	}
	return &rec, nil
}

// remove deletes the record of grantID; removed reports whether it existed.
func (c *Conn) remove(grantID string) (removed bool, err error) {
	if c.opts.Dir == "" {
		c.mu.Lock()
		_, ok := c.grants[grantID]
		delete(c.grants, grantID)
		c.mu.Unlock()
		return ok, nil
	}
	err = os.Remove(c.path(grantID))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("fake: remove record %s: %w", grantID, err)
	}
	return true, nil
}

func (c *Conn) list() ([]*record, error) {
	if c.opts.Dir == "" {
		c.mu.Lock()
		out := make([]*record, 0, len(c.grants))
		for _, r := range c.grants {
			out = append(out, r)
		}
		c.mu.Unlock()
		return out, nil
	}
	entries, err := os.ReadDir(c.opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("fake: list records: %w", err)
	}
	var out []*record
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || validGrantID(id) != nil {
			continue
		}
		rec, err := c.get(id)
		if err != nil {
			return nil, err
		}
		if rec != nil { // removed since ReadDir
			out = append(out, rec)
		}
	}
	return out, nil
}

// journaled runs change (a put or a remove of grantID's record) and records
// op for it in the journal exactly once per change on the target, even
// across processes that share the directory and are killed at any point:
// under an exclusive lock on the journal it appends op first, unless the
// journal already holds it for the grant's current life (a "revoke" after
// its last "grant"), and then changes the record. A process killed between
// the two leaves the entry; the next process to make the change (the
// broker retries until it verifies) finds it and does not add another. A
// revoke of a record that is absent records nothing.
func (c *Conn) journaled(op, grantID string, change func() (bool, error)) (bool, error) {
	if c.opts.Journal == "" {
		return change()
	}
	c.journalMu.Lock()
	defer c.journalMu.Unlock()
	f, err := os.OpenFile(c.opts.Journal, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("fake: open journal: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return false, fmt.Errorf("fake: lock journal: %w", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if op == "revoke" {
		if rec, err := c.get(grantID); err != nil {
			return false, err
		} else if rec == nil {
			return false, nil
		}
	}
	done, err := journalHas(f, op, grantID)
	if err != nil {
		return false, err
	}
	if !done {
		if err := c.writeJournal(op, grantID); err != nil {
			return false, err
		}
	}
	return change()
}

// journalHas reports whether the journal records op for grantID's current
// life: any "grant" entry, or a "revoke" after its last "grant".
func journalHas(f *os.File, op, grantID string) (bool, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, fmt.Errorf("fake: read journal: %w", err)
	}
	granted, revoked := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e JournalEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.GrantID != grantID {
			continue
		}
		switch e.Op {
		case "grant":
			granted, revoked = true, false
		case "revoke":
			revoked = true
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("fake: read journal: %w", err)
	}
	if op == "grant" {
		return granted, nil
	}
	return revoked, nil
}

func (c *Conn) writeJournal(op, grantID string) error {
	if c.opts.Journal == "" {
		return nil
	}
	line, err := json.Marshal(JournalEntry{Op: op, GrantID: grantID, PID: os.Getpid(), Time: c.clock.Now()})
	if err != nil {
		return fmt.Errorf("fake: encode journal entry: %w", err)
	}
	line = append(line, '\n')
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.journal == nil {
		return errors.New("fake: journal is closed")
	}
	// One write of one line on an O_APPEND file: lines of several processes
	// interleave but never mix.
	if _, err := c.journal.Write(line); err != nil {
		return fmt.Errorf("fake: append journal: %w", err)
	}
	return nil
}

// Has reports whether the account of grantID exists on the target.
func (c *Conn) Has(grantID string) bool {
	rec, err := c.get(grantID)
	return err == nil && rec != nil
}

// Live returns the grant IDs whose accounts exist, sorted.
func (c *Conn) Live() ([]string, error) {
	if err := c.setup(); err != nil {
		return nil, err
	}
	recs, err := c.list()
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.GrantID
	}
	sort.Strings(ids)
	return ids, nil
}

// Authenticate logs in as user with password, as the target's real client
// would. It fails for an unknown user, a wrong password or an expired
// account.
func (c *Conn) Authenticate(user, password string) error {
	grantID, ok := strings.CutPrefix(user, userPrefix)
	if !ok || validGrantID(grantID) != nil {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "fake: login failed")
	}
	if err := c.setup(); err != nil {
		return err
	}
	rec, err := c.get(grantID)
	if err != nil {
		return err
	}
	if rec == nil || rec.User != user {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "fake: login failed")
	}
	sum := sha256.Sum256([]byte(password))
	want, err := hex.DecodeString(rec.SecretHash)
	if err != nil || subtle.ConstantTimeCompare(sum[:], want) != 1 {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "fake: login failed")
	}
	// The target enforces the grant's deadline itself, like VALID UNTIL.
	if !c.clock.Now().Before(rec.ExpiresAt) {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "fake: login failed")
	}
	return nil
}

// Session is a live session opened with a grant's credentials. It keeps
// working after the account is removed, as sessions on real databases do,
// until Revoke kills it.
type Session struct {
	c       *Conn
	grantID string
	mu      sync.Mutex
	killed  bool
	closed  bool
}

// OpenSession logs in and returns a session.
func (c *Conn) OpenSession(user, password string) (*Session, error) {
	if err := c.Authenticate(user, password); err != nil {
		return nil, err
	}
	grantID := strings.TrimPrefix(user, userPrefix)
	s := &Session{c: c, grantID: grantID}
	c.mu.Lock()
	m := c.sessions[grantID]
	if m == nil {
		m = map[*Session]struct{}{}
		c.sessions[grantID] = m
	}
	m[s] = struct{}{}
	c.mu.Unlock()
	return s, nil
}

// Do runs a command in the session. It fails once the session was killed
// or closed.
func (s *Session) Do(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.killed:
		return lapse.Errorf(lapse.EUNAUTHORIZED, "fake: session was terminated")
	case s.closed:
		return lapse.Errorf(lapse.ECONFLICT, "fake: session is closed")
	}
	return nil
}

// Close ends the session.
func (s *Session) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.c.mu.Lock()
	if m := s.c.sessions[s.grantID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(s.c.sessions, s.grantID)
		}
	}
	s.c.mu.Unlock()
}

// killSessions terminates the grant's live sessions and returns how many.
func (c *Conn) killSessions(grantID string) int {
	c.mu.Lock()
	m := c.sessions[grantID]
	delete(c.sessions, grantID)
	c.mu.Unlock()
	for s := range m {
		s.mu.Lock()
		s.killed = true
		s.mu.Unlock()
	}
	return len(m)
}

func (c *Conn) liveSessions(grantID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions[grantID])
}

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("fake: crypto/rand failed: " + err.Error()) // no safe secrets without randomness
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// --- the spec ---

// ValidateSpec accepts specs of the form {privileges: [name, ...]}, where
// each name uses letters, digits and ._:/- only.
func (c *Conn) ValidateSpec(spec map[string]any) error {
	_, err := parseSpec(spec)
	return err
}

func parseSpec(spec map[string]any) ([]string, error) {
	var privs []string
	for k, v := range spec {
		if k != "privileges" {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "spec."+k, "unknown key %q in fake spec", k)
		}
		var list []any
		switch v := v.(type) {
		case []any:
			list = v
		case []string:
			for _, s := range v {
				list = append(list, s)
			}
		default:
			return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.privileges", "privileges must be a list of names")
		}
		for _, p := range list {
			s, ok := p.(string)
			if !ok || !safeName(s) {
				return nil, lapse.FieldErrorf(lapse.EINVALID, "spec.privileges", "a privilege must be a name of letters, digits and ._:/-")
			}
			privs = append(privs, s)
		}
	}
	return privs, nil
}

func safeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:/-", r)) {
			return false
		}
	}
	return true
}

// --- the connector contract ---

// Grant creates the account of req.GrantID with a fresh password. A repeated
// Grant resets the password of the one account; it never makes a second.
func (c *Conn) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	done, err := c.enter(ctx, Grant, req.GrantID)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := validGrantID(req.GrantID); err != nil {
		return nil, err
	}
	privs, err := parseSpec(req.Spec)
	if err != nil {
		return nil, err
	}
	now := c.clock.Now()
	if !req.ExpiresAt.After(now) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_at", "the grant's deadline has passed")
	}
	password := randomToken(24)
	sum := sha256.Sum256([]byte(password))
	user := userFor(req.GrantID)
	rec := &record{
		GrantID:     req.GrantID,
		User:        user,
		PrincipalID: req.Principal.ID,
		Entitlement: req.Entitlement,
		Privileges:  privs,
		SecretHash:  hex.EncodeToString(sum[:]),
		ExpiresAt:   req.ExpiresAt,
		CreatedAt:   now,
	}
	if _, err := c.journaled("grant", req.GrantID, func() (bool, error) { return c.put(rec) }); err != nil {
		return nil, err
	}
	st, err := json.Marshal(state{User: user})
	if err != nil {
		return nil, fmt.Errorf("fake: encode state: %w", err)
	}
	return &connector.GrantResponse{
		Secret: map[string]string{"password": password},
		Info:   map[string]string{"user": user},
		State:  st,
		Checkpoints: []connector.CheckpointSpec{
			{Name: CheckpointAccount, Kind: lapse.CheckpointTarget},
			{Name: CheckpointSessions, Kind: lapse.CheckpointSessions},
		},
		Probe: map[string]string{"password": password},
	}, nil
}

// Revoke removes the account of req.GrantID and kills its sessions. It
// derives the account from the grant ID, so it works without State.
func (c *Conn) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	done, err := c.enter(ctx, Revoke, req.GrantID)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := validGrantID(req.GrantID); err != nil {
		return nil, err
	}
	user := userFor(req.GrantID)
	if c.isSabotaged(req.GrantID) {
		// What a broken target does: acknowledge and do nothing.
		return &connector.RevokeResponse{Actions: []string{"dropped user " + user}}, nil
	}
	removed, err := c.journaled("revoke", req.GrantID, func() (bool, error) { return c.remove(req.GrantID) })
	if err != nil {
		return nil, err
	}
	killed := c.killSessions(req.GrantID)
	resp := &connector.RevokeResponse{}
	if removed {
		resp.Actions = append(resp.Actions, "dropped user "+user)
	} else {
		resp.Actions = append(resp.Actions, "user "+user+" was already absent")
	}
	if killed > 0 {
		resp.Actions = append(resp.Actions, fmt.Sprintf("terminated %d sessions", killed))
	}
	return resp, nil
}

// Verify checks that the account is absent, that a login with the grant's
// password fails, and that no session of the grant is alive.
func (c *Conn) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	done, err := c.enter(ctx, Verify, req.GrantID)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := validGrantID(req.GrantID); err != nil {
		return nil, err
	}
	user := userFor(req.GrantID)
	rec, err := c.get(req.GrantID)
	if err != nil {
		return nil, err
	}
	where := "memory"
	if c.opts.Dir != "" {
		where = "dir"
	}
	account := connector.CheckpointResult{
		Name:     CheckpointAccount,
		Kind:     lapse.CheckpointTarget,
		Gone:     rec == nil,
		Evidence: map[string]any{"user": user, "checked": where, "account_present": rec != nil},
	}
	if rec != nil {
		account.Residue = append(account.Residue, "user "+user+" exists")
	}
	if pw := req.Probe["password"]; pw != "" {
		if err := c.Authenticate(user, pw); err == nil {
			account.Gone = false
			account.Residue = append(account.Residue, "login as "+user+" succeeds")
			account.Evidence["login_probe"] = "accepted"
		} else {
			account.Evidence["login_probe"] = "refused"
		}
	} else {
		account.Evidence["login_probe"] = "not run (no probe material)"
	}
	n := c.liveSessions(req.GrantID)
	sessions := connector.CheckpointResult{
		Name:     CheckpointSessions,
		Kind:     lapse.CheckpointSessions,
		Gone:     n == 0,
		Evidence: map[string]any{"user": user, "live_sessions": n},
	}
	if n > 0 {
		sessions.Residue = []string{fmt.Sprintf("%d live sessions of %s", n, user)}
	}
	return &connector.VerifyResponse{Checkpoints: []connector.CheckpointResult{account, sessions}}, nil
}

// Discover lists every account on the fake target; all of them are
// ephemeral, made by Lapse.
func (c *Conn) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	done, err := c.enter(ctx, Discover, "")
	if err != nil {
		return nil, err
	}
	defer done()
	recs, err := c.list()
	if err != nil {
		return nil, err
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].GrantID < recs[j].GrantID })
	resp := &connector.DiscoverResponse{Principals: make([]connector.DiscoveredPrincipal, 0, len(recs))}
	for _, r := range recs {
		privs := r.Privileges
		if len(privs) == 0 && r.Entitlement != "" {
			privs = []string{r.Entitlement}
		}
		resp.Principals = append(resp.Principals, connector.DiscoveredPrincipal{
			Name: r.User, Ephemeral: true, GrantID: r.GrantID, Privileges: privs,
		})
	}
	return resp, nil
}

// Interface guards.
var (
	_ connector.Connector     = (*Conn)(nil)
	_ connector.SpecValidator = (*Conn)(nil)
	_ connector.Closer        = (*Conn)(nil)
	_ connector.Factory       = Open
)

// Extend moves the deadline the fake target enforces at login (like
// PostgreSQL's VALID UNTIL) to req.ExpiresAt; it never shortens it.
// Returns ENOTFOUND when the grant has no account here.
func (c *Conn) Extend(ctx context.Context, req *connector.ExtendRequest) error {
	done, err := c.enter(ctx, Extend, req.GrantID)
	if err != nil {
		return err
	}
	defer done()
	rec, err := c.get(req.GrantID)
	if err != nil {
		return err
	}
	if rec == nil {
		return lapse.Errorf(lapse.ENOTFOUND, "fake: no account for grant %s", req.GrantID)
	}
	if !req.ExpiresAt.After(rec.ExpiresAt) {
		return nil
	}
	rec.ExpiresAt = req.ExpiresAt
	_, err = c.put(rec)
	return err
}

// Deadline is the deadline the fake target enforces for grantID (zero
// when it has no account), for tests.
func (c *Conn) Deadline(grantID string) time.Time {
	rec, err := c.get(grantID)
	if err != nil || rec == nil {
		return time.Time{}
	}
	return rec.ExpiresAt
}
