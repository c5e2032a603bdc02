package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/provider/reflink"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

// TestRestoreStartsAsItRan backs up a server under pgbench and restores it
// in place, for the ways operators start PostgreSQL and the durability
// settings they run: restore must bring the server back where it ran (its
// port and socket, wherever they were set), every transaction committed
// before the set must be there, and pg_amcheck must pass.
func TestRestoreStartsAsItRan(t *testing.T) {
	lazy := []string{"synchronous_commit = off", "wal_writer_delay = 10000ms", "wal_writer_flush_after = 0"}
	// Names without commas: the socket directory is under t.TempDir,
	// and unix_socket_directories is a comma-separated list.
	tests := []struct {
		name string
		fs   func(testing.TB) *testenv.FS
		opts testenv.PostgresOptions
		wal  bool // pg_wal on XFS
		// startCmd configures start= and stop=, as a service would.
		startCmd bool
	}{
		{name: "conf_file/btrfs", fs: testenv.Btrfs},
		{name: "command_line/async_commit/ext4", fs: testenv.Ext4, opts: testenv.PostgresOptions{CommandLine: true, Settings: lazy}},
		{name: "command_line/btrfs/pg_wal_on_xfs", fs: testenv.Btrfs, opts: testenv.PostgresOptions{CommandLine: true}, wal: true},
		{name: "start_command/async_commit/btrfs", fs: testenv.Btrfs, opts: testenv.PostgresOptions{CommandLine: true, Settings: lazy}, startCmd: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := tt.fs(t)
			data := filepath.Join(fs.Mount, "pg", "data")
			if fs.Type == "btrfs" {
				data = filepath.Join(fs.Subvolume(t, "pg"), "data")
			}
			opts := tt.opts
			if tt.wal {
				opts.WALDir = filepath.Join(testenv.XFS(t).Mount, "wal")
			}
			pg := testenv.InitPostgres(t, data, opts)
			var extra []string
			if tt.startCmd {
				extra = serviceCommands(t, pg)
			}
			wr := newWriter(t, pg, extra...)
			load := pg.StartPgbench(t, 4)
			before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
			set, staging := stagedSet(t, newCoordinator(t, btrfs.New(), reflink.New(), live.New()), wr)
			load.Stop()
			restoreInPlace(t, pg, wr, set, staging)
			if after := pg.PgbenchInvariant(t); after < before {
				t.Errorf("restored %d pgbench transactions, %d had committed before the set began", after, before)
			}
			amcheck(t, pg)
		})
	}
}

// stagedSet makes a set of wr and reads it into a staging directory as a
// requester does (the backup ended after a live volume is read), returning
// the set and the directory.
func stagedSet(t *testing.T, coord *shadow.Coordinator, wr *Writer) (*shadow.Set, string) {
	t.Helper()
	set := createSet(t, coord, wr)
	staging := t.TempDir()
	shadowtest.CopyComponents(t, set, wr.Name(), func(p string) string { return filepath.Join(staging, p) })
	if err := coord.CompleteCopy(t.Context(), set, []writer.Writer{wr}); err != nil {
		t.Fatal(err)
	}
	return set, staging
}

// serviceCommands returns start= and stop= options that run pg_ctl with
// the server's port and socket on its command line, as an init script
// does.
func serviceCommands(t *testing.T, pg *testenv.Postgres) []string {
	t.Helper()
	testenv.NeedCommand(t, "runuser")
	ctl := fmt.Sprintf("runuser -u postgres -- %s -D %s", filepath.Join(pg.Bin, "pg_ctl"), pg.DataDir)
	return []string{
		fmt.Sprintf(`start=%s -l %s -w -o "-p %d -k %s" start`, ctl, filepath.Join(pg.SocketDir, "service.log"), pg.Port, pg.SocketDir),
		"stop=" + ctl + " -m fast stop",
	}
}

// restoreInPlace does what umbra restore does for one writer: PreRestore,
// the staged components back in place, the hand-on files, PostRestore,
// within a time limit.
func restoreInPlace(t *testing.T, pg *testenv.Postgres, wr *Writer, set *shadow.Set, staging string) {
	t.Helper()
	if err := tryRestoreInPlace(t, pg, wr, set, staging); err != nil {
		t.Fatal(err)
	}
}

