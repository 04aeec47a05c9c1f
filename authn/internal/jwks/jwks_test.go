package jwks

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/internal/fakeclock"
)

// publicJWK returns a fresh Ed25519 public key as a JWK with kid and use.
func publicJWK(t *testing.T, kid, use string) map[string]any {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jose.JSONWebKey{Key: pub, KeyID: kid, Use: use}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keySet(t *testing.T, keys ...map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseKeySetSPIFFE: a JWT authority of a SPIFFE trust bundle is a
// signing key only for the flavor that reads trust bundles.
func TestParseKeySetSPIFFE(t *testing.T) {
	data := keySet(t, publicJWK(t, "sig", "sig"), publicJWK(t, "svid", "jwt-svid"), publicJWK(t, "enc", "enc"))
	for _, tc := range []struct {
		f    Flavor
		want []string
	}{
		{Flavor{}, []string{"sig"}},
		{Flavor{SPIFFE: true}, []string{"sig", "svid"}},
	} {
		keys, err := tc.f.ParseKeySet(data)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range keys {
			got = append(got, k.KeyID)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("SPIFFE %v: keys %q; want %q", tc.f.SPIFFE, got, tc.want)
		}
	}
}

// TestCAFileErrors: NameCAFile decides whether the path is in the error.
func TestCAFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The cause is the system's, without the path os.PathError adds.
	_, err := os.ReadFile(missing)
	cause := errors.Unwrap(err).Error()
	for _, tc := range []struct {
		f          Flavor
		file, want string
	}{
		{Flavor{}, missing, "cannot read the CA file: " + cause},
		{Flavor{NameCAFile: true}, missing, "cannot read the CA file " + missing + ": " + cause},
		{Flavor{}, empty, "the CA file holds no PEM certificate"},
		{Flavor{NameCAFile: true}, empty, "the CA file " + empty + " holds no PEM certificate"},
	} {
		_, err := tc.f.NewHTTPClient(tc.file)
		if err == nil || err.Error() != tc.want {
			t.Errorf("NameCAFile %v: %v; want %q", tc.f.NameCAFile, err, tc.want)
		}
	}
	if _, err := (Flavor{}).NewHTTPClient(""); err != nil {
		t.Errorf("no CA file: %v", err)
	}
}

// TestFetchTooLarge: a key set past MaxDocumentSize is refused by either
// way of bounding bodies, and one that ends exactly at it is read.
func TestFetchTooLarge(t *testing.T) {
	var size atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A JSON object padded with spaces to the asked size.
		w.Write([]byte(`{"keys":[]}` + strings.Repeat(" ", int(size.Load())-len(`{"keys":[]}`))))
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		f    Flavor
		want string
	}{
		{Flavor{}, "jwks: response is larger than"},
		{Flavor{TruncateBodies: true}, "jwks: the key set is larger than"},
	} {
		client, err := tc.f.NewHTTPClient("")
		if err != nil {
			t.Fatal(err)
		}
		size.Store(MaxDocumentSize + 1)
		if _, err := tc.f.FetchKeys(context.Background(), client, srv.URL); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("TruncateBodies %v, too large: %v; want %q", tc.f.TruncateBodies, err, tc.want)
		}
		size.Store(MaxDocumentSize)
		if _, err := tc.f.FetchKeys(context.Background(), client, srv.URL); err == nil || !strings.Contains(err.Error(), "no usable signing key") {
			t.Errorf("TruncateBodies %v, at the limit: %v; want the set read (and found empty)", tc.f.TruncateBodies, err)
		}
	}
}

// TestCacheRefresh: an unknown kid fetches again, at most once per
// MinRefresh; a failed fetch keeps the keys; with no keys at all the
// answer is EUNAVAILABLE, naming the issuer as the flavor does.
func TestCacheRefresh(t *testing.T) {
	clock := fakeclock.New(time.Now())
	var fetches atomic.Int32
	var fail atomic.Bool
	kids := []string{"a"}
	c := &Cache{
		Name:   "corp",
		Flavor: Flavor{Noun: "identity provider", LogNoun: "a test issuer"},
		Fetch: func(context.Context) ([]jose.JSONWebKey, error) {
			fetches.Add(1)
			if fail.Load() {
				return nil, errors.New("down")
			}
			var keys []map[string]any
			for _, k := range kids {
				keys = append(keys, publicJWK(t, k, "sig"))
			}
			return (Flavor{}).ParseKeySet(keySet(t, keys...))
		},
		Options: Options{Clock: clock}.WithDefaults(),
	}
	ctx := context.Background()
	if got, err := c.Candidates(ctx, "a", "EdDSA"); err != nil || len(got) != 1 {
		t.Fatalf("kid a: %v %v", got, err)
	}
	for range 5 {
		if got, err := c.Candidates(ctx, "b", "EdDSA"); err != nil || len(got) != 0 {
			t.Fatalf("unknown kid b: %v %v; want none", got, err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches within MinRefresh; want 1", n)
	}
	kids = []string{"a", "b"}
	clock.Advance(DefaultMinRefresh)
	if got, err := c.Candidates(ctx, "b", "EdDSA"); err != nil || len(got) != 1 {
		t.Fatalf("rotated kid b: %v %v", got, err)
	}
	fail.Store(true)
	clock.Advance(DefaultMaxAge)
	if got, err := c.Candidates(ctx, "a", "EdDSA"); err != nil || len(got) != 1 {
		t.Errorf("after a failed refresh: %v %v; want the keys it had", got, err)
	}

	empty := &Cache{Name: "corp", Flavor: c.Flavor, Options: c.Options, Fetch: func(context.Context) ([]jose.JSONWebKey, error) {
		return nil, errors.New("down")
	}}
	_, err := empty.Candidates(ctx, "a", "EdDSA")
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE || lapse.ErrorMessage(err) != "the keys of identity provider corp are not available now" {
		t.Errorf("no keys: %v", err)
	}
}
