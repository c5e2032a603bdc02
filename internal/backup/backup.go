// Package backup is the requester (DESIGN §1): it makes a shadow set of the
// writers' data and the given paths, stores it in the repository with the
// files the writers hand on, records every writer's metadata in the
// manifest, and only once the manifest is durable tells the writers that
// the backup is safe, which is when they may truncate their logs.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

// HandOnRoot is where a backup keeps the files writers handed on:
// HandOnRoot/<writer>/<component>/<path relative to the component>.
const HandOnRoot = "/.umbra-handon"

// Job is one backup to run.
type Job struct {
	Writers []writer.Writer
	// Specs are how each writer was configured (by instance name), kept
	// in the manifest without secrets so that a restore can rebuild it.
	Specs map[string]Spec
	Paths []string // absolute paths besides the writers' components
	Host  string
	Tags  []string
	// FindParent, if set, returns the previous backup of the same
	// recorded paths: its unchanged files are not read again.
	FindParent func(paths []string) *repository.ManifestEntry
	// Retries is how often a set that failed with a retryable error is
	// tried again, after Backoff, then twice that, and so on.
	Retries int
	Backoff time.Duration
	// KeepShadows leaves the shadow set in place after the backup.
	KeepShadows bool
	// A writer that fails (after the retries) is left out, as VSS leaves
	// out a failing component: the others are stored, it is recorded as
	// failed with its reason (Result.Failed), nothing of it is stored and
	// none of its logs truncated. With Fallback its components are taken
	// as plain paths of the set instead, recorded as "crash" (or "none"
	// where the volume has no snapshot). With Strict the backup fails with
	// the writer named.
	Fallback bool
	Strict   bool
	// NoTruncate names writers told at BackupComplete that this was a copy
	// backup, so that they truncate nothing.
	NoTruncate []string
	Progress   *archive.Progress
	Log        *slog.Logger
	// Pause, if set, is called at "upload" (the archive stored, the last
	// packs not yet), "manifest" (before it is saved) and
	// "backup-complete" (after, before the writers hear of it): fault
	// tests hold the backup there to kill it.
	Pause func(ctx context.Context, point string) error
	// BeforeComplete, if set, runs once the backup is stored and before
	// the writers hear of it (truncate_after = "verified": its
	// verification). If it fails, the writers are told the backup was a
	// copy, so they truncate nothing and the WAL archive is not pruned;
	// the backup stays stored and the failure is Result.HeldBack.
	BeforeComplete func(ctx context.Context, r *Result) error
}

// Spec is a writer's configuration as recorded: its type and options,
// without a password.
type Spec struct {
	Type    string            `json:"type"`
	Options map[string]string `json:"options,omitempty"`
}

// Info is what an application-consistent backup adds to its manifest
// (Manifest.Extra).
type Info struct {
	Set         string              `json:"set"`
	Type        writer.BackupType   `json:"type"`
	CopyReason  string              `json:"copy_reason,omitempty"`
	FreezeStart time.Time           `json:"freeze_start,omitzero"`
	FreezeEnd   time.Time           `json:"freeze_end,omitzero"`
	FreezeMS    float64             `json:"freeze_ms"`
	Writers     []WriterInfo        `json:"writers"`
	Paths       []shadow.PathResult `json:"paths,omitempty"`
}

// WriterInfo is one writer's part of a backup.
type WriterInfo struct {
	Name        string                   `json:"name"`
	Spec        Spec                     `json:"spec"`
	Consistency shadow.Consistency       `json:"consistency"`
	Metadata    writer.Metadata          `json:"metadata"`
	Components  []shadow.ComponentResult `json:"components"`
	// Report is what the writer handed on; each file's Source is where it
	// is stored in the backup (under HandOnRoot).
	Report writer.Report `json:"report,omitzero"`
	// Error is why the writer failed: the backup fell back to a
	// crash-consistent copy of its data, or, with Failed, holds none.
	Error  string `json:"error,omitempty"`
	Failed bool   `json:"failed,omitempty"`
	// OwnCopies are the components the writer copied itself, as no
	// volume snapshot could (writer.Set.OwnCopies).
	OwnCopies []string `json:"own_copies,omitempty"`
}

