package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// Output formats of the client commands.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// printer writes command results for people (tables) or programs (JSON).
// Every string that came from the server goes through clean before it reaches
// a terminal, because request reasons, comments and names are typed by other
// people and could otherwise carry terminal escape sequences.
type printer struct {
	w   io.Writer
	now time.Time
	loc *time.Location
}

// writeJSON prints v as one indented JSON document, the shape the API returns.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// table starts a tabwriter table with the given header.
func (p *printer) table(header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	return tw
}

// row writes one table row; cells are cleaned and never empty, so columns
// stay aligned.
func row(tw *tabwriter.Writer, cells ...string) {
	for i, c := range cells {
		c = clean(c)
		if c == "" {
			c = "-"
		}
		cells[i] = c
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

// fields prints "Label  value" lines, aligned, skipping empty values.
func (p *printer) fields(kv ...string) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\n", kv[i], clean(kv[i+1]))
	}
	tw.Flush()
}

// clean makes server-provided text safe to print on a terminal and in a
// table: control characters (escape sequences, carriage returns, tabs,
// newlines) and invisible format characters (bidi overrides, zero-width
// joiners) are shown as escapes instead of being interpreted.
func clean(s string) string {
	if isClean(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

func isClean(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unsafeRune(r) {
			return false
		}
	}
	return true
}

// unsafeRune reports whether r would change how a terminal shows what
// follows it.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029'
}

// truncate shortens s to at most n runes, marking the cut with "…".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// humanDuration formats d the way people say it: "15m", "1h30m", "2d4h",
// "45s". It keeps the two largest units and drops the rest.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	if d < time.Second {
		if d == 0 {
			return "0s"
		}
		return d.Round(time.Millisecond).String()
	}
	d = d.Round(time.Second)
	units := []struct {
		suffix string
		size   time.Duration
	}{
		{"d", 24 * time.Hour},
		{"h", time.Hour},
		{"m", time.Minute},
		{"s", time.Second},
	}
	var parts []string
	for _, u := range units {
		if d >= u.size {
			n := d / u.size
			d -= n * u.size
			parts = append(parts, strconv.FormatInt(int64(n), 10)+u.suffix)
		} else if len(parts) > 0 {
			// A zero middle unit ends the precision: "2d" rather than "2d0h".
			break
		}
		if len(parts) == 2 {
			break
		}
	}
	return strings.Join(parts, "")
}

// relative says how far t is from now: "in 14m", "3h ago", "now".
func (p *printer) relative(t time.Time) string {
	d := t.Sub(p.now)
	switch {
	case d > -time.Second && d < time.Second:
		return "now"
	case d > 0:
		return "in " + humanDuration(d)
	default:
		return humanDuration(-d) + " ago"
	}
}

// when formats t for a detail view, absolute and relative:
// "2026-03-01 14:05:09 UTC (in 14m)". The zero time prints as "".
func (p *printer) when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(p.loc).Format("2006-01-02 15:04:05 MST") + " (" + p.relative(t) + ")"
}

// short formats t for a table cell: relative, then the clock time, with the
// date only when it is not today: "in 14m (14:05)", "2d ago (Mar 01 09:30)".
func (p *printer) short(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	lt, ln := t.In(p.loc), p.now.In(p.loc)
	abs := lt.Format("15:04")
	if lt.YearDay() != ln.YearDay() || lt.Year() != ln.Year() {
		abs = lt.Format("Jan 02 15:04")
	}
	return p.relative(t) + " (" + abs + ")"
}

// principalName shows who a principal is: the ID, the kind, and the display
// name when it says something the ID does not.
func principalName(pr lapse.Principal) string {
	s := pr.ID
	if pr.Name != "" && !strings.EqualFold(pr.Name, pr.ID) {
		s += " (" + pr.Name + ")"
	}
	return s
}

// approvalsCell is "1/2" for a request that needs approvals, "auto" for one
// decided by policy.
func approvalsCell(r *lapse.Request) string {
	if r.Required == 0 {
		return "auto"
	}
	return fmt.Sprintf("%d/%d", countApprovals(r), r.Required)
}

// countApprovals counts the approve votes on r.
func countApprovals(r *lapse.Request) int {
	n := 0
	for _, a := range r.Approvals {
		if a != nil && a.Decision == lapse.DecisionApprove {
			n++
		}
	}
	return n
}

// summarizeJSON renders a JSON object as "k=v, k=v" with keys in order,
// for evidence and event data in tables. Nested values stay compact JSON.
func summarizeJSON(raw json.RawMessage, max int) string {
	if len(raw) == 0 {
		return ""
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return truncate(string(raw), max)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		var v string
		switch x := m[k].(type) {
		case string:
			v = x
		case nil:
			v = "null"
		default:
			b, _ := json.Marshal(x) // decoded from JSON, so it encodes again
			v = string(b)
		}
		parts = append(parts, k+"="+v)
	}
	return truncate(strings.Join(parts, ", "), max)
}

// sortedKeys returns m's keys in order, so output is stable.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// joinMap renders a string map as "k=v, k=v".
func joinMap(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ", ")
}
