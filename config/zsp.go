package config

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// Bounds of the zero-standing-privilege settings.
const (
	// MinZSPInterval and MaxZSPInterval bound zsp.drift.interval and
	// zsp.canary.interval (0 turns them off).
	MinZSPInterval = time.Second
	MaxZSPInterval = 24 * time.Hour
	// MaxPaths bounds the paths an entitlement's exposure may add.
	MaxPaths = 64
	// MaxPathText bounds each descriptive field of a path.
	MaxPathText = 512
)

// ZSP configures zero-standing-privilege assurance (docs/zsp.md).
type ZSP struct {
	// MaxExposure is the default limit on an entitlement's worst-case
	// exposure after revocation; an entitlement's exposure.limit
	// overrides it. Zero means no limit.
	MaxExposure time.Duration
	Drift       Drift
	Canary      Canary
}

// Drift configures the reconciler that looks for privileges no active
// grant explains.
type Drift struct {
	// Interval is how often lapse server runs it; zero means only on
	// demand (lapse zsp drift).
	Interval time.Duration
	// Remove makes it remove the orphaned principals Lapse made (it always
	// records what it found and did).
	Remove bool
}

// Canary configures the scheduled session-level test (lapse zsp test).
type Canary struct {
	// Interval is how often it runs; zero turns it off.
	Interval time.Duration
	// Entitlements are the names it exercises, all in the catalog.
	Entitlements []string
}

type rawZSP struct {
	MaxExposure *zeroDuration `yaml:"max_exposure"`
	Drift       rawDrift      `yaml:"drift"`
	Canary      rawCanary     `yaml:"canary"`
}

type rawDrift struct {
	Interval *zeroDuration `yaml:"interval"`
	Remove   bool          `yaml:"remove"`
}

type rawCanary struct {
	Interval     *zeroDuration `yaml:"interval"`
	Entitlements []string      `yaml:"entitlements"`
}

type rawExposure struct {
	Limit     *zeroDuration `yaml:"limit"`
	OverLimit string        `yaml:"over_limit"`
	Approval  *rawApproval  `yaml:"approval"`
	Paths     []rawPath     `yaml:"paths"`
}

type rawPath struct {
	Name       string       `yaml:"name"`
	Kind       string       `yaml:"kind"`
	CreatedAt  string       `yaml:"created_at"`
	ConsumedAt string       `yaml:"consumed_at"`
	Outlives   *rawOutlives `yaml:"outlives"`
	Kill       string       `yaml:"kill"`
	Verify     string       `yaml:"verify"`
}

// zeroDuration is a duration that may be zero ("0", "0s"): the settings
// where zero means "off" or "no limit".
type zeroDuration time.Duration

func (d *zeroDuration) UnmarshalText(b []byte) error {
	v, err := lapse.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "duration", "duration must not be negative")
	}
	*d = zeroDuration(v)
	return nil
}

func (d *zeroDuration) value() time.Duration {
	if d == nil {
		return 0
	}
	return time.Duration(*d)
}

// rawOutlives is a path's outlives: a duration (0 allowed), until_expiry
// or unbounded.
type rawOutlives struct {
	d                      time.Duration
	untilExpiry, unbounded bool
}

func (o *rawOutlives) UnmarshalText(b []byte) error {
	switch s := strings.TrimSpace(string(b)); s {
	case "until_expiry":
		o.untilExpiry = true
	case "unbounded":
		o.unbounded = true
	default:
		v, err := lapse.ParseDuration(s)
		if err != nil || v < 0 {
			return lapse.FieldErrorf(lapse.EINVALID, "outlives", "outlives is a duration like 30s (0 when revocation ends it there), until_expiry or unbounded")
		}
		o.d = v
	}
	return nil
}

var pathNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$`)

// zsp validates the top-level zsp block.
func (v *validator) zsp(r *rawZSP) ZSP {
	z := ZSP{
		MaxExposure: r.MaxExposure.value(),
		Drift:       Drift{Interval: r.Drift.Interval.value(), Remove: r.Drift.Remove},
		Canary:      Canary{Interval: r.Canary.Interval.value()},
	}
	if z.MaxExposure > lapse.MaxAnyDuration {
		v.errorf(path("zsp", "max_exposure"), "must be at most %s (0 or left out: no limit)", lapse.MaxAnyDuration)
	}
	interval := func(d time.Duration, at []step) {
		if d != 0 && (d < MinZSPInterval || d > MaxZSPInterval) {
			v.errorf(at, "must be between %s and %s (0 or left out: off)", MinZSPInterval, MaxZSPInterval)
		}
	}
	interval(z.Drift.Interval, path("zsp", "drift", "interval"))
	interval(z.Canary.Interval, path("zsp", "canary", "interval"))
	return z
}

// canaryEntitlements checks that the canary names entitlements of the
// catalog, once each.
func (v *validator) canaryEntitlements(c *Config, names []string) {
	for i, n := range names {
		at := path("zsp", "canary", "entitlements", i)
		switch _, ok := c.entIndex[n]; {
		case !ok:
			v.errorf(at, "no entitlement named %q in the catalog", n)
		case slices.Contains(c.ZSP.Canary.Entitlements, n):
			v.errorf(at, "%q is listed twice", n)
		default:
			c.ZSP.Canary.Entitlements = append(c.ZSP.Canary.Entitlements, n)
		}
	}
}

// exposure validates an entitlement's exposure block against the global
// default limit and returns the entitlement's exposure policy, or nil when
// there is neither a block nor a default limit.
func (v *validator) exposure(at func(...step) []step, r *rawExposure, e *lapse.Entitlement, defaultLimit time.Duration) *lapse.Exposure {
	if r == nil {
		if defaultLimit == 0 {
			return nil
		}
		return &lapse.Exposure{Limit: lapse.Duration(defaultLimit), OverLimit: lapse.OverLimitRefuse}
	}
	x := &lapse.Exposure{Limit: lapse.Duration(defaultLimit), OverLimit: lapse.OverLimitRefuse}
	if r.Limit != nil {
		x.Limit = lapse.Duration(r.Limit.value())
		if r.Limit.value() > lapse.MaxAnyDuration {
			v.errorf(at("exposure", "limit"), "must be at most %s (0: no limit)", lapse.MaxAnyDuration)
		}
	}
	switch r.OverLimit {
	case "", lapse.OverLimitRefuse:
		if r.Approval != nil {
			v.errorf(at("exposure", "approval"), "only with over_limit: approval")
		}
	case lapse.OverLimitApproval:
		x.OverLimit = lapse.OverLimitApproval
		a := r.Approval
		if a == nil {
			v.errorf(at("exposure", "approval"), "required with over_limit: approval: the higher tier, required: N with approvers")
			break
		}
		if a.Auto {
			v.errorf(at("exposure", "approval", "auto"), "the higher tier cannot be automatic")
			break
		}
		tier := &lapse.ApprovalRule{Required: a.Required, Approvers: v.principals(at("exposure", "approval", "approvers"), a.Approvers)}
		switch {
		case a.Required < 1 || a.Required > MaxApprovals:
			v.errorf(at("exposure", "approval", "required"), "must be between 1 and %d", MaxApprovals)
		case len(a.Approvers) == 0:
			v.errorf(at("exposure", "approval", "approvers"), "required: who may approve (principal IDs or group:NAME)")
		case !slices.ContainsFunc(tier.Approvers, isGroup) && len(tier.Approvers) < a.Required:
			v.errorf(at("exposure", "approval", "required"), "needs %d approvals but only %d approvers are listed", a.Required, len(tier.Approvers))
		case !e.Approval.Auto && a.Required < e.Approval.Required:
			v.errorf(at("exposure", "approval", "required"), "the higher tier needs at least the %d approvals of the entitlement's own rule", e.Approval.Required)
		}
		x.Approval = tier
	default:
		v.errorf(at("exposure", "over_limit"), "must be refuse or approval")
	}
	if len(r.Paths) > MaxPaths {
		v.errorf(at("exposure", "paths"), "at most %d paths", MaxPaths)
	}
	for i, rp := range r.Paths {
		pat := func(s ...step) []step { return at(append([]step{"exposure", "paths", i}, s...)...) }
		p := lapse.CheckpointPath{Name: rp.Name, Kind: lapse.CheckpointKind(rp.Kind), CreatedAt: rp.CreatedAt, ConsumedAt: rp.ConsumedAt, Kill: rp.Kill, Verify: rp.Verify, Source: lapse.PathFromConfig}
		switch {
		case rp.Name == "":
			v.errorf(pat("name"), "required: the path's name (the name of a connector's path replaces it)")
		case !pathNameRE.MatchString(rp.Name):
			v.errorf(pat("name"), "path names are 1 to 128 letters, digits and . _ : / @ -, starting with a letter or digit")
		case slices.ContainsFunc(x.Paths, func(q lapse.CheckpointPath) bool { return q.Name == rp.Name }):
			v.errorf(pat("name"), "path %q is listed twice", rp.Name)
		}
		switch p.Kind {
		case "", lapse.CheckpointTarget, lapse.CheckpointSessions, lapse.CheckpointCache, lapse.CheckpointConsumer:
		default:
			v.errorf(pat("kind"), "must be target, sessions, cache or consumer")
		}
		for key, text := range map[string]string{"created_at": rp.CreatedAt, "consumed_at": rp.ConsumedAt, "kill": rp.Kill, "verify": rp.Verify} {
			if err := pathText(text); err != "" {
				v.errorf(pat(key), "%s", err)
			}
		}
		if rp.Outlives == nil {
			v.errorf(pat("outlives"), "required: how long access can keep working there after revocation (30s, 0, until_expiry or unbounded)")
		} else {
			p.Outlives, p.UntilExpiry, p.Unbounded = lapse.Duration(rp.Outlives.d), rp.Outlives.untilExpiry, rp.Outlives.unbounded
		}
		x.Paths = append(x.Paths, p)
	}
	return x
}

// pathText checks one descriptive field of a path; it returns what is
// wrong, or "".
func pathText(s string) string {
	switch {
	case len(s) > MaxPathText:
		return "longer than " + strconv.Itoa(MaxPathText) + " bytes"
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }):
		return "contains a control character"
	}
	return ""
}
