package postgres

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/provider/reflink"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

func newWriter(t *testing.T, pg *testenv.Postgres, extra ...string) *Writer {
	t.Helper()
	opts := map[string]string{"host": pg.SocketDir, "port": strconv.Itoa(pg.Port), "user": "postgres"}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		opts[k] = v
	}
	wr, err := New("postgres:test", opts)
	if err != nil {
		t.Fatal(err)
	}
	return wr
}

func TestConformance(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, pg) })
	assertNoBackupLeft(t, pg)
}

func TestIdentify(t *testing.T) {
	root := t.TempDir()
	data, wal := filepath.Join(root, "data"), filepath.Join(root, "wal")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{WALDir: wal})
	pg.Tablespace(t, "ts1", filepath.Join(root, "ts"))
	md, err := newWriter(t, pg).Identify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, c := range md.Components {
		got[c.Name] = c.Paths
		if c.Needs != writer.NeedLive {
			t.Errorf("component %s needs %s, want live (backup mode plus WAL)", c.Name, c.Needs)
		}
	}
	want := map[string]string{"data": data, "wal": wal, "tablespace:ts1": filepath.Join(root, "ts")}
	for name, path := range want {
		if len(got[name]) != 1 || got[name][0] != path {
			t.Errorf("component %s: paths %v, want [%s]", name, got[name], path)
		}
	}
	if len(got) != len(want) || md.LogsOwnedBy != "" || !strings.HasPrefix(md.Version, "1") {
		t.Errorf("metadata %+v; want exactly %v, version set, logs not owned elsewhere", md, want)
	}
	if !writer.Excluded(md.Components[0].Excludes, filepath.Join(data, "postmaster.pid")) ||
		writer.Excluded(md.Components[0].Excludes, filepath.Join(data, "base", "1", "1259")) {
		t.Errorf("data excludes %v: want postmaster.pid out and relation files in", md.Components[0].Excludes)
	}
}

// TestSnapshotUnderPgbench is the first acceptance test of the writer: a
// btrfs snapshot set under pgbench -c 4, a second server on a copy of the
// snapshot plus the handed-on label and WAL reaches consistency, and
// pgbench's invariant holds with every transaction committed before the set
// began.
func TestSnapshotUnderPgbench(t *testing.T) {
	fs := testenv.Btrfs(t)
	data := filepath.Join(fs.Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	load := pg.StartPgbench(t, 4)
	wr := newWriter(t, pg)
	coord := newCoordinator(t, btrfs.New())

	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	set := createSet(t, coord, wr)
	if set.Writers[0].Report.Positions["stop_lsn"] == "" || len(set.Writers[0].Report.Files) < 2 {
		t.Fatalf("report %+v: want a stop LSN, backup_label and WAL", set.Writers[0].Report)
	}
	assertNoBackupLeft(t, pg)

	copyDir := filepath.Join(fs.Mount, "copy")
	shadowtest.Read(t, set, wr.Name(), func(p string) string { return copyDir + strings.TrimPrefix(p, data) })
	load.Stop()
	if err := Prepare(copyDir); err != nil {
		t.Fatal(err)
	}
	second := testenv.OpenPostgres(t, copyDir)
	after := second.PgbenchInvariant(t)
	if after < before {
		t.Errorf("the copy has %d pgbench transactions, %d had committed before the set began", after, before)
	}
	t.Logf("committed before the set: %d; in the copy: %d; at the end: %d", before, after, pg.QueryInt(t, "SELECT count(*) FROM pgbench_history"))
}

// TestThreeVolumesRestoreInPlace: data on btrfs, pg_wal on XFS (reflink
// provider), a tablespace with pgbench's tables on ext4 (live provider):
// one set across three volumes, read the way a requester does (the live
// tablespace while the backup is still open), then PreRestore, the files
// back in place, PostRestore: the server recovers and the invariant holds.
func TestThreeVolumesRestoreInPlace(t *testing.T) {
	bfs, xfs, efs := testenv.Btrfs(t), testenv.XFS(t), testenv.Ext4(t)
	data := filepath.Join(bfs.Subvolume(t, "pg"), "data")
	wal, ts := filepath.Join(xfs.Mount, "wal"), filepath.Join(efs.Mount, "ts")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{WALDir: wal})
	pg.Tablespace(t, "ts1", ts)
	pg.PgbenchInit(t, "--tablespace=ts1", "--index-tablespace=ts1")
	load := pg.StartPgbench(t, 4)
	wr := newWriter(t, pg)
	coord := newCoordinator(t, btrfs.New(), reflink.New(), live.New())

	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	set := createSet(t, coord, wr)
	providers := map[string]bool{}
	for _, v := range set.Volumes() {
		providers[v.Provider] = true
	}
	if len(providers) != 3 {
		t.Fatalf("set volumes %+v: want btrfs, reflink and live", set.Volumes())
	}
	if len(set.Writers[0].Report.Files) != 0 {
		t.Fatalf("PostSnapshot handed on %d files with a live volume in the set; the backup must stay open until the copy is read", len(set.Writers[0].Report.Files))
	}

	// Read the set, as the requester does, while the load goes on.
	staging := t.TempDir()
	shadowtest.CopyComponents(t, set, wr.Name(), func(p string) string { return filepath.Join(staging, p) })
	if err := coord.CompleteCopy(t.Context(), set, []writer.Writer{wr}); err != nil {
		t.Fatal(err)
	}
	assertNoBackupLeft(t, pg)
	load.Stop()

	restoreInPlace(t, pg, wr, set, staging)
	after := pg.PgbenchInvariant(t)
	if after < before {
		t.Errorf("restored %d pgbench transactions, %d had committed before the set began", after, before)
	}
	if cmd := pg.QueryInt(t, "SELECT count(*) FROM pg_settings WHERE name = 'restore_command' AND setting <> ''"); cmd != 0 {
		t.Errorf("restore_command still set after recovery")
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_tablespace WHERE spcname = 'ts1'"); n != 1 {
		t.Errorf("tablespace ts1 missing after restore")
	}
}

