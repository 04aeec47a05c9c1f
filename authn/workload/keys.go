package workload

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

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
)

// Limits of fetching and holding keys.
const (
	// MaxKeySetSize bounds a JWKS document, a trust bundle or a discovery
	// document, fetched or read.
	MaxKeySetSize = 1 << 20
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
	// key the issuer withdrew stops being trusted within it.
	DefaultKeyMaxAge = 10 * time.Minute
	// DefaultKeyMinRefresh: keys are not fetched more often than this,
	// however many tokens name a key the cached set lacks, so garbage kids
	// cannot make Lapse hammer an issuer.
	DefaultKeyMinRefresh = 10 * time.Second
)

// keySource keeps one issuer's public keys.
type keySource interface {
	// keys returns the issuer's signing keys. refresh asks for a fresh copy
	// because a token names a key the cached one lacks; the source may
	// answer from its cache when it fetched very recently. It returns
	// EUNAVAILABLE when it has no keys at all.
	keys(ctx context.Context, refresh bool) ([]jose.JSONWebKey, error)
}

// cachedKeys is a keySource over a fetch function: it caches, refreshes
// when the keys are older than maxAge or on request, never more often than
// minRefresh, and one fetch at a time (callers wait for the one in flight).
// A failed refresh keeps the keys it had: an issuer that is briefly down
// does not stop tokens it signed earlier with known keys.
type cachedKeys struct {
	name       string
	fetch      func(ctx context.Context) ([]jose.JSONWebKey, error)
	clock      lapse.Clock
	log        *slog.Logger
	maxAge     time.Duration
	minRefresh time.Duration

	mu        sync.Mutex
	cur       []jose.JSONWebKey
	fetchedAt time.Time
	triedAt   time.Time
	flight    chan struct{}
}

var _ keySource = (*cachedKeys)(nil)

func (c *cachedKeys) keys(ctx context.Context, refresh bool) ([]jose.JSONWebKey, error) {
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
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of issuer %s could not be fetched in time", c.name)
	}
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	return c.answer(cur)
}

func (c *cachedKeys) answer(cur []jose.JSONWebKey) ([]jose.JSONWebKey, error) {
	if cur == nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the keys of issuer %s are not available now", c.name)
	}
	return cur, nil
}

// run fetches once, detached from any caller's context so that one
// impatient caller cannot fail the fetch for the others.
func (c *cachedKeys) run(done chan struct{}) {
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
		c.log.Warn("cannot fetch the keys of a workload issuer", "issuer", c.name, "err", err.Error(), "keeping_keys", had)
	} else {
		c.log.Debug("fetched the keys of a workload issuer", "issuer", c.name, "keys", len(keys))
	}
}

// newKeySource builds the key source an issuer's configuration names.
func newKeySource(c *IssuerConfig, opts *Options) (keySource, error) {
	ck := &cachedKeys{name: c.Name, clock: opts.Clock, log: opts.Logger, maxAge: opts.KeyMaxAge, minRefresh: opts.KeyMinRefresh}
	switch {
	case c.JWKSFile != "":
		path := c.JWKSFile
		ck.fetch = func(context.Context) ([]jose.JSONWebKey, error) { return readKeyFile(path) }
		// The file is read now, so a missing or broken file stops the
		// server at start instead of failing the first token.
		keys, err := readKeyFile(path)
		if err != nil {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "jwks_file", "%v", err)
		}
		ck.cur, ck.fetchedAt, ck.triedAt = keys, opts.Clock.Now(), opts.Clock.Now()
		// A local file costs nothing to re-read; a rotated file is seen
		// within a minute, or at the first token that names a new key.
		ck.maxAge = min(ck.maxAge, time.Minute)
		return ck, nil
	}
	client, err := newHTTPClient(c.CAFile)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "ca_file", "%v", err)
	}
	if opts.HTTPClient != nil {
		client = opts.HTTPClient
	}
	if c.JWKSURL != "" {
		u := c.JWKSURL
		ck.fetch = func(ctx context.Context) ([]jose.JSONWebKey, error) { return fetchKeys(ctx, client, u) }
		return ck, nil
	}
	// Discovery is lazy: a server whose issuer is unreachable at start
	// still starts (and revokes); tokens of that issuer are refused as
	// unavailable until discovery succeeds.
	d := &discovery{issuer: c.Issuer, client: client}
	ck.fetch = d.fetch
	return ck, nil
}

// discovery finds the JWKS URL through OIDC discovery (go-oidc checks that
// the document names exactly the configured issuer) and fetches the keys.
// It is only called from cachedKeys.run, one call at a time.
type discovery struct {
	issuer  string
	client  *http.Client
	jwksURL string
}

func (d *discovery) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	if d.jwksURL == "" {
		p, err := oidc.NewProvider(oidc.ClientContext(ctx, d.client), d.issuer)
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
		d.jwksURL = meta.JWKSURI
	}
	keys, err := fetchKeys(ctx, d.client, d.jwksURL)
	if err != nil {
		// Discover again next time: the issuer may have moved its keys.
		d.jwksURL = ""
	}
	return keys, err
}

// newHTTPClient returns the client keys are fetched with: bounded in time
// and size, no redirects (the configured or discovered URL is the one
// trusted), and with caFile as the only trusted CA when it is set.
func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read the CA file: %w", errors.Unwrap(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("the CA file holds no PEM certificate")
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

// limitTransport bounds every response body it returns to MaxKeySetSize,
// including those go-oidc reads during discovery.
type limitTransport struct{ base http.RoundTripper }

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: MaxKeySetSize}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

var errTooLarge = fmt.Errorf("response is larger than %d bytes", MaxKeySetSize)

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte past the limit tells a large body from one that ends
		// exactly at it.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

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
	return parseKeySet(body)
}

// readKeyFile reads a JWKS or SPIFFE trust bundle from a file.
func readKeyFile(path string) ([]jose.JSONWebKey, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxKeySetSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	if len(data) > MaxKeySetSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxKeySetSize)
	}
	keys, err := parseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// parseKeySet reads the usable signing keys of a JWKS (RFC 7517) or a
// SPIFFE trust bundle (a JWKS whose JWT authorities have use "jwt-svid";
// its X.509 authorities are skipped). Unknown members are ignored, as are
// keys that cannot verify a signature Lapse accepts: symmetric keys,
// encryption keys, unsupported types and RSA keys under MinRSABits. Only
// public halves are kept. An error means the document is not a key set or
// has no usable key.
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
		if json.Unmarshal(raw, &meta) != nil {
			continue
		}
		if meta.Use != "" && meta.Use != "sig" && meta.Use != "jwt-svid" {
			continue
		}
		if meta.Kty == "oct" {
			continue // a shared secret is never a verification key here
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
		// Certificates in x5c are not a trust path here: the key set is.
		pub.Certificates = nil
		out = append(out, pub)
	}
	if len(out) == 0 {
		return nil, errors.New("the key set has no usable signing key")
	}
	return out, nil
}
