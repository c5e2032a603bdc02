package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestBackupRestoreRedis: Redis under INCR load on btrfs, umbra backup
// --writer redis:..., the server stopped and its data deleted, umbra
// restore ID: Redis is started again by the writer, with every key and
// every value at least what was acknowledged before the backup began.
func TestBackupRestoreRedis(t *testing.T) {
	fs := testenv.Btrfs(t)
	r := testenv.StartRedis(t, fs.Subvolume(t, "redis"))
	load := testenv.StartRedisLoad(t, r, 20)
	repo := newRepoDir(t)
	state := t.TempDir()
	spec := "redis:addr=" + r.Addr + ",start=" + r.StartCommand(t)

	before := load.Acked()
	b := mustAppBackup(t, state, repo.environ(), "--writer", spec)
	if err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	r.Server.Stop(t)
	if err := os.Remove(filepath.Join(r.Dir, "dump.rdb")); err != nil {
		t.Fatal(err)
	}
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--component", "nosuch"); res.code == 0 || !strings.Contains(res.stderr, "the backup has rdb") {
		t.Errorf("restore --component nosuch: exit %d, %s; want a refusal listing the components", res.code, res.stderr)
	}
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--component", "rdb"); res.code != 0 {
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
