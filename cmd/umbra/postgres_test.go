package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer/postgres"
)

// TestShadowCreatePostgres is issue 4's first acceptance test through the
// command line: umbra shadow create --writer postgres:... under pgbench -c 4
// on btrfs; a second server started on a copy of the snapshot plus the
// writer's label and WAL reaches consistency with pgbench's invariant and
// every transaction committed before the set began.
func TestShadowCreatePostgres(t *testing.T) {
	fs := testenv.Btrfs(t)
	data := filepath.Join(fs.Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	load := pg.StartPgbench(t, 4)
	state := t.TempDir()
	spec := pg.Spec("main")

	// umbra writers shows the instance: reachable, version, components.
	var views []writerView
	if err := json.Unmarshal([]byte(mustUmbra(t, state, "writers", "--json", "--writer", spec).stdout), &views); err != nil {
		t.Fatal(err)
	}
	if len(views) != 1 || views[0].Metadata == nil || views[0].Metadata.Version == "" ||
		len(views[0].Metadata.Components) == 0 || views[0].Metadata.Components[0].Paths[0] != data {
		t.Fatalf("umbra writers: %+v; want postgres:main with its version and data directory %s", views, data)
	}

	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	var created createdSet
	if err := json.Unmarshal([]byte(mustUmbra(t, state, "shadow", "create", "--json", "--writer", spec).stdout), &created); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { umbraRun(t, state, nil, "shadow", "delete", created.ID) })
	store, err := shadow.OpenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	set, err := store.LoadSet(created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if set.Writers[0].Consistency != shadow.Application {
		t.Errorf("postgres:main consistency %s, want application", set.Writers[0].Consistency)
	}
	copyDir := filepath.Join(fs.Mount, "copy")
	shadowtest.Read(t, set, "postgres:main", func(p string) string { return copyDir + strings.TrimPrefix(p, data) })
	load.Stop()
	if err := postgres.Prepare(copyDir); err != nil {
		t.Fatal(err)
	}
	second := testenv.OpenPostgres(t, copyDir)
	if after := second.PgbenchInvariant(t); after < before {
		t.Errorf("the copy has %d pgbench transactions, %d had committed before the set began", after, before)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
		t.Errorf("%d replication slots left after shadow create", n)
	}
}

// TestKillDuringFreezePostgres: kill -9 of umbra while the set's writers
// are frozen leaves PostgreSQL with no backup session and no slot.
func TestKillDuringFreezePostgres(t *testing.T) {
	fs := testenv.Btrfs(t)
	pg := testenv.InitPostgres(t, filepath.Join(fs.Subvolume(t, "pg"), "data"), testenv.PostgresOptions{})
	cmd, _ := startPaused(t, t.TempDir(), "freeze", "shadow", "create", "--writer", pg.Spec("main"))
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_replication_slots"); n != 1 {
		t.Fatalf("%d replication slots while umbra is paused in the freeze, want its temporary one", n)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	pg.AssertNoUmbraSession(t)
}
