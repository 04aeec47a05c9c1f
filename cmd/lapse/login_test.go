package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn/oidc/oidctest"
	"github.com/lapsehq/lapse/config"
)

// oidcConfig trusts one identity provider ({{ISSUER}}) for people:
// members of its group approvers may approve, and scratch/use needs one
// of them.
const oidcConfig = `data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
oidc:
  issuers:
    - name: corp
      issuer: {{ISSUER}}
      audiences: [lapse-cli]
      scope_rules:
        - group: approvers
          scopes: [approve]
targets:
  scratch:
    kind: fake
entitlements:
  - name: scratch/use
    target: scratch
    max_duration: 10m
    approval:
      required: 1
      approvers: ["group:approvers"]
`

// loginProvider is an identity provider with the client lapse-cli and
// two people: alice requests, bob approves.
func loginProvider(t *testing.T, opts oidctest.Options) *oidctest.Provider {
	t.Helper()
	p := oidctest.New(t, opts)
	p.AddClient("lapse-cli")
	p.AddUser(oidctest.User{ID: "u-alice", Email: "alice@example.com", EmailVerified: true, Name: "Alice", Groups: []string{"developers"}})
	p.AddUser(oidctest.User{ID: "u-bob", Email: "bob@example.com", EmailVerified: true, Name: "Bob", Groups: []string{"approvers"}})
	return p
}

func startOIDCLapse(t *testing.T, issuer string) *running {
	t.Helper()
	path := writeServerConfig(t, strings.ReplaceAll(oidcConfig, "{{ISSUER}}", issuer))
	return startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
}

// TestOIDCServerSignIn: people sign in to the HTTP API with their ID
// tokens: alice files a request, bob (an approver by group) approves it,
// alice cannot; a tampered token is refused like any bad credential.
func TestOIDCServerSignIn(t *testing.T) {
	p := loginProvider(t, oidctest.Options{})
	r := startOIDCLapse(t, p.URL)
	alice := p.IDToken(t, "lapse-cli", "u-alice")
	bob := p.IDToken(t, "lapse-cli", "u-bob")

	var me lapse.Principal
	if code := call(t, "GET", r.url+"/v1/whoami", alice, nil, &me); code != 200 {
		t.Fatalf("whoami: %d", code)
	}
	if me.ID != "alice@example.com" || me.Kind != lapse.KindHuman || !slices.Equal(me.Groups, []string{"developers"}) ||
		!slices.Equal(me.Scopes, []string{"read", "request"}) || !strings.HasPrefix(me.CredentialID, "oidc:corp:") {
		t.Errorf("whoami = %+v", me)
	}

	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "scratch/use", Reason: "INC-1"}, &res); code != 201 || res.Request.State != lapse.RequestPending {
		t.Fatalf("request: %d %+v", code, res.Request)
	}
	decide := lapse.DecisionInput{RequestHash: res.Request.Hash}
	if code := call(t, "POST", r.url+"/v1/requests/"+res.Request.ID+"/approve", alice, decide, nil); code != 403 {
		t.Errorf("alice approving her own request: %d; want 403", code)
	}
	var approved lapse.Request
	if code := call(t, "POST", r.url+"/v1/requests/"+res.Request.ID+"/approve", bob, decide, &approved); code != 200 || approved.State != lapse.RequestApproved {
		t.Fatalf("bob approves: %d %+v", code, approved)
	}
	if len(approved.Approvals) != 1 || approved.Approvals[0].Approver.ID != "bob@example.com" {
		t.Errorf("approvals = %+v", approved.Approvals)
	}

	tampered := alice[:len(alice)-8] + strings.Repeat("A", 8)
	var e struct{ Error struct{ Code string } }
	if code := call(t, "GET", r.url+"/v1/whoami", tampered, nil, &e); code != 401 || e.Error.Code != lapse.EUNAUTHORIZED {
		t.Errorf("tampered token: %d %+v", code, e)
	}
	logs := r.stderr.String()
	for _, tok := range []string{alice, bob, tampered} {
		if strings.Contains(logs, tok[strings.LastIndex(tok, ".")+1:]) {
			t.Error("a token appears in the server's log")
		}
	}
}

