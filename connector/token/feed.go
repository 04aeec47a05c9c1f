package token

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lapsehq/lapse"
)

// Feed page sizes.
const (
	DefaultFeedLimit = 500
	MaxFeedLimit     = 1000
)

// FeedResponse is the wire format of one page of the revocation feed
// (GET /v1/targets/{name}/revocations?after=N). Next is the seq to ask
// after for the following page: the last entry's seq, or the request's
// after when the page is empty.
type FeedResponse struct {
	Revocations []*lapse.TokenRevocation `json:"revocations"`
	Next        int64                    `json:"next"`
}

// AckRequest is the wire format of an acknowledgement
// (POST /v1/targets/{name}/revocations/ack).
type AckRequest struct {
	Consumer string `json:"consumer"`
	Seq      int64  `json:"seq"`
}

// Feed returns the revocation feed after afterSeq, at most limit entries
// (DefaultFeedLimit if limit ≤ 0, at most MaxFeedLimit). Returns EINVALID
// for a negative afterSeq, EUNAVAILABLE if the store cannot be read.
func (c *Conn) Feed(ctx context.Context, afterSeq int64, limit int) ([]*lapse.TokenRevocation, error) {
	if afterSeq < 0 {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "after", "after must not be negative")
	}
	if limit <= 0 {
		limit = DefaultFeedLimit
	}
	limit = min(limit, MaxFeedLimit)
	revs, err := c.store.TokenRevocations(ctx, c.name, afterSeq, limit)
	if err != nil {
		return nil, unavailable("the revocation feed cannot be read now", fmt.Errorf("token: read feed of %s: %w", c.name, err))
	}
	if revs == nil {
		revs = []*lapse.TokenRevocation{}
	}
	return revs, nil
}

// FeedPage returns Feed as its wire response.
func (c *Conn) FeedPage(ctx context.Context, afterSeq int64, limit int) (*FeedResponse, error) {
	revs, err := c.Feed(ctx, afterSeq, limit)
	if err != nil {
		return nil, err
	}
	next := afterSeq
	if n := len(revs); n > 0 {
		next = revs[n-1].Seq
	}
	return &FeedResponse{Revocations: revs, Next: next}, nil
}

// Ack records that consumer applied the feed up to seq. Acknowledgements
// only move forward. When ctx carries an authenticated principal, it must
// be the consumer itself: nobody acknowledges for another API server.
// Returns EFORBIDDEN if consumer is not a configured consumer of this
// target or is not the caller, EINVALID for a negative seq or one beyond
// the end of the feed (which would pre-acknowledge future revocations),
// EUNAVAILABLE if the store cannot be written.
func (c *Conn) Ack(ctx context.Context, consumer string, seq int64) error {
	id, err := lapse.NormalizeID(consumer)
	if err != nil || !c.isConsumer(id) {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "consumer", "not a consumer of this target")
	}
	if p := lapse.FromContext(ctx); p != nil && p.ID != id {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "consumer", "a consumer acknowledges only for itself")
	}
	if seq < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq must not be negative")
	}
	if seq > 0 {
		// The feed only grows, so an entry at or past seq now is there for
		// good: seq is within the feed.
		revs, err := c.store.TokenRevocations(ctx, c.name, seq-1, 1)
		if err != nil {
			return unavailable("the revocation feed cannot be read now", fmt.Errorf("token: check ack seq: %w", err))
		}
		if len(revs) == 0 {
			return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq is beyond the end of the feed")
		}
	}
	err = c.store.Update(ctx, func(tx lapse.Tx) error {
		return tx.AckTokenRevocations(ctx, c.name, id, seq)
	})
	if err != nil {
		if code := lapse.ErrorCode(err); code != lapse.EINTERNAL {
			return err
		}
		return unavailable("the acknowledgement cannot be recorded now", fmt.Errorf("token: record ack of %s: %w", id, err))
	}
	return nil
}

func (c *Conn) isConsumer(id string) bool {
	for _, x := range c.consumers {
		if x == id {
			return true
		}
	}
	return false
}

func unavailable(msg string, err error) error {
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: msg, Err: err}
}

// feedIndex caches jti → feed seq so that Verify finds a revocation's seq
// without reading the whole feed each time. It is only a hint: Verify
// reads the entry back from the store and checks it.
type feedIndex struct {
	mu        sync.Mutex
	hints     map[string]feedHint
	pruneAt   int
	scanMu    sync.Mutex // one scan at a time
	scannedTo int64      // every entry up to here has been hinted
}

type feedHint struct {
	seq int64
	// keepUntil is when the hint stops mattering: the token's exp plus the
	// consumer leeway, after which expiry alone verifies it.
	keepUntil time.Time
}

func (f *feedIndex) put(jti string, seq int64, exp, now time.Time, leeway time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hints == nil {
		f.hints = map[string]feedHint{}
		f.pruneAt = 4096
	}
	f.hints[jti] = feedHint{seq: seq, keepUntil: exp.Add(leeway)}
	if len(f.hints) >= f.pruneAt {
		for id, h := range f.hints {
			if now.After(h.keepUntil) {
				delete(f.hints, id)
			}
		}
		f.pruneAt = max(4096, 2*len(f.hints))
	}
}

func (f *feedIndex) get(jti string) (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hints[jti]
	return h.seq, ok
}

// findRevocation returns the feed entry of jti, or nil if it is not on the
// feed. It tries the cached seq first, then reads the part of the feed not
// read before, then (for a hint pruned long ago) the whole feed.
func (c *Conn) findRevocation(ctx context.Context, jti string) (*lapse.TokenRevocation, error) {
	if seq, ok := c.feed.get(jti); ok && seq > 0 {
		revs, err := c.store.TokenRevocations(ctx, c.name, seq-1, 1)
		if err != nil {
			return nil, fmt.Errorf("token: read feed entry %d: %w", seq, err)
		}
		if len(revs) == 1 && revs[0].Seq == seq && revs[0].TokenID == jti {
			return revs[0], nil
		}
	}
	c.feed.scanMu.Lock()
	defer c.feed.scanMu.Unlock()
	start := c.feed.scannedTo
	rev, last, err := c.scanFeed(ctx, jti, start)
	if err != nil {
		return nil, err
	}
	c.feed.scannedTo = max(c.feed.scannedTo, last)
	if rev != nil || start == 0 {
		return rev, nil
	}
	rev, _, err = c.scanFeed(ctx, jti, 0)
	return rev, err
}

// scanFeed reads the feed after 'after' until it finds jti or reaches the
// end, caching every seq it reads. It returns the entry (or nil) and the
// last seq read.
func (c *Conn) scanFeed(ctx context.Context, jti string, after int64) (*lapse.TokenRevocation, int64, error) {
	now := c.clock.Now()
	for {
		revs, err := c.store.TokenRevocations(ctx, c.name, after, MaxFeedLimit)
		if err != nil {
			return nil, after, fmt.Errorf("token: read feed after %d: %w", after, err)
		}
		// The store may cap the page below the limit asked for, so only an
		// empty page marks the end.
		if len(revs) == 0 {
			return nil, after, nil
		}
		for _, r := range revs {
			if r.Seq <= after {
				return nil, after, fmt.Errorf("token: feed of %s went backwards at seq %d", c.name, r.Seq)
			}
			c.feed.put(r.TokenID, r.Seq, r.ExpiresAt, now, c.leeway)
			after = r.Seq
			if r.TokenID == jti {
				return r, after, nil
			}
		}
	}
}
