package local

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/backendtest"
)

func TestBackend(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return create(t)
	})
}

func TestBackendOpened(t *testing.T) {
	// A directory without the layout, as Open may be given: Save makes the
	// directories it needs.
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		be, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func create(t *testing.T) *Backend {
	t.Helper()
	be, err := Create(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return be
}

// TestFaulty checks the fault injector here, on a real backend.
func TestFaulty(t *testing.T) {
	t.Run("Conformance", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return &backendtest.Faulty{Backend: create(t)}
		})
	})
	ctx := t.Context()
	for _, tc := range []struct {
		when   backendtest.SavePoint
		stored bool
	}{
		{backendtest.BeforeStore, false},
		{backendtest.AfterStore, true},
	} {
		fb := &backendtest.Faulty{Backend: create(t)}
		fb.FailSave(2, tc.when)
		var errs []error
		for i, n := range []string{"a1", "a2", "a3"} {
			h := backend.Handle{Type: backend.TypeIndex, Name: n}
			errs = append(errs, fb.Save(ctx, h, 1, strings.NewReader("x")))
			_, err := fb.Stat(ctx, h)
			if stored := err == nil; stored != (i != 1 || tc.stored) {
				t.Errorf("point %d: save %d stored %v", tc.when, i+1, stored)
			}
		}
		if errs[0] != nil || !errors.Is(errs[1], backendtest.ErrInjected) || errs[2] != nil {
			t.Errorf("FailSave(2, %d): got errors %v, want only the second to wrap ErrInjected", tc.when, errs)
		}
	}

	fb := &backendtest.Faulty{Backend: create(t)}
	fb.FailSaveOf(1, backendtest.BeforeStore, func(h backend.Handle) bool { return h.Type == backend.TypeManifest })
	if err := fb.Save(ctx, backend.Handle{Type: backend.TypePack, Name: "p1"}, 1, strings.NewReader("x")); err != nil {
		t.Errorf("save pack with a manifest failure armed: %v", err)
	}
	if err := fb.Save(ctx, backend.Handle{Type: backend.TypeManifest, Name: "m1"}, 1, strings.NewReader("x")); !errors.Is(err, backendtest.ErrInjected) {
		t.Errorf("save first manifest: got %v, want ErrInjected", err)
	}

	h := backend.Handle{Type: backend.TypePack, Name: "c1"}
	content := bytes.Repeat([]byte{0xf0}, 10000)
	if err := fb.Save(ctx, h, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	fb.CorruptLoad(func(backend.Handle) bool { return true })
	for _, r := range [][2]int64{{0, 0}, {100, 50}, {9999, 1}} {
		rd, err := fb.Load(ctx, h, r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rd)
		_ = rd.Close()
		want := int(r[1])
		if want == 0 {
			want = len(content) - int(r[0])
		}
		if err != nil || len(got) != want || bytes.Equal(got, content[r[0]:int(r[0])+want]) {
			t.Errorf("corrupted load %d+%d: got %d bytes, %v; want %d damaged bytes", r[0], r[1], len(got), err, want)
		}
	}
}

