package jwks

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
	"net"
	"net/http"
	"net/url"
	"os"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

// NewHTTPClient returns the client discovery documents and keys are
// fetched with: bounded in time and size, no redirects (the configured or
// discovered URL is the one trusted), and with caFile as the only trusted
// CA when it is set.
func (f Flavor) NewHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		name := "the CA file"
		if f.NameCAFile {
			name += " " + caFile
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read %s: %w", name, pathCause(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", name)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: limitTransport{base: tr, truncate: f.TruncateBodies},
		Timeout:   FetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}

// limitTransport bounds every response body it returns to MaxDocumentSize,
// including those go-oidc reads during discovery.
type limitTransport struct {
	base     http.RoundTripper
	truncate bool // see Flavor.TruncateBodies
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if t.truncate {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, MaxDocumentSize+1), resp.Body}
	} else {
		resp.Body = &limitedBody{rc: resp.Body, left: MaxDocumentSize}
	}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

var errTooLarge = fmt.Errorf("response is larger than %d bytes", MaxDocumentSize)

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

// FetchKeys GETs a JWKS with client (one of NewHTTPClient's) and parses it.
func (f Flavor) FetchKeys(ctx context.Context, client *http.Client, url string) ([]jose.JSONWebKey, error) {
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
		// Only a truncated body gets here: the other fails to read.
		return nil, fmt.Errorf("jwks: the key set is larger than %d bytes", MaxDocumentSize)
	}
	return f.ParseKeySet(body)
}

// ReadKeyFile reads a JWKS (or, with SPIFFE, a trust bundle) from a file.
func (f Flavor) ReadKeyFile(path string) ([]jose.JSONWebKey, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, pathCause(err))
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxDocumentSize)
	}
	keys, err := f.ParseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// pathCause is the cause of a file error without the path and operation
// an *os.PathError adds: the messages name the file their own way.
func pathCause(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Discovery finds the JWKS URL through OIDC discovery (go-oidc checks that
// the document names exactly the configured issuer) and fetches the keys.
// Its Fetch is a Cache's Fetch: only the cache calls it, one call at a
// time, which is what makes the remembered URL safe without a lock.
type Discovery struct {
	Flavor Flavor
	// Issuer is the exact issuer, the base of
	// /.well-known/openid-configuration.
	Issuer string
	Client *http.Client

	jwksURL string // "" until discovery succeeds, and after a failed fetch
}

// Fetch discovers the JWKS URL, once until a fetch fails, and fetches the
// keys.
func (d *Discovery) Fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	if d.jwksURL == "" {
		p, err := gooidc.NewProvider(gooidc.ClientContext(ctx, d.Client), d.Issuer)
		if err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		var meta struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := p.Claims(&meta); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if msg := CheckFetchURL(meta.JWKSURI, d.Flavor.ExampleURL); msg != "" {
			return nil, fmt.Errorf("discovery: jwks_uri: %s", msg)
		}
		d.jwksURL = meta.JWKSURI
	}
	keys, err := d.Flavor.FetchKeys(ctx, d.Client, d.jwksURL)
	if err != nil {
		// Discover again next time: the issuer may have moved its keys.
		d.jwksURL = ""
	}
	return keys, err
}

// ParseKeySet reads the usable signing keys of a JWKS (RFC 7517) or, with
// SPIFFE, a SPIFFE trust bundle (a JWKS whose JWT authorities have use
// "jwt-svid"; its X.509 authorities are skipped). Unknown members are
// ignored, as are keys that cannot verify a signature Lapse accepts:
// symmetric keys, encryption keys, unsupported types and RSA keys under
// MinRSABits. Only public halves are kept. An error means the document is
// not a key set or has no usable key.
func (f Flavor) ParseKeySet(data []byte) ([]jose.JSONWebKey, error) {
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
		if meta.Use != "" && meta.Use != "sig" && !(f.SPIFFE && meta.Use == "jwt-svid") {
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

// CheckIssuerURL says what is wrong with an issuer identifier, or "".
// example is an issuer URL for the message, like https://login.example.com.
func CheckIssuerURL(s, example string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "not an issuer URL like " + example + " (no query, fragment or user)"
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && loopback(u.Hostname())) {
		// Discovery and keys fetched in clear could be replaced by anyone
		// on the path, and whoever holds the keys mints identities.
		return "an issuer must be https (http only on a loopback address, for tests)"
	}
	return ""
}

// CheckFetchURL says what is wrong with a URL keys are fetched from, or
// "". example is an issuer URL for the message, as for CheckIssuerURL.
func CheckFetchURL(s, example string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Fragment != "" || u.User != nil {
		return "not a URL like " + example + "/keys"
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && loopback(u.Hostname())) {
		// Keys fetched in clear could be replaced by anyone on the path,
		// and whoever holds the keys mints identities.
		return "keys are fetched over https only (http only on a loopback address, for tests)"
	}
	return ""
}

// loopback reports whether host is a loopback name or address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
