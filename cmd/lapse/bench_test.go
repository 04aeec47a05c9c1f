package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// BenchmarkIssueToken measures token issuance end to end: a real lapse
// server (SQLite store, the token target, an auto-approved entitlement)
// answers POST /v1/requests from 16 concurrent clients with the signed
// token in the response. Every request is authenticated with an API key,
// decided, stored as a request and a grant with events, provisioned
// (one Ed25519 signature), and its credentials sealed and returned. The
// bare signature is measured in the same run for comparison. Run:
//
//	go test ./cmd/lapse -run '^$' -bench IssueToken -benchtime 4000x
func BenchmarkIssueToken(b *testing.B) {
	const clients = 16
	b.Run("api/clients=16", func(b *testing.B) {
		path := writeServerConfig(b, serverConfig)
		stdout, _, err := runLapse(b, "admin", "apikey", "create", "--config", path, "--principal", "alice", "--scope", "read,request")
		if err != nil {
			b.Fatal(err)
		}
		key := strings.TrimSpace(stdout)
		r := startLapse(b, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "warn")
		body, _ := json.Marshal(lapse.RequestInput{Entitlement: "demo-api/read", Duration: lapse.Duration(5 * time.Minute)})
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
		issue := func() error {
			req, _ := http.NewRequest("POST", r.url+"/v1/requests", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var res lapse.RequestResult
			if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
				return err
			}
			if resp.StatusCode != http.StatusCreated || res.Credentials == nil || strings.Count(res.Credentials.Secret["token"], ".") != 2 {
				return &lapse.Error{Code: lapse.EINTERNAL, Message: "no token issued: status " + resp.Status}
			}
			return nil
		}
		benchConcurrently(b, clients, issue)
		client.CloseIdleConnections()
		if err := r.stop(); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("bare-ed25519-sign", func(b *testing.B) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		msg := []byte(`{"aud":"demo-api","exp":1767322800,"iat":1767322500,"iss":"http://127.0.0.1:8700","jti":"gr_06f3ahcwtdabzqa3fvcv98rvmw","scope":"demo:read","sub":"alice"}`)
		b.ResetTimer()
		for b.Loop() {
			_ = ed25519.Sign(priv, msg)
		}
	})
}

// benchConcurrently runs call b.N times from clients goroutines, after one
// warm-up call per client (connections, the store's caches), and reports
// throughput and the p50 and p99 latency of a call.
func benchConcurrently(b *testing.B, clients int, call func() error) {
	b.Helper()
	for range clients {
		if err := call(); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := call(); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
}
