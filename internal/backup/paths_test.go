package backup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/repository"
)

// TestRunPaths: a second backup of the same paths compares with the first
// (which it is told the size of) and reads nothing unchanged; a backup
// stopped before its manifest records nothing.
func TestRunPaths(t *testing.T) {
	ctx := t.Context()
	repo, err := repository.Init(ctx, mem.New(), "pw", repository.Options{KDF: repository.KDFParams{Time: 1, Memory: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	job := PathsJob{Paths: []string{dir}, Host: "h"}
	first, err := RunPaths(ctx, repo, job)
	if err != nil {
		t.Fatal(err)
	}
	var told int64 = -1
	job.Started = func(n int64) { told = n }
	second, err := RunPaths(ctx, repo, job)
	if err != nil {
		t.Fatal(err)
	}
	if second.Manifest.Parent == nil || *second.Manifest.Parent != first.ID || told != first.Manifest.Stats.Bytes {
		t.Errorf("second backup: parent %v, told %d; want %s and %d", second.Manifest.Parent, told, first.ID.Short(), first.Manifest.Stats.Bytes)
	}
	if second.Manifest.Stats.BytesRead != 0 {
		t.Errorf("second backup of unchanged files read %d bytes", second.Manifest.Stats.BytesRead)
	}
	stopped := errors.New("stopped")
	job.Pause = func(context.Context, string) error { return stopped }
	if _, err := RunPaths(ctx, repo, job); !errors.Is(err, stopped) {
		t.Fatalf("backup stopped before its manifest: %v", err)
	}
	if all, err := repo.Manifests(ctx); err != nil || len(all) != 2 {
		t.Errorf("%d backups recorded (%v), want 2: the stopped one recorded nothing", len(all), err)
	}
}
