package sqlite

import (
	"context"
	"slices"
	"testing"

	"path/filepath"

	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// TestDurabilitySettings puts a database under a committing load, for each
// journal mode and synchronous setting, on btrfs (the provider's snapshot)
// and on ext4, where no provider can copy it consistently and the writer
// copies it itself: each set must be application-consistent, its copy hold
// every commit acknowledged before the freeze and pass integrity_check,
// and on ext4 the live -wal and -journal are left out. In WAL mode the own
// copy runs after Thaw, so the freeze stays short.
func TestDurabilitySettings(t *testing.T) {
	for _, fsName := range []string{"btrfs", "ext4"} {
		t.Run(fsName, func(t *testing.T) { durabilitySettings(t, fsName == "ext4") })
	}
}

func durabilitySettings(t *testing.T, ext4 bool) {
	fs := testenv.Btrfs(t)
	if ext4 {
		fs = testenv.Ext4(t)
	}
	coord := shadowtest.NewCoordinator(t)
	for _, mode := range []string{"WAL", "DELETE"} {
		for _, sync := range []string{"OFF", "NORMAL", "FULL"} {
			t.Run(mode+"/"+sync, func(t *testing.T) {
				dir := fs.Mount
				if !ext4 {
					dir = fs.Subvolume(t, mode+"-"+sync)
				}
				path := filepath.Join(dir, mode+"-"+sync+".db")
				load := testenv.StartSQLiteLoadWith(t, testenv.SQLiteLoadOptions{JournalMode: mode, Synchronous: sync}, path)
				for range 50 {
					if err := load.WaitProgress(10e9); err != nil {
						t.Fatal(err)
					}
				}
				wr := newWriter(t, path)
				set, err := coord.Create(t.Context(), []writer.Writer{wr}, nil)
				if err != nil {
					t.Fatalf("shadow set: %v", err)
				}
				t.Cleanup(func() { coord.Delete(context.Background(), set.ID) })
				if err := load.WaitProgress(10e9); err != nil {
					t.Fatalf("after the set: %v", err)
				}
				acks := load.Stop()

				res := set.Writers[0]
				copied := slices.Contains(set.OwnCopies, wr.Name()+"/"+wr.component)
				if res.Consistency != shadow.Application || copied != ext4 {
					t.Fatalf("set: consistency %s, own copies %v; want application, copied by the writer on ext4 only", res.Consistency, set.OwnCopies)
				}
				var copyPath string
				if ext4 {
					copies := res.Report.Copies
					if len(copies) != 3 || copies[0].Path != path || copies[0].Source == "" || copies[1].Source != "" || copies[2].Source != "" {
						t.Fatalf("copies %+v: want the database from the copy, its -wal and -journal left out", copies)
					}
					copyPath = copies[0].Source
				} else {
					copyDir := t.TempDir()
					shadowtest.CopyComponents(t, set, wr.Name(), func(p string) string { return filepath.Join(copyDir, filepath.Base(p)) })
					copyPath = filepath.Join(copyDir, filepath.Base(path))
				}
				if err := IntegrityCheck(t.Context(), copyPath); err != nil {
					t.Errorf("the copy: %v", err)
				}
				n := counterValue(t, openDB(t, copyPath))
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