// TestOIDCServerUnreachableIssuer: a server whose identity provider is
// down starts and serves API keys; ID tokens get 503 until the provider
// answers.
func TestOIDCServerUnreachableIssuer(t *testing.T) {
	p := loginProvider(t, oidctest.Options{})
	tok := p.IDToken(t, "lapse-cli", "u-alice")
	p.Server.Close()
	path := writeServerConfig(t, strings.ReplaceAll(oidcConfig, "{{ISSUER}}", p.URL))
	stdout, _, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", "ops", "--scope", "read")
	if err != nil {
		t.Fatal(err)
	}
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	if code := call(t, "GET", r.url+"/readyz", "", nil, nil); code != 200 {
		t.Errorf("readyz: %d", code)
	}
	if code := call(t, "GET", r.url+"/v1/whoami", strings.TrimSpace(stdout), nil, nil); code != 200 {
		t.Errorf("an API key with the identity provider down: %d", code)
	}
	var e struct{ Error struct{ Code string } }
	if code := call(t, "GET", r.url+"/v1/whoami", tok, nil, &e); code != 503 || e.Error.Code != lapse.EUNAVAILABLE {
		t.Errorf("an ID token with its provider down: %d %+v; want 503 unavailable", code, e)
	}
}

// loginRun is lapse login running in-process, with its stderr readable
// line by line while it runs.
type loginRun struct {
	lines  chan string
	stdout *lockedBuffer
	done   chan error
}

func startLogin(t *testing.T, args ...string) *loginRun {
	t.Helper()
	m := NewMain()
	pr, pw := io.Pipe()
	l := &loginRun{lines: make(chan string, 100), stdout: &lockedBuffer{}, done: make(chan error, 1)}
	m.Stdin, m.Stdout, m.Stderr = strings.NewReader(""), l.stdout, pw
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		err := m.Run(ctx, append([]string{"login"}, args...))
		pw.Close()
		l.done <- err
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			l.lines <- sc.Text()
		}
		close(l.lines)
	}()
	return l
}

// await returns the first match of re in a line of stderr.
func (l *loginRun) await(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	timeout := time.After(startupTimeout)
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				t.Fatalf("lapse login ended without printing %s: %v", re, <-l.done)
			}
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("lapse login did not print %s", re)
		}
	}
}

func (l *loginRun) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-l.done:
		if err != nil {
			t.Fatalf("lapse login: %v", err)
		}
	case <-time.After(startupTimeout):
		t.Fatal("lapse login did not finish")
	}
}

