package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/sqlstore"
)

// auditCommand is `lapse audit`: commands that read the store named by a
// configuration directly, like lapse admin, so that they work when the
// server does not (and do not trust it).
func (m *Main) auditCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "Verify, export and follow the tamper-evident audit log",
		Long: `Verify, export and follow the tamper-evident audit log (docs/audit.md).
These commands read the store named by --config directly, without a server.`,
	}
	c.AddCommand(m.auditVerifyCommand(), m.auditExportCommand(), m.auditTailCommand())
	return c
}

// auditFlags are the flags of every audit command.
type auditFlags struct {
	adminFlags
}

// open loads the configuration and opens its store and audit tables.
func (f *auditFlags) open(ctx context.Context, c *cobra.Command) (*config.Config, *sqlstore.Store, error) {
	if f.config == "" {
		return nil, nil, &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, nil, err
	}
	s, err := f.openStore(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return cfg, s, nil
}

// readVerifierKey returns the verifier named by arg: a key itself
// (<origin>+<hash>+<key>) or a file holding one.
func readVerifierKey(arg string) (note.Verifier, error) {
	b, err := os.ReadFile(arg)
	switch {
	case err == nil:
		arg = strings.TrimSpace(string(b))
	case !errors.Is(err, fs.ErrNotExist) || !strings.Contains(arg, "+"):
		return nil, lapse.FieldErrorf(lapse.EINVALID, "key", "cannot read the verifier key %s", arg)
	}
	v, err := audit.NewVerifier(arg)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "key", "%v", err)
	}
	return v, nil
}

// originOf returns the origin of the configured log's key, for exports.
func originOf(cfg *config.Config) string {
	if v, err := readVerifierKey(verifierKeyFile(cfg.Audit.SigningKeyFile)); err == nil {
		return v.Name()
	}
	return ""
}

