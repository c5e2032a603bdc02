package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer/sqlite"
)

// snapshotCounter copies a database out of a shadow copy (the copy is
// read-only, and SQLite wants to write its -shm), checks its integrity and
// returns its counter.
func snapshotCounter(t *testing.T, db string) int64 {
	t.Helper()
	dir := t.TempDir()
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(db + suffix)
		if os.IsNotExist(err) && suffix != "" {
			continue
		}
		if err != nil {
			t.Fatalf("read shadow copy: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "copy.db"+suffix), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyPath := filepath.Join(dir, "copy.db")
	if err := sqlite.IntegrityCheck(context.Background(), copyPath); err != nil {
		t.Fatalf("shadow copy of %s fails the integrity check: %v", db, err)
	}
	conn, err := sql.Open("sqlite", copyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int64
	if err := conn.QueryRow("SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatalf("read counter of the shadow copy of %s: %v", db, err)
	}
	return n
}

// liveCounter reads the load's counter from the live database.
func liveCounter(t *testing.T, db string) int64 {
	t.Helper()
	conn, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int64
	if err := conn.QueryRow("SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatalf("read counter of %s: %v", db, err)
	}
	return n
}

// ackBounds returns the last value acknowledged before the freeze began and
// the first acknowledged after the thaw, for one database of the load.
func ackBounds(t *testing.T, acks []testenv.Ack, db int, start, end time.Time) (before, after int64) {
	t.Helper()
	before, after = -1, -1
	for _, a := range acks {
		if a.DB != db {
			continue
		}
		if a.At.Before(start) {
			before = max(before, a.N)
		}
		if a.At.After(end) && after < 0 {
			after = a.N
		}
	}
	if before < 0 || after < 0 {
		t.Fatalf("load did not commit both before the freeze and after the thaw (before=%d after=%d of %d acks)", before, after, len(acks))
	}
	return before, after
}

// TestSQLiteUnderLoad is the core promise: a shadow copy of a database that
// commits as fast as it can holds exactly a state the application committed
// between Freeze and Thaw, and passes the integrity check.
func TestSQLiteUnderLoad(t *testing.T) {
	for _, tt := range []struct {
		fs       func(testing.TB) *testenv.FS
		provider string
	}{
		{testenv.Btrfs, "btrfs"},
		{testenv.XFS, "reflink"},
	} {
		t.Run(tt.provider, func(t *testing.T) {
			fs := tt.fs(t)
			dir := filepath.Join(fs.Mount, "app")
			if tt.provider == "btrfs" {
				dir = fs.Subvolume(t, "app")
			} else if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			db := filepath.Join(dir, "app.db")
			load := testenv.StartSQLiteLoad(t, db)
			time.Sleep(200 * time.Millisecond)
			state := t.TempDir()
			res := mustUmbra(t, state, "--json", "shadow", "create", "--writer", "sqlite:path="+db)
			acks := load.Stop()
			set := decodeSet(t, res)

			if len(set.Volumes) != 1 || set.Volumes[0].Provider != tt.provider {
				t.Fatalf("volumes: got %+v, want one by %s", set.Volumes, tt.provider)
			}
			if len(set.Writers) != 1 || set.Writers[0].Name != "sqlite:app" || set.Writers[0].Consistency != "application" {
				t.Errorf("writers: got %+v, want sqlite:app application", set.Writers)
			}
			got := snapshotCounter(t, snapshotOf(t, set, db))
			before, after := ackBounds(t, acks, 0, set.FreezeStart, set.FreezeEnd)
			if got < before || got > after {
				t.Errorf("shadow counter %d: want within [%d (last ack before Freeze), %d (first ack after Thaw)]", got, before, after)
			}
			t.Logf("counter %d in [%d, %d]; freeze window %.1f ms", got, before, after, set.FreezeMS)

			// The set outlives the process, and deleting it leaves nothing.
			list := mustUmbra(t, state, "--json", "shadow", "list")
			if !strings.Contains(list.stdout, set.ID) {
				t.Errorf("shadow list does not show %s:\n%s", set.ID, list.stdout)
			}
			mustUmbra(t, state, "shadow", "delete", set.ID)
			if left := shadowDirs(t, fs.Mount); len(left) != 0 {
				t.Errorf("after delete, .umbra-shadow holds %v", left)
			}
		})
	}
}

// TestTwoVolumesOnePointInTime: one set over btrfs and XFS, one process
// committing n to the first database then n to the second: both copies come
// from one instant, so their counters differ by at most one.
func TestTwoVolumesOnePointInTime(t *testing.T) {
	b, x := testenv.Btrfs(t), testenv.XFS(t)
	db0 := filepath.Join(b.Subvolume(t, "a"), "a.db")
	db1 := filepath.Join(x.Mount, "b.db")
	load := testenv.StartSQLiteLoad(t, db0, db1)
	time.Sleep(200 * time.Millisecond)
	state := t.TempDir()
	for i := range 5 {
		res := mustUmbra(t, state, "--json", "shadow", "create", "--writer", "sqlite:path="+db0, "--writer", "sqlite:path="+db1)
		set := decodeSet(t, res)
		c0, c1 := snapshotCounter(t, snapshotOf(t, set, db0)), snapshotCounter(t, snapshotOf(t, set, db1))
		if d := c0 - c1; d < 0 || d > 1 {
			t.Errorf("set %d: counters %d (btrfs) and %d (xfs): want the first equal to the second or one ahead", i, c0, c1)
		}
		if c0 == 0 {
			t.Errorf("set %d: counter 0, the load did not run", i)
		}
		mustUmbra(t, state, "shadow", "delete", set.ID)
	}
	load.Stop()
}

// TestHungWriterAborts: a script writer that never returns from Freeze fails
// the set at the freeze limit, named; the other writer is thawed (the load
// resumes) and no shadow is left.
func TestHungWriterAborts(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	load := testenv.StartSQLiteLoad(t, db)
	state := t.TempDir()
	res := umbraRun(t, state, nil, "shadow", "create", "--freeze-limit", "2s",
		"--writer", "sqlite:path="+db, "--writer", "script:name=hang,freeze=sleep 600", fs.Mount)
	if res.code == 0 {
		t.Fatal("shadow create with a hung writer exited 0")
	}
	for _, want := range []string{"script:hang", "freeze"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("error does not name %q:\n%s", want, res.stderr)
		}
	}
	if err := load.WaitProgress(time.Second); err != nil {
		t.Errorf("SQLite load after the failed set: %v", err)
	}
	if left := shadowDirs(t, fs.Mount); len(left) != 0 {
		t.Errorf("failed set left shadows: %v", left)
	}
	if list := mustUmbra(t, state, "--json", "shadow", "list"); strings.TrimSpace(list.stdout) != "[]" {
		t.Errorf("failed set is still listed: %s", list.stdout)
	}
	w := mustUmbra(t, state, "--json", "writers", "--writer", "script:name=hang,freeze=true")
	if !strings.Contains(w.stdout, `"state": "failed"`) {
		t.Errorf("umbra writers does not show the hung writer's failure:\n%s", w.stdout)
	}
	load.Stop()
}

// TestKillWhileFrozen: kill -9 of umbra while writers are frozen, before and
// after the commit: the load resumes within a second, and the next list
// cleans up the half-made set.
func TestKillWhileFrozen(t *testing.T) {
	for _, phase := range []string{"freeze", "commit"} {
		t.Run(phase, func(t *testing.T) {
			fs := testenv.Btrfs(t)
			db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
			load := testenv.StartSQLiteLoad(t, db)
			state := t.TempDir()
			cmd, _ := startPaused(t, state, phase, "shadow", "create", "--writer", "sqlite:path="+db)
			// While frozen no commit can land: the counter, read now (readers
			// go on under the freeze), is the highest any ack may hold.
			// (Acks themselves are recorded late under load.)
			frozenAt := liveCounter(t, db)
			time.Sleep(300 * time.Millisecond)
			if again := liveCounter(t, db); again != frozenAt {
				t.Fatalf("the counter moved from %d to %d while umbra held the writer frozen", frozenAt, again)
			}
			if phase == "commit" && len(shadowDirs(t, fs.Mount)) == 0 {
				t.Fatal("paused after the commit, but no shadow exists")
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			if err := load.WaitProgress(time.Second); err != nil {
				t.Fatalf("load after kill -9: %v", err)
			}
			list := mustUmbra(t, state, "--json", "shadow", "list")
			var sets []createdSet
			if err := json.Unmarshal([]byte(list.stdout), &sets); err != nil {
				t.Fatal(err)
			}
			for _, s := range sets {
				if s.Status != "failed" {
					t.Errorf("after kill -9, set %s is %s; want failed or gone", s.ID, s.Status)
				}
			}
			if left := shadowDirs(t, fs.Mount); len(left) != 0 {
				t.Errorf("after kill -9 and list, shadows are left: %v", left)
			}
			if list := mustUmbra(t, state, "--json", "shadow", "list"); strings.TrimSpace(list.stdout) != "[]" {
				t.Errorf("second list still shows the dead set: %s", list.stdout)
			}
			load.Stop()
		})
	}
}

// TestKillWhileFSFrozen: kill -9 of umbra while --fsfreeze holds a volume
// frozen: the guard process thaws it.
func TestKillWhileFSFrozen(t *testing.T) {
	fs := testenv.Ext4(t)
	state := t.TempDir()
	cmd, _ := startPaused(t, state, "commit", "shadow", "create", "--fsfreeze", "--freeze-limit", "20s", fs.Mount)
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(filepath.Join(fs.Mount, "after"), []byte("x"), 0o644) }()
	select {
	case err := <-wrote:
		t.Fatalf("write went through while umbra held --fsfreeze (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	killed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("volume writable %v after kill -9", time.Since(killed).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("volume still frozen 20s (the freeze limit) after kill -9")
	}
}

// TestFSFreezeRefusedOnBtrfs: btrfs snapshots block on a frozen filesystem,
// so --fsfreeze there is refused before anything is frozen.
func TestFSFreezeRefusedOnBtrfs(t *testing.T) {
	fs := testenv.Btrfs(t)
	res := umbraRun(t, t.TempDir(), nil, "shadow", "create", "--fsfreeze", fs.Mount)
	if res.code == 0 || !strings.Contains(res.stderr, "drop --fsfreeze") {
		t.Fatalf("--fsfreeze on btrfs: exit %d, %q; want a refusal naming the fix", res.code, res.stderr)
	}
}

// TestRevert: revert brings a btrfs subvolume back to the set's content.
func TestRevert(t *testing.T) {
	fs := testenv.Btrfs(t)
	dir := fs.Subvolume(t, "data")
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	set := decodeSet(t, mustUmbra(t, state, "--json", "shadow", "create", dir))
	if len(set.Paths) != 1 || set.Paths[0].Consistency != "crash" {
		t.Errorf("plain path on btrfs: got %+v, want crash consistency", set.Paths)
	}
	if err := os.WriteFile(file, []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := umbraRun(t, state, nil, "shadow", "revert", set.ID); res.code != 2 {
		t.Errorf("revert without --yes: exit %d, want 2", res.code)
	}
	mustUmbra(t, state, "shadow", "revert", set.ID, "--yes")
	if b, err := os.ReadFile(file); err != nil || string(b) != "before" {
		t.Errorf("after revert %s holds %q (%v), want %q", file, b, err, "before")
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !os.IsNotExist(err) {
		t.Errorf("file made after the set survived the revert (%v)", err)
	}
	mustUmbra(t, state, "shadow", "delete", "--all")
}

// TestExpose mounts a set read-only and delete unmounts it.
func TestExpose(t *testing.T) {
	fs := testenv.XFS(t)
	if err := os.WriteFile(filepath.Join(fs.Mount, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	set := decodeSet(t, mustUmbra(t, state, "--json", "shadow", "create", filepath.Join(fs.Mount, "f")))
	at := filepath.Join(t.TempDir(), "exposed")
	mustUmbra(t, state, "shadow", "expose", set.ID, at)
	if b, err := os.ReadFile(filepath.Join(at, "f")); err != nil || string(b) != "x" {
		t.Fatalf("exposed file: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(at, "g"), nil, 0o644); err == nil {
		t.Error("wrote into an exposed set; want read-only")
	}
	mustUmbra(t, state, "shadow", "delete", set.ID)
	if _, err := os.Stat(filepath.Join(at, "f")); !os.IsNotExist(err) {
		t.Errorf("after delete the exposure is still mounted (%v)", err)
	}
}

// TestBadInput: each mistake gets a clear message and leaves nothing behind.
func TestBadInput(t *testing.T) {
	b, e := testenv.Btrfs(t), testenv.Ext4(t)
	notSQLite := filepath.Join(b.Mount, "notes.db")
	if err := os.WriteFile(notSQLite, []byte("just text, long enough to have a header"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing path", []string{"shadow", "create", filepath.Join(b.Mount, "nope")}, 1, []string{"does not exist"}},
		{"malformed spec", []string{"shadow", "create", "--writer", "sqlite", b.Mount}, 2, []string{"want TYPE:KEY=VALUE"}},
		{"unknown writer type", []string{"shadow", "create", "--writer", "oracle:sid=x", b.Mount}, 2, []string{"unknown type", "sqlite"}},
		{"not sqlite", []string{"shadow", "create", "--writer", "sqlite:path=" + notSQLite}, 1, []string{"not an SQLite database"}},
		// SQLite copies itself there; a script writer's paths cannot be.
		{"no provider", []string{"shadow", "create", "--writer", "script:freeze=true,thaw=true,paths=" + e.Mount}, 1, []string{"no provider can serve " + e.Mount, "quiesced"}},
		{"forced provider", []string{"shadow", "create", "--provider", "btrfs", e.Mount}, 1, []string{"no provider can serve", "btrfs"}},
		{"unknown provider", []string{"shadow", "create", "--provider", "zfs", e.Mount}, 1, []string{`provider "zfs" does not exist`}},
		{"no set", []string{"shadow", "delete", "20200101T000000Z-00000000"}, 1, []string{"no such shadow set"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			res := umbraRun(t, state, nil, tt.args...)
			if res.code != tt.code {
				t.Errorf("exit %d, want %d", res.code, tt.code)
			}
			for _, w := range tt.want {
				if !strings.Contains(res.stderr, w) {
					t.Errorf("message does not say %q:\n%s", w, res.stderr)
				}
			}
			for _, m := range []string{b.Mount, e.Mount} {
				if left := shadowDirs(t, m); len(left) != 0 {
					t.Errorf("left shadows on %s: %v", m, left)
				}
			}
			sets, _ := filepath.Glob(filepath.Join(state, "sets", "*"))
			if len(sets) != 0 {
				t.Errorf("left set records: %v", sets)
			}
		})
	}
}

func TestWritersAndProviders(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Mount, "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	state := t.TempDir()
	res := mustUmbra(t, state, "--json", "writers", "--writer", "sqlite:path="+db)
	var ws []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		Metadata struct {
			Components []struct {
				Paths []string `json:"paths"`
			} `json:"components"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &ws); err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].Name != "sqlite:app" || ws[0].State != "stable" ||
		len(ws[0].Metadata.Components) != 1 || ws[0].Metadata.Components[0].Paths[0] != db {
		t.Errorf("umbra writers: got %+v", ws)
	}
	res = mustUmbra(t, state, "providers")
	line := ""
	for l := range strings.Lines(res.stdout) {
		if strings.Contains(l, fs.Mount) {
			line = l
			break // the first provider listed is btrfs
		}
	}
	if !strings.Contains(line, "yes") {
		t.Errorf("umbra providers: btrfs does not serve %s: %q", fs.Mount, line)
	}
}

// ticker is an application that appends a line to a file every 10 ms.
type ticker struct {
	cmd  *exec.Cmd
	file string
}

func startTicker(t *testing.T) *ticker {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ticks")
	cmd := exec.Command("sh", "-c", `while :; do echo . >> "$1"; sleep 0.01; done`, "ticker", file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &ticker{cmd: cmd, file: file}
}

// ticks reports whether the ticker wrote within d.
func (tk *ticker) ticks(t *testing.T, d time.Duration) bool {
	t.Helper()
	size := func() int64 {
		fi, err := os.Stat(tk.file)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	before := size()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if size() > before {
			return true
		}
	}
	return false
}

// TestKillReleasesScriptFreeze: a script writer stops its application with
// SIGSTOP; kill -9 of umbra in the freeze window must not leave it stopped:
// the thaw guard runs the thaw command. umbra's stderr, which the guard
// shares, is closed first, as when the operator's SSH session is gone: the
// guard's log line must not kill it (SIGPIPE) before it thaws.
func TestKillReleasesScriptFreeze(t *testing.T) {
	tk := startTicker(t)
	pid := tk.cmd.Process.Pid
	spec := fmt.Sprintf("script:name=app,freeze=kill -STOP %d,thaw=kill -CONT %d", pid, pid)
	cmd, stderr := startPaused(t, t.TempDir(), "freeze", "shadow", "create", "--writer", spec, t.TempDir())
	if tk.ticks(t, 300*time.Millisecond) {
		t.Fatal("the application ran while its writer was frozen")
	}
	stderr.Close()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !tk.ticks(t, time.Second) {
		t.Fatal("the application is still stopped 1s after kill -9 of umbra")
	}
}

// TestSIGTERMAborts: SIGTERM in the freeze window aborts cleanly: the
// writer is thawed, no shadow or record is left, and umbra says so.
func TestSIGTERMAborts(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	load := testenv.StartSQLiteLoad(t, db)
	state := t.TempDir()
	cmd, _ := startPaused(t, state, "commit", "shadow", "create", "--writer", "sqlite:path="+db)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil {
		t.Fatal("umbra exited 0 after SIGTERM in the freeze window")
	}
	if err := load.WaitProgress(time.Second); err != nil {
		t.Fatalf("load after SIGTERM: %v", err)
	}
	if left := shadowDirs(t, fs.Mount); len(left) != 0 {
		t.Errorf("shadows left after SIGTERM: %v", left)
	}
	if sets, _ := filepath.Glob(filepath.Join(state, "sets", "*")); len(sets) != 0 {
		t.Errorf("set records left after SIGTERM: %v", sets)
	}
	load.Stop()
}

// TestShadowCreateChoosesWritersAsBackup: shadow create chooses writers as
// backup does (issue 11: it took every configured writer for a PATH, backup
// none): a PATH alone is files; no PATH means every configured writer.
func TestShadowCreateChoosesWritersAsBackup(t *testing.T) {
	fs := testenv.Btrfs(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	files := fs.Subvolume(t, "files")
	cfg := filepath.Join(t.TempDir(), "umbra.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[[writer]]\ntype = \"sqlite\"\npath = %q\n", db)), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	t.Cleanup(func() { umbraRun(t, state, nil, "shadow", "delete", "--all") })
	writersOf := func(args ...string) []string {
		t.Helper()
		var set createdSet
		res := mustUmbra(t, state, append([]string{"--config", cfg, "--json", "shadow", "create"}, args...)...)
		if err := json.Unmarshal([]byte(res.stdout), &set); err != nil {
			t.Fatal(err)
		}
		names := []string{}
		for _, w := range set.Writers {
			names = append(names, w.Name)
		}
		return names
	}
	if got := writersOf(files); len(got) != 0 {
		t.Errorf("shadow create %s: writers %v, want none (a PATH alone is files)", files, got)
	}
	if got := writersOf(); !slices.Equal(got, []string{"sqlite:app"}) {
		t.Errorf("shadow create: writers %v, want the configured sqlite:app", got)
	}
}
