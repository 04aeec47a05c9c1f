package config_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/notify"
)

// notifyBase has a notify block with two webhooks. Line numbers in
// TestNotifyErrors count from its first line.
const notifyBase = `sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  db: {kind: fake}
entitlements:
  - name: db/read
    target: db
    max_duration: 1h
    approval: {auto: true}
notify:
  expiry_warning: 10m
  webhooks:
    - name: security
      url: https://hooks.example.com/lapse
      secret: {file: webhook.secret}
      events: [request.created, request.decided, grant.expiring]
      entitlements: [db/read, "db/*"]
    - name: chat
      url: {env: LAPSE_TEST_SLACK_URL}
      format: slack
      allow_private: true
`

func TestNotifyParse(t *testing.T) {
	dir := t.TempDir()
	c, err := config.Parse(filepath.Join(dir, "lapse.yaml"), []byte(notifyBase))
	if err != nil {
		t.Fatal(err)
	}
	n := c.Notify
	if n.ExpiryWarning != 10*time.Minute || len(n.Webhooks) != 2 {
		t.Fatalf("Notify = %+v", n)
	}
	s := n.Webhooks[0]
	if s.Name != "security" || s.URL.Value != "https://hooks.example.com/lapse" || s.Format != notify.FormatJSON || s.AllowPrivate ||
		!slices.Equal(s.Events, []string{"request.created", "request.decided", "grant.expiring"}) || !slices.Equal(s.Entitlements, []string{"db/read", "db/*"}) {
		t.Errorf("security = %+v", s)
	}
	// Relative secret files are relative to the configuration.
	if s.Secret.File != filepath.Join(dir, "webhook.secret") {
		t.Errorf("secret file %q", s.Secret.File)
	}
	if ch := n.Webhooks[1]; ch.Format != notify.FormatSlack || ch.URL.Env != "LAPSE_TEST_SLACK_URL" || !ch.Secret.IsZero() || !ch.AllowPrivate || ch.Events != nil {
		t.Errorf("chat = %+v", ch)
	}
}

func TestNotifyDefaults(t *testing.T) {
	c := mustParse(t, base)
	if c.Notify.ExpiryWarning != config.DefaultExpiryWarning || len(c.Notify.Webhooks) != 0 {
		t.Errorf("Notify = %+v, want no webhooks and the default warning", c.Notify)
	}
	c = mustParse(t, strings.Replace(notifyBase, "expiry_warning: 10m", "expiry_warning: 0", 1))
	if c.Notify.ExpiryWarning != 0 {
		t.Errorf("expiry_warning 0 = %s, want off", c.Notify.ExpiryWarning)
	}
}

func TestNotifyErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int
		path string
	}{
		{"unknown notify key", strings.Replace(notifyBase, "  expiry_warning: 10m\n", "  expiry_warnin: 10m\n", 1), 10, "notify.expiry_warnin"},
		{"unknown webhook key", strings.Replace(notifyBase, "      format: slack\n", "      formt: slack\n", 1), 19, "notify.webhooks[1].formt"},
		{"expiry warning too short", strings.Replace(notifyBase, "expiry_warning: 10m", "expiry_warning: 5s", 1), 10, "notify.expiry_warning"},
		{"no name", strings.Replace(notifyBase, "    - name: security\n      url:", "    - url:", 1), 12, "notify.webhooks[0].name"},
		{"bad name", strings.Replace(notifyBase, "name: security", "name: Security Team", 1), 12, "notify.webhooks[0].name"},
		{"duplicate name", strings.Replace(notifyBase, "name: chat", "name: security", 1), 17, "notify.webhooks[1].name"},
		{"no url", strings.Replace(notifyBase, "      url: https://hooks.example.com/lapse\n", "", 1), 12, "notify.webhooks[0].url"},
		{"http without allow_private", strings.Replace(notifyBase, "url: https://hooks", "url: http://hooks", 1), 13, "notify.webhooks[0].url"},
		{"private address", strings.Replace(notifyBase, "https://hooks.example.com/lapse", "https://10.0.0.7/lapse", 1), 13, "notify.webhooks[0].url"},
		{"credentials in the url", strings.Replace(notifyBase, "https://hooks.example.com", "https://u:p@hooks.example.com", 1), 13, "notify.webhooks[0].url"},
		{"bad secret ref", strings.Replace(notifyBase, "{file: webhook.secret}", "{file: webhook.secret, env: X}", 1), 14, "notify.webhooks[0].secret"},
		{"no secret for json", strings.Replace(notifyBase, "      secret: {file: webhook.secret}\n", "", 1), 12, "notify.webhooks[0].secret"},
		{"short inline secret", strings.Replace(notifyBase, "{file: webhook.secret}", "tooshort", 1), 14, "notify.webhooks[0].secret"},
		{"bad format", strings.Replace(notifyBase, "format: slack", "format: teams", 1), 19, "notify.webhooks[1].format"},
		{"unknown event", strings.Replace(notifyBase, "request.decided,", "grant.created,", 1), 15, "notify.webhooks[0].events[1]"},
		{"event twice", strings.Replace(notifyBase, "request.decided,", "request.created,", 1), 15, "notify.webhooks[0].events[1]"},
		{"unknown entitlement", strings.Replace(notifyBase, "[db/read, ", "[db/reed, ", 1), 16, "notify.webhooks[0].entitlements[0]"},
		{"bad pattern", strings.Replace(notifyBase, `"db/*"`, `"db/["`, 1), 16, "notify.webhooks[0].entitlements[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("lapse.yaml", []byte(tt.src))
			ce := configError(t, err)
			if ce.Line != tt.line || ce.Path != tt.path {
				t.Errorf("at line %d path %q, want line %d path %q (%v)", ce.Line, ce.Path, tt.line, tt.path, err)
			}
			if strings.Contains(err.Error(), "tooshort") {
				t.Errorf("the error repeats the secret: %v", err)
			}
		})
	}
}

// TestNotifyError: an error of starting the notifier (here: what
// notify.New says about a secret it cannot read) is positioned at the
// webhook's field in the file.
func TestNotifyError(t *testing.T) {
	c := mustParse(t, notifyBase)
	err := c.NotifyError(lapse.FieldErrorf(lapse.EINVALID, "webhooks[1].url", "secret environment variable LAPSE_TEST_SLACK_URL is not set"))
	ce := configError(t, err)
	if ce.Line != 18 || ce.Path != "notify.webhooks[1].url" {
		t.Errorf("at line %d path %q, want line 18 notify.webhooks[1].url (%v)", ce.Line, ce.Path, err)
	}
	if again := c.NotifyError(err); again != err {
		t.Errorf("a positioned error was positioned again: %v", again)
	}
}

// TestNotifyDocExamples parses the notify blocks of the documentation
// with a catalog they can refer to, so the examples cannot rot.
func TestNotifyDocExamples(t *testing.T) {
	const catalog = `sealing_key: {env: LAPSE_TEST_SEALING_KEY}
targets:
  prod-db: {kind: fake}
  payments: {kind: fake}
entitlements:
  - {name: prod-db/read, target: prod-db, max_duration: 1h, approval: {auto: true}}
  - {name: payments/refund, target: payments, max_duration: 1h, approval: {auto: true}}
`
	for _, doc := range []string{"notifications.md", "configuration.md"} {
		b, err := os.ReadFile(filepath.Join("..", "docs", doc))
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, block := range strings.Split(string(b), "```yaml\n")[1:] {
			block, _, _ = strings.Cut(block, "```")
			if !strings.HasPrefix(block, "notify:") {
				continue
			}
			found++
			c := mustParse(t, catalog+block)
			if len(c.Notify.Webhooks) == 0 {
				t.Errorf("%s: the example has no webhooks", doc)
			}
		}
		if found == 0 {
			t.Errorf("%s has no notify example", doc)
		}
	}
}
