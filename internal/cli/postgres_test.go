package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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

// TestPeerAuthentication: Debian's "local all postgres peer" refuses umbra
// (root), which then connects as the socket's owner, the server's user
// (issue 11: "Peer authentication failed"); a role that no OS user matches
// is refused, and umbra writers says how to let root in; the pg_ident.conf
// map it names (docs/writers.md) does. The rule is for database
// template1, which the writer is pointed at, so that the test's own
// connections (to postgres) stay trusted.
func TestPeerAuthentication(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	spec := pg.Spec("main") + ",dbname=template1"
	// loaded reports whether root, as user postgres, gets into template1.
	loaded := func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.ConnString("template1"))
		if err != nil {
			return false
		}
		conn.Close(ctx)
		return true
	}
	setHBA := func(hba, ident string, in bool) {
		t.Helper()
		uid, gid := pg.Owner()
		for f, text := range map[string]string{"pg_hba.conf": hba + "local all all trust\n", "pg_ident.conf": ident} {
			if err := os.WriteFile(filepath.Join(data, f), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(data, f), uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		pg.Exec(t, "SELECT pg_reload_conf()")
		// The postmaster reloads on its own time: wait for the effect.
		for deadline := time.Now().Add(30 * time.Second); loaded() != in; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("PostgreSQL did not reload pg_hba.conf within 30s")
			}
		}
	}
	// The helper that connects as postgres is this test binary.
	testenv.Traversable(t, os.Args[0])
	state := t.TempDir()
	reachable := func(what string) {
		t.Helper()
		var views []writerView
		if err := json.Unmarshal([]byte(mustUmbra(t, state, "--json", "writers", "--writer", spec).stdout), &views); err != nil {
			t.Fatal(err)
		}
		if len(views) != 1 || views[0].Error != "" || views[0].Metadata == nil {
			t.Errorf("writers %s: %+v; want it reachable", what, views)
		}
	}
	// Debian's line: root is refused, and umbra comes in as the socket's
	// owner, the server's own user.
	setHBA("local template1 postgres peer\n", "", false)
	reachable("under Debian's peer line")

	// A role that no OS user matches: refused as root and as the owner,
	// and the refusal says how to let root in.
	pg.Exec(t, "CREATE ROLE backup LOGIN SUPERUSER")
	setHBA("local template1 postgres peer\nlocal template1 backup peer\n", "", false)
	res := umbraRun(t, state, nil, "writers", "--writer", strings.Replace(spec, "user=postgres", "user=backup", 1))
	if !strings.Contains(res.stdout+res.stderr, "Peer authentication failed") || !strings.Contains(res.stdout+res.stderr, "umbra root backup") {
		t.Fatalf("writers as a role no OS user matches: %s%s; want the refusal and the pg_ident.conf line that fixes it", res.stdout, res.stderr)
	}

	// The documented map lets root in itself.
	setHBA("local template1 postgres peer map=umbra\n", "umbra root postgres\numbra postgres postgres\n", true)
	reachable("with the documented map")
}

// TestRestoreIntoEmptyMountPoint: the data directory is a volume of its
// own; the volume is lost and a new, empty one mounted in its place:
// restore --force restores into it (issue 11: refused, "device or resource
// busy"), and the server comes back with the data.
func TestRestoreIntoEmptyMountPoint(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	mountData := func() {
		t.Helper()
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", data, "tmpfs", 0, "size=512m,mode=0700"); err != nil {
			t.Skipf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(data, syscall.MNT_DETACH) })
	}
	mountData()
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	pg.Exec(t, "CREATE TABLE marks AS SELECT 'backed up' AS what")
	repo := newRepoDir(t)
	state := t.TempDir()
	b := mustAppBackup(t, state, repo.environ(), "--writer", pg.Spec("main"))

	// The disaster: the volume is gone; a new one takes its place.
	pg.Stop(t)
	if err := syscall.Unmount(data, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	mountData()
	uid, gid := pg.Owner()
	if err := os.Chown(data, uid, gid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pgCtlStop(t, data) })
	if res := umbraRun(t, state, repo.environ(), "restore", b.ID, "--force"); res.code != 0 {
		t.Fatalf("restore into an empty mount point: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM marks"); n != 1 {
		t.Errorf("restored server has %d marks, want 1", n)
	}
}
