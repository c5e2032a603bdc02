package backup

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/repository"
)

// PathsJob is a backup of plain files and directories, read as they are
// (no writers, no shadow set).
type PathsJob struct {
	Paths []string // absolute; each must exist
	Host  string
	Tags  []string
	// Parent names the backup to compare with (an id, a prefix, "latest");
	// "" means the last one of the same paths from the same host.
	Parent string
	// Force reads every file, unchanged ones too.
	Force    bool
	Progress *archive.Progress
	// Started, if set, hears the parent's size before reading begins (for
	// an estimate of the time left); 0 without a parent.
	Started func(parentBytes int64)
	// Pause, if set, is called at "manifest", before the manifest is
	// stored (fault tests).
	Pause func(ctx context.Context, point string) error
}

// PathsResult is a stored backup of plain paths.
type PathsResult struct {
	ID       repository.ID
	Manifest *repository.Manifest
}

// RunPaths backs up job.Paths into repo, which the caller holds a lock on:
// the files, then the manifest once they are durable. Nothing is recorded
// on failure.
func RunPaths(ctx context.Context, repo *repository.Repository, job PathsJob) (PathsResult, error) {
	recorded := slices.Clone(job.Paths)
	slices.Sort(recorded)
	sources := make([]archive.Source, len(recorded))
	for i, p := range recorded {
		sources[i] = archive.Source{Path: p}
	}
	pe, err := FindParent(ctx, repo, job.Parent, job.Host, recorded)
	if err != nil {
		return PathsResult{}, err
	}
	var parentID, parentTree *repository.ID
	if pe != nil && !job.Force {
		parentID, parentTree = &pe.ID, &pe.Tree
	}
	if job.Started != nil {
		var expected int64
		if pe != nil {
			expected = pe.Stats.Bytes
		}
		job.Started(expected)
	}
	start := time.Now()
	res, err := archive.Run(ctx, repo, sources, archive.Options{Parent: parentTree, Progress: job.Progress, Exclude: IsShadowDir})
	if err == nil {
		err = repo.Flush(ctx)
	}
	if err == nil && job.Pause != nil {
		err = job.Pause(ctx, "manifest")
	}
	if err != nil {
		return PathsResult{}, fmt.Errorf("backup failed; nothing was recorded (umbra prune removes what was stored): %w", err)
	}
	m := &repository.Manifest{
		Time: start.UTC(), Host: job.Host, Paths: recorded, Tree: res.Tree, Parent: parentID,
		Tags: job.Tags, Stats: res.Stats, Warnings: res.Warnings,
	}
	m.Stats.DurationMS = time.Since(start).Milliseconds()
	id, err := repo.SaveManifest(ctx, m)
	if err != nil {
		return PathsResult{}, err
	}
	return PathsResult{ID: id, Manifest: m}, nil
}

// FindParent returns the backup named by ref, or else the latest backup of
// the same paths from the same host, or nil.
func FindParent(ctx context.Context, repo *repository.Repository, ref, host string, paths []string) (*repository.ManifestEntry, error) {
	if ref != "" {
		e, err := repo.FindManifest(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("--parent: %w", err)
		}
		return &e, nil
	}
	all, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Host == host && slices.Equal(all[i].Paths, paths) {
			return &all[i], nil
		}
	}
	return nil, nil
}
