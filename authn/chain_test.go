package authn_test

import (
	"context"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
)

// recordingAuth answers as who and records what it was asked.
type recordingAuth struct {
	who  string
	seen []string
}

func (r *recordingAuth) Authenticate(_ context.Context, secret string) (*lapse.Principal, error) {
	r.seen = append(r.seen, secret)
	return &lapse.Principal{ID: r.who}, nil
}

const jwtShaped = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"

func TestChainRoutesByShape(t *testing.T) {
	keys, oidc := &recordingAuth{who: "key"}, &recordingAuth{who: "oidc"}
	c := &authn.Chain{APIKeys: keys, OIDC: oidc}
	for secret, want := range map[string]string{
		jwtShaped: "oidc",
		"lapse_abcdefghijkl_c2VjcmV0LXRva2VuLXRoYXQtbXVzdC1uZXZlci1wcmludA": "key",
		"a.b":      "key",
		"a.b.c.d":  "key",
		".b.c":     "key",
		"a.b+c.d":  "key",
		"a.b.c=":   "key",
		"x.y.":     "oidc", // no signature: the verifier refuses it as such
		"anything": "key",
	} {
		p, err := c.Authenticate(context.Background(), secret)
		if err != nil || p.ID != want {
			t.Errorf("%q went to %v (%v); want %s", secret, p, err, want)
		}
	}
}

func TestChainWithoutOIDC(t *testing.T) {
	keys := &recordingAuth{who: "key"}
	c := &authn.Chain{APIKeys: keys}
	if p, err := c.Authenticate(context.Background(), jwtShaped); err != nil || p.ID != "key" {
		t.Errorf("without OIDC a JWT goes to the API keys: %v %v", p, err)
	}
	if _, err := (&authn.Chain{}).Authenticate(context.Background(), "x"); lapse.ErrorCode(err) != lapse.EUNAUTHORIZED {
		t.Errorf("empty chain: %v", err)
	}
}
