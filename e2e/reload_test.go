package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lapsehq/lapse/api/client"
)

// A running server puts a new policy in force on SIGHUP, with policy.watch
// off so that only the signal can have done it; a policy that does not
// compile, signalled the same way, leaves the one in force.
func TestSIGHUPReloadsThePolicy(t *testing.T) {
	c := newCluster(t, "sqlite", "lapse.db", 5*time.Second)
	extra := filepath.Join(c.dir, "extra.yaml")
	write := func(src string) {
		t.Helper()
		tmp := extra + ".tmp"
		if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, extra); err != nil {
			t.Fatal(err)
		}
	}
	write("groups:\n  leads: [carol]\n")
	cfg, err := os.ReadFile(c.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, []byte("policy:\n  files: [extra.yaml]\n  watch: false\n")...)
	if err := os.WriteFile(c.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	key := c.apiKey("svc:batch", "request", "read")
	s := c.start()
	cl := client.New("http://"+s.addr, key)
	names := func() string {
		t.Helper()
		es, err := cl.Entitlements(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name)
		}
		return strings.Join(out, ",")
	}
	if got := names(); got != "shared/use" {
		t.Fatalf("entitlements at start: %s", got)
	}
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for names() != want {
			if time.Now().After(deadline) {
				t.Fatalf("entitlements are %s, want %s\nserver log:\n%s", names(), want, s.log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	write(`entitlements:
  - name: shared/more
    target: shared
    lanes: [service]
    max_duration: 1m
    approval: {auto: true}
`)
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("shared/more,shared/use")

	write("entitlements:\n  - name: shared/broken\n    target: shared\n    max_duration: 1m\n    condition: 'request.duration <='\n    approval: {auto: true}\n")
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.log(), "policy not reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("the broken policy was not reported\nserver log:\n%s", s.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := names(); got != "shared/more,shared/use" {
		t.Fatalf("after a broken policy the entitlements are %s", got)
	}
}
