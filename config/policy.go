package config

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/policy"
)

// Bounds on what a policy may say.
const (
	// MaxStages bounds approval.stages, and MaxStageGroups the groups of
	// one stage.
	MaxStages      = 5
	MaxStageGroups = 5
	// MaxOnCallMembers bounds an on-call list.
	MaxOnCallMembers = 10_000
	// MaxPolicyFiles bounds policy.files after directories are expanded.
	MaxPolicyFiles = 256
)

// rawPolicy is the policy section of the server configuration: more
// files holding entitlements, groups and on-call lists.
type rawPolicy struct {
	Files []string `yaml:"files"`
	// Watch, true when left out, reloads the policy when one of its
	// files changes; false leaves reloads to SIGHUP alone (for deploys
	// that write several files and then signal).
	Watch *bool `yaml:"watch"`
}

// rawPolicyFile is one policy file: the same keys as the server
// configuration's own entitlements, groups and on_call.
type rawPolicyFile struct {
	Entitlements []rawEntitlement     `yaml:"entitlements"`
	Groups       map[string][]string  `yaml:"groups"`
	OnCall       map[string]rawOnCall `yaml:"on_call"`
}

// rawOnCall is an on-call list: a file of principal IDs (one per line, #
// comments), or the members inline.
type rawOnCall struct {
	File    string   `yaml:"file"`
	Members []string `yaml:"members"`
}

type rawStage struct {
	Name   string          `yaml:"name"`
	Groups []rawStageGroup `yaml:"groups"`
}

type rawStageGroup struct {
	Name      string   `yaml:"name"`
	Required  int      `yaml:"required"`
	Approvers []string `yaml:"approvers"`
}

type rawBreakGlass struct {
	MaxDuration  *lapse.Duration `yaml:"max_duration"`
	ReviewWithin *lapse.Duration `yaml:"review_within"`
	Reviewers    []string        `yaml:"reviewers"`
	Condition    string          `yaml:"condition"`
}

type rawExtension struct {
	MaxTotal  *lapse.Duration `yaml:"max_total"`
	Reapprove *bool           `yaml:"reapprove"`
}

// entOrigin is where an entitlement was defined: the file's validator
// (for positions) and its index in that file's list.
type entOrigin struct {
	v *validator
	i int
}

// PolicyDocument returns the policy the configuration defines: the
// entitlement catalog, groups and on-call lists of the file and of every
// policy file.
func (c *Config) PolicyDocument() policy.Document {
	return policy.Document{Entitlements: c.Entitlements, Groups: c.Groups, OnCall: c.OnCall}
}

