package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// TestScanReadsEveryStoredField pins what Verify hashes: the entry Scan
// hands over is, field for field, the event as the store returns it —
// hostile text, no time, no data, delegation chains and provenance
// included — with its stored leaf hash, over whole scans and windows.
func TestScanReadsEveryStoredField(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		err := e.store.Update(ctx, func(tx lapse.Tx) error {
			for j := range 1200 {
				data, _ := json.Marshal(map[string]any{"i": j, "note": hostile[j%len(hostile)]})
				ev := &lapse.Event{
					Time: t0.Add(time.Duration(j) * time.Nanosecond), Type: lapse.EventGrantCreated,
					ActorID: "actor-" + hostile[(j+1)%len(hostile)], ActorKind: lapse.KindAgent, Channel: lapse.ChannelAPI,
					RequestID: fmt.Sprintf("rq_%d", j), GrantID: hostile[j%len(hostile)], Outcome: "ok", Data: data,
				}
				switch j % 5 {
				case 0:
					ev.Time, ev.Data = time.Time{}, nil
				case 1:
					ev.Act = []string{"svc_" + hostile[j%len(hostile)], "usr_alice"}
					ev.RequestHash, ev.PolicyVersion = fmt.Sprintf("sha256:%064x", j), "pol_"+hostile[j%len(hostile)]
				}
				if err := tx.AppendEvent(ctx, ev); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		e.sync(t)
		e.appendEvents(t, 3, 3, 0) // not yet integrated: no leaf hash
		evs, err := e.backend.Events(ctx, 0, 2000)
		if err != nil || len(evs) != 1203 {
			t.Fatalf("events: %d, %v", len(evs), err)
		}
		for _, w := range []struct {
			after int64
			limit int
		}{{0, 0}, {0, 7}, {511, 3}, {1190, 0}, {1203, 0}} {
			i := int(w.after)
			err := e.backend.Scan(ctx, w.after, w.limit, func(en *audit.Entry) error {
				if i >= len(evs) || (w.limit > 0 && i >= int(w.after)+w.limit) {
					return fmt.Errorf("entry %d is past the window", en.Seq)
				}
				want := audit.EncodeLeaf(evs[i])
				if got := audit.AppendLeaf(nil, en); !bytes.Equal(got, want) {
					return fmt.Errorf("entry %d reads as\n%q, want\n%q", en.Seq, got, want)
				}
				if integrated := i < 1200; integrated != (en.Leaf != nil) ||
					(integrated && !bytes.Equal(en.Leaf, audit.LeafHash(want))) {
					return fmt.Errorf("entry %d has stored leaf hash %x", en.Seq, en.Leaf)
				}
				i++
				return nil
			})
			if err != nil {
				t.Fatalf("scan after %d limit %d: %v", w.after, w.limit, err)
			}
			if want := len(evs); w.limit > 0 {
				want = min(want, int(w.after)+w.limit)
				if i != want {
					t.Fatalf("scan after %d limit %d ended at %d, want %d", w.after, w.limit, i, want)
				}
			} else if i != want {
				t.Fatalf("scan after %d ended at %d, want %d", w.after, i, want)
			}
		}
		// The error of the callback comes back as it is.
		stop := fmt.Errorf("stop here")
		if err := e.backend.Scan(ctx, 0, 0, func(*audit.Entry) error { return stop }); err != stop {
			t.Fatalf("scan returned %v, want the callback's error", err)
		}
	})
}

// TestVerifyAcrossBatches tampers on both sides of the boundaries at which
// the reading goroutine hands entries over, so the findings and their
// order are those of one pass over the log.
func TestVerifyAcrossBatches(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		e.appendEvents(t, 2100, 100, 100)
		wantOK(t, e.verify(t, true))
		e.exec(t, "UPDATE events SET outcome = 'denied' WHERE seq IN (512, 513, 1536)")
		e.exec(t, "DELETE FROM events WHERE seq BETWEEN 1024 AND 1030")
		r := e.verify(t, true)
		wantFirstBad(t, r, 512)
		var got []string
		for _, p := range r.Problems {
			got = append(got, fmt.Sprintf("%d: %s", p.Seq, p.Message))
		}
		all := strings.Join(got, "\n")
		for _, want := range []string{
			"512: entry 512 does not match its leaf hash",
			"513: entry 513 does not match its leaf hash",
			"1024: entries 1024 to 1030 are missing",
			"1536: entry 1536 does not match its leaf hash",
			"2094: the external checkpoint covers 2100 entries but the log has 2093",
		} {
			if !strings.Contains(all, want) {
				t.Errorf("no problem %q in:\n%s", want, all)
			}
		}
		if r.Entries != 2093 || r.Integrated != 2093 || r.Signed != 0 {
			t.Errorf("report = %+v", r)
		}
	})
}

// cancelAt is a Backend whose Scan cancels the context at one entry.
type cancelAt struct {
	audit.Backend
	seq    int64
	cancel context.CancelFunc
}

func (c *cancelAt) Scan(ctx context.Context, after int64, limit int, fn func(*audit.Entry) error) error {
	return c.Backend.Scan(ctx, after, limit, func(e *audit.Entry) error {
		if e.Seq == c.seq {
			c.cancel()
		}
		return fn(e)
	})
}