// ReadInfo returns the Info of a manifest, or nil for a backup of plain
// paths.
func ReadInfo(m *repository.Manifest) (*Info, error) {
	if len(m.Extra) == 0 {
		return nil, nil
	}
	var info Info
	if err := json.Unmarshal(m.Extra, &info); err != nil {
		return nil, fmt.Errorf("manifest: application data: %w", err)
	}
	return &info, nil
}

// Result is a finished backup.
type Result struct {
	ID       repository.ID
	Manifest *repository.Manifest
	Info     *Info
	Warnings []string
	// CompleteErr is a writer's failure in BackupComplete: the backup is
	// stored and good, but a log may not have been truncated.
	CompleteErr error
	// Failed names the writers left out: the backup is partial.
	Failed []string
	// HeldBack is why the writers were told nothing may be truncated:
	// Job.BeforeComplete failed (the verification did not pass).
	HeldBack error
}

// Run makes the backup. Any failure before the manifest is stored aborts
// the writers (nothing is truncated) and deletes the set; the data already
// stored is left for prune.
func Run(ctx context.Context, repo *repository.Repository, coord *shadow.Coordinator, job Job) (_ *Result, err error) {
	log := job.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pause := job.Pause
	if pause == nil {
		pause = func(context.Context, string) error { return nil }
	}
	start := time.Now()
	set, release, down, err := createSet(ctx, coord, &job, log)
	if err != nil {
		return nil, err
	}
	stored := false
	defer func() {
		if stored {
			return
		}
		if aerr := coord.Abort(ctx, set, job.Writers); aerr != nil {
			err = errors.Join(err, fmt.Errorf("and aborting the writers failed: %w", aerr))
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := coord.DeleteHeld(actx, set); err != nil {
			log.Warn("delete the set after a failed backup", "set", set.ID, "err", err)
		}
		release()
	}()

	// A fallen writer's data is read whole: its excludes assume the
	// writer's own consistency (PostgreSQL's pg_wal comes from the writer;
	// a crash-consistent copy needs it).
	sources, exclude, readFrom := sourcesOf(set, job.Paths, nil)
	recorded := recordedPaths(set, job.Paths)
	var parent *repository.ManifestEntry
	if job.FindParent != nil {
		parent = job.FindParent(recorded)
	}
	opts := archive.Options{Progress: job.Progress, Exclude: exclude, Changing: changingOf(set), ReadFrom: readFrom}
	if parent != nil {
		opts.Parent = &parent.Tree
	}
	res, err := archive.Run(ctx, repo, sources, opts)
	if err == nil {
		err = pause(ctx, "upload") // packs stored, the rest in memory
	}
	if err != nil {
		return nil, err
	}
	// The writers that kept their backup open while live volumes were
	// read end it now and hand on what that gives.
	if err := coord.CompleteCopy(ctx, set, job.Writers); err != nil {
		return nil, err
	}
	root, info, err := storeHandOn(ctx, repo, set, res.Tree, job)
	if err != nil {
		return nil, err
	}
	info.Writers = append(info.Writers, fallenInfo(set, job, down)...)
	if err := repo.Flush(ctx); err != nil {
		return nil, err
	}
	extra, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	// The writers' warnings (archiving that fails) go with the files'.
	warnings := slices.Clone(res.Warnings)
	for _, w := range set.Writers {
		for _, warn := range w.Report.Warnings {
			warnings = append(warnings, w.Name+": "+warn)
		}
	}
	m := &repository.Manifest{
		Time: start.UTC(), Host: job.Host, Paths: recorded, Tree: root,
		Tags: job.Tags, Stats: res.Stats, Warnings: warnings, Extra: extra,
	}
	if parent != nil {
		m.Parent = &parent.ID
	}
	m.Stats.DurationMS = time.Since(start).Milliseconds()
	if err := pause(ctx, "manifest"); err != nil {
		return nil, err
	}
	id, err := repo.SaveManifest(ctx, m)
	if err != nil {
		return nil, err
	}
	stored = true
	// Stored: from here on the backup is not undone. A kill now leaves
	// the logs untruncated until the next backup.
	if err := pause(ctx, string(writer.PhaseBackupComplete)); err != nil {
		log.Warn("interrupted before the writers heard the backup is stored", "err", err)
	}

	// The manifest is durable: now, and not before, the writers learn
	// that the backup is safe and may truncate their logs.
	result := &Result{ID: id, Manifest: m, Info: info, Warnings: m.Warnings}
	for _, f := range down {
		if f.failed {
			result.Failed = append(result.Failed, f.wr.Name())
		}
	}
	if job.KeepShadows {
		if err := coord.Keep(set); err != nil {
			log.Warn("keep the shadow set", "set", set.ID, "err", err)
		}
	}
	noTruncate := job.NoTruncate
	if job.BeforeComplete != nil {
		if err := job.BeforeComplete(ctx, result); err != nil {
			result.HeldBack = err
			noTruncate = nil
			for _, wr := range job.Writers {
				noTruncate = append(noTruncate, wr.Name())
			}
		}
	}
	result.CompleteErr = coord.Complete(ctx, set, job.Writers, noTruncate)
	if set.Type.Truncates() && result.HeldBack == nil {
		if err := pruneArchive(ctx, repo, info, noTruncate); err != nil {
			result.CompleteErr = errors.Join(result.CompleteErr, fmt.Errorf("prune the WAL archive: %w", err))
		}
	}
	if !job.KeepShadows {
		if err := coord.DeleteHeld(context.WithoutCancel(ctx), set); err != nil {
			log.Warn("delete the set after the backup", "set", set.ID, "err", err)
		}
	}
	release()
	return result, nil
}

// fallen is a writer the backup went on without.
type fallen struct {
	wr     writer.Writer
	md     writer.Metadata
	err    error
	failed bool // left out, nothing stored (else its data is crash-consistent)
}

// createSet makes the held set, trying again after retryable failures. With
// Fallback, a writer that still fails is left out and its data taken as
// plain paths.
func createSet(ctx context.Context, coord *shadow.Coordinator, job *Job, log *slog.Logger) (*shadow.Set, func(), []fallen, error) {
	var down []fallen
	for {
		set, release, err := createWithRetries(ctx, coord, *job, log)
		if err == nil {
			return set, release, down, nil
		}
		var pe *shadow.PhaseError
		if job.Strict || !errors.As(err, &pe) || pe.Who == "" {
			return nil, nil, down, err
		}
		i := slices.IndexFunc(job.Writers, func(w writer.Writer) bool { return w.Name() == pe.Who })
		if i < 0 {
			return nil, nil, down, err
		}
		wr := job.Writers[i]
		if !job.Fallback {
			if len(job.Writers) == 1 && len(job.Paths) == 0 {
				return nil, nil, down, err // nothing would be left to store
			}
			log.Warn("writer failed; backing up the others without it", "writer", wr.Name(), "err", err)
			down = append(down, fallen{wr: wr, err: err, failed: true})
			job.Writers = slices.Delete(slices.Clone(job.Writers), i, i+1)
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, time.Minute)
		md, ierr := wr.Identify(ictx)
		cancel()
		if ierr != nil {
			return nil, nil, down, fmt.Errorf("%w; falling back to a crash-consistent copy needs its paths, but %s: %v", err, wr.Name(), ierr)
		}
		log.Warn("writer failed; backing up its data crash-consistently", "writer", wr.Name(), "err", err)
		down = append(down, fallen{wr: wr, md: md, err: err})
		job.Writers = slices.Delete(slices.Clone(job.Writers), i, i+1)
		for _, c := range md.Components {
			job.Paths = append(job.Paths, c.Paths...)
		}
	}
}

func createWithRetries(ctx context.Context, coord *shadow.Coordinator, job Job, log *slog.Logger) (*shadow.Set, func(), error) {
	wait := job.Backoff
	if wait == 0 {
		wait = 5 * time.Second
	}
	for try := 0; ; try++ {
		set, release, err := coord.CreateHeld(ctx, job.Writers, existing(job.Paths))
		if err == nil {
			return set, release, nil
		}
		var pe *shadow.PhaseError
		retryable := errors.Is(err, writer.ErrRetryable) || (errors.As(err, &pe) && pe.Retryable)
		if !retryable || try >= job.Retries {
			if try > 0 {
				return nil, nil, fmt.Errorf("after %d tries: %w", try+1, err)
			}
			return nil, nil, err
		}
		log.Warn("shadow set failed; trying again", "try", try+1, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// existing keeps the paths that exist (a fallen writer's SQLite -wal may
// not).
func existing(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// sourcesOf lists what to read: every writer component's paths and the
// user's paths, each read from its shadow copy and recorded under its live
// path; the exclusion of what the components leave out; and where the
// writers' own copies are read, also inside a user's path that holds them.
func sourcesOf(set *shadow.Set, paths, excludes []string) ([]archive.Source, func(string) bool, func(string) (string, bool)) {
	var recorded []string
	own := map[string]string{} // path → the writer's own copy of it ("" leaves it out)
	for _, w := range set.Writers {
		for _, c := range w.Metadata.Components {
			recorded = append(recorded, c.Paths...)
			excludes = append(excludes, c.Excludes...)
		}
		for _, c := range w.Report.Copies {
			own[filepath.Clean(c.Path)] = c.Source
		}
	}
	recorded = append(recorded, paths...)
	var sources []archive.Source
	seen := map[string]bool{}
	for _, p := range recorded {
		p = filepath.Clean(p)
		if seen[p] {
			continue
		}
		seen[p] = true
		if src, ok := own[p]; ok {
			if src != "" {
				sources = append(sources, archive.Source{Path: p, Read: src})
			}
			continue
		}
		if _, err := os.Lstat(p); err != nil {
			continue // a component path that does not exist (an SQLite -wal file between checkpoints)
		}
		sources = append(sources, archive.Source{Path: p, Read: snapshotOf(set, p)})
	}
	readFrom := func(path string) (string, bool) {
		src, ok := own[path]
		return src, ok
	}
	return sources, func(path string) bool { return writer.Excluded(excludes, path) || IsShadowDir(path) }, readFrom
}

// IsShadowDir reports whether path is where providers keep shadow copies on
// a volume (<mount>/.umbra-shadow): never data. A snapshot of the volume
// holds it as empty directories, which restored into a data directory that
// is a volume's root, MariaDB would take for a database.
func IsShadowDir(path string) bool {
	return filepath.Base(path) == provider.ShadowDir && writer.MountPoint(filepath.Dir(path))
}

// changingOf accepts the paths of components that are read live while
// their writer keeps them consistent (PostgreSQL in backup mode): that
// their files change as they are read is expected, not a warning.
func changingOf(set *shadow.Set) func(string) bool {
	ws := set.Writers
	live := func(p string) bool {
		for _, v := range set.Volumes() {
			if v.Live && (p == v.Source || strings.HasPrefix(p, strings.TrimSuffix(v.Source, "/")+"/")) {
				return true
			}
		}
		return false
	}
	var roots []string
	for _, w := range ws {
		for _, c := range w.Metadata.Components {
			for _, p := range c.Paths {
				if c.Needs == writer.NeedLive && live(p) {
					roots = append(roots, p)
				}
			}
		}
	}
	return func(path string) bool {
		for _, r := range roots {
			if path == r || strings.HasPrefix(path, strings.TrimSuffix(r, "/")+"/") {
				return true
			}
		}
		return false
	}
}

// snapshotOf is where path is read in the set.
func snapshotOf(set *shadow.Set, path string) string {
	best := ""
	read := path
	for _, v := range set.Volumes() {
		if (path == v.Source || strings.HasPrefix(path, strings.TrimSuffix(v.Source, "/")+"/")) && len(v.Source) > len(best) {
			best = v.Source
			read = filepath.Join(v.Snapshot, strings.TrimPrefix(path, v.Source))
		}
	}
	return read
}

func recordedPaths(set *shadow.Set, paths []string) []string {
	var all []string
	for _, w := range set.Writers {
		for _, c := range w.Metadata.Components {
			all = append(all, c.Paths...)
		}
	}
	all = append(all, paths...)
	slices.Sort(all)
	return slices.Compact(all)
}

// storeHandOn stores the files the writers handed on under HandOnRoot in
// the backup's root tree and returns that root and the manifest's Info,
// whose reports name where each file is stored.
func storeHandOn(ctx context.Context, repo *repository.Repository, set *shadow.Set, root repository.ID, job Job) (repository.ID, *Info, error) {
	info := &Info{
		Set: set.ID, Type: set.Type, CopyReason: set.CopyReason,
		FreezeStart: set.FreezeStart, FreezeEnd: set.FreezeEnd,
		FreezeMS: float64(set.FreezeWindow().Microseconds()) / 1000, Paths: set.Paths,
	}
	stage := filepath.Join(set.Scratch, "handon")
	any := false
	for _, w := range set.Writers {
		wi := WriterInfo{Name: w.Name, Spec: job.Specs[w.Name], Consistency: w.Consistency, Metadata: w.Metadata,
			Components: w.Components, Report: writer.Report{Positions: w.Report.Positions, Started: w.Report.Started}}
		for _, c := range w.Metadata.Components {
			if slices.Contains(set.OwnCopies, w.Name+"/"+c.Name) {
				wi.OwnCopies = append(wi.OwnCopies, c.Name)
			}
		}
		dir := safeName(w.Name)
		for _, f := range w.Report.Files {
			rel := filepath.Join(dir, f.Component, filepath.Clean("/" + f.Path)[1:])
			if err := linkOrCopy(f.Source, filepath.Join(stage, rel)); err != nil {
				return root, nil, fmt.Errorf("%s: hand-on file %s: %w", w.Name, f.Path, err)
			}
			wi.Report.Files = append(wi.Report.Files, writer.HandOn{Component: f.Component, Path: f.Path, Source: filepath.Join(HandOnRoot, rel)})
			any = true
		}
		info.Writers = append(info.Writers, wi)
	}
	if !any {
		return root, info, nil
	}
	res, err := archive.Run(ctx, repo, []archive.Source{{Path: HandOnRoot, Read: stage}}, archive.Options{})
	if err != nil {
		return root, nil, err
	}
	// The two roots are read back to be merged: their packs must be stored.
	if err := repo.Flush(ctx); err != nil {
		return root, nil, err
	}
	merged, err := mergeRoots(ctx, repo, root, res.Tree)
	return merged, info, err
}

// mergeRoots adds the top-level entries of b's root tree to a's.
func mergeRoots(ctx context.Context, repo *repository.Repository, a, b repository.ID) (repository.ID, error) {
	ta, err := repo.LoadTree(ctx, a)
	if err != nil {
		return a, err
	}
	tb, err := repo.LoadTree(ctx, b)
	if err != nil {
		return a, err
	}
	for _, n := range tb.Nodes {
		if ta.Find(string(n.Name)) == nil {
			ta.Nodes = append(ta.Nodes, n)
		}
	}
	id, _, err := repo.SaveTree(ctx, ta)
	return id, err
}

func safeName(s string) string { return strings.NewReplacer("/", "_", ":", "_").Replace(s) }

// linkOrCopy puts src at dst, a hard link where it can (both are in the
// set's scratch directory).
func linkOrCopy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}

// WALKey is the name under which umbra wal-push --writer NAME archives a
// WAL file: the writer's name made safe (walPrefix), a dot, the file's
// name; without a writer, the file's name alone. Several servers can so
// archive into one repository.
func WALKey(writerName, file string) string {
	if writerName == "" {
		return file
	}
	return walPrefix(writerName) + file
}

// walPrefix is the writer's name made safe for a repository file name
// (lower-case letters, digits, '-', '.') with no two names meeting: every
// byte but a lower-case letter or digit is written as -XX, '-' included.
func walPrefix(writerName string) string {
	var b strings.Builder
	for _, c := range []byte(writerName) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "-%02x", c)
		}
	}
	return b.String() + "."
}

// pruneArchive deletes archived logs that no backup can need any more:
// for each writer of this backup that names where its archive starts
// (writer.PosArchiveFrom), its archived segments before the oldest such
// position among all its backups. Timeline histories are kept.
func pruneArchive(ctx context.Context, repo *repository.Repository, info *Info, noTruncate []string) error {
	oldest := map[string]string{} // writer → oldest archive_from of its backups
	for _, w := range info.Writers {
		if w.Report.Positions[writer.PosArchiveFrom] != "" && !slices.Contains(noTruncate, w.Name) {
			oldest[w.Name] = ""
		}
	}
	if len(oldest) == 0 {
		return nil
	}
	all, err := repo.Manifests(ctx)
	if err != nil {
		return err
	}
	for _, e := range all {
		bi, err := ReadInfo(e.Manifest)
		if err != nil || bi == nil {
			continue
		}
		for _, w := range bi.Writers {
			cur, ok := oldest[w.Name]
			from := strings.ToLower(w.Report.Positions[writer.PosArchiveFrom])
			if ok && from != "" && (cur == "" || from < cur) {
				oldest[w.Name] = from
			}
		}
	}
	names, err := repo.WALNames(ctx)
	if err != nil {
		return err
	}
	for name, from := range oldest {
		prefix := walPrefix(name)
		for _, n := range names {
			seg, ok := strings.CutPrefix(n, prefix)
			if ok && len(seg) == 24 && seg < from {
				if err := repo.RemoveWAL(ctx, n); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// fallenInfo records the writers the backup went on without: their data
// was read as plain paths, as consistent as the set's copy of those.
func fallenInfo(set *shadow.Set, job Job, down []fallen) []WriterInfo {
	level := map[string]shadow.Consistency{}
	for _, p := range set.Paths {
		level[p.Path] = p.Consistency
	}
	var out []WriterInfo
	for _, f := range down {
		if f.failed {
			out = append(out, WriterInfo{Name: f.wr.Name(), Spec: job.Specs[f.wr.Name()], Error: f.err.Error(), Failed: true, Consistency: shadow.None})
			continue
		}
		wi := WriterInfo{Name: f.wr.Name(), Spec: job.Specs[f.wr.Name()], Metadata: f.md, Error: f.err.Error(), Consistency: shadow.Crash}
		for _, c := range f.md.Components {
			cr := shadow.ComponentResult{Name: c.Name, Paths: c.Paths, Consistency: shadow.Crash}
			for _, p := range c.Paths {
				if l, ok := level[filepath.Clean(p)]; ok && l != shadow.Crash {
					cr.Consistency = l
				}
			}
			if cr.Consistency != shadow.Crash {
				wi.Consistency = cr.Consistency
			}
			wi.Components = append(wi.Components, cr)
		}
		out = append(out, wi)
	}
	return out
}

// abort tells every writer that the backup failed.
