// Package mem is a backend in memory, for tests of the layers above.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Backend keeps files in a map.
type Backend struct {
	mu    sync.Mutex
	files map[backend.Handle][]byte
	times map[backend.Handle]time.Time
}

var _ backend.Backend = (*Backend)(nil)

// New returns an empty backend.
func New() *Backend {
	return &Backend{files: map[backend.Handle][]byte{}, times: map[backend.Handle]time.Time{}}
}

// Location names it.
func (b *Backend) Location() string { return "mem:" }

// Save stores size bytes from rd, atomically.
func (b *Backend) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) error {
	if err := h.Valid(); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(rd, size+1))
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if int64(len(data)) != size {
		return fmt.Errorf("save %s: read %d bytes, want %d", h, len(data), size)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.files[h]; ok && h.Type != backend.TypeLock {
		return fmt.Errorf("save %s: %w", h, fs.ErrExist)
	}
	b.files[h] = data
	b.times[h] = time.Now()
	return nil
}

// Load returns a section of h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	b.mu.Lock()
	data, ok := b.files[h]
	b.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("load %s: %w", h, fs.ErrNotExist)
	}
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("load %s: invalid range offset %d length %d", h, offset, length)
	}
	if offset > int64(len(data)) || (length > 0 && offset+length > int64(len(data))) {
		return nil, fmt.Errorf("load %s: range %d+%d beyond %d bytes: %w", h, offset, length, len(data), io.ErrUnexpectedEOF)
	}
	end := int64(len(data))
	if length > 0 {
		end = offset + length
	}
	return io.NopCloser(bytes.NewReader(data[offset:end])), nil
}

// Stat describes h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.files[h]
	if !ok {
		return backend.FileInfo{}, fmt.Errorf("stat %s: %w", h, fs.ErrNotExist)
	}
	return backend.FileInfo{Handle: h, Size: int64(len(data)), ModTime: b.times[h]}, nil
}

// Remove deletes h.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.files[h]; !ok {
		return fmt.Errorf("remove %s: %w", h, fs.ErrNotExist)
	}
	delete(b.files, h)
	delete(b.times, h)
	return nil
}

// List calls fn for every file of type t.
func (b *Backend) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	if err := t.Valid(); err != nil {
		return err
	}
	b.mu.Lock()
	var infos []backend.FileInfo
	for h, data := range b.files {
		if h.Type == t {
			infos = append(infos, backend.FileInfo{Handle: h, Size: int64(len(data)), ModTime: b.times[h]})
		}
	}
	b.mu.Unlock()
	for _, fi := range infos {
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Close does nothing.
func (b *Backend) Close() error { return nil }

// Files returns the stored files, for tests that look for leaked plaintext
// or flip bytes (the map is a copy; the bytes are shared).
func (b *Backend) Files() map[backend.Handle][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[backend.Handle][]byte, len(b.files))
	for h, d := range b.files {
		out[h] = d
	}
	return out
}

// Clone returns an independent copy, for tests that replay a crash from
// the same starting state.
func (b *Backend) Clone() *Backend {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := New()
	for h, d := range b.files {
		c.files[h] = d
		c.times[h] = b.times[h]
	}
	return c
}

// Put replaces a file's bytes, for damage tests.
func (b *Backend) Put(h backend.Handle, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[h] = data
}
