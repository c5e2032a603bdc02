package reflink

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/providertest"
	"github.com/umbra-backup/umbra/internal/testenv"
)

func volume(fs *testenv.FS) provider.Volume {
	return provider.Volume{Mount: fs.Mount, Device: fs.Device, FSType: fs.Type}
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(testing.TB) *testenv.FS
	}{
		{"xfs", testenv.XFS},
		{"btrfs", testenv.Btrfs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			providertest.Run(t, New(), func(t *testing.T) (provider.Volume, string) {
				fs := tc.make(t)
				dir := filepath.Join(fs.Mount, "data")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				return volume(fs), dir
			})
		})
	}
}

func TestCanServe(t *testing.T) {
	t.Run("ext4", func(t *testing.T) {
		fs := testenv.Ext4(t)
		err := New().CanServe(volume(fs))
		if err == nil {
			t.Fatal("CanServe(ext4) = nil, want an error")
		}
		for _, want := range []string{"ext4", fs.Mount, "FICLONE", "live provider"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("CanServe(ext4) = %q, want it to mention %q", err, want)
			}
		}
		noProbeLeft(t, fs.Mount)
	})
	t.Run("xfs", func(t *testing.T) {
		fs := testenv.XFS(t)
		p := New()
		for i := range 2 { // the second answer comes from the cache
			if err := p.CanServe(volume(fs)); err != nil {
				t.Errorf("CanServe(xfs) #%d = %v, want nil", i+1, err)
			}
		}
		noProbeLeft(t, fs.Mount)
	})
	t.Run("read-only", func(t *testing.T) {
		vol := provider.Volume{Mount: "/nonexistent", FSType: "xfs", ReadOnly: true}
		if err := New().CanServe(vol); err == nil {
			t.Errorf("CanServe(%+v) = nil, want an error", vol)
		}
	})
	t.Run("message", func(t *testing.T) {
		err := unsupported(provider.Volume{Mount: "/mnt", FSType: "xfs"}, unix.EOPNOTSUPP)
		want := "reflink provider: xfs at /mnt without reflink; make it with mkfs.xfs -m reflink=1"
		if !strings.HasPrefix(err.Error(), want) || !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("unsupported(xfs) = %q, want prefix %q wrapping EOPNOTSUPP", err, want)
		}
	})
}

func noProbeLeft(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".umbra-probe-") {
			t.Errorf("probe file %s left in %s", e.Name(), dir)
		}
	}
}

// meta is what a copy must keep of a file.
type meta struct {
	Mode         uint16
	UID, GID     uint32
	Atime, Mtime unix.StatxTimestamp
	Size         uint64
	Target       string
}

// metaOf reads path's metadata. Reading a symlink may move its atime
// (relatime): for a source, read the link first so the copy sees the moved
// atime; for a copy, stat it first so the test sees what Create set.
func metaOf(t *testing.T, path string, source bool) meta {
	t.Helper()
	var target string
	if source {
		target, _ = os.Readlink(path)
	}
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &st); err != nil {
		t.Fatal(err)
	}
	if !source {
		target, _ = os.Readlink(path)
	}
	m := meta{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Atime: st.Atime, Mtime: st.Mtime, Target: target}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		m.Size = st.Size
	}
	return m
}

