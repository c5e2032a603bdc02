// Package backendtest checks that a backend.Backend keeps the contract, and
// injects faults into one for the crash tests of the layers above.
//
// An implementation's test runs the suite in a few lines:
//
//	func TestBackend(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Backend {
//			be, err := local.Create(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			return be
//		})
//	}
package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Run checks the contract of backend.Backend. open returns a new, empty
// backend for each subtest; Run closes it when the subtest ends.
//
// Beyond the contract's words, Run holds every backend to this reading of
// them, which the implementations in this module follow:
//   - Save fails, and stores nothing, if rd yields fewer or more than size
//     bytes, fails, or ctx is done.
//   - A Load range that ends past the end of the file fails with an error
//     wrapping io.ErrUnexpectedEOF, from Load or from reading; an offset
//     equal to the size with length 0 reads nothing.
//   - A failed Save of an existing lock leaves the old lock as it was.
//   - The TypeConfig file is named "config"; other names are invalid.
func Run(t *testing.T, open func(t *testing.T) backend.Backend) {
	s := suite{open: open}
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, backend.Backend)
	}{
		{"Location", s.location},
		{"SaveLoad", s.saveLoad},
		{"LoadRange", s.loadRange},
		{"SaveExisting", s.saveExisting},
		{"SaveFailing", s.saveFailing},
		{"SaveFailingKeepsLock", s.saveFailingKeepsLock},
		{"Missing", s.missing},
		{"Remove", s.remove},
		{"List", s.list},
		{"ListStops", s.listStops},
		{"Concurrent", s.concurrent},
		{"ConcurrentSameName", s.concurrentSameName},
		{"InvalidHandles", s.invalidHandles},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, s.backend(t))
		})
	}
}

type suite struct {
	open func(t *testing.T) backend.Backend
}

func (s suite) backend(t *testing.T) backend.Backend {
	t.Helper()
	be := s.open(t)
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Location(), err)
		}
	})
	return be
}

// data returns n reproducible pseudo-random bytes.
func data(seed uint64, n int) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b) // never fails
	return b
}

// name returns a valid file name, like the hex ids the repository uses.
func name(i int) string { return fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15) }

func save(t *testing.T, be backend.Backend, h backend.Handle, b []byte) {
	t.Helper()
	if err := be.Save(t.Context(), h, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("save %s (%d bytes): %v", h, len(b), err)
	}
}

// load reads h from offset for length bytes, returning an error from Load or
// from reading.
func load(t *testing.T, be backend.Backend, h backend.Handle, offset, length int64) ([]byte, error) {
	t.Helper()
	rd, err := be.Load(t.Context(), h, offset, length)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rd)
	if cerr := rd.Close(); err == nil && cerr != nil {
		t.Errorf("close reader of %s: %v", h, cerr)
	}
	return b, err
}

func mustLoad(t *testing.T, be backend.Backend, h backend.Handle) []byte {
	t.Helper()
	b, err := load(t, be, h, 0, 0)
	if err != nil {
		t.Fatalf("load %s: %v", h, err)
	}
	return b
}

// absent checks that h is gone from Stat and List.
func absent(t *testing.T, be backend.Backend, h backend.Handle) {
	t.Helper()
	if fi, err := be.Stat(t.Context(), h); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s: got %+v, %v; want an error wrapping fs.ErrNotExist", h, fi, err)
	}
	if files := list(t, be, h.Type); slices.ContainsFunc(files, func(fi backend.FileInfo) bool { return fi.Name == h.Name }) {
		t.Errorf("list %s: got %v, want no %s", h.Type, files, h.Name)
	}
}

