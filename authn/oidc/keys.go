package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
)

// Limits of fetching and holding keys.
const (
	// MaxDocumentSize bounds a discovery document or a JWKS.
	MaxDocumentSize = 1 << 20
	// MaxKeys bounds the keys of one issuer.
	MaxKeys = 100
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = 2048
	// fetchTimeout bounds one discovery or JWKS fetch.
	fetchTimeout = 10 * time.Second
)

// Default cache policy of an issuer's keys (Options override them).
const (
	// DefaultKeyMaxAge: keys are fetched again when older than this, so a
	// key the identity provider withdrew stops being trusted within it.
	DefaultKeyMaxAge = 10 * time.Minute
	// DefaultKeyMinRefresh: keys are not fetched more often than this,
	// however many tokens name a key the cached set lacks, so made-up key
	// IDs cannot make Lapse hammer the identity provider.
	DefaultKeyMinRefresh = 10 * time.Second
)

// keyCache holds one issuer's public keys, found by OIDC discovery. It
// fetches lazily, at most one fetch at a time (callers wait for the one in
// flight), again when the keys are older than maxAge or a token names an
// unknown key, and never more often than minRefresh. A failed refresh keeps
// the keys it had: an identity provider that is briefly down does not sign
// everybody out.
type keyCache struct {
	name       string
	issuer     string
	client     *http.Client
	clock      lapse.Clock
	log        *slog.Logger
	maxAge     time.Duration
	minRefresh time.Duration

	mu        sync.Mutex
	cur       []jose.JSONWebKey
	jwksURL   string // from discovery; "" until discovery succeeds
	fetchedAt time.Time
	triedAt   time.Time
	flight    chan struct{}
}

// keys returns the issuer's signing keys. refresh asks for a fresh copy
// because a token names a key the cached one lacks; the cache may answer
// from what it has when it fetched very recently. It returns EUNAVAILABLE
// when it has no keys at all.
func (c *keyCache) keys(ctx context.Context, refresh bool) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	now := c.clock.Now()
	want := c.cur == nil || refresh || now.Sub(c.fetchedAt) >= c.maxAge
	recent := !c.triedAt.IsZero() && now.Sub(c.triedAt) < c.minRefresh
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
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of identity provider %s could not be fetched in time", c.name)
	}
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	return c.answer(cur)
}

func (c *keyCache) answer(cur []jose.JSONWebKey) ([]jose.JSONWebKey, error) {
	if cur == nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of identity provider %s are not available now", c.name)
	}
	return cur, nil
}

// run fetches once, detached from any caller's context so that one
// impatient caller cannot fail the fetch for the others.
func (c *keyCache) run(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	keys, err := c.fetch(ctx)
	cancel()
	c.mu.Lock()
	if err == nil {
		c.cur = keys
		c.fetchedAt = c.clock.Now()
	}
	c.flight = nil
	had := len(c.cur)
	c.mu.Unlock()
	close(done)
	if err != nil {
		c.log.Warn("cannot fetch the keys of an OIDC identity provider", "issuer", c.name, "err", err.Error(), "keeping_keys", had)
	} else {
		c.log.Debug("fetched the keys of an OIDC identity provider", "issuer", c.name, "keys", len(keys))
	}
}

// fetch discovers the JWKS URL (go-oidc checks that the discovery document
// names exactly the configured issuer), once until a fetch fails, and
// fetches the keys. Only run calls it, one call at a time.
func (c *keyCache) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	jwksURL := c.jwksURL
	c.mu.Unlock()
	if jwksURL == "" {
		p, err := gooidc.NewProvider(gooidc.ClientContext(ctx, c.client), c.issuer)
		if err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		var meta struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := p.Claims(&meta); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if msg := checkFetchURL(meta.JWKSURI); msg != "" {
			return nil, fmt.Errorf("discovery: jwks_uri: %s", msg)
		}
		jwksURL = meta.JWKSURI
	}
	keys, err := fetchKeys(ctx, c.client, jwksURL)
	c.mu.Lock()
	if err != nil {
		// Discover again next time: the provider may have moved its keys.
		c.jwksURL = ""
	} else {
		c.jwksURL = jwksURL
	}
	c.mu.Unlock()
	return keys, err
}

