package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector/token"
	"github.com/lapsehq/lapse/sqlstore"
)

// useLimitConfig is serverConfig with a token entitlement limited to two
// uses.
const useLimitConfig = serverConfig + `  - name: demo-api/once
    target: demo-api
    max_duration: 1h
    approval: {auto: true}
    max_uses: 2
`

// TestUseLimit: a grant of an entitlement with max_uses: 2 answers active
// to the first two introspections, inactive to the third, its token goes
// on the revocation feed, and the grant ends revoked with every checkpoint
// verified, ended by the use-limit principal.
func TestUseLimit(t *testing.T) {
	path := writeServerConfig(t, useLimitConfig)
	key := func(args ...string) string {
		t.Helper()
		stdout, _, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", path}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(stdout)
	}
	alice := key("--principal", "alice", "--scope", "read,request")
	gw := key("--principal", "api-gw", "--kind", "service", "--scope", "introspect")
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0", "--log-level", "info")

	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/once"}, &res); code != 201 || res.Credentials == nil {
		t.Fatalf("request: status %d %+v", code, res)
	}
	tok, id := res.Credentials.Secret["token"], res.Grant.ID
	if tok == "" {
		t.Fatalf("no token in %+v", res.Credentials)
	}
	introspect := func(tok string) token.Introspection {
		t.Helper()
		code, body := postForm(t, r.url+"/v1/targets/demo-api/introspect", gw, url.Values{"token": {tok}})
		var in token.Introspection
		if code != 200 || json.Unmarshal(body, &in) != nil {
			t.Fatalf("introspect: %d %s", code, body)
		}
		return in
	}
	for use := int64(1); use <= 2; use++ {
		in := introspect(tok)
		if !in.Active || in.Jti != id || in.MaxUses != 2 || in.Uses != use {
			t.Fatalf("use %d: introspection %+v, want active with lapse_max_uses 2 and lapse_uses %d", use, in, use)
		}
	}
	if in := introspect(tok); in.Active || in.Uses != 0 || in.Jti != "" {
		t.Fatalf("use 3: introspection %+v, want only active=false", in)
	}
	if in := introspect(tok); in.Active {
		t.Fatal("use 4: the token is active again")
	}

	// Followers see it on the feed.
	var feed api.FeedPage
	if code := call(t, "GET", r.url+"/v1/targets/demo-api/revocations", gw, nil, &feed); code != 200 ||
		len(feed.Revocations) != 1 || feed.Revocations[0].TokenID != id {
		t.Fatalf("feed: %d %+v", code, feed)
	}

	// The grant ends through the ordinary, verified revocation.
	var g lapse.Grant
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code := call(t, "GET", r.url+"/v1/grants/"+id, alice, nil, &g); code != 200 {
			t.Fatalf("get grant: %d", code)
		}
		if g.State == lapse.GrantRevoked || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g.State != lapse.GrantRevoked || g.EndReason != lapse.EndRevoked {
		t.Fatalf("grant is %s (%s), want revoked", g.State, g.EndReason)
	}
	verified := false
	for _, cp := range g.Checkpoints {
		if cp.Name == token.CheckpointToken && cp.Verified() {
			verified = true
		}
		if !cp.Verified() {
			t.Errorf("checkpoint %s is not verified", cp.Name)
		}
	}
	if !verified {
		t.Errorf("no verified token checkpoint in %+v", g.Checkpoints)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	// Who ended it, and why, is in the log.
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dsn, _ := cfg.ResolveStoreDSN()
	s, err := sqlstore.Open(context.Background(), "sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.ListEvents(context.Background(), lapse.EventFilter{GrantID: id})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs {
		if e.Type != lapse.EventGrantRevokeStarted {
			continue
		}
		found = true
		var data map[string]any
		_ = json.Unmarshal(e.Data, &data)
		if e.ActorID != api.UseLimitPrincipal.ID || e.ActorKind != lapse.KindService || e.Channel != lapse.ChannelSystem || data["reason"] != api.UseLimitReason {
			t.Errorf("revoke event by %s (%s, %s) data %s", e.ActorID, e.ActorKind, e.Channel, e.Data)
		}
	}
	if !found {
		t.Errorf("no %s event among %d", lapse.EventGrantRevokeStarted, len(evs))
	}
}

// TestUseLimitNeedsATokenTarget: max_uses on a target that cannot count
// uses (the fake connector) stops the server at start, positioned at the
// entitlement's max_uses and naming it.
func TestUseLimitNeedsATokenTarget(t *testing.T) {
	src := serverConfig + `  - name: scratch/once
    target: scratch
    max_duration: 10m
    approval: {auto: true}
    max_uses: 1
`
	path := writeServerConfig(t, src)
	_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a configuration error", err, err)
	}
	if ce.File != path || ce.Line != 30 || ce.Path != "entitlements[2].max_uses" {
		t.Errorf("error at %s:%d %q, want line 30 entitlements[2].max_uses: %v", ce.File, ce.Line, ce.Path, err)
	}
	if !strings.Contains(err.Error(), "scratch/once") || !strings.Contains(err.Error(), "cannot count uses") {
		t.Errorf("error %q does not name the entitlement and the cause", err)
	}
}
