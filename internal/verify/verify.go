// Package verify proves that a backup's applications come back: each
// writer's components are restored into a private scratch directory, and
// the writer (a writer.Verifier) brings its application up there and runs
// the application's own checks. Production is never touched. The outcome is
// recorded in the repository beside the backup (repository.Verification).
package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// ScratchPrefix begins the name of each sandbox directory: one left by a
// verification that was killed is removed by the next (Clean).
const ScratchPrefix = "umbra-verify-"

// Job is one verification.
type Job struct {
	Entry repository.ManifestEntry
	Info  *backup.Info
	// Writers holds the writer of each instance to verify, built from the
	// configuration or the spec the backup recorded.
	Writers map[string]writer.Writer
	// Only limits verification to these writers; empty means all that
	// the backup holds.
	Only []string
	// Scratch is the directory the sandboxes are made in.
	Scratch string
	Host    string
	// Started, if set, hears each writer's name as its verification starts.
	Started func(name string)
}

// WriterResult is one writer's verification.
type WriterResult struct {
	Name    string         `json:"name"`
	Version string         `json:"version,omitempty"`
	OK      bool           `json:"ok"`
	Checks  []writer.Check `json:"checks"`
	// Error says why the verification could not run to its end.
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// Result is a verification, stored as Record.
type Result struct {
	ID      repository.ID // of the record
	Record  *repository.Verification
	Writers []WriterResult
}

// ErrFailed is returned when a check failed or a writer could not be
// verified: the record is stored all the same.
var ErrFailed = errors.New("verification failed")

// Run verifies each selected writer of the backup in turn, stores the
// record, and returns it; with ErrFailed when anything did not pass.
func Run(ctx context.Context, repo *repository.Repository, job Job) (Result, error) {
	if job.Info == nil || len(job.Info.Writers) == 0 {
		return Result{}, fmt.Errorf("backup %s holds no application (it was made without writers): there is nothing to bring up; umbra check --read-data checks its files", job.Entry.ID.Short())
	}
	if err := Clean(job.Scratch); err != nil {
		return Result{}, err
	}
	var results []WriterResult
	for _, wi := range job.Info.Writers {
		if len(job.Only) > 0 && !slices.Contains(job.Only, wi.Name) {
			continue
		}
		if job.Started != nil {
			job.Started(wi.Name)
		}
		results = append(results, verifyWriter(ctx, repo, job, wi))
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
	}
	if len(results) == 0 {
		return Result{}, fmt.Errorf("no writer %v in backup %s", job.Only, job.Entry.ID.Short())
	}
	ok := !slices.ContainsFunc(results, func(r WriterResult) bool { return !r.OK })
	raw, err := json.Marshal(results)
	if err != nil {
		return Result{}, err
	}
	rec := &repository.Verification{Backup: job.Entry.ID, Time: time.Now().UTC(), Host: job.Host, OK: ok, Writers: raw}
	id, err := repo.SaveVerification(ctx, rec)
	if err != nil {
		return Result{}, err
	}
	res := Result{ID: id, Record: rec, Writers: results}
	if !ok {
		return res, ErrFailed
	}
	return res, nil
}

func verifyWriter(ctx context.Context, repo *repository.Repository, job Job, wi backup.WriterInfo) (res WriterResult) {
	start := time.Now()
	res = WriterResult{Name: wi.Name, Version: wi.Metadata.Version}
	defer func() {
		res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
		res.OK = res.Error == "" && !slices.ContainsFunc(res.Checks, func(c writer.Check) bool { return !c.OK })
	}()
	if wi.Failed {
		res.Error = "it failed in this backup, which holds nothing of it"
		return res
	}
	wr := job.Writers[wi.Name]
	if wr == nil {
		res.Error = "not configured here and its type is unknown"
		return res
	}
	dir, err := os.MkdirTemp(job.Scratch, fmt.Sprintf("%s%d-", ScratchPrefix, os.Getpid()))
	if err == nil {
		// The application's own user must reach its files below.
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		res.Error = fmt.Sprintf("sandbox: %v", err)
		return res
	}
	defer os.RemoveAll(dir)

	t := time.Now()
	done, err := backup.Restore(ctx, repo, backup.RestoreJob{Manifest: job.Entry.Manifest, Info: job.Info, Writers: job.Writers, Only: []string{wi.Name}, Target: dir})
	detail := errText(err)
	if len(done) == 1 && done[0].Error != "" {
		detail = done[0].Error // the writer's own words, not the summary
	}
	res.Checks = append(res.Checks, writer.Check{Name: "restore", OK: err == nil, Detail: detail, Duration: time.Since(t)})
	if err != nil {
		return res
	}
	v, ok := wr.(writer.Verifier)
	if !ok {
		// Restored, and the writer's PostRestore checks passed; the
		// record lists no more than that.
		return res
	}
	checks, err := v.Verify(ctx, writer.Restore{Metadata: wi.Metadata, Report: wi.Report, Target: dir})
	res.Checks = append(res.Checks, checks...)
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// Clean removes the sandboxes in dir that a verification killed half-way
// left behind (its process is gone), after killing what still runs in them
// (a server started there has its working directory inside). Run calls it
// first.
func Clean(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), ScratchPrefix)
		if !e.IsDir() || !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidText); err == nil && alive(pid) {
			continue // a verification running now
		}
		sandbox := filepath.Join(dir, e.Name())
		if fi, err := os.Lstat(sandbox); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
			continue // not ours (a shared /var/tmp)
		}
		process.KillInside(sandbox)
		if err := os.RemoveAll(sandbox); err != nil {
			return fmt.Errorf("remove what a verification left: %w", err)
		}
	}
	return nil
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Results decodes the per-writer results of a record.
func Results(v repository.Verification) ([]WriterResult, error) {
	var out []WriterResult
	if err := json.Unmarshal(v.Writers, &out); err != nil {
		return nil, fmt.Errorf("verification of %s: %w", v.Backup.Short(), err)
	}
	return out, nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
