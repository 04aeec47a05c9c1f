// Command lapse is Lapse's one binary: the server (lapse server), the
// embedded zero-setup default (lapse dev), local administration (lapse
// admin) and the client commands (lapse request, approve, grants, …).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/config"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version or VCS revision is shown.
var version = ""

// main only turns signals into a cancelled context and errors into an exit
// status; everything else happens in Main, so tests can run it in-process.
func main() {
	ctx, stop := signalContext(context.Background())
	m := NewMain()
	err := m.Run(ctx, os.Args[1:])
	stop()
	os.Exit(m.ExitStatus(err))
}

// signalContext returns a context cancelled by the first SIGINT or SIGTERM,
// so a server drains and shuts down cleanly. A second signal ends the
// process at once, for when a shutdown hangs on a target.
func signalContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			cancel()
		case <-done:
			return
		}
		// The same signal often arrives twice at once (sent to the process
		// and to its process group); only a later one means "hurry".
		first := time.Now()
		for {
			select {
			case <-ch:
				if time.Since(first) < time.Second {
					continue
				}
				fmt.Fprintln(os.Stderr, "lapse: second signal, exiting without finishing the shutdown")
				os.Exit(exitInterrupted)
			case <-done:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}

// Main is the program. Run parses a command line and runs it; for lapse
// server and lapse dev, Run blocks until ctx ends and the server has shut
// down, and Addr reports where it listens once Started is closed.
type Main struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Clock is handed to the broker and connectors; nil is the system clock.
	Clock lapse.Clock

	logLevel string // --log-level

	mu          sync.Mutex
	server      *Server
	started     chan struct{}
	startedOnce sync.Once
}

// NewMain returns a Main wired to the process's standard streams.
func NewMain() *Main {
	return &Main{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, started: make(chan struct{})}
}

// Run executes one command line (without the program name).
func (m *Main) Run(ctx context.Context, args []string) error {
	root := newRootCommand(m)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// Started is closed once a server started by Run accepts connections.
func (m *Main) Started() <-chan struct{} { return m.started }

// Addr returns the address a server started by Run listens on, or nil.
func (m *Main) Addr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.server == nil {
		return nil
	}
	return m.server.Addr()
}

// serving records the running server and announces it.
func (m *Main) serving(s *Server) {
	m.mu.Lock()
	m.server = s
	m.mu.Unlock()
	m.startedOnce.Do(func() { close(m.started) })
}

// ExitStatus prints err for a person on Stderr and returns the exit status.
// A configuration error is printed whole, since its text names the file,
// line and field; everything else goes through the client commands'
// reporting (reportError).
func (m *Main) ExitStatus(err error) int {
	if err == nil {
		return exitOK
	}
	var ce *config.Error
	var se *serverError
	switch {
	case errors.As(err, &ce), errors.As(err, &se):
		fmt.Fprintln(m.Stderr, "lapse: "+strings.ReplaceAll(err.Error(), "\n", "\n       "))
		return exitError
	case strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag"):
		return reportError(m.Stderr, &usageError{err: err, command: "lapse"})
	}
	return reportError(m.Stderr, err)
}

// serverError marks an error of the server-side commands (server, dev,
// admin), which is printed whole: its operator needs the operation that
// failed and its cause, not only a safe message.
type serverError struct{ err error }

func (e *serverError) Error() string { return e.err.Error() }
func (e *serverError) Unwrap() error { return e.err }

// serverErr wraps a non-nil error as a serverError.
func serverErr(err error) error {
	if err == nil {
		return nil
	}
	return &serverError{err: err}
}

// newRootCommand builds the command tree: server, dev, admin and version
// here, the client commands from addClientCommands.
func newRootCommand(m *Main) *cobra.Command {
	root := &cobra.Command{
		Use:   "lapse",
		Short: "Lapse is a just-in-time access broker",
		Long: `Lapse grants privileges only for the task that needs them, takes them away
afterwards, and proves they are gone.

Start with 'lapse dev': an embedded server with an example catalog and
users, and the exact commands to try next.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(m.Stdin)
	root.SetOut(m.Stdout)
	root.SetErr(m.Stderr)
	root.PersistentFlags().StringVar(&m.logLevel, "log-level", "", "log level of server-side commands: debug, info, warn or error (default: the configuration's)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{err: err, command: c.CommandPath()}
	})
	root.AddCommand(m.serverCommand(), m.devCommand(), m.adminCommand(), m.auditCommand(), m.mcpCommand(), m.zspCommand(), m.policyCommand(), m.versionCommand())
	addClientCommands(root)
	return root
}

// newLogger builds the process logger from the configuration and the
// --log-level flag.
func (m *Main) newLogger(c *config.Config) (*slog.Logger, error) {
	level := c.Log.Level
	if m.logLevel != "" {
		level = m.logLevel
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || !validLevel(level) {
		return nil, &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "log-level", "--log-level must be debug, info, warn or error")}
	}
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler
	if c.Log.Format == "text" {
		h = slog.NewTextHandler(m.Stderr, opts)
	} else {
		h = slog.NewJSONHandler(m.Stderr, opts)
	}
	return slog.New(h), nil
}

func validLevel(s string) bool {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}

func (m *Main) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(c.OutOrStdout(), "lapse "+versionString())
			return err
		},
	}
}

// versionString is the -ldflags version, else the module version, else the
// VCS revision the binary was built from.
func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		v += " (" + rev[:min(12, len(rev))] + modified + ")"
	}
	return v + " " + info.GoVersion
}
