// Package config reads Lapse's YAML configuration: where to listen, the
// store, the sealing key, the lifecycle engine's tuning, the targets (one
// connector instance each) and the catalog of entitlements.
//
// Decoding is strict: an unknown key is an error, and every error names the
// file, line, column and field ("lapse.yaml:14:5: targets.demo-api.config.
// audience: ..."), including errors in a connector's own configuration block,
// which the connector decodes through Target.Decode. Relative paths (data_dir,
// secret files, a SQLite database) are relative to the directory of the
// configuration file, not to the working directory. See
// docs/configuration.md for every field.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/workload"
)

// Defaults for fields the file leaves out.
const (
	DefaultListen         = "127.0.0.1:8700"
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "json"
	DefaultStoreDriver    = "sqlite"
	DefaultPendingTimeout = 24 * time.Hour
	// DefaultAuditKeyFile and DefaultCheckpointDir are the audit log's key
	// and checkpoint directory under data_dir when audit does not say.
	DefaultAuditKeyFile  = "audit.key"
	DefaultCheckpointDir = "checkpoints"
	// SQLiteFile is the database file name under data_dir when the SQLite
	// store has no dsn.
	SQLiteFile = "lapse.db"
	// SealingKeySize is the length of the sealing key (AES-256).
	SealingKeySize = 32
	// MaxApprovals bounds approval.required: a quorum larger than this is
	// a typo, not a policy.
	MaxApprovals = 10
	// MaxConcurrency bounds a target's concurrency.
	MaxConcurrency = 1024
	// MaxFileSize bounds the configuration file.
	MaxFileSize = 4 << 20
	// MaxDescriptionLength bounds an entitlement's description.
	MaxDescriptionLength = 1024
	// MaxUses bounds an entitlement's max_uses.
	MaxUses = 1_000_000_000
)

// Config is a loaded and validated configuration.
type Config struct {
	// File is the path the configuration was read from.
	File string
	// Dir is the absolute directory relative paths were resolved against.
	Dir string

	// Listen is the HTTP listen address (host:port).
	Listen string
	// DataDir is the absolute directory for the SQLite database and files
	// that connectors keep (signing keys).
	DataDir    string
	Log        Log
	Store      Store
	SealingKey lapse.SecretRef
	Engine     Engine
	Audit      Audit
	// Workload is the machine lane's trust: the issuers whose workload
	// tokens Lapse accepts at the token endpoint.
	Workload Workload
	// OIDC is the human lane's sign-in: the identity providers whose ID
	// tokens Lapse accepts (docs/oidc.md).
	OIDC OIDC
	// Targets are the configured connector instances, by name.
	Targets map[string]*Target
	// Entitlements is the catalog: this file's, then each policy file's,
	// in file order.
	Entitlements []*lapse.Entitlement
	// Groups are the groups the policy defines itself, and OnCall its
	// on-call lists, by name (docs/policy.md).
	Groups map[string][]string
	OnCall map[string][]string
	// PolicyFiles are the other files the policy was read from (policy
	// files and on-call lists), absolute: the server watches them, and
	// reloads when one changes.
	PolicyFiles []string
	// PolicyWatch says whether the server reloads when a policy file
	// changes (policy.watch, default true); it always reloads on SIGHUP.
	PolicyWatch bool
	// ZSP is zero-standing-privilege assurance: the default exposure
	// limit, the drift reconciler and the canary (docs/zsp.md).
	ZSP ZSP
	// Escalation is what happens to entitlements whose grants carry
	// admin powers (config/escalation.go).
	Escalation Escalation
	// Notify is notifications by webhook (docs/notifications.md).
	Notify Notify

	root     ast.Node
	entIndex map[string]entOrigin
}

// Log configures the process's structured logs.
type Log struct {
	Level  string // debug, info, warn or error
	Format string // json or text
}

// Store selects the database.
type Store struct {
	Driver string // sqlite or postgres
	// DSN is the data source name: a file path for SQLite, a connection
	// string or URL for PostgreSQL. It may hold a password, so it is a
	// secret reference.
	DSN lapse.SecretRef
	// SkipMigrations makes the server check that the schema is current
	// instead of migrating it: for a database role that may not change the
	// schema (docs/audit.md, "Database roles"). Migrations then run as the
	// schema's owner with `lapse admin migrate`.
	SkipMigrations bool
}

// Engine tunes the lifecycle engine. Zero values mean the engine's own
// defaults (see docs/configuration.md).
type Engine struct {
	Lease        time.Duration
	BatchSize    int
	PollInterval time.Duration
	RetryBase    time.Duration
	RetryMax     time.Duration
	OverdueRate  float64
	OverdueGrace time.Duration
	ClaimAhead   time.Duration
}

