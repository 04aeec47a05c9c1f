package policy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/lapsehq/lapse"
)

// FixtureSuffixes are the file name endings `lapse policy test` looks for
// when it is given a directory: decision tests live beside the policy
// they test, named like Go's tests (approvals_test.yaml), so that the
// policy files and the server configuration in the same directory are
// never mistaken for them.
var FixtureSuffixes = []string{"_test.yaml", "_test.yml"}

// MaxFixtureSize bounds a fixture file.
const MaxFixtureSize = 4 << 20

// Fixture is a file of decision tests (docs/policy.md, "Testing a
// policy"): the configuration whose policy they test and a table of
// cases, each a request by a principal at a time, with what the policy
// must answer.
type Fixture struct {
	// File is the fixture's path, as given.
	File string
	// Policy is the server configuration file the cases test, as the
	// fixture writes it: relative to the fixture's directory.
	Policy string
	Cases  []*Case
}

// Case is one decision test.
type Case struct {
	Name string
	// Line is where the case starts in its fixture.
	Line      int
	Now       time.Time
	Principal *lapse.Principal
	Input     lapse.RequestInput
	// Approvals are votes on the request, in the order they are cast, for
	// testing Progress.
	Approvals []*lapse.Approval
	Expect    Expect
}

// Expect is what a case requires. Only what it sets is compared, except
// Outcome, which every case names.
type Expect struct {
	Outcome Outcome
	Rule    string
	Error   *ExpectedError
	// Duration is the effective duration; 0 leaves it unchecked.
	Duration lapse.Duration
	// Stages are what a request waits for; nil leaves them unchecked.
	Stages   []ExpectedStage
	Progress *ExpectedProgress
}

// ExpectedError is a refusal's stable code and the field at fault.
type ExpectedError struct {
	Code  string
	Field string
}

// ExpectedStage is a stage as Decide returns it. An empty Name, a zero
// Required or nil Approvers leave that part unchecked.
type ExpectedStage struct {
	Name   string
	Groups []ExpectedGroup
}

// ExpectedGroup is one group of an ExpectedStage.
type ExpectedGroup struct {
	Name      string
	Required  int
	Approvers []string
}

// ExpectedProgress is what Progress must say of the case's approvals.
type ExpectedProgress struct {
	Done *bool
	// Stage names the first stage that has not passed: its name, or its
	// number (from 1) when it has none. Empty leaves it unchecked.
	Stage string
	// Missing is Progress.Missing ("1 more of security"); nil leaves it
	// unchecked.
	Missing []string
}

// The file's shape.
type rawFixture struct {
	Policy string    `yaml:"policy"`
	Now    string    `yaml:"now"`
	Cases  []rawCase `yaml:"cases"`
}

type rawCase struct {
	Name      string         `yaml:"name"`
	Now       string         `yaml:"now"`
	Principal rawPrincipal   `yaml:"principal"`
	Request   rawRequest     `yaml:"request"`
	Approvals []rawPrincipal `yaml:"approvals"`
	Expect    rawExpect      `yaml:"expect"`
}

type rawPrincipal struct {
	ID     string   `yaml:"id"`
	Kind   string   `yaml:"kind"`
	Name   string   `yaml:"name"`
	Groups []string `yaml:"groups"`
	Act    []string `yaml:"act"`
	// Decision is an approval's: approve (the default) or deny.
	Decision string `yaml:"decision"`
}

type rawRequest struct {
	Entitlement string `yaml:"entitlement"`
	Duration    string `yaml:"duration"`
	Reason      string `yaml:"reason"`
	Ticket      string `yaml:"ticket"`
	TaskID      string `yaml:"task_id"`
	BreakGlass  bool   `yaml:"break_glass"`
	StartsAt    string `yaml:"starts_at"`
}

type rawExpect struct {
	Outcome string `yaml:"outcome"`
	Rule    string `yaml:"rule"`
	Error   *struct {
		Code  string `yaml:"code"`
		Field string `yaml:"field"`
	} `yaml:"error"`
	Duration string `yaml:"duration"`
	Stages   []struct {
		Name   string `yaml:"name"`
		Groups []struct {
			Name      string   `yaml:"name"`
			Required  int      `yaml:"required"`
			Approvers []string `yaml:"approvers"`
		} `yaml:"groups"`
	} `yaml:"stages"`
	Progress *struct {
		Done    *bool    `yaml:"done"`
		Stage   string   `yaml:"stage"`
		Missing []string `yaml:"missing"`
	} `yaml:"progress"`
}

