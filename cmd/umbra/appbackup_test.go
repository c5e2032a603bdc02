package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer/postgres"
)

// appBackupJSON is the part of backup --json an application backup adds.
type appBackupJSON struct {
	backupJSON
	Paths []string     `json:"paths"`
	App   *backup.Info `json:"app"`
}

// TestAppBackupPostgres: umbra backup --writer postgres:... under pgbench
// stores the data directory from a btrfs snapshot, without what PostgreSQL
// leaves out, plus the label and WAL the writer handed on; a server
// started from the restored files recovers, with pgbench's invariant and
// every transaction committed before the backup began. The set is gone
// afterwards and no replication slot is left.
func TestAppBackupPostgres(t *testing.T) {
	fs := testenv.Btrfs(t)
	data := filepath.Join(fs.Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	load := pg.StartPgbench(t, 4)
	repo := newRepoDir(t)
	state := t.TempDir()

	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	res := umbraRun(t, state, repo.environ(), "backup", "--json", "--writer", pg.Spec("main"))
	if res.code != 0 {
		t.Fatalf("backup: exit %d: %s", res.code, res.stderr)
	}
	var b appBackupJSON
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, res.stdout)
	}
	if b.App == nil || len(b.App.Writers) != 1 || b.App.Writers[0].Consistency != shadow.Application || b.App.Type != "full" {
		t.Fatalf("backup info %+v: want postgres:main, application-consistent, full", b.App)
	}
	w := b.App.Writers[0]
	if w.Spec.Type != "postgres" || w.Report.Positions["stop_lsn"] == "" || len(w.Report.Files) < 2 {
		t.Errorf("writer info %+v: want its spec, positions and hand-on files", w)
	}
	if len(b.Paths) != 1 || b.Paths[0] != data {
		t.Errorf("recorded paths %v, want [%s]", b.Paths, data)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
		t.Errorf("%d replication slots left after the backup", n)
	}
	var sets []map[string]any
	if err := json.Unmarshal([]byte(mustUmbra(t, state, "shadow", "list", "--json").stdout), &sets); err != nil || len(sets) != 0 {
		t.Errorf("shadow sets after the backup: %v (%v), want none", sets, err)
	}
	load.Stop()

	target := t.TempDir()
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--target", target); res.code != 0 {
		t.Fatalf("restore: exit %d: %s", res.code, res.stderr)
	}
	restored := filepath.Join(target, data)
	if _, err := os.Stat(filepath.Join(restored, "postmaster.pid")); err == nil {
		t.Error("postmaster.pid was backed up; PostgreSQL says to leave it out")
	}
	if entries, _ := os.ReadDir(filepath.Join(restored, "pg_wal")); len(entries) != 0 {
		t.Errorf("pg_wal holds %d entries from the snapshot; its contents come from the writer", len(entries))
	}
	// What the application-aware restore will do: the hand-on files into
	// the data directory.
	for _, f := range w.Report.Files {
		out, err := exec.Command("cp", "-a", filepath.Join(target, f.Source), filepath.Join(restored, f.Path)).CombinedOutput()
		if err != nil {
			t.Fatalf("hand-on %s: %v\n%s", f.Path, err, out)
		}
	}
	if err := postgres.Prepare(restored); err != nil {
		t.Fatal(err)
	}
	second := testenv.OpenPostgres(t, restored)
	if after := second.PgbenchInvariant(t); after < before {
		t.Errorf("restored %d pgbench transactions; %d had committed before the backup began", after, before)
	}
	if !strings.HasPrefix(w.Report.Files[0].Source, backup.HandOnRoot+"/") {
		t.Errorf("hand-on stored at %s, want under %s", w.Report.Files[0].Source, backup.HandOnRoot)
	}
}