// Audit configures the tamper-evident audit log (docs/audit.md). Paths
// are absolute; the defaults are in the data directory.
type Audit struct {
	// SigningKeyFile holds the log's Ed25519 key in note format; it is
	// generated on first start when missing. Replicas must share it.
	SigningKeyFile string
	// CheckpointDir receives every signed checkpoint. Put it somewhere the
	// database's owner cannot rewrite.
	CheckpointDir string
	// CheckpointURL, when set, receives every checkpoint by HTTP POST.
	CheckpointURL string
	// Interval is how often new events are integrated and signed; 0 means
	// the log's default (1s).
	Interval time.Duration
	// SinkGrace is how long publishing checkpoints to a sink may keep
	// failing before the log counts as degraded and new approvals and
	// grants stop; 0 means at once.
	SinkGrace time.Duration
}

// Workload configures workload identity (docs/machine-lane.md). Paths in
// the issuers are absolute. Every mapping has compiled and type-checked.
type Workload struct {
	Issuers []workload.IssuerConfig
}

// Target is one connector instance.
type Target struct {
	Name string
	// Kind selects the connector implementation (see connector/registry).
	Kind string
	// Concurrency bounds concurrent connector calls; 0 means the engine's
	// default.
	Concurrency int

	file string
	src  []byte   // the whole file, for anchors the block refers to
	node ast.Node // the config block, undecoded
}

// Decode strictly decodes the target's config block into v (a pointer to
// the connector's own configuration type). Unknown keys and bad values are
// *Error values that name the file, line and field. A missing block leaves v
// untouched.
func (t *Target) Decode(v any) error {
	return decodeStrict(t.file, t.src, t.node, v)
}

// rawConfig is the file's shape; Parse validates it into a Config.
type rawConfig struct {
	Listen       string               `yaml:"listen"`
	DataDir      string               `yaml:"data_dir"`
	Log          rawLog               `yaml:"log"`
	Store        rawStore             `yaml:"store"`
	SealingKey   lapse.SecretRef      `yaml:"sealing_key"`
	Engine       rawEngine            `yaml:"engine"`
	Audit        rawAudit             `yaml:"audit"`
	Workload     rawWorkload          `yaml:"workload"`
	OIDC         rawOIDC              `yaml:"oidc"`
	Targets      map[string]rawTarget `yaml:"targets"`
	Entitlements []rawEntitlement     `yaml:"entitlements"`
	Groups       map[string][]string  `yaml:"groups"`
	OnCall       map[string]rawOnCall `yaml:"on_call"`
	Policy       rawPolicy            `yaml:"policy"`
	ZSP          rawZSP               `yaml:"zsp"`
	Escalation   ast.Node             `yaml:"escalation"` // config/escalation.go
	Notify       rawNotify            `yaml:"notify"`
}

type rawLog struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type rawStore struct {
	Driver         string          `yaml:"driver"`
	DSN            lapse.SecretRef `yaml:"dsn"`
	SkipMigrations bool            `yaml:"skip_migrations"`
}

type rawEngine struct {
	Lease        lapse.Duration `yaml:"lease"`
	BatchSize    int            `yaml:"batch_size"`
	PollInterval lapse.Duration `yaml:"poll_interval"`
	RetryBase    lapse.Duration `yaml:"retry_base"`
	RetryMax     lapse.Duration `yaml:"retry_max"`
	OverdueRate  float64        `yaml:"overdue_rate"`
	OverdueGrace lapse.Duration `yaml:"overdue_grace"`
	ClaimAhead   lapse.Duration `yaml:"claim_ahead"`
}

type rawAudit struct {
	SigningKeyFile string         `yaml:"signing_key_file"`
	CheckpointDir  string         `yaml:"checkpoint_dir"`
	CheckpointURL  string         `yaml:"checkpoint_url"`
	Interval       lapse.Duration `yaml:"interval"`
	SinkGrace      lapse.Duration `yaml:"sink_grace"`
}

type rawWorkload struct {
	Issuers []workload.IssuerConfig `yaml:"issuers"`
}

type rawTarget struct {
	Kind        string   `yaml:"kind"`
	Concurrency int      `yaml:"concurrency"`
	Config      ast.Node `yaml:"config"`
}

