package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestLoopFS(t *testing.T) {
	NeedRoot(t)
	for _, tc := range []struct {
		name string
		make func(testing.TB) *FS
	}{
		{"btrfs", Btrfs},
		{"xfs", XFS},
		{"ext4", Ext4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fs *FS
			t.Run("use", func(t *testing.T) {
				fs = tc.make(t)
				if fs.Type != tc.name {
					t.Errorf("Type = %q, want %q", fs.Type, tc.name)
				}
				file := filepath.Join(fs.Mount, "hello")
				if err := os.WriteFile(file, []byte("hello"), 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command("findmnt", "--noheadings", "--output", "FSTYPE", "--mountpoint", fs.Mount).Output()
				if err != nil {
					t.Fatalf("findmnt %s: %v", fs.Mount, err)
				}
				if got := string(bytes.TrimSpace(out)); got != tc.name {
					t.Errorf("findmnt %s: fstype %q, want %q", fs.Mount, got, tc.name)
				}
				if tc.name == "btrfs" {
					sub := fs.Subvolume(t, "sub")
					if err := os.WriteFile(filepath.Join(sub, "f"), nil, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				// A frozen filesystem must not stop the clean-up.
				if out, err := exec.Command("fsfreeze", "-f", fs.Mount).CombinedOutput(); err != nil {
					t.Fatalf("fsfreeze -f %s: %v: %s", fs.Mount, err, out)
				}
			})
			if fs == nil {
				t.Fatal("no filesystem made")
			}
			devs, err := Attached(fs.Image)
			if err != nil {
				t.Fatal(err)
			}
			if len(devs) != 0 {
				t.Errorf("after clean-up %s is still attached to %v", fs.Image, devs)
			}
			if _, err := os.Stat(fs.Image); !os.IsNotExist(err) {
				t.Errorf("after clean-up stat %s: %v, want not exist", fs.Image, err)
			}
			if err := exec.Command("findmnt", "--mountpoint", fs.Mount).Run(); err == nil {
				t.Errorf("after clean-up %s is still mounted", fs.Mount)
			}
		})
	}
}
