package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/writer"
)

// RestoreJob is an application-aware restore of one backup.
type RestoreJob struct {
	Manifest *repository.Manifest
	Info     *Info
	// Writers holds the writer of each instance in the backup that is
	// restored, built from the configuration or the recorded spec.
	Writers map[string]writer.Writer
	// Only limits the restore to these writers (instance names); empty
	// means every writer in the backup.
	Only []string
	// Components limits each writer to these component names; empty means
	// all of them.
	Components []string
	// Target is a directory to restore under (files land at Target + their
	// path, and nothing live is touched); empty restores in place.
	Target string
	// Force allows an in-place restore over data that exists: the writer
	// stops the application and moves its files aside first.
	Force bool
	// ToDataDir and ToPort bring one database writer's copy up beside the
	// original: in a new data directory, on another port.
	ToDataDir string
	ToPort    int
	// Until and FetchLog ask for point-in-time recovery (writer.Restore);
	// FetchLog gives each writer's command to fetch its archived logs.
	Until    time.Time
	FetchLog func(writerName string) string
	Progress *restore.Progress
	// Notify, if set, hears at once where a writer moved the data from
	// before the restore and how to put it back: if the restore is then
	// killed, the operator has been told.
	Notify func(msg string)
	// Pause, if set, is called after each writer's "pre-restore", its
	// "files" and its "post-restore": fault tests hold the restore there.
	Pause func(ctx context.Context, point string) error
}

// RestoredWriter is what happened to one writer.
type RestoredWriter struct {
	Name       string        `json:"name"`
	Components []string      `json:"components"`
	Stats      restore.Stats `json:"stats"`
	HandedOn   []string      `json:"handed_on,omitempty"`
	// Skipped says why the writer was not restored: it failed in this
	// (partial) backup, which holds nothing of it.
	Skipped string `json:"skipped,omitempty"`
	// MovedAside is where PreRestore put the live data it replaced: kept
	// until the operator removes it.
	MovedAside []writer.Moved `json:"moved_aside,omitempty"`
	// Error is why the writer's restore failed (with where its data from
	// before is and how to put it back); the others went on.
	Error string `json:"error,omitempty"`
}

// Restore brings each selected writer back, in the order of the backup:
// PreRestore (stop the application, move its files aside), the files of
// its components, the files it handed on at backup time, PostRestore
// (recover, start, check).
func Restore(ctx context.Context, repo *repository.Repository, job RestoreJob) ([]RestoredWriter, error) {
	if job.ToDataDir != "" {
		return restoreBeside(ctx, repo, job)
	}
	// Refusals first, before any application is stopped.
	for _, wi := range job.Info.Writers {
		if (len(job.Only) == 0 || slices.Contains(job.Only, wi.Name)) && !wi.Failed {
			if err := preflight(job, wi); err != nil {
				return nil, fmt.Errorf("writer %s: %w", wi.Name, err)
			}
			if c, ok := job.Writers[wi.Name].(writer.RestoreChecker); ok {
				if err := c.CheckRestore(ctx, writerRestore(job, wi)); err != nil {
					return nil, fmt.Errorf("writer %s: %w", wi.Name, err)
				}
			}
		}
	}
	var done []RestoredWriter
	var failed []string
	for _, wi := range job.Info.Writers {
		if len(job.Only) > 0 && !slices.Contains(job.Only, wi.Name) {
			continue
		}
		if wi.Failed {
			why := fmt.Sprintf("it failed in this backup, which holds nothing of it (%s); restore an earlier backup of it (umbra backups)", wi.Error)
			if len(job.Only) > 0 {
				return done, fmt.Errorf("writer %s: %s", wi.Name, why)
			}
			done = append(done, RestoredWriter{Name: wi.Name, Skipped: why})
			continue
		}
		wr := job.Writers[wi.Name]
		if wr == nil {
			return done, fmt.Errorf("writer %s: not configured here and its type is unknown; configure it to restore its data", wi.Name)
		}
		rw, err := restoreWriter(ctx, repo, job, wi, wr)
		if err != nil {
			if ctx.Err() != nil {
				return done, fmt.Errorf("writer %s: %w", wi.Name, err)
			}
			// The applications are independent: one that cannot come
			// back must not keep the others down.
			rw.Error = err.Error()
			failed = append(failed, wi.Name)
		}
		done = append(done, rw)
	}
	if len(done) == 0 {
		return nil, errors.New("nothing to restore: no writer of the backup was selected")
	}
	if len(failed) > 0 {
		return done, fmt.Errorf("%d of %d writers could not be restored: %s; the others were", len(failed), len(done), strings.Join(failed, ", "))
	}
	return done, nil
}

