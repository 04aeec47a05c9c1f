package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

func TestHumanDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{1500 * time.Microsecond, "2ms"},
		{45 * time.Second, "45s"},
		{15 * time.Minute, "15m"},
		{15*time.Minute + 30*time.Second, "15m30s"},
		{90 * time.Minute, "1h30m"},
		{8 * time.Hour, "8h"},
		{8*time.Hour + 20*time.Second, "8h"},
		{50 * time.Hour, "2d2h"},
		{48*time.Hour + 5*time.Minute, "2d"},
		{-3 * time.Minute, "3m"},
	} {
		if got := humanDuration(tc.d); got != tc.want {
			t.Errorf("humanDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestTimes(t *testing.T) {
	p := &printer{now: testNow, loc: time.UTC}
	for _, tc := range []struct {
		t            time.Time
		when, short_ string
	}{
		{testNow.Add(14 * time.Minute), "2026-03-01 12:14:00 UTC (in 14m)", "in 14m (12:14)"},
		{testNow.Add(-3 * time.Hour), "2026-03-01 09:00:00 UTC (3h ago)", "3h ago (09:00)"},
		{testNow.Add(-50 * time.Hour), "2026-02-27 10:00:00 UTC (2d2h ago)", "2d2h ago (Feb 27 10:00)"},
		{testNow.Add(400 * time.Millisecond), "2026-03-01 12:00:00 UTC (now)", "now (12:00)"},
		{time.Time{}, "", ""},
	} {
		if got := p.when(tc.t); got != tc.when {
			t.Errorf("when(%v) = %q, want %q", tc.t, got, tc.when)
		}
		if got := p.short(tc.t); got != tc.short_ {
			t.Errorf("short(%v) = %q, want %q", tc.t, got, tc.short_)
		}
	}
	// Times show in the configured zone.
	berlin := time.FixedZone("CET", 3600)
	p.loc = berlin
	if got := p.when(testNow); got != "2026-03-01 13:00:00 CET (now)" {
		t.Errorf("when in CET = %q", got)
	}
}

func TestClean(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text, ünïcödé ✓", "plain text, ünïcödé ✓"},
		{"a\x1b[31mred", `a\x1b[31mred`},
		{"line\nbreak\rreturn\ttab", `line\nbreak\rreturn\ttab`},
		{"bidi\u202eevil", `bidi\u202eevil`},
		{"zero\u200dwidth", `zero\u200dwidth`},
		{"bad\xffbyte", `bad\xffbyte`},
		{"bell\a", `bell\a`},
	} {
		if got := clean(tc.in); got != tc.want {
			t.Errorf("clean(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("héllo wörld", 6); got != "héllo…" {
		t.Errorf("truncate = %q", got)
	}
	if got := truncate("short", 6); got != "short" {
		t.Errorf("truncate = %q", got)
	}
}

func TestSummarizeJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{``, ""},
		{`{"b":2,"a":"x","c":null}`, `a=x, b=2, c=null`},
		{`{"d":{"e":[1]}}`, `d={"e":[1]}`},
		{`[1,2]`, `[1,2]`},
		{`{"long":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}`, "long=aaaaaaaaaaaaaa…"},
	} {
		if got := summarizeJSON(json.RawMessage(tc.in), 20); got != tc.want {
			t.Errorf("summarizeJSON(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestReportError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
		code int
	}{
		{nil, "", exitOK},
		{lapse.FieldErrorf(lapse.EINVALID, "duration", "not a duration like 15m or 8h"), "lapse: not a duration like 15m or 8h (code: invalid, field: duration)\n", exitError},
		{fmt.Errorf("create request: %w", lapse.Errorf(lapse.ECONFLICT, "request is decided")), "lapse: request is decided (code: conflict)\n", exitError},
		// The internal cause of a lapse error is never shown.
		{lapse.Internal("store", errors.New("pq: password=hunter2 rejected")), "lapse: internal error (code: internal)\n", exitError},
		{errors.New("dial tcp 127.0.0.1:8700: connect: connection refused"), "lapse: dial tcp 127.0.0.1:8700: connect: connection refused\n", exitError},
		{usageFieldErrorf("output", "output format must be table or json"), "lapse: output format must be table or json (code: invalid, field: output)\n", exitUsage},
		{&usageError{err: errors.New("unknown flag: --x"), command: "lapse request"}, "lapse: unknown flag: --x\nRun 'lapse request --help' for usage.\n", exitUsage},
		{&interruptedError{msg: "stopped waiting"}, "lapse: stopped waiting\n", exitInterrupted},
		{errors.New("evil \x1b]0;title\x07"), "lapse: evil \\x1b]0;title\\a\n", exitError},
	} {
		var b bytes.Buffer
		if code := reportError(&b, tc.err); code != tc.code || b.String() != tc.want {
			t.Errorf("reportError(%v) = %d %q, want %d %q", tc.err, code, b.String(), tc.code, tc.want)
		}
	}
}

func TestWriteJSONIsOneDocument(t *testing.T) {
	var b bytes.Buffer
	if err := writeJSON(&b, map[string]any{"requests": []*lapse.Request{}}); err != nil {
		t.Fatal(err)
	}
	if b.String() != "{\n  \"requests\": []\n}\n" {
		t.Errorf("writeJSON = %q", b.String())
	}
}
