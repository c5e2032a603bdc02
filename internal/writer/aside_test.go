package writer_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// TestMoveAside: live data moved aside before a restore goes to the top of
// its own filesystem (a btrfs subvolume's root, or the mount point), not
// beside it under another name, where a tool scanning the directory (postgresql-common in
// /etc/postgresql/15/) would take it for the live thing; a missing path is
// no error.
func TestMoveAside(t *testing.T) {
	fs := testenv.Btrfs(t)
	sub := fs.Subvolume(t, "pg")
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(fs.Mount, "etc", "postgresql", "15", "main"), filepath.Join(fs.Mount, ".umbra-before-restore-T", fs.Mount, "etc", "postgresql", "15", "main")},
		{filepath.Join(sub, "data"), filepath.Join(sub, ".umbra-before-restore-T", sub, "data")},
	} {
		if err := os.MkdirAll(tc.path, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tc.path, "postgresql.conf"), []byte("port = 5432\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		to, err := writer.MoveAside(tc.path, "T")
		if err != nil {
			t.Fatal(err)
		}
		if to != tc.want {
			t.Errorf("%s moved to %s, want %s", tc.path, to, tc.want)
		}
		if b, err := os.ReadFile(filepath.Join(to, "postgresql.conf")); err != nil || string(b) != "port = 5432\n" {
			t.Errorf("moved %s: %v", tc.path, err)
		}
		// Beside it at most the aside directory, where the moved
		// directory lies deeper, under its whole path.
		siblings, err := os.ReadDir(filepath.Dir(tc.path))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range siblings {
			if e.Name() != writer.AsideDirPrefix+"T" {
				t.Errorf("%s's directory holds %s after the move; want nothing a tool could take for it", tc.path, e.Name())
			}
		}
	}
	if to, err := writer.MoveAside(filepath.Join(fs.Mount, "none"), "T"); to != "" || err != nil {
		t.Errorf("a missing path: %q, %v; want nothing done", to, err)
	}
}