func TestAbortEndsBackup(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	wr := newWriter(t, pg)
	set := writer.Set{ID: "abort-test", Type: writer.Full, Scratch: t.TempDir()}
	if err := wr.PrepareSnapshot(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'umbra_abort_test'"); n != 1 {
		t.Fatalf("%d slots umbra_abort_test after PrepareSnapshot, want 1", n)
	}
	if err := wr.Abort(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	assertNoBackupLeft(t, pg)
	if _, err := wr.PostSnapshot(t.Context(), set); err == nil {
		t.Error("PostSnapshot after Abort succeeded; want an error")
	}
}

// TestFailedSetEndsBackup: another writer fails in Freeze; the set aborts,
// and PostgreSQL is left with no backup session and no slot.
func TestFailedSetEndsBackup(t *testing.T) {
	fs := testenv.Btrfs(t)
	pg := testenv.InitPostgres(t, filepath.Join(fs.Subvolume(t, "pg"), "data"), testenv.PostgresOptions{})
	other := writertest.NewFake("fake:other")
	other.Metadata.Components[0].Paths = []string{fs.Mount}
	other.Errs = map[writer.Phase]error{writer.PhaseFreeze: errors.New("freeze refused")}
	coord := newCoordinator(t, btrfs.New())
	if _, err := coord.Create(t.Context(), []writer.Writer{newWriter(t, pg), other}, nil); err == nil {
		t.Fatal("Create succeeded with a writer failing in Freeze")
	}
	assertNoBackupLeft(t, pg)
}

func TestCopyBackupWhenArchiveIsNotOurs(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{
		Settings: []string{"archive_mode = on", "archive_command = 'test ! -f /nonexistent/%f'"},
	})
	md, err := newWriter(t, pg).Identify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.LogsOwnedBy, "archive_command") {
		t.Errorf("LogsOwnedBy = %q, want the foreign archive_command named", md.LogsOwnedBy)
	}
}

func TestErrors(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	pg.Exec(t, "CREATE ROLE umbra_pw LOGIN PASSWORD 'right'")
	pg.Exec(t, "CREATE ROLE umbra_weak LOGIN PASSWORD 'weak'")
	pg.Exec(t, "GRANT pg_read_all_settings TO umbra_weak")
	hba := filepath.Join(pg.DataDir, "pg_hba.conf")
	conf, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("local all umbra_pw scram-sha-256\n"), conf...), 0o600); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, "SELECT pg_reload_conf()")
	wrongFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(wrongFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		wr    *Writer
		phase func(*Writer) error
		want  []string
	}{
		{"wrong password", newWriter(t, pg, "user=umbra_pw", "password_file="+wrongFile), identify,
			[]string{`postgres writer "postgres:test"`, "refused the login", "password_file="}},
		{"server down", newWriter(t, pg, "host="+t.TempDir()), identify,
			[]string{"cannot connect", "is the server running"}},
		{"missing privileges", newWriter(t, pg, "user=umbra_weak"), prepareBackup,
			[]string{"ALTER ROLE umbra_weak REPLICATION"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.phase(tt.wr)
			for _, want := range tt.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("got %v, want an error containing %q", err, want)
				}
			}
		})
	}
	if err := identify(newWriter(t, pg, "host="+t.TempDir())); !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("server down: %v is not retryable", err)
	}
	_, err = New("postgres:x", map[string]string{"hots": "/run/postgresql"})
	if err == nil || !strings.Contains(err.Error(), `unknown option "hots"`) || !strings.Contains(err.Error(), "host") {
		t.Errorf("misspelt option: got %v", err)
	}
}

