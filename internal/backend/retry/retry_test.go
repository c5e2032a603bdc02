package retry_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/backendtest"
	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/backend/retry"
)

var fast = retry.Options{Budget: time.Minute, First: time.Millisecond, Max: 4 * time.Millisecond}

func pack(name string) backend.Handle {
	return backend.Handle{Type: backend.TypePack, Name: strings.Repeat(name, 64)[:64]}
}

func load(t *testing.T, be backend.Backend, h backend.Handle, off, n int64) []byte {
	t.Helper()
	rc, err := be.Load(t.Context(), h, off, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Transient failures, before or after the store kept the file, are ridden
// out; what is stored is whole and the retries are counted.
func TestTransientFailuresAreRetried(t *testing.T) {
	for _, when := range []backendtest.SavePoint{backendtest.BeforeStore, backendtest.AfterStore} {
		fb := &backendtest.Faulty{Backend: mem.New()}
		be := retry.New(fb, fast)
		ctx := t.Context()
		data := bytes.Repeat([]byte("umbra"), 10_000)
		fb.Flaky(3, when)
		h := pack("a")
		if err := be.Save(ctx, h, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatalf("save beside %d transient failures (point %d): %v", 3, when, err)
		}
		fb.Flaky(2, when)
		if got := load(t, be, h, 0, 0); !bytes.Equal(got, data) {
			t.Errorf("load after transient failures: %d bytes, want %d", len(got), len(data))
		}
		// A body that breaks off halfway is resumed where it stopped.
		fb.BreakLoads(2)
		if got := load(t, be, h, 1000, 20_000); !bytes.Equal(got, data[1000:21_000]) {
			t.Errorf("ranged load whose body broke off twice: %d bytes, want 20000 equal", len(got))
		}
		fb.BreakLoads(1)
		if got := load(t, be, h, 0, 0); !bytes.Equal(got, data) {
			t.Errorf("load whose body broke off: %d bytes, want %d equal", len(got), len(data))
		}
		fb.Flaky(1, when)
		if _, err := be.Stat(ctx, h); err != nil {
			t.Error(err)
		}
		for _, name := range []string{"b", "c", "d"} {
			if err := fb.Save(ctx, pack(name), 1, strings.NewReader("x")); err != nil {
				t.Fatal(err)
			}
		}
		fb.Flaky(1, when)
		var listed []string
		if err := be.List(ctx, backend.TypePack, func(fi backend.FileInfo) error {
			listed = append(listed, fi.Name)
			return nil
		}); err != nil || len(listed) != 4 {
			t.Errorf("list that failed partway: %d files (%v), want each of 4 once", len(listed), err)
		}
		fb.Flaky(1, when)
		if err := be.Remove(ctx, h); err != nil {
			t.Error(err)
		}
		if be.Retries() < 9 {
			t.Errorf("%d retries counted, want at least 9", be.Retries())
		}
	}
}

// Permanent failures are returned at once; a store that stays down fails
// the call once the budget is spent, saying so; a reader that cannot be
// replayed is sent once.
func TestWhatIsNotRetried(t *testing.T) {
	fb := &backendtest.Faulty{Backend: mem.New()}
	be := retry.New(fb, fast)
	ctx := t.Context()
	fb.FailSave(1, backendtest.BeforeStore)
	if err := be.Save(ctx, pack("a"), 1, strings.NewReader("x")); !errors.Is(err, backendtest.ErrInjected) || be.Retries() != 0 {
		t.Errorf("permanent failure: %v after %d retries; want it at once", err, be.Retries())
	}
	if _, err := be.Stat(ctx, pack("e")); err == nil || be.Retries() != 0 {
		t.Errorf("stat of a missing file: %v after %d retries", err, be.Retries())
	}

	short := retry.New(fb, retry.Options{Budget: 50 * time.Millisecond, First: time.Millisecond, Max: 5 * time.Millisecond})
	fb.Flaky(1_000_000, backendtest.BeforeStore)
	start := time.Now()
	err := short.Save(ctx, pack("b"), 1, strings.NewReader("x"))
	if !errors.Is(err, backend.ErrTransient) || !strings.Contains(err.Error(), "gave up after") {
		t.Errorf("store down for good: %v; want the transient error and how long it was tried", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("store down for good: gave up after %s with a budget of 50ms", d)
	}

	fb.Flaky(1, backendtest.BeforeStore)
	once := retry.New(fb, fast)
	if err := once.Save(ctx, pack("c"), 1, io.MultiReader(strings.NewReader("x"))); err == nil || once.Retries() != 1 ||
		!strings.Contains(err.Error(), "cannot be sent again") {
		t.Errorf("unseekable reader after a transient failure: %v (%d retries)", err, once.Retries())
	}
	fb.Flaky(0, backendtest.BeforeStore)
	none := retry.New(fb, retry.Options{Budget: -1})
	fb.Flaky(1, backendtest.BeforeStore)
	if err := none.Save(ctx, pack("d"), 1, strings.NewReader("x")); !errors.Is(err, backend.ErrTransient) || none.Retries() != 0 {
		t.Errorf("with retries off: %v (%d retries)", err, none.Retries())
	}
}
