package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// FS is a filesystem made on a loop device for one test and torn down by
// t.Cleanup, whether the test passed or not.
type FS struct {
	Mount  string // mount point
	Device string // loop device, e.g. /dev/loop3
	Image  string // sparse image file backing Device
	Type   string // btrfs, xfs or ext4
}

// The images are sparse: a size costs disk only as it is written. Database
// servers under load need room (btrfs turns read-only when it runs out of
// metadata space).

// Btrfs mounts a fresh 1 GiB btrfs.
func Btrfs(t testing.TB) *FS {
	t.Helper()
	return makeLoopFS(t, "btrfs", 1<<30, "-q", "-f")
}

// XFS mounts a fresh 512 MiB XFS with reflink enabled (mkfs.xfs refuses
// images under 300 MiB).
func XFS(t testing.TB) *FS {
	t.Helper()
	return makeLoopFS(t, "xfs", 512<<20, "-q", "-f", "-m", "reflink=1")
}

// Ext4 mounts a fresh 512 MiB ext4, a filesystem without snapshots or
// reflinks.
func Ext4(t testing.TB) *FS {
	t.Helper()
	return makeLoopFS(t, "ext4", 512<<20, "-q", "-F")
}

// Subvolume creates the btrfs subvolume Mount/name and returns its path.
func (fs *FS) Subvolume(t testing.TB, name string) string {
	t.Helper()
	if fs.Type != "btrfs" {
		t.Fatalf("subvolume %s: %s at %s is not btrfs", name, fs.Type, fs.Mount)
	}
	NeedCommand(t, "btrfs")
	path := filepath.Join(fs.Mount, name)
	loopRun(t, "btrfs", "subvolume", "create", path)
	return path
}

func makeLoopFS(t testing.TB, typ string, size int64, mkfsArgs ...string) *FS {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "losetup")
	NeedCommand(t, "mkfs."+typ)

	// TempDir registers its own removal first, so it runs after the
	// clean-up registered below has unmounted and detached.
	fs := &FS{
		Image: filepath.Join(t.TempDir(), typ+".img"),
		Mount: t.TempDir(),
		Type:  typ,
	}
	f, err := os.Create(fs.Image)
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("size image %s: %v", fs.Image, err)
	}

	out, err := exec.Command("losetup", "--find", "--show", fs.Image).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v: %s", fs.Image, err, out)
	}
	fs.Device = strings.TrimSpace(string(out))
	t.Cleanup(func() { fs.teardown(t) })

	loopRun(t, "mkfs."+typ, append(mkfsArgs, fs.Device)...)
	loopRun(t, "mount", "-t", typ, fs.Device, fs.Mount)
	return fs
}

// teardown unmounts, detaches and removes the image, reporting every step
// that fails: a leaked loop device breaks the next test run.
func (fs *FS) teardown(t testing.TB) {
	t.Helper()
	if fs.mounted() {
		// A test may have left it frozen; unmounting a frozen filesystem
		// leaves its superblock frozen and the loop device busy.
		_ = exec.Command("fsfreeze", "-u", fs.Mount).Run()
		var out []byte
		var err error
		for i := range 5 {
			if out, err = exec.Command("umount", fs.Mount).CombinedOutput(); err == nil {
				break
			}
			time.Sleep(time.Duration(i+1) * 100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("umount %s: %v: %s; detaching lazily", fs.Mount, err, out)
			if out, err := exec.Command("umount", "-l", fs.Mount).CombinedOutput(); err != nil {
				t.Errorf("umount -l %s: %v: %s", fs.Mount, err, out)
			}
		}
	}
	// Detach only our device, and only while it still backs our image:
	// another test may have been given the same number since.
	if fs.backs(t) {
		if out, err := exec.Command("losetup", "--detach", fs.Device).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", fs.Device, err, out)
		}
	}
	if err := os.Remove(fs.Image); err != nil && !os.IsNotExist(err) {
		t.Errorf("remove image: %v", err)
	}
}

// mounted reports whether fs.Device is still mounted at fs.Mount.
func (fs *FS) mounted() bool {
	out, err := exec.Command("findmnt", "--noheadings", "--nofsroot", "--output", "SOURCE", "--mountpoint", fs.Mount).Output()
	if err != nil {
		// findmnt exits 1 when nothing is mounted there.
		return false
	}
	return slices.Contains(strings.Fields(string(out)), fs.Device)
}

// backs reports whether fs.Device is attached to fs.Image.
func (fs *FS) backs(t testing.TB) bool {
	t.Helper()
	devs, err := Attached(fs.Image)
	if err != nil {
		t.Error(err)
		return false
	}
	for _, dev := range devs {
		if dev == fs.Device {
			return true
		}
	}
	return false
}

// Attached returns the loop devices backed by the image file (none if it is
// gone), so tests can check that nothing leaked.
func Attached(image string) ([]string, error) {
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME", "--associated", image).Output()
	if err != nil {
		return nil, fmt.Errorf("losetup --associated %s: %w", image, err)
	}
	return strings.Fields(string(out)), nil
}

func loopRun(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