// FixtureError is an error in a fixture file, at a place: it reads
// "policy/approvals_test.yaml:14:7: cases[2].expect.outcome: what is
// wrong", like the configuration's errors. Err is a *lapse.Error with
// code EINVALID.
type FixtureError struct {
	File   string
	Line   int // 1-based; 0 for the whole file
	Column int
	Field  string
	Err    error
}

func (e *FixtureError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(lapse.ErrorMessage(e.Err))
	return b.String()
}

func (e *FixtureError) Unwrap() error { return e.Err }

var outcomes = []Outcome{Refused, AutoApproved, BreakGlass, NeedsApproval}

// ParseFixture reads a fixture held in memory; file names it in errors.
// Decoding is strict (an unknown key is an error), and principal IDs and
// groups are normalised as the identity layer normalises them, so a case
// tests what the server would see. Every error is a *FixtureError; all of
// them are returned, joined, in file order.
func ParseFixture(file string, data []byte) (*Fixture, error) {
	fail := func(line, col int, field string, format string, args ...any) error {
		return &FixtureError{File: file, Line: line, Column: col, Field: field, Err: lapse.Errorf(lapse.EINVALID, format, args...)}
	}
	if len(data) > MaxFixtureSize {
		return nil, fail(0, 0, "", "the file is larger than %d MiB", MaxFixtureSize>>20)
	}
	tree, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(file, err)
	}
	var raw rawFixture
	if err := yaml.UnmarshalWithOptions(data, &raw, yaml.Strict()); err != nil {
		return nil, yamlError(file, err)
	}
	fp := &fixtureParser{file: file, tree: tree}
	fx := &Fixture{File: file, Policy: raw.Policy}
	if raw.Policy == "" {
		fp.errorf("policy", "required: the server configuration whose policy the cases test, relative to this file")
	}
	var now time.Time
	if raw.Now != "" {
		now = fp.time("now", raw.Now)
	}
	if len(raw.Cases) == 0 {
		fp.errorf("cases", "required: at least one case")
	}
	names := map[string]int{}
	for i := range raw.Cases {
		if c := fp.parseCase(i, &raw.Cases[i], now); c != nil {
			if j, dup := names[c.Name]; dup {
				fp.errorf(fmt.Sprintf("cases[%d].name", i), "a case named %q is already at line %d", c.Name, j)
				continue
			}
			names[c.Name] = c.Line
			fx.Cases = append(fx.Cases, c)
		}
	}
	if err := fp.err(); err != nil {
		return nil, err
	}
	return fx, nil
}

// yamlError positions a YAML syntax or decoding error.
func yamlError(file string, err error) error {
	e := &FixtureError{File: file, Err: lapse.Errorf(lapse.EINVALID, "%v", err)}
	var ye yaml.Error
	if errors.As(err, &ye) {
		msg := ye.GetMessage()
		var ue *yaml.UnknownFieldError
		if errors.As(err, &ue) {
			msg = strings.Replace(ue.Message, "unknown field", "unknown key", 1)
		}
		e.Err = lapse.Errorf(lapse.EINVALID, "%s", msg)
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			e.Line, e.Column = tk.Position.Line, tk.Position.Column
		}
	}
	return e
}

type fixtureParser struct {
	file string
	tree *ast.File
	errs []*FixtureError
}

// position finds the node at field ("cases[2].principal.id"), or the
// closest enclosing one when the file leaves the field out.
func (fp *fixtureParser) position(field string) (line, col int) {
	for f := field; ; {
		if p, err := yaml.PathString("$." + f); err == nil {
			if n, err := p.FilterFile(fp.tree); err == nil && n != nil {
				if tk := n.GetToken(); tk != nil && tk.Position != nil {
					return tk.Position.Line, tk.Position.Column
				}
			}
		}
		i := strings.LastIndexAny(f, ".[")
		if i <= 0 {
			return 0, 0
		}
		f = f[:i]
	}
}

