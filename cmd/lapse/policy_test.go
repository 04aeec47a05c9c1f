package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// update rewrites the golden files under testdata/ with what the tests
// got: go test ./cmd/lapse -run Policy -update, then review the diff.
var update = flag.Bool("update", false, "rewrite the golden files in testdata/ with what the tests got")

const policyTestdata = "testdata/policy"

// golden compares got with the golden file testdata/policy/name. The
// policy version in got is replaced by {{VERSION}} first: it hashes the
// whole catalog as JSON, so any new field of lapse.Entitlement changes
// it, and what these files check is the output around it (the version
// itself is checked by TestPolicyCheckVersion).
func golden(t *testing.T, name, got string, versions ...string) {
	t.Helper()
	for _, v := range versions {
		got = strings.ReplaceAll(got, v, "{{VERSION}}")
		got = strings.ReplaceAll(got, shortVersion(v), "{{VERSION}}")
	}
	path := filepath.Join(policyTestdata, name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run '%s' -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -run '%s' -update accepts it):\n%s", path, t.Name(), lineDiff(string(want), got))
	}
}

// lineDiff shows the lines that differ, "-" for the golden file's and "+"
// for what was got.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  -%s\n  +%s\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// versionOf is the version of the policy a configuration defines.
func versionOf(t *testing.T, path string) string {
	t.Helper()
	lp, err := loadPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	return lp.pol.Version()
}

// TestPolicyTestExamples: the examples' decision tests pass, so the
// examples say what they claim.
func TestPolicyTestExamples(t *testing.T) {
	out, _, err := runLapse(t, "policy", "test", "../../examples/")
	if err != nil {
		t.Fatalf("lapse policy test ../../examples/: %v\n%s", err, out)
	}
	if strings.Contains(out, "FAIL") || !strings.Contains(out, "\nok: ") {
		t.Fatalf("examples' fixtures do not all pass:\n%s", out)
	}
	for _, f := range []string{"db_test.yaml", "web_test.yaml", "payments_test.yaml"} {
		if !strings.Contains(out, "examples/policy/tests/"+f) {
			t.Errorf("fixture %s was not run:\n%s", f, out)
		}
	}
}

// TestPolicyTestFails: a fixture whose expectations are wrong fails with
// each difference field by field, and lapse exits 1.
func TestPolicyTestFails(t *testing.T) {
	out, _, err := runLapse(t, "policy", "test", policyTestdata+"/wrong_test.yaml")
	if got := exitStatus(err); got != exitError {
		t.Fatalf("exit status %d, want %d (err %v)", got, exitError, err)
	}
	golden(t, "wrong_test.golden", out, versionOf(t, policyTestdata+"/lapse.yaml"))

	// The same run as JSON: one document, the same verdicts.
	js, _, err := runLapse(t, "policy", "test", policyTestdata+"/wrong_test.yaml", "-o", "json")
	if err == nil {
		t.Fatal("-o json: no error for failing cases")
	}
	var sum testSummary
	if err := json.Unmarshal([]byte(js), &sum); err != nil {
		t.Fatalf("-o json: %v\n%s", err, js)
	}
	if sum.Passed != 1 || sum.Failed != 6 || sum.OK || len(sum.Files) != 1 || sum.Files[0].Cases[1].Diffs[0] != "outcome: want auto_approved, got needs_approval" {
		t.Errorf("-o json: %+v", sum)
	}
}

// TestPolicyTestRun: --run selects cases by name.
func TestPolicyTestRun(t *testing.T) {
	out, _, err := runLapse(t, "policy", "test", policyTestdata+"/wrong_test.yaml", "--run", "^right")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "PASS  right") || strings.Contains(out, "  FAIL  ") || !strings.Contains(out, "ok: 1 case passed in 1 file") {
		t.Errorf("--run ^right:\n%s", out)
	}
	if _, _, err := runLapse(t, "policy", "test", "--run", "(", policyTestdata); exitStatus(err) != exitUsage {
		t.Errorf("--run '(': %v, want a usage error", err)
	}
}

// TestPolicyTestBroken: a fixture with mistakes is not run; every mistake
// is reported at its line.
func TestPolicyTestBroken(t *testing.T) {
	out, _, err := runLapse(t, "policy", "test", policyTestdata+"/broken_test.yaml")
	if got := exitStatus(err); got != exitError {
		t.Fatalf("exit status %d, want %d (err %v)", got, exitError, err)
	}
	golden(t, "broken_test.golden", out)
}

