package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/spf13/cobra"
	"golang.org/x/oauth2"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
)

// Environment variables of lapse login and of the credentials it stores.
const (
	envCredentials  = "LAPSE_CREDENTIALS"
	envOIDCIssuer   = "LAPSE_OIDC_ISSUER"
	envOIDCClientID = "LAPSE_OIDC_CLIENT_ID"
)

// Defaults of lapse login.
const (
	// credentialsFile is the file lapse login writes, in the user's
	// configuration directory (…/lapse/credentials.json).
	credentialsFile = "credentials.json"
	// callbackPath is the loopback redirect's path: register
	// http://127.0.0.1/callback with the identity provider (RFC 8252 §7.3:
	// any port).
	callbackPath = "/callback"
	// loginHTTPTimeout bounds one call to the identity provider.
	loginHTTPTimeout = 30 * time.Second
	// refreshMargin renews an ID token this long before it expires, so it
	// does not expire on the way to the server.
	refreshMargin = time.Minute
)

// defaultLoginScopes are always asked for: the ID token, and the claims
// the server maps by default (email, name).
var defaultLoginScopes = []string{gooidc.ScopeOpenID, "email", "profile"}

// storedCredentials is the credentials file: the ID token the client
// commands send, and what renewing it takes. Mode 0600; it is a secret.
type storedCredentials struct {
	Issuer             string    `json:"issuer"`
	ClientID           string    `json:"client_id"`
	ClientSecret       string    `json:"client_secret,omitempty"`
	TokenEndpoint      string    `json:"token_endpoint"`
	RevocationEndpoint string    `json:"revocation_endpoint,omitempty"`
	IDToken            string    `json:"id_token"`
	RefreshToken       string    `json:"refresh_token,omitempty"`
	Expiry             time.Time `json:"expiry"`
	// Who is the person the token names, to tell them whom they sign out.
	Who string `json:"who,omitempty"`
}

func (d *clientDeps) loginCmd() *cobra.Command {
	var (
		issuer, clientID, secretFile, flow, credPath string
		extraScopes                                  []string
		port                                         int
		timeout                                      time.Duration
	)
	c := &cobra.Command{
		Use:   "login --issuer URL --client-id ID",
		Short: "Sign in with your identity provider (OpenID Connect)",
		Long: `Sign in with your organisation's identity provider and keep the ID token
for the other commands, which send it to the server as the bearer credential
when no --token, --token-file, LAPSE_TOKEN or LAPSE_TOKEN_FILE is given.

With a provider that offers the device authorization grant (RFC 8628) the
command prints a URL and a code: open the URL on any device, enter the code
and sign in there. Otherwise, or with --flow browser, it listens on
127.0.0.1 and prints a URL to open in a browser on this machine; the provider
sends the browser back to the command when you have signed in (RFC 8252,
with PKCE). Register the client with the provider as a public (native)
client with the redirect URI http://127.0.0.1/callback.

The token is stored in $XDG_CONFIG_HOME/lapse/credentials.json (or the
platform's configuration directory; LAPSE_CREDENTIALS or --credentials
names another file), readable only by you. When the provider gives a
refresh token (ask for it with --extra-scope offline_access), the ID token
is renewed when it expires; otherwise run lapse login again.
'lapse logout' removes the file.`,
		Example: `  lapse login --issuer https://login.example.com --client-id lapse-cli
  LAPSE_OIDC_ISSUER=https://login.example.com LAPSE_OIDC_CLIENT_ID=lapse-cli lapse login --extra-scope groups --extra-scope offline_access
  lapse login --issuer https://accounts.example.com --client-id lapse-cli --flow browser --callback-port 8765`,
		Args:          withUsageHint(exactArgs(nil)),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	f := c.Flags()
	f.StringVar(&issuer, "issuer", "", "the identity provider's issuer URL (env "+envOIDCIssuer+")")
	f.StringVar(&clientID, "client-id", "", "the client ID registered for Lapse with the provider (env "+envOIDCClientID+")")
	f.StringVar(&secretFile, "client-secret-file", "", "file holding the client secret, for providers that give native clients one")
	f.StringArrayVar(&extraScopes, "extra-scope", nil, "scope to ask for besides openid, email and profile (repeat; e.g. groups, offline_access)")
	f.StringVar(&flow, "flow", "auto", "auto (device when the provider offers it, else browser), device or browser")
	f.IntVar(&port, "callback-port", 0, "port of the loopback redirect for --flow browser (default: any free port)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for you to sign in")
	f.StringVar(&credPath, "credentials", "", "credentials file to write (env "+envCredentials+")")
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return markUsage(c, usageErrorf("%v", err))
	})
	c.RunE = func(c *cobra.Command, _ []string) error {
		l := &login{d: d, stdout: c.OutOrStdout(), stderr: c.ErrOrStderr()}
		if !c.Flags().Changed("issuer") {
			issuer = d.getenv(envOIDCIssuer)
		}
		if !c.Flags().Changed("client-id") {
			clientID = d.getenv(envOIDCClientID)
		}
		var err error
		if l.issuer, err = checkIssuer(issuer); err != nil {
			return markUsage(c, err)
		}
		if l.clientID = strings.TrimSpace(clientID); l.clientID == "" {
			return markUsage(c, usageFieldErrorf("client-id", "--client-id (or %s) is required: the client ID registered for Lapse", envOIDCClientID))
		}
		if secretFile != "" {
			b, err := d.readFile(secretFile)
			if err != nil {
				return lapse.FieldErrorf(lapse.EINVALID, "client-secret-file", "cannot read the client secret file %s: %v", secretFile, errors.Unwrap(err))
			}
			if l.clientSecret = strings.TrimSpace(string(b)); l.clientSecret == "" {
				return lapse.FieldErrorf(lapse.EINVALID, "client-secret-file", "the client secret file %s is empty", secretFile)
			}
		}
		if !slices.Contains([]string{"auto", "device", "browser"}, flow) {
			return markUsage(c, usageFieldErrorf("flow", "--flow must be auto, device or browser, not %q", flow))
		}
		if port < 0 || port > 65535 {
			return markUsage(c, usageFieldErrorf("callback-port", "--callback-port must be a port number"))
		}
		if timeout <= 0 {
			return markUsage(c, usageFieldErrorf("timeout", "--timeout must be a positive duration like 10m"))
		}
		if l.path, err = d.credentialsPath(c, credPath); err != nil {
			return markUsage(c, err)
		}
		l.scopes = slices.Clone(defaultLoginScopes)
		for _, s := range extraScopes {
			for _, s := range strings.Fields(s) {
				if !slices.Contains(l.scopes, s) {
					l.scopes = append(l.scopes, s)
				}
			}
		}
		ctx := c.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, stop := d.interrupt(ctx)
		defer stop()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return l.run(ctx, flow, port)
	}
	return c
}

