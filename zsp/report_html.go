package zsp

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// WriteHTML writes the report as one self-contained HTML page: inline CSS
// and inline SVG charts drawn here, no script, no font, nothing fetched
// from the network. Every value that comes from the store goes through
// html/template, which escapes it for where it appears (text, attribute,
// SVG title). The markup is also well-formed XML, so it can be checked
// with an XML parser.
func WriteHTML(w io.Writer, rep *Report) error {
	v := htmlView{Report: rep}
	for _, tl := range rep.Latency {
		v.LatencyCharts = append(v.LatencyCharts, latencyChart(tl, rep.SlowMS))
	}
	byTarget := map[string][]GrantWindow{}
	for _, gw := range rep.Windows {
		byTarget[gw.Target] = append(byTarget[gw.Target], gw)
	}
	targets := make([]string, 0, len(byTarget))
	for t := range byTarget {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		v.ExposureCharts = append(v.ExposureCharts, exposureChart(t, byTarget[t], rep.GeneratedAt))
	}
	for _, c := range rep.Canaries {
		if c.Result != ResultPassed {
			v.CanaryFailures++
		}
	}
	for _, s := range rep.Standing {
		if !s.Removed {
			v.OpenStanding++
		}
	}
	return reportTemplate.Execute(w, v)
}

type htmlView struct {
	*Report
	LatencyCharts  []chart
	ExposureCharts []chart
	CanaryFailures int
	OpenStanding   int
}

// chart is an SVG drawing: its geometry is computed here, its text
// escaped by the template.
type chart struct {
	Title         string
	Width, Height float64
	Axes          []line
	Ticks         []label
	Lines         []line
	Points        []point
	Bars          []bar
	Note          string
}

type line struct {
	X1, Y1, X2, Y2 float64
	Class          string
}

type label struct {
	X, Y   float64
	Text   string
	Anchor string
}

type point struct {
	X, Y  float64
	Class string
	Title string
}

type bar struct {
	X, Y, W, H float64
	Class      string
	Title      string
}

// Chart geometry.
const (
	chartW    = 760
	chartH    = 220
	marginL   = 64
	marginR   = 12
	marginT   = 12
	marginB   = 28
	maxPoints = 5000
	maxBars   = 40
	barH      = 8
	barGap    = 4
)

// latencyChart plots each verified revocation of a target: when it was
// verified (x) and its latency (y, logarithmic), with the slow threshold.
func latencyChart(tl TargetLatency, slowMS float64) chart {
	pts := tl.Points
	note := ""
	if len(pts) > maxPoints {
		note = fmt.Sprintf("the latest %d of %d revocations", maxPoints, len(pts))
		pts = pts[len(pts)-maxPoints:]
	}
	c := chart{Title: tl.Target, Width: chartW, Height: chartH, Note: note}
	lo, hi := math.Inf(1), 0.0
	for _, p := range pts {
		lo, hi = math.Min(lo, math.Max(p.LatencyMS, 0.01)), math.Max(hi, p.LatencyMS)
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(math.Max(hi, lo*10))))
	if hi <= lo {
		hi = lo * 10
	}
	t0, t1 := pts[0].RevokedAt, pts[len(pts)-1].RevokedAt
	if !t1.After(t0) {
		t0, t1 = t0.Add(-time.Minute), t1.Add(time.Minute)
	}
	x := func(t time.Time) float64 {
		return marginL + float64(t.Sub(t0))/float64(t1.Sub(t0))*(chartW-marginL-marginR)
	}
	y := func(v float64) float64 {
		v = math.Max(v, lo)
		return chartH - marginB - (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(chartH-marginT-marginB)
	}
	c.axes()
	for d := lo; d <= hi*1.0001; d *= 10 {
		c.Lines = append(c.Lines, line{marginL, y(d), chartW - marginR, y(d), "grid"})
		c.Ticks = append(c.Ticks, label{marginL - 6, y(d) + 4, formatMS(d), "end"})
	}
	c.timeTicks(t0, t1, x)
	if slowMS >= lo && slowMS <= hi {
		c.Lines = append(c.Lines, line{marginL, y(slowMS), chartW - marginR, y(slowMS), "slow"})
		c.Ticks = append(c.Ticks, label{chartW - marginR, y(slowMS) - 4, "slow: " + formatMS(slowMS), "end"})
	}
	for _, p := range pts {
		cls := "pt"
		if p.LatencyMS > slowMS {
			cls = "pt slowpt"
		}
		c.Points = append(c.Points, point{x(p.RevokedAt), y(p.LatencyMS), cls,
			fmt.Sprintf("%s: %s (%s), verified %s", p.GrantID, formatMS(p.LatencyMS), p.EndReason, p.RevokedAt.Format(time.RFC3339))})
	}
	return c
}

