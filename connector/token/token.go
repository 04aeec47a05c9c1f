// Package token is the built-in token target: a grant is a short-lived JWT,
// signed with Ed25519, for one configured audience (an API that accepts
// Lapse tokens). Revocation puts the token's ID on the target's revocation
// feed in the store; RFC 7662 introspection consults that feed, and API
// servers that cache tokens follow it (package follower) and acknowledge
// what they applied. A revocation is verified when introspection says the
// token is inactive and every configured consumer has acknowledged it — or
// when the token has expired, which the consumers enforce themselves.
//
// Configuration (a target of kind token):
//
//	issuer: https://lapse.example.com      # the iss claim
//	audience: payments-api                 # the aud claim, exactly one
//	signing_key_file: keys/token.pem      # PEM PKCS#8 Ed25519
//	# or, instead of signing_key_file (dev mode): generate a key in the
//	# data directory on first start and keep it.
//	# generate_key: true
//	consumers: [payments-api-eu1]          # API servers that must acknowledge
//	consumer_leeway: 1m                    # clock skew allowed to consumers
//
// An entitlement's spec adds scopes and claims:
//
//	spec:
//	  scopes: [payments:refund]
//	  claims: {tenant: acme, tier: 2}
//
// A token carries iss, sub (the principal ID), aud, jti (the grant ID), iat,
// nbf, exp (the grant's deadline, truncated down to the second), lapse_kind
// (the principal's kind), ent (the entitlement), scope (space-separated, if
// any) and the spec's claims, which can never override the others.
//
// An entitlement with max_uses adds lapse_max_uses: N. Each introspection
// of the token through IntrospectUse (the API's RFC 7662 endpoint) that
// would answer active counts one use in the store; the use after the Nth
// answers inactive and puts the token on the revocation feed, and the
// caller ends the grant. Consumers that verify tokens offline with the
// JWKS alone do not count uses and cannot enforce the limit.
//
// A delegated grant — an AI agent acting for its human sponsor, whose
// principal carries the chain in Act — is expressed as RFC 8693 §4.1 says:
// sub is the sponsor (on whose behalf the token is used) and the act
// claim names the current actor, {"sub": "<agent>"}, with any earlier
// actors nested inside it. lapse_kind stays the grantee's kind (agent), so
// an API can tell a delegated token from the sponsor's own even without
// reading act. jti and exp follow the grant exactly as for any token.
package token

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// CheckpointToken is the name of the target checkpoint: the token is
// inactive for introspection.
const CheckpointToken = "token"

// ConsumerCheckpointPrefix starts the name of each consumer's checkpoint.
const ConsumerCheckpointPrefix = "consumer:"

// DefaultConsumerLeeway is how long after exp a token still counts as
// possibly accepted by a consumer whose clock is behind.
const DefaultConsumerLeeway = time.Minute

// Config is the token target's configuration block.
type Config struct {
	// Issuer is the iss claim: the URL of this Lapse server.
	Issuer string `yaml:"issuer" json:"issuer"`
	// Audience is the aud claim: the one API that accepts the tokens.
	Audience string `yaml:"audience" json:"audience"`
	// SigningKeyFile is a PEM PKCS#8 Ed25519 private key.
	SigningKeyFile string `yaml:"signing_key_file" json:"signing_key_file"`
	// GenerateKey, when SigningKeyFile is not set, generates a key into the
	// data directory on first start and keeps it (the dev mode).
	GenerateKey bool `yaml:"generate_key" json:"generate_key"`
	// Consumers are the principal IDs of API servers that follow the
	// revocation feed; each must acknowledge a revocation before it counts
	// as verified.
	Consumers []string `yaml:"consumers" json:"consumers"`
	// ConsumerLeeway is the clock skew allowed to consumers when an expired
	// token is counted as gone without their acknowledgement (default 1m).
	ConsumerLeeway *lapse.Duration `yaml:"consumer_leeway" json:"consumer_leeway"`
}

