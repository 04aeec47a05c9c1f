package token

import (
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// followerPoll is how often a consumer that follows the revocation feed
// with package follower looks at it, by default (follower.Config.Interval):
// the longest it accepts a revoked token before it applies the revocation.
const followerPoll = 2 * time.Second

// OfflineVerifiers names the path of the consumers that check a token's
// signature against the JWKS and neither introspect nor follow the feed.
const OfflineVerifiers = "offline-verifiers"

// CheckpointMap implements connector.Mapper. A token is made here and
// consumed by the API servers of the audience:
//
//   - introspection (the token checkpoint): a revocation is on the feed in
//     the store before Revoke returns, so an API server that introspects
//     every call refuses the token at once;
//   - each configured consumer follows the feed and acknowledges it: it
//     accepts a revoked token until its next poll (2s with package
//     follower's default) and Verify waits for its acknowledgement;
//   - with no consumers configured, nothing tells Lapse how the audience
//     checks tokens, and a JWT is made to be checked offline against the
//     JWKS: such a server accepts the token until exp, plus the consumer
//     leeway. Configure a path named offline-verifiers with outlives: 0
//     when every server of the audience introspects or follows the feed.
//
// A consumer that caches introspection answers, or one not listed in
// consumers, is a path only the configuration knows.
func (c *Conn) CheckpointMap(spec map[string]any) *connector.PathMap {
	created := "JWT signed by Lapse (issuer " + c.issuer + ", kid " + c.kid + "), jti = the grant ID, exp = the grant's deadline"
	m := &connector.PathMap{Paths: []lapse.CheckpointPath{{
		Name:       CheckpointToken,
		Kind:       lapse.CheckpointTarget,
		CreatedAt:  created,
		ConsumedAt: "RFC 7662 introspection of target " + c.name + " (audience " + c.audience + ")",
		Kill:       "put the jti on the revocation feed of " + c.name + " in the store",
		Verify:     "the feed has the jti, and introspection of the grant's token says inactive",
	}}}
	for _, name := range c.consumers {
		m.Paths = append(m.Paths, lapse.CheckpointPath{
			Name:       ConsumerCheckpointPrefix + name,
			Kind:       lapse.CheckpointConsumer,
			CreatedAt:  created,
			ConsumedAt: "API server " + name + " of audience " + c.audience + ", following the revocation feed",
			Kill:       "the revocation feed entry; the consumer applies it at its next poll",
			Verify:     "consumer " + name + " acknowledged the feed up to the entry, or exp + " + c.leeway.String() + " passed",
			Outlives:   lapse.Duration(followerPoll),
		})
	}
	if len(c.consumers) == 0 {
		m.Paths = append(m.Paths, lapse.CheckpointPath{
			Name:        OfflineVerifiers,
			Kind:        lapse.CheckpointConsumer,
			CreatedAt:   created,
			ConsumedAt:  "any server of audience " + c.audience + " that checks tokens against the JWKS only",
			Kill:        "none before exp: the token's own expiry ends it",
			Verify:      "exp + " + c.leeway.String() + " has passed",
			Outlives:    lapse.Duration(c.leeway),
			UntilExpiry: true,
		})
	}
	return m
}

var _ connector.Mapper = (*Conn)(nil)