func list(t *testing.T, be backend.Backend, typ backend.Type) []backend.FileInfo {
	t.Helper()
	var files []backend.FileInfo
	err := be.List(t.Context(), typ, func(fi backend.FileInfo) error {
		files = append(files, fi)
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", typ, err)
	}
	slices.SortFunc(files, func(a, b backend.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return files
}

func (suite) location(t *testing.T, be backend.Backend) {
	if be.Location() == "" {
		t.Errorf("Location: got \"\", want where the files are")
	}
}

func (suite) saveLoad(t *testing.T, be backend.Backend) {
	for i, size := range []int{0, 1, 5 << 20} {
		h := backend.Handle{Type: backend.TypePack, Name: name(i)}
		want := data(uint64(i), size)
		save(t, be, h, want)
		if got := mustLoad(t, be, h); !bytes.Equal(got, want) {
			t.Errorf("load %s: got %d bytes, want the %d saved (equal length: %v)", h, len(got), len(want), len(got) == len(want))
		}
		fi, err := be.Stat(t.Context(), h)
		if err != nil {
			t.Fatalf("stat %s: %v", h, err)
		}
		if fi.Handle != h || fi.Size != int64(size) || fi.ModTime.IsZero() {
			t.Errorf("stat %s: got %+v, want the handle, size %d and a modification time", h, fi, size)
		}
	}
}

func (suite) loadRange(t *testing.T, be backend.Backend) {
	const size = 1000
	h := backend.Handle{Type: backend.TypePack, Name: name(1)}
	content := data(1, size)
	save(t, be, h, content)
	for _, tc := range []struct {
		offset, length int64
		short          bool // the range ends past the end of the file
	}{
		{offset: 0, length: 0},
		{offset: 0, length: size},
		{offset: 0, length: 1},
		{offset: 17, length: 0},
		{offset: 17, length: 500},
		{offset: size - 1, length: 1},
		{offset: size - 1, length: 0},
		{offset: size, length: 0},
		{offset: size, length: 1, short: true},
		{offset: size - 10, length: 11, short: true},
		{offset: 0, length: size + 1, short: true},
		{offset: size + 1, length: 0, short: true},
		{offset: size + 100, length: 5, short: true},
	} {
		t.Run(fmt.Sprintf("%d+%d", tc.offset, tc.length), func(t *testing.T) {
			got, err := load(t, be, h, tc.offset, tc.length)
			if tc.short {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("load %s offset %d length %d of %d bytes: got %d bytes, error %v; want an error wrapping io.ErrUnexpectedEOF",
						h, tc.offset, tc.length, size, len(got), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("load %s offset %d length %d: %v", h, tc.offset, tc.length, err)
			}
			end := size
			if tc.length > 0 {
				end = int(tc.offset + tc.length)
			}
			if want := content[tc.offset:end]; !bytes.Equal(got, want) {
				t.Errorf("load %s offset %d length %d: got %d bytes, want bytes %d to %d", h, tc.offset, tc.length, len(got), tc.offset, end)
			}
		})
	}
	for _, r := range [][2]int64{{-1, 0}, {0, -1}} {
		if _, err := load(t, be, h, r[0], r[1]); err == nil {
			t.Errorf("load %s offset %d length %d: got no error, want one", h, r[0], r[1])
		}
	}
}

// handles returns one valid handle of every type.
func handles() []backend.Handle {
	var hs []backend.Handle
	for _, typ := range backend.Types {
		n := "config"
		if typ != backend.TypeConfig {
			n = name(len(hs) + 100)
		}
		hs = append(hs, backend.Handle{Type: typ, Name: n})
	}
	return hs
}

func (suite) saveExisting(t *testing.T, be backend.Backend) {
	for i, h := range handles() {
		first, second := data(uint64(2*i), 100), data(uint64(2*i+1), 50)
		save(t, be, h, first)
		err := be.Save(t.Context(), h, int64(len(second)), bytes.NewReader(second))
		want := first
		if h.Type == backend.TypeLock {
			if err != nil {
				t.Errorf("save existing lock %s: %v; want it replaced", h, err)
			}
			want = second
		} else if !errors.Is(err, fs.ErrExist) {
			t.Errorf("save existing %s: got %v, want an error wrapping fs.ErrExist", h, err)
		}
		if got := mustLoad(t, be, h); !bytes.Equal(got, want) {
			t.Errorf("load %s after saving it twice: got %d bytes, want the %d of the save that counts", h, len(got), len(want))
		}
		if files := list(t, be, h.Type); len(files) != 1 || files[0].Size != int64(len(want)) {
			t.Errorf("list %s after saving %s twice: got %v, want it once, %d bytes", h.Type, h.Name, files, len(want))
		}
	}
}

// errReader fails after giving its bytes.
type errReader struct{ rd io.Reader }

var errRead = errors.New("backendtest: reader failed")

func (r *errReader) Read(p []byte) (int, error) {
	n, err := r.rd.Read(p)
	if err == io.EOF {
		return n, errRead
	}
	return n, err
}

// failingSaves are Saves that must fail and store nothing.
func failingSaves(t *testing.T) []struct {
	name   string
	size   int64
	rd     func() io.Reader
	cancel bool
} {
	b := data(7, 3<<20)
	half := b[:len(b)/2]
	return []struct {
		name   string
		size   int64
		rd     func() io.Reader
		cancel bool
	}{
		{"ReaderFails", int64(len(b)), func() io.Reader { return &errReader{bytes.NewReader(half)} }, false},
		{"ReaderFailsAtOnce", int64(len(b)), func() io.Reader { return &errReader{bytes.NewReader(nil)} }, false},
		{"ReaderShort", int64(len(b)), func() io.Reader { return io.MultiReader(bytes.NewReader(half)) }, false},
		{"ReaderShortSeekable", int64(len(b)), func() io.Reader { return bytes.NewReader(half) }, false},
		{"ReaderLong", int64(len(half)), func() io.Reader { return io.MultiReader(bytes.NewReader(b)) }, false},
		{"ReaderLongSeekable", int64(len(half)), func() io.Reader { return bytes.NewReader(b) }, false},
		{"ReaderEmpty", 1, func() io.Reader { return bytes.NewReader(nil) }, false},
		{"Canceled", int64(len(half)), func() io.Reader { return bytes.NewReader(half) }, true},
		// A file, as packs are built: backends may hand it to the kernel.
		{"FileShort", int64(len(b)), func() io.Reader { return tempFile(t, half) }, false},
		{"FileLong", int64(len(half)), func() io.Reader { return tempFile(t, b) }, false},
		{"FileCanceled", int64(len(half)), func() io.Reader { return tempFile(t, half) }, true},
	}
}

// tempFile returns an unlinked file holding b, at its start, closed when
// the test ends.
func tempFile(t *testing.T, b []byte) *os.File {
	f, err := os.CreateTemp(t.TempDir(), "pack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

func (suite) saveFailing(t *testing.T, be backend.Backend) {
	for i, tc := range failingSaves(t) {
		t.Run(tc.name, func(t *testing.T) {
			for j, h := range handles() {
				if h.Type == backend.TypeConfig {
					continue // one name only; covered by the others
				}
				h.Name = name(1000*i + j)
				ctx := t.Context()
				if tc.cancel {
					c, cancel := context.WithCancel(ctx)
					cancel()
					ctx = c
				}
				if err := be.Save(ctx, h, tc.size, tc.rd()); err == nil {
					t.Errorf("save %s of %d bytes, %s: got no error, want one", h, tc.size, tc.name)
				}
				absent(t, be, h)
			}
		})
	}
	if t.Failed() {
		return
	}
	// Nothing was left that a good Save of the same name trips over.
	h := backend.Handle{Type: backend.TypePack, Name: name(0)}
	save(t, be, h, []byte("after"))
	if got := mustLoad(t, be, h); string(got) != "after" {
		t.Errorf("load %s: got %q, want %q", h, got, "after")
	}
}

func (suite) saveFailingKeepsLock(t *testing.T, be backend.Backend) {
	h := backend.Handle{Type: backend.TypeLock, Name: name(3)}
	old := data(3, 100)
	save(t, be, h, old)
	for _, tc := range failingSaves(t) {
		if tc.cancel {
			continue
		}
		if err := be.Save(t.Context(), h, tc.size, tc.rd()); err == nil {
			t.Errorf("save lock %s, %s: got no error, want one", h, tc.name)
		}
		if got := mustLoad(t, be, h); !bytes.Equal(got, old) {
			t.Errorf("load lock %s after a failed save (%s): got %d bytes, want the old %d", h, tc.name, len(got), len(old))
		}
	}
}

func (suite) missing(t *testing.T, be backend.Backend) {
	for _, h := range handles() {
		if _, err := be.Load(t.Context(), h, 0, 0); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("load missing %s: got %v, want an error wrapping fs.ErrNotExist", h, err)
		}
		if _, err := be.Load(t.Context(), h, 10, 5); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("load range of missing %s: got %v, want an error wrapping fs.ErrNotExist", h, err)
		}
		if fi, err := be.Stat(t.Context(), h); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stat missing %s: got %+v, %v; want an error wrapping fs.ErrNotExist", h, fi, err)
		}
		if err := be.Remove(t.Context(), h); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove missing %s: got %v, want an error wrapping fs.ErrNotExist", h, err)
		}
		if files := list(t, be, h.Type); len(files) != 0 {
			t.Errorf("list %s of an empty backend: got %v, want nothing", h.Type, files)
		}
	}
}

func (suite) remove(t *testing.T, be backend.Backend) {
	for i, h := range handles() {
		save(t, be, h, data(uint64(i), 10))
		if err := be.Remove(t.Context(), h); err != nil {
			t.Fatalf("remove %s: %v", h, err)
		}
		absent(t, be, h)
		if _, err := be.Load(t.Context(), h, 0, 0); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("load removed %s: got %v, want an error wrapping fs.ErrNotExist", h, err)
		}
		if err := be.Remove(t.Context(), h); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove removed %s: got %v, want an error wrapping fs.ErrNotExist", h, err)
		}
		// The name is free again, for every type.
		save(t, be, h, data(uint64(i), 20))
	}
}

