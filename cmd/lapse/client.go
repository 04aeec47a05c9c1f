package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lapsehq/lapse"
)

// Environment variables read by the client commands. Flags beat them.
const (
	envAddr      = "LAPSE_ADDR"
	envToken     = "LAPSE_TOKEN"
	envTokenFile = "LAPSE_TOKEN_FILE"
	envOutput    = "LAPSE_OUTPUT"

	defaultAddr = "http://127.0.0.1:8700"
)

// clientConfig is where the client commands find the server and what they
// present to it, resolved from flags and the environment.
type clientConfig struct {
	Server string
	Token  string // never printed
	Output string
}

// clientDeps are the seams of the client commands: how they reach the
// service, read the environment, tell the time and wait. Production code uses
// defaultClientDeps; tests swap in a fake service, a fake clock and a sleep
// that advances it.
type clientDeps struct {
	// newService connects to the server described by cfg.
	newService func(cfg clientConfig) (lapse.Service, error)
	getenv     func(string) string
	readFile   func(string) ([]byte, error)
	stat       func(string) (os.FileInfo, error)
	// isTerminal reports whether w is an interactive terminal (for the live
	// status line of request --wait).
	isTerminal func(w io.Writer) bool
	clock      lapse.Clock
	// sleep waits for d or until ctx ends, whichever is first.
	sleep func(ctx context.Context, d time.Duration) error
	// interrupt returns a context that ends on Ctrl-C.
	interrupt func(ctx context.Context) (context.Context, context.CancelFunc)
	loc       *time.Location
}

func defaultClientDeps() *clientDeps {
	return &clientDeps{
		newService: newHTTPService,
		getenv:     os.Getenv,
		readFile:   os.ReadFile,
		stat:       os.Stat,
		isTerminal: func(w io.Writer) bool {
			f, ok := w.(*os.File)
			return ok && term.IsTerminal(int(f.Fd()))
		},
		clock: lapse.SystemClock{},
		sleep: func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		},
		interrupt: func(ctx context.Context) (context.Context, context.CancelFunc) {
			return signal.NotifyContext(ctx, os.Interrupt)
		},
		loc: time.Local,
	}
}

// addClientCommands adds the client commands (request, approve, grants, …) to
// the root command.
func addClientCommands(root *cobra.Command) {
	addClientCommandsWith(root, defaultClientDeps())
}

// addClientCommandsWith adds the client commands with the given seams.
func addClientCommandsWith(root *cobra.Command, d *clientDeps) {
	for _, c := range []*cobra.Command{
		d.requestCmd(), d.requestsCmd(), d.approveCmd(), d.denyCmd(), d.cancelCmd(), d.reviewCmd(),
		d.grantsCmd(), d.grantCmd(), d.credentialsCmd(), d.releaseCmd(), d.revokeCmd(), d.extendCmd(),
		d.whoamiCmd(), d.entitlementsCmd(), d.apikeyCmd(), d.mandateCmd(), d.receiptCmd(),
		d.loginCmd(), d.logoutCmd(),
	} {
		root.AddCommand(c)
	}
}

// connectionHelp is appended to every client command's help.
const connectionHelp = `
Connection (flags beat the environment):
  --server URL        or LAPSE_ADDR        server URL (default ` + defaultAddr + `)
  --token KEY         or LAPSE_TOKEN       API key to present
  --token-file FILE   or LAPSE_TOKEN_FILE  file that holds the API key
  -o table|json       or LAPSE_OUTPUT      output format (default table)
The credential is taken from the first of --token, --token-file,
LAPSE_TOKEN, LAPSE_TOKEN_FILE that is set, else from the sign-in of
'lapse login' (LAPSE_CREDENTIALS names its file). Prefer a token file (mode
0600) or the environment to --token, which other users can see in the
process list.`

// clientFlags are the connection flags every client command carries.
type clientFlags struct {
	server    string
	token     string
	tokenFile string
	output    string
}

// clientCommand is one client command with its connection flags. run gets
// the resolved configuration and a connected service.
type clientCommand struct {
	d     *clientDeps
	flags clientFlags
}

