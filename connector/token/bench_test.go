package token_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/token"
)

// BenchmarkGrant measures signing one token (claims, JWS, state), beside
// BenchmarkBareEd25519Sign, the floor it cannot go below.
func BenchmarkGrant(b *testing.B) {
	c := benchConn(b)
	spec := map[string]any{"scopes": []any{"payments:refund"}, "claims": map[string]any{"tenant": "acme"}}
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			req := &connector.GrantRequest{GrantID: fmt.Sprintf("gr_bench_%p_%d", pb, i), Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService}, Spec: spec, ExpiresAt: exp}
			if _, err := c.Grant(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkBareEd25519Sign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 400) // about a token's signing input
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ed25519.Sign(priv, msg)
		}
	})
}

// BenchmarkIntrospect measures introspecting an active token: signature
// check, claims, and the store lookup (SQLite).
func BenchmarkIntrospect(b *testing.B) {
	c := benchConn(b)
	g, err := c.Grant(context.Background(), &connector.GrantRequest{GrantID: "gr_bench", Principal: lapse.Principal{ID: "svc", Kind: lapse.KindService}, ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	raw := g.Secret["token"]
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			in, err := c.Introspect(context.Background(), raw)
			if err != nil || !in.Active {
				b.Fatalf("introspect: %+v %v", in, err)
			}
		}
	})
}

func benchConn(b *testing.B) *token.Conn {
	b.Helper()
	f := newFixture(b, lapse.SystemClock{})
	return f.open(b, f.config())
}