type rawEntitlement struct {
	Name            string          `yaml:"name"`
	Description     string          `yaml:"description"`
	Target          string          `yaml:"target"`
	Lanes           []string        `yaml:"lanes"`
	Requesters      []string        `yaml:"requesters"`
	DefaultDuration *lapse.Duration `yaml:"default_duration"`
	MaxDuration     *lapse.Duration `yaml:"max_duration"`
	RequireReason   bool            `yaml:"require_reason"`
	RequireTicket   bool            `yaml:"require_ticket"`
	PendingTimeout  *lapse.Duration `yaml:"pending_timeout"`
	Approval        *rawApproval    `yaml:"approval"`
	Spec            map[string]any  `yaml:"spec"`
	Exposure        *rawExposure    `yaml:"exposure"`
	Agents          *rawAgents      `yaml:"agents"`
	Fence           string          `yaml:"fence"`
	MaxUses         *int            `yaml:"max_uses"`
	// The human lane's policy (config/policy.go).
	Condition        string          `yaml:"condition"`
	TicketPattern    string          `yaml:"ticket_pattern"`
	ReasonPattern    string          `yaml:"reason_pattern"`
	MaxScheduleAhead *lapse.Duration `yaml:"max_schedule_ahead"`
	ClockStart       string          `yaml:"clock_start"`
	BreakGlass       *rawBreakGlass  `yaml:"break_glass"`
	Extension        *rawExtension   `yaml:"extension"`
}

// rawAgents is an entitlement's policy for the agent lane (docs/agents.md).
type rawAgents struct {
	Approval string `yaml:"approval"`
}

type rawApproval struct {
	Auto      bool       `yaml:"auto"`
	Required  int        `yaml:"required"`
	Approvers []string   `yaml:"approvers"`
	Stages    []rawStage `yaml:"stages"`
	AutoWhen  string     `yaml:"auto_when"`
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{File: path, Err: invalid("cannot read configuration: %v", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Err: invalid("cannot read configuration: %v", err)}
	}
	return Parse(path, data)
}

// Parse validates a configuration held in memory. filename is used in
// error messages and to resolve relative paths.
func Parse(filename string, data []byte) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{File: filename, Err: invalid("the file is larger than %d MiB", MaxFileSize>>20)}
	}
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, syntaxError(filename, err)
	}
	var body ast.Node
	for _, doc := range file.Docs {
		if doc == nil || isNull(doc.Body) {
			continue
		}
		if body != nil {
			e := &Error{File: filename, Err: invalid("more than one YAML document; put everything in one")}
			e.Line, e.Column = position(doc.Body)
			return nil, e
		}
		body = doc.Body
	}
	if body == nil {
		return nil, &Error{File: filename, Err: invalid("the configuration is empty")}
	}
	if _, ok := mappingValues(body); !ok {
		e := &Error{File: filename, Err: invalid("the configuration must be a mapping of keys such as listen, store, targets")}
		e.Line, e.Column = position(body)
		return nil, e
	}
	var raw rawConfig
	if err := decodeStrict(filename, data, body, &raw); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(filename))
	if err != nil {
		return nil, &Error{File: filename, Err: invalid("cannot resolve the configuration's directory: %v", err)}
	}
	v := &validator{file: filename, src: data, root: body}
	c := v.validate(&raw, dir)
	if err := v.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// syntaxError positions a YAML syntax error.
func syntaxError(file string, err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		e := &Error{File: file, Err: invalid("%s", ye.GetMessage())}
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			e.Line, e.Column = tk.Position.Line, tk.Position.Column
		}
		return e
	}
	return &Error{File: file, Err: invalid("%v", err)}
}

// validator collects every semantic error of a file, so one run shows them
// all.
type validator struct {
	file string
	src  []byte
	root ast.Node
	errs []*Error
}

// errorf records an EINVALID error at the field named by steps.
func (v *validator) errorf(steps []step, format string, args ...any) {
	v.add(steps, invalid(format, args...))
}

func (v *validator) add(steps []step, err error) {
	v.errs = append(v.errs, errorAt(v.file, v.root, steps, err))
}

// err returns nil, the single error, or all errors joined, in file order.
func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	sort.SliceStable(v.errs, func(i, j int) bool {
		if v.errs[i].Line != v.errs[j].Line {
			return v.errs[i].Line < v.errs[j].Line
		}
		return v.errs[i].Column < v.errs[j].Column
	})
	if len(v.errs) == 1 {
		return v.errs[0]
	}
	errs := make([]error, len(v.errs))
	for i, e := range v.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// errorAt positions err at the field named by steps, or at the closest
// enclosing block when the field is absent.
func errorAt(file string, root ast.Node, steps []step, err error) *Error {
	node, _ := lookup(root, steps)
	e := &Error{File: file, Path: joinPath(steps), Err: err}
	e.Line, e.Column = position(node)
	return e
}

