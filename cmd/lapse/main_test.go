package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/registry"
	"github.com/lapsehq/lapse/connector/token"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a
// logger and a test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// running is a lapse server or dev process started in-process by
// startLapse.
type running struct {
	m      *Main
	url    string
	stdout *lockedBuffer
	stderr *lockedBuffer
	stop   func() error
}

// startupTimeout guards against a server that never starts; it is not a
// performance assertion.
const startupTimeout = 2 * time.Minute

// startLapse runs the command line in-process and waits until the server
// listens. The server is stopped at the end of the test unless stop was
// called before.
func startLapse(t testing.TB, args ...string) *running {
	t.Helper()
	r := &running{m: NewMain(), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	r.m.Stdin = strings.NewReader("")
	r.m.Stdout, r.m.Stderr = r.stdout, r.stderr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.m.Run(ctx, args) }()
	var once sync.Once
	var stopErr error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
		})
		return stopErr
	}
	t.Cleanup(func() { r.stop() })
	select {
	case <-r.m.Started():
	case err := <-done:
		done <- err // for the cleanup's stop, which waits for it
		t.Fatalf("lapse %s ended before serving: %v\nstderr:\n%s", strings.Join(args, " "), err, r.stderr.String())
	case <-time.After(startupTimeout):
		t.Fatalf("lapse %s did not start\nstderr:\n%s", strings.Join(args, " "), r.stderr.String())
	}
	r.url = "http://" + r.m.Addr().String()
	return r
}

// runLapse runs a command line that is expected to end by itself.
func runLapse(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	m := NewMain()
	var out, errb lockedBuffer
	m.Stdin, m.Stdout, m.Stderr = strings.NewReader(""), &out, &errb
	err = m.Run(context.Background(), args)
	return out.String(), errb.String(), err
}

// call makes one API call with an API key and decodes the JSON answer into
// out (if not nil). It returns the status.
func call(t *testing.T, method, url, key string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, b, err)
		}
	}
	return resp.StatusCode
}

// readKey returns the API key stored in a credentials file.
func readKey(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestVersion(t *testing.T) {
	out, _, err := runLapse(t, "version")
	if err != nil || !strings.HasPrefix(out, "lapse ") || strings.Count(out, "\n") != 1 {
		t.Errorf("lapse version = %q, %v", out, err)
	}
}

func TestRootHasEveryCommand(t *testing.T) {
	root := newRootCommand(NewMain())
	for _, name := range []string{"server", "dev", "admin", "version", "request", "approve", "grants"} {
		if c, _, err := root.Find([]string{name}); err != nil || c.Name() != name {
			t.Errorf("command %s is missing", name)
		}
	}
	if f := root.PersistentFlags().Lookup("log-level"); f == nil {
		t.Error("--log-level is missing")
	}
}

func TestExitStatus(t *testing.T) {
	var errb bytes.Buffer
	m := &Main{Stderr: &errb}
	_, err := config.Parse("lapse.yaml", []byte("sealing_key: x\nlisne: 1\n"))
	if code := m.ExitStatus(err); code != exitError {
		t.Errorf("config error: status %d", code)
	}
	if !strings.Contains(errb.String(), "lapse.yaml:2:1: lisne:") {
		t.Errorf("config error printed as %q; it must name the file, line and field", errb.String())
	}
	errb.Reset()
	if code := m.ExitStatus(&usageError{err: errors.New("bad")}); code != exitUsage {
		t.Errorf("usage error: status %d", code)
	}
	if code := m.ExitStatus(nil); code != exitOK {
		t.Errorf("nil: status %d", code)
	}
	_, _, err = runLapse(t, "no-such-command")
	if code := m.ExitStatus(err); code != exitUsage {
		t.Errorf("unknown command: status %d (%v)", code, err)
	}
	_, _, err = runLapse(t, "server", "--no-such-flag")
	if code := m.ExitStatus(err); code != exitUsage {
		t.Errorf("unknown flag: status %d (%v)", code, err)
	}
	_, _, err = runLapse(t, "server")
	if code := m.ExitStatus(err); code != exitUsage {
		t.Errorf("server without --config: status %d (%v)", code, err)
	}
}

// TestExamples loads every example configuration with the registry's
// kinds, and opens its token targets (with a fresh key) to check the
// entitlements' specs, so the examples cannot rot.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found %d example configurations", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range cfg.TargetNames() {
				tg := cfg.Targets[name]
				if _, ok := registry.Kinds[tg.Kind]; !ok {
					t.Errorf("target %s: unknown kind %s", name, tg.Kind)
					continue
				}
				if tg.Kind != "token" {
					continue
				}
				// The example's key file does not exist here; open the
				// target with a generated key instead.
				decode := func(v any) error {
					if err := tg.Decode(v); err != nil {
						return err
					}
					tc := v.(*token.Config)
					tc.SigningKeyFile, tc.GenerateKey = "", true
					return nil
				}
				env := connector.Env{Name: name, Clock: lapse.SystemClock{}, Store: sqltest.OpenSQLite(t), DataDir: t.TempDir()}
				conn, err := registry.Open(context.Background(), tg.Kind, env, decode)
				if err != nil {
					t.Fatalf("%v", cfg.TargetError(name, "config", err))
				}
				for _, e := range cfg.Entitlements {
					if e.Target != name {
						continue
					}
					if err := conn.(connector.SpecValidator).ValidateSpec(e.Spec); err != nil {
						t.Errorf("%v", cfg.EntitlementError(e.Name, "spec", err))
					}
				}
				if c, ok := conn.(connector.Closer); ok {
					c.Close()
				}
			}
		})
	}
}

// TestDevConfigIsTheExample keeps examples/dev.yaml and what lapse dev
// writes identical.
func TestDevConfigIsTheExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "dev.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != devConfig {
		t.Error("examples/dev.yaml differs from devConfig in dev.go; keep them identical")
	}
}