// readCredentials checks the credentials file's mode and returns it.
func readCredentials(t *testing.T, path string) storedCredentials {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode %04o; want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c storedCredentials
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// signedInEnv makes the client commands find the credentials file and no
// other credential.
func signedInEnv(t *testing.T, path string) {
	t.Setenv(envCredentials, path)
	t.Setenv(envToken, "")
	t.Setenv(envTokenFile, "")
}

// TestLoginDeviceFlow: lapse login with the device authorization grant,
// the person approving the code at the provider; the stored ID token then
// signs the client commands in, is renewed with the refresh token when it
// expires, and lapse logout removes it.
func TestLoginDeviceFlow(t *testing.T) {
	p := loginProvider(t, oidctest.Options{})
	r := startOIDCLapse(t, p.URL)
	path := filepath.Join(t.TempDir(), "lapse", "credentials.json")
	signedInEnv(t, path)

	l := startLogin(t, "--issuer", p.URL, "--client-id", "lapse-cli", "--extra-scope", "groups offline_access")
	code := l.await(t, regexp.MustCompile(`enter the code ([A-Z]{4}-[A-Z]{4})`))[1]
	if err := p.ApproveDevice(code, "u-bob"); err != nil {
		t.Fatal(err)
	}
	l.wait(t)
	if !strings.Contains(l.stdout.String(), "Signed in as bob@example.com") {
		t.Errorf("stdout = %q", l.stdout.String())
	}
	cred := readCredentials(t, path)
	if cred.Issuer != p.URL || cred.ClientID != "lapse-cli" || cred.IDToken == "" || cred.RefreshToken == "" || cred.Who != "bob@example.com" {
		t.Errorf("credentials = %+v", cred)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("credentials directory: %v %v; want mode 0700", fi.Mode(), err)
	}

	out, _, err := runLapse(t, "whoami", "--server", r.url, "-o", "json")
	if err != nil {
		t.Fatalf("whoami with the sign-in: %v", err)
	}
	var me lapse.Principal
	if err := json.Unmarshal([]byte(out), &me); err != nil || me.ID != "bob@example.com" || !slices.Contains(me.Scopes, "approve") {
		t.Fatalf("whoami = %s (%v)", out, err)
	}

	// The ID token is about to expire: the next command renews it.
	cred.Expiry = time.Now().Add(-time.Minute)
	if err := writeCredentials(path, &cred); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runLapse(t, "whoami", "--server", r.url); err != nil {
		t.Fatalf("whoami after the ID token expired: %v", err)
	}
	renewed := readCredentials(t, path)
	if renewed.IDToken == cred.IDToken || renewed.RefreshToken == cred.RefreshToken || !renewed.Expiry.After(time.Now()) {
		t.Errorf("the sign-in was not renewed: %+v", renewed)
	}

	out, _, err = runLapse(t, "logout")
	if err != nil || !strings.Contains(out, "Signed out bob@example.com") {
		t.Fatalf("logout: %q %v", out, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the credentials file is still there: %v", err)
	}
	if _, err := p.Refresh(context.Background(), "lapse-cli", renewed.RefreshToken); err == nil {
		t.Error("the refresh token still works after logout")
	}
	_, _, err = runLapse(t, "whoami", "--server", r.url)
	if lapse.ErrorCode(err) != lapse.EUNAUTHORIZED {
		t.Errorf("whoami after logout: %v; want unauthorized", err)
	}
}

// TestLoginBrowserFlow: with a provider that has no device endpoint,
// lapse login listens on the loopback interface and prints the URL; the
// test is the browser. A redirect that does not carry the login's state
// is ignored.
func TestLoginBrowserFlow(t *testing.T) {
	p := loginProvider(t, oidctest.Options{NoDevice: true})
	p.SignInAs("u-alice")
	r := startOIDCLapse(t, p.URL)
	path := filepath.Join(t.TempDir(), "credentials.json")
	signedInEnv(t, path)

	l := startLogin(t, "--issuer", p.URL, "--client-id", "lapse-cli", "--credentials", path)
	authURL := l.await(t, regexp.MustCompile(`^\s+(http://\S+)$`))[1]
	u, err := url.Parse(authURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || redirect.Path != "/callback" {
		t.Fatalf("redirect_uri %q", q.Get("redirect_uri"))
	}
	if host, _, _ := net.SplitHostPort(redirect.Host); host != "127.0.0.1" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" {
		t.Errorf("authorization URL %s: want a 127.0.0.1 redirect, PKCE S256, state and nonce", authURL)
	}

	forged, err := http.Get(redirect.String() + "?code=stolen&state=not-the-login")
	if err != nil {
		t.Fatal(err)
	}
	forged.Body.Close()
	if forged.StatusCode != http.StatusBadRequest {
		t.Errorf("a redirect with another state: %s; want 400", forged.Status)
	}

	resp, err := http.Get(authURL) // follows the provider's redirects back to lapse login
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "Signed in to Lapse as alice@example.com") {
		t.Errorf("the browser shows %s: %s", resp.Status, page)
	}
	l.wait(t)
	cred := readCredentials(t, path)
	if cred.Who != "alice@example.com" || cred.RefreshToken != "" {
		t.Errorf("credentials = %+v (no offline_access: no refresh token)", cred)
	}

	t.Setenv(envCredentials, path)
	out, _, err := runLapse(t, "whoami", "--server", r.url, "-o", "json")
	var me lapse.Principal
	if err != nil || json.Unmarshal([]byte(out), &me) != nil || me.ID != "alice@example.com" {
		t.Fatalf("whoami = %q %v", out, err)
	}

	// Without a refresh token an expired sign-in asks for a new one.
	cred.Expiry = time.Now().Add(-time.Minute)
	if err := writeCredentials(path, &cred); err != nil {
		t.Fatal(err)
	}
	_, _, err = runLapse(t, "whoami", "--server", r.url)
	if lapse.ErrorCode(err) != lapse.EUNAUTHORIZED || !strings.Contains(lapse.ErrorMessage(err), "lapse login") {
		t.Errorf("an expired sign-in: %v", err)
	}
}

// TestLoginUsage: missing or bad flags are usage errors, before any
// network call.
func TestLoginUsage(t *testing.T) {
	t.Setenv(envOIDCIssuer, "")
	t.Setenv(envOIDCClientID, "")
	for _, tc := range []struct {
		args  []string
		field string
	}{
		{[]string{"--client-id", "x"}, "issuer"},
		{[]string{"--issuer", "http://login.example.com", "--client-id", "x"}, "issuer"},
		{[]string{"--issuer", "https://login.example.com"}, "client-id"},
		{[]string{"--issuer", "https://login.example.com", "--client-id", "x", "--flow", "telepathy"}, "flow"},
		{[]string{"--issuer", "https://login.example.com", "--client-id", "x", "--callback-port", "70000"}, "callback-port"},
	} {
		_, _, err := runLapse(t, append([]string{"login"}, tc.args...)...)
		var ue *usageError
		if !errors.As(err, &ue) || lapse.ErrorField(err) != tc.field {
			t.Errorf("login %q: %v; want a usage error naming %s", tc.args, err, tc.field)
		}
	}
	out, _, err := runLapse(t, "logout", "--credentials", filepath.Join(t.TempDir(), "none.json"))
	if err != nil || out != "" {
		t.Errorf("logout when not signed in: %q %v", out, err)
	}
}

// TestLoginCredentialsPrecedence: the sign-in of lapse login is the last
// source of the credential; an expired one without a refresh token asks
// for lapse login before anything is sent; a damaged or group-readable
// file is reported.
func TestLoginCredentialsPrecedence(t *testing.T) {
	const idToken = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2xvZ2luLmV4YW1wbGUuY29tIn0.c2lnbmF0dXJl"
	path := filepath.Join(t.TempDir(), "credentials.json")
	write := func(expiry time.Time, mode os.FileMode) {
		t.Helper()
		if err := writeCredentials(path, &storedCredentials{Issuer: "https://login.example.com", ClientID: "lapse-cli", IDToken: idToken, Expiry: expiry}); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	write(testNow.Add(time.Hour), 0o600)

	c := newCLI(t)
	c.svc.whoami = func(context.Context) (*lapse.Principal, error) { return &alice, nil }
	c.env = map[string]string{envCredentials: path}
	if _, stderr := c.mustRun("whoami"); c.cfg.Token != idToken || stderr != "" {
		t.Errorf("token = %q, stderr %q; want the stored ID token", c.cfg.Token, stderr)
	}
	c.env[envToken] = testToken
	if c.mustRun("whoami"); c.cfg.Token != testToken {
		t.Errorf("LAPSE_TOKEN must beat the sign-in")
	}
	delete(c.env, envToken)

	write(testNow.Add(time.Hour), 0o644)
	if _, stderr := c.mustRun("whoami"); !strings.Contains(stderr, "readable by group or others") {
		t.Errorf("no warning for a group-readable credentials file: %q", stderr)
	}

	write(testNow.Add(30*time.Second), 0o600) // expires within refreshMargin
	calls := c.svc.called("Whoami")
	_, stderr, code := c.run("whoami")
	if code != exitError || !strings.Contains(stderr, "lapse login") || !strings.Contains(stderr, "(code: unauthorized)") || c.svc.called("Whoami") != calls {
		t.Errorf("expired sign-in: exit %d, %q", code, stderr)
	}

	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := c.run("whoami"); code != exitError || !strings.Contains(stderr, "damaged") {
		t.Errorf("damaged file: exit %d, %q", code, stderr)
	}
}

// TestOIDCServerCAFileError: a CA file that cannot be read stops the
// server at start, with the file, line and field of the issuer's option.
func TestOIDCServerCAFileError(t *testing.T) {
	src := strings.Replace(oidcConfig, "      audiences: [lapse-cli]\n", "      audiences: [lapse-cli]\n      ca_file: missing-ca.pem\n", 1)
	path := writeServerConfig(t, strings.ReplaceAll(src, "{{ISSUER}}", "https://login.example.com"))
	_, _, err := runLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Path != "oidc.issuers[0].ca_file" || ce.Line != 9 {
		t.Fatalf("error %v; want one at line 9, oidc.issuers[0].ca_file", err)
	}
}
