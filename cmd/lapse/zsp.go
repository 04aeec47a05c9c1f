package main

import "github.com/spf13/cobra"

// zspCommand is `lapse zsp`: zero-standing-privilege assurance (DESIGN.md
// §5). Each subcommand lives in its own file: zsp_map.go (the checkpoint
// map and exposure bounds), zsp_drift.go (privileges no active grant
// explains), zsp_test_cmd.go (session-level revocation tests) and
// zsp_report.go (the report).
func (m *Main) zspCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "zsp",
		Short: "Prove zero standing privilege: checkpoint map, drift, session-level tests, report",
		Long: `Prove zero standing privilege on every configured target (docs/zsp.md):
where each entitlement's access is created and consumed and how long it can
outlive revocation (map), what on the targets no active grant explains
(drift), that revoked access really stops working, held sessions included
(test), and how revocation has performed over time (report).`,
	}
	for _, sub := range zspSubcommands {
		c.AddCommand(sub(m))
	}
	return c
}

// zspSubcommands are registered by the files that define them (init), so
// each subcommand stays in its own file.
var zspSubcommands []func(*Main) *cobra.Command
