// Package local stores a repository's files in a directory on a local or
// mounted filesystem.
//
// Layout under the repository directory:
//
//	config                  the single TypeConfig file, named "config"
//	keys/<name>
//	data/<first two chars of name>/<name>
//	index/<name>
//	manifests/<name>
//	locks/<name>
//
// Create makes the five type directories and the 256 hex fan-out directories
// under data; a pack whose name starts with other characters gets its
// directory when it is first saved.
//
// Save writes a temporary file ".tmp-<name>-<random>" in the final directory,
// fsyncs it, renames it into place without replacing an existing file
// (renameat2 RENAME_NOREPLACE, or link and unlink where the filesystem lacks
// it; lock files are replaced), then fsyncs the directory. A crash leaves at
// most such a temporary file, which List never reports and CleanTemp removes.
// Files are created 0600 and directories 0700; in a repository directory
// that its group may read (Share), 0640 and 0750, so that another account
// in that group (PostgreSQL's archive_command) can read it.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/backend"
)

const (
	fileMode = 0o600
	dirMode  = 0o700
	// tempPrefix starts every temporary file's name; the leading '.' keeps
	// it out of the names Handle.Valid accepts, so it never collides with a
	// repository file.
	tempPrefix = ".tmp-"
)

// Backend is a repository in a local directory.
type Backend struct {
	dir string
	// shared: the repository directory is readable by its group, and
	// what is made in it is too.
	shared bool
}

var _ backend.Backend = (*Backend)(nil)

// Open opens the repository directory dir, which must exist. It does not
// check that dir holds a repository: reading the config file does that.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open repository %s: not a directory", abs)
	}
	return &Backend{dir: abs, shared: fi.Mode().Perm()&0o040 != 0}, nil
}

// Create makes dir (and its parents) and the repository layout in it. It
// fails with an error wrapping fs.ErrExist if dir holds anything but an empty
// layout, such as a config file or any other file: a repository is never
// created over existing data.
func Create(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("create repository %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, dirMode); err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	if err := checkEmpty(abs, 0); err != nil {
		return nil, fmt.Errorf("create repository %s: %w", abs, err)
	}
	for _, t := range backend.Types {
		if t == backend.TypeConfig {
			continue
		}
		if err := mkdir(filepath.Join(abs, string(t))); err != nil {
			return nil, fmt.Errorf("create repository: %w", err)
		}
	}
	for i := range 256 {
		if err := mkdir(filepath.Join(abs, string(backend.TypePack), fmt.Sprintf("%02x", i))); err != nil {
			return nil, fmt.Errorf("create repository: %w", err)
		}
	}
	if err := syncDir(filepath.Join(abs, string(backend.TypePack))); err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	// The repository directory's own entry, which MkdirAll may have made.
	for _, d := range []string{abs, filepath.Dir(abs)} {
		if err := syncDir(d); err != nil {
			return nil, fmt.Errorf("create repository: %w", err)
		}
	}
	return &Backend{dir: abs}, nil
}

// checkEmpty fails if dir holds anything but directories (at most two levels
// deep: type and fan-out) with nothing else in them.
func checkEmpty(dir string, depth int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if depth == 0 && e.Name() == "config" {
			return fmt.Errorf("a repository already exists there: %w", fs.ErrExist)
		}
		if !e.IsDir() || depth >= 2 {
			return fmt.Errorf("%s is in the way; a repository is created only in a new or empty directory: %w", path, fs.ErrExist)
		}
		if err := checkEmpty(path, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func mkdir(path string) error {
	err := os.Mkdir(path, dirMode)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// Location returns the repository directory.
func (b *Backend) Location() string { return b.dir }

// path returns where h lives. h must be valid.
func (b *Backend) path(h backend.Handle) string {
	return filepath.Join(b.dir, filepath.FromSlash(h.Path()))
}

// Save stores exactly size bytes from rd as h. If rd yields fewer or more
// bytes, or fails, Save returns an error and leaves nothing behind.
func (b *Backend) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) (err error) {
	if err := h.Valid(); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("save %s: negative size %d", h, size)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	final := b.path(h)
	dir := filepath.Dir(final)
	replace := h.Type == backend.TypeLock
	if !replace {
		// Cheap early answer; the no-replace rename below is what counts.
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("save %s: %w", h, fs.ErrExist)
		}
	}

	f, err := os.CreateTemp(dir, tempPrefix+h.Name+"-*")
	if errors.Is(err, fs.ErrNotExist) {
		// A pack fan-out directory not made by Create, or a repository
		// directory without its layout.
		if err = b.makeParents(dir); err == nil {
			f, err = os.CreateTemp(dir, tempPrefix+h.Name+"-*")
		}
	}
	if err == nil && b.shared {
		if err = f.Chmod(fileMode | 0o040); err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close() // may already be closed; the write error matters
			if rerr := os.Remove(tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, fmt.Errorf("remove temporary file: %w", rerr))
			}
		}
	}()

	if err := write(ctx, f, size, rd); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save %s: fsync: %w", h, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := rename(tmp, final, replace); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("save %s: %w", h, fs.ErrExist)
		}
		return fmt.Errorf("save %s: %w", h, err)
	}
	// From here the file is complete under its name; an error only means
	// its directory entry may not survive a crash, so the file stays.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return nil
}