func (fp *fixtureParser) errorf(field, format string, args ...any) {
	line, col := fp.position(field)
	fp.errs = append(fp.errs, &FixtureError{File: fp.file, Line: line, Column: col, Field: field, Err: lapse.FieldErrorf(lapse.EINVALID, field, format, args...)})
}

func (fp *fixtureParser) err() error {
	if len(fp.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(fp.errs, func(a, b *FixtureError) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
	errs := make([]error, len(fp.errs))
	for i, e := range fp.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func (fp *fixtureParser) time(field, s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		fp.errorf(field, "not an RFC 3339 time like 2026-03-02T09:30:00Z")
	}
	return t
}

func (fp *fixtureParser) duration(field, s string) lapse.Duration {
	d, err := lapse.ParseDuration(s)
	if err != nil {
		fp.errorf(field, "not a duration like 15m or 8h")
	}
	return lapse.Duration(d)
}

// principal builds a principal as the identity layer would present it.
func (fp *fixtureParser) principal(at string, r *rawPrincipal) *lapse.Principal {
	pr := &lapse.Principal{Kind: lapse.KindHuman, Name: r.Name}
	if r.ID == "" {
		fp.errorf(at+".id", "required")
	} else if id, err := lapse.NormalizeID(r.ID); err != nil {
		fp.errorf(at+".id", "%s", lapse.ErrorMessage(err))
	} else {
		pr.ID = id
	}
	if r.Kind != "" {
		pr.Kind = lapse.PrincipalKind(r.Kind)
		if !pr.Kind.Valid() {
			fp.errorf(at+".kind", "must be human, service or agent, not %q", r.Kind)
		}
	}
	for j, g := range r.Groups {
		n, err := lapse.NormalizeID(strings.TrimPrefix(g, "group:"))
		if err != nil {
			fp.errorf(fmt.Sprintf("%s.groups[%d]", at, j), "%s", lapse.ErrorMessage(err))
			continue
		}
		pr.Groups = append(pr.Groups, n)
	}
	for j, a := range r.Act {
		n, err := lapse.NormalizeID(a)
		if err != nil {
			fp.errorf(fmt.Sprintf("%s.act[%d]", at, j), "%s", lapse.ErrorMessage(err))
			continue
		}
		pr.Act = append(pr.Act, n)
	}
	return pr
}

func (fp *fixtureParser) parseCase(i int, r *rawCase, now time.Time) *Case {
	at := func(f string) string { return fmt.Sprintf("cases[%d].%s", i, f) }
	before := len(fp.errs)
	c := &Case{Name: r.Name, Now: now}
	c.Line, _ = fp.position(fmt.Sprintf("cases[%d]", i))
	if r.Name == "" {
		fp.errorf(at("name"), "required: what the case shows, printed with PASS or FAIL")
	}
	if r.Now != "" {
		c.Now = fp.time(at("now"), r.Now)
	} else if now.IsZero() {
		fp.errorf(at("now"), "required here or at the top of the file: the time the request is decided (RFC 3339), so that time-of-day conditions are tested at a known time")
	}
	c.Principal = fp.principal(at("principal"), &r.Principal)
	if r.Principal.Decision != "" {
		fp.errorf(at("principal.decision"), "only an approval has a decision")
	}

	q := r.Request
	c.Input = lapse.RequestInput{Entitlement: q.Entitlement, Reason: q.Reason, Ticket: q.Ticket, TaskID: q.TaskID, BreakGlass: q.BreakGlass}
	if q.Entitlement == "" {
		fp.errorf(at("request.entitlement"), "required")
	}
	if q.Duration != "" {
		c.Input.Duration = fp.duration(at("request.duration"), q.Duration)
	}
	if q.StartsAt != "" {
		c.Input.StartsAt = fp.time(at("request.starts_at"), q.StartsAt)
	}

	for j := range r.Approvals {
		a := &r.Approvals[j]
		field := at(fmt.Sprintf("approvals[%d]", j))
		ap := &lapse.Approval{Approver: *fp.principal(field, a), Decision: lapse.DecisionApprove}
		switch a.Decision {
		case "", string(lapse.DecisionApprove):
		case string(lapse.DecisionDeny):
			ap.Decision = lapse.DecisionDeny
		default:
			fp.errorf(field+".decision", "must be approve or deny, not %q", a.Decision)
		}
		c.Approvals = append(c.Approvals, ap)
	}

	x := r.Expect
	c.Expect = Expect{Outcome: Outcome(x.Outcome), Rule: x.Rule}
	switch {
	case x.Outcome == "":
		fp.errorf(at("expect.outcome"), "required: one of refused, auto_approved, break_glass, needs_approval")
	case !slices.Contains(outcomes, c.Expect.Outcome):
		fp.errorf(at("expect.outcome"), "must be one of refused, auto_approved, break_glass, needs_approval, not %q", x.Outcome)
	}
	if x.Error != nil {
		if c.Expect.Outcome != Refused && x.Outcome != "" {
			fp.errorf(at("expect.error"), "only a refusal has an error: set outcome: refused")
		}
		c.Expect.Error = &ExpectedError{Code: x.Error.Code, Field: x.Error.Field}
		if x.Error.Code == "" && x.Error.Field == "" {
			fp.errorf(at("expect.error"), "name the code, the field or both")
		}
	}
	if x.Duration != "" {
		c.Expect.Duration = fp.duration(at("expect.duration"), x.Duration)
	}
	if x.Stages != nil {
		c.Expect.Stages = []ExpectedStage{}
	}
	for si, s := range x.Stages {
		es := ExpectedStage{Name: s.Name}
		for gi, g := range s.Groups {
			eg := ExpectedGroup{Name: g.Name, Required: g.Required}
			if g.Approvers != nil {
				eg.Approvers = []string{}
			}
			for ai, a := range g.Approvers {
				n, err := normalizeEntry(a)
				if err != nil {
					fp.errorf(at(fmt.Sprintf("expect.stages[%d].groups[%d].approvers[%d]", si, gi, ai)), "%s", lapse.ErrorMessage(err))
					continue
				}
				eg.Approvers = append(eg.Approvers, n)
			}
			es.Groups = append(es.Groups, eg)
		}
		c.Expect.Stages = append(c.Expect.Stages, es)
	}
	if pg := x.Progress; pg != nil {
		c.Expect.Progress = &ExpectedProgress{Done: pg.Done, Stage: pg.Stage, Missing: pg.Missing}
		if pg.Done != nil && *pg.Done && pg.Stage != "" {
			fp.errorf(at("expect.progress.stage"), "a request that is done has no current stage")
		}
	}
	if len(fp.errs) > before {
		return nil
	}
	return c
}

// normalizeEntry normalises an approver entry: a principal ID, or
// "group:NAME".
func normalizeEntry(s string) (string, error) {
	name, group := strings.CutPrefix(strings.TrimSpace(s), "group:")
	n, err := lapse.NormalizeID(name)
	if err != nil {
		return "", err
	}
	if group {
		return "group:" + n, nil
	}
	return n, nil
}

// Result is what a case gave.
type Result struct {
	Case     *Case
	Decision Decision
	// Progress is set when the case has approvals or expects progress.
	Progress *Progress
	// Diffs are the differences from what the case expects, one a line:
	// "outcome: want auto_approved, got needs_approval". None means it
	// passed.
	Diffs []string
	// Notes say more about what was got when the case failed: the
	// refusal, when the decision was one.
	Notes []string
}

// Passed reports whether the case got what it expects.
func (r *Result) Passed() bool { return len(r.Diffs) == 0 }

// Run runs one case: Decide on its request, Progress on its approvals,
// both exactly as the broker calls them.
func (p *Policy) Run(c *Case) *Result {
	in := c.Input // Decide normalises its input; the case stays as written
	pr := *c.Principal
	res := &Result{Case: c, Decision: p.Decide(&pr, &in, c.Now)}
	d, x := res.Decision, c.Expect
	diff := func(field string, want, got any) {
		res.Diffs = append(res.Diffs, fmt.Sprintf("%s: want %v, got %v", field, want, got))
	}
	if d.Outcome != x.Outcome {
		diff("outcome", x.Outcome, d.Outcome)
	}
	if x.Rule != "" && d.Rule != x.Rule {
		diff("rule", x.Rule, d.Rule)
	}
	if x.Error != nil {
		code, field := lapse.ErrorCode(d.Err), lapse.ErrorField(d.Err)
		switch {
		case d.Err == nil:
			diff("error", describeExpected(x.Error), "none")
		default:
			if x.Error.Code != "" && code != x.Error.Code {
				diff("error.code", x.Error.Code, code)
			}
			if x.Error.Field != "" && field != x.Error.Field {
				diff("error.field", x.Error.Field, orNone(field))
			}
		}
	}
	if x.Duration != 0 && d.Duration != x.Duration.D() {
		diff("duration", short(x.Duration.D()), short(d.Duration))
	}
	if x.Stages != nil {
		res.Diffs = append(res.Diffs, diffStages(x.Stages, d.Stages)...)
	}
	if len(c.Approvals) > 0 || x.Progress != nil {
		if e := p.Entitlement(c.Input.Entitlement); e != nil {
			rule := e.RuleFor(pr.Kind)
			pg := p.Progress(rule, c.Principal, c.Approvals)
			res.Progress = &pg
			if xp := x.Progress; xp != nil {
				if xp.Done != nil && pg.Done != *xp.Done {
					diff("progress.done", *xp.Done, pg.Done)
				}
				got := "(done)"
				if stages := rule.StageList(); pg.Stage < len(stages) {
					got = stageName(stages[pg.Stage], pg.Stage)
				}
				if xp.Stage != "" && got != xp.Stage {
					diff("progress.stage", xp.Stage, got)
				}
				if xp.Missing != nil && !slices.Equal(xp.Missing, pg.Missing) {
					diff("progress.missing", list(xp.Missing), list(pg.Missing))
				}
			}
		} else if x.Progress != nil {
			diff("progress", "progress", fmt.Sprintf("none: no entitlement named %s", c.Input.Entitlement))
		}
	}
	if !res.Passed() && d.Err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("refused by %s: %s (code: %s%s)", d.Rule, lapse.ErrorMessage(d.Err), lapse.ErrorCode(d.Err), fieldSuffix(lapse.ErrorField(d.Err))))
	}
	return res
}

