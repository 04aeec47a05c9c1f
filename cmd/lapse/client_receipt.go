package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// receiptService is implemented by the HTTP client: receipts are not part
// of lapse.Service, whose other implementations have no signing key.
type receiptService interface {
	Receipt(ctx context.Context, grantID string) ([]byte, error)
}

func (d *clientDeps) receiptCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "receipt GRANT_ID",
		Short: "Fetch the signed revocation receipt of a revoked grant",
		Long: `Fetch the signed receipt of a revoked grant: every system that accepted
the privilege, the evidence that it is gone there, the timings and the
residual window, and the inclusion proof of the grant's grant.revoked entry
in the audit log. It is written byte for byte to --out (or standard output);
check it anywhere, offline, with 'lapse receipt verify FILE --key KEY'.`,
		Example: `  lapse receipt gr_01j... --out gr_01j.receipt.json
  lapse receipt verify gr_01j.receipt.json --key audit.pub`,
	}
	d.newClientCommand(c, []string{"GRANT_ID"}, func(ctx context.Context, cr *clientRun, args []string) error {
		rs, ok := cr.svc.(receiptService)
		if !ok {
			return lapse.Errorf(lapse.EUNAVAILABLE, "this connection cannot fetch receipts")
		}
		file, err := rs.Receipt(ctx, args[0])
		if err != nil {
			return err
		}
		if out == "" || out == "-" {
			_, err = cr.stdout.Write(file)
			return err
		}
		if err := os.WriteFile(out, file, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
		fmt.Fprintf(cr.stderr, "Wrote the receipt of %s to %s.\n", args[0], out)
		return nil
	})
	c.Flags().StringVar(&out, "out", "", "write the receipt to this file instead of standard output")
	c.AddCommand(receiptVerifyCmd())
	return c
}

// receiptVerifyCmd checks a receipt offline: no server, no store, only
// the public key.
func receiptVerifyCmd() *cobra.Command {
	var key string
	var jsonOut bool
	c := &cobra.Command{
		Use:   "verify FILE --key KEY",
		Short: "Check a revocation receipt offline with the log's public key",
		Long: `Check a receipt file offline: its signature, the signed checkpoint it
carries, and the inclusion proof of the grant's grant.revoked entry under
that checkpoint. KEY is the audit log's verifier key (<origin>+<hash>+<key>)
or a file holding it, obtained out of band. Changing any byte of the file
makes the check fail. Exits 1 when it fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if key == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "key", "--key is required: the audit log's public key, or a file holding it"), command: c.CommandPath()}
			}
			v, err := readVerifierKey(key)
			if err != nil {
				return err
			}
			file, err := os.ReadFile(args[0])
			if err != nil {
				return lapse.FieldErrorf(lapse.EINVALID, "file", "cannot read %s", args[0])
			}
			rc, err := audit.VerifyReceipt(file, v)
			if err != nil {
				return serverErr(fmt.Errorf("%s does not verify: %w", args[0], err))
			}
			w := c.OutOrStdout()
			if jsonOut {
				return writeJSON(w, rc)
			}
			g := rc.Grant
			fmt.Fprintf(w, "OK: the receipt of grant %s verifies with %s.\n", g.ID, v.Name())
			fmt.Fprintf(w, "  principal        %s (%s)\n", g.Principal.ID, g.Principal.Kind)
			fmt.Fprintf(w, "  entitlement      %s on %s, ended %s\n", g.Entitlement, g.Target, g.EndReason)
			fmt.Fprintf(w, "  ended at         %s\n", rc.Timings.EndedAt.Format(time.RFC3339Nano))
			fmt.Fprintf(w, "  verified gone    %s\n", rc.Timings.LastVerifiedAt.Format(time.RFC3339Nano))
			fmt.Fprintf(w, "  residual window  %s\n", rc.Timings.ResidualWindow)
			for _, cp := range rc.Checkpoints {
				fmt.Fprintf(w, "  checkpoint       %s (%s) verified %s\n", cp.Name, cp.Kind, cp.VerifiedAt.Format(time.RFC3339Nano))
			}
			fmt.Fprintf(w, "  log entry        %d of %d (%s)\n", rc.Log.Seq, rc.Log.TreeSize, strings.SplitN(rc.Log.Checkpoint, "\n", 2)[0])
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "the audit log's verifier key, or a file holding it (required)")
	c.Flags().BoolVar(&jsonOut, "json", false, "print the verified receipt as JSON")
	return c
}