func (d *clientDeps) logoutCmd() *cobra.Command {
	var credPath string
	c := &cobra.Command{
		Use:   "logout",
		Short: "Forget the sign-in of lapse login",
		Long: `Remove the credentials file that lapse login wrote. When the identity
provider gave a refresh token and offers token revocation (RFC 7009), the
refresh token is revoked there first; the ID token stays valid until it
expires, but nothing on this machine holds it any more.`,
		Args:          withUsageHint(exactArgs(nil)),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	c.Flags().StringVar(&credPath, "credentials", "", "credentials file to remove (env "+envCredentials+")")
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return markUsage(c, usageErrorf("%v", err))
	})
	c.RunE = func(c *cobra.Command, _ []string) error {
		path, err := d.credentialsPath(c, credPath)
		if err != nil {
			return markUsage(c, err)
		}
		stderr := c.ErrOrStderr()
		b, err := d.readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "Not signed in (no %s).\n", path)
			return nil
		}
		var cred storedCredentials
		if err == nil && json.Unmarshal(b, &cred) == nil && cred.RefreshToken != "" && cred.RevocationEndpoint != "" {
			ctx := c.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			if err := revokeRefreshToken(ctx, &cred); err != nil {
				fmt.Fprintf(stderr, "lapse: warning: the identity provider did not revoke the refresh token: %v\n", err)
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return lapse.FieldErrorf(lapse.EINVALID, "credentials", "cannot remove %s: %v", path, errors.Unwrap(err))
		}
		if cred.Who != "" {
			fmt.Fprintf(c.OutOrStdout(), "Signed out %s (removed %s).\n", cred.Who, path)
		} else {
			fmt.Fprintf(c.OutOrStdout(), "Signed out (removed %s).\n", path)
		}
		return nil
	}
	return c
}

// login is one run of lapse login.
type login struct {
	d                              *clientDeps
	stdout, stderr                 io.Writer
	issuer, clientID, clientSecret string
	scopes                         []string
	path                           string

	provider *gooidc.Provider
	conf     *oauth2.Config
}

