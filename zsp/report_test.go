package zsp_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/internal/fakeclock"
	"github.com/lapsehq/lapse/zsp"
)

// seeded is a store filled through the real broker on a fake clock, so
// every latency is known exactly.
type seeded struct {
	store lapse.Store
	clock *fakeclock.Clock
	b     *broker.Broker
	db    *fake.Conn
	t0    time.Time
	// latencies of the verified revocations on target db, in ms
	want []float64
	// the grant whose revocation keeps failing, and one that failed once
	failing, failedOnce string
}

var (
	svc   = &lapse.Principal{ID: "svc:ci", Kind: lapse.KindService, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}}
	alice = &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Scopes: []string{lapse.ScopeRequest, lapse.ScopeRead}}
	bob   = &lapse.Principal{ID: "bob", Kind: lapse.KindHuman, Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeApprove, lapse.ScopeRead}}
)

func as(p *lapse.Principal) context.Context { return lapse.NewContext(context.Background(), p) }

func seed(t *testing.T) *seeded {
	t.Helper()
	s := &seeded{store: openStore(t), t0: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	s.clock = fakeclock.New(s.t0)
	s.db = fake.New(fake.Options{Clock: s.clock})
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	m := lapse.Duration(time.Minute)
	b, err := broker.New(broker.Config{Store: s.store, Clock: s.clock, SealingKey: key,
		Catalog: []*lapse.Entitlement{
			{Name: "db/ci", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindService}, DefaultDuration: m, MaxDuration: lapse.Duration(time.Hour), Approval: lapse.ApprovalRule{Auto: true}},
			{Name: "db/read", Target: "db", Lanes: []lapse.PrincipalKind{lapse.KindHuman}, DefaultDuration: m, MaxDuration: lapse.Duration(time.Hour),
				Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}},
		},
		Targets: map[string]broker.Target{"db": {Kind: "fake", Connector: s.db}},
		Engine:  broker.EngineConfig{Owner: "report-test", Lease: 10 * time.Minute, RetryBase: time.Hour, RetryMax: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.b = b
	ctx := context.Background()
	tick := func() {
		t.Helper()
		if err := b.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Ten machine grants that expire and are revoked 1s, 2s, … 10s after
	// their deadline.
	for i := 1; i <= 10; i++ {
		if _, err := b.CreateRequest(as(svc), lapse.RequestInput{Entitlement: "db/ci"}); err != nil {
			t.Fatal(err)
		}
		s.clock.Advance(time.Minute + time.Duration(i)*time.Second)
		tick()
		s.want = append(s.want, float64(i*1000))
	}
	// A human grant, released and revoked 500ms later.
	res, err := b.CreateRequest(as(alice), lapse.RequestInput{Entitlement: "db/read"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Approve(as(bob), res.Request.ID, lapse.DecisionInput{})
	if err != nil {
		t.Fatal(err)
	}
	tick()
	if _, err := b.Release(as(alice), r.GrantID, lapse.ReleaseInput{}); err != nil {
		t.Fatal(err)
	}
	s.clock.Advance(500 * time.Millisecond)
	tick()
	s.want = append(s.want, 500)
	// A grant whose revocation fails once, then is revoked 30s after its
	// deadline: listed as failed before and as slow.
	res, err = b.CreateRequest(as(svc), lapse.RequestInput{Entitlement: "db/ci"})
	if err != nil {
		t.Fatal(err)
	}
	s.failedOnce = res.Grant.ID
	s.db.FailTimes(fake.Revoke, s.failedOnce, 1, nil)
	s.clock.Advance(time.Minute)
	tick()
	s.clock.Advance(30 * time.Second)
	if _, err := s.store.GetGrant(ctx, s.failedOnce); err != nil {
		t.Fatal(err)
	}
	// Make it due now (the back-off is an hour) by letting the clock run.
	s.clock.Advance(time.Hour)
	tick()
	s.want = append(s.want, float64((30*time.Second+time.Hour)/time.Millisecond))
	// A grant whose revocation keeps failing.
	res, err = b.CreateRequest(as(svc), lapse.RequestInput{Entitlement: "db/ci"})
	if err != nil {
		t.Fatal(err)
	}
	s.failing = res.Grant.ID
	s.db.Fail(fake.Revoke, s.failing, nil)
	s.clock.Advance(time.Minute)
	tick()
	return s
}

func TestReportNumbersMatchTheStore(t *testing.T) {
	s := seed(t)
	ctx := context.Background()
	rep, err := zsp.BuildReport(ctx, s.store, zsp.ReportOptions{Now: s.clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Latency) != 1 || rep.Latency[0].Target != "db" {
		t.Fatalf("latency = %+v", rep.Latency)
	}
	l := rep.Latency[0]
	// 12 latencies: 500ms, 1s … 10s, 1h30s. Nearest rank: p50 is the 6th
	// (5s), p90 the 11th (10s), p99 and max the 12th.
	if l.Count != 12 || l.P50MS != 5000 || l.P90MS != 10000 || l.P99MS != 3630000 || l.MaxMS != 3630000 {
		t.Errorf("latency db = count %d p50 %v p90 %v p99 %v max %v", l.Count, l.P50MS, l.P90MS, l.P99MS, l.MaxMS)
	}
	lanes := map[string]zsp.LaneCount{}
	for _, lc := range rep.Lanes {
		lanes[lc.Lane] = lc
	}
	if h, sv := lanes["human"], lanes["service"]; h.Grants != 1 || h.Revoked != 1 || sv.Grants != 12 || sv.Revoked != 11 || sv.Live != 1 {
		t.Errorf("lanes = %+v", rep.Lanes)
	}
	why := map[string]string{}
	for _, p := range rep.Problems {
		why[p.GrantID] = p.Why
	}
	if why[s.failing] != "failing now" || why[s.failedOnce] != "failed before, slow" || len(rep.Problems) != 2 {
		t.Errorf("problems = %+v", rep.Problems)
	}
	// --since keeps only what happened in the window: a minute ago the
	// grant that failed once was revoked; the failing one ended since.
	rep, err = zsp.BuildReport(ctx, s.store, zsp.ReportOptions{Now: s.clock.Now(), Since: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Latency) != 1 || rep.Latency[0].Count != 1 || rep.Latency[0].MaxMS != 3630000 || rep.Since.IsZero() {
		t.Errorf("since 90s: latency %+v, want only the revocation of a minute ago", rep.Latency)
	}
	if len(rep.Problems) != 2 {
		t.Errorf("since 90s: problems %+v, want both", rep.Problems)
	}
}

// hostile is text an attacker can get into the store (a principal ID, an
// error from a target, drift data): it must stay text in every output.
const hostile = `<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'"]]><!--`

func TestReportHTMLIsWellFormedAndEscaped(t *testing.T) {
	s := seed(t)
	ctx := context.Background()
	now := s.clock.Now()
	err := s.store.Update(ctx, func(tx lapse.Tx) error {
		g := &lapse.Grant{ID: lapse.NewID(lapse.PrefixGrant, now), RequestID: lapse.NewID(lapse.PrefixRequest, now), Principal: lapse.Principal{ID: hostile, Kind: lapse.KindAgent},
			Entitlement: hostile, Target: hostile, State: lapse.GrantRevokeFailed, LastError: hostile, StartsAt: now, ExpiresAt: now, DueAt: now.Add(time.Hour),
			CreatedAt: now, ActivatedAt: now, RevokeStartedAt: now, EndReason: lapse.EndExpired}
		if err := tx.InsertGrant(ctx, g); err != nil {
			return err
		}
		data, _ := json.Marshal(map[string]any{"target": hostile, "principal": hostile, "kind": "standing", "reason": hostile, "privileges": []string{hostile}})
		if err := tx.AppendEvent(ctx, &lapse.Event{Time: now, Type: lapse.EventGrantRevokeFailed, GrantID: g.ID, Outcome: "revoke_failed"}); err != nil {
			return err
		}
		if err := tx.AppendEvent(ctx, &lapse.Event{Time: now, Type: lapse.EventDriftFound, Data: data}); err != nil {
			return err
		}
		cd, _ := json.Marshal(map[string]any{"target": hostile, "result": "failed", "surviving": []string{hostile}, "problems": []string{hostile}})
		return tx.AppendEvent(ctx, &lapse.Event{Time: now, Type: lapse.EventCanaryFailed, Data: cd})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.b.RecordCanary(ctx, lapse.EventCanaryPassed, "", map[string]any{"target": "db", "result": "passed", "timings": map[string]float64{"session_ended_ms": 12.5}}); err != nil {
		t.Fatal(err)
	}
	rep, err := zsp.BuildReport(ctx, s.store, zsp.ReportOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := zsp.WriteHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, bad := range []string{"<script", "<img", "<!--", "<link", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q", bad)
		}
	}
	// Well-formed: a strict XML parser reads the whole page, every element
	// closed; the hostile text comes back as text, in every place.
	dec := xml.NewDecoder(strings.NewReader(page))
	dec.Strict = true
	var text strings.Builder
	var svgs, circles, rects int
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the page is not well-formed: %v", err)
		}
		switch v := tok.(type) {
		case xml.CharData:
			text.Write(v)
		case xml.StartElement:
			for _, a := range v.Attr {
				if a.Name.Local == "src" || a.Name.Local == "href" || strings.HasPrefix(a.Name.Local, "on") {
					t.Errorf("<%s> has attribute %s=%q: nothing may load or run", v.Name.Local, a.Name.Local, a.Value)
				}
			}
			switch v.Name.Local {
			case "svg":
				svgs++
			case "circle":
				circles++
			case "rect":
				rects++
			}
		}
	}
	if n := strings.Count(text.String(), hostile); n < 6 {
		t.Errorf("the hostile text appears %d times as text, want it in each section", n)
	}
	// Two charts per target with revocations (db: latency and exposure),
	// one for the hostile target's exposure; one circle per verified
	// revocation of db.
	if svgs != 3 || circles != 12 || rects < 13 {
		t.Errorf("svgs %d circles %d rects %d", svgs, circles, rects)
	}
	for _, want := range []string{"5.00s", "10.00s", "failing now", "12.5ms"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestReportOfAnEmptyStore(t *testing.T) {
	rep, err := zsp.BuildReport(context.Background(), openStore(t), zsp.ReportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := zsp.WriteHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("empty report is not well-formed: %v", err)
		}
	}
	b, _ := json.Marshal(rep)
	if !strings.Contains(string(b), `"standing_privileges":[]`) {
		t.Errorf("empty lists should be [] in JSON: %s", b)
	}
}