// exposureChart draws the latest grants of a target as bars: active from
// start to end, then the residual window from end until revocation was
// verified (or until now, for a privilege still not revoked).
func exposureChart(target string, ws []GrantWindow, now time.Time) chart {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Start.Before(ws[j].Start) })
	note := ""
	if len(ws) > maxBars {
		note = fmt.Sprintf("the latest %d of %d grants", maxBars, len(ws))
		ws = ws[len(ws)-maxBars:]
	}
	h := float64(marginT + marginB + len(ws)*(barH+barGap))
	c := chart{Title: target, Width: chartW, Height: h, Note: note}
	t0, t1 := ws[0].Start, now
	for _, w := range ws {
		for _, t := range []time.Time{w.End, w.Revoked} {
			if t.After(t1) {
				t1 = t
			}
		}
	}
	if !t1.After(t0) {
		t1 = t0.Add(time.Minute)
	}
	x := func(t time.Time) float64 {
		return marginL + float64(t.Sub(t0))/float64(t1.Sub(t0))*(chartW-marginL-marginR)
	}
	c.Axes = append(c.Axes, line{marginL, h - marginB, chartW - marginR, h - marginB, "axis"}, line{marginL, marginT, marginL, h - marginB, "axis"})
	c.timeTicksAt(t0, t1, x, h)
	for i, w := range ws {
		y := float64(marginT + i*(barH+barGap))
		end := w.End
		if end.IsZero() {
			end = now
		}
		if end.Before(w.Start) {
			end = w.Start
		}
		c.Bars = append(c.Bars, bar{x(w.Start), y, math.Max(x(end)-x(w.Start), 1), barH, "active",
			fmt.Sprintf("%s: active %s to %s (%s)", w.GrantID, w.Start.Format(time.RFC3339), endText(w.End), w.State)})
		if w.End.IsZero() {
			continue
		}
		rev, cls := w.Revoked, "residual"
		if rev.IsZero() {
			rev, cls = now, "unrevoked"
		}
		if rev.After(w.End) {
			c.Bars = append(c.Bars, bar{x(w.End), y, math.Max(x(rev)-x(w.End), 1), barH, cls,
				fmt.Sprintf("%s: outlived its end by %s%s", w.GrantID, formatMS(msf(rev.Sub(w.End))), map[bool]string{true: " (still not verified revoked)", false: ""}[w.Revoked.IsZero()])})
		}
	}
	return c
}

func endText(t time.Time) string {
	if t.IsZero() {
		return "now (not ended)"
	}
	return t.Format(time.RFC3339)
}

func (c *chart) axes() {
	c.Axes = append(c.Axes, line{marginL, chartH - marginB, chartW - marginR, chartH - marginB, "axis"}, line{marginL, marginT, marginL, chartH - marginB, "axis"})
}

func (c *chart) timeTicks(t0, t1 time.Time, x func(time.Time) float64) {
	c.timeTicksAt(t0, t1, x, chartH)
}

// timeTicksAt labels five times along the x axis of a chart of height h.
func (c *chart) timeTicksAt(t0, t1 time.Time, x func(time.Time) float64, h float64) {
	layout := "01-02 15:04"
	if t1.Sub(t0) < 10*time.Minute {
		layout = "15:04:05"
	}
	for i := 0; i <= 4; i++ {
		t := t0.Add(time.Duration(float64(t1.Sub(t0)) * float64(i) / 4))
		anchor := "middle"
		switch i {
		case 0:
			anchor = "start"
		case 4:
			anchor = "end"
		}
		c.Ticks = append(c.Ticks, label{x(t), h - marginB + 16, t.UTC().Format(layout), anchor})
	}
}