// tryRestoreInPlace is restoreInPlace returning PostRestore's error; its
// restore_command, if given, is fetch.
func tryRestoreInPlace(t *testing.T, pg *testenv.Postgres, wr *Writer, set *shadow.Set, staging string, fetch ...string) error {
	t.Helper()
	md := set.Writers[0].Metadata
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := wr.PreRestore(ctx, writer.Restore{Metadata: md}); err != nil {
		t.Fatal(err)
	}
	if !pg.Server.Exited() {
		t.Fatal("PreRestore left the server running")
	}
	// The moved data lies under TOP/.umbra-before-restore-TIME: gone with
	// the test, on whichever filesystem.
	writertest.CleanAside(t, wr.MovedAside()...)
	t.Cleanup(func() { pgCtl(t, pg.DataDir, "stop", "-m", "immediate") })
	for _, c := range md.Components {
		for _, p := range c.Paths {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("PreRestore left %s in place (%v)", p, err)
			}
			run(t, "cp", "-a", filepath.Join(staging, p), p)
		}
	}
	shadowtest.HandOn(t, set, wr.Name(), func(p string) string { return p })
	r := writer.Restore{Metadata: md}
	if len(fetch) > 0 {
		r.FetchLog = fetch[0]
	}
	return wr.PostRestore(ctx, r)
}

// amcheck runs pg_amcheck --heapallindexed on every database of pg.
func amcheck(t *testing.T, pg *testenv.Postgres) {
	t.Helper()
	bin := filepath.Join(pg.Bin, "pg_amcheck")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("needs pg_amcheck (postgresql-contrib): %v", err)
	}
	cmd := exec.Command(bin, "--all", "--install-missing", "--heapallindexed", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres")
	uid, gid := pg.Owner()
	testenv.AsUser(cmd, uid, gid)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("pg_amcheck on the restored server: %v\n%s", err, strings.TrimSpace(string(out)))
	}
}

// TestRestoreWaitsEnd: a restored server that never comes up where the
// writer connects ends the restore with an error naming what was awaited
// and the log, rather than a wait without end: one that starts on another
// port, and one that does not start at all.
func TestRestoreWaitsEnd(t *testing.T) {
	testenv.NeedCommand(t, "runuser")
	tests := []struct {
		name  string
		start func(pg *testenv.Postgres) string
		want  []string
	}{
		{"another port", func(pg *testenv.Postgres) string {
			return fmt.Sprintf(`runuser -u postgres -- %s -D %s -l %s -w -o "-p %d -k %s" start`,
				filepath.Join(pg.Bin, "pg_ctl"), pg.DataDir, filepath.Join(pg.SocketDir, "service.log"), testenv.FreePort(t), pg.SocketDir)
		}, []string{"is ready on port", "cannot connect", "make host= and port= match", "its log: the log of start="}},
		{"never started", func(*testenv.Postgres) string { return "true" },
			[]string{"is not running (it stopped, or never started)", "its log: the log of start=true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{CommandLine: true})
			wr := newWriter(t, pg)
			set, staging := stagedSet(t, newCoordinator(t, live.New()), wr)
			wr = newWriter(t, pg, "start="+tt.start(pg))
			start := time.Now()
			err := tryRestoreInPlace(t, pg, wr, set, staging)
			if err == nil {
				t.Fatal("PostRestore: got nil, want an error")
			}
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("PostRestore: got %q, want it to say %q", err, w)
				}
			}
		})
	}
}

// TestRestoreWaitsForSlowRecovery: a server that accepts connections in
// hot standby while recovery still fetches WAL (here a restore_command
// that takes 20 s for the segment after the backup, as a slow archive
// does) is recovering, not out of reach: restore waits for it, past the
// 15 s given a server that is ready elsewhere.
func TestRestoreWaitsForSlowRecovery(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	pg.Exec(t, "CREATE TABLE marks (what text)")
	wr := newWriter(t, pg)
	set, staging := stagedSet(t, newCoordinator(t, live.New()), wr)
	// Fast for what recovery needs to become consistent (up to the
	// backup's stop segment), then 20 s, once, for the next segment, in
	// hot standby.
	stop := set.Writers[0].Report.Positions["stop_wal"]
	once := filepath.Join(pg.SocketDir, "slow-once")
	fetch := fmt.Sprintf(`case %%f in *.history) exit 1;; esac; if [ "%%f" \> "%s" ] && [ ! -e %s ]; then touch %s; sleep 20; fi; exit 1`, stop, once, once)
	start := time.Now()
	if err := tryRestoreInPlace(t, pg, wr, set, staging, fetch); err != nil {
		t.Fatalf("restore with a slow archive, after %v: %v", time.Since(start).Round(time.Second), err)
	}
	if took := time.Since(start); took < startGrace {
		t.Errorf("restore returned after %v: recovery asked the slow archive for less than %v, so this tested nothing", took, startGrace)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM marks"); n != 0 {
		t.Errorf("marks: %d rows, want the empty table of the backup", n)
	}
}
