package job

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/forget"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/retention"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/verify"
	"github.com/umbra-backup/umbra/internal/writer"
)

// DefaultScratch holds verification sandboxes: on disk (not a tmpfs /tmp),
// and reachable by the applications' own users.
const DefaultScratch = "/var/tmp"

// Backup is one application-consistent backup to run: the writers' data
// and plain paths from one shadow set.
type Backup struct {
	Writers     []writer.Writer
	Specs       []config.Spec // what each writer was built from, recorded without passwords
	Paths       []string
	Host        string // default: this machine's name
	Tags        []string
	Force       bool // read every file, not only those changed since the parent
	KeepShadows bool
	Retries     int
	Fallback    bool
	Strict      bool
	NoTruncate  []string
	Keep        retention.Policy // applied after success, when not empty
	// Verify runs a verification of the stored backup;
	// TruncateAfterVerified runs it before the writers hear of the backup,
	// and tells them nothing may be truncated if it fails.
	Verify, TruncateAfterVerified bool
	Progress                      *archive.Progress
}

// Outcome is what a backup run did.
type Outcome struct {
	*backup.Result
	Verification *verify.Result // nil if none ran, or it could not start
	VerifyErr    error          // the verification failed, or could not run
	Forgotten    []string       // backups the retention forgot
}

// FromConfig is the backup a configured job describes, with its writers
// (all configured ones when the job names none) built.
func (e *Env) FromConfig(j config.Job) (Backup, error) {
	b := Backup{
		Paths: slices.Clone(j.Paths), Tags: slices.Clone(j.Tags), Fallback: j.Fallback, Strict: j.Strict,
		KeepShadows: j.KeepShadows, NoTruncate: slices.Clone(j.NoTruncate), Retries: 3,
		Keep: retention.Policy(j.Keep), Verify: j.Verify || j.TruncateAfter == "verified",
		TruncateAfterVerified: j.TruncateAfter == "verified",
	}
	if j.Retries >= 0 {
		b.Retries = j.Retries
	}
	wrs, specs, err := e.Writers(nil, true)
	if err != nil {
		return b, err
	}
	if len(j.Writers) > 0 {
		wrs, specs = OnlyWriters(wrs, specs, j.Writers, 0)
	}
	b.Writers, b.Specs = wrs, specs
	return b, nil
}

// OnlyWriters keeps the writers named, and the last inline ones (given on
// a command line besides the job's).
func OnlyWriters(wrs []writer.Writer, specs []config.Spec, names []string, inline int) ([]writer.Writer, []config.Spec) {
	var w2 []writer.Writer
	var s2 []config.Spec
	for i, wr := range wrs {
		if slices.Contains(names, wr.Name()) || i >= len(wrs)-inline {
			w2 = append(w2, wr)
			s2 = append(s2, specs[i])
		}
	}
	return w2, s2
}

// ExistingPaths makes each path absolute and checks that it exists.
func ExistingPaths(paths []string) ([]string, error) {
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

// RunBackup runs b into repo, which the caller has opened and locked:
// the shadow set, the archive, the manifest, then (by b) the verification
// and the retention. An error means no backup was recorded and no log
// truncated; an Outcome may still say a writer failed, the verification
// failed, or the retention could not be applied.
func (e *Env) RunBackup(ctx context.Context, repo *repository.Repository, b Backup) (*Outcome, error) {
	abs, err := ExistingPaths(b.Paths)
	if err != nil {
		return nil, err
	}
	store, err := e.Store()
	if err != nil {
		return nil, err
	}
	coord, err := e.Coordinator(store, shadow.Options{Type: writer.Full})
	if err != nil {
		return nil, err
	}
	// A backup killed earlier left its set behind: delete its shadows now.
	if _, err := coord.List(ctx); err != nil {
		e.Log.Warn("clean up sets left by an earlier run", "err", err)
	}
	host := b.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	prog := b.Progress
	if prog == nil {
		prog = &archive.Progress{}
	}
	job := backup.Job{
		Writers: b.Writers, Specs: RecordedSpecs(b.Specs), Paths: abs, Host: host, Tags: b.Tags,
		Retries: b.Retries, KeepShadows: b.KeepShadows, Progress: prog, Log: e.Log,
		Fallback: b.Fallback, Strict: b.Strict, NoTruncate: b.NoTruncate, Pause: e.Pause,
	}
	if !b.Force {
		job.FindParent = func(recorded []string) *repository.ManifestEntry {
			pe, err := backup.FindParent(ctx, repo, "", host, recorded)
			if err != nil {
				return nil // only costs reading every file
			}
			return pe
		}
	}
	out := &Outcome{}
	verifyStored := func(ctx context.Context, r *backup.Result) error {
		wrs, err := e.BackupWriters(r.Info, nil)
		if err == nil {
			var res verify.Result
			res, err = verify.Run(ctx, repo, verify.Job{Entry: repository.ManifestEntry{ID: r.ID, Manifest: r.Manifest}, Info: r.Info,
				Writers: wrs, Scratch: DefaultScratch, Host: host})
			if res.Record != nil {
				out.Verification = &res
			}
		}
		out.VerifyErr = err
		return err
	}
	if b.TruncateAfterVerified {
		job.BeforeComplete = verifyStored
	}
	res, err := backup.Run(ctx, repo, coord, job)
	if err != nil {
		return nil, err
	}
	out.Result = res
	if b.Verify && !b.TruncateAfterVerified {
		_ = verifyStored(ctx, res)
	}
	if !b.Keep.Empty() {
		out.Forgotten, err = applyRetention(ctx, repo, res.Manifest, b.Keep)
		if err != nil {
			return out, fmt.Errorf("the backup %s is stored, but applying the job's retention failed: %w", res.ID.Short(), err)
		}
	}
	return out, nil
}

// RecordedSpecs keeps each writer's type and options for the manifest,
// without a password.
func RecordedSpecs(specs []config.Spec) map[string]backup.Spec {
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