// newClientCommand builds a cobra command with the shared connection flags,
// usage-error handling and a run function that receives a connected
// service. args names the positional arguments for the usage message (nil
// for none).
func (d *clientDeps) newClientCommand(c *cobra.Command, args []string, run func(ctx context.Context, cc *clientRun, args []string) error) *cobra.Command {
	cmd := &clientCommand{d: d}
	f := c.Flags()
	f.StringVar(&cmd.flags.server, "server", defaultAddr, "Lapse server URL (env "+envAddr+")")
	f.StringVar(&cmd.flags.token, "token", "", "API key to present (env "+envToken+"); visible in the process list, prefer --token-file")
	f.StringVar(&cmd.flags.tokenFile, "token-file", "", "file that holds the API key (env "+envTokenFile+"); must not be readable by group or others")
	f.StringVarP(&cmd.flags.output, "output", "o", outputTable, "output format: table or json (env "+envOutput+")")
	if c.Long == "" {
		c.Long = c.Short + "."
	}
	c.Long = strings.TrimSpace(c.Long) + "\n" + connectionHelp
	c.SilenceErrors = true
	c.SilenceUsage = true
	c.Args = withUsageHint(exactArgs(args))
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return markUsage(c, usageErrorf("%v", err))
	})
	c.RunE = func(c *cobra.Command, args []string) error {
		cfg, err := cmd.resolve(c)
		if err != nil {
			return markUsage(c, err)
		}
		svc, err := d.newService(cfg)
		if err != nil {
			return err
		}
		cr := &clientRun{
			d:      d,
			cfg:    cfg,
			svc:    svc,
			stdout: c.OutOrStdout(),
			stderr: c.ErrOrStderr(),
		}
		ctx := c.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		return markUsage(c, run(ctx, cr, args))
	}
	return c
}

// withUsageHint makes the usage errors of an argument check name the command.
func withUsageHint(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		return markUsage(c, check(c, args))
	}
}

// markUsage records which command a usage error belongs to, so the report
// can point at its help.
func markUsage(c *cobra.Command, err error) error {
	var ue *usageError
	if errors.As(err, &ue) && ue.command == "" {
		ue.command = c.CommandPath()
	}
	return err
}

// exactArgs accepts exactly the named positional arguments.
func exactArgs(names []string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		switch {
		case len(args) == len(names):
			return nil
		case len(names) == 0:
			return usageErrorf("%s takes no arguments, got %q", c.CommandPath(), args)
		case len(args) < len(names):
			return usageErrorf("%s needs %s", c.CommandPath(), strings.Join(names, " "))
		default:
			return usageErrorf("%s takes only %s, got %d arguments", c.CommandPath(), strings.Join(names, " "), len(args))
		}
	}
}

// resolve combines flags and the environment: a flag that was given beats
// the environment, the environment beats the default.
func (cmd *clientCommand) resolve(c *cobra.Command) (clientConfig, error) {
	d := cmd.d
	stderr := c.ErrOrStderr()
	changed := c.Flags().Changed
	var cfg clientConfig

	cfg.Output = outputTable
	if v := d.getenv(envOutput); v != "" {
		cfg.Output = v
	}
	if changed("output") {
		cfg.Output = cmd.flags.output
	}
	cfg.Output = strings.ToLower(strings.TrimSpace(cfg.Output))
	if cfg.Output != outputTable && cfg.Output != outputJSON {
		return cfg, usageFieldErrorf("output", "output format must be table or json, not %q", cfg.Output)
	}

	cfg.Server = defaultAddr
	if v := d.getenv(envAddr); v != "" {
		cfg.Server = v
	}
	if changed("server") {
		cfg.Server = cmd.flags.server
	}
	server, err := checkServerURL(cfg.Server)
	if err != nil {
		return cfg, err
	}
	cfg.Server = server
	if u, _ := url.Parse(server); u.Scheme == "http" && !loopback(u.Hostname()) {
		fmt.Fprintf(stderr, "lapse: warning: %s is plain http: the API key crosses the network unencrypted\n", server)
	}

	// The credential: the first of --token, --token-file, LAPSE_TOKEN,
	// LAPSE_TOKEN_FILE. An explicit flag always beats the environment.
	switch {
	case changed("token"):
		cfg.Token = strings.TrimSpace(cmd.flags.token)
		if cfg.Token == "" {
			return cfg, usageFieldErrorf("token", "--token is empty")
		}
	case changed("token-file"):
		if cfg.Token, err = d.readTokenFile(stderr, cmd.flags.tokenFile); err != nil {
			return cfg, err
		}
	case d.getenv(envToken) != "":
		cfg.Token = strings.TrimSpace(d.getenv(envToken))
	case d.getenv(envTokenFile) != "":
		if cfg.Token, err = d.readTokenFile(stderr, d.getenv(envTokenFile)); err != nil {
			return cfg, err
		}
	default:
		// Last, the sign-in of lapse login (login.go).
		ctx := c.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		if cfg.Token, err = d.loginToken(ctx, stderr); err != nil {
			return cfg, err
		}
		if cfg.Token == "" {
			return cfg, lapse.Errorf(lapse.EUNAUTHORIZED, "no credential: run lapse login, set %s or %s, or pass --token-file", envToken, envTokenFile)
		}
	}
	return cfg, nil
}