func (l *login) run(ctx context.Context, flow string, port int) error {
	ctx = gooidc.ClientContext(ctx, &http.Client{Timeout: loginHTTPTimeout})
	p, err := gooidc.NewProvider(ctx, l.issuer)
	if err != nil {
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "cannot read the identity provider's OpenID configuration at " + l.issuer, Err: err}
	}
	l.provider = p
	l.conf = &oauth2.Config{ClientID: l.clientID, ClientSecret: l.clientSecret, Endpoint: p.Endpoint(), Scopes: l.scopes}
	if flow == "auto" {
		flow = "browser"
		if l.conf.Endpoint.DeviceAuthURL != "" {
			flow = "device"
		}
	}
	var cred *storedCredentials
	switch flow {
	case "device":
		if l.conf.Endpoint.DeviceAuthURL == "" {
			return lapse.FieldErrorf(lapse.EINVALID, "flow", "the identity provider offers no device authorization endpoint; use --flow browser")
		}
		cred, err = l.device(ctx)
	default:
		cred, err = l.browser(ctx, port)
	}
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return lapse.FieldErrorf(lapse.EUNAUTHORIZED, "timeout", "nobody signed in before --timeout ran out")
		case ctx.Err() != nil:
			return &interruptedError{msg: "stopped waiting for the sign-in"}
		}
		return err
	}
	until := "until it expires at " + cred.Expiry.Local().Format("2006-01-02 15:04")
	if cred.RefreshToken != "" {
		until = "and renew it when it expires"
	}
	fmt.Fprintf(l.stdout, "Signed in as %s. The other lapse commands use this sign-in %s.\n", cred.Who, until)
	return nil
}

// device signs in with the device authorization grant (RFC 8628).
func (l *login) device(ctx context.Context) (*storedCredentials, error) {
	da, err := l.conf.DeviceAuth(ctx)
	if err != nil {
		return nil, oauthFailure("the identity provider refused to start the sign-in", err)
	}
	// What the provider sends is printed escaped: it must not be able to
	// paint the terminal.
	fmt.Fprintf(l.stderr, "To sign in, open %s and enter the code %s\n", clean(da.VerificationURI), clean(da.UserCode))
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(l.stderr, "(or open %s)\n", clean(da.VerificationURIComplete))
	}
	fmt.Fprintln(l.stderr, "Waiting for you to sign in…")
	tok, err := l.conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return nil, oauthFailure("the sign-in did not complete", err)
	}
	return l.finish(ctx, tok, "")
}

// callbackOutcome is what the loopback redirect brought.
type callbackOutcome struct {
	cred *storedCredentials
	err  error
}

// browser signs in with the authorization code flow and PKCE through a
// loopback redirect (RFC 8252): the provider sends the browser back to
// 127.0.0.1 with a code, which is exchanged here.
func (l *login) browser(ctx context.Context, port int) (*storedCredentials, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "callback-port", "cannot listen on 127.0.0.1:%d for the redirect: %v", port, err)
	}
	defer ln.Close()
	l.conf.RedirectURL = "http://" + ln.Addr().String() + callbackPath
	state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
	authURL := l.conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), gooidc.Nonce(nonce))

	done := make(chan callbackOutcome, 1)
	var once sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+callbackPath, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		// A redirect without our state was not started by this command
		// (a forged or stale link): it is ignored, and the wait goes on.
		if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1 {
			http.Error(w, "This sign-in was not started by this lapse login.", http.StatusBadRequest)
			return
		}
		handled := false
		once.Do(func() {
			handled = true
			var out callbackOutcome
			if e := q.Get("error"); e != "" {
				out.err = lapse.Errorf(lapse.EUNAUTHORIZED, "the identity provider refused the sign-in: %s %s", clean(e), clean(q.Get("error_description")))
			} else if tok, err := l.conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier)); err != nil {
				out.err = oauthFailure("the identity provider did not exchange the code", err)
			} else {
				out.cred, out.err = l.finish(ctx, tok, nonce)
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			if out.err != nil {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, "<!doctype html><title>Lapse</title><p>Sign-in failed: %s</p>", html.EscapeString(lapse.ErrorMessage(out.err)))
			} else {
				fmt.Fprintf(w, "<!doctype html><title>Lapse</title><p>Signed in to Lapse as %s. You can close this window.</p>", html.EscapeString(out.cred.Who))
			}
			done <- out
		})
		if !handled {
			http.Error(w, "This sign-in has already completed.", http.StatusConflict)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer func() {
		// Shutdown, not Close: the browser must still get the page that
		// says how the sign-in ended.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()

	fmt.Fprintf(l.stderr, "To sign in, open this URL in a browser on this machine:\n\n  %s\n\nWaiting for you to sign in…\n", clean(authURL))
	select {
	case out := <-done:
		return out.cred, out.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// finish checks the ID token of a token response (signature, issuer,
// audience, expiry and, for the browser flow, the nonce), so a mistake
// shows here rather than at the server, and stores it.
func (l *login) finish(ctx context.Context, tok *oauth2.Token, nonce string) (*storedCredentials, error) {
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "the identity provider answered without an ID token (is openid among the client's scopes?)")
	}
	idt, err := l.provider.VerifierContext(ctx, &gooidc.Config{ClientID: l.clientID}).Verify(ctx, raw)
	if err != nil {
		return nil, &lapse.Error{Code: lapse.EUNAUTHORIZED, Message: "the identity provider's ID token does not verify", Err: err}
	}
	if nonce != "" && subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return nil, lapse.Errorf(lapse.EUNAUTHORIZED, "the ID token is not for this sign-in (nonce)")
	}
	var claims struct {
		Email string `json:"email"`
	}
	_ = idt.Claims(&claims)
	var meta struct {
		Revocation string `json:"revocation_endpoint"`
	}
	_ = l.provider.Claims(&meta)
	cred := &storedCredentials{
		Issuer:             l.issuer,
		ClientID:           l.clientID,
		ClientSecret:       l.clientSecret,
		TokenEndpoint:      l.conf.Endpoint.TokenURL,
		RevocationEndpoint: meta.Revocation,
		IDToken:            raw,
		RefreshToken:       tok.RefreshToken,
		Expiry:             idt.Expiry,
		Who:                cmp.Or(clean(claims.Email), clean(idt.Subject)),
	}
	if err := writeCredentials(l.path, cred); err != nil {
		return nil, err
	}
	return cred, nil
}

