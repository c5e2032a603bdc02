package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manCommand writes a man page per command from the help text (hidden: it
// is for packaging, scripts/man.sh).
func (a *app) manCommand(root func() *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write umbra's man pages (section 1) into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			r := root()
			r.DisableAutoGenTag = true
			if err := doc.GenManTree(r, &doc.GenManHeader{Title: "UMBRA", Section: "1", Source: "umbra " + Version, Manual: "umbra manual"}, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Man pages written to %s.\n", args[0])
			return nil
		},
	}
}