// policyFiles expands policy.files (files and directories of *.yaml and
// *.yml, in name order) relative to dir.
func (v *validator) policyFiles(raw *rawPolicy, rel func(string) string) []string {
	var out []string
	for i, p := range raw.Files {
		at := path("policy", "files", i)
		abs := rel(p)
		st, err := os.Stat(abs)
		if err != nil {
			v.errorf(at, "cannot read %s: %v", p, unwrapPathError(err))
			continue
		}
		if !st.IsDir() {
			out = append(out, abs)
			continue
		}
		entries, err := os.ReadDir(abs)
		if err != nil {
			v.errorf(at, "cannot read %s: %v", p, unwrapPathError(err))
			continue
		}
		var found []string
		for _, e := range entries {
			if n := e.Name(); !e.IsDir() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				found = append(found, filepath.Join(abs, n))
			}
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	if len(out) > MaxPolicyFiles {
		v.errorf(path("policy", "files"), "%d policy files; at most %d", len(out), MaxPolicyFiles)
		return nil
	}
	return out
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// loadPolicyFile reads one policy file and adds its entitlements, groups
// and on-call lists to c. Its errors are positioned in that file and
// collected into v.
func (v *validator) loadPolicyFile(c *Config, name string) {
	data, err := os.ReadFile(name)
	if err != nil {
		v.errs = append(v.errs, &Error{File: name, Err: invalid("cannot read policy file: %v", unwrapPathError(err))})
		return
	}
	if len(data) > MaxFileSize {
		v.errs = append(v.errs, &Error{File: name, Err: invalid("the file is larger than %d MiB", MaxFileSize>>20)})
		return
	}
	c.PolicyFiles = append(c.PolicyFiles, name)
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		if se, ok := syntaxError(name, err).(*Error); ok {
			v.errs = append(v.errs, se)
		}
		return
	}
	var body ast.Node
	for _, doc := range file.Docs {
		if doc != nil && !isNull(doc.Body) {
			body = doc.Body
			break
		}
	}
	if body == nil {
		return // an empty policy file defines nothing
	}
	var raw rawPolicyFile
	if err := decodeStrict(name, data, body, &raw); err != nil {
		if ce, ok := err.(*Error); ok {
			v.errs = append(v.errs, ce)
		} else {
			v.errs = append(v.errs, &Error{File: name, Err: err})
		}
		return
	}
	pv := &validator{file: name, src: data, root: body}
	pv.groups(c, raw.Groups)
	pv.onCall(c, raw.OnCall, filepath.Dir(name))
	pv.entitlements(c, raw.Entitlements)
	v.errs = append(v.errs, pv.errs...)
}

// entitlements validates a file's entitlement list into c.
func (v *validator) entitlements(c *Config, list []rawEntitlement) {
	for i := range list {
		name := list[i].Name
		if o, dup := c.entIndex[name]; dup && name != "" {
			line, _ := position(valueNode(mustLookup(o.v.root, path("entitlements", o.i))))
			v.errorf(path("entitlements", i, "name"), "duplicate entitlement %q (first defined at %s:%d)", name, filepath.Base(o.v.file), line)
			continue
		}
		c.entIndex[name] = entOrigin{v: v, i: i}
		if e := v.entitlement(c, i, &list[i]); e != nil {
			c.Entitlements = append(c.Entitlements, e)
		}
	}
}

// groups validates the policy's own groups into c.
func (v *validator) groups(c *Config, raw map[string][]string) {
	for _, name := range sortedKeys(raw) {
		at := path("groups", name)
		n, err := lapse.NormalizeID(name)
		if err != nil {
			v.errorf(at, "not a valid group name: %s", lapse.ErrorMessage(err))
			continue
		}
		if _, dup := c.Groups[n]; dup {
			v.errorf(at, "group %q is defined twice", n)
			continue
		}
		var members []string
		for j, m := range raw[name] {
			id, err := lapse.NormalizeID(m)
			switch {
			case err != nil:
				v.errorf(append(at, j), "not a valid principal ID: %s", lapse.ErrorMessage(err))
			case strings.HasPrefix(id, "group:"):
				v.errorf(append(at, j), "groups list principals, not other groups")
			case slices.Contains(members, id):
				v.errorf(append(at, j), "%q is listed twice", m)
			default:
				members = append(members, id)
			}
		}
		if c.Groups == nil {
			c.Groups = map[string][]string{}
		}
		c.Groups[n] = members
	}
}

// onCall reads the on-call lists into c; a file is relative to dir.
func (v *validator) onCall(c *Config, raw map[string]rawOnCall, dir string) {
	for _, name := range sortedKeys(raw) {
		at := path("on_call", name)
		oc := raw[name]
		n, err := lapse.NormalizeID(name)
		if err != nil {
			v.errorf(at, "not a valid list name: %s", lapse.ErrorMessage(err))
			continue
		}
		if _, dup := c.OnCall[n]; dup {
			v.errorf(at, "on-call list %q is defined twice", n)
			continue
		}
		ids := oc.Members
		switch {
		case oc.File != "" && len(oc.Members) > 0:
			v.errorf(at, "give file or members, not both")
			continue
		case oc.File != "":
			f := oc.File
			if !filepath.IsAbs(f) {
				f = filepath.Join(dir, f)
			}
			if ids, err = readOnCallFile(f); err != nil {
				v.errorf(append(at, "file"), "%s", lapse.ErrorMessage(err))
				continue
			}
			c.PolicyFiles = append(c.PolicyFiles, f)
		}
		if len(ids) > MaxOnCallMembers {
			v.errorf(at, "%d members; at most %d", len(ids), MaxOnCallMembers)
			continue
		}
		members := []string{}
		for _, m := range ids {
			id, err := lapse.NormalizeID(m)
			if err != nil {
				v.errorf(at, "%q is not a valid principal ID: %s", m, lapse.ErrorMessage(err))
				continue
			}
			if !slices.Contains(members, id) {
				members = append(members, id)
			}
		}
		if c.OnCall == nil {
			c.OnCall = map[string][]string{}
		}
		c.OnCall[n] = members
	}
}

// readOnCallFile reads one principal ID a line; blank lines and # comments
// are skipped.
func readOnCallFile(name string) ([]string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, invalid("cannot read the on-call list: %v", unwrapPathError(err))
	}
	if len(data) > MaxFileSize {
		return nil, invalid("the on-call list is larger than %d MiB", MaxFileSize>>20)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// condition compiles a CEL condition, recording an error at the field.
func (v *validator) condition(at []step, src string) string {
	if strings.TrimSpace(src) == "" {
		return ""
	}
	if _, err := policy.CompileCondition(src); err != nil {
		v.add(at, err)
		return ""
	}
	return src
}

// policyFields reads the human lane's per-entitlement policy into e:
// condition, ticket format, scheduled start, clock, break-glass and
// extensions.
func (v *validator) policyFields(at func(s ...step) []step, r *rawEntitlement, e *lapse.Entitlement) {
	e.Condition = v.condition(at("condition"), r.Condition)
	if r.TicketPattern != "" {
		if _, err := policy.CompileTicketPattern(r.TicketPattern); err != nil {
			v.add(at("ticket_pattern"), err)
		} else {
			e.TicketPattern = r.TicketPattern
		}
	}
	if r.ReasonPattern != "" {
		if _, err := policy.CompileTicketPattern(r.ReasonPattern); err != nil {
			v.add(at("reason_pattern"), err)
		} else {
			e.ReasonPattern = r.ReasonPattern
		}
	}
	if r.MaxScheduleAhead != nil {
		e.MaxScheduleAhead = *r.MaxScheduleAhead
		if e.MaxScheduleAhead.D() > 90*24*time.Hour {
			v.errorf(at("max_schedule_ahead"), "at most 90 days ahead")
		}
	}
	switch r.ClockStart {
	case "", "start", "approval":
		e.ClockStart = lapse.ClockAtStart
	case "request":
		e.ClockStart = lapse.ClockAtRequest
	default:
		v.errorf(at("clock_start"), "must be approval (the duration runs from the grant's start) or request (from the request's filing)")
	}
	if b := r.BreakGlass; b != nil {
		bg := &lapse.BreakGlassRule{Reviewers: v.principals(at("break_glass", "reviewers"), b.Reviewers)}
		switch {
		case b.MaxDuration == nil:
			v.errorf(at("break_glass", "max_duration"), "required: the longest a break-glass grant may last, shorter than max_duration")
		case e.MaxDuration > 0 && *b.MaxDuration > e.MaxDuration:
			v.errorf(at("break_glass", "max_duration"), "must not exceed the entitlement's max_duration (%s)", e.MaxDuration)
		default:
			bg.MaxDuration = *b.MaxDuration
		}
		if b.ReviewWithin == nil {
			v.errorf(at("break_glass", "review_within"), "required: how soon after the request someone else must review it, like 24h")
		} else {
			bg.ReviewWithin = *b.ReviewWithin
		}
		bg.Condition = v.condition(at("break_glass", "condition"), b.Condition)
		if len(bg.Reviewers) == 0 && len(e.Approval.AllApprovers()) == 0 {
			v.errorf(at("break_glass", "reviewers"), "required when the entitlement has no approvers: who reviews a break-glass request")
		}
		e.BreakGlass = bg
	}
	if x := r.Extension; x != nil {
		ext := &lapse.ExtensionRule{Reapprove: true}
		if x.Reapprove != nil {
			ext.Reapprove = *x.Reapprove
		}
		switch {
		case x.MaxTotal == nil:
			v.errorf(at("extension", "max_total"), "required: the longest a grant may last with its extensions")
		case e.MaxDuration > 0 && *x.MaxTotal < e.MaxDuration:
			v.errorf(at("extension", "max_total"), "must be at least max_duration (%s)", e.MaxDuration)
		default:
			ext.MaxTotal = *x.MaxTotal
		}
		e.Extension = ext
	}
}

// stages reads approval.stages.
func (v *validator) stages(at func(s ...step) []step, raw []rawStage) []lapse.ApprovalStage {
	if len(raw) > MaxStages {
		v.errorf(at("approval", "stages"), "%d stages; at most %d", len(raw), MaxStages)
		return nil
	}
	var out []lapse.ApprovalStage
	for i, rs := range raw {
		sat := func(s ...step) []step { return at(append([]step{"approval", "stages", i}, s...)...) }
		st := lapse.ApprovalStage{Name: rs.Name}
		if len(rs.Groups) == 0 {
			v.errorf(sat("groups"), "required: the groups that must approve in this stage")
		}
		if len(rs.Groups) > MaxStageGroups {
			v.errorf(sat("groups"), "%d groups; at most %d", len(rs.Groups), MaxStageGroups)
		}
		for j, rg := range rs.Groups {
			g := lapse.ApproverGroup{Name: rg.Name, Required: rg.Required, Approvers: v.principals(sat("groups", j, "approvers"), rg.Approvers)}
			switch {
			case rg.Required < 1 || rg.Required > MaxApprovals:
				v.errorf(sat("groups", j, "required"), "must be between 1 and %d", MaxApprovals)
			case len(rg.Approvers) == 0:
				v.errorf(sat("groups", j, "approvers"), "required: who may approve (principal IDs or group:NAME)")
			case !slices.ContainsFunc(g.Approvers, isGroup) && len(g.Approvers) < rg.Required:
				v.errorf(sat("groups", j, "required"), "needs %d approvals but only %d approvers are listed", rg.Required, len(g.Approvers))
			}
			st.Groups = append(st.Groups, g)
		}
		out = append(out, st)
	}
	return out
}
