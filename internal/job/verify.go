package job

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/verify"
)

// Verify verifies the backup ref ("latest", an id or its prefix) of repo,
// locked by the caller: each writer (of only, if given) brought up in a
// sandbox under scratch (DefaultScratch if empty). A failed check returns
// the result and an error wrapping verify.ErrFailed.
func (e *Env) Verify(ctx context.Context, repo *repository.Repository, ref string, only []string, scratch string, started func(string)) (repository.ManifestEntry, verify.Result, error) {
	entry, err := repo.FindManifest(ctx, ref)
	if err != nil {
		return entry, verify.Result{}, err
	}
	info, err := backup.ReadInfo(entry.Manifest)
	if err != nil {
		return entry, verify.Result{}, err
	}
	if info == nil {
		return entry, verify.Result{}, fmt.Errorf("backup %s holds no application (it was made without writers): there is nothing to bring up; umbra check --read-data checks its files", entry.ID.Short())
	}
	wrs, err := e.BackupWriters(info, only)
	if err != nil {
		return entry, verify.Result{}, err
	}
	if scratch == "" {
		scratch = DefaultScratch
	}
	host, _ := os.Hostname()
	res, err := verify.Run(ctx, repo, verify.Job{Entry: entry, Info: info, Writers: wrs, Only: only, Scratch: scratch, Host: host, Started: started})
	return entry, res, err
}

// RestoreTo restores the backup ref of repo, locked by the caller, under
// target, which must be absent or empty: nothing live is touched and
// nothing is overwritten. An application backup is restored by its
// writers (as umbra restore --target does), others file by file.
func (e *Env) RestoreTo(ctx context.Context, repo *repository.Repository, ref, target string, prog *restore.Progress) (repository.ManifestEntry, error) {
	if !filepath.IsAbs(target) {
		return repository.ManifestEntry{}, fmt.Errorf("target %q: give an absolute directory", target)
	}
	if ents, err := os.ReadDir(target); err == nil && len(ents) > 0 {
		return repository.ManifestEntry{}, fmt.Errorf("target %s is not empty: restore into a new or empty directory; nothing is ever overwritten from here", target)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return repository.ManifestEntry{}, err
	}
	entry, err := repo.FindManifest(ctx, ref)
	if err != nil {
		return entry, err
	}
	info, err := backup.ReadInfo(entry.Manifest)
	if err != nil {
		return entry, err
	}
	if info != nil && len(info.Writers) > 0 {
		wrs, err := e.BackupWriters(info, nil)
		if err != nil {
			return entry, err
		}
		done, err := backup.Restore(ctx, repo, backup.RestoreJob{Manifest: entry.Manifest, Info: info, Writers: wrs, Target: target, Progress: prog})
		if err == nil {
			for _, w := range done {
				if w.Error != "" {
					return entry, fmt.Errorf("writer %s: %s", w.Name, w.Error)
				}
			}
		}
		return entry, err
	}
	_, err = restore.Run(ctx, repo, entry.Tree, target, restore.Options{Progress: prog})
	return entry, err
}
