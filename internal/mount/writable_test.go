package mount_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/mount"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestWritableMatchesLocal applies the same random writes, truncations
// (shorter, then longer again: what was cut must read as zeros), renames
// over files, new files and unlinks to a backup's writable view and to a
// local copy of the backed-up tree, reading ranges back as it goes, and
// compares the two trees at the end; the repository gains nothing.
func TestWritableMatchesLocal(t *testing.T) {
	testenv.NeedRoot(t)
	rng := rand.New(rand.NewPCG(1, 2))
	src := t.TempDir()
	for name, size := range map[string]int{"a": 200<<10 + 123, "b": 3<<19 + 7, "empty": 0, "d/c": 5000} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	be := mem.New()
	repo, err := repository.Init(t.Context(), be, "pw", repository.Options{KDF: repository.KDFParams{Time: 1, Memory: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := archive.Run(t.Context(), repo, []archive.Source{{Path: src}}, archive.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	objects := func() int {
		n := 0
		for _, kind := range []backend.Type{backend.TypePack, backend.TypeIndex, backend.TypeManifest, backend.TypeKey} {
			_ = be.List(t.Context(), kind, func(backend.FileInfo) error { n++; return nil })
		}
		return n
	}
	before := objects()

	ref := t.TempDir()
	if err := os.CopyFS(ref, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	mp, upper := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- mount.ServeWritable(ctx, repo, res.Tree, mp, upper, mount.Options{CacheBytes: 8 << 20}, func() { close(ready) })
	}()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-served
	})
	view := filepath.Join(mp, src)
	// A write inside one block of the backup's file, then the block read
	// whole: the rest of the block is still the backup's.
	for _, root := range []string{ref, view} {
		f, err := os.OpenFile(filepath.Join(root, "b"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("0123456789"), 20000); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// Cut short inside a block, then made long again: what was cut reads
	// as zeros, what was kept as the backup's.
	for _, root := range []string{ref, view} {
		if err := os.Truncate(filepath.Join(root, "a"), 1000); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(root, "a"), 100<<10); err != nil {
			t.Fatal(err)
		}
	}
	same := func(name string, off int64) {
		t.Helper()
		a, b := make([]byte, 200), make([]byte, 200)
		fa, _ := os.Open(filepath.Join(ref, name))
		fb, _ := os.Open(filepath.Join(view, name))
		_, _ = fa.ReadAt(a, off)
		_, _ = fb.ReadAt(b, off)
		fa.Close()
		fb.Close()
		if !bytes.Equal(a, b) {
			t.Fatalf("the view reads other bytes of %s at %d than the local copy", name, off)
		}
	}
	same("a", 900)
	same("a", 50<<10)
	for _, off := range []int64{16 << 10, 20000 - 100, 30000} {
		same("b", off)
	}

	names := []string{"a", "b", "empty", "d/c", "new"}
	for step := range 400 {
		name := names[rng.IntN(len(names))]
		both := func(f func(root string) error) {
			t.Helper()
			errRef, errView := f(ref), f(view)
			if (errRef == nil) != (errView == nil) {
				t.Fatalf("step %d on %s: local %v, view %v", step, name, errRef, errView)
			}
		}
		// Renames and unlinks are rare: most steps must meet files whose
		// blocks are still partly the backup's.
		switch op := rng.IntN(40); {
		case op < 16: // write
			off := int64(rng.IntN(2 << 20))
			data := make([]byte, 1+rng.IntN(70<<10))
			for i := range data {
				data[i] = byte(rng.IntN(256))
			}
			both(func(root string) error {
				f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR|os.O_CREATE, 0o644)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = f.WriteAt(data, off)
				return err
			})
		case op < 22: // truncate
			size := int64(rng.IntN(2 << 20))
			both(func(root string) error { return os.Truncate(filepath.Join(root, name), size) })
		case op < 23: // rename over another name
			to := names[rng.IntN(len(names))]
			both(func(root string) error { return os.Rename(filepath.Join(root, name), filepath.Join(root, to)) })
		case op < 24: // unlink
			both(func(root string) error { return os.Remove(filepath.Join(root, name)) })
		default: // read a range
			off, n := int64(rng.IntN(2<<20)), 1+rng.IntN(300<<10)
			var got [2][]byte
			for i, root := range []string{ref, view} {
				f, err := os.Open(filepath.Join(root, name))
				if err != nil {
					continue
				}
				buf := make([]byte, n)
				k, _ := f.ReadAt(buf, off)
				got[i] = buf[:k]
				f.Close()
			}
			if !bytes.Equal(got[0], got[1]) {
				t.Fatalf("step %d: %s at %d: the view reads %d bytes unlike the local copy's %d", step, name, off, len(got[1]), len(got[0]))
			}
		}
	}
	if a, b := treeOf(t, ref), treeOf(t, view); a != b {
		t.Errorf("after the changes the view differs from the local copy:\nlocal %s\nview  %s", a, b)
	}
	if after := objects(); after != before {
		t.Errorf("the repository holds %d objects after writes to the view, %d before", after, before)
	}
}

// treeOf lists each file under root with its size and a digest.
func treeOf(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		lines = append(lines, fmt.Sprintf("%s:%d:%x", rel, fi.Size(), sum(b)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return fmt.Sprint(lines)
}

func sum(b []byte) uint64 {
	var h uint64 = 14695981039346656037
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}
