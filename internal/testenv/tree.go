package testenv

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// MakeTree fills dir with one of everything a backup must bring back:
// files of many sizes, a block-like database file, a sparse file, empty
// files and directories, symlinks, hard links, a fifo, names with any
// bytes, odd modes, xattrs, other owners (as root) and nanosecond times.
func MakeTree(t testing.TB, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, mode))
		must(os.Chmod(p, mode)) // umask
	}
	write("empty", nil, 0o644)
	write("one", []byte("x"), 0o600)
	write("text.txt", bytes.Repeat([]byte("all work and no play makes jack a dull boy\n"), 20000), 0o644)
	write("random.bin", Random(t, 5<<20+123), 0o640)
	write("sub/deeper/file", Random(t, 300<<10), 0o755)
	write("app.db", Random(t, 2<<20), 0o600)
	write("setuid", []byte("#!/bin/sh\n"), 0o4755)
	write("name with spaces and \n newline", []byte("n"), 0o644)
	write("bytes-\xff\xfe-not-utf8", []byte("b"), 0o644)
	must(os.Mkdir(filepath.Join(dir, "empty-dir"), 0o700))
	must(os.Chmod(filepath.Join(dir, "empty-dir"), 0o1777))

	// Sparse files, with data at the start and in the middle and holes
	// elsewhere: one cut by content, one into fixed blocks (an image).
	for name, size := range map[string]int64{"sparse": 48 << 20, "disk.img": 64 << 20} {
		f, err := os.Create(filepath.Join(dir, name))
		must(err)
		_, err = f.WriteAt(Random(t, 4096), 0)
		must(err)
		_, err = f.WriteAt(Random(t, 4096), size/2)
		must(err)
		must(f.Truncate(size))
		must(f.Close())
	}

	must(os.Symlink("random.bin", filepath.Join(dir, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(dir, "dangling")))
	must(os.Link(filepath.Join(dir, "random.bin"), filepath.Join(dir, "sub", "hardlink")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	if err := unix.Lsetxattr(filepath.Join(dir, "text.txt"), "user.comment", []byte("kept"), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(dir, "one"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link"), 4321, 8765))
	}
	// Nanosecond times, set last, children before parents.
	var paths []string
	must(filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	slices.Reverse(paths)
	for i, p := range paths {
		ts := time.Date(2020, 1, 2, 3, 4, 5, 123456789+i, time.UTC)
		tt := []unix.Timespec{unix.NsecToTimespec(ts.UnixNano()), unix.NsecToTimespec(ts.UnixNano() + 1000)}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, tt, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// Random returns n random bytes.
func Random(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// RandomInt returns a random int in [0, n).
func RandomInt(n int64) int64 {
	v, _ := rand.Int(rand.Reader, big.NewInt(n))
	return v.Int64()
}

// CompareTrees fails t for every difference between the trees at want and
// got: type, content, size, mode, owner, mtime to the nanosecond, symlink
// target, xattrs, hard links (paths sharing an inode in want share one in
// got), and holes (a sparse file must not take much more space in got).
func CompareTrees(t testing.TB, want, got string) {
	t.Helper()
	CompareTreesWith(t, want, got, CompareOptions{})
}

// CompareOptions relax CompareTrees.
type CompareOptions struct {
	// AnyAllocation accepts any space a file takes: a FUSE view knows
	// holes only roughly, at the chunks' size.
	AnyAllocation bool
}

// CompareTreesWith is CompareTrees with options.
func CompareTreesWith(t testing.TB, want, got string, opts CompareOptions) {
	t.Helper()
	inodes := map[uint64]string{} // want inode → got inode path, for hard links
	gotInodes := map[string]uint64{}
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		if err := unix.Lstat(q, &b); err != nil {
			t.Errorf("%s: missing in the restore: %v", rel, err)
			return nil
		}
		check := func(what string, x, y any) {
			if x != y {
				t.Errorf("%s: %s: got %v, want %v", rel, what, y, x)
			}
		}
		check("type", a.Mode&unix.S_IFMT, b.Mode&unix.S_IFMT)
		if a.Mode&unix.S_IFMT != unix.S_IFLNK {
			check("mode", a.Mode&07777, b.Mode&07777)
		}
		check("uid", a.Uid, b.Uid)
		check("gid", a.Gid, b.Gid)
		if rel != "." {
			check("mtime", a.Mtim.Nano(), b.Mtim.Nano())
		}
		switch a.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			check("size", a.Size, b.Size)
			x, err1 := os.ReadFile(p)
			y, err2 := os.ReadFile(q)
			if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
				t.Errorf("%s: content differs (%v, %v)", rel, err1, err2)
			}
			// Holes stay holes: allow a little allocation slack.
			if !opts.AnyAllocation && b.Blocks > a.Blocks+64 && a.Blocks*512 < a.Size/2 {
				t.Errorf("%s: sparse file takes %d blocks after restore, %d before", rel, b.Blocks, a.Blocks)
			}
			if a.Nlink > 1 {
				if first, ok := inodes[a.Ino]; ok {
					if gotInodes[first] != b.Ino {
						t.Errorf("%s: not a hard link of %s after restore", rel, first)
					}
				} else {
					inodes[a.Ino] = q
					gotInodes[q] = b.Ino
				}
			}
		case unix.S_IFLNK:
			x, _ := os.Readlink(p)
			y, _ := os.Readlink(q)
			check("symlink target", x, y)
		}
		check("xattrs", xattrs(p), xattrs(q))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing extra in got.
	_ = filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(got, p)
		if _, err := os.Lstat(filepath.Join(want, rel)); err != nil {
			t.Errorf("%s: in the restore but not in the original", rel)
		}
		return nil
	})
}

func xattrs(p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var out []byte
	for _, name := range bytes.Split(buf[:n-1], []byte{0}) {
		v := make([]byte, 4096)
		m, _ := unix.Lgetxattr(p, string(name), v)
		out = append(append(append(out, name...), '='), v[:max(m, 0)]...)
		out = append(out, ';')
	}
	return string(out)
}
