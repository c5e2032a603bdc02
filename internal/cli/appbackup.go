package cli

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/verify"
	"github.com/umbra-backup/umbra/internal/writer"
)

// appBackup backs up the writers' data and paths from one shadow set.
func (a *app) appBackup(cmd *cobra.Command, f *repoFlags, cfg *config.Config, b job.Backup) error {
	ctx := cmd.Context()
	if _, err := job.ExistingPaths(b.Paths); err != nil {
		return err
	}
	repo, ctx, done, err := a.openLocked(ctx, f, false, "backup")
	if err != nil {
		return err
	}
	defer done()
	prog := &archive.Progress{}
	b.Progress = prog
	stop := a.showProgress(func(elapsed time.Duration) string {
		return fmt.Sprintf("%d files, %s read (%s/s), %s added", prog.Files.Load(),
			size(prog.BytesRead.Load()), size(rate(prog.BytesRead.Load(), elapsed)), size(prog.BytesAdded.Load()))
	})
	out, err := a.env(cfg).RunBackup(ctx, repo, b)
	stop()
	if out == nil {
		return fmt.Errorf("backup failed; no backup was recorded and no log was truncated: %w", lockLost(ctx, err))
	}
	res, checked, checkErr := out.Result, out.Verification, out.VerifyErr
	if err != nil {
		return err // stored; the retention failed
	}
	if a.json {
		if err := a.printJSON(struct {
			ID repository.ID `json:"id"`
			*repository.Manifest
			// The manifest's raw extra is what app decodes: once is enough.
			Extra        json.RawMessage `json:"extra,omitempty"`
			App          *backup.Info    `json:"app"`
			CompleteErr  string          `json:"backup_complete_error,omitempty"`
			Forgotten    []string        `json:"forgotten,omitempty"`
			StoreRetries int64           `json:"store_retries"`
			Verification any             `json:"verification,omitempty"`
		}{res.ID, res.Manifest, nil, res.Info, errString(res.CompleteErr), out.Forgotten, a.storeRetries(), verificationJSON(checked, checkErr)}); err != nil {
			return err
		}
	} else {
		a.printAppBackup(res)
		if checked != nil {
			a.printVerification(res.ID.Short(), checked.Record.OK, checked.Writers)
		}
		if len(out.Forgotten) > 0 {
			fmt.Fprintf(a.stdout, "Forgot %d older backups by the job's retention (%s); umbra prune frees their space.\n", len(out.Forgotten), b.Keep)
		}
	}
	if checkErr != nil {
		what := "its logs were truncated as after any stored backup"
		if b.TruncateAfterVerified {
			what = "nothing was truncated (truncate_after = \"verified\")"
		}
		return &exitError{code: exitUnverified, err: fmt.Errorf("backup %s is stored but did not pass its verification (%v); %s", res.ID.Short(), checkErr, what)}
	}
	if len(res.Failed) > 0 {
		return &exitError{code: exitPartial, err: fmt.Errorf("backup %s is partial: %s failed and %s left out (nothing of it stored, none of its logs truncated); the rest is stored",
			res.ID.Short(), strings.Join(res.Failed, ", "), map[bool]string{true: "was", false: "were"}[len(res.Failed) == 1])}
	}
	if n := len(res.Warnings); n > 0 || res.CompleteErr != nil {
		if res.CompleteErr != nil {
			n++
		}
		if !a.json {
			return &warningsError{n}
		}
		return &reportedError{&warningsError{n}}
	}
	return nil
}

// verificationJSON is the verification of a backup for --json, or nil if
// none ran.
func verificationJSON(res *verify.Result, err error) any {
	switch {
	case res != nil:
		return map[string]any{"id": res.ID, "ok": res.Record.OK, "writers": res.Writers}
	case err != nil:
		return map[string]any{"ok": false, "error": err.Error()}
	}
	return nil
}

