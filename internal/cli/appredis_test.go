package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestBackupRestoreRedis: Redis under INCR load, umbra backup --writer
// redis:..., the server stopped and its data deleted, umbra restore ID:
// Redis is started again, with every key and every value at least what was
// acknowledged before the backup began. On btrfs with the RDB file, started
// by start=; on ext4 with the append-only file (the writer's own copy) and
// no start=: restore starts Redis the way it ran.
func TestBackupRestoreRedis(t *testing.T) {
	t.Run("btrfs/rdb", func(t *testing.T) {
		fs := testenv.Btrfs(t)
		r := testenv.StartRedis(t, fs.Subvolume(t, "redis"))
		backupRestoreRedis(t, r, ",start="+r.StartCommand(t), "rdb")
	})
	t.Run("ext4/aof", func(t *testing.T) {
		fs := testenv.Ext4(t)
		r := testenv.StartRedis(t, filepath.Join(fs.Mount, "redis"), testenv.RedisAppendOnly(true), testenv.RedisConfig("appendfsync no"))
		r.ShutdownAtCleanup(t)
		backupRestoreRedis(t, r, "", "aof")
	})
}

func backupRestoreRedis(t *testing.T, r *testenv.Redis, startOpt, component string) {
	load := testenv.StartRedisLoad(t, r, 20)
	repo := newRepoDir(t)
	state := t.TempDir()
	spec := "redis:addr=" + r.Addr + startOpt

	before := load.Acked()
	b := mustAppBackup(t, state, repo.environ(), "--writer", spec)
	if w := b.App.Writers[0]; w.Consistency != "application" {
		t.Fatalf("backup: %s, want application", w.Consistency)
	}
	if err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	r.Server.Stop(t)
	for _, p := range []string{"dump.rdb", "appendonlydir"} {
		if err := os.RemoveAll(filepath.Join(r.Dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--component", "nosuch"); res.code == 0 || !strings.Contains(res.stderr, "the backup has rdb") {
		t.Errorf("restore --component nosuch: exit %d, %s; want a refusal listing the components", res.code, res.stderr)
	}
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--component", component); res.code != 0 {
		t.Fatalf("restore: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	if n := r.KeyCount(t); n != int64(len(before)) {
		t.Errorf("restored %d keys, want %d", n, len(before))
	}
	for i, v := range r.Values(t, load.Keys()) {
		if v < before[i] {
			t.Errorf("%s restored as %d; %d was acknowledged before the backup began", load.Keys()[i], v, before[i])
		}
	}
}