func (suite) list(t *testing.T, be backend.Backend) {
	want := map[backend.Type][]backend.FileInfo{}
	n := 0
	for _, typ := range backend.Types {
		count := 3
		switch typ {
		case backend.TypeConfig:
			count = 1
		case backend.TypePack:
			count = 20
		case backend.TypeManifest:
			count = 0 // an empty type among full ones
		}
		for range count {
			h := backend.Handle{Type: typ, Name: name(n)}
			switch {
			case typ == backend.TypeConfig:
				h.Name = "config"
			case n%5 == 1:
				h.Name = fmt.Sprintf("x%d", n) // not hex
			case n%5 == 2:
				h.Name = string(rune('a' + n%26)) // shorter than a fan-out prefix
			}
			b := data(uint64(n), n*7)
			save(t, be, h, b)
			want[typ] = append(want[typ], backend.FileInfo{Handle: h, Size: int64(len(b))})
			n++
		}
	}
	for _, typ := range backend.Types {
		got := list(t, be, typ)
		for i := range got {
			if got[i].ModTime.IsZero() {
				t.Errorf("list %s: %s has no modification time", typ, got[i].Name)
			}
		}
		w := want[typ]
		slices.SortFunc(w, func(a, b backend.FileInfo) int { return strings.Compare(a.Name, b.Name) })
		if diff := cmp.Diff(w, got, cmp.Comparer(func(a, b backend.FileInfo) bool {
			return a.Handle == b.Handle && a.Size == b.Size
		})); diff != "" {
			t.Errorf("list %s: got files -want +got:\n%s", typ, diff)
		}
	}
}