// preflight refuses what can be refused before anything is stopped: a
// component selection the backup cannot meet, and an in-place restore
// without Force over data that exists.
func preflight(job RestoreJob, wi WriterInfo) error {
	var comps []writer.Component
	for _, c := range wi.Metadata.Components {
		if len(job.Components) == 0 || slices.Contains(job.Components, c.Name) {
			comps = append(comps, c)
		}
	}
	if len(comps) == 0 {
		return fmt.Errorf("no component named %s; the backup has %s", strings.Join(job.Components, ", "), componentNames(wi.Metadata))
	}
	for _, c := range comps {
		if !c.Selectable && len(comps) < len(wi.Metadata.Components) {
			return fmt.Errorf("component %s cannot be restored alone; restore the writer whole", c.Name)
		}
	}
	if job.Target != "" || job.Force || job.ToDataDir != "" {
		return nil
	}
	for _, c := range wi.Metadata.Components {
		if len(job.Components) > 0 && !slices.Contains(job.Components, c.Name) {
			continue
		}
		for _, p := range c.Paths {
			if exists(p) {
				return fmt.Errorf("%s exists: restoring in place replaces it; give --force (the writer stops the application and moves its files aside first), or --target DIR to restore beside it", p)
			}
		}
	}
	return nil
}

// writerRestore is what the writer of wi is told about its restore.
func writerRestore(job RestoreJob, wi WriterInfo) writer.Restore {
	r := writer.Restore{Metadata: wi.Metadata, Report: wi.Report, Target: job.Target,
		DataDir: job.ToDataDir, Port: job.ToPort, Until: job.Until, Crash: wi.Error != ""}
	for _, c := range wi.Metadata.Components {
		if len(job.Components) == 0 || slices.Contains(job.Components, c.Name) {
			r.Components = append(r.Components, c.Name)
		}
	}
	if job.FetchLog != nil {
		r.FetchLog = job.FetchLog(wi.Name)
	}
	return r
}

func restoreWriter(ctx context.Context, repo *repository.Repository, job RestoreJob, wi WriterInfo, wr writer.Writer) (RestoredWriter, error) {
	rw := RestoredWriter{Name: wi.Name}
	var comps []writer.Component
	for _, c := range wi.Metadata.Components {
		if len(job.Components) == 0 || slices.Contains(job.Components, c.Name) {
			comps = append(comps, c)
			rw.Components = append(rw.Components, c.Name)
		}
	}
	if len(comps) == 0 {
		return rw, fmt.Errorf("no component named %s; the backup has %s", strings.Join(job.Components, ", "), componentNames(wi.Metadata))
	}
	for _, c := range comps {
		if !c.Selectable && len(comps) < len(wi.Metadata.Components) {
			return rw, fmt.Errorf("component %s cannot be restored alone; restore the writer whole", c.Name)
		}
	}
	r := writerRestore(job, wi)
	if r.Crash && (!r.Until.IsZero() || r.DataDir != "") {
		return rw, fmt.Errorf("its data in this backup is only crash-consistent (%s): --until and --to-datadir need an application-consistent backup", wi.Error)
	}
	pause := job.Pause
	if pause == nil {
		pause = func(context.Context, string) error { return nil }
	}
	restorer, _ := wr.(writer.Restorer)
	if restorer != nil {
		if err := restorer.PreRestore(ctx, r); err != nil {
			// It may have moved some paths aside before it failed.
			return rw, fmt.Errorf("pre-restore: %w%s", err, putBack(wr))
		}
		if msg := putBack(wr); msg != "" && job.Notify != nil {
			job.Notify("If this restore does not finish: " + strings.TrimPrefix(msg, "\n"))
		}
		if err := pause(ctx, string(writer.PhasePreRestore)); err != nil {
			return rw, fmt.Errorf("%w%s", err, putBack(wr))
		}
	}
	target := job.Target
	if target == "" {
		target = "/"
	}
	var include []string
	for _, c := range comps {
		for _, p := range c.Paths {
			include = append(include, escapeGlob(p))
		}
	}
	stats, err := restore.Run(ctx, repo, job.Manifest.Tree, target, restore.Options{Include: include, Progress: job.Progress})
	rw.Stats = stats
	if err == nil {
		err = pause(ctx, "files")
	}
	if err != nil {
		return rw, fmt.Errorf("restore files: %w%s", err, putBack(wr))
	}
	if rw.HandedOn, err = placeHandOn(ctx, repo, job, wi, comps, target); err != nil {
		return rw, fmt.Errorf("%w%s", err, putBack(wr))
	}
	if restorer != nil {
		if err := restorer.PostRestore(ctx, r); err != nil {
			return rw, fmt.Errorf("post-restore: %w%s", err, putBack(wr))
		}
		if err := pause(ctx, string(writer.PhasePostRestore)); err != nil {
			return rw, err
		}
	}
	if m, ok := wr.(writer.AsideMover); ok {
		rw.MovedAside = m.MovedAside()
	}
	return rw, nil
}

