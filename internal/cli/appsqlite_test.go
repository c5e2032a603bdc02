package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestBackupRestoreSQLite: an SQLite database under a commit loop, umbra
// backup --writer sqlite:..., the database deleted, umbra restore ID: it
// passes integrity_check and its counter holds every commit acknowledged
// before the backup began. On btrfs the provider's snapshot is the copy; on
// ext4, where no provider can copy it consistently, the writer's own (the
// online backup API), in WAL and in rollback journal mode; every backup is
// labelled application.
func TestBackupRestoreSQLite(t *testing.T) {
	for _, tt := range []struct {
		name string
		fs   func(testing.TB) *testenv.FS
		opts testenv.SQLiteLoadOptions
		dir  bool // back up the database's directory as a path too
	}{
		{"btrfs", testenv.Btrfs, testenv.SQLiteLoadOptions{}, false},
		{"ext4/wal", testenv.Ext4, testenv.SQLiteLoadOptions{Synchronous: "NORMAL"}, false},
		{"ext4/delete", testenv.Ext4, testenv.SQLiteLoadOptions{JournalMode: "DELETE", Synchronous: "OFF"}, false},
		// The database's directory backed up whole, too: the writer's
		// copy stands in for the live file there.
		{"ext4/wal/in_a_path", testenv.Ext4, testenv.SQLiteLoadOptions{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := tt.fs(t)
			dir := filepath.Join(fs.Mount, "app")
			if fs.Type == "btrfs" {
				dir = fs.Subvolume(t, "app")
			} else if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			var paths []string
			if tt.dir {
				paths = append(paths, dir)
			}
			backupRestoreSQLite(t, filepath.Join(dir, "app.db"), tt.opts, paths...)
		})
	}
}

func backupRestoreSQLite(t *testing.T, db string, opts testenv.SQLiteLoadOptions, paths ...string) {
	load := testenv.StartSQLiteLoadWith(t, opts, db)
	repo := newRepoDir(t)
	state := t.TempDir()

	start := time.Now()
	res := umbraRun(t, state, repo.environ(), append([]string{"backup", "--json", "--writer", "sqlite:path=" + db}, paths...)...)
	var b struct {
		appBackupJSON
		CompleteErr string `json:"backup_complete_error"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatalf("backup: exit %d: %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	// Under the load, the WAL may stay busy past the truncating
	// checkpoint's patience: the backup is stored, with a warning (exit 3).
	if res.code != 0 && !(res.code == 3 && strings.Contains(b.CompleteErr, "not truncated")) {
		t.Fatalf("backup: exit %d: %s %s", res.code, b.CompleteErr, res.stderr)
	}
	if b.App == nil || len(b.App.Writers) != 1 || b.App.Writers[0].Consistency != "application" {
		t.Fatalf("backup: got %+v, want one writer, application-consistent", b.App)
	}
	acks := load.Stop()
	var before int64 = -1
	for _, a := range acks {
		if a.At.Before(start) {
			before = max(before, a.N)
		}
	}
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if err := os.Remove(db + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	res = umbraRun(t, state, repo.environ(), "restore", b.ID)
	if res.code != 0 {
		t.Fatalf("restore: exit %d: %s", res.code, res.stderr)
	}
	// The writer's own copy folds the WAL in: the live one, busy under
	// the load, must not have been stored beside it (the restore's
	// integrity check may leave an empty one).
	if len(b.App.Writers[0].OwnCopies) > 0 {
		if fi, err := os.Stat(db + "-wal"); err == nil && fi.Size() > 0 {
			t.Errorf("restored %s-wal of %d bytes: the live WAL was stored beside the writer's own copy", db, fi.Size())
		}
	}
	if got := snapshotCounter(t, db); got < before {
		t.Errorf("restored counter %d; %d was acknowledged before the backup began", got, before)
	}
}

// TestRestoreLatestWithWriter: with --writer, "latest" is the newest backup
// that holds that writer, not a newer backup of plain paths; a backup that
// lacks the writer is refused, naming what it holds.
func TestRestoreLatestWithWriter(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	repo := newRepoDir(t)
	state := t.TempDir()
	app := mustAppBackup(t, state, repo.environ(), "--writer", "sqlite:path="+db)
	name := app.App.Writers[0].Name
	plain := mustAppBackup(t, state, repo.environ(), filepath.Join(fs.Mount, "app"))

	target := filepath.Join(t.TempDir(), "r")
	res := umbraRun(t, state, repo.environ(), "restore", "latest", "--writer", name, "--target", target)
	if res.code != 0 {
		t.Fatalf("restore latest --writer %s: exit %d: %s", name, res.code, res.stderr)
	}
	if _, err := os.Stat(filepath.Join(target, db)); err != nil {
		t.Errorf("restore latest --writer %s did not restore the database of backup %s: %v", name, app.ID, err)
	}
	res = umbraRun(t, state, repo.environ(), "restore", plain.ID, "--writer", name, "--target", filepath.Join(t.TempDir(), "r"))
	if res.code == 0 || !strings.Contains(res.stderr, "holds no writer "+name) || !strings.Contains(res.stderr, "plain paths") {
		t.Errorf("restore of a plain-path backup with --writer: exit %d, %s; want a refusal naming the writer", res.code, res.stderr)
	}
}