// Validate checks the configuration and normalises consumer IDs. Returns
// EINVALID naming the field.
func (c *Config) Validate() error {
	u, err := url.Parse(c.Issuer)
	if c.Issuer == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return lapse.FieldErrorf(lapse.EINVALID, "issuer", "issuer must be an absolute http(s) URL without query or fragment")
	}
	if c.Audience == "" || !validText(c.Audience, 256) {
		return lapse.FieldErrorf(lapse.EINVALID, "audience", "audience must be 1 to 256 printable characters")
	}
	switch {
	case c.SigningKeyFile != "" && c.GenerateKey:
		return lapse.FieldErrorf(lapse.EINVALID, "generate_key", "set signing_key_file or generate_key, not both")
	case c.SigningKeyFile == "" && !c.GenerateKey:
		return lapse.FieldErrorf(lapse.EINVALID, "signing_key_file", "signing_key_file is required (or generate_key: true)")
	}
	seen := map[string]bool{}
	for i, name := range c.Consumers {
		id, err := lapse.NormalizeID(name)
		if err != nil {
			return lapse.FieldErrorf(lapse.EINVALID, fmt.Sprintf("consumers[%d]", i), "consumer must be a principal ID")
		}
		if seen[id] {
			return lapse.FieldErrorf(lapse.EINVALID, fmt.Sprintf("consumers[%d]", i), "consumer %q is listed twice", id)
		}
		seen[id] = true
		c.Consumers[i] = id
	}
	if c.ConsumerLeeway != nil && (c.ConsumerLeeway.D() < 0 || c.ConsumerLeeway.D() > time.Hour) {
		return lapse.FieldErrorf(lapse.EINVALID, "consumer_leeway", "consumer_leeway must be between 0 and 1h")
	}
	return nil
}

// Open is the connector.Factory of the token target.
func Open(env connector.Env, decode func(v any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(env, cfg)
}

// Conn is a token target. All methods are safe for concurrent use.
type Conn struct {
	name      string
	issuer    string
	audience  string
	consumers []string
	leeway    time.Duration

	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	kid    string
	signer jose.Signer

	store lapse.Store
	clock lapse.Clock
	log   *slog.Logger

	mu     sync.Mutex
	issued map[string]issuedToken // tokens this process signed, until exp
	feed   feedIndex
}

// issuedToken is what Discover reports about a token this process signed.
type issuedToken struct {
	Subject     string
	Entitlement string
	Scopes      []string
	Expiry      time.Time
}

// state is the connector State kept by the store. It holds no secret: the
// token itself is returned only in Secret and Probe.
type state struct {
	JTI      string   `json:"jti"`
	KeyID    string   `json:"kid"`
	Subject  string   `json:"sub"`
	Audience string   `json:"aud"`
	Expiry   int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
	Scopes   []string `json:"scopes,omitempty"`
}

// New opens a token target with cfg. It returns EINVALID for a bad
// configuration.
func New(env connector.Env, cfg Config) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if env.Name == "" {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "name", "the token target needs a name")
	}
	if env.Store == nil {
		return nil, lapse.Errorf(lapse.EINVALID, "the token target %s needs the store for its revocation feed", env.Name)
	}
	c := &Conn{
		name:      env.Name,
		issuer:    cfg.Issuer,
		audience:  cfg.Audience,
		consumers: cfg.Consumers,
		leeway:    DefaultConsumerLeeway,
		store:     env.Store,
		clock:     env.Clock,
		log:       env.Logger,
		issued:    map[string]issuedToken{},
	}
	if cfg.ConsumerLeeway != nil {
		c.leeway = cfg.ConsumerLeeway.D()
	}
	if c.clock == nil {
		c.clock = lapse.SystemClock{}
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// env.Logger already names the target (lapse server adds it for every
	// connector); adding it here would print it twice.
	var err error
	if cfg.SigningKeyFile != "" {
		c.key, err = loadKey(cfg.SigningKeyFile, c.log)
	} else {
		if env.DataDir == "" {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "generate_key", "generate_key needs a data directory")
		}
		c.key, err = loadOrGenerateKey(filepath.Join(env.DataDir, keyFileName(env.Name)), c.log)
	}
	if err != nil {
		return nil, err
	}
	c.pub = c.key.Public().(ed25519.PublicKey)
	if c.kid, err = keyID(c.pub); err != nil {
		return nil, err
	}
	c.signer, err = jose.NewSigner(
		jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: c.key, KeyID: c.kid}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return nil, fmt.Errorf("token: create signer: %w", err)
	}
	return c, nil
}

