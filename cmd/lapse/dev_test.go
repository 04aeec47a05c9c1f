package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
)

// checkMode asserts a file's permission bits.
func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %o, want %o", path, got, want)
	}
}

func TestDevFirstStartAndRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")

	// The data directory and everything secret in it are private.
	checkMode(t, dir, 0o700)
	checkMode(t, filepath.Join(dir, "credentials"), 0o700)
	for _, f := range []string{"sealing.key", "lapse.yaml", "lapse.db", "credentials/alice.key", "credentials/bob.key", "credentials/admin.key"} {
		checkMode(t, filepath.Join(dir, f), 0o600)
	}
	cfgBytes, err := os.ReadFile(filepath.Join(dir, "lapse.yaml"))
	if err != nil || string(cfgBytes) != devConfig {
		t.Errorf("lapse.yaml is not the dev configuration (%v)", err)
	}
	pems, _ := filepath.Glob(filepath.Join(dir, "*.pem"))
	if len(pems) != 1 {
		t.Errorf("want the token target's signing key in the data directory, found %v", pems)
	}
	sealing, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
	if err != nil {
		t.Fatal(err)
	}

	keys := map[string]string{}
	for _, u := range devUsers {
		keys[u.Name] = readKey(t, filepath.Join(dir, "credentials", u.Name+".key"))
		var p lapse.Principal
		if code := call(t, "GET", r.url+"/v1/whoami", keys[u.Name], nil, &p); code != 200 {
			t.Fatalf("whoami as %s: status %d", u.Name, code)
		}
		if p.ID != u.Name || !slices.Equal(p.Groups, u.Groups) || !slices.Equal(p.Scopes, u.Scopes) {
			t.Errorf("whoami as %s = %+v", u.Name, p)
		}
	}

	// The banner says exactly what to run.
	out := r.stdout.String()
	for _, want := range []string{
		"export LAPSE_ADDR=" + r.url,
		"LAPSE_TOKEN_FILE=" + filepath.Join(dir, "credentials", "alice.key") + " lapse request demo-api/read --for 15m --reason",
		"LAPSE_TOKEN_FILE=" + filepath.Join(dir, "credentials", "bob.key") + " lapse requests --approvable",
		"lapse approve ",
		r.url + "/v1/targets/demo-api/jwks.json",
		r.url + "/v1/targets/demo-api/introspect",
		"new keys for: alice, bob, admin",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the banner lacks %q:\n%s", want, out)
		}
	}

	// An auto-approved entitlement works end to end: the grant is made and
	// its token comes back at once.
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", keys["alice"], lapse.RequestInput{Entitlement: "demo-api/status"}, &res); code != 201 {
		t.Fatalf("request demo-api/status: status %d", code)
	}
	if res.Grant == nil || res.Credentials == nil || res.Credentials.Secret["token"] == "" {
		t.Fatalf("auto-approved request = %+v", res)
	}
	grantID := res.Grant.ID
	// A request that needs approval stays pending for bob.
	var pending lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", keys["alice"], lapse.RequestInput{Entitlement: "demo-api/read", Reason: "debug ticket 42"}, &pending); code != 201 || pending.Request.State != lapse.RequestPending {
		t.Fatalf("request demo-api/read: status %d, %+v", code, pending.Request)
	}

	if err := r.stop(); err != nil {
		t.Fatalf("dev did not shut down cleanly: %v", err)
	}
	logs := r.stderr.String()
	for name, k := range keys {
		if strings.Contains(logs, k) || strings.Contains(out, k) {
			t.Errorf("the key of %s appears in the output", name)
		}
	}
	if strings.Contains(logs, strings.TrimSpace(string(sealing))) || strings.Contains(logs, res.Credentials.Secret["token"]) {
		t.Error("a secret appears in the logs")
	}

	// Edit the configuration: a restart must keep the edit.
	edited := append(cfgBytes, []byte("# edited\n")...)
	if err := os.WriteFile(filepath.Join(dir, "lapse.yaml"), edited, 0o600); err != nil {
		t.Fatal(err)
	}

	r2 := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	for _, u := range devUsers {
		if got := readKey(t, filepath.Join(dir, "credentials", u.Name+".key")); got != keys[u.Name] {
			t.Errorf("the key of %s was regenerated on restart", u.Name)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sealing.key")); string(b) != string(sealing) {
		t.Error("the sealing key was regenerated on restart")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "lapse.yaml")); string(b) != string(edited) {
		t.Error("lapse.yaml was overwritten on restart")
	}
	if strings.Contains(r2.stdout.String(), "new keys") {
		t.Error("the banner claims new keys on restart")
	}
	var g lapse.Grant
	if code := call(t, "GET", r2.url+"/v1/grants/"+grantID, keys["alice"], nil, &g); code != 200 || g.ID != grantID {
		t.Errorf("the grant did not survive the restart: status %d", code)
	}
	var list struct{ Requests []*lapse.Request }
	if code := call(t, "GET", r2.url+"/v1/requests?approvable=true", keys["bob"], nil, &list); code != 200 || len(list.Requests) != 1 || list.Requests[0].ID != pending.Request.ID {
		t.Errorf("bob's approvable requests after restart: status %d, %d requests", code, len(list.Requests))
	}
}

