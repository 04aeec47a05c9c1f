package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

func init() { policySubcommands = append(policySubcommands, (*Main).policyTestCommand) }

// fixtureReport is one fixture file's run, in lapse policy test's JSON
// output.
type fixtureReport struct {
	File string `json:"file"`
	// Policy is the configuration the fixture tests, and Version its
	// policy's content hash.
	Policy  string       `json:"policy,omitempty"`
	Version string       `json:"version,omitempty"`
	Errors  []diagnostic `json:"errors,omitempty"`
	Cases   []caseReport `json:"cases"`
}

type caseReport struct {
	Name   string   `json:"name"`
	Line   int      `json:"line"`
	Passed bool     `json:"passed"`
	Diffs  []string `json:"diffs,omitempty"`
	Notes  []string `json:"notes,omitempty"`
}

// testSummary is lapse policy test's JSON output.
type testSummary struct {
	Files  []*fixtureReport `json:"files"`
	Passed int              `json:"passed"`
	Failed int              `json:"failed"`
	// Broken counts the files that could not be run: a fixture or the
	// policy it names does not load.
	Broken int  `json:"broken"`
	OK     bool `json:"ok"`
}

func (m *Main) policyTestCommand() *cobra.Command {
	var output, run string
	c := &cobra.Command{
		Use:   "test [PATH ...]",
		Short: "Run the policy's decision tests (fixture files)",
		Long: `Run decision tests: fixture files that name a server configuration and list
cases, each a request by a principal at a time, with what the policy must
answer (outcome, rule, error code and field, duration, stages, and the
progress of a list of approvals). The cases run through the functions
lapse server uses to decide (docs/policy.md, "Testing a policy").

A PATH that is a directory means every fixture under it: files whose names
end in _test.yaml or _test.yml. A file named explicitly is run whatever its
name. Without a PATH, the current directory.

Each case prints PASS or FAIL with, for a failure, what differs field by
field. Exits 1 when a case fails or a fixture cannot be run.`,
		Example: `  lapse policy test examples/
  lapse policy test policy/tests/approvals_test.yaml --run 'break glass'`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := checkOutput(c, output); err != nil {
				return err
			}
			var filter *regexp.Regexp
			if run != "" {
				var err error
				if filter, err = regexp.Compile(run); err != nil {
					return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "run", "--run is not a regular expression: %v", err), command: c.CommandPath()}
				}
			}
			if len(args) == 0 {
				args = []string{"."}
			}
			files, err := fixtureFiles(args)
			if err != nil {
				return err
			}
			sum := runFixtures(files, filter)
			if output == outputJSON {
				if err := writeJSON(m.Stdout, sum); err != nil {
					return err
				}
			} else {
				printFixtures(m.Stdout, sum)
			}
			if !sum.OK {
				return serverErr(fmt.Errorf("policy test failed: %s", testCounts(sum)))
			}
			return nil
		},
	}
	c.Flags().StringVar(&run, "run", "", "run only the cases whose names match this regular expression")
	c.Flags().StringVarP(&output, "output", "o", outputTable, "output format: table or json")
	return c
}

// fixtureFiles expands the arguments: a file as given, a directory to
// every fixture under it (policy.FixtureSuffixes), in name order. A
// directory with none is an error, so a typo cannot pass as "no tests
// failed".
func fixtureFiles(args []string) ([]string, error) {
	var out []string
	for _, arg := range args {
		st, err := os.Stat(arg)
		if err != nil {
			return nil, lapse.FieldErrorf(lapse.ENOTFOUND, "path", "cannot read %s: %v", arg, unwrapPathErr(err))
		}
		if !st.IsDir() {
			out = append(out, arg)
			continue
		}
		var found []string
		err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && p != arg && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir // .git and the like
			}
			if !d.IsDir() && slices.ContainsFunc(policy.FixtureSuffixes, func(s string) bool { return strings.HasSuffix(d.Name(), s) }) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			return nil, lapse.FieldErrorf(lapse.EINVALID, "path", "cannot read %s: %v", arg, unwrapPathErr(err))
		}
		if len(found) == 0 {
			return nil, lapse.FieldErrorf(lapse.ENOTFOUND, "path", "no fixtures under %s: fixture files end in %s", arg, strings.Join(policy.FixtureSuffixes, " or "))
		}
		out = append(out, found...)
	}
	return out, nil
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

