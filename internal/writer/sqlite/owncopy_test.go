package sqlite

import (
	"context"
	"slices"
	"testing"

	"path/filepath"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/provider/reflink"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// TestOwnCopyOnExt4 puts a database under a committing load on ext4, where
// no provider can copy it consistently, for each journal mode and
// synchronous setting: the set must be application-consistent through the
// writer's own copy, which holds every commit acknowledged before the
// freeze and passes integrity_check, with the live -wal and -journal left
// out. In WAL mode the copy runs after Thaw, so the freeze stays short.
func TestOwnCopyOnExt4(t *testing.T) {
	fs := testenv.Ext4(t)
	store, err := shadow.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// cmd/umbra's providers, in its order.
	coord := shadow.New([]provider.Provider{btrfs.New(), reflink.New(), live.New()}, store, shadow.Options{})
	for _, mode := range []string{"WAL", "DELETE"} {
		for _, sync := range []string{"OFF", "NORMAL", "FULL"} {
			t.Run(mode+"/"+sync, func(t *testing.T) {
				path := filepath.Join(fs.Mount, mode+"-"+sync+".db")
				load := testenv.StartSQLiteLoadWith(t, testenv.SQLiteLoadOptions{JournalMode: mode, Synchronous: sync}, path)
				for range 50 {
					if err := load.WaitProgress(10e9); err != nil {
						t.Fatal(err)
					}
				}
				wr := newWriter(t, path)
				set, err := coord.Create(t.Context(), []writer.Writer{wr}, nil)
				if err != nil {
					t.Fatalf("shadow set on ext4: %v", err)
				}
				t.Cleanup(func() { coord.Delete(context.Background(), set.ID) })
				if err := load.WaitProgress(10e9); err != nil {
					t.Fatalf("after the set: %v", err)
				}
				acks := load.Stop()

				res := set.Writers[0]
				if res.Consistency != shadow.Application || !slices.Contains(set.OwnCopies, wr.Name()+"/"+wr.component) {
					t.Fatalf("set: consistency %s, own copies %v; want application, copied by the writer", res.Consistency, set.OwnCopies)
				}
				copies := res.Report.Copies
				if len(copies) != 3 || copies[0].Path != path || copies[0].Source == "" || copies[1].Source != "" || copies[2].Source != "" {
					t.Fatalf("copies %+v: want the database from the copy, its -wal and -journal left out", copies)
				}
				if err := IntegrityCheck(t.Context(), copies[0].Source); err != nil {
					t.Errorf("the copy: %v", err)
				}
				n := counterValue(t, openDB(t, copies[0].Source))
				var before, last int64
				for _, a := range acks {
					if a.At.Before(set.FreezeStart) {
						before = a.N
					}
					last = a.N
				}
				t.Logf("freeze window %v; counter %d acknowledged before the freeze, %d in the copy, %d at the end", set.FreezeWindow(), before, n, last)
				if n < before || n > last || before == 0 || last == n {
					t.Errorf("the copy's counter is %d; want at least the %d acknowledged before the freeze and less than the %d at the end", n, before, last)
				}
			})
		}
	}
}
