// Package backend defines where a repository's files live: a small contract
// that a local directory and any S3-compatible object store implement.
//
// A backend stores opaque, immutable files named by type and name. It knows
// nothing of the repository format: encryption, packing and indexes happen
// above it. Every method may be called concurrently.
//
// Guarantees every implementation gives:
//   - Save is atomic: a file is either absent or complete under its name;
//     readers never see a partial file, even if the process dies mid-Save.
//     When Save returns nil the file is durable (fsync'd, or acknowledged by
//     the object store).
//   - Saving a name that exists fails with an error wrapping fs.ErrExist,
//     except for TypeLock files, which may be overwritten (lock refresh).
//   - Load, Stat and Remove of a missing file fail with an error wrapping
//     fs.ErrNotExist.
//   - List reports every complete file of a type, in no particular order;
//     files saved or removed during the listing may or may not appear.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
)

// ErrTransient marks a failure that may pass if the call is made again:
// the store answered 5xx or "slow down", or the connection failed or timed
// out. Backends wrap such errors with Transient; the retry layer (package
// retry) tries them again, and nothing else.
var ErrTransient = errors.New("transient store failure")

// Transient marks err as transient, keeping it (errors.Is finds both).
func Transient(err error) error {
	if err == nil || errors.Is(err, ErrTransient) {
		return err
	}
	return transientError{err}
}

type transientError struct{ err error }

func (e transientError) Error() string   { return e.err.Error() }
func (e transientError) Unwrap() []error { return []error{e.err, ErrTransient} }

// Type is a kind of repository file; each lives in its own namespace.
type Type string

// The types of repository files.
const (
	TypeConfig   Type = "config" // the single file "config"
	TypeKey      Type = "keys"
	TypePack     Type = "data"
	TypeIndex    Type = "index"
	TypeManifest Type = "manifests"
	TypeLock     Type = "locks"
	// TypeMark holds prune's marks: packs found unused, deleted once every
	// operation that might still use them has ended.
	TypeMark Type = "marks"
	// TypeWAL holds PostgreSQL's archived WAL, by file name (lower case).
	TypeWAL Type = "wal"
	// TypeVerification holds verification records: a backup's writers
	// brought up in a sandbox and checked (umbra verify), sealed like
	// manifests.
	TypeVerification Type = "verifications"
)

// Types lists every type, for tools that walk a whole repository.
var Types = []Type{TypeConfig, TypeKey, TypePack, TypeIndex, TypeManifest, TypeLock, TypeMark, TypeWAL, TypeVerification}

// Handle names one file.
type Handle struct {
	Type Type
	Name string
}

func (h Handle) String() string { return string(h.Type) + "/" + h.Name }

// Valid reports whether t is a known type.
func (t Type) Valid() error {
	switch t {
	case TypeConfig, TypeKey, TypePack, TypeIndex, TypeManifest, TypeLock, TypeMark, TypeWAL, TypeVerification:
		return nil
	}
	return fmt.Errorf("backend: unknown file type %q", t)
}

// ListConfig is List for TypeConfig, whose only file is "config": fn gets
// it if it exists. stat is the backend's Stat.
func ListConfig(ctx context.Context, stat func(context.Context, Handle) (FileInfo, error), fn func(FileInfo) error) error {
	fi, err := stat(ctx, Handle{Type: TypeConfig, Name: "config"})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", TypeConfig, err)
	}
	return fn(fi)
}

// Valid reports whether h can name a file: a known type and a name of
// lowercase letters, digits, '-' and '.', at most 128 bytes, not starting
// with '.'; the config file is named "config".
func (h Handle) Valid() error {
	if err := h.Type.Valid(); err != nil {
		return err
	}
	if h.Name == "" || len(h.Name) > 128 || strings.HasPrefix(h.Name, ".") ||
		strings.Trim(h.Name, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "" {
		return fmt.Errorf("backend: invalid file name %q", h.Name)
	}
	if h.Type == TypeConfig && h.Name != "config" {
		return fmt.Errorf("backend: invalid config file name %q: the config file is named \"config\"", h.Name)
	}
	return nil
}

// Path is where h lives relative to the repository's root, '/'-separated,
// the same for every backend so that a repository can be copied between a
// directory and a bucket: config, keys/<name>, data/<first two chars>/<name>
// (packs fan out over 256 directories), index/<name>, … h must be valid.
func (h Handle) Path() string {
	switch h.Type {
	case TypeConfig:
		return "config"
	case TypePack:
		return string(h.Type) + "/" + h.Name[:min(2, len(h.Name))] + "/" + h.Name
	}
	return string(h.Type) + "/" + h.Name
}

// FileInfo describes a stored file.
type FileInfo struct {
	Handle
	Size    int64
	ModTime time.Time
}

// Backend stores a repository's files.
type Backend interface {
	// Location describes where the files are, for messages ("/srv/repo",
	// "s3:https://host/bucket/prefix"); it contains no secrets.
	Location() string
	// Save stores the size bytes read from rd as h.
	Save(ctx context.Context, h Handle, size int64, rd io.Reader) error
	// Load returns length bytes of h from offset; length 0 means to the end.
	// The caller closes the reader.
	Load(ctx context.Context, h Handle, offset, length int64) (io.ReadCloser, error)
	// Stat describes h.
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// Remove deletes h.
	Remove(ctx context.Context, h Handle) error
	// List calls fn for every file of type t; an error from fn stops it.
	List(ctx context.Context, t Type, fn func(FileInfo) error) error
	// Close releases connections; the backend is unusable afterwards.
	Close() error
}

// CheckEnd checks that rd has nothing left after size bytes were read from
// it: a caller that gave a wrong size must not get a short or cut file.
func CheckEnd(rd io.Reader, size int64) error {
	var one [1]byte
	for range 100 {
		m, err := rd.Read(one[:])
		if m > 0 {
			return fmt.Errorf("reader gave more than %d bytes", size)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	return fmt.Errorf("read: %w", io.ErrNoProgress)
}
