package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/umbra-backup/umbra/internal/backend"
)

// ErrInjected is the error of every fault Faulty injects.
var ErrInjected = errors.New("backendtest: injected fault")

// SavePoint says where an injected Save failure happens.
type SavePoint int

const (
	// BeforeStore fails the Save before anything is stored, as if the
	// process died or the connection dropped while sending.
	BeforeStore SavePoint = iota
	// AfterStore stores the file durably and then fails the Save, as if the
	// process died, or the acknowledgement was lost, right after the write.
	AfterStore
)

// Faulty wraps a backend and injects faults, for the crash tests of the
// layers above: a repository must never show a manifest whose data is
// missing, whichever Save fails, and must notice corrupted bytes.
//
// Its zero faults pass every call through; arm them with FailSave and
// CorruptLoad. It is safe for concurrent use, like the backend it wraps:
//
//	fb := &backendtest.Faulty{Backend: be}
//	fb.FailSave(3, backendtest.AfterStore) // the third Save from now
//	_, err := repository.Create(ctx, fb, ...)
type Faulty struct {
	backend.Backend

	mu       sync.Mutex
	saves    int // Saves since FailSave
	failAt   int // 0: none
	failWhen SavePoint
	match    func(backend.Handle) bool
	corrupt  func(backend.Handle) bool
	down     func(backend.Handle) bool
	flaky    int // calls left to fail transiently
	flakyAt  SavePoint
	breaks   int // Loads left whose readers break off
}

var _ backend.Backend = (*Faulty)(nil)

// FailSave makes the nth Save from now (counting from 1, over all handles)
// fail with ErrInjected at point when; later Saves pass through again.
// n <= 0 disarms it.
func (f *Faulty) FailSave(n int, when SavePoint) {
	f.FailSaveOf(n, when, nil)
}

// FailSaveOf is FailSave counting only the Saves of handles for which match
// returns true (all, if match is nil): FailSaveOf(1, AfterStore, isManifest)
// fails the first manifest written.
func (f *Faulty) FailSaveOf(n int, when SavePoint, match func(backend.Handle) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saves, f.failAt, f.failWhen, f.match = 0, max(n, 0), when, match
}

// Down makes every Save of a handle for which match returns true fail
// before storing, until Down(nil): the store is unreachable for those.
func (f *Faulty) Down(match func(backend.Handle) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = match
}

// Flaky makes the next n calls, of any kind, fail with a transient error
// (backend.Transient(ErrInjected)), as a store that answers 503 or drops
// connections for a while; a Save fails at point when.
func (f *Faulty) Flaky(n int, when SavePoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flaky, f.flakyAt = n, when
}

// BreakLoads makes the readers of the next n Loads fail with
// io.ErrUnexpectedEOF halfway through, as a connection reset mid-body.
func (f *Faulty) BreakLoads(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.breaks = n
}

func (f *Faulty) takeFlaky() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.flaky == 0 {
		return false
	}
	f.flaky--
	return true
}

func flakyErr(op string, h backend.Handle) error {
	return backend.Transient(fmt.Errorf("%s %s: %w (transient)", op, h, ErrInjected))
}

// Stat passes through unless Flaky fails it.
func (f *Faulty) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if f.takeFlaky() {
		return backend.FileInfo{}, flakyErr("stat", h)
	}
	return f.Backend.Stat(ctx, h)
}

// Remove passes through unless Flaky fails it (before removing).
func (f *Faulty) Remove(ctx context.Context, h backend.Handle) error {
	if f.takeFlaky() {
		return flakyErr("remove", h)
	}
	return f.Backend.Remove(ctx, h)
}

// List passes through unless Flaky fails it, after the first file.
func (f *Faulty) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	fail := f.takeFlaky()
	n := 0
	err := f.Backend.List(ctx, t, func(fi backend.FileInfo) error {
		if fail && n == 1 {
			return flakyErr("list", backend.Handle{Type: t, Name: fi.Name})
		}
		n++
		return fn(fi)
	})
	if fail && err == nil {
		err = flakyErr("list", backend.Handle{Type: t, Name: "*"})
	}
	return err
}

// CorruptLoad makes every Load of a handle for which match returns true
// flip the lowest bit of the first byte it returns and of every 4096th byte
// after that, so that whatever range is read is damaged but not its length.
// A nil match turns it off.
func (f *Faulty) CorruptLoad(match func(backend.Handle) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.corrupt = match
}

// Save passes through to the wrapped backend unless FailSave or Flaky
// armed this one.
func (f *Faulty) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) error {
	if f.takeFlaky() {
		f.mu.Lock()
		when := f.flakyAt
		f.mu.Unlock()
		if when == AfterStore {
			if err := f.Backend.Save(ctx, h, size, rd); err != nil {
				return err
			}
		}
		return flakyErr("save", h)
	}
	fail, when := f.countSave(h)
	if fail && when == BeforeStore {
		return fmt.Errorf("save %s: %w before storing", h, ErrInjected)
	}
	if err := f.Backend.Save(ctx, h, size, rd); err != nil {
		return err
	}
	if fail {
		return fmt.Errorf("save %s: %w after storing", h, ErrInjected)
	}
	return nil
}

func (f *Faulty) countSave(h backend.Handle) (bool, SavePoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil && f.down(h) {
		return true, BeforeStore
	}
	if f.failAt == 0 || (f.match != nil && !f.match(h)) {
		return false, 0
	}
	f.saves++
	if f.saves != f.failAt {
		return false, 0
	}
	f.failAt = 0
	return true, f.failWhen
}

// Load passes through to the wrapped backend, corrupting what it returns if
// CorruptLoad asks for it.
func (f *Faulty) Load(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	if f.takeFlaky() {
		return nil, flakyErr("load", h)
	}
	rc, err := f.Backend.Load(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	corrupt := f.corrupt != nil && f.corrupt(h)
	breaks := f.breaks > 0
	if breaks {
		f.breaks--
	}
	f.mu.Unlock()
	if breaks {
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		return io.NopCloser(io.MultiReader(bytes.NewReader(data[:len(data)/2]), failingReader{})), nil
	}
	if !corrupt {
		return rc, nil
	}
	return &corrupter{ReadCloser: rc}, nil
}

// corrupter flips a bit in every 4096th byte, starting with the first.
type corrupter struct {
	io.ReadCloser
	off int64 // bytes returned so far
}

func (c *corrupter) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	for i := range n {
		if (c.off+int64(i))%4096 == 0 {
			p[i] ^= 1
		}
	}
	c.off += int64(n)
	return n, err
}

// failingReader fails as a connection reset mid-body does.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