// newHTTPClient returns the client discovery and keys are fetched with:
// bounded in time and size, no redirects (the discovered URL is the one
// trusted), and with caFile as the only trusted CA when it is set.
func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("cannot read the CA file %s: %w", caFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: limitTransport{tr},
		Timeout:   fetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}

// limitTransport bounds every response body it returns to MaxDocumentSize,
// including those go-oidc reads during discovery.
type limitTransport struct{ base http.RoundTripper }

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, MaxDocumentSize+1), resp.Body}
	return resp, nil
}

// fetchKeys GETs a JWKS.
func fetchKeys(ctx context.Context, client *http.Client, url string) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks: %s answered %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if len(body) > MaxDocumentSize {
		return nil, fmt.Errorf("jwks: the key set is larger than %d bytes", MaxDocumentSize)
	}
	return parseKeySet(body)
}

// parseKeySet reads the usable signing keys of a JWKS (RFC 7517). Keys
// that cannot verify a signature Lapse accepts are skipped: symmetric
// keys, encryption keys, unsupported types and RSA keys under MinRSABits.
// Only public halves are kept.
func parseKeySet(data []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, errors.New("not a JWKS: a JSON object with a keys list")
	}
	if len(doc.Keys) > MaxKeys {
		return nil, fmt.Errorf("the key set has %d keys, more than %d", len(doc.Keys), MaxKeys)
	}
	var out []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var meta struct {
			Use string `json:"use"`
			Kty string `json:"kty"`
		}
		if json.Unmarshal(raw, &meta) != nil || (meta.Use != "" && meta.Use != "sig") || meta.Kty == "oct" {
			continue
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			continue
		}
		pub := k.Public()
		if !pub.Valid() {
			continue
		}
		switch key := pub.Key.(type) {
		case ed25519.PublicKey, *ecdsa.PublicKey:
		case *rsa.PublicKey:
			if key.N.BitLen() < MinRSABits {
				continue
			}
		default:
			continue
		}
		pub.Certificates = nil // x5c is not a trust path here: the key set is
		out = append(out, pub)
	}
	if len(out) == 0 {
		return nil, errors.New("the key set has no usable signing key")
	}
	return out, nil
}

// candidateKeys are the keys of set that may have signed a token with
// header h: those with its kid (any, when it has none) whose JWK does not
// name another algorithm. Without a kid only a set of exactly one usable
// key is unambiguous; trying every key would turn one token into many
// signature checks.
func candidateKeys(set []jose.JSONWebKey, kid, alg string) []jose.JSONWebKey {
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

// keySet is the go-oidc KeySet of one verification: the candidate keys,
// chosen before. It records a signature that does not verify, so that
// this failure can be told from the others after go-oidc has turned it
// into text.
type keySet struct {
	keys   []jose.JSONWebKey
	failed bool
}

var _ gooidc.KeySet = (*keySet)(nil)

func (s *keySet) VerifySignature(_ context.Context, token string) ([]byte, error) {
	jws, err := jose.ParseSigned(token, signingAlgorithms(allowedAlgorithms))
	if err != nil {
		return nil, err
	}
	for i := range s.keys {
		// go-jose checks that the algorithm suits the key's type, so an
		// HMAC "signature" keyed with a public key cannot verify here
		// even if the allow-list were wrong.
		if payload, err := jws.Verify(&s.keys[i]); err == nil {
			return payload, nil
		}
	}
	s.failed = true
	return nil, errors.New("the signature does not verify with the issuer's keys")
}

func signingAlgorithms(list []string) []jose.SignatureAlgorithm {
	out := make([]jose.SignatureAlgorithm, len(list))
	for i, a := range list {
		out[i] = jose.SignatureAlgorithm(a)
	}
	return out
}
