package cli

import (
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// binlogs lists a MariaDB server's binary log files.
func binlogs(t *testing.T, m *testenv.MariaDB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(m.DataDir, "mysql-bin.[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestLogSafetyMariaDB: with purge_binlogs=true, a backup killed (kill -9)
// after the snapshot and before its manifest is stored purges nothing;
// the next backup succeeds, cleans up the dead one's set, and purges the
// binary logs before its own position.
func TestLogSafetyMariaDB(t *testing.T) {
	fs := testenv.Btrfs(t)
	m := testenv.StartMariaDB(t, fs.Subvolume(t, "db"))
	repo := newRepoDir(t)
	state := t.TempDir()
	env := append(repo.environ(), "MYSQL_PWD="+m.RootPassword)
	spec := m.Spec("main") + ",purge_binlogs=true"
	for range 3 {
		m.Exec(t, "FLUSH BINARY LOGS")
	}
	logs := binlogs(t, m)
	if len(logs) < 4 {
		t.Fatalf("binary logs %v: want at least 4 to purge from", logs)
	}

	cmd, _ := startPausedEnv(t, state, env, "post-snapshot", "backup", "--writer", spec)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if after := binlogs(t, m); len(after) != len(logs) {
		t.Fatalf("a killed backup changed the binary logs: %v, then %v", logs, after)
	}

	b := mustAppBackup(t, state, env, "--writer", spec)
	file := b.App.Writers[0].Report.Positions["binlog_file"]
	for _, f := range binlogs(t, m) {
		if filepath.Base(f) < file {
			t.Errorf("%s, before the backup's position %s, was not purged", filepath.Base(f), file)
		}
	}
	if _, err := os.Stat(filepath.Join(m.DataDir, file)); err != nil {
		t.Errorf("the binary log of the backup's position was purged: %v", err)
	}
	var sets []map[string]any
	if err := json.Unmarshal([]byte(mustUmbra(t, state, "shadow", "list", "--json").stdout), &sets); err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if s["status"] != "failed" {
			t.Errorf("set left after the backups: %v", s)
		}
	}
}

// TestLogSafetySQLite: a backup killed after the snapshot leaves SQLite's
// WAL as it was; a backup that succeeds truncates it at BackupComplete.
func TestLogSafetySQLite(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	load := testenv.StartSQLiteLoad(t, db)
	// An idle connection of our own keeps the WAL when the load stops
	// (SQLite checkpoints and removes it when the last one closes).
	conn, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Exec("SELECT count(*) FROM counter"); err != nil {
		t.Fatal(err)
	}
	load.Stop()
	wal := func() int64 {
		fi, err := os.Stat(db + "-wal")
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	if wal() <= 0 {
		t.Skipf("the load left no WAL to truncate (%d bytes)", wal())
	}
	repo := newRepoDir(t)
	state := t.TempDir()
	cmd, _ := startPausedEnv(t, state, repo.environ(), "post-snapshot", "backup", "--writer", "sqlite:path="+db)
	before := wal()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if got := wal(); got != before || got <= 0 {
		t.Errorf("WAL after a killed backup: %d bytes, want %d (untouched)", got, before)
	}
	if res := umbraRun(t, state, repo.environ(), "backup", "--writer", "sqlite:path="+db); res.code != 0 {
		t.Fatalf("backup: exit %d: %s", res.code, res.stderr)
	}
	if got := wal(); got > 0 {
		t.Errorf("WAL after a successful backup: %d bytes, want it truncated", got)
	}
}

// TestTwoBackupsOneVolume: while a backup holds its set, a second backup
// of the same writer fails clearly (after its retries) instead of
// interfering.
func TestTwoBackupsOneVolume(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	repo := newRepoDir(t)
	state := t.TempDir()
	first, _ := startPausedEnv(t, state, repo.environ(), "post-snapshot", "backup", "--writer", "sqlite:path="+db)
	res := umbraRun(t, state, repo.environ(), "backup", "--retries", "0", "--writer", "sqlite:path="+db)
	if res.code == 0 || !strings.Contains(res.stderr, "in use by another set") {
		t.Errorf("second backup while the first holds the set: exit %d, %s; want it to fail naming the busy writer", res.code, res.stderr)
	}
	_ = first.Process.Signal(syscall.SIGKILL)
	_ = first.Wait()
	if res := umbraRun(t, state, repo.environ(), "backup", "--writer", "sqlite:path="+db); res.code != 0 {
		t.Errorf("backup once the first is gone: exit %d: %s", res.code, res.stderr)
	}
}