func TestSlotName(t *testing.T) {
	got := slotName("20261122T020000Z-AB12")
	if got != "umbra_20261122t020000z_ab12" {
		t.Errorf("slotName = %q", got)
	}
	if n := len(slotName(strings.Repeat("x", 100))); n != 63 {
		t.Errorf("long slot name has %d characters, want 63", n)
	}
}

func TestSegments(t *testing.T) {
	const seg16 = 16 << 20
	for _, name := range []string{"000000010000000000000002", "0000000A00000001000000FF", "000000010000000200000000"} {
		s, err := parseSegment(name, seg16)
		if err != nil || s.name(seg16) != name {
			t.Errorf("parseSegment(%s) = %+v, %v; round trip %s", name, s, err, s.name(seg16))
		}
	}
	a, _ := parseSegment("0000000100000001000000FF", seg16)
	b, _ := parseSegment("000000010000000200000000", seg16)
	if b.no != a.no+1 {
		t.Errorf("segment after 1/FF is %d, want %d", b.no, a.no+1)
	}
	lsn, file, err := parseLabel("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n")
	if err != nil || lsn != "0/2000028" || file != "000000010000000000000002" {
		t.Errorf("parseLabel = %q, %q, %v", lsn, file, err)
	}
}

func identify(wr *Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := wr.Identify(ctx)
	return err
}

func prepareBackup(wr *Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return wr.PrepareBackup(ctx, writer.Set{ID: "x", Type: writer.Full})
}

// assertNoBackupLeft checks that no umbra session (and so no backup) and
// no replication slot is left on the server.
func assertNoBackupLeft(t *testing.T, pg *testenv.Postgres) {
	t.Helper()
	pg.AssertNoUmbraSession(t)
}

func newCoordinator(t *testing.T, provs ...provider.Provider) *shadow.Coordinator {
	t.Helper()
	store, err := shadow.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return shadow.New(provs, store, shadow.Options{})
}

func createSet(t *testing.T, coord *shadow.Coordinator, wrs ...writer.Writer) *shadow.Set {
	t.Helper()
	set, err := coord.Create(t.Context(), wrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := coord.Delete(context.Background(), set.ID); err != nil {
			t.Errorf("delete set: %v", err)
		}
	})
	return set
}

func pgCtl(t *testing.T, dataDir string, args ...string) {
	uid, gid := testenv.SystemUser(t, "postgres")
	cmd := exec.Command(filepath.Join(testenv.PostgresBin(t), "pg_ctl"), append([]string{"-D", dataDir}, args...)...)
	testenv.AsUser(cmd, uid, gid)
	cmd.Dir = "/"
	_ = cmd.Run()
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestDedicatedRole runs a backup as the least-privileged role that
// docs/writers.md tells operators to create.
func TestDedicatedRole(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	pg.Exec(t, "CREATE ROLE umbra LOGIN REPLICATION")
	pg.Exec(t, "GRANT pg_read_all_settings TO umbra")
	pg.Exec(t, "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO umbra")
	wr := newWriter(t, pg, "user=umbra")
	set := writer.Set{ID: "role-test", Type: writer.Full, Scratch: t.TempDir()}
	if err := wr.PrepareBackup(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	if err := wr.PrepareSnapshot(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	rep, err := wr.PostSnapshot(t.Context(), set)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Files) < 2 {
		t.Errorf("report %+v: want the label and WAL", rep)
	}
	assertNoBackupLeft(t, pg)
}

func TestCheckVersion(t *testing.T) {
	w := &Writer{name: "postgres:old"}
	if _, err := w.checkVersion("12.19", "120019"); err == nil || !strings.Contains(err.Error(), "too old: umbra needs 13 or later") {
		t.Errorf("12.19: got %v, want a refusal naming 13", err)
	}
	if n, err := w.checkVersion("13.0", "130000"); err != nil || n != 130000 {
		t.Errorf("13.0: got %d, %v", n, err)
	}
	start, stop := backupFunctions(140000)
	if start.name != "pg_start_backup" || stop.name != "pg_stop_backup" {
		t.Errorf("PostgreSQL 14 uses %s/%s, want the pre-15 names", start.name, stop.name)
	}
}

func TestMountPoint(t *testing.T) {
	if !writer.MountPoint("/proc") || !writer.MountPoint("/") {
		t.Error("/proc or / is not seen as a mount point")
	}
	if writer.MountPoint(t.TempDir()) {
		t.Error("a temporary directory is seen as a mount point")
	}
}