func diffStages(want []ExpectedStage, got []lapse.ApprovalStage) []string {
	var out []string
	diff := func(field string, w, g any) { out = append(out, fmt.Sprintf("%s: want %v, got %v", field, w, g)) }
	if len(want) != len(got) {
		diff("stages", plural(len(want), "stage"), plural(len(got), "stage"))
		return out
	}
	for i, ws := range want {
		gs := got[i]
		at := fmt.Sprintf("stages[%d]", i)
		if ws.Name != "" && ws.Name != gs.Name {
			diff(at+".name", ws.Name, orNone(gs.Name))
		}
		if len(ws.Groups) != len(gs.Groups) {
			diff(at+".groups", plural(len(ws.Groups), "group"), plural(len(gs.Groups), "group"))
			continue
		}
		for j, wg := range ws.Groups {
			gg := gs.Groups[j]
			at := fmt.Sprintf("%s.groups[%d]", at, j)
			if wg.Name != "" && wg.Name != gg.Name {
				diff(at+".name", wg.Name, orNone(gg.Name))
			}
			if wg.Required != 0 && wg.Required != gg.Required {
				diff(at+".required", wg.Required, gg.Required)
			}
			// Approvers are a set: the order a file lists them in decides
			// nothing.
			if wg.Approvers != nil {
				w, g := slices.Sorted(slices.Values(wg.Approvers)), slices.Sorted(slices.Values(gg.Approvers))
				if !slices.Equal(w, g) {
					diff(at+".approvers", list(w), list(g))
				}
			}
		}
	}
	return out
}

func describeExpected(e *ExpectedError) string {
	switch {
	case e.Code != "" && e.Field != "":
		return e.Code + " on " + e.Field
	case e.Code != "":
		return e.Code
	}
	return "an error on " + e.Field
}

func list(s []string) string { return "[" + strings.Join(s, ", ") + "]" }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func fieldSuffix(f string) string {
	if f == "" {
		return ""
	}
	return ", field: " + f
}