// TestPolicyTestPaths: a directory without fixtures is an error, not an
// empty success; a missing path too.
func TestPolicyTestPaths(t *testing.T) {
	for _, p := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		_, _, err := runLapse(t, "policy", "test", p)
		if lapse.ErrorCode(err) != lapse.ENOTFOUND || lapse.ErrorField(err) != "path" || exitStatus(err) != exitError {
			t.Errorf("policy test %s: %v, want not_found on path", p, err)
		}
	}
	// A fixture whose policy does not load is reported, positioned.
	dir := t.TempDir()
	fx := filepath.Join(dir, "x_test.yaml")
	if err := os.WriteFile(fx, []byte("policy: nope.yaml\nnow: 2026-03-03T10:00:00Z\ncases:\n  - name: a\n    principal: {id: a}\n    request: {entitlement: x}\n    expect: {outcome: refused}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runLapse(t, "policy", "test", dir)
	if exitStatus(err) != exitError || !strings.Contains(out, "ERROR  ") || !strings.Contains(out, "nope.yaml: cannot read configuration") {
		t.Errorf("fixture of a missing policy: %v\n%s", err, out)
	}
}

// TestPolicyCheckExamples: the examples compile and lint clean, even
// with --strict.
func TestPolicyCheckExamples(t *testing.T) {
	path := "../../examples/policy/lapse.yaml"
	out, _, err := runLapse(t, "policy", "check", "--config", path, "--strict")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "policy "+versionOf(t, path)) || !strings.HasSuffix(out, "ok: no errors, no warnings\n") {
		t.Errorf("output:\n%s", out)
	}
}

// TestPolicyCheckLint: every lint warning, positioned in the policy file
// that has it; warnings alone pass, and fail with --strict.
func TestPolicyCheckLint(t *testing.T) {
	path := policyTestdata + "/lint.yaml"
	out, _, err := runLapse(t, "policy", "check", "--config", path)
	if err != nil {
		t.Fatalf("warnings only, without --strict: %v\n%s", err, out)
	}
	golden(t, "lint.golden", out, versionOf(t, path))

	_, _, err = runLapse(t, "policy", "check", "--config", path, "--strict")
	if exitStatus(err) != exitError {
		t.Errorf("--strict: %v, want exit status %d", err, exitError)
	}

	js, _, _ := runLapse(t, "policy", "check", "--config", path, "-o", "json")
	var rep checkReport
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, js)
	}
	var codes []string
	for _, w := range rep.Warnings {
		if w.Line == 0 || !strings.HasSuffix(w.File, "lint.d/lint.yaml") || w.Severity != severityWarning {
			t.Errorf("warning not positioned in its policy file: %+v", w)
		}
		codes = append(codes, w.Code)
	}
	for _, want := range []string{policy.LintNobodyApproves, policy.LintQuorumUnreachable, policy.LintSelfBlocks, policy.LintNobodyRequests,
		policy.LintNobodyReviews, policy.LintUnknownOnCall, policy.LintEmptyOnCall, policy.LintLateReview, policy.LintMachineWaits, policy.LintTicketOptional} {
		if !slices.Contains(codes, want) {
			t.Errorf("no %s warning in %v", want, codes)
		}
	}
	if !rep.OK || rep.Version == "" || len(rep.Errors) != 0 {
		t.Errorf("report: %+v", rep)
	}
}

// TestPolicyCheckErrors: errors in the configuration and in a policy file,
// each at its file, line and column; exit status 1; no version.
func TestPolicyCheckErrors(t *testing.T) {
	out, _, err := runLapse(t, "policy", "check", "--config", policyTestdata+"/errors.yaml")
	if got := exitStatus(err); got != exitError {
		t.Fatalf("exit status %d, want %d (err %v)", got, exitError, err)
	}
	golden(t, "errors.golden", out)

	if _, _, err := runLapse(t, "policy", "check"); exitStatus(err) != exitUsage || lapse.ErrorField(err) != "config" {
		t.Errorf("without --config: %v, want a usage error on config", err)
	}
}