// oauthFailure turns an OAuth error answer into an EUNAUTHORIZED error
// that says what the provider said, and anything else (the provider cannot
// be reached) into EUNAVAILABLE.
func oauthFailure(msg string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		what := re.ErrorCode
		if re.ErrorDescription != "" {
			what += ": " + re.ErrorDescription
		}
		if what == "" && re.Response != nil {
			what = re.Response.Status
		}
		return lapse.Errorf(lapse.EUNAUTHORIZED, "%s: %s", msg, clean(what))
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: msg, Err: err}
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// checkIssuer accepts an https issuer URL (http only on a loopback
// address, for tests and local providers).
func checkIssuer(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", usageFieldErrorf("issuer", "--issuer (or %s) is required: your identity provider's issuer URL", envOIDCIssuer)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", usageFieldErrorf("issuer", "--issuer must be an issuer URL like https://login.example.com")
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && loopback(u.Hostname())) {
		return "", usageFieldErrorf("issuer", "--issuer must be https (http only on a loopback address)")
	}
	return s, nil
}

// credentialsPath is the credentials file: the flag, else
// LAPSE_CREDENTIALS, else credentials.json in the user's configuration
// directory. It returns "" when there is no configuration directory.
func (d *clientDeps) credentialsPath(c *cobra.Command, flag string) (string, error) {
	if c != nil && c.Flags().Changed("credentials") {
		if flag == "" {
			return "", usageFieldErrorf("credentials", "--credentials is empty")
		}
		return flag, nil
	}
	if p := d.getenv(envCredentials); p != "" {
		return p, nil
	}
	dir := userConfigDir(d.getenv)
	if dir == "" {
		return "", usageFieldErrorf("credentials", "no configuration directory to keep the sign-in in; set %s or pass --credentials FILE", envCredentials)
	}
	return filepath.Join(dir, "lapse", credentialsFile), nil
}

// userConfigDir is os.UserConfigDir over getenv, so that tests choose it.
func userConfigDir(getenv func(string) string) string {
	switch runtime.GOOS {
	case "windows":
		return getenv("AppData")
	case "darwin", "ios":
		if h := getenv("HOME"); h != "" {
			return filepath.Join(h, "Library", "Application Support")
		}
		return ""
	}
	if x := getenv("XDG_CONFIG_HOME"); x != "" && filepath.IsAbs(x) {
		return x
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config")
	}
	return ""
}

