package repository

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/umbra-backup/umbra/internal/backend"
)

// ErrNoWAL means the repository holds no archived WAL file of that name.
var ErrNoWAL = errors.New("no such archived WAL file")

// walHandle names an archived WAL file: PostgreSQL's name in lower case
// (segments, .history, .backup and .partial files).
func walHandle(name string) (backend.Handle, error) {
	h := backend.Handle{Type: backend.TypeWAL, Name: strings.ToLower(name)}
	if err := h.Valid(); err != nil || strings.ContainsAny(name, "/\\") {
		return h, fmt.Errorf("%q is not a WAL file name", name)
	}
	return h, nil
}

// SaveWAL archives a WAL file under its name, compressed and sealed with
// its name inside, so a file renamed in the repository does not open as
// another. Archiving the same file twice (PostgreSQL retries after a
// crash) succeeds; different content under a name already taken fails, as
// PostgreSQL asks of an archive_command.
func (r *Repository) SaveWAL(ctx context.Context, name string, data []byte) error {
	h, err := walHandle(name)
	if err != nil {
		return err
	}
	if old, err := r.LoadWAL(ctx, name); err == nil {
		if bytes.Equal(old, data) {
			return nil
		}
		return fmt.Errorf("archived WAL %s exists with other content; not overwritten", name)
	} else if !errors.Is(err, ErrNoWAL) {
		return err
	}
	plain := append([]byte(h.Name+"\x00"), r.enc.EncodeAll(data, nil)...)
	sealed, err := seal(r.key.Encrypt, []byte{flagZstd}, plain)
	if err != nil {
		return err
	}
	err = r.be.Save(ctx, h, int64(len(sealed)), bytes.NewReader(sealed))
	if errors.Is(err, fs.ErrExist) {
		return r.SaveWAL(ctx, name, data) // raced with another push: compare
	}
	return err
}

// LoadWAL returns an archived WAL file.
func (r *Repository) LoadWAL(ctx context.Context, name string) ([]byte, error) {
	h, err := walHandle(name)
	if err != nil {
		return nil, err
	}
	rd, err := r.be.Load(ctx, h, 0, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", name, ErrNoWAL)
	}
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(rd)
	rd.Close()
	if err != nil {
		return nil, err
	}
	if len(data) < 1 {
		return nil, fmt.Errorf("archived WAL %s is damaged", name)
	}
	plain, err := open(r.key.Encrypt, nil, data[1:])
	if err != nil {
		return nil, fmt.Errorf("archived WAL %s: %w", name, err)
	}
	stored, body, ok := bytes.Cut(plain, []byte{0})
	if !ok || string(stored) != h.Name {
		return nil, fmt.Errorf("archived WAL %s holds %q: %w", name, stored, ErrAuth)
	}
	return r.dec.DecodeAll(body, nil)
}

// WALNames lists the archived WAL files (lower case).
func (r *Repository) WALNames(ctx context.Context) ([]string, error) {
	var names []string
	err := r.be.List(ctx, backend.TypeWAL, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	return names, err
}

// RemoveWAL deletes an archived WAL file.
func (r *Repository) RemoveWAL(ctx context.Context, name string) error {
	h, err := walHandle(name)
	if err != nil {
		return err
	}
	return r.be.Remove(ctx, h)
}