// keyFileName is the generated key's file name in the data directory: the
// target name with anything unsafe for a file name replaced.
func keyFileName(target string) string {
	b := []byte(target)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
			b[i] = '_'
		}
	}
	return "token-" + string(b) + "-signing-key.pem"
}

// Issuer returns the configured issuer (the iss claim).
func (c *Conn) Issuer() string { return c.issuer }

// Audience returns the configured audience (the aud claim).
func (c *Conn) Audience() string { return c.audience }

// Name returns the target's name.
func (c *Conn) Name() string { return c.name }

// KeyID returns the kid of the signing key.
func (c *Conn) KeyID() string { return c.kid }

// JWKS returns the public key set consumers verify tokens with. It never
// holds private key material.
func (c *Conn) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key:       c.pub,
		KeyID:     c.kid,
		Algorithm: string(jose.EdDSA),
		Use:       "sig",
	}}}
}

// ValidateSpec checks an entitlement spec: optional scopes (a list of scope
// names) and claims (extra claims that cannot override the ones Lapse sets).
func (c *Conn) ValidateSpec(spec map[string]any) error {
	_, err := parseSpec(spec)
	return err
}

// Actor is an RFC 8693 act claim: the current actor, and inside it the
// actor before it, if any.
type Actor struct {
	Sub string `json:"sub"`
	Act *Actor `json:"act,omitempty"`
}

// delegation returns a token's sub and act claims for p. A principal that
// acts for itself is the sub, with no act. One acting for others (Act,
// nearest first) is the current actor: sub is the last of the chain, the
// party on whose behalf everyone acts, and act nests the actors from p
// inwards.
func delegation(p lapse.Principal) (string, *Actor) {
	if len(p.Act) == 0 {
		return p.ID, nil
	}
	act := &Actor{Sub: p.ID}
	cur := act
	for _, id := range p.Act[:len(p.Act)-1] {
		cur.Act = &Actor{Sub: id}
		cur = cur.Act
	}
	return p.Act[len(p.Act)-1], act
}

