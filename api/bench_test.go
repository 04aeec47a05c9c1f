package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// issuingService answers CreateRequest the way an auto-approved token
// entitlement does: one Ed25519 signature per request, credentials in the
// result. It isolates the cost of the HTTP layer around issuance.
func issuingService(b *testing.B, e *env) {
	b.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	e.svc.onCreate = func(ctx context.Context, in lapse.RequestInput) (*lapse.RequestResult, error) {
		p := lapse.FromContext(ctx)
		now := time.Now().UTC()
		gid := lapse.NewID(lapse.PrefixGrant, now)
		payload := `{"sub":"` + p.ID + `","jti":"` + gid + `","aud":"api","ent":"` + in.Entitlement + `"}`
		sig := ed25519.Sign(priv, []byte(payload))
		tok := base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(sig)
		req := &lapse.Request{ID: lapse.NewID(lapse.PrefixRequest, now), Requester: *p, Entitlement: in.Entitlement,
			Duration: in.Duration, State: lapse.RequestApproved, GrantID: gid, CreatedAt: now, ExpiresAt: now, Version: 1}
		g := &lapse.Grant{ID: gid, RequestID: req.ID, Principal: *p, Entitlement: in.Entitlement, Target: "api",
			State: lapse.GrantActive, StartsAt: now, ExpiresAt: now.Add(in.Duration.D()), CreatedAt: now, Version: 1}
		return &lapse.RequestResult{Request: req, Grant: g, Credentials: &lapse.Credentials{
			GrantID: gid, Target: "api", ExpiresAt: g.ExpiresAt, Secret: map[string]string{"token": tok},
		}}, nil
	}
}

// BenchmarkIssueTokenThroughAPI measures request → credentials for an
// auto-approved entitlement through the whole HTTP layer (real API key
// authentication, strict decoding, encoding, logging to JSON) with 16
// concurrent clients, and reports the p50 and p99 latency.
func BenchmarkIssueTokenThroughAPI(b *testing.B) {
	e := newEnv(b)
	issuingService(b, e)
	c := e.client("alice")
	c.HTTPClient.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	in := lapse.RequestInput{Entitlement: "payments-api/refund", Duration: lapse.Duration(5 * time.Minute), Reason: "bench"}

	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			res, err := c.CreateRequest(context.Background(), in)
			mine = append(mine, time.Since(start))
			if err != nil {
				b.Error(err)
				return
			}
			if res.Credentials == nil || !strings.Contains(res.Credentials.Secret["token"], ".") {
				b.Errorf("no token in %+v", res)
				return
			}
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkEd25519Sign is the bare cost of the signature inside each
// issuance, measured in the same run for comparison.
func BenchmarkEd25519Sign(b *testing.B) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	msg := []byte(`{"sub":"alice","jti":"gr_01hzzzzzzzzzzzzzzzzzzzzzzz","aud":"api","ent":"payments-api/refund"}`)
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = ed25519.Sign(priv, msg)
		}
	})
}

// BenchmarkRejectOversizedBody: a 10 MB body with a declared length is
// refused without being read, so its cost must not scale with the size.
func BenchmarkRejectOversizedBody(b *testing.B) {
	e := newEnv(b)
	big := `{"entitlement":"x","reason":"` + strings.Repeat("a", 10<<20) + `"}`
	b.ResetTimer()
	for b.Loop() {
		r := e.do(b, "POST", "/v1/requests", e.secrets["alice"], "application/json", strings.NewReader(big))
		if r.status != 413 {
			b.Fatalf("status %d", r.status)
		}
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	b.ReportMetric(float64(pct(0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(pct(0.99).Microseconds()), "p99-µs")
}
