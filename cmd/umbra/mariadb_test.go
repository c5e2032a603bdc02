package main

import (
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestKillDuringFreezeMariaDB: kill -9 of umbra while it holds MariaDB in
// BACKUP STAGE BLOCK_COMMIT releases the lock with the connection: the
// transfer load, stalled while frozen, commits again within a second.
func TestKillDuringFreezeMariaDB(t *testing.T) {
	fs := testenv.Btrfs(t)
	m := testenv.StartMariaDB(t, fs.Subvolume(t, "db"))
	load := m.StartTransferLoad(t, 4)
	cmd, _ := startPausedEnv(t, t.TempDir(), []string{"MYSQL_PWD=" + m.RootPassword}, "freeze",
		"shadow", "create", "--writer", m.Spec("main"))
	if err := load.WaitProgress(300 * time.Millisecond); err == nil {
		t.Fatal("a transfer committed while umbra held BACKUP STAGE BLOCK_COMMIT")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = cmd.Wait()
	if err := load.WaitProgress(time.Second); err != nil {
		t.Fatalf("after kill -9 of umbra: %v", err)
	}
	t.Logf("load resumed %v after kill -9", time.Since(killed).Round(time.Millisecond))
}