// validTokenID keeps jti values short and printable.
func validTokenID(id string) error {
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

// Grant signs a token for req.Principal. The jti is the grant ID, so a
// repeated Grant signs another token for the same privilege, and one
// revocation of that jti ends both. Returns EINVALID for a bad spec or
// principal, or a deadline less than a second away.
func (c *Conn) Grant(ctx context.Context, req *connector.GrantRequest) (*connector.GrantResponse, error) {
	if err := validTokenID(req.GrantID); err != nil {
		return nil, err
	}
	sp, err := parseSpec(req.Spec)
	if err != nil {
		return nil, err
	}
	if req.Principal.ID == "" || !req.Principal.Kind.Valid() {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "principal", "the principal needs an ID and a kind")
	}
	now := c.clock.Now()
	iat := now.Unix()
	// exp never exceeds the grant's deadline: truncate down to the second.
	exp := req.ExpiresAt.Unix()
	if exp <= iat {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "expires_at", "the grant's deadline has passed or is less than a second away")
	}
	claims := make(map[string]any, len(sp.Claims)+10)
	for k, v := range sp.Claims {
		claims[k] = v
	}
	claims["iss"] = c.issuer
	sub, act := delegation(req.Principal)
	claims["sub"] = sub
	if act != nil {
		claims["act"] = act
	}
	claims["aud"] = c.audience // a string: exactly one audience
	claims["jti"] = req.GrantID
	claims["iat"] = iat
	claims["nbf"] = iat
	claims["exp"] = exp
	claims["lapse_kind"] = string(req.Principal.Kind)
	claims["ent"] = req.Entitlement
	if s := sp.scope(); s != "" {
		claims["scope"] = s
	}
	if req.MaxUses < 0 {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "max_uses", "max_uses must not be negative")
	}
	if req.MaxUses > 0 {
		claims[ClaimMaxUses] = req.MaxUses
	}
	raw, err := jwt.Signed(c.signer).Claims(claims).Serialize()
	if err != nil {
		return nil, fmt.Errorf("token: sign token for grant %s: %w", req.GrantID, err)
	}
	st, err := json.Marshal(state{
		JTI: req.GrantID, KeyID: c.kid, Subject: req.Principal.ID, Audience: c.audience,
		Expiry: exp, IssuedAt: iat, Scopes: sp.Scopes,
	})
	if err != nil {
		return nil, fmt.Errorf("token: encode state: %w", err)
	}
	expiry := time.Unix(exp, 0).UTC()
	c.remember(req.GrantID, issuedToken{Subject: req.Principal.ID, Entitlement: req.Entitlement, Scopes: sp.Scopes, Expiry: expiry}, now)
	info := map[string]string{
		"issuer":     c.issuer,
		"audience":   c.audience,
		"token_type": "Bearer",
		"jti":        req.GrantID,
		"expires_at": expiry.Format(time.RFC3339),
		"kid":        c.kid,
	}
	if s := sp.scope(); s != "" {
		info["scope"] = s
	}
	if req.MaxUses > 0 {
		info["max_uses"] = fmt.Sprint(req.MaxUses)
	}
	cps := []connector.CheckpointSpec{{Name: CheckpointToken, Kind: lapse.CheckpointTarget}}
	for _, name := range c.consumers {
		cps = append(cps, connector.CheckpointSpec{Name: ConsumerCheckpointPrefix + name, Kind: lapse.CheckpointConsumer})
	}
	return &connector.GrantResponse{
		Secret:      map[string]string{"token": raw},
		Info:        info,
		State:       st,
		Checkpoints: cps,
		// Verify introspects the token itself: the real check a consumer
		// would make.
		Probe: map[string]string{"token": raw},
	}, nil
}

// remember records a token this process signed, for Discover, and drops
// records of expired tokens now and then.
func (c *Conn) remember(jti string, t issuedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.issued[jti] = t
	if len(c.issued)%1024 == 0 {
		for id, x := range c.issued {
			if !now.Before(x.Expiry) {
				delete(c.issued, id)
			}
		}
	}
}

