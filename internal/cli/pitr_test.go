package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestPointInTimePostgres: PostgreSQL archives its WAL with umbra wal-push;
// after a backup, more load and a marker table created at a known moment,
// restore --until a moment before the marker has no marker and holds the
// invariant; until a moment after, the marker is there.
func TestPointInTimePostgres(t *testing.T) {
	fs := testenv.Btrfs(t)
	data := filepath.Join(fs.Subvolume(t, "pg"), "data")
	uid, gid := testenv.SystemUser(t, "postgres")

	// PostgreSQL runs wal-push and wal-fetch as postgres: umbra (this test
	// binary), the repository and the password file must be within its
	// reach.
	binDir := t.TempDir()
	testenv.Traversable(t, binDir)
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "umbra")
	copyExecutable(t, os.Args[0], bin)
	repo := newRepoDir(t)
	pwFile := filepath.Join(binDir, "password")
	if err := os.WriteFile(pwFile, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Chown(t, pwFile, uid, gid)
	testenv.Chown(t, repo.loc, uid, gid)
	testenv.Traversable(t, repo.loc)
	env := []string{asUmbraEnv + "=1", "UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD_FILE=" + pwFile}
	archive := strings.Join(env, " ") + " " + bin + " wal-push --writer postgres:main %p"
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{Settings: []string{
		"archive_mode = on", "archive_command = '" + archive + "'",
	}})
	load := pg.StartPgbench(t, 4)
	state := t.TempDir()
	run := func(args ...string) result {
		cmd := exec.Command(bin, append([]string{"--state-dir", state, "--config", emptyConfig(t)}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{stdout: out.String(), stderr: errb.String(), code: code}
	}

	// Log safety for the WAL archive: a backup killed after its snapshot
	// prunes nothing; the one that succeeds prunes what precedes it.
	switchAndArchive(t, pg)
	archived := walFiles(t, repo.loc)
	if len(archived) == 0 {
		t.Fatal("nothing archived by wal-push")
	}
	killed := exec.Command(bin, "--state-dir", state, "--config", emptyConfig(t), "backup", "--writer", pg.Spec("main"))
	killed.Env = append(os.Environ(), append(env, "UMBRA_TEST_PAUSE_AT=post-snapshot")...)
	stderr, _ := killed.StderrPipe()
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for out := ""; !strings.Contains(out, "paused at post-snapshot"); {
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("backup to kill ended before pausing: %s", out)
		}
		out += string(buf[:n])
	}
	_ = killed.Process.Kill()
	_ = killed.Wait()
	for _, f := range archived {
		if _, err := os.Stat(filepath.Join(repo.loc, "wal", f)); err != nil {
			t.Errorf("archived %s is gone after a killed backup: %v", f, err)
		}
	}

	res := run("backup", "--json", "--writer", pg.Spec("main"))
	if res.code != 0 {
		t.Fatalf("backup: exit %d: %s", res.code, res.stderr)
	}
	var b appBackupJSON
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatal(err)
	}
	from := strings.ToLower(b.App.Writers[0].Report.Positions["archive_from"])
	older := 0
	for _, f := range archived {
		if seg := strings.TrimPrefix(f, "postgres-3amain."); len(seg) == 24 && seg < from {
			older++
		}
	}
	if older == 0 {
		t.Fatalf("no archived segment precedes the backup (from %s): %v; the pruning check would be empty", from, archived)
	}
	for _, f := range walFiles(t, repo.loc) {
		seg := strings.TrimPrefix(f, "postgres-3amain.")
		if len(seg) == 24 && seg < from {
			t.Errorf("archived %s precedes the only backup (from %s) and was not pruned", f, from)
		}
	}
	time.Sleep(300 * time.Millisecond) // more load after the backup
	beforeMarker := time.Now()
	time.Sleep(1100 * time.Millisecond)
	pg.Exec(t, "CREATE TABLE marker (x int); INSERT INTO marker VALUES (1)")
	time.Sleep(1100 * time.Millisecond)
	afterMarker := time.Now()
	time.Sleep(300 * time.Millisecond)
	load.Stop()
	switchAndArchive(t, pg)
	pg.Stop(t)

	for _, tc := range []struct {
		until  time.Time
		marker int64
	}{{beforeMarker, 0}, {afterMarker, 1}} {
		if err := os.RemoveAll(data); err != nil {
			t.Fatal(err)
		}
		res := run("restore", b.ID, "--until", tc.until.Format(time.RFC3339Nano))
		if res.code != 0 {
			t.Fatalf("restore --until %s: exit %d: %s%s", tc.until.Format(time.RFC3339Nano), res.code, res.stdout, res.stderr)
		}
		if got := pg.QueryInt(t, "SELECT count(*) FROM pg_class WHERE relname = 'marker'"); got != tc.marker {
			t.Errorf("restore --until %s: %d marker tables, want %d", tc.until.Format(time.TimeOnly), got, tc.marker)
		}
		pg.PgbenchInvariant(t)
		if _, err := os.Stat(filepath.Join(data, "pg_wal", ".umbra-prefetch")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("restore --until %s left what wal-fetch prefetched in pg_wal (%v)", tc.until.Format(time.TimeOnly), err)
		}
		pgCtlStop(t, data)
	}
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// switchAndArchive ends the current WAL segment and waits until the
// archiver has archived it.
func switchAndArchive(t *testing.T, pg *testenv.Postgres) {
	t.Helper()
	var seg string
	if err := pg.Conn(t).QueryRow(t.Context(), "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for pg.QueryInt(t, "SELECT count(*) FROM pg_stat_archiver WHERE last_archived_wal >= $1", seg) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("segment %s not archived in 30s; archiver: failed %d", seg, pg.QueryInt(t, "SELECT failed_count FROM pg_stat_archiver"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// walFiles lists the WAL archive of a local repository.
func walFiles(t *testing.T, repo string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(repo, "wal"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestUntilBeforeTheBackup: --until a moment before the backup ended is
// refused before anything is stopped (issue 11: production was stopped and
// moved aside, then recovery refused the target and the server stayed
// down); with "latest", the newest backup that ended before it is chosen.
func TestUntilBeforeTheBackup(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	repo := newRepoDir(t)
	state := t.TempDir()
	before := time.Now().Add(-time.Hour).Format(time.RFC3339)
	b := mustAppBackup(t, state, repo.environ(), "--writer", pg.Spec("main"))
	for _, ref := range []string{b.ID, "latest"} {
		res := umbraRun(t, state, repo.environ(), "restore", ref, "--force", "--until", before)
		if res.code != 1 || !strings.Contains(res.stderr, "ended") {
			t.Errorf("restore %s --until an hour before the backup: exit %d, %s; want a refusal saying the backup ended after it", ref, res.code, res.stderr)
		}
	}
	if n := pg.QueryInt(t, "SELECT 1"); n != 1 || pg.Server.Exited() {
		t.Error("the server was stopped by a restore that could not reach its target")
	}
}

// TestArchivingThatFailsIsSaid: a backup of a server whose WAL archiving
// fails completes with a warning that says so (exit 3), rather than report
// its positions as if point-in-time restore worked (issue 11: archiving
// stopped silently).
func TestArchivingThatFailsIsSaid(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{
		Settings: []string{"archive_mode = on", "archive_command = 'false'"},
	})
	pg.Exec(t, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
	pg.Exec(t, "SELECT pg_switch_wal()")
	// The archiver tries in its own time: wait for its first failure.
	for deadline := time.Now().Add(time.Minute); pg.QueryInt(t, "SELECT failed_count FROM pg_stat_archiver") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the archiver did not fail within a minute")
		}
	}
	repo := newRepoDir(t)
	res := umbraRun(t, t.TempDir(), repo.environ(), "backup", "--writer", pg.Spec("main"))
	if res.code != 3 || !strings.Contains(res.stderr, "WAL archiving is failing") {
		t.Errorf("backup with failing archiving: exit %d, %s; want 3 and a warning saying archiving fails", res.code, res.stderr)
	}
}

// TestFetchCheckedBeforeStop: a restore whose restore_command PostgreSQL
// could not run (the password file readable by root alone) is refused
// before the server is stopped, naming the file (issue 11: production
// stopped and moved aside, then recovery failed and the server stayed
// down).
func TestFetchCheckedBeforeStop(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	uid, gid := pg.Owner()
	testenv.Traversable(t, os.Args[0]) // umbra (this binary) is within postgres's reach
	repo := newRepoDir(t)
	testenv.Chown(t, repo.loc, uid, gid)
	testenv.Traversable(t, repo.loc)
	pw := filepath.Join(t.TempDir(), "umbra.pass")
	if err := os.WriteFile(pw, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Traversable(t, pw)
	env := []string{"UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD_FILE=" + pw}
	state := t.TempDir()
	mustAppBackup(t, state, env, "--writer", pg.Spec("main"))
	res := umbraRun(t, state, env, "restore", "latest", "--force", "--until", time.Now().Add(time.Hour).Format(time.DateTime))
	if res.code == 0 || !strings.Contains(res.stderr, "nothing was stopped") || !strings.Contains(res.stderr, pw) {
		t.Errorf("restore whose restore_command postgres cannot run: exit %d, %s; want a refusal naming %s, nothing stopped", res.code, res.stderr, pw)
	}
	if n := pg.QueryInt(t, "SELECT 1"); n != 1 || pg.Server.Exited() {
		t.Error("the server was stopped by a restore whose recovery could not fetch WAL")
	}
}

// TestWALFetchPrefetches: wal-fetch --prefetch N leaves the next N segments
// of the timeline beside PATH, and a wal-fetch of one of them moves it into
// place without opening the repository (each opening costs half a second
// of key derivation: issue 11); what is not spooled still needs the
// repository.
func TestWALFetchPrefetches(t *testing.T) {
	repo := newRepoDir(t)
	state := t.TempDir()
	src := t.TempDir()
	names := []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
		"00000001000000000000000A", "00000001000000000000000B", "000000020000000000000004"}
	for _, n := range names {
		p := filepath.Join(src, n)
		if err := os.WriteFile(p, []byte("segment "+n), 0o600); err != nil {
			t.Fatal(err)
		}
		if res := umbraRun(t, state, repo.environ(), "wal-push", "--writer", "postgres:main", p); res.code != 0 {
			t.Fatalf("wal-push %s: exit %d: %s", n, res.code, res.stderr)
		}
	}
	pgWAL := filepath.Join(t.TempDir(), "pg_wal")
	if err := os.Mkdir(pgWAL, 0o700); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(pgWAL, "RECOVERYXLOG")
	fetch := func(env []string, name string) result {
		return umbraRun(t, state, env, "wal-fetch", "--prefetch", "3", "--writer", "postgres:main", name, dst)
	}
	if res := fetch(repo.environ(), names[0]); res.code != 0 {
		t.Fatalf("wal-fetch: exit %d: %s", res.code, res.stderr)
	}
	spool, _ := filepath.Glob(filepath.Join(pgWAL, ".umbra-prefetch", "*"))
	for i := range spool {
		spool[i] = filepath.Base(spool[i])
	}
	if want := names[1:4]; !slices.Equal(spool, want) {
		t.Fatalf("spooled %v, want the next three of the timeline %v", spool, want)
	}
	// Without the password: from the spool, or not at all.
	noKey := []string{"UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD=wrong"}
	for _, n := range names[1:4] {
		if res := fetch(noKey, n); res.code != 0 {
			t.Fatalf("wal-fetch of spooled %s: exit %d: %s", n, res.code, res.stderr)
		}
		if b, err := os.ReadFile(dst); err != nil || string(b) != "segment "+n {
			t.Errorf("wal-fetch of spooled %s wrote %q (%v)", n, b, err)
		}
	}
	if res := fetch(noKey, names[4]); res.code != 126 {
		t.Errorf("wal-fetch of %s, not spooled, with a wrong password: exit %d, want 126", names[4], res.code)
	}
}
