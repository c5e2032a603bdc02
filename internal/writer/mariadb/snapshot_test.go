package mariadb

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// timed records when the coordinator called PrepareSnapshot and Thaw, so a
// test can tell which acknowledged commits a shadow set must hold.
type timed struct {
	*Writer
	mu                   sync.Mutex
	prepareAt            time.Time     // PrepareSnapshot called
	freezeTook           time.Duration // in Freeze
	thawAt, thawReturnAt time.Time     // Thaw called and returned
}

func (tw *timed) Freeze(ctx context.Context, set writer.Set) error {
	start := time.Now()
	err := tw.Writer.Freeze(ctx, set)
	tw.mu.Lock()
	tw.freezeTook = time.Since(start)
	tw.mu.Unlock()
	return err
}

func (tw *timed) PrepareSnapshot(ctx context.Context, set writer.Set) error {
	tw.mu.Lock()
	tw.prepareAt = time.Now()
	tw.mu.Unlock()
	return tw.Writer.PrepareSnapshot(ctx, set)
}

func (tw *timed) Thaw(ctx context.Context, set writer.Set) error {
	at := time.Now()
	err := tw.Writer.Thaw(ctx, set)
	tw.mu.Lock()
	tw.thawAt, tw.thawReturnAt = at, time.Now()
	tw.mu.Unlock()
	return err
}

// onBtrfs starts MariaDB in a subvolume of a fresh btrfs, and a coordinator
// with the btrfs provider.
func onBtrfs(t testing.TB) (*testenv.FS, *testenv.MariaDB, *shadow.Coordinator) {
	t.Helper()
	fs := testenv.Btrfs(t)
	m := testenv.StartMariaDB(t, fs.Subvolume(t, "maria"))
	store, err := shadow.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fs, m, shadow.New([]provider.Provider{btrfs.New()}, store, shadow.Options{})
}

// createSet makes one shadow set of wr, deleted when the test ends.
func createSet(t testing.TB, coord *shadow.Coordinator, wr writer.Writer) *shadow.Set {
	t.Helper()
	set, err := coord.Create(t.Context(), []writer.Writer{wr}, nil)
	if err != nil {
		t.Fatalf("create shadow set: %v", err)
	}
	t.Cleanup(func() {
		if err := coord.Delete(context.Background(), set.ID); err != nil {
			t.Errorf("delete set %s: %v", set.ID, err)
		}
	})
	return set
}