// formatMS writes a latency for people.
func formatMS(v float64) string {
	switch {
	case v >= 60_000:
		return (time.Duration(v) * time.Millisecond).Round(time.Second).String()
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 1:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.2fms", v)
	}
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"f1": func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"ms": formatMS,
	"msp": func(v *float64) string {
		if v == nil {
			return "–"
		}
		return formatMS(*v)
	},
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"join":  func(xs []string) string { return strings.Join(xs, ", ") },
	"lower": strings.ToLower,
}).Parse(reportHTML))

const reportHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>Lapse zero-standing-privilege report</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 64rem; padding: 0 1rem; color: #1d2330; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; border-bottom: 1px solid #d8dce4; padding-bottom: .3rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eceef3; vertical-align: top; }
th { background: #f4f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary { display: flex; gap: 1rem; flex-wrap: wrap; } .card { border: 1px solid #d8dce4; border-radius: 6px; padding: .6rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.4rem; } .bad { color: #b3261e; } .good { color: #1e7b34; } .muted { color: #6b7280; }
svg { display: block; max-width: 100%; height: auto; margin: .3rem 0 1rem; }
svg text { font-size: 11px; fill: #4b5563; } .axis { stroke: #6b7280; stroke-width: 1; } .grid { stroke: #eceef3; stroke-width: 1; }
.slow { stroke: #b3261e; stroke-dasharray: 4 3; stroke-width: 1; } .pt { fill: #2563eb; fill-opacity: .7; } .slowpt { fill: #b3261e; }
.active { fill: #2563eb; fill-opacity: .55; } .residual { fill: #d97706; } .unrevoked { fill: #b3261e; }
code { font-size: .85em; }
</style>
</head>
<body>
<h1>Zero-standing-privilege report</h1>
<p class="muted">Generated {{ts .GeneratedAt}}{{if not .Since.IsZero}}, covering {{ts .Since}} to {{ts .GeneratedAt}}{{else}}, covering the whole store{{end}}. Slow revocation threshold: {{ms .SlowMS}}.</p>
<div class="summary">
<div class="card"><b class="{{if .OpenStanding}}bad{{else}}good{{end}}">{{.OpenStanding}}</b>standing privileges not removed</div>
<div class="card"><b class="{{if .Problems}}bad{{else}}good{{end}}">{{len .Problems}}</b>failed or slow revocations</div>
<div class="card"><b class="{{if .CanaryFailures}}bad{{else}}good{{end}}">{{.CanaryFailures}}</b>failed canary runs of {{len .Canaries}}</div>
</div>

<h2>Standing privileges found</h2>
{{if .Standing}}<table>
<tr><th>found</th><th>target</th><th>principal</th><th>kind</th><th>privileges</th><th>reason</th><th>removed</th></tr>
{{range .Standing}}<tr><td>{{ts .Time}}</td><td>{{.Target}}</td><td><code>{{.Principal}}</code></td><td>{{.Kind}}</td><td>{{join .Privileges}}</td><td>{{.Reason}}</td><td>{{if .Removed}}yes{{else}}<span class="bad">no</span>{{end}}</td></tr>
{{end}}</table>{{else}}<p class="good">None found by the drift reconciler in this window.</p>{{end}}

<h2>Grants by lane</h2>
{{if .Lanes}}<table>
<tr><th>lane</th><th>grants</th><th>revoked</th><th>live</th></tr>
{{range .Lanes}}<tr><td>{{.Lane}}</td><td class="num">{{.Grants}}</td><td class="num">{{.Revoked}}</td><td class="num">{{.Live}}</td></tr>
{{end}}</table>{{else}}<p class="muted">No grants in this window.</p>{{end}}

<h2>Revocation latency</h2>
<p class="muted">From the deadline, release or revocation until every checkpoint verified the privilege gone. Canary grants are not counted.</p>
{{if .Latency}}<table>
<tr><th>target</th><th>revocations</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>
{{range .Latency}}<tr><td>{{.Target}}</td><td class="num">{{.Count}}</td><td class="num">{{ms .P50MS}}</td><td class="num">{{ms .P90MS}}</td><td class="num">{{ms .P99MS}}</td><td class="num">{{ms .MaxMS}}</td></tr>
{{end}}</table>
{{range .LatencyCharts}}<h3>{{.Title}}: latency over time</h3>
{{template "chart" .}}{{end}}{{else}}<p class="muted">No verified revocations in this window.</p>{{end}}

<h2>Exposure windows</h2>
<p class="muted">Each bar is a grant: blue while it was meant to be active, orange for how long it outlived its end until revocation was verified, red where it still has not been.</p>
{{range .ExposureCharts}}<h3>{{.Title}}</h3>
{{template "chart" .}}{{else}}<p class="muted">No grants in this window.</p>{{end}}

<h2>Failed or slow revocations</h2>
{{if .Problems}}<table>
<tr><th>grant</th><th>target</th><th>entitlement</th><th>principal</th><th>state</th><th>why</th><th>failures</th><th>latency</th><th>last error</th></tr>
{{range .Problems}}<tr><td><code>{{.GrantID}}</code></td><td>{{.Target}}</td><td>{{.Entitlement}}</td><td><code>{{.Principal}}</code></td><td>{{.State}}</td><td class="bad">{{.Why}}</td><td class="num">{{.Failures}}</td><td class="num">{{if .LatencyMS}}{{ms .LatencyMS}}{{else}}–{{end}}</td><td>{{.LastError}}</td></tr>
{{end}}</table>{{else}}<p class="good">None.</p>{{end}}

<h2>Canary results</h2>
{{if .Canaries}}<table>
<tr><th>time</th><th>target</th><th>entitlement</th><th>result</th><th>revocation verified</th><th>new login refused</th><th>held session ended</th><th>surviving / problems</th></tr>
{{range .Canaries}}<tr><td>{{ts .Time}}</td><td>{{.Target}}</td><td>{{.Entitlement}}</td><td class="{{if eq .Result "passed"}}good{{else}}bad{{end}}">{{.Result}}</td><td class="num">{{msp .Timings.VerifiedMS}}</td><td class="num">{{msp .Timings.LoginDeniedMS}}</td><td class="num">{{msp .Timings.SessionEndedMS}}</td><td>{{join .Surviving}}{{if and .Surviving .Problems}}; {{end}}{{join .Problems}}</td></tr>
{{end}}</table>{{else}}<p class="muted">No session-level tests in this window (lapse zsp test, or zsp.canary.interval).</p>{{end}}
</body>
</html>
{{define "chart"}}<svg viewBox="0 0 {{f1 .Width}} {{f1 .Height}}" width="{{f1 .Width}}" height="{{f1 .Height}}" role="img" aria-label="{{.Title}}">
<title>{{.Title}}</title>
{{range .Lines}}<line x1="{{f1 .X1}}" y1="{{f1 .Y1}}" x2="{{f1 .X2}}" y2="{{f1 .Y2}}" class="{{.Class}}"/>
{{end}}{{range .Axes}}<line x1="{{f1 .X1}}" y1="{{f1 .Y1}}" x2="{{f1 .X2}}" y2="{{f1 .Y2}}" class="{{.Class}}"/>
{{end}}{{range .Ticks}}<text x="{{f1 .X}}" y="{{f1 .Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>
{{end}}{{range .Points}}<circle cx="{{f1 .X}}" cy="{{f1 .Y}}" r="2.5" class="{{.Class}}"><title>{{.Title}}</title></circle>
{{end}}{{range .Bars}}<rect x="{{f1 .X}}" y="{{f1 .Y}}" width="{{f1 .W}}" height="{{f1 .H}}" class="{{.Class}}"><title>{{.Title}}</title></rect>
{{end}}</svg>{{if .Note}}<p class="muted">{{.Note}}</p>{{end}}
{{end}}`
