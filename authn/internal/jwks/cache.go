package jwks

import (
	"context"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
)

// Cache keeps one issuer's public keys over a fetch function. It fetches
// lazily, at most one fetch at a time (callers wait for the one in
// flight), again when the keys are older than MaxAge or a token names a
// key it lacks, and never more often than MinRefresh. A failed refresh
// keeps the keys it had: an issuer that is briefly down does not stop
// tokens it signed earlier with known keys.
//
// Set the exported fields before the first call and do not change them
// after; a Cache is then safe for concurrent use.
type Cache struct {
	// Name is the issuer's configured name, in errors and logs.
	Name   string
	Flavor Flavor
	// Fetch gets the keys. It is called from one goroutine at a time,
	// without any caller's context, bounded by FetchTimeout.
	Fetch func(ctx context.Context) ([]jose.JSONWebKey, error)
	Options

	mu        sync.Mutex
	cur       []jose.JSONWebKey
	fetchedAt time.Time
	triedAt   time.Time
	flight    chan struct{}
}

// Set makes keys the cached set, fetched now: for keys read at start.
func (c *Cache) Set(keys []jose.JSONWebKey) {
	now := c.Clock.Now()
	c.mu.Lock()
	c.cur, c.fetchedAt, c.triedAt = keys, now, now
	c.mu.Unlock()
}

// Candidates returns the keys that may have signed a token whose header
// names key ID kid and algorithm alg: those with its kid (any, when it has
// none) whose JWK does not name another algorithm. When none fits it asks
// for a fresh copy once, for a key rotation (the cache bounds how often
// that fetches). It returns no keys and no error when still none fits,
// and EUNAVAILABLE when it has no keys at all.
func (c *Cache) Candidates(ctx context.Context, kid, alg string) ([]jose.JSONWebKey, error) {
	keys, err := c.keys(ctx, false)
	if err != nil {
		return nil, err
	}
	if cands := candidates(keys, kid, alg); len(cands) > 0 {
		return cands, nil
	}
	if keys, err = c.keys(ctx, true); err != nil {
		return nil, err
	}
	return candidates(keys, kid, alg), nil
}

// candidates picks from set. Without a kid only a set of exactly one
// usable key is unambiguous; trying every key would turn one token into
// many signature checks.
func candidates(set []jose.JSONWebKey, kid, alg string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range set {
		if k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		if kid == "" || k.KeyID == kid {
			out = append(out, k)
		}
	}
	if kid == "" && len(out) != 1 {
		return nil
	}
	return out
}

// keys returns the issuer's signing keys. refresh asks for a fresh copy
// because a token names a key the cached one lacks; the cache may answer
// from what it has when it fetched very recently. It returns EUNAVAILABLE
// when it has no keys at all.
func (c *Cache) keys(ctx context.Context, refresh bool) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	now := c.Clock.Now()
	want := c.cur == nil || refresh || now.Sub(c.fetchedAt) >= c.MaxAge
	recent := !c.triedAt.IsZero() && now.Sub(c.triedAt) < c.MinRefresh
	if !want || (recent && c.flight == nil) {
		cur := c.cur
		c.mu.Unlock()
		return c.answer(cur)
	}
	if c.flight == nil {
		c.flight = make(chan struct{})
		c.triedAt = now
		go c.run(c.flight)
	}
	ch := c.flight
	c.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of %s %s could not be fetched in time", c.Flavor.Noun, c.Name)
	}
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	return c.answer(cur)
}

func (c *Cache) answer(cur []jose.JSONWebKey) ([]jose.JSONWebKey, error) {
	if cur == nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of %s %s are not available now", c.Flavor.Noun, c.Name)
	}
	return cur, nil
}

// run fetches once, detached from any caller's context so that one
// impatient caller cannot fail the fetch for the others.
func (c *Cache) run(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), FetchTimeout)
	keys, err := c.Fetch(ctx)
	cancel()
	c.mu.Lock()
	if err == nil {
		c.cur = keys
		c.fetchedAt = c.Clock.Now()
	}
	c.flight = nil
	had := len(c.cur)
	c.mu.Unlock()
	close(done)
	if err != nil {
		c.Logger.Warn("cannot fetch the keys of "+c.Flavor.LogNoun, "issuer", c.Name, "err", err.Error(), "keeping_keys", had)
	} else {
		c.Logger.Debug("fetched the keys of "+c.Flavor.LogNoun, "issuer", c.Name, "keys", len(keys))
	}
}