func (suite) listStops(t *testing.T, be backend.Backend) {
	for i := range 5 {
		save(t, be, backend.Handle{Type: backend.TypeIndex, Name: name(i)}, data(uint64(i), 10))
	}
	stop := errors.New("stop")
	calls := 0
	err := be.List(t.Context(), backend.TypeIndex, func(backend.FileInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("list with a function that fails: got %v after %d calls, want the function's error after 1", err, calls)
	}
}

func (suite) concurrent(t *testing.T, be backend.Backend) {
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			h := backend.Handle{Type: backend.TypePack, Name: name(i)}
			b := data(uint64(i), 64<<10+i)
			if err := be.Save(t.Context(), h, int64(len(b)), bytes.NewReader(b)); err != nil {
				errs[i] = err
				return
			}
			rd, err := be.Load(t.Context(), h, 0, 0)
			if err != nil {
				errs[i] = err
				return
			}
			defer rd.Close()
			got, err := io.ReadAll(rd)
			if err != nil {
				errs[i] = err
				return
			}
			if !bytes.Equal(got, b) {
				errs[i] = fmt.Errorf("load %s: got %d bytes, want the %d saved", h, len(got), len(b))
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
	if files := list(t, be, backend.TypePack); len(files) != n {
		t.Errorf("list after %d concurrent saves: got %d files, want %d", n, len(files), n)
	}
}

func (suite) concurrentSameName(t *testing.T, be backend.Backend) {
	const n = 8
	h := backend.Handle{Type: backend.TypeManifest, Name: name(5)}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			b := data(uint64(i), 256<<10)
			errs[i] = be.Save(t.Context(), h, int64(len(b)), bytes.NewReader(b))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Errorf("concurrent saves of %s: saves %d and %d both succeeded, want one", h, winner, i)
		case !errors.Is(err, fs.ErrExist):
			t.Errorf("concurrent save %d of %s: got %v, want success or an error wrapping fs.ErrExist", i, h, err)
		}
	}
	if winner < 0 {
		t.Fatalf("concurrent saves of %s: none succeeded", h)
	}
	if got := mustLoad(t, be, h); !bytes.Equal(got, data(uint64(winner), 256<<10)) {
		t.Errorf("load %s: got content other than the successful save's", h)
	}
}

