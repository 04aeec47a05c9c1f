// Package workloadtest is a fake OIDC issuer of workload tokens for tests:
// an HTTP server on 127.0.0.1 that serves OIDC discovery and a JWKS of keys
// generated for the test (Ed25519, ES256 and RSA), and signs tokens with
// them — or, for the tests of refusals, with whatever header, key and
// algorithm a test asks for.
package workloadtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key IDs of the issuer's keys.
const (
	KidEd25519 = "ed-1"
	KidES256   = "ec-1"
	KidRSA     = "rsa-1"
)

// Issuer is a running fake issuer.
type Issuer struct {
	// URL is the issuer identifier (its iss) and the base of discovery.
	URL     string
	Server  *httptest.Server
	Ed25519 ed25519.PrivateKey
	EC      *ecdsa.PrivateKey
	RSA     *rsa.PrivateKey

	// JWKSFetches counts GETs of the JWKS.
	JWKSFetches atomic.Int64

	mu   sync.Mutex
	keys map[string]any // kid → private key, as published
}

// NewIssuer starts an issuer on 127.0.0.1; it stops when the test ends.
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{Ed25519: ed, EC: ec, RSA: rk, keys: map[string]any{KidEd25519: ed, KidES256: ec, KidRSA: rk}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/jwks",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"EdDSA", "ES256", "RS256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		is.JWKSFetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(is.JWKS())
	})
	is.Server = httptest.NewServer(mux)
	is.URL = is.Server.URL
	t.Cleanup(is.Server.Close)
	return is
}

// JWKS returns the published key set (public halves).
func (is *Issuer) JWKS() []byte {
	is.mu.Lock()
	defer is.mu.Unlock()
	var set jose.JSONWebKeySet
	for kid, k := range is.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: publicOf(k), KeyID: kid, Use: "sig", Algorithm: algOf(k)})
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return b
}

// Rotate publishes a new Ed25519 key under kid (replacing all others when
// only is set) and returns it.
func (is *Issuer) Rotate(kid string, only bool) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	if only {
		is.keys = map[string]any{}
	}
	is.keys[kid] = k
	return k
}

// Key returns the private key published under kid, or nil.
func (is *Issuer) Key(kid string) any {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[kid]
}

// Claims returns a valid claim set: this issuer, sub, aud, issued now and
// expiring in ttl.
func (is *Issuer) Claims(sub, aud string, now time.Time, ttl time.Duration) map[string]any {
	return map[string]any{
		"iss": is.URL,
		"sub": sub,
		"aud": aud,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
}

// Token signs claims with the issuer's key kid, with the header alg (from
// the key) and kid.
func (is *Issuer) Token(kid string, claims map[string]any) string {
	k := is.Key(kid)
	return Sign(algOf(k), k, map[string]any{"alg": algOf(k), "kid": kid, "typ": "JWT"}, claims)
}

// Sign builds a compact JWS over exactly header and claims, signed with
// alg and key: "EdDSA", "ES256" and "RS256" with the matching private
// key, "HS256" with a []byte secret (any bytes, e.g. a public key), and
// "none" with no signature. It checks nothing, so tests can build every
// kind of bad token.
func Sign(alg string, key any, header, claims map[string]any) string {
	h, err := json.Marshal(header)
	if err != nil {
		panic(err)
	}
	p, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	input := b64(h) + "." + b64(p)
	sum := sha256.Sum256([]byte(input))
	var sig []byte
	switch alg {
	case "EdDSA":
		sig = ed25519.Sign(key.(ed25519.PrivateKey), []byte(input))
	case "ES256":
		r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), sum[:])
		if err != nil {
			panic(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	case "RS256":
		sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, sum[:])
		if err != nil {
			panic(err)
		}
	case "HS256":
		mac := hmac.New(sha256.New, key.([]byte))
		mac.Write([]byte(input))
		sig = mac.Sum(nil)
	case "none":
	default:
		panic("workloadtest: unknown alg " + alg)
	}
	return input + "." + b64(sig)
}

// PublicJWK returns the public JWK of a private key, as a JSON object.
func PublicJWK(key any, kid string) map[string]any {
	b, err := json.Marshal(jose.JSONWebKey{Key: publicOf(key), KeyID: kid, Algorithm: algOf(key)})
	if err != nil {
		panic(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	return m
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func publicOf(k any) any {
	return k.(crypto.Signer).Public()
}

func algOf(k any) string {
	switch k.(type) {
	case ed25519.PrivateKey:
		return "EdDSA"
	case *ecdsa.PrivateKey:
		return "ES256"
	case *rsa.PrivateKey:
		return "RS256"
	}
	panic("workloadtest: unknown key type")
}