// TestDevReplacesLostKeys checks that deleting the database (but not the
// credentials) gives working keys again instead of dead ones.
func TestDevReplacesLostKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	old := readKey(t, filepath.Join(dir, "credentials", "alice.key"))
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"lapse.db", "lapse.db-wal", "lapse.db-shm"} {
		os.Remove(filepath.Join(dir, f))
	}
	r = startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	key := readKey(t, filepath.Join(dir, "credentials", "alice.key"))
	if key == old {
		t.Fatal("the key of a deleted database was kept")
	}
	if code := call(t, "GET", r.url+"/v1/whoami", key, nil, nil); code != 200 {
		t.Errorf("whoami with the new key: status %d", code)
	}
	if code := call(t, "GET", r.url+"/v1/whoami", old, nil, nil); code != 401 {
		t.Errorf("whoami with the lost key: status %d, want 401", code)
	}
}

// TestDevRestrictsAnOpenDataDir checks that an existing data directory
// others can read is made private before keys are written into it.
func TestDevRestrictsAnOpenDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	created, err := initDevDir(dir)
	if err != nil || created {
		t.Fatalf("initDevDir = %v, %v", created, err)
	}
	checkMode(t, dir, 0o700)
}

func TestDevDataDirIsAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runLapse(t, "dev", "--data-dir", f, "--listen", "127.0.0.1:0"); err == nil {
		t.Error("dev with a file as data directory succeeded")
	}
}

func TestClientHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:8700":   "127.0.0.1:8700",
		"[::]:8700":      "[::1]:8700",
		"127.0.0.1:9":    "127.0.0.1:9",
		"10.1.2.3:8700":  "10.1.2.3:8700",
		"[fe80::1]:8700": "[fe80::1]:8700",
	} {
		addr, err := net.ResolveTCPAddr("tcp", in)
		if err != nil {
			t.Fatal(err)
		}
		if got := clientHostPort(addr); got != want {
			t.Errorf("clientHostPort(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestDisplayPath(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if got := displayPath(filepath.Join(wd, ".lapse")); got != ".lapse" {
		t.Errorf("a directory under the working directory shows as %q", got)
	}
	outside := filepath.Join(filepath.Dir(wd), "elsewhere")
	if got := displayPath(outside); got != outside {
		t.Errorf("a directory outside shows as %q, want the absolute path", got)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		".lapse/credentials/alice.key": ".lapse/credentials/alice.key",
		"/tmp/my dir/alice.key":        "'/tmp/my dir/alice.key'",
		"it's":                         `'it'\''s'`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