// checkServerURL accepts an http(s) URL with a host and returns it without a
// trailing slash.
func checkServerURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usageFieldErrorf("server", "server must be an http or https URL like %s", defaultAddr)
	}
	if u.User != nil {
		return "", usageFieldErrorf("server", "server URL must not carry a user or password; use --token-file")
	}
	return strings.TrimRight(s, "/"), nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readTokenFile reads an API key from a file. Like ssh with private keys, it
// warns when the file is readable by group or others; unlike ssh it goes on,
// because the key may be short-lived and the user may not own the file.
func (d *clientDeps) readTokenFile(stderr io.Writer, path string) (string, error) {
	if path == "" {
		return "", usageFieldErrorf("token-file", "token file name is empty")
	}
	if fi, err := d.stat(path); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(stderr, "lapse: warning: token file %s is readable by group or others (mode %04o); run: chmod 600 %s\n",
			path, fi.Mode().Perm(), path)
	}
	b, err := d.readFile(path)
	if err != nil {
		// The error names the file, never its content.
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", lapse.FieldErrorf(lapse.EINVALID, "token-file", "cannot read token file %s: %v", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", lapse.FieldErrorf(lapse.EINVALID, "token-file", "token file %s is empty", path)
	}
	if strings.ContainsAny(tok, "\r\n") {
		return "", lapse.FieldErrorf(lapse.EINVALID, "token-file", "token file %s holds more than one line", path)
	}
	return tok, nil
}

// clientRun is one run of a client command: its configuration, the service
// and where to write.
type clientRun struct {
	d      *clientDeps
	cfg    clientConfig
	svc    lapse.Service
	stdout io.Writer
	stderr io.Writer
}

func (cr *clientRun) json() bool { return cr.cfg.Output == outputJSON }

// printer returns a printer for stdout at the current time.
func (cr *clientRun) printer() *printer {
	return &printer{w: cr.stdout, now: cr.d.clock.Now(), loc: cr.d.loc}
}

// usageError is an error in how a command was called: a wrong number of
// arguments, an unknown flag or a bad flag value. It exits with status 2.
type usageError struct {
	err     error
	command string // the command path, for the "see --help" hint
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

func usageFieldErrorf(field, format string, args ...any) error {
	return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, field, format, args...)}
}

// interruptedError ends a wait that the user stopped with Ctrl-C. It exits
// with status 130, as a shell reports a command ended by SIGINT.
type interruptedError struct{ msg string }

func (e *interruptedError) Error() string { return e.msg }

// Exit statuses of the client commands.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// reportError prints err for a person on w and returns the exit status:
// "lapse: <message> (code: invalid, field: duration)". Lapse errors show
// their safe message, code and field; other errors (a connection refused, a
// timeout) show their text. main calls it with whatever Execute returned.
func reportError(w io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(w, "lapse: "+clean(formatError(err)))
	var ue *usageError
	var ie *interruptedError
	switch {
	case errors.As(err, &ue):
		if ue.command != "" {
			fmt.Fprintf(w, "Run '%s --help' for usage.\n", ue.command)
		}
		return exitUsage
	case errors.As(err, &ie):
		return exitInterrupted
	}
	return exitError
}

// formatError renders err without internal detail: a *lapse.Error shows
// only its safe message, code and field.
func formatError(err error) string {
	var le *lapse.Error
	if !errors.As(err, &le) {
		return err.Error()
	}
	msg := lapse.ErrorMessage(err)
	// When the server cannot be reached, say why (connection refused, no
	// such host, a timeout): the network cause names an address, not a
	// secret, and without it the user cannot tell a typo from an outage.
	var ne *url.Error
	if le.Code == lapse.EUNAVAILABLE && errors.As(le.Err, &ne) {
		msg += ": " + ne.Err.Error()
	}
	if le.Field != "" {
		return fmt.Sprintf("%s (code: %s, field: %s)", msg, le.Code, le.Field)
	}
	return fmt.Sprintf("%s (code: %s)", msg, le.Code)
}

// asUsage marks err, a problem with a flag value, as a usage error.
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	return &usageError{err: err}
}