// makeParents creates dir, a type or fan-out directory of b, and fsyncs the
// directory that gained the entry.
func (b *Backend) makeParents(dir string) error {
	for _, d := range []string{filepath.Dir(dir), dir} {
		if d == b.dir || !strings.HasPrefix(d, b.dir+string(filepath.Separator)) {
			continue
		}
		if err := mkdir(d); err != nil {
			return err
		}
		if b.shared {
			// Not left to the umask; the group comes from the parent's
			// set-group-ID bit (Share).
			if err := os.Chmod(d, dirMode|0o050|fs.ModeSetgid); err != nil {
				return err
			}
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// write copies exactly size bytes from rd to f, failing if rd has fewer or
// more, and stops when ctx is done.
func write(ctx context.Context, f *os.File, size int64, rd io.Reader) error {
	if src, ok := rd.(*os.File); ok {
		return writeFile(ctx, f, size, src)
	}
	n, err := io.CopyN(f, ctxReader{ctx, rd}, size)
	if err == io.EOF {
		return fmt.Errorf("reader gave %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return err
	}
	// The reader must end here: more bytes mean the caller's size is wrong.
	return backend.CheckEnd(rd, size)
}

// writeFile is write from a file (a pack umbra built in a temporary
// file): handed to the kernel unwrapped, so it copies without passing the
// bytes through umbra (copy_file_range), in pieces between which ctx is
// checked.
func writeFile(ctx context.Context, f *os.File, size int64, src *os.File) error {
	const piece = 8 << 20
	for done := int64(0); done < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.CopyN(f, src, min(piece, size-done))
		done += n
		if err == io.EOF {
			return fmt.Errorf("reader gave %d bytes, want %d: %w", done, size, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return err
		}
	}
	return backend.CheckEnd(src, size)
}

// ctxReader stops a copy when its context is done, and tells the reader's
// errors from the file's.
type ctxReader struct {
	ctx context.Context
	rd  io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.rd.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read: %w", err)
	}
	return n, err
}

// rename moves tmp to final, refusing to replace an existing final unless
// replace is set.
func rename(tmp, final string, replace bool) error {
	if replace {
		return os.Rename(tmp, final)
	}
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		// Kernel or filesystem without RENAME_NOREPLACE.
		return linkRename(tmp, final)
	default:
		return &os.LinkError{Op: "rename", Old: tmp, New: final, Err: err}
	}
}

// linkRename moves tmp to final with link and unlink, which refuses an
// existing final as RENAME_NOREPLACE does. A crash between the two leaves
// tmp as a second name of the complete file, for CleanTemp.
func linkRename(tmp, final string) error {
	if err := os.Link(tmp, final); err != nil {
		return err
	}
	return os.Remove(tmp)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// Load returns length bytes of h from offset, or the rest of h if length is
// 0. A range that ends past the end of h fails with an error wrapping
// io.ErrUnexpectedEOF; an offset equal to the size with length 0 gives an
// empty reader.
func (b *Backend) Load(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("load %s: invalid range offset %d length %d", h, offset, length)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	f, err := os.Open(b.path(h))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	size := fi.Size()
	if offset > size || length > size-offset {
		_ = f.Close()
		return nil, fmt.Errorf("load %s: range %d+%d past the end at %d: %w", h, offset, length, size, io.ErrUnexpectedEOF)
	}
	if length == 0 {
		length = size - offset
	}
	return &section{SectionReader: io.NewSectionReader(f, offset, length), f: f}, nil
}

type section struct {
	*io.SectionReader
	f *os.File
}

func (s *section) Close() error { return s.f.Close() }

// Stat describes h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	return backend.FileInfo{Handle: h, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Remove deletes h.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := os.Remove(b.path(h)); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	return nil
}

// List calls fn for every file of type t, skipping temporary files and
// anything whose name a Handle could not have.
func (b *Backend) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	if err := t.Valid(); err != nil {
		return err
	}
	if t == backend.TypeConfig {
		return backend.ListConfig(ctx, b.Stat, fn)
	}
	dir := filepath.Join(b.dir, string(t))
	if t != backend.TypePack {
		return listDir(ctx, t, dir, fn)
	}
	subs, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	for _, sub := range subs {
		if !sub.IsDir() || strings.HasPrefix(sub.Name(), ".") {
			continue
		}
		if err := listDir(ctx, t, filepath.Join(dir, sub.Name()), fn); err != nil {
			return err
		}
	}
	return nil
}

func listDir(ctx context.Context, t backend.Type, dir string, fn func(backend.FileInfo) error) error {
	entries, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
		h := backend.Handle{Type: t, Name: e.Name()}
		if !e.Type().IsRegular() || h.Valid() != nil {
			continue // temporary files, strays
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
		if err := fn(backend.FileInfo{Handle: h, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// readDir reads dir; a missing directory has no files.
func readDir(dir string) ([]os.DirEntry, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return entries, err
}

// CleanTemp removes temporary files that Saves interrupted by a crash left
// behind, if they were last modified more than olderThan ago, and returns how
// many it removed. A Save in progress keeps writing its file, so an age well
// above the longest Save (an hour, say) never removes a live one.
func (b *Backend) CleanTemp(olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	dirs := []string{b.dir}
	for _, t := range backend.Types {
		if t == backend.TypeConfig {
			continue
		}
		dir := filepath.Join(b.dir, string(t))
		dirs = append(dirs, dir)
		if t == backend.TypePack {
			subs, err := readDir(dir)
			if err != nil {
				return 0, fmt.Errorf("clean temporary files: %w", err)
			}
			for _, sub := range subs {
				if sub.IsDir() {
					dirs = append(dirs, filepath.Join(dir, sub.Name()))
				}
			}
		}
	}
	removed := 0
	var errs []error
	for _, dir := range dirs {
		entries, err := readDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !fi.ModTime().Before(cutoff) {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			removed++
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("clean temporary files: %w", err)
	}
	return removed, nil
}

// Close does nothing: a directory holds no connections.
func (b *Backend) Close() error { return nil }