func (m *Main) auditVerifyCommand() *cobra.Command {
	var (
		f          auditFlags
		key, cpDir string
		noExternal bool
		jsonOut    bool
	)
	c := &cobra.Command{
		Use:   "verify --config FILE",
		Short: "Recompute the audit log and name the first bad entry",
		Long: `Recompute every leaf from its event, every stored leaf hash, the gap-free
sequence, and the Merkle root at every stored checkpoint and at every
checkpoint in the external checkpoint directory. A tail that was removed
together with its stored checkpoints is found by the external ones.

The public key is read from the configured key's .pub file unless --key
names one (a file or the key itself); pin it out of band. Exits 1 and names
the first bad entry when anything does not match.`,
		Example: `  lapse audit verify --config lapse.yaml
  lapse audit verify -c lapse.yaml --checkpoints /mnt/worm/lapse --key audit.pub -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			cfg, store, err := f.open(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			if key == "" {
				key = verifierKeyFile(cfg.Audit.SigningKeyFile)
			}
			v, err := readVerifierKey(key)
			if err != nil {
				return err
			}
			opts := audit.VerifyOptions{Verifier: v}
			if cpDir == "" {
				cpDir = cfg.Audit.CheckpointDir
			}
			if !noExternal {
				if opts.External, err = audit.ReadDir(cpDir, v); err != nil {
					return serverErr(err)
				}
				opts.ExternalName = "external (" + cpDir + ")"
			}
			r, err := audit.Verify(ctx, store.Audit(), opts)
			if err != nil {
				return serverErr(err)
			}
			if jsonOut {
				if err := writeJSON(m.Stdout, r); err != nil {
					return err
				}
			} else {
				printReport(m.Stdout, r, cpDir, noExternal)
			}
			if !r.OK() {
				return serverErr(fmt.Errorf("the audit log does not verify: first bad entry %d", r.FirstBad))
			}
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVar(&key, "key", "", "verifier key, or a file holding it (default: the configured key's .pub file)")
	c.Flags().StringVar(&cpDir, "checkpoints", "", "external checkpoint directory (default: the configured audit.checkpoint_dir)")
	c.Flags().BoolVar(&noExternal, "no-external", false, "check the stored checkpoints only")
	c.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON")
	return c
}

func printReport(w io.Writer, r *audit.Report, cpDir string, noExternal bool) {
	fmt.Fprintf(w, "entries       %d (%d integrated; %d not yet)\n", r.Entries, r.Integrated, r.Entries-int64(r.Integrated))
	fmt.Fprintf(w, "signed        through entry %d\n", r.Signed)
	fmt.Fprintf(w, "checkpoints   %d stored", r.Checkpoints)
	if !noExternal {
		fmt.Fprintf(w, ", %d external in %s", r.External, cpDir)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "root          %s\n", base64.StdEncoding.EncodeToString(r.Root))
	rate := ""
	if s := r.Duration.Seconds(); s > 0 {
		rate = fmt.Sprintf(", %.0f entries/s", float64(r.Entries)/s)
	}
	fmt.Fprintf(w, "took          %s%s\n", r.Duration.Round(time.Millisecond), rate)
	if r.OK() {
		fmt.Fprintln(w, "result        OK")
		return
	}
	fmt.Fprintf(w, "result        FAILED: first bad entry %d\n", r.FirstBad)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", p.Message)
	}
}

func (m *Main) auditExportCommand() *cobra.Command {
	var (
		f     auditFlags
		after int64
		limit int
	)
	c := &cobra.Command{
		Use:   "export --config FILE",
		Short: "Write the audit log as JSON lines for a SIEM",
		Long: `Write the entries after --after as JSON lines on standard output, one
object per entry, in the schema lapse.audit.v1 (docs/audit.md). Free text
is JSON-escaped, so no field can break a line or forge a record. Pass the
last seq you received as --after to continue.`,
		Example: `  lapse audit export -c lapse.yaml > audit.jsonl
  lapse audit export -c lapse.yaml --after 41250 --limit 10000`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if after < 0 || limit < 0 {
				return &usageError{err: lapse.Errorf(lapse.EINVALID, "--after and --limit must not be negative"), command: c.CommandPath()}
			}
			ctx := c.Context()
			cfg, store, err := f.open(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			_, err = audit.Export(ctx, store.Audit(), originOf(cfg), after, limit, m.Stdout)
			return serverErr(err)
		},
	}
	f.register(c)
	c.Flags().Int64Var(&after, "after", 0, "export entries with a sequence greater than this")
	c.Flags().IntVar(&limit, "limit", 0, "export at most this many entries (0 = all)")
	return c
}

func (m *Main) auditTailCommand() *cobra.Command {
	var (
		f       auditFlags
		n       int
		follow  bool
		jsonOut bool
		every   time.Duration
	)
	c := &cobra.Command{
		Use:   "tail --config FILE",
		Short: "Show the last audit entries, and follow new ones",
		Long: `Show the last -n entries of the audit log, one line each, and with
--follow keep printing new entries as they are committed. Control
characters in free text are shown escaped. --json prints export records.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			cfg, store, err := f.open(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			b := store.Audit()
			origin := originOf(cfg)
			last, err := lastSeq(ctx, store)
			if err != nil {
				return serverErr(err)
			}
			after := max(0, last-int64(n))
			print := func(e *audit.Entry) error {
				if jsonOut {
					return json.NewEncoder(m.Stdout).Encode(audit.RecordOf(origin, e))
				}
				_, err := fmt.Fprintln(m.Stdout, tailLine(e))
				return err
			}
			for {
				err := b.Scan(ctx, after, 10000, func(e *audit.Entry) error {
					after = e.Seq
					return print(e)
				})
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return serverErr(err)
				}
				if !follow {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	f.register(c)
	c.Flags().IntVarP(&n, "lines", "n", 20, "how many of the last entries to show")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new entries")
	c.Flags().BoolVar(&jsonOut, "json", false, "print export records (JSON lines)")
	c.Flags().DurationVar(&every, "poll", time.Second, "how often --follow looks for new entries")
	return c
}

// lastSeq returns the sequence of the newest event.
func lastSeq(ctx context.Context, s *sqlstore.Store) (int64, error) {
	// The tree size is a lower bound that is cheap to read; the events
	// committed after it are few and are read in order from there.
	size, err := s.Audit().Size(ctx)
	if err != nil {
		return 0, err
	}
	last := int64(size)
	for {
		evs, err := s.Audit().Events(ctx, last, 10000)
		if err != nil {
			return 0, err
		}
		if len(evs) == 0 {
			return last, nil
		}
		last = evs[len(evs)-1].Seq
	}
}

// tailLine formats one entry for a terminal. Every text field is quoted
// when it holds anything but plain printable characters, so an entry can
// never look like two, or move the cursor.
func tailLine(e *audit.Entry) string {
	at := "-"
	if e.HasTime {
		at = time.Unix(0, e.Time).UTC().Format(time.RFC3339Nano)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s", e.Seq, at, safeText(e.Type))
	for _, kv := range []struct {
		k string
		v []byte
	}{{"actor", e.ActorID}, {"channel", e.Channel}, {"request", e.RequestID}, {"grant", e.GrantID}, {"outcome", e.Outcome}, {"data", e.Data}} {
		if len(kv.v) > 0 {
			b.WriteString(" " + kv.k + "=" + safeText(kv.v))
		}
	}
	return b.String()
}

func safeText(v []byte) string {
	s := string(v)
	for _, r := range s {
		if r < 0x21 || r == 0x7f || r == '"' || r > 0x7e {
			return strconv.Quote(s)
		}
	}
	return s
}
