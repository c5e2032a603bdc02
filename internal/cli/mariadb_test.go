package cli

import (
	"os"
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
	// No COMMIT sent while frozen may return (one sent just before may be
	// recorded late on a busy machine: Sent tells them apart).
	frozen := time.Now()
	time.Sleep(300 * time.Millisecond)
	for _, a := range load.Acks() {
		if a.Sent.After(frozen) {
			t.Fatalf("transfer %d, whose COMMIT was sent while umbra held BACKUP STAGE BLOCK_COMMIT, committed", a.ID)
		}
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

// TestBackupRestoreMariaDB: umbra backup --writer mariadb:... under the
// transfer load, the data directory destroyed, umbra restore ID: the
// server is back (started by the writer, InnoDB recovered), the total is
// unchanged and every transfer acknowledged before the backup began is
// there, in a backup labelled application. On btrfs from a snapshot, the
// server started by start=; on ext4 with relaxed durability from the
// writer's own copy (mariadb-backup), with no start= configured: restore
// starts the server the way it ran when the backup was made.
func TestBackupRestoreMariaDB(t *testing.T) {
	t.Run("btrfs", func(t *testing.T) {
		fs := testenv.Btrfs(t)
		m := testenv.StartMariaDB(t, fs.Subvolume(t, "db"))
		backupRestoreMariaDB(t, m, ",start="+m.StartCommand())
	})
	t.Run("ext4/trx_commit=0", func(t *testing.T) {
		testenv.NeedCommand(t, "mariadb-backup")
		fs := testenv.Ext4(t)
		backupRestoreMariaDB(t, testenv.StartMariaDB(t, fs.Mount, "innodb_flush_log_at_trx_commit=0", "sync_binlog=0"), "")
	})
}

func backupRestoreMariaDB(t *testing.T, m *testenv.MariaDB, startOpt string) {
	load := m.StartTransferLoad(t, 4)
	if err := load.WaitProgress(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	repo := newRepoDir(t)
	state := t.TempDir()
	env := append(repo.environ(), "MYSQL_PWD="+m.RootPassword)
	spec := m.Spec("main") + startOpt

	before := len(load.Acks())
	acked := load.Acks()[:before]
	b := mustAppBackup(t, state, env, "--writer", spec)
	if b.App == nil || b.App.Writers[0].Report.Positions["gtid_binlog_pos"] == "" || b.App.Writers[0].Consistency != "application" {
		t.Fatalf("backup info %+v: want the GTID recorded, application-consistent", b.App)
	}
	load.Stop()
	m.Server.Stop(t)
	if err := os.RemoveAll(m.DataDir); err != nil {
		t.Fatal(err)
	}
	if res := umbraRun(t, state, env, "restore", b.ID); res.code != 0 {
		t.Fatalf("restore: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	led, err := m.Ledger(t)
	if err != nil {
		t.Fatalf("restored server: %v", err)
	}
	if led.Total != int64(testenv.MariaDBAccounts)*testenv.MariaDBStartBalance {
		t.Errorf("restored total %d, want %d", led.Total, int64(testenv.MariaDBAccounts)*testenv.MariaDBStartBalance)
	}
	for _, a := range acked {
		if !led.Transfers[a.ID] {
			t.Fatalf("transfer %d, acknowledged before the backup began, is not in the restore", a.ID)
		}
	}
	t.Logf("%d transfers acknowledged before the backup; %d restored", len(acked), len(led.Transfers))
}
