package audit_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver for raw access

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// env is one store with raw SQL access to its database, for tests that
// play the attacker who can write the database but not the signing key.
type env struct {
	name    string
	store   *sqlstore.Store
	backend *sqlstore.AuditLog
	raw     *sql.DB
	dollar  bool
	log     *audit.Log
	sinkDir string
	vkey    string
	n       int // events appended so far
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// stores runs f on SQLite and on PostgreSQL, each with a fresh database.
func stores(t *testing.T, f func(t *testing.T, e *env)) {
	t.Run("sqlite", func(t *testing.T) {
		path := sqltest.SQLitePath(t)
		s := open(t, sqlstore.DriverSQLite, path)
		raw, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetMaxOpenConns(1)
		t.Cleanup(func() { raw.Close() })
		if _, err := raw.Exec("PRAGMA busy_timeout = 10000"); err != nil {
			t.Fatal(err)
		}
		f(t, newEnv(t, "sqlite", s, raw, false))
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := sqltest.PostgresDSN(t)
		s := open(t, sqlstore.DriverPostgres, dsn)
		raw, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		f(t, newEnv(t, "postgres", s, raw, true))
	})
}

func open(t *testing.T, driver, dsn string) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", driver, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newEnv(t *testing.T, name string, s *sqlstore.Store, raw *sql.DB, dollar bool) *env {
	t.Helper()
	skey, vkey, err := audit.GenerateKey("lapse.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{name: name, store: s, backend: s.Audit(), raw: raw, dollar: dollar, sinkDir: t.TempDir(), vkey: vkey}
	e.log = e.newLog(t, skey, vkey)
	return e
}

func (e *env) newLog(t *testing.T, skey, vkey string) *audit.Log {
	t.Helper()
	l, err := audit.NewLog(audit.Config{
		Backend: e.backend, SigningKey: skey, VerifierKey: vkey,
		Sinks: []audit.Sink{&audit.DirSink{Dir: e.sinkDir}},
		Clock: fixedClock(t0), BatchSize: 128,
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// exec runs SQL written with ? placeholders on the raw connection.
func (e *env) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if e.dollar {
		n := 0
		var b strings.Builder
		for _, c := range q {
			if c == '?' {
				n++
				b.WriteString("$" + strconv.Itoa(n))
				continue
			}
			b.WriteRune(c)
		}
		q = b.String()
	}
	if _, err := e.raw.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// hostile free text: newlines, control characters, JSON fragments and a
// copy of what an encoded field looks like.
var hostile = []string{
	"", "plain", "line\nbreak", "\x01\x1b[31m\x7f", `","outcome":"ok"}` + "\n{\"seq\":1", "\u2028\u2029", "tab\there",
}

// appendEvents appends n events in transactions of per, signing a
// checkpoint after every signEvery events (0 = never).
func (e *env) appendEvents(t *testing.T, n, per, signEvery int) {
	t.Helper()
	ctx := context.Background()
	for done := 0; done < n; {
		k := min(per, n-done)
		if signEvery > 0 {
			k = min(k, signEvery-done%signEvery)
		}
		base := e.n
		err := e.store.Update(ctx, func(tx lapse.Tx) error {
			for i := range k {
				j := base + i
				data, _ := json.Marshal(map[string]any{"i": j, "note": hostile[j%len(hostile)]})
				ev := &lapse.Event{
					Time: t0.Add(time.Duration(j) * time.Millisecond), Type: lapse.EventGrantCreated,
					ActorID: "actor-" + hostile[j%len(hostile)], ActorKind: lapse.KindHuman, Channel: lapse.ChannelAPI,
					RequestID: fmt.Sprintf("rq_%d", j), GrantID: fmt.Sprintf("gr_%d", j), Outcome: "ok", Data: data,
				}
				if j%11 == 0 {
					ev.Time = time.Time{}
					ev.Data = nil
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
		e.n += k
		done += k
		if signEvery > 0 && done%signEvery == 0 {
			e.sync(t)
		}
	}
}

func (e *env) sync(t *testing.T) *audit.Checkpoint {
	t.Helper()
	cp, err := e.log.Sync(context.Background())
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return cp
}

// verify runs Verify, with the external sink's checkpoints when ext.
func (e *env) verify(t *testing.T, ext bool) *audit.Report {
	t.Helper()
	v, err := audit.NewVerifier(e.vkey)
	if err != nil {
		t.Fatal(err)
	}
	opts := audit.VerifyOptions{Verifier: v}
	if ext {
		if opts.External, err = audit.ReadDir(e.sinkDir, v); err != nil {
			t.Fatal(err)
		}
		opts.ExternalName = "external"
	}
	r, err := audit.Verify(context.Background(), e.backend, opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return r
}

func wantFirstBad(t *testing.T, r *audit.Report, seq int64) {
	t.Helper()
	if r.OK() || r.FirstBad != seq {
		t.Fatalf("verify: ok=%v first bad=%d, want %d; problems: %+v", r.OK(), r.FirstBad, seq, r.Problems)
	}
}

func wantOK(t *testing.T, r *audit.Report) {
	t.Helper()
	if !r.OK() {
		t.Fatalf("verify found problems in an untouched log: %+v", r.Problems)
	}
}

// thousand makes the 1,000-entry log of the tamper tests, with a signed
// checkpoint every 100 entries published to the sink.
func thousand(t *testing.T, e *env) {
	t.Helper()
	e.appendEvents(t, 1000, 50, 100)
	r := e.verify(t, true)
	wantOK(t, r)
	if r.Entries != 1000 || r.Integrated != 1000 || r.Signed != 1000 || r.Checkpoints != 10 || r.External != 10 {
		t.Fatalf("report = %+v", r)
	}
}

func TestUntouchedLogVerifies(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		thousand(t, e)
		// Entries not yet integrated are the window, not a finding.
		e.appendEvents(t, 7, 7, 0)
		r := e.verify(t, true)
		wantOK(t, r)
		if r.Entries != 1007 || r.Integrated != 1000 || r.Signed != 1000 {
			t.Fatalf("report = %+v", r)
		}
	})
}

func TestChangedFieldNamesEntry(t *testing.T) {
	for _, tc := range []struct{ col, value string }{
		{"outcome", "denied"},
		{"actor_id", "mallory"},
		{"data", `{"i":499}`},
		{"event_type", lapse.EventGrantRevoked},
		{"grant_id", "gr_1"},
	} {
		t.Run(tc.col, func(t *testing.T) {
			stores(t, func(t *testing.T, e *env) {
				thousand(t, e)
				e.exec(t, "UPDATE events SET "+tc.col+" = ? WHERE seq = 500", tc.value)
				wantFirstBad(t, e.verify(t, true), 500)
				wantFirstBad(t, e.verify(t, false), 500)
			})
		})
	}
	t.Run("event_time", func(t *testing.T) {
		stores(t, func(t *testing.T, e *env) {
			thousand(t, e)
			e.exec(t, "UPDATE events SET event_time = event_time + 1 WHERE seq = 500")
			wantFirstBad(t, e.verify(t, true), 500)
		})
	})
}

// copyRow overwrites every column but seq of entry dst with entry src's.
func (e *env) copyRow(t *testing.T, dst, src int64) {
	t.Helper()
	e.exec(t, "UPDATE events SET "+allCols+" WHERE seq = ?", append(e.row(t, src), dst)...)
}

// allCols assigns every column of an event but seq.
const allCols = "event_time = ?, event_type = ?, actor_id = ?, actor_kind = ?, channel = ?, request_id = ?, grant_id = ?, outcome = ?, data = ?"

func (e *env) row(t *testing.T, seq int64) []any {
	t.Helper()
	var (
		at   sql.NullInt64
		s    [7]string
		data sql.NullString
	)
	err := e.raw.QueryRow(strings.Replace("SELECT event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data FROM events WHERE seq = ?", "?", e.ph(1), 1), seq).
		Scan(&at, &s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6], &data)
	if err != nil {
		t.Fatal(err)
	}
	return []any{at, s[0], s[1], s[2], s[3], s[4], s[5], s[6], data}
}

func (e *env) ph(n int) string {
	if e.dollar {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

func TestSwappedEntriesDetected(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		thousand(t, e)
		a := e.row(t, 300)
		e.copyRow(t, 300, 700)
		e.exec(t, "UPDATE events SET "+allCols+" WHERE seq = ?", append(a, int64(700))...)
		r := e.verify(t, true)
		wantFirstBad(t, r, 300)
		if !strings.Contains(fmt.Sprint(r.Problems), "entry 700 does not match") {
			t.Fatalf("the other half of the swap is not reported: %+v", r.Problems)
		}
	})
}

func TestDuplicatedEntryDetected(t *testing.T) {
	t.Run("in place", func(t *testing.T) {
		stores(t, func(t *testing.T, e *env) {
			thousand(t, e)
			e.copyRow(t, 401, 400)
			wantFirstBad(t, e.verify(t, true), 401)
		})
	})
	t.Run("at the tail, then integrated and signed", func(t *testing.T) {
		stores(t, func(t *testing.T, e *env) {
			thousand(t, e)
			vals := e.row(t, 400)
			e.exec(t, "INSERT INTO events (seq, event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data) VALUES (1001, ?, ?, ?, ?, ?, ?, ?, ?, ?)", vals...)
			e.exec(t, "UPDATE event_seq SET seq = 1001")
			e.sync(t) // the sequencer cannot tell; verify can
			r := e.verify(t, true)
			wantFirstBad(t, r, 1001)
			if !strings.Contains(r.Problems[0].Message, "repeats entry 400") {
				t.Fatalf("problem = %q", r.Problems[0].Message)
			}
		})
	})
}

// rebuild plays an attacker who rewrote events and now recomputes the
// whole tree: every leaf and node, and checkpoints under a key of their
// own, after deleting the stored ones from fromSize on.
func (e *env) rebuild(t *testing.T, fromSize int) {
	t.Helper()
	e.exec(t, "DELETE FROM audit_leaves")
	e.exec(t, "DELETE FROM audit_nodes")
	e.exec(t, "DELETE FROM audit_checkpoints WHERE size >= ?", fromSize)
	skey, vkey, err := audit.GenerateKey("lapse.test/audit")
	if err != nil {
		t.Fatal(err)
	}
	forger, err := audit.NewLog(audit.Config{Backend: e.backend, SigningKey: skey, VerifierKey: vkey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := forger.Sync(context.Background()); err == nil {
		// The stored checkpoints it did not delete no longer match.
		t.Log("the forger's sequencer accepted the rewritten tree")
	}
}

func TestInsertedEntryWithRecomputedHashesDetected(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		thousand(t, e)
		// Make room at 600 (in two steps, so no statement meets a
		// duplicate key), insert a forged entry, recompute the tree.
		e.exec(t, "UPDATE events SET seq = -seq WHERE seq >= 600")
		e.exec(t, "UPDATE events SET seq = 1 - seq WHERE seq < 0")
		e.exec(t, "INSERT INTO events (seq, event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data) VALUES (600, ?, 'grant.revoked', 'engine', 'service', 'engine', '', 'gr_forged', 'verified', NULL)", t0.UnixNano())
		e.exec(t, "UPDATE event_seq SET seq = 1001")
		e.rebuild(t, 600)
		// The stored checkpoints before 600 still match; the external
		// ones from 600 on do not.
		r := e.verify(t, true)
		if r.OK() || r.FirstBad < 501 || r.FirstBad > 600 {
			t.Fatalf("verify: ok=%v first bad=%d, want 501..600; problems: %+v", r.OK(), r.FirstBad, r.Problems)
		}
		// Even without the external sink, the stored checkpoints the
		// forger left behind and its own unverifiable ones give it away.
		if r := e.verify(t, false); r.OK() {
			t.Fatal("verify without the sink found nothing")
		}
	})
}

func TestTruncatedTailDetectedAgainstSink(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		thousand(t, e)
		// Delete the last 50 entries and make every stored head agree:
		// leaves, the nodes that cover them, the checkpoints, the counter.
		const keep = 950
		e.exec(t, "DELETE FROM events WHERE seq > ?", keep)
		e.exec(t, "DELETE FROM audit_leaves WHERE seq > ?", keep)
		for level := 1; level < 20; level++ {
			e.exec(t, "DELETE FROM audit_nodes WHERE level = ? AND idx >= ?", level, keep>>level)
		}
		e.exec(t, "DELETE FROM audit_checkpoints WHERE size > ?", keep)
		e.exec(t, "UPDATE event_seq SET seq = ?", keep)
		// Locally the log is consistent: that is what the sink is for.
		if r := e.verify(t, false); !r.OK() || r.Entries != keep {
			t.Fatalf("the doctored log does not verify locally: %+v", r)
		}
		r := e.verify(t, true)
		wantFirstBad(t, r, keep+1)
		// A new sequencer builds on the doctored tree without complaint;
		// the sink still has the larger checkpoint.
		e.appendEvents(t, 10, 10, 0)
		e.sync(t)
		if r := e.verify(t, true); r.OK() {
			t.Fatal("the sink's checkpoint of size 1000 did not catch the rewritten tail")
		}
	})
}

func TestProofs(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.appendEvents(t, 300, 37, 0)
		cp300 := e.sync(t)
		e.appendEvents(t, 77, 77, 0)
		cp := e.sync(t)
		if cp.Size != 377 {
			t.Fatalf("size %d", cp.Size)
		}
		for _, seq := range []int64{1, 2, 255, 256, 257, 300, 376, 377} {
			p, err := e.log.Inclusion(ctx, seq, 0)
			if err != nil {
				t.Fatal(err)
			}
			if p.Checkpoint != string(cp.Note) || p.TreeSize != 377 {
				t.Fatalf("proof is against %d", p.TreeSize)
			}
			evs, err := e.backend.Events(ctx, seq-1, 1)
			if err != nil {
				t.Fatal(err)
			}
			leaf := audit.LeafHash(audit.EncodeLeaf(evs[0]))
			if err := audit.VerifyInclusion(uint64(seq-1), p.TreeSize, leaf, p.Proof, cp.Root); err != nil {
				t.Fatalf("inclusion of %d: %v", seq, err)
			}
			if err := audit.VerifyInclusion(uint64(seq-1), p.TreeSize, audit.LeafHash([]byte("other")), p.Proof, cp.Root); err == nil {
				t.Fatal("a proof verified for another leaf")
			}
		}
		for _, from := range []uint64{1, 2, 100, 256, 300, 377} {
			c, err := e.log.Consistency(ctx, from, 0)
			if err != nil {
				t.Fatal(err)
			}
			if from == 300 {
				if err := audit.VerifyConsistency(300, 377, c.Proof, cp300.Root, cp.Root); err != nil {
					t.Fatalf("consistency 300→377: %v", err)
				}
				if err := audit.VerifyConsistency(300, 377, c.Proof, cp.Root, cp.Root); err == nil {
					t.Fatal("consistency verified against a wrong old root")
				}
			}
		}
		if _, err := e.log.Inclusion(ctx, 378, 0); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Fatalf("inclusion beyond the tree: %v", err)
		}
	})
}

// fixedClock is a lapse.Clock that always says t.
type fixedClock time.Time

func (c fixedClock) Now() time.Time { return time.Time(c) }

// flakySink fails while down is set.
type flakySink struct {
	down bool
	got  []uint64
}

func (f *flakySink) Publish(ctx context.Context, cp *audit.Checkpoint) error {
	if f.down {
		return fmt.Errorf("sink down")
	}
	f.got = append(f.got, cp.Size)
	return nil
}

func (f *flakySink) String() string { return "flaky" }

// TestSinkOutageDegradesThenCatchesUp: while a sink fails, checkpoints are
// still signed and stored, the log reports itself degraded, and every
// checkpoint reaches the sink, in order, once it is back.
func TestSinkOutageDegradesThenCatchesUp(t *testing.T) {
	s := open(t, sqlstore.DriverSQLite, sqltest.SQLitePath(t))
	e := newEnv(t, "sqlite", s, nil, false)
	sink := &flakySink{down: true}
	skey, _, _ := audit.GenerateKey("lapse.test/audit")
	e.vkey, _ = audit.VerifierKeyOf(skey)
	l, err := audit.NewLog(audit.Config{Backend: e.backend, SigningKey: skey, Sinks: []audit.Sink{sink}})
	if err != nil {
		t.Fatal(err)
	}
	e.log = l
	ctx := context.Background()
	for range 2 {
		e.appendEvents(t, 5, 5, 0)
		if _, err := l.Sync(ctx); err == nil {
			t.Fatal("Sync succeeded with the sink down")
		}
	}
	if err := l.Healthy(); lapse.ErrorCode(err) != lapse.EUNAVAILABLE {
		t.Fatalf("Healthy with the sink down = %v", err)
	}
	if st := l.Status(); st.Signed != 10 || st.Unpublished != 2 {
		t.Fatalf("status = %+v", st)
	}
	sink.down = false
	if _, err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Healthy(); err != nil || fmt.Sprint(sink.got) != "[5 10]" {
		t.Fatalf("after recovery: healthy=%v, published %v", err, sink.got)
	}
	wantOK(t, e.verify(t, false))
}