// mustLookup returns the node at steps, or the closest enclosing one.
func mustLookup(root ast.Node, steps []step) ast.Node {
	n, _ := lookup(root, steps)
	return n
}

// path builds a step list; it exists to keep call sites short.
func path(steps ...step) []step { return steps }

var (
	entitlementNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$`)
	targetNameRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	kindRE            = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

// MaxTargetNameLength bounds target names, which appear in URLs.
const MaxTargetNameLength = 64

func (v *validator) validate(raw *rawConfig, dir string) *Config {
	c := &Config{
		File:     v.file,
		Dir:      dir,
		root:     v.root,
		Targets:  map[string]*Target{},
		entIndex: map[string]entOrigin{},
	}
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}

	c.Listen = raw.Listen
	if c.Listen == "" {
		c.Listen = DefaultListen
	} else if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		v.errorf(path("listen"), "not a host:port address like 127.0.0.1:8700")
	}

	c.DataDir = rel(raw.DataDir)
	if c.DataDir == "" {
		c.DataDir = dir
	}

	c.Log = Log{Level: raw.Log.Level, Format: raw.Log.Format}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	} else if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		v.errorf(path("log", "level"), "must be one of debug, info, warn, error")
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	} else if c.Log.Format != "json" && c.Log.Format != "text" {
		v.errorf(path("log", "format"), "must be json or text")
	}

	c.Store = Store{Driver: raw.Store.Driver, DSN: raw.Store.DSN, SkipMigrations: raw.Store.SkipMigrations}
	switch c.Store.Driver {
	case "":
		c.Store.Driver = DefaultStoreDriver
	case "sqlite", "postgres":
	default:
		v.errorf(path("store", "driver"), "must be sqlite or postgres")
	}
	if c.Store.DSN.IsZero() {
		if c.Store.Driver == "postgres" {
			v.errorf(path("store", "dsn"), "required for the postgres driver")
		} else {
			c.Store.DSN = lapse.SecretRef{Value: filepath.Join(c.DataDir, SQLiteFile)}
		}
	}
	c.Store.DSN.File = rel(c.Store.DSN.File)

	c.SealingKey = raw.SealingKey
	if c.SealingKey.IsZero() {
		v.errorf(path("sealing_key"), "required: 32 random bytes in base64, best from a file or the environment (see docs/configuration.md)")
	}
	c.SealingKey.File = rel(c.SealingKey.File)

	c.Engine = v.engine(&raw.Engine)

	c.Audit = Audit{
		SigningKeyFile: rel(raw.Audit.SigningKeyFile),
		CheckpointDir:  rel(raw.Audit.CheckpointDir),
		CheckpointURL:  raw.Audit.CheckpointURL,
		Interval:       time.Duration(raw.Audit.Interval),
		SinkGrace:      time.Duration(raw.Audit.SinkGrace),
	}
	if c.Audit.SigningKeyFile == "" {
		c.Audit.SigningKeyFile = filepath.Join(c.DataDir, DefaultAuditKeyFile)
	}
	if c.Audit.CheckpointDir == "" {
		c.Audit.CheckpointDir = filepath.Join(c.DataDir, DefaultCheckpointDir)
	}
	if u := c.Audit.CheckpointURL; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			v.errorf(path("audit", "checkpoint_url"), "not an http(s) URL")
		}
	}
	if c.Audit.Interval < 0 || c.Audit.Interval > time.Hour {
		v.errorf(path("audit", "interval"), "must be between 0 (the default, 1s) and 1h")
	}
	if c.Audit.SinkGrace < 0 || c.Audit.SinkGrace > 24*time.Hour {
		v.errorf(path("audit", "sink_grace"), "must be between 0 (degraded at the first failed publication) and 24h")
	}

	c.Workload = v.workload(&raw.Workload, rel)
	c.OIDC = v.oidc(&raw.OIDC, rel)
	c.ZSP = v.zsp(&raw.ZSP)

	names := make([]string, 0, len(raw.Targets))
	for name := range raw.Targets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rt := raw.Targets[name]
		at := func(s ...step) []step { return append([]step{"targets", name}, s...) }
		if len(name) > MaxTargetNameLength || !targetNameRE.MatchString(name) {
			v.errorf(at(), "target names are lowercase letters, digits, - and _ (at most %d)", MaxTargetNameLength)
		}
		if rt.Kind == "" {
			v.errorf(at("kind"), "required: the connector kind, e.g. token")
		} else if !kindRE.MatchString(rt.Kind) {
			v.errorf(at("kind"), "not a connector kind")
		}
		if rt.Concurrency < 0 || rt.Concurrency > MaxConcurrency {
			v.errorf(at("concurrency"), "must be between 1 and %d (or left out for the default)", MaxConcurrency)
		}
		c.Targets[name] = &Target{Name: name, Kind: rt.Kind, Concurrency: rt.Concurrency, file: v.file, src: v.src, node: rt.Config}
	}

	v.groups(c, raw.Groups)
	v.onCall(c, raw.OnCall, dir)
	v.entitlements(c, raw.Entitlements)
	c.PolicyWatch = raw.Policy.Watch == nil || *raw.Policy.Watch
	for _, f := range v.policyFiles(&raw.Policy, rel) {
		v.loadPolicyFile(c, f)
	}
	v.canaryEntitlements(c, raw.ZSP.Canary.Entitlements)
	c.Escalation = v.escalation(c, raw.Escalation)
	c.Notify = v.notify(c, &raw.Notify, rel)
	return c
}

func (v *validator) engine(r *rawEngine) Engine {
	e := Engine{
		Lease:        r.Lease.D(),
		BatchSize:    r.BatchSize,
		PollInterval: r.PollInterval.D(),
		RetryBase:    r.RetryBase.D(),
		RetryMax:     r.RetryMax.D(),
		OverdueRate:  r.OverdueRate,
		OverdueGrace: r.OverdueGrace.D(),
		ClaimAhead:   r.ClaimAhead.D(),
	}
	bound := func(key string, d, lo, hi time.Duration) {
		if d != 0 && (d < lo || d > hi) {
			v.errorf(path("engine", key), "must be between %s and %s (or left out for the default)", lo, hi)
		}
	}
	bound("lease", e.Lease, time.Second, time.Hour)
	bound("poll_interval", e.PollInterval, 10*time.Millisecond, 5*time.Minute)
	bound("retry_base", e.RetryBase, 10*time.Millisecond, time.Hour)
	bound("retry_max", e.RetryMax, 100*time.Millisecond, 24*time.Hour)
	bound("overdue_grace", e.OverdueGrace, 0, time.Hour)
	bound("claim_ahead", e.ClaimAhead, 10*time.Millisecond, 10*time.Minute)
	if e.RetryBase != 0 && e.RetryMax != 0 && e.RetryMax < e.RetryBase {
		v.errorf(path("engine", "retry_max"), "must not be less than retry_base")
	}
	if e.BatchSize < 0 || e.BatchSize > 100000 {
		v.errorf(path("engine", "batch_size"), "must be between 1 and 100000 (or left out for the default)")
	}
	if e.OverdueRate < 0 || e.OverdueRate > 1e6 || e.OverdueRate != e.OverdueRate {
		v.errorf(path("engine", "overdue_rate"), "must be a rate per second between 0 and 1000000 (0 or left out for the default)")
	}
	return e
}

// workload validates the trusted issuers, compiling their CEL mappings, and
// resolves their relative paths.
func (v *validator) workload(r *rawWorkload, rel func(string) string) Workload {
	w := Workload{Issuers: r.Issuers}
	for i := range w.Issuers {
		w.Issuers[i].JWKSFile = rel(w.Issuers[i].JWKSFile)
		w.Issuers[i].CAFile = rel(w.Issuers[i].CAFile)
	}
	for _, err := range workload.ValidateAll(w.Issuers) {
		v.errs = append(v.errs, workloadIssuers.at(v.file, v.root, err))
	}
	return w
}

// workloadIssuers positions the errors of the workload verifier's issuers.
var workloadIssuers = issuerList[*workload.IssuerError]{"workload", func(ie *workload.IssuerError) (int, error) { return ie.Index, ie.Err }}

// WorkloadError positions an error of building the workload verifier (a
// key file that cannot be read, a bad CA file) at the issuer's field.
func (c *Config) WorkloadError(err error) error { return workloadIssuers.positioned(c, err) }

// issuerList positions the errors of a verifier's list of issuers. Both
// verifiers (workload and OIDC) wrap a problem in an IssuerError type of
// their own, E, whose parts are the issuer's index and the cause, naming
// the option.
type issuerList[E error] struct {
	section string // the configuration's key: workload, oidc
	parts   func(E) (index int, cause error)
}

// at positions err at its issuer's field, or at the list when it is no E.
func (l issuerList[E]) at(file string, root ast.Node, err error) *Error {
	steps := []step{l.section, "issuers"}
	if ie, ok := errors.AsType[E](err); ok {
		i, cause := l.parts(ie)
		steps = append(steps, i)
		if f := lapse.ErrorField(cause); f != "" {
			steps = append(steps, fieldSteps(f)...)
		}
		err = cause
	}
	return errorAt(file, root, steps, err)
}

// positioned positions an error of building the verifier, unless it is
// nil or positioned already.
func (l issuerList[E]) positioned(c *Config, err error) error {
	var ce *Error
	if err == nil || errors.As(err, &ce) {
		return err
	}
	return l.at(c.File, c.root, err)
}

// entitlement validates one catalog entry; it returns nil if the entry is
// unusable (its errors are recorded).
func (v *validator) entitlement(c *Config, i int, r *rawEntitlement) *lapse.Entitlement {
	at := func(s ...step) []step { return append([]step{"entitlements", i}, s...) }
	before := len(v.errs)
	e := &lapse.Entitlement{
		Name:          r.Name,
		Description:   r.Description,
		Target:        r.Target,
		RequireReason: r.RequireReason,
		RequireTicket: r.RequireTicket,
		Spec:          r.Spec,
	}

	switch {
	case r.Name == "":
		v.errorf(at("name"), "required")
	case len(r.Name) > lapse.MaxIDLength:
		v.errorf(at("name"), "longer than %d characters", lapse.MaxIDLength)
	case !entitlementNameRE.MatchString(r.Name):
		v.errorf(at("name"), "entitlement names are lowercase segments of letters, digits, '.', '_' and '-' separated by '/', like prod-db/read")
	}
	if len(r.Description) > MaxDescriptionLength {
		v.errorf(at("description"), "longer than %d characters", MaxDescriptionLength)
	}

	if r.Target == "" {
		v.errorf(at("target"), "required: the name of a configured target")
	} else if _, ok := c.Targets[r.Target]; !ok {
		v.errorf(at("target"), "unknown target %q%s", r.Target, known(c.Targets))
	}

	if len(r.Lanes) == 0 {
		e.Lanes = []lapse.PrincipalKind{lapse.KindHuman}
	}
	for j, l := range r.Lanes {
		k := lapse.PrincipalKind(l)
		switch {
		case !k.Valid():
			v.errorf(at("lanes", j), "unknown lane %q: must be human, service or agent", l)
		case slices.Contains(e.Lanes, k):
			v.errorf(at("lanes", j), "lane %q is listed twice", l)
		default:
			e.Lanes = append(e.Lanes, k)
		}
	}

	e.Requesters = v.principals(at("requesters"), r.Requesters)

	if r.MaxDuration == nil {
		v.errorf(at("max_duration"), "required: the longest a grant may last, like 1h")
	} else {
		e.MaxDuration = *r.MaxDuration
		if d := e.MaxDuration.D(); d <= 0 {
			v.errorf(at("max_duration"), "must be positive")
		}
	}
	if r.DefaultDuration == nil {
		e.DefaultDuration = e.MaxDuration
	} else {
		e.DefaultDuration = *r.DefaultDuration
		switch d := e.DefaultDuration.D(); {
		case d <= 0:
			v.errorf(at("default_duration"), "must be positive")
		case r.MaxDuration != nil && d > e.MaxDuration.D():
			v.errorf(at("default_duration"), "must not exceed max_duration (%s)", e.MaxDuration)
		}
	}
	if r.PendingTimeout == nil {
		e.PendingTimeout = lapse.Duration(DefaultPendingTimeout)
	} else {
		e.PendingTimeout = *r.PendingTimeout
		if e.PendingTimeout.D() <= 0 {
			v.errorf(at("pending_timeout"), "must be positive")
		}
	}

	agentsNeedHuman := v.agents(at, r, e)
	switch a := r.Approval; {
	case a != nil && len(a.Stages) > 0:
		if a.Auto {
			v.errorf(at("approval", "auto"), "stages and auto: true exclude each other")
		}
		if a.Required != 0 || len(a.Approvers) != 0 {
			v.errorf(at("approval", "stages"), "give stages, or required with approvers, not both")
		}
		e.Approval.Stages = v.stages(at, a.Stages)
	case a == nil:
		v.errorf(at("approval"), "required: either auto: true, or required: N with approvers")
	case a.Auto && agentsNeedHuman:
		// Granted at once to others; an agent's request waits for these
		// approvers (required defaults to 1).
		e.Approval.Auto = true
		e.Approval.Required = a.Required
		e.Approval.Approvers = v.principals(at("approval", "approvers"), a.Approvers)
		switch {
		case a.Required < 0 || a.Required > MaxApprovals:
			v.errorf(at("approval", "required"), "must be between 1 and %d (the approvals an agent's request needs), or left out for 1", MaxApprovals)
		case len(a.Approvers) == 0:
			v.errorf(at("approval", "approvers"), "required with agents.approval: human: who decides an agent's request (principal IDs or group:NAME)")
		case !slices.ContainsFunc(e.Approval.Approvers, isGroup) && len(e.Approval.Approvers) < max(a.Required, 1):
			v.errorf(at("approval", "required"), "needs %d approvals but only %d approvers are listed", max(a.Required, 1), len(e.Approval.Approvers))
		}
	case a.Auto:
		e.Approval.Auto = true
		if a.Required != 0 {
			v.errorf(at("approval", "required"), "must be left out when auto is true (unless agents.approval is human)")
		}
		if len(a.Approvers) != 0 {
			v.errorf(at("approval", "approvers"), "must be left out when auto is true (unless agents.approval is human)")
		}
	default:
		e.Approval.Required = a.Required
		e.Approval.Approvers = v.principals(at("approval", "approvers"), a.Approvers)
		switch {
		case a.Required < 1 || a.Required > MaxApprovals:
			v.errorf(at("approval", "required"), "must be between 1 and %d, or set auto: true", MaxApprovals)
		case len(a.Approvers) == 0:
			v.errorf(at("approval", "approvers"), "required: who may approve (principal IDs or group:NAME)")
		case !slices.ContainsFunc(e.Approval.Approvers, isGroup) && len(e.Approval.Approvers) < a.Required:
			v.errorf(at("approval", "required"), "needs %d approvals but only %d approvers are listed", a.Required, len(e.Approval.Approvers))
		}
	}

	if a := r.Approval; a != nil && a.AutoWhen != "" {
		if a.Auto {
			v.errorf(at("approval", "auto_when"), "auto_when decides when a request that otherwise needs approvers is approved at once; with auto: true every request is")
		} else {
			e.Approval.AutoWhen = v.condition(at("approval", "auto_when"), a.AutoWhen)
		}
	}
	v.policyFields(at, r, e)

	if r.MaxUses != nil {
		// Whether the target can count uses is the connector's to say
		// (connector.UseLimiter); the server checks it when it opens them.
		if n := *r.MaxUses; n < 1 || n > MaxUses {
			v.errorf(at("max_uses"), "must be between 1 and %d, or left out for no limit", MaxUses)
		} else {
			e.MaxUses = n
		}
	}

	e.Exposure = v.exposure(at, r.Exposure, e, c.ZSP.MaxExposure)

	if len(v.errs) > before {
		return nil
	}
	return e
}

// agents reads an entitlement's agent lane policy and fence into e. It
// reports whether an agent's request must wait for a human.
func (v *validator) agents(at func(s ...step) []step, r *rawEntitlement, e *lapse.Entitlement) bool {
	switch r.Fence {
	case "", "none":
		e.Fence = lapse.FenceNone
	case lapse.FenceWait, lapse.FenceFail:
		e.Fence = r.Fence
	default:
		v.errorf(at("fence"), "must be none, wait or fail, not %q", r.Fence)
	}
	if r.Agents == nil {
		return false
	}
	if !slices.Contains(e.Lanes, lapse.KindAgent) {
		v.errorf(at("agents"), "the agent lane is not in lanes: add agent to lanes, or leave agents out")
	}
	switch r.Agents.Approval {
	case lapse.AgentApprovalPolicy, lapse.AgentApprovalHuman:
		e.Agents = &lapse.AgentRule{Approval: r.Agents.Approval}
	case "":
		v.errorf(at("agents", "approval"), "required: human (an agent's request always waits for a human approver) or policy")
	default:
		v.errorf(at("agents", "approval"), "must be human or policy, not %q", r.Agents.Approval)
	}
	return r.Agents.Approval == lapse.AgentApprovalHuman
}

// principals normalises a list of principal IDs and "group:NAME" entries.
func (v *validator) principals(at []step, list []string) []string {
	var out []string
	for j, entry := range list {
		norm, err := NormalizePrincipal(entry)
		if err != nil {
			v.add(append(at, j), err)
			continue
		}
		if slices.Contains(out, norm) {
			v.errorf(append(at, j), "%q is listed twice", entry)
			continue
		}
		out = append(out, norm)
	}
	return out
}

// NormalizePrincipal returns the canonical form of a principal ID or a
// "group:NAME" entry, keeping the group: prefix.
func NormalizePrincipal(entry string) (string, error) {
	name, group := strings.CutPrefix(strings.TrimSpace(entry), "group:")
	n, err := lapse.NormalizeID(name)
	if err != nil {
		return "", lapse.Errorf(lapse.EINVALID, "%q is not a valid %s: %s", entry, map[bool]string{true: "group name", false: "principal ID"}[group], lapse.ErrorMessage(err))
	}
	if group {
		return "group:" + n, nil
	}
	return n, nil
}

func isGroup(s string) bool { return strings.HasPrefix(s, "group:") }

// known lists the configured target names for an error message.
func known(targets map[string]*Target) string {
	if len(targets) == 0 {
		return " (no targets are configured)"
	}
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return " (configured: " + strings.Join(names, ", ") + ")"
}

// TargetNames returns the target names in sorted order.
func (c *Config) TargetNames() []string {
	names := make([]string, 0, len(c.Targets))
	for n := range c.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// EntitlementError positions err at a field ("spec", "target", or "" for
// the whole entry) of the named entitlement, for errors found after
// loading, such as a connector rejecting a spec. When err is a *lapse.Error
// whose Field names something inside that field ("spec.claims.tier"), the
// position is that of the inner key where the file has it. It returns err
// unchanged if the entitlement is not in the file.
func (c *Config) EntitlementError(name, field string, err error) error {
	o, ok := c.entIndex[name]
	if !ok || err == nil {
		return err
	}
	return errorWithin(o.v.file, o.v.root, []step{"entitlements", o.i}, field, err)
}

// TargetError positions err at a field ("kind", "config", or "" for the
// whole entry) of the named target, for errors found when the connector is
// opened. A connector's *lapse.Error whose Field names one of its options
// ("audience", "consumers[1]") is positioned at that option inside the
// config block. An error that is already positioned is returned unchanged.
func (c *Config) TargetError(name, field string, err error) error {
	var ce *Error
	if err == nil || errors.As(err, &ce) {
		return err
	}
	if _, ok := c.Targets[name]; !ok {
		return err
	}
	return errorWithin(c.File, c.root, []step{"targets", name}, field, err)
}

// errorWithin positions err at field under prefix in file, refined by the
// Field of a *lapse.Error in err's chain.
func errorWithin(file string, root ast.Node, prefix []step, field string, err error) error {
	steps := prefix
	if field != "" {
		steps = append(steps, field)
	}
	if inner := lapse.ErrorField(err); inner != "" {
		rel := strings.TrimPrefix(inner, field+".")
		if field == "config" || rel != inner {
			steps = append(steps, fieldSteps(rel)...)
		}
	}
	return errorAt(file, root, steps, err)
}

// fieldSteps splits a field name such as "claims.tier" or "consumers[1]"
// into path steps.
func fieldSteps(field string) []step {
	var out []step
	for _, part := range strings.Split(field, ".") {
		name, rest, _ := strings.Cut(part, "[")
		if name != "" {
			out = append(out, name)
		}
		for rest != "" {
			idx, after, ok := strings.Cut(rest, "]")
			n, err := strconv.Atoi(idx)
			if !ok || err != nil {
				break
			}
			out = append(out, n)
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return out
}

// ResolveStoreDSN reads the store's data source name from its source. A
// relative SQLite path is resolved against the configuration's directory.
func (c *Config) ResolveStoreDSN() (string, error) {
	dsn, err := c.Store.DSN.Resolve()
	if err != nil {
		return "", errorAt(c.File, c.root, path("store", "dsn"), invalid("%v", err))
	}
	if dsn == "" {
		return "", errorAt(c.File, c.root, path("store", "dsn"), invalid("the secret is empty"))
	}
	if c.Store.Driver == "sqlite" && !strings.HasPrefix(dsn, "file:") && !strings.HasPrefix(dsn, ":memory:") && !filepath.IsAbs(dsn) {
		dsn = filepath.Join(c.Dir, dsn)
	}
	return dsn, nil
}

// ResolveSealingKey reads and decodes the sealing key: 32 bytes in standard
// or URL-safe base64. Errors name the source, never the value.
func (c *Config) ResolveSealingKey() ([]byte, error) {
	at := path("sealing_key")
	if c.SealingKey.IsZero() {
		return nil, errorAt(c.File, c.root, at, invalid("required"))
	}
	s, err := c.SealingKey.Resolve()
	if err != nil {
		return nil, errorAt(c.File, c.root, at, invalid("%v", err))
	}
	key, err := DecodeSealingKey(s)
	if err != nil {
		return nil, errorAt(c.File, c.root, at, fmt.Errorf("%s: %w", c.SealingKey, err))
	}
	return key, nil
}

// DecodeSealingKey decodes a base64 sealing key and checks its length.
func DecodeSealingKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != SealingKeySize {
				return nil, lapse.Errorf(lapse.EINVALID, "the sealing key must be %d bytes, it is %d", SealingKeySize, len(key))
			}
			return key, nil
		}
	}
	return nil, lapse.Errorf(lapse.EINVALID, "the sealing key is not base64")
}