// writeCredentials writes the file with mode 0600 (its directory 0700),
// through a temporary file and a rename, so that a crash never leaves half
// a file and no other user can read it at any moment.
func writeCredentials(path string, cred *storedCredentials) error {
	b, err := json.MarshalIndent(cred, "", "  ")
	if err != nil {
		return lapse.Internal("encode credentials", err)
	}
	dir := filepath.Dir(path)
	fail := func(err error) error {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return lapse.FieldErrorf(lapse.EINVALID, "credentials", "cannot write the credentials file %s: %v", path, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail(err)
	}
	f, err := os.CreateTemp(dir, ".credentials-*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		f.Close()
		return fail(err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fail(err)
	}
	return nil
}

// loginToken is the ID token of lapse login, renewed with the refresh
// token when it is about to expire; "" when nobody signed in.
func (d *clientDeps) loginToken(ctx context.Context, stderr io.Writer) (string, error) {
	path, err := d.credentialsPath(nil, "")
	if err != nil {
		return "", nil // no configuration directory: nobody signed in
	}
	b, err := d.readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", lapse.FieldErrorf(lapse.EINVALID, "credentials", "cannot read the credentials file %s: %v", path, errors.Unwrap(err))
	}
	if fi, err := d.stat(path); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(stderr, "lapse: warning: credentials file %s is readable by group or others (mode %04o); run: chmod 600 %s\n", path, fi.Mode().Perm(), path)
	}
	var cred storedCredentials
	if err := json.Unmarshal(b, &cred); err != nil || cred.IDToken == "" {
		return "", lapse.FieldErrorf(lapse.EINVALID, "credentials", "the credentials file %s is damaged: run lapse login", path)
	}
	if d.clock.Now().Add(refreshMargin).Before(cred.Expiry) {
		return cred.IDToken, nil
	}
	if cred.RefreshToken == "" || cred.TokenEndpoint == "" {
		return "", lapse.Errorf(lapse.EUNAUTHORIZED, "your sign-in expired at %s: run lapse login", cred.Expiry.Local().Format("2006-01-02 15:04"))
	}
	if err := refreshCredentials(ctx, &cred); err != nil {
		return "", err
	}
	if err := writeCredentials(path, &cred); err != nil {
		return "", err
	}
	return cred.IDToken, nil
}

// refreshCredentials renews the ID token with the refresh token (the
// provider may rotate the refresh token too).
func refreshCredentials(ctx context.Context, cred *storedCredentials) error {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Timeout: loginHTTPTimeout})
	conf := &oauth2.Config{ClientID: cred.ClientID, ClientSecret: cred.ClientSecret, Endpoint: oauth2.Endpoint{TokenURL: cred.TokenEndpoint}}
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: cred.RefreshToken}).Token()
	if err != nil {
		if lapse.ErrorCode(oauthFailure("", err)) == lapse.EUNAUTHORIZED {
			return lapse.Errorf(lapse.EUNAUTHORIZED, "your sign-in expired and the identity provider did not renew it: run lapse login")
		}
		return &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "your sign-in expired and the identity provider cannot be reached to renew it", Err: err}
	}
	raw, _ := tok.Extra("id_token").(string)
	if !authn.IsJWT(raw) {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "the identity provider renewed the sign-in without an ID token: run lapse login")
	}
	exp, err := unverifiedExpiry(raw)
	if err != nil {
		return lapse.Errorf(lapse.EUNAUTHORIZED, "the identity provider's new ID token has no expiry: run lapse login")
	}
	cred.IDToken, cred.Expiry = raw, exp
	if tok.RefreshToken != "" {
		cred.RefreshToken = tok.RefreshToken
	}
	return nil
}

// unverifiedExpiry reads exp from an ID token without verifying it: the
// client only needs to know when to renew; the server verifies.
func unverifiedExpiry(tok string) (time.Time, error) {
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, err
	}
	var c struct {
		Exp float64 `json:"exp"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Exp <= 0 {
		return time.Time{}, errors.New("no exp")
	}
	return time.Unix(int64(c.Exp), 0), nil
}

// revokeRefreshToken asks the provider to revoke the refresh token (RFC
// 7009), best effort.
func revokeRefreshToken(ctx context.Context, cred *storedCredentials) error {
	form := url.Values{"token": {cred.RefreshToken}, "token_type_hint": {"refresh_token"}, "client_id": {cred.ClientID}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cred.RevocationEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if cred.ClientSecret != "" {
		req.SetBasicAuth(url.QueryEscape(cred.ClientID), url.QueryEscape(cred.ClientSecret))
	}
	resp, err := (&http.Client{Timeout: loginHTTPTimeout}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("it answered %s", resp.Status)
	}
	return nil
}
