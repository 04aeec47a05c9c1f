package config

import (
	"errors"
	pathpkg "path"
	"slices"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/notify"
)

// Bounds of the notification settings.
const (
	// DefaultExpiryWarning is how long before a grant's expiry webhooks
	// are warned when notify.expiry_warning is left out.
	DefaultExpiryWarning = 15 * time.Minute
	// MinExpiryWarning and MaxExpiryWarning bound notify.expiry_warning
	// (0 turns the warnings off).
	MinExpiryWarning = time.Minute
	MaxExpiryWarning = 24 * time.Hour
	// MaxWebhooks bounds notify.webhooks: each one polls the store.
	MaxWebhooks = 32
)

// Notify configures notifications by webhook (docs/notifications.md).
type Notify struct {
	// Webhooks are the receivers, in file order. Secret files are
	// absolute; the URL and secret are resolved when the server starts.
	Webhooks []notify.Webhook
	// ExpiryWarning is how long before a grant's expiry it is warned
	// about; zero turns warnings off.
	ExpiryWarning time.Duration
}

type rawNotify struct {
	Webhooks      []rawWebhook  `yaml:"webhooks"`
	ExpiryWarning *zeroDuration `yaml:"expiry_warning"`
}

type rawWebhook struct {
	Name         string          `yaml:"name"`
	URL          lapse.SecretRef `yaml:"url"`
	Secret       lapse.SecretRef `yaml:"secret"`
	Format       string          `yaml:"format"`
	Events       []string        `yaml:"events"`
	Entitlements []string        `yaml:"entitlements"`
	AllowPrivate bool            `yaml:"allow_private"`
}

// notify validates the top-level notify block. It runs after the catalog,
// so that an entitlement filter naming no entitlement is caught here.
func (v *validator) notify(c *Config, r *rawNotify, rel func(string) string) Notify {
	n := Notify{ExpiryWarning: DefaultExpiryWarning}
	if r.ExpiryWarning != nil {
		n.ExpiryWarning = r.ExpiryWarning.value()
		if d := n.ExpiryWarning; d != 0 && (d < MinExpiryWarning || d > MaxExpiryWarning) {
			v.errorf(path("notify", "expiry_warning"), "must be between %s and %s (0: no warnings)", MinExpiryWarning, MaxExpiryWarning)
		}
	}
	if len(r.Webhooks) > MaxWebhooks {
		v.errorf(path("notify", "webhooks"), "at most %d webhooks", MaxWebhooks)
	}
	seen := map[string]int{}
	for i := range r.Webhooks {
		if w, ok := v.webhook(c, i, &r.Webhooks[i], seen, rel); ok {
			n.Webhooks = append(n.Webhooks, w)
		}
	}
	return n
}

// webhook validates one receiver; ok is false when its errors are recorded.
func (v *validator) webhook(c *Config, i int, r *rawWebhook, seen map[string]int, rel func(string) string) (notify.Webhook, bool) {
	at := func(s ...step) []step { return append([]step{"notify", "webhooks", i}, s...) }
	before := len(v.errs)
	w := notify.Webhook{Name: r.Name, URL: r.URL, Secret: r.Secret, Format: r.Format, AllowPrivate: r.AllowPrivate}
	w.URL.File, w.Secret.File = rel(w.URL.File), rel(w.Secret.File)

	switch j, dup := seen[r.Name]; {
	case r.Name == "":
		v.errorf(at("name"), "required: names the webhook in logs, metrics and the cursor file")
	case len(r.Name) > notify.MaxNameLength || !notify.NameRE.MatchString(r.Name):
		v.errorf(at("name"), "webhook names are lowercase letters, digits, - and _ (at most %d)", notify.MaxNameLength)
	case dup:
		v.errorf(at("name"), "duplicate webhook %q (the first is webhooks[%d])", r.Name, j)
	default:
		seen[r.Name] = i
	}

	switch r.Format {
	case "":
		w.Format = notify.FormatJSON
	case notify.FormatJSON, notify.FormatSlack:
	default:
		v.errorf(at("format"), "must be json or slack")
	}

	// A URL from a file or the environment is checked when the server
	// resolves it (Config.NotifyError positions that error here too).
	switch {
	case r.URL.IsZero():
		v.errorf(at("url"), "required: where notifications are POSTed (https)")
	case r.URL.Value != "":
		if err := notify.CheckURL(r.URL.Value, r.AllowPrivate); err != nil {
			v.add(at("url"), err)
		}
	}

	switch {
	case r.Secret.IsZero() && w.Format == notify.FormatJSON:
		v.errorf(at("secret"), "required: the key receivers verify signatures with (at least %d bytes, best from a file or the environment)", notify.MinSecretLength)
	case r.Secret.Value != "" && len(r.Secret.Value) < notify.MinSecretLength:
		v.errorf(at("secret"), "shorter than %d bytes", notify.MinSecretLength)
	}

	for j, e := range r.Events {
		switch {
		case !slices.Contains(notify.Kinds, e):
			v.errorf(at("events", j), "unknown kind %q: must be one of %s", e, strings.Join(notify.Kinds, ", "))
		case slices.Contains(w.Events, e):
			v.errorf(at("events", j), "%q is listed twice", e)
		default:
			w.Events = append(w.Events, e)
		}
	}

	for j, p := range r.Entitlements {
		_, badPattern := pathpkg.Match(p, "")
		literal := !strings.ContainsAny(p, `*?[\`)
		_, inCatalog := c.entIndex[p]
		switch {
		case p == "" || errors.Is(badPattern, pathpkg.ErrBadPattern):
			v.errorf(at("entitlements", j), "not an entitlement name or pattern (like prod-db/*)")
		case literal && !inCatalog:
			v.errorf(at("entitlements", j), "no entitlement named %q in the catalog", p)
		case slices.Contains(w.Entitlements, p):
			v.errorf(at("entitlements", j), "%q is listed twice", p)
		default:
			w.Entitlements = append(w.Entitlements, p)
		}
	}
	return w, len(v.errs) == before
}

// NotifyError positions an error of starting the notifier (a URL or
// secret that cannot be resolved or is refused) at the webhook's field: a
// *lapse.Error whose Field is "webhooks[i].secret" lands on
// notify.webhooks[i].secret. An error that is already positioned is
// returned unchanged.
func (c *Config) NotifyError(err error) error {
	var ce *Error
	if err == nil || errors.As(err, &ce) {
		return err
	}
	steps := []step{"notify"}
	if f := lapse.ErrorField(err); f != "" {
		steps = append(steps, fieldSteps(f)...)
	}
	return errorAt(c.File, c.root, steps, err)
}
