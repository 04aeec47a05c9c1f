// Package follower lets an API server that accepts Lapse tokens follow the
// token target's revocation feed: it polls the feed over HTTP, keeps the set
// of revoked token IDs (forgetting each once the token has expired, when
// signature checks reject it anyway), and acknowledges what it applied so
// that Lapse can verify the revocation reached this consumer.
//
// A server checks Revoked(jti) for every request after verifying the token's
// signature and claims against the JWKS. Until the first successful sync —
// and, with MaxStale set, whenever the last one is too old — Revoked reports
// every token as revoked: a consumer that cannot see the feed fails closed.
package follower

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxPageBytes bounds one feed response read from the server.
const maxPageBytes = 8 << 20

// Config configures a Follower.
type Config struct {
	// BaseURL is the Lapse server, e.g. https://lapse.example.com.
	BaseURL string
	// Target is the token target's name.
	Target string
	// Consumer is this API server's consumer ID, as configured on the
	// target (the principal ID of its API key).
	Consumer string
	// APIKey is sent as a bearer token; it needs the introspect scope.
	APIKey string
	// HTTPClient defaults to a client with a 30 s timeout.
	HTTPClient *http.Client
	// Interval between polls in Run (default 2 s).
	Interval time.Duration
	// Leeway keeps a revoked token in the set this long after its exp, for
	// servers that accept slightly expired tokens (default 1 min).
	Leeway time.Duration
	// MaxStale, when positive, makes Revoked fail closed if the last
	// successful sync is older than this.
	MaxStale time.Duration
	// Now defaults to time.Now.
	Now func() time.Time
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Follower follows one target's revocation feed. Its methods are safe for
// concurrent use.
type Follower struct {
	cfg      Config
	feedURL  string
	ackURL   string
	syncMu   sync.Mutex // one Sync at a time
	mu       sync.RWMutex
	revoked  map[string]time.Time // jti → exp
	seq      int64                // last feed seq applied
	acked    int64                // last seq acknowledged
	lastSync time.Time
	synced   bool
}

// New returns a follower. It does not contact the server; call Sync or Run.
func New(cfg Config) (*Follower, error) {
	base, err := url.Parse(cfg.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("follower: BaseURL must be an absolute http(s) URL")
	}
	if cfg.Target == "" || cfg.Consumer == "" {
		return nil, fmt.Errorf("follower: Target and Consumer are required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	prefix := strings.TrimRight(cfg.BaseURL, "/") + "/v1/targets/" + url.PathEscape(cfg.Target) + "/revocations"
	return &Follower{
		cfg:     cfg,
		feedURL: prefix,
		ackURL:  prefix + "/ack",
		revoked: map[string]time.Time{},
	}, nil
}

// Revoked reports whether the token with this ID must be refused: it is on
// the feed, or the follower has not synced (recently enough) to know.
func (f *Follower) Revoked(jti string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.synced {
		return true
	}
	if f.cfg.MaxStale > 0 && f.cfg.Now().Sub(f.lastSync) > f.cfg.MaxStale {
		return true
	}
	_, ok := f.revoked[jti]
	return ok
}

// Seq returns the last feed sequence applied.
func (f *Follower) Seq() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.seq
}

// Len returns how many revoked tokens are kept.
func (f *Follower) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.revoked)
}

// wireRevocation is one feed entry on the wire.
type wireRevocation struct {
	Target    string    `json:"target"`
	Seq       int64     `json:"seq"`
	JTI       string    `json:"jti"`
	GrantID   string    `json:"grant_id"`
	ExpiresAt time.Time `json:"exp"`
	RevokedAt time.Time `json:"revoked_at"`
}

type wirePage struct {
	Revocations []wireRevocation `json:"revocations"`
	Next        int64            `json:"next"`
}

// Sync reads the feed to its end, applies it, prunes expired entries and
// acknowledges the last seq applied. Entries are applied before they are
// acknowledged, so an acknowledgement never runs ahead of Revoked.
func (f *Follower) Sync(ctx context.Context) error {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	for {
		after := f.Seq()
		page, err := f.fetch(ctx, after)
		if err != nil {
			return err
		}
		if len(page.Revocations) == 0 {
			break
		}
		f.mu.Lock()
		for _, r := range page.Revocations {
			if r.Seq <= f.seq {
				continue // a replayed entry
			}
			if r.JTI != "" {
				f.revoked[r.JTI] = r.ExpiresAt
			}
			f.seq = r.Seq
		}
		advanced := f.seq > after
		f.mu.Unlock()
		if !advanced {
			return fmt.Errorf("follower: feed page after %d did not advance", after)
		}
	}
	f.mu.Lock()
	now := f.cfg.Now()
	for jti, exp := range f.revoked {
		if !exp.IsZero() && now.After(exp.Add(f.cfg.Leeway)) {
			delete(f.revoked, jti)
		}
	}
	f.synced = true
	f.lastSync = now
	seq, acked := f.seq, f.acked
	f.mu.Unlock()
	if seq > acked {
		if err := f.ack(ctx, seq); err != nil {
			return err
		}
		f.mu.Lock()
		f.acked = max(f.acked, seq)
		f.mu.Unlock()
	}
	return nil
}

func (f *Follower) fetch(ctx context.Context, after int64) (*wirePage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.feedURL+"?after="+strconv.FormatInt(after, 10), nil)
	if err != nil {
		return nil, fmt.Errorf("follower: build feed request: %w", err)
	}
	var page wirePage
	if err := f.do(req, &page); err != nil {
		return nil, fmt.Errorf("follower: read feed after %d: %w", after, err)
	}
	return &page, nil
}

func (f *Follower) ack(ctx context.Context, seq int64) error {
	body, err := json.Marshal(struct {
		Consumer string `json:"consumer"`
		Seq      int64  `json:"seq"`
	}{f.cfg.Consumer, seq})
	if err != nil {
		return fmt.Errorf("follower: encode ack: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.ackURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("follower: build ack request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := f.do(req, nil); err != nil {
		return fmt.Errorf("follower: acknowledge seq %d: %w", seq, err)
	}
	return nil
}

// StatusError is a non-2xx answer from the server.
type StatusError struct {
	Status int
	// Code is the Lapse error code from the body, when there is one.
	Code string
}

func (e *StatusError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("server answered %d (%s)", e.Status, e.Code)
	}
	return fmt.Sprintf("server answered %d", e.Status)
}

func (f *Follower) do(req *http.Request, out any) error {
	if f.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+f.cfg.APIKey)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxPageBytes)
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Status: resp.StatusCode}
		var e struct {
			Code  string `json:"code"`
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if json.NewDecoder(body).Decode(&e) == nil {
			se.Code = e.Code
			if se.Code == "" {
				se.Code = e.Error.Code
			}
		}
		return se
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, body)
		return nil
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// Run syncs every Interval until ctx ends, backing off (with jitter, up to
// a minute) while the server cannot be reached. It returns ctx's error.
func (f *Follower) Run(ctx context.Context) error {
	delay := time.Duration(0)
	failures := 0
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if err := f.Sync(ctx); err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			backoff := min(f.cfg.Interval<<min(failures, 5), time.Minute)
			delay = backoff/2 + rand.N(backoff/2+1)
			f.cfg.Logger.Warn("revocation feed sync failed", "target", f.cfg.Target, "err", err, "retry_in", delay)
			continue
		}
		failures = 0
		delay = f.cfg.Interval
	}
}
