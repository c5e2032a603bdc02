package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/forget"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/retention"
)

func (a *app) forgetCommand() *cobra.Command {
	var (
		f      repoFlags
		policy retention.Policy
		host   string
		dryRun bool
		prune  bool
	)
	cmd := &cobra.Command{
		Use:   "forget [ID...] [--keep-last N] [--keep-daily N]... [--prune]",
		Short: "Remove backups by id or by a keep policy",
		Long: `Remove the backups named, or every backup a keep policy does not keep.
Policies apply to each group of backups with the same host and paths: keep
the last N, and the newest backup in each of the last N hours, days, ISO
weeks, months and years that have one (-1 keeps all of that kind). Times are
in local time.

Forget removes only the records; the data they alone use stays until
"umbra prune" (or --prune) removes it.`,
		Example: `  umbra forget --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  umbra forget --dry-run --keep-daily 7
  umbra forget 3f9a2c1b`,
		RunE: func(cmd *cobra.Command, ids []string) error {
			ctx := cmd.Context()
			if len(ids) == 0 && policy.Empty() {
				return usagef("name backups to forget or give a keep policy (--keep-last, --keep-daily, …): an empty policy would remove every backup")
			}
			if len(ids) > 0 && !policy.Empty() {
				return usagef("give backup ids or a keep policy, not both")
			}
			// Prune reads the index itself, after its lock.
			repo, done, err := a.openRepoWith(ctx, &f, repository.OpenToLock)
			if err != nil {
				return err
			}
			defer done()
			lock, err := repo.Lock(ctx, false, "forget")
			if err != nil {
				return err
			}
			defer lock.Unlock(ctx)

			var verdicts []forget.Verdict
			if len(ids) > 0 {
				for _, ref := range ids {
					e, err := repo.FindManifest(ctx, ref)
					if err != nil {
						return err
					}
					verdicts = append(verdicts, forget.Of(e))
				}
			} else {
				all, err := repo.Manifests(ctx)
				if err != nil {
					return err
				}
				verdicts = forget.Plan(all, host, policy)
			}
			removed := 0
			var errs []error
			if !dryRun {
				gone, err := forget.Remove(ctx, repo, verdicts)
				removed = len(gone)
				if err != nil {
					errs = append(errs, err)
				}
			}
			var pruned *repository.PruneReport
			if prune && !dryRun && len(errs) == 0 {
				lock.Unlock(ctx) // prune takes its own
				if pruned, err = repo.Prune(ctx, repository.PruneOptions{}); err != nil {
					errs = append(errs, err)
				}
			}
			if a.json {
				if verdicts == nil {
					verdicts = []forget.Verdict{}
				}
				if err := a.printJSON(map[string]any{"backups": verdicts, "removed": removed, "dry_run": dryRun, "prune": pruned}); err != nil {
					return err
				}
			} else {
				for _, v := range verdicts {
					what := "remove"
					if v.Keep {
						what = "keep  "
					} else if dryRun {
						what = "would remove"
					}
					fmt.Fprintf(a.stdout, "%s %s  %s  %s  %s  %s\n", what, v.ID.Short(), v.Time.Local().Format(time.DateTime),
						v.Host, strings.Join(v.Paths, " "), strings.Join(v.Reasons, ", "))
				}
				fmt.Fprintf(a.stdout, "%d backups removed.\n", removed)
				if pruned != nil {
					a.printPrune(pruned)
				}
			}
			return errors.Join(errs...)
		},
	}
	f.register(cmd.Flags())
	fl := cmd.Flags()
	fl.IntVar(&policy.Last, "keep-last", 0, "keep the last N backups")
	fl.IntVar(&policy.Hourly, "keep-hourly", 0, "keep the newest backup of each of the last N hours")
	fl.IntVar(&policy.Daily, "keep-daily", 0, "keep the newest backup of each of the last N days")
	fl.IntVar(&policy.Weekly, "keep-weekly", 0, "keep the newest backup of each of the last N weeks")
	fl.IntVar(&policy.Monthly, "keep-monthly", 0, "keep the newest backup of each of the last N months")
	fl.IntVar(&policy.Yearly, "keep-yearly", 0, "keep the newest backup of each of the last N years")
	fl.StringVar(&host, "host", "", "only consider backups of this host")
	fl.BoolVarP(&dryRun, "dry-run", "n", false, "show what would be removed, remove nothing")
	fl.BoolVar(&prune, "prune", false, "prune the repository afterwards")
	return cmd
}

func (a *app) pruneCommand() *cobra.Command {
	var (
		f      repoFlags
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "prune [--dry-run]",
		Short: "Remove data no backup uses",
		Long: `Remove the data no backup uses any more: packs nothing uses are deleted, packs
mostly unused are rewritten with only their used blobs, and packs left by
interrupted backups go.

Prune runs beside backups and restores, on any number of hosts, and never
removes what one of them uses: data it finds unused is first marked, and
deleted only once every backup and restore that was running then has ended
(a backup that did use it keeps it). With nothing running, one prune does
both; otherwise the next prune deletes what this one marked. Only one prune
or check runs at a time. It is safe to interrupt: the repository stays
consistent at every step.`,
		Example: `  umbra prune
  umbra prune --dry-run
  umbra forget --keep-daily 7 --prune`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, done, err := a.openRepoWith(cmd.Context(), &f, repository.OpenToLock)
			if err != nil {
				return err
			}
			defer done()
			rep, err := repo.Prune(cmd.Context(), repository.PruneOptions{DryRun: dryRun})
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(rep)
			}
			a.printPrune(rep)
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "show what would be removed, remove nothing")
	return cmd
}

func (a *app) printPrune(rep *repository.PruneReport) {
	if rep.DryRun {
		fmt.Fprintf(a.stdout, "Would free %s: %d packs no backup uses (%d rewritten first, %d left by interrupted backups) and %d marked earlier; %d kept for %d backups.\n",
			size(rep.BytesMarked+rep.BytesFreed), rep.PacksMarked, rep.PacksRepacked, rep.PacksOrphan, rep.PacksDeleted, rep.PacksKept, rep.Backups)
		return
	}
	fmt.Fprintf(a.stdout, "Freed %s: %d packs deleted, %d rewritten into %d; %d kept for %d backups.\n",
		size(rep.BytesFreed), rep.PacksDeleted, rep.PacksRepacked, rep.PacksWritten, rep.PacksKept, rep.Backups)
	if rep.PacksRescued > 0 {
		fmt.Fprintf(a.stdout, "%s kept after all: a backup running when they were marked uses them.\n", count(rep.PacksRescued, "marked pack"))
	}
	if rep.PacksMarked > 0 {
		fmt.Fprintf(a.stdout, "%s (%s) marked for deletion wait for %s that were running (backups, restores); the next prune after they have ended deletes them.\n",
			count(rep.PacksMarked, "pack"), size(rep.BytesMarked), count(rep.WaitingFor, "operation"))
	}
	if rep.VerificationsRemoved > 0 {
		fmt.Fprintf(a.stdout, "Removed the %s of forgotten backups.\n", count(rep.VerificationsRemoved, "verification record"))
	}
}