func (suite) invalidHandles(t *testing.T, be backend.Backend) {
	for _, h := range []backend.Handle{
		{Type: "bogus", Name: name(1)},
		{Type: "", Name: name(1)},
		{Type: backend.TypePack, Name: ""},
		{Type: backend.TypePack, Name: ".hidden"},
		{Type: backend.TypePack, Name: ".tmp-" + name(1)},
		{Type: backend.TypePack, Name: "UPPER"},
		{Type: backend.TypePack, Name: "a/b"},
		{Type: backend.TypeKey, Name: "../" + name(1)},
		{Type: backend.TypeKey, Name: ".."},
		{Type: backend.TypeIndex, Name: strings.Repeat("a", 129)},
		{Type: backend.TypeConfig, Name: "other"},
	} {
		b := []byte("x")
		if err := be.Save(t.Context(), h, 1, bytes.NewReader(b)); err == nil {
			t.Errorf("save invalid %q: got no error, want one", h)
		}
		if _, err := be.Load(t.Context(), h, 0, 0); err == nil {
			t.Errorf("load invalid %q: got no error, want one", h)
		}
		if _, err := be.Stat(t.Context(), h); err == nil {
			t.Errorf("stat invalid %q: got no error, want one", h)
		}
		if err := be.Remove(t.Context(), h); err == nil {
			t.Errorf("remove invalid %q: got no error, want one", h)
		}
	}
	if err := be.List(t.Context(), "bogus", func(backend.FileInfo) error { return nil }); err == nil {
		t.Errorf("list type \"bogus\": got no error, want one")
	}
	for _, typ := range backend.Types {
		if files := list(t, be, typ); len(files) != 0 {
			t.Errorf("list %s after saving only invalid handles: got %v, want nothing", typ, files)
		}
	}
}