// putBack says, for a restore that could not finish, where the writer's
// PreRestore put the data from before it and how to put that back.
func putBack(wr writer.Writer) string {
	m, ok := wr.(writer.AsideMover)
	if !ok {
		return ""
	}
	moved := m.MovedAside()
	if len(moved) == 0 {
		return ""
	}
	var where, cmds []string
	for _, mv := range moved {
		where = append(where, mv.To)
		cmds = append(cmds, fmt.Sprintf("rm -rf %s && mv %s %s", shellQuote(mv.From), shellQuote(mv.To), shellQuote(mv.From)))
	}
	return fmt.Sprintf("\nThe data from before this restore is kept at %s; to put it back, stop the application, then: %s",
		strings.Join(where, ", "), strings.Join(cmds, " && "))
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// restoreBeside restores one writer's data into a staging directory next to
// ToDataDir and has the writer bring it up there on ToPort.
func restoreBeside(ctx context.Context, repo *repository.Repository, job RestoreJob) ([]RestoredWriter, error) {
	var pick []WriterInfo
	for _, wi := range job.Info.Writers {
		if len(job.Only) == 0 || slices.Contains(job.Only, wi.Name) {
			pick = append(pick, wi)
		}
	}
	if len(pick) != 1 {
		return nil, fmt.Errorf("--to-datadir restores one writer; choose it with --writer (the backup has %d)", len(job.Info.Writers))
	}
	wi := pick[0]
	if _, ok := job.Writers[wi.Name].(writer.Relocator); !ok {
		return nil, fmt.Errorf("writer %s cannot bring a copy up in another data directory; restore it with --target DIR instead", wi.Name)
	}
	if job.ToPort <= 0 {
		return nil, errors.New("--to-datadir needs --to-port: the copy runs beside the original and must listen elsewhere")
	}
	dataDir, err := filepath.Abs(job.ToDataDir)
	if err != nil {
		return nil, err
	}
	job.ToDataDir = dataDir
	job.Target = dataDir + ".umbra-staging"
	// Searchable, as / is: the restored directories below keep their own
	// modes, and the application's user must reach its data through it.
	if err := os.Mkdir(job.Target, 0o755); err != nil {
		return nil, fmt.Errorf("staging directory for the restore: %w", err)
	}
	defer os.RemoveAll(job.Target)
	rw, err := restoreWriter(ctx, repo, job, wi, job.Writers[wi.Name])
	if err != nil {
		return nil, fmt.Errorf("writer %s: %w", wi.Name, err)
	}
	return []RestoredWriter{rw}, nil
}

// placeHandOn restores the files the writer handed on at backup time into
// its components: from HandOnRoot into a scratch directory, then each to
// its component's first path + its relative path, owned like that path.
func placeHandOn(ctx context.Context, repo *repository.Repository, job RestoreJob, wi WriterInfo, comps []writer.Component, target string) ([]string, error) {
	roots, files := handOnFiles(wi, comps, target)
	if len(files) == 0 {
		return nil, nil
	}
	// Next to the data, not in /tmp (often a small tmpfs): a backup's WAL
	// can be large, and the application is down meanwhile.
	var near string
	for _, r := range roots {
		if near == "" || r < near {
			near = r
		}
	}
	scratch, err := os.MkdirTemp(filepath.Dir(near), ".umbra-handon-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	include := []string{escapeGlob(filepath.Join(HandOnRoot, safeName(wi.Name)))}
	if _, err := restore.Run(ctx, repo, job.Manifest.Tree, scratch, restore.Options{Include: include}); err != nil {
		return nil, fmt.Errorf("restore the files the writer handed on: %w", err)
	}
	return placeFiles(files, roots, scratch, target)
}

// PlaceHandOnFrom puts the files the writer handed on into its components
// under target, reading them from the backup's tree as it lies under from
// (a mounted backup: umbra run).
func PlaceHandOnFrom(wi WriterInfo, from, target string) ([]string, error) {
	roots, files := handOnFiles(wi, wi.Metadata.Components, target)
	return placeFiles(files, roots, from, target)
}

// handOnFiles returns where each of comps lies under target, and the files
// the writer handed on into them.
func handOnFiles(wi WriterInfo, comps []writer.Component, target string) (map[string]string, []writer.HandOn) {
	roots := map[string]string{}
	for _, c := range comps {
		if len(c.Paths) > 0 {
			roots[c.Name] = filepath.Join(target, c.Paths[0])
		}
	}
	var files []writer.HandOn
	for _, f := range wi.Report.Files {
		if _, ok := roots[f.Component]; ok {
			files = append(files, f)
		}
	}
	return roots, files
}

// placeFiles copies each hand-on file from its Source under from to its
// component's root (in roots) + its relative path.
func placeFiles(files []writer.HandOn, roots map[string]string, from, target string) ([]string, error) {
	var placed []string
	for _, f := range files {
		root := roots[f.Component]
		dst := filepath.Join(root, filepath.Clean("/" + f.Path)[1:])
		if target != "/" {
			// A restored link (PostgreSQL's pg_wal) points at the live
			// system: under a target, follow it into the target instead.
			var err error
			if dst, err = underTarget(target, root, dst); err != nil {
				return placed, fmt.Errorf("hand-on file %s: %w", f.Path, err)
			}
		}
		if err := copyOwned(filepath.Join(from, f.Source), dst, root); err != nil {
			return placed, fmt.Errorf("hand-on file %s: %w", f.Path, err)
		}
		placed = append(placed, f.Path)
	}
	return placed, nil
}

// underTarget resolves the symbolic links on dst's way below root so that
// one with an absolute target leads to that path under target, never to
// the live system.
func underTarget(target, root, dst string) (string, error) {
	rel, err := filepath.Rel(root, dst)
	if err != nil {
		return dst, err
	}
	cur := root
	parts := strings.Split(rel, string(filepath.Separator))
	for i, part := range parts {
		next := filepath.Join(cur, part)
		if i == len(parts)-1 {
			return next, nil
		}
		if link, err := os.Readlink(next); err == nil {
			if filepath.IsAbs(link) {
				next = filepath.Join(target, link)
			} else {
				next = filepath.Join(cur, link)
			}
			if !strings.HasPrefix(next, strings.TrimSuffix(target, "/")+"/") {
				return dst, fmt.Errorf("%s leads out of %s", filepath.Join(cur, part), target)
			}
		}
		cur = next
	}
	return cur, nil
}

// copyOwned copies src to dst (which must not exist), mode 0600, owned by
// the owner of root.
func copyOwned(src, dst, root string) error {
	fi, err := os.Stat(root)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		return os.Lchown(dst, int(st.Uid), int(st.Gid))
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func componentNames(md writer.Metadata) string {
	var names []string
	for _, c := range md.Components {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}

// escapeGlob makes a path match itself as a filepath.Match pattern.
func escapeGlob(p string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(p)
}

// Ended is when the backup was complete: a point-in-time recovery from it
// can reach no earlier moment.
func Ended(m *repository.Manifest) time.Time {
	return m.Time.Add(time.Duration(m.Stats.DurationMS) * time.Millisecond)
}

// FindBackupUntil is FindBackup for a point-in-time restore to until:
// "latest" is the newest backup (holding writers) that ended before until,
// and a backup named that ended after it is refused, before anything is
// stopped (issue 11: production stopped and moved aside, then recovery
// refused the target and the server stayed down).
func FindBackupUntil(ctx context.Context, repo *repository.Repository, ref string, writers []string, until time.Time) (repository.ManifestEntry, error) {
	if ref != "latest" {
		e, err := FindBackup(ctx, repo, ref, writers)
		if err == nil && Ended(e.Manifest).After(until) {
			err = fmt.Errorf("--until %s is before backup %s ended (%s): recovery replays forward from a backup; choose an earlier one (umbra backups), or \"latest\" to have umbra choose",
				until.Local().Format(time.DateTime), e.ID.Short(), Ended(e.Manifest).Local().Format(time.DateTime))
		}
		return e, err
	}
	all, err := repo.Manifests(ctx)
	if err != nil {
		return repository.ManifestEntry{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		info, err := ReadInfo(all[i].Manifest)
		if err == nil && info != nil && len(lacking(info, writers)) == 0 && !Ended(all[i].Manifest).After(until) {
			return all[i], nil
		}
	}
	return repository.ManifestEntry{}, fmt.Errorf("no backup%s ended before --until %s; the earliest moment a point-in-time restore can reach is the end of the first backup",
		holding(writers), until.Local().Format(time.DateTime))
}

func holding(writers []string) string {
	if len(writers) == 0 {
		return ""
	}
	return " holding " + strings.Join(writers, ", ")
}

// FindBackup resolves ref (an id, a unique prefix of one, or "latest") to a
// backup. With writers, "latest" is the newest backup that holds every one
// of them, and a backup that lacks one is an error: never a silent restore
// of something else.
func FindBackup(ctx context.Context, repo *repository.Repository, ref string, writers []string) (repository.ManifestEntry, error) {
	if len(writers) == 0 || ref != "latest" {
		e, err := repo.FindManifest(ctx, ref)
		if err != nil || len(writers) == 0 {
			return e, err
		}
		info, err := ReadInfo(e.Manifest)
		if err != nil {
			return e, err
		}
		if missing := lacking(info, writers); len(missing) > 0 {
			return e, fmt.Errorf("backup %s holds no writer %s (it has %s); umbra backups shows which backup holds which writer",
				e.ID.Short(), strings.Join(missing, ", "), writerNames(info))
		}
		return e, nil
	}
	all, err := repo.Manifests(ctx)
	if err != nil {
		return repository.ManifestEntry{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		info, err := ReadInfo(all[i].Manifest)
		if err == nil && len(lacking(info, writers)) == 0 {
			return all[i], nil
		}
	}
	return repository.ManifestEntry{}, fmt.Errorf("no backup holds writer %s; umbra backups shows which backup holds which writer", strings.Join(writers, ", "))
}

// lacking lists the writers that info does not hold (a writer that failed
// in a partial backup is not held).
func lacking(info *Info, writers []string) []string {
	var missing []string
	for _, w := range writers {
		if info == nil || !slices.ContainsFunc(info.Writers, func(wi WriterInfo) bool { return wi.Name == w && !wi.Failed }) {
			missing = append(missing, w)
		}
	}
	return missing
}

func writerNames(info *Info) string {
	if info == nil || len(info.Writers) == 0 {
		return "no writer: it is a backup of plain paths"
	}
	var names []string
	for _, wi := range info.Writers {
		names = append(names, wi.Name)
	}
	return strings.Join(names, ", ")
}