// TestSnapshotUnderLoad makes a shadow set of MariaDB under the transfer
// load with the real coordinator and btrfs provider, starts a second server
// on a copy of the snapshot's data directory (as a requester reads it,
// excludes left out), and checks that the copy is
// what the set promised: InnoDB recovers, the ledger balances, every
// transfer acknowledged before Thaw is there and none sent after it, and
// the recorded binary log position is the snapshot's end of the log.
func TestSnapshotUnderLoad(t *testing.T) {
	fs, m, coord := onBtrfs(t)
	load := m.StartTransferLoad(t, 4)
	time.Sleep(300 * time.Millisecond)
	tw := &timed{Writer: newWriter(t, m, nil)}
	set := createSet(t, coord, tw)
	if err := load.WaitProgress(5 * time.Second); err != nil {
		t.Fatalf("after the set: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // for transfers begun after Thaw
	acks := load.Stop()
	t.Logf("freeze window %v; %d transfers acknowledged", set.FreezeWindow(), len(acks))

	if set.Type != writer.Full || set.Writers[0].Consistency != shadow.Application {
		t.Errorf("set: got type %s consistency %s, want full and application", set.Type, set.Writers[0].Consistency)
	}
	pos := set.Writers[0].Report.Positions
	snapData := shadowtest.SnapshotOf(t, set, m.DataDir)
	fi, err := os.Stat(filepath.Join(snapData, pos[PosFile]))
	if err != nil {
		t.Fatalf("binary log of the recorded position in the snapshot: %v", err)
	}
	if want, _ := strconv.ParseInt(pos[PosPos], 10, 64); fi.Size() != want {
		t.Errorf("snapshot's %s is %d bytes, want the recorded position %d", pos[PosFile], fi.Size(), want)
	}

	copyDir := filepath.Join(fs.Mount, "copy")
	shadowtest.CopyComponents(t, set, tw.Name(), func(string) string { return copyDir })
	c := m.StartCopy(t, copyDir)
	led, err := c.Ledger(t)
	if err != nil {
		t.Fatalf("copy of the snapshot: %v", err)
	}
	checkAcks(t, acks, led, tw)
	var gtid string
	if err := c.DB(t).QueryRowContext(t.Context(), "SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	if gtid != pos[PosGTID] {
		t.Errorf("copy's @@gtid_binlog_pos: got %q, want the recorded %q", gtid, pos[PosGTID])
	}
}

// checkAcks compares acknowledged transfers with the ledger of a copy of a
// set: committed before Thaw means in the copy (commits were blocked from
// Freeze on), COMMIT sent after Thaw returned means not in it.
func checkAcks(t *testing.T, acks []testenv.MariaDBAck, led testenv.MariaDBLedger, tw *timed) {
	t.Helper()
	checkAcksAround(t, acks, led, "Thaw", tw.thawAt, tw.thawReturnAt)
}

// checkAcksAround checks that every transfer acknowledged before present is
// in the copy and none whose COMMIT was sent after absent; what is between
// may be either. The load must have run across both.
func checkAcksAround(t *testing.T, acks []testenv.MariaDBAck, led testenv.MariaDBLedger, what string, present, absent time.Time) {
	t.Helper()
	var before, after, missing, extra int
	for _, a := range acks {
		switch {
		case a.At.Before(present):
			before++
			if !led.Transfers[a.ID] {
				missing++
				if missing <= 5 {
					t.Errorf("transfer %d acknowledged at %v, before %s at %v, is not in the copy", a.ID, a.At.Format(time.StampMicro), what, present.Format(time.StampMicro))
				}
			}
		case a.Sent.After(absent):
			after++
			if led.Transfers[a.ID] {
				extra++
				if extra <= 5 {
					t.Errorf("transfer %d sent COMMIT at %v, after %s ended at %v, is in the copy", a.ID, a.Sent.Format(time.StampMicro), what, absent.Format(time.StampMicro))
				}
			}
		}
	}
	t.Logf("%d transfers acknowledged before %s (%d missing), %d sent after (%d in the copy); the copy holds %d",
		before, what, missing, after, extra, len(led.Transfers))
	if before == 0 || after == 0 {
		t.Errorf("got %d transfers before %s and %d after, want both: the load must run across the set", before, what, after)
	}
}

// TestReplicaMakesCopyBackup has a replica read the binary log while the
// coordinator makes a full set: the set becomes a copy backup, and
// BackupComplete for it purges nothing.
func TestReplicaMakesCopyBackup(t *testing.T) {
	testenv.NeedCommand(t, "mariadb-binlog")
	_, m, coord := onBtrfs(t)
	m.Exec(t, "FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
	startReplica(t, m)
	wr := newWriter(t, m, map[string]string{"purge_binlogs": "true"})
	set := createSet(t, coord, wr)
	if set.Type != writer.Copy || !strings.Contains(set.CopyReason, "Binlog Dump thread") {
		t.Errorf("set with a replica reading: got type %s, reason %q; want copy, naming the Binlog Dump thread", set.Type, set.CopyReason)
	}
	before := binlogs(t, m)
	ws := writer.Set{ID: set.ID, Type: set.Type, Scratch: set.Scratch}
	if err := wr.BackupComplete(t.Context(), writer.Completion{Set: ws, Components: map[string]bool{DataComponent: true}}); err != nil {
		t.Errorf("BackupComplete of a copy backup: %v", err)
	}
	if got := binlogs(t, m); !slices.Equal(got, before) {
		t.Errorf("binary logs after a copy backup: got %q, want all of %q", got, before)
	}
}

// BenchmarkFreezeWindow makes shadow sets of MariaDB under the transfer
// load on btrfs and reports the freeze window (BLOCK_COMMIT to BACKUP STAGE
// END, around the btrfs snapshot) at p50 and p99. Run with -benchtime=100x
// for a steady figure; it asserts nothing about time.
func BenchmarkFreezeWindow(b *testing.B) {
	_, m, coord := onBtrfs(b)
	load := m.StartTransferLoad(b, 4)
	tw := &timed{Writer: newWriter(b, m, nil)}
	var freeze, inFreeze, inThaw, total []float64
	for b.Loop() {
		start := time.Now()
		set, err := coord.Create(b.Context(), []writer.Writer{tw}, nil)
		if err != nil {
			b.Fatalf("create shadow set: %v", err)
		}
		total = append(total, ms(time.Since(start)))
		freeze = append(freeze, ms(set.FreezeWindow()))
		inFreeze = append(inFreeze, ms(tw.freezeTook))
		inThaw = append(inThaw, ms(tw.thawReturnAt.Sub(tw.thawAt)))
		if err := coord.Delete(b.Context(), set.ID); err != nil {
			b.Fatal(err)
		}
	}
	acks := load.Stop()
	b.ReportMetric(percentile(freeze, 50), "freeze-p50-ms")
	b.ReportMetric(percentile(freeze, 99), "freeze-p99-ms")
	b.ReportMetric(percentile(total, 50), "create-p50-ms")
	b.Logf("%d sets; freeze window p50 %.1f ms p99 %.1f ms max %.1f ms (in Freeze: p50 %.1f ms p99 %.1f ms; in Thaw: p50 %.1f ms p99 %.1f ms; the rest is the btrfs snapshot); create p50 %.0f ms p99 %.0f ms; %d transfers committed",
		len(freeze), percentile(freeze, 50), percentile(freeze, 99), slices.Max(freeze),
		percentile(inFreeze, 50), percentile(inFreeze, 99), percentile(inThaw, 50), percentile(inThaw, 99),
		percentile(total, 50), percentile(total, 99), len(acks))
	if _, err := m.Ledger(b); err != nil {
		b.Error(err)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile by nearest rank.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