// TestVerifyEndsWithItsContext: a verification cancelled half way returns
// an error, not a report, and leaves no goroutine behind.
func TestVerifyEndsWithItsContext(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		// More entries than the store reads ahead, so the scan is still
		// running when the context ends.
		e.appendEvents(t, 20000, 1000, 5000)
		v, err := audit.NewVerifier(e.vkey)
		if err != nil {
			t.Fatal(err)
		}
		before := runtime.NumGoroutine()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r, err := audit.Verify(ctx, &cancelAt{Backend: e.backend, seq: 1500, cancel: cancel}, audit.VerifyOptions{Verifier: v})
		if err == nil {
			t.Fatalf("verify with a cancelled context returned %+v", r)
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Fatalf("%d goroutines before verify, %d after", before, n)
		}
	})
}

// TestVerifyReadsSQLiteValuesAsBefore: SQLite keeps any type in any
// column. A value of another storage class must read as the bytes
// database/sql gave Verify before (so a blob with a column's own bytes
// changes nothing, and a number where the hash belongs is a finding about
// that entry), and a time that is no integer fails the verification.
func TestVerifyReadsSQLiteValuesAsBefore(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		if e.name != "sqlite" {
			t.Skip("PostgreSQL columns have one type")
		}
		thousand(t, e)
		e.exec(t, "UPDATE events SET outcome = CAST(outcome AS BLOB), data = CAST(data AS BLOB) WHERE seq = 300")
		wantOK(t, e.verify(t, true))
		e.exec(t, "UPDATE audit_leaves SET hash = 12345 WHERE seq = 400")
		wantFirstBad(t, e.verify(t, true), 400)
		e.exec(t, "UPDATE events SET event_time = 'noon' WHERE seq = 500")
		v, err := audit.NewVerifier(e.vkey)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := audit.Verify(context.Background(), e.backend, audit.VerifyOptions{Verifier: v}); err == nil {
			t.Fatalf("verify read a time of 'noon': %+v", r)
		}
	})
}

// TestVerifyAcrossReadRanges: on SQLite a whole scan reads ranges of 2,048
// sequence numbers on two connections, turn about. The entries still come
// in order, each once — with a gap inside a range, across ranges, and
// over a whole range — and the findings are those of one pass.
func TestVerifyAcrossReadRanges(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.appendEvents(t, 10000, 1000, 1000)
		wantOK(t, e.verify(t, true))
		e.exec(t, "UPDATE events SET outcome = 'denied' WHERE seq IN (2048, 2049, 4097)")
		e.exec(t, "DELETE FROM events WHERE (seq BETWEEN 3000 AND 3010) OR (seq BETWEEN 6000 AND 8300) OR seq = 10000")
		var want []int64
		for after := int64(0); ; {
			evs, err := e.backend.Events(ctx, after, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 {
				break
			}
			for _, ev := range evs {
				want = append(want, ev.Seq)
			}
			after = evs[len(evs)-1].Seq
		}
		i := 0
		err := e.backend.Scan(ctx, 0, 0, func(en *audit.Entry) error {
			if i >= len(want) || en.Seq != want[i] {
				return fmt.Errorf("entry %d at position %d", en.Seq, i)
			}
			i++
			return nil
		})
		if err != nil || i != len(want) {
			t.Fatalf("scan: %v after %d of %d entries", err, i, len(want))
		}
		r := e.verify(t, true)
		wantFirstBad(t, r, 2048)
		all := fmt.Sprint(r.Problems)
		for _, p := range []string{
			"entry 2049 does not match", "entry 4097 does not match",
			"entries 3000 to 3010 are missing", "entries 6000 to 8300 are missing",
			"the external checkpoint covers 10000 entries but the log has 7687",
		} {
			if !strings.Contains(all, p) {
				t.Errorf("no problem %q in %s", p, all)
			}
		}
		if r.Entries != 7687 {
			t.Errorf("report = %+v", r)
		}
	})
}

// TestVerifyFarSequenceNumber: an entry planted at the largest sequence
// number is one finding, found as fast as any other — however the store
// splits its reads by sequence number.
func TestVerifyFarSequenceNumber(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		e.appendEvents(t, 5000, 1000, 1000)
		e.exec(t, "INSERT INTO events (seq, event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data) "+
			"VALUES (9223372036854775807, NULL, 'grant.revoked', 'mallory', 'human', 'api', '', '', 'ok', NULL)")
		start := time.Now()
		r := e.verify(t, true)
		wantFirstBad(t, r, 5001)
		if want := "entries 5001 to 9223372036854775806 are missing"; r.Problems[0].Message != want {
			t.Fatalf("problems: %+v", r.Problems)
		}
		if r.Entries != 5001 || time.Since(start) > 10*time.Second {
			t.Fatalf("report after %v: %+v", time.Since(start), r)
		}
		// The same from the middle of the log (Export, say).
		n := 0
		if err := e.backend.Scan(context.Background(), 4000, 0, func(*audit.Entry) error { n++; return nil }); err != nil || n != 1001 {
			t.Fatalf("scan after 4000: %v, %d entries", err, n)
		}
	})
}