// runFixtures runs every case of every file. A policy named by several
// fixtures is loaded once.
func runFixtures(files []string, filter *regexp.Regexp) *testSummary {
	sum := &testSummary{Files: []*fixtureReport{}}
	type loaded struct {
		lp  *loadedPolicy
		err error
	}
	cache := map[string]loaded{}
	for _, file := range files {
		rep := &fixtureReport{File: shownPath(file), Cases: []caseReport{}}
		sum.Files = append(sum.Files, rep)
		fx, err := readFixture(file)
		if err != nil {
			rep.Errors = diagnostics(err, severityError, file)
			sum.Broken++
			continue
		}
		path := fx.Policy
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(file), path)
		}
		rep.Policy = shownPath(path)
		key, _ := filepath.Abs(path)
		l, ok := cache[key]
		if !ok {
			l.lp, l.err = loadPolicy(path)
			cache[key] = l
		}
		if l.err != nil {
			rep.Errors = diagnostics(l.err, severityError, path)
			sum.Broken++
			continue
		}
		rep.Version = l.lp.version()
		for _, tc := range fx.Cases {
			if filter != nil && !filter.MatchString(tc.Name) {
				continue
			}
			res := l.lp.pol.Run(tc)
			rep.Cases = append(rep.Cases, caseReport{Name: tc.Name, Line: tc.Line, Passed: res.Passed(), Diffs: res.Diffs, Notes: res.Notes})
			if res.Passed() {
				sum.Passed++
			} else {
				sum.Failed++
			}
		}
	}
	sum.OK = sum.Failed == 0 && sum.Broken == 0
	return sum
}

func readFixture(file string) (*policy.Fixture, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, &policy.FixtureError{File: file, Err: lapse.Errorf(lapse.EINVALID, "cannot read the fixture: %v", unwrapPathErr(err))}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxFixtureSize+1))
	if err != nil {
		return nil, &policy.FixtureError{File: file, Err: lapse.Errorf(lapse.EINVALID, "cannot read the fixture: %v", err)}
	}
	return policy.ParseFixture(file, data)
}

// printFixtures writes the run for people: per file a header naming the
// policy and its version, per case PASS or FAIL and, under a failure,
// each difference and note, then one summary line.
func printFixtures(w io.Writer, sum *testSummary) {
	for _, rep := range sum.Files {
		if rep.Version != "" {
			fmt.Fprintf(w, "%s  (policy %s, %s)\n", clean(rep.File), clean(rep.Policy), shortVersion(rep.Version))
		} else {
			fmt.Fprintln(w, clean(rep.File))
		}
		for _, d := range rep.Errors {
			fmt.Fprintf(w, "  ERROR  %s\n", d)
		}
		for _, cr := range rep.Cases {
			if cr.Passed {
				fmt.Fprintf(w, "  PASS  %s\n", clean(cr.Name))
				continue
			}
			fmt.Fprintf(w, "  FAIL  %s  (line %d)\n", clean(cr.Name), cr.Line)
			for _, d := range cr.Diffs {
				fmt.Fprintf(w, "          %s\n", clean(d))
			}
			for _, n := range cr.Notes {
				fmt.Fprintf(w, "          (%s)\n", clean(n))
			}
		}
	}
	if sum.OK {
		fmt.Fprintf(w, "ok: %s\n", testCounts(sum))
	} else {
		fmt.Fprintf(w, "FAIL: %s\n", testCounts(sum))
	}
}

// testCounts says "2 of 14 cases failed in 3 files, 1 fixture could not
// be run".
func testCounts(sum *testSummary) string {
	total := sum.Passed + sum.Failed
	files := plural(len(sum.Files), "file", "files")
	s := fmt.Sprintf("%s passed in %s", plural(total, "case", "cases"), files)
	switch {
	case total == 0:
		s = "no cases run in " + files
	case sum.Failed > 0:
		s = fmt.Sprintf("%d of %s failed in %s", sum.Failed, plural(total, "case", "cases"), files)
	}
	if sum.Broken > 0 {
		s += ", " + plural(sum.Broken, "fixture", "fixtures") + " could not be run"
	}
	return s
}

// shortVersion shortens a policy version for a header line:
// "sha256:0123456789ab".
func shortVersion(v string) string {
	if len(v) > len("sha256:")+12 {
		return v[:len("sha256:")+12]
	}
	return v
}
