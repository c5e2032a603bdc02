package mariadb

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// TestDurabilitySettings makes a shadow set under the transfer load for
// every durability setting operators run: innodb_flush_log_at_trx_commit 0,
// 1 and 2, sync_binlog 0 and 1, binary log on and off. With 0, InnoDB keeps
// acknowledged commits in its log buffer for up to a second; BLOCK_COMMIT
// alone leaves them there, and a copy would lose them. Each set must be
// labelled application and hold every transfer acknowledged before Thaw,
// none sent after, and exactly the transfers of the binary log up to the
// recorded position; CHECK TABLE passes on the copy.
func TestDurabilitySettings(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "mariadbd")
	fs := testenv.Btrfs(t)
	coord := shadowtest.NewCoordinator(t, btrfs.New())
	for _, binlog := range []bool{true, false} {
		for _, trx := range []int{0, 1, 2} {
			for _, sync := range []int{0, 1} {
				if !binlog && sync == 1 {
					continue // sync_binlog means nothing without a binary log
				}
				name := fmt.Sprintf("trx_commit=%d,sync_binlog=%d,log_bin=%v", trx, sync, binlog)
				t.Run(name, func(t *testing.T) {
					extra := []string{
						"innodb_flush_log_at_trx_commit=" + strconv.Itoa(trx),
						"sync_binlog=" + strconv.Itoa(sync),
					}
					if !binlog {
						extra = append(extra, "skip-log-bin")
					}
					m := testenv.StartMariaDB(t, fs.Subvolume(t, fmt.Sprintf("m%d%d%v", trx, sync, binlog)), extra...)
					checkDurableSet(t, fs, m, coord, binlog)
				})
			}
		}
	}
}

