package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestFallback: a writer failing in Freeze fails the backup, naming the
// writer and recording nothing; with --fallback the backup goes on and
// records its data as crash-consistent.
func TestFallback(t *testing.T) {
	fs := testenv.Btrfs(t)
	dir := fs.Subvolume(t, "app")
	if err := os.WriteFile(filepath.Join(dir, "data"), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := newRepoDir(t)
	state := t.TempDir()
	spec := "script:name=app,freeze=exit 1,thaw=true,paths=" + dir

	res := umbraRun(t, state, repo.environ(), "backup", "--writer", spec)
	if res.code == 0 || !strings.Contains(res.stderr, "script:app") || !strings.Contains(res.stderr, "freeze") {
		t.Errorf("backup with a failing writer: exit %d, %s; want a failure naming script:app in freeze", res.code, res.stderr)
	}
	if list := mustRepo(t, repo, "backups", "--json"); strings.TrimSpace(list.stdout) != "[]" {
		t.Errorf("a failed backup left a manifest: %s", list.stdout)
	}

	res = umbraRun(t, state, repo.environ(), "backup", "--json", "--fallback", "--writer", spec)
	if res.code != 0 {
		t.Fatalf("backup --fallback: exit %d: %s", res.code, res.stderr)
	}
	var b appBackupJSON
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatal(err)
	}
	if len(b.App.Writers) != 1 || b.App.Writers[0].Consistency != shadow.Crash || b.App.Writers[0].Error == "" {
		t.Fatalf("writers %+v: want script:app recorded crash-consistent, with its error", b.App.Writers)
	}
	if ls := mustRepo(t, repo, "ls", b.ID, dir); !strings.Contains(ls.stdout, "data") {
		t.Errorf("the fallen writer's data is not in the backup:\n%s", ls.stdout)
	}
}

// TestJob: a [[job]] of the configuration file names the writers, and its
// retention forgets older backups after each success.
func TestJob(t *testing.T) {
	fs := testenv.Btrfs(t)
	dir := fs.Subvolume(t, "app")
	db := filepath.Join(dir, "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	cfg := filepath.Join(t.TempDir(), "umbra.toml")
	conf := `
[[writer]]
type = "sqlite"
path = "` + db + `"

[[writer]]
type = "script"
name = "unused"
freeze = "exit 1"
thaw = "true"
paths = "` + dir + `"

[[job]]
name = "nightly"
writers = ["sqlite:app"]
tags = ["nightly"]
[job.keep]
last = 1
`
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := newRepoDir(t)
	state := t.TempDir()
	for range 2 {
		if res := umbraRun(t, state, repo.environ(), "--config", cfg, "backup", "--job", "nightly"); res.code != 0 {
			t.Fatalf("backup --job: exit %d: %s", res.code, res.stderr)
		}
	}
	var list []struct {
		Tags  []string `json:"tags"`
		Paths []string `json:"paths"`
	}
	if err := json.Unmarshal([]byte(mustRepo(t, repo, "backups", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || len(list[0].Tags) != 1 || list[0].Tags[0] != "nightly" {
		t.Errorf("backups after two runs of a job keeping 1: %+v", list)
	}
	if res := umbraRun(t, state, repo.environ(), "--config", cfg, "backup", "--job", "weekly"); res.code != 2 || !strings.Contains(res.stderr, "nightly") {
		t.Errorf("unknown job: exit %d, %s; want a usage error naming the jobs", res.code, res.stderr)
	}
}