// TestPolicyCheckVersion: the version printed is the content hash the
// server records, and changes when an on-call list changes.
func TestPolicyCheckVersion(t *testing.T) {
	src, err := os.ReadFile(policyTestdata + "/lapse.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "lapse.yaml")
	if err := os.WriteFile(path, src, 0o600); err != nil {
		t.Fatal(err)
	}
	before := versionOf(t, path)
	out, _, err := runLapse(t, "policy", "check", "-c", path)
	if err != nil || !strings.Contains(out, "policy "+before+" ") {
		t.Fatalf("%v: version %s not in\n%s", err, before, out)
	}
	rotated := strings.Replace(string(src), "dba: {members: [dmitri]}", "dba: {members: [dana]}", 1)
	if err := os.WriteFile(path, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	if after := versionOf(t, path); after == before || !strings.HasPrefix(after, "sha256:") {
		t.Errorf("an on-call rotation kept the version %s (now %s)", before, after)
	}
}

// TestPolicyCheckTargets: with --targets the escalation lint the server
// runs at start runs too: a token whose groups claim names an approver
// group is what the server refuses.
func TestPolicyCheckTargets(t *testing.T) {
	path := writeServerConfig(t, `data_dir: {{DIR}}
sealing_key: {file: sealing.key}
targets:
  api:
    kind: token
    config: {issuer: "http://127.0.0.1:8700", audience: api, generate_key: true}
groups:
  leads: [lena]
entitlements:
  - name: api/read
    target: api
    max_duration: 1h
    approval: {required: 1, approvers: ["group:leads"]}
    spec: {scopes: [read]}
  - name: api/lead
    target: api
    max_duration: 1h
    approval: {required: 1, approvers: ["group:leads"]}
    spec: {scopes: [read], claims: {groups: [leads]}}
`)
	out, _, err := runLapse(t, "policy", "check", "-c", path)
	if err != nil || !strings.Contains(out, "escalation lint skipped") {
		t.Fatalf("without --targets: %v\n%s", err, out)
	}
	out, _, err = runLapse(t, "policy", "check", "-c", path, "--targets")
	if exitStatus(err) != exitError || !strings.Contains(out, "which approves requests") || strings.Contains(out, "skipped") {
		t.Errorf("--targets: %v\n%s", err, out)
	}
}

// TestPolicyExplain: the checks in order, the outcome, break glass and the
// stages with their members, the principal left out; and as JSON.
func TestPolicyExplain(t *testing.T) {
	path := policyTestdata + "/lapse.yaml"
	v := versionOf(t, path)
	out, _, err := runLapse(t, "policy", "explain", "db/write", "--config", path, "--principal", "Dana", "--at", "2026-03-03T10:00:00Z",
		"--reason", "fix the orders table", "--ticket", "OPS-12")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "explain_write.golden", out, v)

	out, _, err = runLapse(t, "policy", "explain", "db/ddl", "-c", path, "--principal", "erik", "--group", "engineering",
		"--at", "2026-03-03T10:00:00Z", "--start-at", "1h")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "explain_ddl.golden", out, v)

	js, _, err := runLapse(t, "policy", "explain", "db/read", "-c", path, "--principal", "db-helper", "--kind", "agent",
		"--group", "engineering", "--act", "dmitri", "--at", "2026-03-03T10:00:00Z", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "explain_agent.json", js, v)
	var x policy.Explanation
	if err := json.Unmarshal([]byte(js), &x); err != nil {
		t.Fatal(err)
	}
	if x.Outcome != policy.NeedsApproval || len(x.Stages) != 1 || slices.Contains(x.Stages[0].Groups[0].Approvers[0].Members, "dmitri") {
		t.Errorf("agent for dmitri: %+v", x)
	}
}

// TestPolicyExplainUsage: a missing principal, a bad kind or time is a
// usage error (exit 2) that names the flag; an unknown entitlement is an
// answer (refused, exit 0).
func TestPolicyExplainUsage(t *testing.T) {
	path := policyTestdata + "/lapse.yaml"
	for _, tc := range []struct {
		field string
		args  []string
	}{
		{"principal", []string{"db/read", "-c", path}},
		{"kind", []string{"db/read", "-c", path, "--principal", "a", "--kind", "robot"}},
		{"at", []string{"db/read", "-c", path, "--principal", "a", "--at", "tomorrow"}},
		{"start-at", []string{"db/read", "-c", path, "--principal", "a", "--start-at", "later"}},
		{"for", []string{"db/read", "-c", path, "--principal", "a", "--for", "long"}},
		{"config", []string{"db/read", "--principal", "a"}},
		{"output", []string{"db/read", "-c", path, "--principal", "a", "-o", "yaml"}},
	} {
		_, _, err := runLapse(t, append([]string{"policy", "explain"}, tc.args...)...)
		if exitStatus(err) != exitUsage || lapse.ErrorField(err) != tc.field {
			t.Errorf("%v: %v, want a usage error on %s", tc.args, err, tc.field)
		}
	}
	out, _, err := runLapse(t, "policy", "explain", "db/nope", "-c", path, "--principal", "a", "--at", "2026-03-03T10:00:00Z")
	if err != nil || !strings.Contains(out, "refused by catalog") {
		t.Errorf("unknown entitlement: %v\n%s", err, out)
	}
}
