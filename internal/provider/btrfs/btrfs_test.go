package btrfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/providertest"
	"github.com/umbra-backup/umbra/internal/testenv"
)

func volume(fs *testenv.FS) provider.Volume {
	return provider.Volume{Mount: fs.Mount, Device: fs.Device, FSType: fs.Type}
}

func TestConformance(t *testing.T) {
	t.Run("subvolume", func(t *testing.T) {
		providertest.Run(t, New(), func(t *testing.T) (provider.Volume, string) {
			fs := testenv.Btrfs(t)
			return volume(fs), fs.Subvolume(t, "data")
		})
	})
	t.Run("mount root", func(t *testing.T) {
		providertest.Run(t, New(), func(t *testing.T) (provider.Volume, string) {
			fs := testenv.Btrfs(t)
			dir := filepath.Join(fs.Mount, "data")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			return volume(fs), dir
		})
	})
}

func TestStructSizes(t *testing.T) {
	if got := unsafe.Sizeof(volArgsV2{}); got != 4096 {
		t.Errorf("sizeof(btrfs_ioctl_vol_args_v2) = %d, want 4096", got)
	}
	if got := unsafe.Sizeof(volArgs{}); got != 4096 {
		t.Errorf("sizeof(btrfs_ioctl_vol_args) = %d, want 4096", got)
	}
}

func TestCanServe(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		vol provider.Volume
		ok  bool
	}{
		{provider.Volume{Mount: "/srv", FSType: "btrfs"}, true},
		{provider.Volume{Mount: "/srv", FSType: "btrfs", ReadOnly: true}, false},
		{provider.Volume{Mount: "/srv", FSType: "xfs"}, false},
	} {
		if err := p.CanServe(tc.vol); (err == nil) != tc.ok {
			t.Errorf("CanServe(%+v) = %v, want ok %v", tc.vol, err, tc.ok)
		}
	}
}