func TestMetadata(t *testing.T) {
	testenv.NeedRoot(t)
	fs := testenv.XFS(t)
	p := New()
	m := fs.Mount
	// a/ and a/b/ are made as parents of the requested a/b/tree.
	tree := filepath.Join(m, "a/b/tree")
	mkdirs(t, filepath.Join(tree, "nested/deeper"), filepath.Join(tree, "empty-dir"))
	write(t, filepath.Join(tree, "file"), "content")
	write(t, filepath.Join(tree, "empty"), "")
	write(t, filepath.Join(tree, "nested/deeper/big"), strings.Repeat("x", 1<<20+17))
	write(t, filepath.Join(tree, "setuid"), "#!/bin/sh\n")
	must(t, os.Link(filepath.Join(tree, "file"), filepath.Join(tree, "hardlink")))
	must(t, os.Symlink("nested/deeper/big", filepath.Join(tree, "link")))
	must(t, os.Symlink("/dangling/target", filepath.Join(tree, "dangling")))
	must(t, unix.Mkfifo(filepath.Join(tree, "fifo"), 0o600))
	write(t, filepath.Join(m, "a/other"), "not requested")

	must(t, os.Lchown(filepath.Join(tree, "file"), 1234, 5678))
	must(t, os.Lchown(filepath.Join(tree, "link"), 4321, 8765))
	must(t, os.Lchown(filepath.Join(tree, "nested"), 1111, 2222))
	must(t, os.Chown(filepath.Join(tree, "setuid"), 1000, 1000))
	must(t, os.Chmod(filepath.Join(tree, "setuid"), 0o755|os.ModeSetuid))
	must(t, os.Chmod(filepath.Join(tree, "file"), 0o640))
	must(t, os.Chmod(filepath.Join(tree, "nested"), 0o751))
	must(t, os.Chmod(filepath.Join(tree, "nested/deeper"), 0o500))
	must(t, os.Chmod(filepath.Join(m, "a/b"), 0o711))
	old := time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.UTC)
	older := time.Date(1999, 1, 2, 3, 4, 5, 987654321, time.UTC)
	for i, rel := range []string{"a", "a/b", "a/b/tree", "a/b/tree/file", "a/b/tree/nested", "a/b/tree/nested/deeper", "a/b/tree/empty", "a/b/tree/empty-dir"} {
		d := time.Duration(i) * time.Second
		must(t, os.Chtimes(filepath.Join(m, rel), older.Add(d), old.Add(d)))
	}
	ts := []unix.Timespec{unix.NsecToTimespec(older.UnixNano()), unix.NsecToTimespec(old.Add(time.Hour).UnixNano())}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(tree, "link"), ts, unix.AT_SYMLINK_NOFOLLOW))

	var want = map[string]meta{}
	var walked []string
	must(t, filepath.Walk(filepath.Join(m, "a"), func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if path == filepath.Join(m, "a/other") || path == filepath.Join(tree, "fifo") {
			return nil
		}
		rel, _ := filepath.Rel(m, path)
		walked = append(walked, rel)
		want[rel] = metaOf(t, path, true)
		return nil
	}))

	sh, err := p.Create(t.Context(), provider.Request{SetID: "meta", Volume: volume(fs), Paths: []string{tree}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { must(t, p.Delete(context.Background(), sh)) })
	setDir := filepath.Join(m, provider.ShadowDir, "meta")
	if diff := cmp.Diff([]provider.Root{{Source: m, Snapshot: setDir}}, sh.Roots); diff != "" {
		t.Errorf("roots (-want +got):\n%s", diff)
	}

	// Change the live tree: the copy must not follow.
	write(t, filepath.Join(tree, "file"), "changed")
	write(t, filepath.Join(tree, "nested/deeper/big"), "shrunk")

	for _, rel := range walked {
		got := metaOf(t, filepath.Join(setDir, rel), false)
		if diff := cmp.Diff(want[rel], got); diff != "" {
			t.Errorf("copy of %s (-want +got):\n%s", rel, diff)
		}
	}
	var got []string
	must(t, filepath.Walk(filepath.Join(setDir, "a"), func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(setDir, path)
		got = append(got, rel)
		return nil
	}))
	if diff := cmp.Diff(walked, got); diff != "" {
		t.Errorf("copied tree (-want +got):\n%s", diff)
	}
	if s := read(t, filepath.Join(setDir, "a/b/tree/file")); s != "content" {
		t.Errorf("copy of file = %q, want %q", s, "content")
	}
	if s := read(t, filepath.Join(setDir, "a/b/tree/nested/deeper/big")); s != strings.Repeat("x", 1<<20+17) {
		t.Errorf("copy of big has %d bytes, want the old %d", len(s), 1<<20+17)
	}
	var a, b unix.Stat_t
	must(t, unix.Stat(filepath.Join(setDir, "a/b/tree/file"), &a))
	must(t, unix.Stat(filepath.Join(setDir, "a/b/tree/hardlink"), &b))
	if a.Ino != b.Ino {
		t.Errorf("copies of hard links have inodes %d and %d, want one", a.Ino, b.Ino)
	}
}