// parseState decodes State if it belongs to grantID; otherwise nil.
func parseState(raw json.RawMessage, grantID string) *state {
	if len(raw) == 0 {
		return nil
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil || st.JTI != grantID || st.Expiry == 0 {
		return nil
	}
	return &st
}

// Revoke puts the token on the revocation feed. Revoking again returns the
// same feed entry. Without State (the broker crashed before Grant returned)
// the token's expiry is unknown, so the entry is kept for the longest a
// grant can last.
func (c *Conn) Revoke(ctx context.Context, req *connector.RevokeRequest) (*connector.RevokeResponse, error) {
	if err := validTokenID(req.GrantID); err != nil {
		return nil, err
	}
	now := c.clock.Now()
	var exp time.Time
	if st := parseState(req.State, req.GrantID); st != nil {
		exp = time.Unix(st.Expiry, 0).UTC()
	} else {
		c.mu.Lock()
		t, ok := c.issued[req.GrantID]
		c.mu.Unlock()
		if ok {
			exp = t.Expiry
		} else {
			exp = now.Add(lapse.MaxAnyDuration).Truncate(time.Second)
		}
	}
	rev := &lapse.TokenRevocation{Target: c.name, TokenID: req.GrantID, GrantID: req.GrantID, ExpiresAt: exp, RevokedAt: now}
	var seq int64
	err := c.store.Update(ctx, func(tx lapse.Tx) error {
		var err error
		seq, err = tx.AddTokenRevocation(ctx, rev)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("token: put %s on the revocation feed: %w", req.GrantID, err)
	}
	rev.Seq = seq
	c.mu.Lock()
	delete(c.issued, req.GrantID)
	c.mu.Unlock()
	// The entry the store returned may be an earlier one (a repeated
	// Revoke); Verify reads it back from the store, so only the seq is
	// cached here.
	c.feed.put(req.GrantID, seq, exp, now, c.leeway)
	return &connector.RevokeResponse{Actions: []string{
		fmt.Sprintf("put token %s on the revocation feed of %s at seq %d", req.GrantID, c.name, seq),
	}}, nil
}

// Verify checks, read-only, that the token is inactive for introspection
// (the store has its revocation, or it expired) and that every consumer
// acknowledged the revocation (or the token expired, leeway included).
func (c *Conn) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	if err := validTokenID(req.GrantID); err != nil {
		return nil, err
	}
	jti := req.GrantID
	now := c.clock.Now()
	var exp time.Time
	if st := parseState(req.State, req.GrantID); st != nil {
		exp = time.Unix(st.Expiry, 0).UTC()
	}
	revoked, err := c.store.TokenRevoked(ctx, c.name, jti)
	if err != nil {
		return nil, fmt.Errorf("token: check revocation of %s: %w", jti, err)
	}
	var rev *lapse.TokenRevocation
	if revoked {
		if rev, err = c.findRevocation(ctx, jti); err != nil {
			return nil, err
		}
		if exp.IsZero() && rev != nil {
			exp = rev.ExpiresAt
		}
	}
	expired := !exp.IsZero() && !now.Before(exp)

	tok := connector.CheckpointResult{
		Name: CheckpointToken,
		Kind: lapse.CheckpointTarget,
		Gone: revoked || expired,
		Evidence: map[string]any{
			"jti":     jti,
			"checked": "revocation feed lookup in the store (what introspection consults) and exp",
			"revoked": revoked,
			"now":     now.Format(time.RFC3339Nano),
		},
	}
	if !exp.IsZero() {
		tok.Evidence["exp"] = exp.Format(time.RFC3339)
		tok.Evidence["expired"] = expired
	}
	if rev != nil {
		tok.Evidence["seq"] = rev.Seq
		tok.Evidence["revoked_at"] = rev.RevokedAt.Format(time.RFC3339Nano)
	}
	if !tok.Gone {
		tok.Residue = append(tok.Residue, "token "+jti+" is not on the revocation feed and has not expired")
	}
	if raw := req.Probe["token"]; raw != "" {
		in, err := c.Introspect(ctx, raw)
		if err != nil {
			return nil, err
		}
		if in.Active {
			tok.Gone = false
			tok.Evidence["introspection"] = "active"
			if len(tok.Residue) == 0 {
				tok.Residue = append(tok.Residue, "introspection says token "+jti+" is active")
			}
		} else {
			tok.Evidence["introspection"] = "inactive"
		}
	}
	out := &connector.VerifyResponse{Checkpoints: []connector.CheckpointResult{tok}}
	if len(c.consumers) == 0 {
		return out, nil
	}
	acks, err := c.store.ConsumerAcks(ctx, c.name)
	if err != nil {
		return nil, fmt.Errorf("token: read consumer acknowledgements: %w", err)
	}
	// A consumer may accept a token a little after exp if its clock lags.
	consumerExpired := !exp.IsZero() && !now.Before(exp.Add(c.leeway))
	for _, name := range c.consumers {
		acked := acks[name]
		r := connector.CheckpointResult{
			Name: ConsumerCheckpointPrefix + name,
			Kind: lapse.CheckpointConsumer,
			Evidence: map[string]any{
				"consumer":  name,
				"acked_seq": acked,
				"checked":   "consumer acknowledgements of the revocation feed in the store",
			},
		}
		switch {
		case rev != nil && acked >= rev.Seq:
			r.Gone = true
			r.Evidence["revocation_seq"] = rev.Seq
		case consumerExpired:
			r.Gone = true
			r.Evidence["expired"] = true
			r.Evidence["exp"] = exp.Format(time.RFC3339)
			r.Evidence["leeway"] = c.leeway.String()
		case rev != nil:
			r.Evidence["revocation_seq"] = rev.Seq
			r.Residue = []string{fmt.Sprintf("consumer %s acknowledged the feed up to seq %d; the revocation is at seq %d", name, acked, rev.Seq)}
		default:
			r.Residue = []string{fmt.Sprintf("token %s is not revoked; consumer %s may accept it", jti, name)}
		}
		out.Checkpoints = append(out.Checkpoints, r)
	}
	return out, nil
}

// Discover lists the tokens that are neither revoked nor expired: those
// this process signed, and those of the target's live grants in the store
// (signed by another replica or before a restart; at most the newest
// lapse.MaxListLimit, as the store's grant listing has no cursor). Each is
// ephemeral, named by its jti, which is its grant ID.
func (c *Conn) Discover(ctx context.Context, req *connector.DiscoverRequest) (*connector.DiscoverResponse, error) {
	now := c.clock.Now()
	found := map[string]issuedToken{}
	c.mu.Lock()
	for id, t := range c.issued {
		found[id] = t
	}
	c.mu.Unlock()
	grants, err := c.store.ListGrants(ctx, lapse.GrantFilter{Target: c.name, Live: true, Limit: lapse.MaxListLimit})
	if err != nil {
		return nil, fmt.Errorf("token: list live grants: %w", err)
	}
	if len(grants) >= lapse.MaxListLimit {
		// GrantFilter has no cursor, so older live grants cannot be listed;
		// say so rather than let drift detection trust a partial answer.
		c.log.Warn("token discover lists only the newest live grants of the store", "limit", lapse.MaxListLimit)
	}
	for _, g := range grants {
		st := parseState(g.ConnectorState, g.ID)
		if st == nil {
			continue // no token was signed, or none the broker knows of
		}
		if _, ok := found[g.ID]; !ok {
			found[g.ID] = issuedToken{Subject: st.Subject, Entitlement: g.Entitlement, Scopes: st.Scopes, Expiry: time.Unix(st.Expiry, 0)}
		}
	}
	resp := &connector.DiscoverResponse{}
	for id, t := range found {
		if !now.Before(t.Expiry) {
			continue
		}
		revoked, err := c.store.TokenRevoked(ctx, c.name, id)
		if err != nil {
			return nil, fmt.Errorf("token: check revocation of %s: %w", id, err)
		}
		if revoked {
			continue
		}
		privs := []string{"aud:" + c.audience}
		if t.Entitlement != "" {
			privs = append(privs, "ent:"+t.Entitlement)
		}
		for _, s := range t.Scopes {
			privs = append(privs, "scope:"+s)
		}
		resp.Principals = append(resp.Principals, connector.DiscoveredPrincipal{
			Name: id, Ephemeral: true, GrantID: id, Privileges: privs,
		})
	}
	sort.Slice(resp.Principals, func(i, j int) bool { return resp.Principals[i].Name < resp.Principals[j].Name })
	return resp, nil
}

// CountsUses implements connector.UseLimiter: IntrospectUse counts the
// uses of tokens whose entitlement sets max_uses.
func (c *Conn) CountsUses() bool { return true }

// Interface guards.
var (
	_ connector.Connector     = (*Conn)(nil)
	_ connector.SpecValidator = (*Conn)(nil)
	_ connector.UseLimiter    = (*Conn)(nil)
	_ connector.Factory       = Open
)