func (a *app) printAppBackup(res *backup.Result) {
	for _, w := range res.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}
	if res.CompleteErr != nil {
		fmt.Fprintf(a.stderr, "warning: the backup is stored, but a writer failed after it (its logs may not be truncated): %v\n", res.CompleteErr)
	}
	m, info := res.Manifest, res.Info
	s := m.Stats
	fmt.Fprintf(a.stdout, "Backup %s (%s) of %s: %s, %s; %s read, %s added, in %s.\n",
		res.ID.Short(), info.Type, strings.Join(m.Paths, " "), count(s.Files, "file"), size(s.Bytes), size(s.BytesRead), size(s.BytesAdded),
		(time.Duration(s.DurationMS) * time.Millisecond).Round(time.Millisecond))
	for _, w := range info.Writers {
		if w.Failed {
			fmt.Fprintf(a.stdout, "  %s: FAILED, not in this backup: %s\n", w.Name, w.Error)
			continue
		}
		fmt.Fprintf(a.stdout, "  %s: %s", w.Name, w.Consistency)
		if len(w.Report.Positions) > 0 {
			var pos []string
			for _, k := range sortedKeys(w.Report.Positions) {
				pos = append(pos, k+"="+w.Report.Positions[k])
			}
			fmt.Fprintf(a.stdout, " (%s)", strings.Join(pos, ", "))
		}
		fmt.Fprintln(a.stdout)
	}
	if info.CopyReason != "" {
		fmt.Fprintf(a.stdout, "  Copy backup, nothing truncated: %s\n", info.CopyReason)
	}
	fmt.Fprintf(a.stdout, "Freeze window: %.1f ms.\n", info.FreezeMS)
}

// backupWriters builds the writer of each instance of the backup (of only
// those in only, if any): the configured one, else one from the spec the
// backup recorded.
func (a *app) backupWriters(info *backup.Info, only []string) (map[string]writer.Writer, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	wrs, err := a.env(cfg).BackupWriters(info, only)
	return wrs, usage(err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// appRestore restores the writers of an application backup.
func (a *app) appRestore(cmd *cobra.Command, repo *repository.Repository, e repository.ManifestEntry, info *backup.Info, job backup.RestoreJob) error {
	target, only := job.Target, job.Only
	wrs, err := a.backupWriters(info, only)
	if err != nil {
		return err
	}
	if target != "" {
		if target, err = filepath.Abs(target); err != nil {
			return err
		}
	}
	prog := &restore.Progress{}
	stop := a.showProgress(func(elapsed time.Duration) string {
		return fmt.Sprintf("%d files, %s (%s/s)", prog.Files.Load(), size(prog.Bytes.Load()), size(rate(prog.Bytes.Load(), elapsed)))
	})
	start := time.Now()
	job.Manifest, job.Info, job.Writers, job.Target, job.Progress = e.Manifest, info, wrs, target, prog
	done, err := backup.Restore(cmd.Context(), repo, job)
	stop()
	if err != nil && done == nil {
		return err
	}
	// Some writers may have failed while the others were restored: the
	// summary names each, then the error says how many failed.
	if a.json {
		if jerr := a.printJSON(map[string]any{"id": e.ID, "target": target, "writers": done}); jerr != nil {
			return jerr
		}
		return err
	}
	where := "in place"
	switch {
	case job.ToDataDir != "":
		where = fmt.Sprintf("to %s, started on port %d", job.ToDataDir, job.ToPort)
	case target != "":
		where = "under " + target
	}
	for _, w := range done {
		if w.Skipped != "" {
			fmt.Fprintf(a.stdout, "Not restored %s: %s.\n", w.Name, w.Skipped)
			continue
		}
		if w.Error != "" {
			fmt.Fprintf(a.stdout, "FAILED %s: %s\n", w.Name, w.Error)
			continue
		}
		fmt.Fprintf(a.stdout, "Restored %s (%s) %s: %s, %s", w.Name, strings.Join(w.Components, ", "), where, count(w.Stats.Files, "file"), size(w.Stats.Bytes))
		if len(w.HandedOn) > 0 {
			fmt.Fprintf(a.stdout, ", and %s it handed on", count(len(w.HandedOn), "file"))
		}
		fmt.Fprintln(a.stdout, ".")
		for _, mv := range w.MovedAside {
			fmt.Fprintf(a.stdout, "  The data from before the restore of %s is kept at %s; remove it once you no longer need it: rm -rf %s\n",
				mv.From, mv.To, shellQuote(mv.To))
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "Backup %s restored in %s.\n", e.ID.Short(), time.Since(start).Round(time.Millisecond))
	return nil
}
