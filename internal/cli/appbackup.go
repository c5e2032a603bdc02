package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/forget"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/retention"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/verify"
	"github.com/umbra-backup/umbra/internal/writer"
)

// appBackupOptions are the flags of an application-consistent backup.
type appBackupOptions struct {
	tags        []string
	host        string
	force       bool
	keepShadows bool
	retries     int
	fallback    bool
	strict      bool
	noTruncate  []string
	keep        retention.Policy // applied after success, when not empty
	// verify runs umbra verify on the stored backup; truncateAfterVerified
	// does it before the writers hear of the backup, and tells them
	// nothing may be truncated if it fails.
	verify, truncateAfterVerified bool
}

// onlyWriters keeps the writers a job names, and every inline one.
func onlyWriters(wrs []writer.Writer, specs []config.Spec, names, inline []string) ([]writer.Writer, []config.Spec) {
	var w2 []writer.Writer
	var s2 []config.Spec
	for i, wr := range wrs {
		if slices.Contains(names, wr.Name()) || i >= len(wrs)-len(inline) {
			w2 = append(w2, wr)
			s2 = append(s2, specs[i])
		}
	}
	return w2, s2
}

// existingPaths makes each path absolute and checks that it exists.
func existingPaths(paths []string) ([]string, error) {
	var abs []string
	for _, p := range paths {
		p, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Lstat(p); err != nil {
			return nil, fmt.Errorf("%s: %w; check the path", p, errors.Unwrap(err))
		}
		abs = append(abs, p)
	}
	return abs, nil
}

// appBackup backs up the writers' data and paths from one shadow set.
func (a *app) appBackup(cmd *cobra.Command, f *repoFlags, cfg *config.Config, wrs []writer.Writer, specs []config.Spec, paths []string, o appBackupOptions) error {
	ctx := cmd.Context()
	abs, err := existingPaths(paths)
	if err != nil {
		return err
	}
	repo, ctx, done, err := a.openLocked(ctx, f, false, "backup")
	if err != nil {
		return err
	}
	defer done()
	store, err := a.store(cfg)
	if err != nil {
		return err
	}
	coord, err := a.coordinator(cfg, store, shadow.Options{Type: writer.Full})
	if err != nil {
		return err
	}
	// A backup killed earlier left its set behind: delete its shadows now.
	if _, err := coord.List(ctx); err != nil {
		a.logger().Warn("clean up sets left by an earlier run", "err", err)
	}
	host := o.host
	if host == "" {
		host, _ = os.Hostname()
	}
	prog := &archive.Progress{}
	job := backup.Job{
		Writers: wrs, Specs: recordedSpecs(specs), Paths: abs, Host: host, Tags: o.tags,
		Retries: o.retries, KeepShadows: o.keepShadows, Progress: prog, Log: a.logger(),
		Fallback: o.fallback, Strict: o.strict, NoTruncate: o.noTruncate, Pause: testPause,
	}
	if !o.force {
		job.FindParent = func(recorded []string) *repository.ManifestEntry {
			pe, err := backup.FindParent(ctx, repo, "", host, recorded)
			if err != nil {
				return nil // only costs reading every file
			}
			return pe
		}
	}
	var checked *verify.Result
	var checkErr error
	verifyStored := func(ctx context.Context, r *backup.Result) error {
		wrs, err := a.backupWriters(r.Info, nil)
		if err == nil {
			var res verify.Result
			res, err = verify.Run(ctx, repo, verify.Job{Entry: repository.ManifestEntry{ID: r.ID, Manifest: r.Manifest}, Info: r.Info,
				Writers: wrs, Scratch: defaultScratch, Host: host})
			if res.Record != nil {
				checked = &res
			}
		}
		checkErr = err
		return err
	}
	if o.truncateAfterVerified {
		job.BeforeComplete = verifyStored
	}
	stop := a.showProgress(func(elapsed time.Duration) string {
		return fmt.Sprintf("%d files, %s read (%s/s), %s added", prog.Files.Load(),
			size(prog.BytesRead.Load()), size(rate(prog.BytesRead.Load(), elapsed)), size(prog.BytesAdded.Load()))
	})
	res, err := backup.Run(ctx, repo, coord, job)
	stop()
	if err != nil {
		return fmt.Errorf("backup failed; no backup was recorded and no log was truncated: %w", lockLost(ctx, err))
	}
	if o.verify && !o.truncateAfterVerified {
		_ = verifyStored(ctx, res)
	}
	var forgotten []string
	if !o.keep.Empty() {
		forgotten, err = applyRetention(ctx, repo, res.Manifest, o.keep)
		if err != nil {
			return fmt.Errorf("the backup %s is stored, but applying the job's retention failed: %w", res.ID.Short(), err)
		}
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
		}{res.ID, res.Manifest, nil, res.Info, errString(res.CompleteErr), forgotten, a.storeRetries(), verificationJSON(checked, checkErr)}); err != nil {
			return err
		}
	} else {
		a.printAppBackup(res)
		if checked != nil {
			a.printVerification(res.ID.Short(), checked.Record.OK, checked.Writers)
		}
		if len(forgotten) > 0 {
			fmt.Fprintf(a.stdout, "Forgot %d older backups by the job's retention (%s); umbra prune frees their space.\n", len(forgotten), o.keep)
		}
	}
	if checkErr != nil {
		what := "its logs were truncated as after any stored backup"
		if o.truncateAfterVerified {
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

// recordedSpecs keeps each writer's type and options for the manifest,
// without a password.
func recordedSpecs(specs []config.Spec) map[string]backup.Spec {
	out := map[string]backup.Spec{}
	for _, s := range specs {
		opts := maps.Clone(s.Options)
		delete(opts, "password")
		out[s.Instance()] = backup.Spec{Type: s.Type, Options: opts}
	}
	return out
}

// applyRetention forgets the backups of the same host and paths as m that
// the policy does not keep, as umbra forget does, and returns their ids.
func applyRetention(ctx context.Context, repo *repository.Repository, m *repository.Manifest, keep retention.Policy) ([]string, error) {
	all, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	all = slices.DeleteFunc(all, func(e repository.ManifestEntry) bool { return !slices.Equal(e.Paths, m.Paths) })
	removed, err := forget.Remove(ctx, repo, forget.Plan(all, m.Host, keep))
	var gone []string
	for _, id := range removed {
		gone = append(gone, id.String())
	}
	return gone, err
}

// backupWriters builds the writer of each instance of the backup (of only
// those in only, if any): the configured one, else one from the spec the
// backup recorded (its password from password_file or the environment).
func (a *app) backupWriters(info *backup.Info, only []string) (map[string]writer.Writer, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	configured, _, err := a.writersAndSpecs(cfg, nil, true)
	if err != nil {
		return nil, err
	}
	wrs := map[string]writer.Writer{}
	for _, wr := range configured {
		wrs[wr.Name()] = wr
	}
	for _, wi := range info.Writers {
		if wi.Failed || wrs[wi.Name] != nil || (len(only) > 0 && !slices.Contains(only, wi.Name)) {
			continue
		}
		mk, ok := a.reg.Writers[wi.Spec.Type]
		if !ok {
			return nil, fmt.Errorf("writer %s: type %q unknown to this umbra; configure it to restore", wi.Name, wi.Spec.Type)
		}
		wr, err := mk(wi.Name, maps.Clone(wi.Spec.Options))
		if err != nil {
			return nil, fmt.Errorf("writer %s: %w", wi.Name, err)
		}
		wrs[wi.Name] = wr
	}
	return wrs, nil
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