func TestLayout(t *testing.T) {
	be := create(t)
	ctx := t.Context()
	id := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		h    backend.Handle
		path string
	}{
		{backend.Handle{Type: backend.TypeConfig, Name: "config"}, "config"},
		{backend.Handle{Type: backend.TypeKey, Name: id}, "keys/" + id},
		{backend.Handle{Type: backend.TypePack, Name: id}, "data/ab/" + id},
		{backend.Handle{Type: backend.TypePack, Name: "z"}, "data/z/z"},
		{backend.Handle{Type: backend.TypeIndex, Name: id}, "index/" + id},
		{backend.Handle{Type: backend.TypeManifest, Name: id}, "manifests/" + id},
		{backend.Handle{Type: backend.TypeLock, Name: id}, "locks/" + id},
	} {
		if err := be.Save(ctx, tc.h, 3, strings.NewReader("abc")); err != nil {
			t.Fatalf("save %s: %v", tc.h, err)
		}
		fi, err := os.Stat(filepath.Join(be.Location(), tc.path))
		if err != nil {
			t.Errorf("save %s: %v; want the file at %s", tc.h, err, tc.path)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("save %s: got mode %v, want 0600", tc.h, fi.Mode().Perm())
		}
	}
	entries, err := os.ReadDir(filepath.Join(be.Location(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 257 { // 256 from Create, "z" from the save
		t.Errorf("data/ has %d entries, want 257", len(entries))
	}
	fi, err := os.Stat(filepath.Join(be.Location(), "data", "00"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data/00: got %v, %v; want a directory with mode 0700", fi, err)
	}
}

func TestCreate(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "a", "repo")
	be, err := Create(dir)
	if err != nil {
		t.Fatalf("create in a new directory: %v", err)
	}
	// An empty layout, as an interrupted Create leaves, is taken over.
	if _, err := Create(dir); err != nil {
		t.Errorf("create over an empty layout: %v", err)
	}
	if err := be.Save(ctx, backend.Handle{Type: backend.TypeConfig, Name: "config"}, 1, strings.NewReader("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "repository already exists") {
		t.Errorf("create over a repository: got %v, want an error wrapping fs.ErrExist saying a repository exists", err)
	}

	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "notes.txt"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(other); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "notes.txt") {
		t.Errorf("create in a directory with a file: got %v, want an error wrapping fs.ErrExist naming the file", err)
	}

	pack := t.TempDir()
	if _, err := Create(pack); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pack, "data", "ab", "ab12"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(pack); !errors.Is(err, fs.ErrExist) {
		t.Errorf("create over a layout holding a pack: got %v, want an error wrapping fs.ErrExist", err)
	}
}

func TestOpen(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("open a missing directory: got %v, want an error wrapping fs.ErrNotExist", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("open a file: got %v, want an error saying it is not a directory", err)
	}
	be, err := Open(".")
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(be.Location()) {
		t.Errorf("open \".\": Location %q, want an absolute path", be.Location())
	}
}

// failAfter yields n bytes, then fails.
type failAfter struct {
	n   int
	err error
}

func (r *failAfter) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

// TestSaveCrash checks what a Save that dies half-way leaves on disk: no
// final file, and no temporary file once Save has returned; and that a
// temporary file a real crash left is invisible to List and Stat, removable
// by CleanTemp, and no obstacle to saving the same name.
func TestSaveCrash(t *testing.T) {
	ctx := t.Context()
	be := create(t)
	h := backend.Handle{Type: backend.TypePack, Name: strings.Repeat("cd", 32)}
	if err := be.Save(ctx, h, 1<<20, &failAfter{n: 300 << 10, err: errors.New("disk gone")}); err == nil || !strings.Contains(err.Error(), "disk gone") {
		t.Errorf("save with a failing reader: got %v, want the reader's error", err)
	}
	if left := files(t, be.Location()); len(left) != 0 {
		t.Errorf("after a failed save the repository holds %v, want no files", left)
	}

	// What a crash between write and rename leaves.
	dir := filepath.Join(be.Location(), "data", "cd")
	stale := filepath.Join(dir, tempPrefix+h.Name+"-123456")
	if err := os.WriteFile(stale, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(be.Location(), "index", tempPrefix+"ef-987")
	if err := os.WriteFile(fresh, []byte("in progress"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	for _, typ := range backend.Types {
		err := be.List(ctx, typ, func(fi backend.FileInfo) error {
			t.Errorf("list %s after a crash: got %s, want nothing", typ, fi.Name)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := be.Stat(ctx, h); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s with only a temporary file: got %v, want fs.ErrNotExist", h, err)
	}
	if err := be.Save(ctx, h, 2, strings.NewReader("ok")); err != nil {
		t.Errorf("save %s over a stale temporary file: %v", h, err)
	}

	n, err := be.CleanTemp(time.Hour)
	if err != nil || n != 1 {
		t.Errorf("CleanTemp(1h): got %d, %v; want 1 removed", n, err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file after CleanTemp: %v, want it gone", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary file after CleanTemp: %v, want it kept", err)
	}
	if _, err := be.Stat(ctx, h); err != nil {
		t.Errorf("stat %s after CleanTemp: %v", h, err)
	}
}

// files lists the regular files under dir, relative to it.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRename(t *testing.T) {
	for name, mv := range map[string]func(tmp, final string) error{
		"renameat2":   func(tmp, final string) error { return rename(tmp, final, false) },
		"link+unlink": linkRename,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			tmp, final := filepath.Join(dir, "tmp"), filepath.Join(dir, "final")
			for _, p := range []string{tmp, final} {
				if err := os.WriteFile(p, []byte(p), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := mv(tmp, final); !errors.Is(err, fs.ErrExist) {
				t.Errorf("move over an existing file: got %v, want fs.ErrExist", err)
			}
			if b, _ := os.ReadFile(final); string(b) != final {
				t.Errorf("final after a refused move: got %q, want %q", b, final)
			}
			if err := os.Remove(final); err != nil {
				t.Fatal(err)
			}
			if err := mv(tmp, final); err != nil {
				t.Fatalf("move to a free name: %v", err)
			}
			if b, _ := os.ReadFile(final); string(b) != tmp {
				t.Errorf("final after the move: got %q, want %q", b, tmp)
			}
			if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temporary file after the move: %v, want it gone", err)
			}
		})
	}
}
