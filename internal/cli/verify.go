package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/verify"
)

// exitUnverified: the backup did not pass its verification.
const exitUnverified = 5

// defaultScratch holds the sandboxes: on disk (not a tmpfs /tmp), and
// reachable by the applications' own users.
const defaultScratch = job.DefaultScratch

func (a *app) verifyCommand() *cobra.Command {
	var f repoFlags
	var only []string
	var scratch string
	cmd := &cobra.Command{
		Use:   "verify [ID|latest] [--writer NAME]...",
		Short: "Bring a backup's applications up in a sandbox and check them",
		Long: `Prove that a backup comes back: each writer's data is restored into a
private scratch directory (umbra-verify-PID-… under --scratch) and the
writer runs the application's own checks on it, never touching
production:

  postgres  the cluster comes up on a socket in the sandbox (no TCP, no
            archiving, no primary), recovery must reach the backup's stop
            LSN, pg_amcheck --heapallindexed checks every database
  mariadb   mariadbd with none of production's option files, no network,
            the restored binary logs: InnoDB recovers, the binary log ends
            at the recorded GTID, CHECK TABLE passes on every table
  redis     redis-check-rdb / redis-check-aof, then a Redis with no port
            and no saves loads the files and its key count is compared
  sqlite    PRAGMA integrity_check and foreign_key_check

Other writers (script) are restored, with their restore checks, and the
record lists only those. The outcome (each check, its result and duration, the application's
version) is stored in the repository beside the backup: umbra backups shows
verified, FAILED or nothing; umbra show the record. Exit status 5 when a
check failed. A sandbox left by a verification that was killed is removed,
with anything still running in it, by the next one.`,
		Example: `  umbra verify                      # the latest backup, every writer
  umbra verify 3f9a2c1b --writer sqlite:app
  umbra verify latest --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := "latest"
			if len(args) == 1 {
				ref = args[0]
			}
			repo, ctx, done, err := a.openLocked(cmd.Context(), &f, false, "verify")
			if err != nil {
				return err
			}
			defer done()
			cfg, err := a.config()
			if err != nil {
				return err
			}
			e, res, err := a.env(cfg).Verify(ctx, repo, ref, only, scratch, func(name string) { a.logger().Info("verifying", "writer", name) })
			if err != nil && !errors.Is(err, verify.ErrFailed) {
				return usage(lockLost(ctx, err))
			}
			if a.json {
				if jerr := a.printJSON(map[string]any{"id": res.ID, "backup": e.ID, "ok": res.Record.OK, "time": res.Record.Time, "writers": res.Writers}); jerr != nil {
					return jerr
				}
			} else {
				a.printVerification(e.ID.Short(), res.Record.OK, res.Writers)
			}
			if err != nil {
				return &exitError{code: exitUnverified, err: fmt.Errorf("backup %s did not pass its verification", e.ID.Short())}
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringArrayVarP(&only, "writer", "w", nil, "verify only this writer instance, such as postgres:main (repeatable)")
	cmd.Flags().StringVar(&scratch, "scratch", defaultScratch, "directory to make the sandboxes in (room for a restore of the writers verified)")
	return cmd
}

// printVerification says what each writer's verification found.
func (a *app) printVerification(backupID string, ok bool, writers []verify.WriterResult) {
	verdict := map[bool]string{true: "verified", false: "FAILED verification"}
	fmt.Fprintf(a.stdout, "Backup %s %s.\n", backupID, verdict[ok])
	for _, w := range writers {
		state := map[bool]string{true: "ok", false: "FAILED"}[w.OK]
		version := ""
		if w.Version != "" {
			version = " (" + w.Version + ")"
		}
		fmt.Fprintf(a.stdout, "  %s%s: %s in %s\n", w.Name, version, state, (time.Duration(w.DurationMS*1000) * time.Microsecond).Round(time.Millisecond))
		for _, c := range w.Checks {
			line := fmt.Sprintf("    %s: %s (%s)", c.Name, map[bool]string{true: "ok", false: "FAILED"}[c.OK], c.Duration.Round(time.Millisecond))
			if c.Detail != "" {
				line += ": " + c.Detail
			}
			fmt.Fprintln(a.stdout, line)
		}
		if w.Error != "" {
			fmt.Fprintf(a.stdout, "    could not verify: %s\n", w.Error)
		}
	}
}