// checkDurableSet runs one set under load and checks its copy: every
// transfer acknowledged before Thaw (before the set began, where the writer
// copies the data itself after Thaw) is there, none sent after, the data
// agrees with the binary log up to the recorded position, CHECK TABLE
// passes.
func checkDurableSet(t *testing.T, fs *testenv.FS, m *testenv.MariaDB, coord *shadow.Coordinator, binlog bool) *shadow.Set {
	load := m.StartTransferLoad(t, 4)
	// Enough commits in flight that a lost log buffer would show.
	for len(load.Acks()) < 300 {
		if err := load.WaitProgress(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	tw := &timed{Writer: newWriter(t, m, nil)}
	trxBefore := trxCommit(t, m)
	start := time.Now()
	set := createSet(t, coord, tw)
	end := time.Now()
	if after := trxCommit(t, m); after != trxBefore {
		t.Errorf("innodb_flush_log_at_trx_commit was %d before the set and is %d after it; want it put back", trxBefore, after)
	}
	if err := load.WaitProgress(10 * time.Second); err != nil {
		t.Fatalf("after the set: %v", err)
	}
	for range 20 { // transfers begun after Thaw
		if err := load.WaitProgress(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	acks := load.Stop()
	if set.Writers[0].Consistency != shadow.Application {
		t.Errorf("set: got consistency %s, want application", set.Writers[0].Consistency)
	}
	copyDir, logDir := filepath.Join(fs.Mount, "copy-"+set.ID), ""
	shadowtest.CopyComponents(t, set, tw.Name(), func(p string) string {
		if within(p, m.DataDir) {
			return copyDir + strings.TrimPrefix(p, m.DataDir)
		}
		logDir = copyDir + "-binlog" // a binary log directory of its own
		return logDir
	})
	var copyOpts []string
	if logDir != "" {
		// The index names the live logs: the copy must read its own.
		index, err := filepath.Glob(filepath.Join(logDir, "*.index"))
		if err != nil || len(index) != 1 {
			t.Fatalf("binary log index in %s: %v %v", logDir, index, err)
		}
		b, err := os.ReadFile(index[0])
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, l := range strings.Fields(string(b)) {
			lines = append(lines, filepath.Join(logDir, filepath.Base(l)))
		}
		if err := os.WriteFile(index[0], []byte(strings.Join(lines, "\n")+"\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		testenv.Traversable(t, logDir)
		copyOpts = append(copyOpts, "log-bin="+strings.TrimSuffix(index[0], ".index"))
	}
	c := m.StartCopy(t, copyDir, copyOpts...)
	led, err := c.Ledger(t)
	if err != nil {
		t.Fatalf("copy of the snapshot: %v", err)
	}
	if set.Writers[0].Report.Copies != nil {
		checkAcksAround(t, acks, led, "the set", start, end)
		// mariadb-backup blocks commits for a moment of its own: the
		// longest pause between two acknowledgements bounds it.
		t.Logf("set took %v; longest pause between acknowledged commits meanwhile %v", end.Sub(start).Round(time.Millisecond), longestPause(acks, start, end))
	} else {
		checkAcks(t, acks, led, tw)
		t.Logf("freeze window %v (in Freeze %v)", set.FreezeWindow(), tw.freezeTook)
	}
	checkTables(t, c, "bank.accounts", "bank.transfers")
	pos := set.Writers[0].Report.Positions
	if !binlog {
		if pos[PosFile] != "" {
			t.Errorf("positions without a binary log: got %v, want none", pos)
		}
		return set
	}
	var gtid string
	if err := c.DB(t).QueryRowContext(t.Context(), "SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	if gtid != pos[PosGTID] {
		t.Errorf("copy's @@gtid_binlog_pos: got %q, want the recorded %q", gtid, pos[PosGTID])
	}
	logged := binlogTransfers(t, cmp.Or(logDir, copyDir), pos[PosFile], pos[PosPos])
	var missing, extra []int64
	for id := range logged {
		if !led.Transfers[id] {
			missing = append(missing, id)
		}
	}
	for id := range led.Transfers {
		if !logged[id] {
			extra = append(extra, id)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("copy disagrees with its binary log up to %s:%s (%d transfers logged): %d logged transfers missing (first %v), %d in the data but not logged (first %v)",
			pos[PosFile], pos[PosPos], len(logged), len(missing), missing[:min(5, len(missing))], len(extra), extra[:min(5, len(extra))])
	}
	return set
}

// TestOwnCopy: where no provider can copy MariaDB's data or binary logs
// atomically (ext4, XFS), the writer copies them itself (mariadb-backup,
// prepared; binary logs up to the recorded position), for relaxed and
// strict durability, with and without a binary log, and with the binary
// log on a volume of its own; each set is application-consistent by the
// same checks as a snapshot's.
func TestOwnCopy(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "mariadbd")
	testenv.NeedCommand(t, "mariadb-backup")
	coord := shadowtest.NewCoordinator(t)
	ext4 := testenv.Ext4(t)
	tests := []struct {
		name   string
		data   func(t *testing.T) (*testenv.FS, string)
		binlog func(t *testing.T) string // a directory of its own for the binary log, or ""
		extra  []string
		owns   []string
	}{
		{name: "ext4/trx_commit=0", extra: []string{"innodb_flush_log_at_trx_commit=0", "sync_binlog=0"}, owns: []string{DataComponent}},
		{name: "ext4/trx_commit=1", owns: []string{DataComponent}},
		{name: "ext4/trx_commit=2/no_binlog", extra: []string{"innodb_flush_log_at_trx_commit=2", "skip-log-bin"}, owns: []string{DataComponent}},
		{name: "ext4/binlog_on_xfs", binlog: func(t *testing.T) string { return filepath.Join(testenv.XFS(t).Mount, "binlog") }, owns: []string{DataComponent, BinlogComponent}},
		{name: "btrfs/binlog_on_ext4", data: func(t *testing.T) (*testenv.FS, string) {
			fs := testenv.Btrfs(t)
			return fs, fs.Subvolume(t, "maria")
		}, binlog: func(t *testing.T) string { return filepath.Join(ext4.Mount, "binlog-of-btrfs") }, owns: []string{BinlogComponent}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, parent := ext4, filepath.Join(ext4.Mount, fmt.Sprintf("m%d", i))
			if tt.data != nil {
				fs, parent = tt.data(t)
			} else if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			extra := tt.extra
			if tt.binlog != nil {
				dir := tt.binlog(t)
				if err := os.MkdirAll(dir, 0o750); err != nil {
					t.Fatal(err)
				}
				uid, gid := testenv.SystemUser(t, "mysql")
				testenv.Chown(t, dir, uid, gid)
				testenv.Traversable(t, dir)
				extra = append(extra, "log-bin="+filepath.Join(dir, "mysql-bin"))
			}
			m := testenv.StartMariaDB(t, parent, extra...)
			set := checkDurableSet(t, fs, m, coord, !slices.Contains(extra, "skip-log-bin"))
			var want []string
			for _, c := range tt.owns {
				want = append(want, "mariadb:test/"+c)
			}
			if !slices.Equal(set.OwnCopies, want) {
				t.Errorf("set copied by the writer: %v, want %v", set.OwnCopies, want)
			}
		})
	}
}

// binlogTransfers returns the ids of the transfers in the binary logs of
// dataDir up to file:pos, as mariadb-binlog decodes them.
func binlogTransfers(t *testing.T, dataDir, file, pos string) map[int64]bool {
	t.Helper()
	testenv.NeedCommand(t, "mariadb-binlog")
	logs, err := filepath.Glob(filepath.Join(dataDir, "mysql-bin.[0-9]*"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("binary logs in %s: %v %v", dataDir, logs, err)
	}
	ids := map[int64]bool{}
	insert := regexp.MustCompile(`(?i)INSERT INTO bank\.transfers VALUES \((\d+),`)
	for _, l := range logs {
		if filepath.Base(l) > file {
			continue
		}
		args := []string{"--base64-output=decode-rows", "-v"}
		if filepath.Base(l) == file {
			args = append(args, "--stop-position="+pos)
		}
		out, err := exec.Command("mariadb-binlog", append(args, l)...).Output()
		if err != nil {
			t.Fatalf("mariadb-binlog %s: %v", l, err)
		}
		for _, m := range insert.FindAllSubmatch(out, -1) {
			id, _ := strconv.ParseInt(string(m[1]), 10, 64)
			ids[id] = true
		}
	}
	return ids
}

// checkTables runs CHECK TABLE on the server and fails unless each says OK.
func checkTables(t *testing.T, m *testenv.MariaDB, tables ...string) {
	t.Helper()
	for _, tbl := range tables {
		var table, op, typ, msg string
		if err := m.DB(t).QueryRowContext(t.Context(), "CHECK TABLE "+tbl).Scan(&table, &op, &typ, &msg); err != nil {
			t.Fatalf("CHECK TABLE %s: %v", tbl, err)
		}
		if msg != "OK" {
			t.Errorf("CHECK TABLE %s: %s %s", tbl, typ, msg)
		}
	}
}

// TestRelaxedDurabilityNeedsSuper: with innodb_flush_log_at_trx_commit=2,
// a user who may not SET GLOBAL is refused at PrepareBackup, with the
// setting and both ways out named, and the setting is left as it was.
func TestRelaxedDurabilityNeedsSuper(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir(), "innodb_flush_log_at_trx_commit=2")
	m.Exec(t, "CREATE USER 'nosuper'@'localhost' IDENTIFIED BY 'pw'",
		"GRANT RELOAD, BINLOG MONITOR ON *.* TO 'nosuper'@'localhost'")
	wr, err := New("mariadb:test", map[string]string{"socket": m.Socket, "user": "nosuper", "password": "pw"})
	if err != nil {
		t.Fatal(err)
	}
	err = wr.PrepareBackup(t.Context(), writer.Set{})
	if err == nil {
		t.Fatal("PrepareBackup without SUPER, innodb_flush_log_at_trx_commit=2: got nil, want a refusal")
	}
	for _, want := range []string{"innodb_flush_log_at_trx_commit=2", "GRANT SUPER ON *.* TO 'nosuper'@'localhost'", "innodb_flush_log_at_trx_commit=1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	var trx int
	if err := m.DB(t).QueryRowContext(t.Context(), "SELECT @@global.innodb_flush_log_at_trx_commit").Scan(&trx); err != nil || trx != 2 {
		t.Errorf("innodb_flush_log_at_trx_commit after the refusal: got %d (%v), want 2", trx, err)
	}
	assertNoBackupStage(t, m)
}

// longestPause is the longest time between two acknowledgements (At) that
// falls in from..to.
func longestPause(acks []testenv.MariaDBAck, from, to time.Time) time.Duration {
	var at []time.Time
	for _, a := range acks {
		at = append(at, a.At)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	var longest time.Duration
	for i := 1; i < len(at); i++ {
		if at[i].After(from) && at[i-1].Before(to) {
			longest = max(longest, at[i].Sub(at[i-1]))
		}
	}
	return longest
}

func trxCommit(t *testing.T, m *testenv.MariaDB) int {
	t.Helper()
	var v int
	if err := m.DB(t).QueryRowContext(t.Context(), "SELECT @@global.innodb_flush_log_at_trx_commit").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}