func TestSnapshot(t *testing.T) {
	fs := testenv.Btrfs(t)
	p := New()
	sub := fs.Subvolume(t, "data")
	nested := filepath.Join(sub, "nested")
	mustRun(t, os.MkdirAll(filepath.Join(sub, "dir"), 0o755))
	write(t, filepath.Join(sub, "dir/file"), "old")
	write(t, filepath.Join(fs.Mount, "top"), "top old")
	nestedSub := fs.Subvolume(t, "data/nested")
	write(t, filepath.Join(nestedSub, "n"), "nested")

	sh, err := p.Create(t.Context(), provider.Request{
		SetID:  "s1",
		Volume: volume(fs),
		Paths: []string{
			filepath.Join(sub, "dir/file"),
			filepath.Join(sub, "dir"),
			filepath.Join(fs.Mount, "top"),
			filepath.Join(nested, "n"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []provider.Root{
		{Source: sub, Snapshot: filepath.Join(fs.Mount, ".umbra-shadow/s1/0")},
		{Source: fs.Mount, Snapshot: filepath.Join(fs.Mount, ".umbra-shadow/s1/1")},
		{Source: nested, Snapshot: filepath.Join(fs.Mount, ".umbra-shadow/s1/2")},
	}
	if len(sh.Roots) != len(want) {
		t.Fatalf("roots %+v, want %+v", sh.Roots, want)
	}
	for i := range want {
		if sh.Roots[i] != want[i] {
			t.Errorf("root %d = %+v, want %+v", i, sh.Roots[i], want[i])
		}
	}

	write(t, filepath.Join(sub, "dir/file"), "new")
	write(t, filepath.Join(fs.Mount, "top"), "top new")
	snapFile := filepath.Join(sh.Roots[0].Snapshot, "dir/file")
	if got := read(t, snapFile); got != "old" {
		t.Errorf("snapshot %s = %q after a live change, want %q", snapFile, got, "old")
	}
	if got := read(t, filepath.Join(sh.Roots[1].Snapshot, "top")); got != "top old" {
		t.Errorf("snapshot of mount root top = %q, want %q", got, "top old")
	}
	if got := read(t, filepath.Join(sh.Roots[2].Snapshot, "n")); got != "nested" {
		t.Errorf("snapshot of nested n = %q, want %q", got, "nested")
	}
	err = os.WriteFile(snapFile, []byte("x"), 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Errorf("write to snapshot %s: %v, want EROFS", snapFile, err)
	}

	if err := p.Delete(t.Context(), sh); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := p.Delete(t.Context(), sh); err != nil {
		t.Fatalf("Delete again: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(fs.Mount, provider.ShadowDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Delete stat %s: %v, want not exist", provider.ShadowDir, err)
	}
	if got := read(t, filepath.Join(sub, "dir/file")); got != "new" {
		t.Errorf("after Delete live file = %q, want %q", got, "new")
	}
}

func TestCreateErrors(t *testing.T) {
	fs := testenv.Btrfs(t)
	p := New()
	plain := filepath.Join(fs.Mount, "plain")
	mustRun(t, os.Mkdir(plain, 0o755))
	for _, tc := range []struct {
		name string
		req  provider.Request
	}{
		{"missing path", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{filepath.Join(fs.Mount, "nope")}}},
		{"path off volume", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{"/etc"}}},
		{"bad set id", provider.Request{SetID: "../e", Volume: volume(fs), Paths: []string{plain}}},
		{"no paths", provider.Request{SetID: "e", Volume: volume(fs)}},
		{"shadow path", provider.Request{SetID: "e", Volume: volume(fs), Paths: []string{filepath.Join(fs.Mount, provider.ShadowDir)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sh, err := p.Create(t.Context(), tc.req); err == nil {
				t.Errorf("Create(%+v) = %+v, nil; want error", tc.req, sh)
			}
			if _, err := os.Lstat(filepath.Join(fs.Mount, provider.ShadowDir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after failed Create stat %s: %v, want not exist", provider.ShadowDir, err)
			}
		})
	}

	t.Run("set exists", func(t *testing.T) {
		req := provider.Request{SetID: "dup", Volume: volume(fs), Paths: []string{plain}}
		sh, err := p.Create(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mustRun(t, p.Delete(context.Background(), sh)) })
		if _, err := p.Create(t.Context(), req); err == nil {
			t.Fatal("second Create with the same set id succeeded")
		}
		if _, err := os.Stat(sh.Roots[0].Snapshot); err != nil {
			t.Errorf("failed second Create harmed the first set: %v", err)
		}
	})
}

func TestDeleteRefusesForeignPaths(t *testing.T) {
	fs := testenv.Btrfs(t)
	sub := fs.Subvolume(t, "data")
	sh := provider.Shadow{Provider: "btrfs", SetID: "s", Volume: volume(fs), Roots: []provider.Root{{Source: sub, Snapshot: sub}}}
	if err := New().Delete(t.Context(), sh); err == nil {
		t.Errorf("Delete of a shadow whose snapshot is the live subvolume succeeded")
	}
	if _, err := os.Stat(sub); err != nil {
		t.Errorf("live subvolume: %v", err)
	}
}

func TestRevert(t *testing.T) {
	fs := testenv.Btrfs(t)
	p := New()
	sub := fs.Subvolume(t, "data")
	write(t, filepath.Join(sub, "keep"), "old")
	write(t, filepath.Join(sub, "gone"), "gone")
	mustRun(t, os.Chmod(sub, 0o750))

	sh, err := p.Create(t.Context(), provider.Request{SetID: "r1", Volume: volume(fs), Paths: []string{filepath.Join(sub, "keep")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustRun(t, p.Delete(context.Background(), sh)) })

	write(t, filepath.Join(sub, "keep"), "new")
	mustRun(t, os.Remove(filepath.Join(sub, "gone")))
	write(t, filepath.Join(sub, "added"), "added")

	if err := p.Revert(t.Context(), sh); err != nil {
		t.Fatalf("Revert: %v", err)
	}
	if got := read(t, filepath.Join(sub, "keep")); got != "old" {
		t.Errorf("after Revert keep = %q, want %q", got, "old")
	}
	if got := read(t, filepath.Join(sub, "gone")); got != "gone" {
		t.Errorf("after Revert gone = %q, want %q", got, "gone")
	}
	if _, err := os.Lstat(filepath.Join(sub, "added")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Revert stat added: %v, want not exist", err)
	}
	// The reverted subvolume is live again: writable, same mode, and the
	// old one is gone.
	write(t, filepath.Join(sub, "after"), "writable")
	if fi, err := os.Stat(sub); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("after Revert stat %s = %v, %v; want mode 0750", sub, fi, err)
	}
	entries, err := os.ReadDir(fs.Mount)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "data" && e.Name() != provider.ShadowDir {
			t.Errorf("after Revert %s holds %s", fs.Mount, e.Name())
		}
	}
	// The shadow is still intact and can be deleted.
	if got := read(t, filepath.Join(sh.Roots[0].Snapshot, "keep")); got != "old" {
		t.Errorf("after Revert snapshot keep = %q, want %q", got, "old")
	}
}

func TestRevertMountRoot(t *testing.T) {
	fs := testenv.Btrfs(t)
	p := New()
	write(t, filepath.Join(fs.Mount, "f"), "old")
	sh, err := p.Create(t.Context(), provider.Request{SetID: "r", Volume: volume(fs), Paths: []string{filepath.Join(fs.Mount, "f")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustRun(t, p.Delete(context.Background(), sh)) })
	write(t, filepath.Join(fs.Mount, "f"), "new")
	err = p.Revert(t.Context(), sh)
	if err == nil {
		t.Fatal("Revert of the mounted root subvolume succeeded")
	}
	t.Logf("Revert: %v", err)
	if got := read(t, filepath.Join(fs.Mount, "f")); got != "new" {
		t.Errorf("after refused Revert f = %q, want %q untouched", got, "new")
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	mustRun(t, os.WriteFile(path, []byte(content), 0o644))
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

func mustRun(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRevertNested(t *testing.T) {
	fs := testenv.Btrfs(t)
	p := New()
	sub := fs.Subvolume(t, "data")
	write(t, filepath.Join(sub, "f"), "old")
	nested := fs.Subvolume(t, "data/nested")
	write(t, filepath.Join(nested, "n"), "nested")

	sh, err := p.Create(t.Context(), provider.Request{SetID: "r", Volume: volume(fs), Paths: []string{sub}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustRun(t, p.Delete(context.Background(), sh)) })
	write(t, filepath.Join(sub, "f"), "new")

	// The nested subvolume keeps the old one from being deleted: the revert
	// is done, and the error names where the old content is.
	err = p.Revert(t.Context(), sh)
	aside := sub + ".umbra-revert-r"
	if err == nil || !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("Revert with a nested subvolume = %v, want ENOTEMPTY naming %s", err, aside)
	}
	t.Logf("Revert: %v", err)
	if got := read(t, filepath.Join(sub, "f")); got != "old" {
		t.Errorf("after Revert f = %q, want %q", got, "old")
	}
	if got := read(t, filepath.Join(aside, "nested/n")); got != "nested" {
		t.Errorf("old nested subvolume content = %q, want %q", got, "nested")
	}
	mustRun(t, destroy(aside, "nested"))
	mustRun(t, destroy(fs.Mount, filepath.Base(aside)))
}

func TestSetWritable(t *testing.T) {
	fs := testenv.Btrfs(t)
	sub := fs.Subvolume(t, "data")
	mustRun(t, snapshot(sub, fs.Mount, "ro", true))
	file := filepath.Join(fs.Mount, "ro/f")
	if err := os.WriteFile(file, nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to read-only snapshot: %v, want EROFS", err)
	}
	mustRun(t, setWritable(filepath.Join(fs.Mount, "ro")))
	write(t, file, "now writable")
	mustRun(t, destroy(fs.Mount, "ro"))
	if _, err := os.Lstat(filepath.Join(fs.Mount, "ro")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after destroy stat ro: %v, want not exist", err)
	}
}