func TestCreate(t *testing.T) {
	testenv.NeedRoot(t)
	fs := testenv.Btrfs(t)
	p := New()
	m := fs.Mount
	sub := fs.Subvolume(t, "sub")
	write(t, filepath.Join(sub, "in-subvolume"), "sub")
	mkdirs(t, filepath.Join(m, "d/e"))
	write(t, filepath.Join(m, "d/e/f"), "f")
	write(t, filepath.Join(m, "top"), "top")

	t.Run("whole volume twice", func(t *testing.T) {
		first := create(t, p, provider.Request{SetID: "one", Volume: volume(fs), Paths: []string{m}})
		second := create(t, p, provider.Request{SetID: "two", Volume: volume(fs), Paths: []string{m, filepath.Join(m, "d/e")}})
		for _, sh := range []provider.Shadow{first, second} {
			dir := sh.Roots[0].Snapshot
			if s := read(t, filepath.Join(dir, "sub/in-subvolume")); s != "sub" {
				t.Errorf("%s: copy across subvolumes = %q, want %q", sh.SetID, s, "sub")
			}
			if _, err := os.Lstat(filepath.Join(dir, provider.ShadowDir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: the copy holds the shadow directory: %v", sh.SetID, err)
			}
		}
	})

	t.Run("overlapping paths", func(t *testing.T) {
		sh := create(t, p, provider.Request{SetID: "overlap", Volume: volume(fs), Paths: []string{
			filepath.Join(m, "d/e/f"), filepath.Join(m, "d"), filepath.Join(m, "d/e/f"), filepath.Join(m, "top"),
		}})
		if s := read(t, filepath.Join(sh.Roots[0].Snapshot, "d/e/f")); s != "f" {
			t.Errorf("copy of d/e/f = %q, want %q", s, "f")
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			req  provider.Request
		}{
			{"missing", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{filepath.Join(m, "nope")}}},
			{"off volume", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{"/etc"}}},
			{"shadow dir", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{filepath.Join(m, provider.ShadowDir, "x")}}},
			{"bad set id", provider.Request{SetID: "a/b", Volume: volume(fs), Paths: []string{m}}},
			{"no paths", provider.Request{SetID: "e", Volume: volume(fs)}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if sh, err := p.Create(t.Context(), tc.req); err == nil {
					t.Errorf("Create(%+v) = %+v, nil; want error", tc.req, sh)
				}
				if _, err := os.Lstat(filepath.Join(m, provider.ShadowDir, "e")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("after failed Create stat set dir: %v, want not exist", err)
				}
			})
		}
	})

	t.Run("cancelled midway", func(t *testing.T) {
		for i := range 50 {
			write(t, filepath.Join(m, "many", "f"+string(rune('a'+i%26))+string(rune('a'+i/26))), "x")
		}
		ctx := &countdown{Context: t.Context()}
		ctx.left.Store(10)
		req := provider.Request{SetID: "cancel", Volume: volume(fs), Paths: []string{filepath.Join(m, "many")}}
		_, err := p.Create(ctx, req)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Create cancelled after 10 files = %v, want context.Canceled", err)
		}
		if _, err := os.Lstat(filepath.Join(m, provider.ShadowDir, "cancel")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after cancelled Create stat set dir: %v, want not exist", err)
		}
	})
}

// countdown is a context that reports cancellation after its Err has been
// asked a number of times.
type countdown struct {
	context.Context
	left atomic.Int64
}

func (c *countdown) Err() error {
	if c.left.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestDeleteRefusesForeignPaths(t *testing.T) {
	dir := t.TempDir()
	sh := provider.Shadow{Provider: "reflink", SetID: "s", Volume: provider.Volume{Mount: dir}, Roots: []provider.Root{{Source: dir, Snapshot: dir}}}
	if err := New().Delete(t.Context(), sh); err == nil {
		t.Errorf("Delete of a shadow whose copy is the live mount succeeded")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("live dir: %v", err)
	}
}

func create(t *testing.T, p *Provider, req provider.Request) provider.Shadow {
	t.Helper()
	sh, err := p.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { must(t, p.Delete(context.Background(), sh)) })
	return sh
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		must(t, os.MkdirAll(d, 0o755))
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, []byte(content), 0o644))
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNoCOW(t *testing.T) {
	testenv.NeedCommand(t, "chattr")
	fs := testenv.Btrfs(t)
	p := New()
	// Databases on btrfs are often kept in nodatacow files (chattr +C); a
	// clone needs both ends to agree on it.
	dir := filepath.Join(fs.Mount, "db")
	mkdirs(t, dir)
	file := filepath.Join(dir, "table")
	write(t, file, "")
	if out, err := exec.Command("chattr", "+C", file).CombinedOutput(); err != nil {
		t.Fatalf("chattr +C %s: %v: %s", file, err, out)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString(strings.Repeat("row\n", 10000))
	must(t, errors.Join(err, f.Close()))

	sh := create(t, p, provider.Request{SetID: "nocow", Volume: volume(fs), Paths: []string{dir}})
	if got := read(t, filepath.Join(sh.Roots[0].Snapshot, "db/table")); got != strings.Repeat("row\n", 10000) {
		t.Errorf("copy of nodatacow file has %d bytes, want %d", len(got), 40000)
	}
}
