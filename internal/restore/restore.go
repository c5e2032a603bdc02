// Package restore brings a backup's file trees back from a repository:
// content byte for byte, holes as holes, and metadata — mode, owner,
// modification times to the nanosecond, symlinks, hard links, devices,
// xattrs and ACLs.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/repository"
)

// Options tune Run.
type Options struct {
	// Include limits the restore to paths matching any pattern (shell
	// patterns on the absolute backed-up path; a match on a directory
	// includes all below it). Empty means everything.
	Include []string
	// Progress, if set, is updated as the restore runs.
	Progress *Progress
}

// Progress counts restored files and bytes.
type Progress struct {
	Files, Bytes atomic.Int64
}

// Stats are what Run restored.
type Stats struct {
	Files int64 `json:"files"`
	Dirs  int64 `json:"dirs"`
	Bytes int64 `json:"bytes"`
}

type restorer struct {
	repo     *repository.Repository
	target   string
	include  []string
	progress *Progress
	isRoot   bool
	// files bounds the files restored at once: with many small files the
	// time goes to creating them and setting their metadata, not to data.
	files chan struct{}

	mu    sync.Mutex
	links map[[2]uint64]string // (device, inode) → first restored path
	stats Stats
	// filesystems holds a directory on each filesystem restored into,
	// to flush them all to disk at the end.
	filesystems map[uint64]string
}

// syncFS flushes the filesystem that holds the open file fd (a variable
// for the test that counts the filesystems flushed).
var syncFS = unix.Syncfs

// Run restores the tree root under target, each node at target + its
// backed-up path. target must not hold files of the same names: restore
// never overwrites.
func Run(ctx context.Context, repo *repository.Repository, root repository.ID, target string, opts Options) (Stats, error) {
	for _, p := range opts.Include {
		if _, err := filepath.Match(p, ""); err != nil {
			return Stats{}, fmt.Errorf("--include %q: %w", p, err)
		}
	}
	// The target stands in for /: open to all, like /, since the
	// directories below it come back with their own modes.
	if err := os.MkdirAll(target, 0o755); err != nil {
		return Stats{}, err
	}
	r := &restorer{repo: repo, target: target, include: opts.Include, progress: opts.Progress,
		isRoot: os.Geteuid() == 0, links: map[[2]uint64]string{}, files: make(chan struct{}, 4),
		filesystems: map[uint64]string{}}
	if r.progress == nil {
		r.progress = &Progress{}
	}
	if err := r.noteFilesystem(target); err != nil {
		return Stats{}, err
	}
	if err := r.restoreTree(ctx, root, "/"); err != nil {
		return r.stats, err
	}
	return r.stats, r.flush()
}

// noteFilesystem remembers dir's filesystem for flush.
func (r *restorer) noteFilesystem(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.filesystems[st.Dev]; !ok {
		r.filesystems[st.Dev] = dir
	}
	return nil
}

// flush makes the restore durable before anyone starts an application on
// it: syncfs on every filesystem restored into writes the files' data, their
// metadata and the directories' entries (one call a filesystem, rather than
// an fsync a file), and reports a failed writeback.
func (r *restorer) flush() error {
	for _, dir := range r.filesystems {
		f, err := os.Open(dir)
		if err != nil {
			return fmt.Errorf("flush the restored files to disk: %w", err)
		}
		err = syncFS(int(f.Fd()))
		f.Close()
		if err != nil {
			return fmt.Errorf("flush the restored files under %s to disk: %w; the restore is not durable", dir, err)
		}
	}
	return nil
}

// wanted reports whether path is included, and whether anything below it
// might be (so its directory must be walked).
func (r *restorer) wanted(path string) (self, below bool) {
	if len(r.include) == 0 {
		return true, true
	}
	for _, p := range r.include {
		// The path or one of its parents matches.
		for q := path; ; q = filepath.Dir(q) {
			if ok, _ := filepath.Match(p, q); ok {
				return true, true
			}
			if q == "/" {
				break
			}
		}
		// A pattern that could match below path.
		if strings.HasPrefix(p, strings.TrimSuffix(path, "/")+"/") || strings.ContainsAny(p, "*?[") {
			below = true
		}
	}
	return false, below
}

// restoreTree restores a directory's entries. Regular files go to the file
// workers; everything else, and files with hard links (a link needs its
// target to exist), is done in order. It returns once every entry is done,
// so the caller can then set the directory's own times.
func (r *restorer) restoreTree(ctx context.Context, id repository.ID, dir string) error {
	tree, err := r.repo.LoadTree(ctx, id)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for i := range tree.Nodes {
		if err := ctx.Err(); err != nil {
			fail(err)
			break
		}
		n := &tree.Nodes[i]
		path := filepath.Join(dir, string(n.Name))
		self, below := r.wanted(path)
		if !self && !(below && n.Type == repository.NodeDir) {
			continue
		}
		if n.Type == repository.NodeFile && n.Links < 2 {
			r.files <- struct{}{}
			wg.Go(func() {
				defer func() { <-r.files }()
				if err := r.restoreNode(ctx, n, path, self); err != nil {
					fail(err)
				}
			})
			continue
		}
		if err := r.restoreNode(ctx, n, path, self); err != nil {
			fail(err)
			break
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *restorer) restoreNode(ctx context.Context, n *repository.Node, path string, included bool) error {
	dst := filepath.Join(r.target, path)
	err := r.restoreEntry(ctx, n, path, dst, included)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists already; restore never overwrites: choose an empty --target", dst)
	}
	return err
}

func (r *restorer) restoreEntry(ctx context.Context, n *repository.Node, path, dst string, included bool) error {
	switch n.Type {
	case repository.NodeDir:
		created := true
		if err := os.Mkdir(dst, 0o700); errors.Is(err, fs.ErrExist) {
			created = false
		} else if err != nil {
			return err
		}
		r.mu.Lock()
		r.stats.Dirs++
		r.mu.Unlock()
		if err := r.noteFilesystem(dst); err != nil {
			return err
		}
		if n.Subtree != nil {
			if err := r.restoreTree(ctx, *n.Subtree, path); err != nil {
				return err
			}
		}
		if !included && !created {
			// A directory on the way to an included path that was
			// there already (/var/lib in place) keeps its own mode and
			// owner; one this restore made (under a --target) gets the
			// backed-up ones, so the application's user can reach
			// its files as before.
			return nil
		}
	case repository.NodeFile:
		if linked, err := r.hardLink(n, dst); linked || err != nil {
			return err
		}
		if err := r.restoreFile(ctx, n, dst); err != nil {
			return fmt.Errorf("restore %s: %w", path, err)
		}
	case repository.NodeSymlink:
		if err := os.Symlink(string(n.Target), dst); err != nil {
			return err
		}
	case repository.NodeFifo:
		if err := unix.Mkfifo(dst, 0o600); err != nil {
			return &fs.PathError{Op: "mkfifo", Path: dst, Err: err}
		}
	case repository.NodeDev, repository.NodeCharDev:
		mode := uint32(unix.S_IFBLK)
		if n.Type == repository.NodeCharDev {
			mode = unix.S_IFCHR
		}
		if err := unix.Mknod(dst, mode|0o600, int(n.Rdev)); err != nil {
			return &fs.PathError{Op: "mknod", Path: dst, Err: err}
		}
	case repository.NodeSocket:
		return nil // a socket belongs to a running process; nothing to restore
	default:
		return fmt.Errorf("restore %s: unknown node type %q", path, n.Type)
	}
	return r.setMetadata(n, dst)
}

// hardLink links dst to an earlier restored path of the same inode.
func (r *restorer) hardLink(n *repository.Node, dst string) (bool, error) {
	if n.Links < 2 {
		return false, nil
	}
	key := [2]uint64{n.Device, n.Inode}
	r.mu.Lock()
	first, ok := r.links[key]
	if !ok {
		r.links[key] = dst
	}
	r.mu.Unlock()
	if !ok {
		return false, nil
	}
	return true, os.Link(first, dst)
}

// restoreFile writes the content, leaving zero chunks as holes. Chunks are
// loaded in batches by pack, on several goroutines, and written at their
// offsets as they come.
func (r *restorer) restoreFile(ctx context.Context, n *repository.Node, dst string) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// A part at a time (a content list of a large file), so memory stays
	// bounded whatever the file's size.
	var off int64
	err = r.repo.ContentParts(ctx, n, func(part []repository.ID) error {
		var err error
		off, err = r.restorePart(ctx, f, n, part, off)
		return err
	})
	if err == nil && off != n.Size {
		err = fmt.Errorf("content is %d bytes, the backup says %d", off, n.Size)
	}
	if err != nil {
		f.Close()
		return err
	}
	// Truncate makes the trailing holes; writing nothing there keeps them.
	if err := f.Truncate(n.Size); err != nil {
		f.Close()
		return err
	}
	r.mu.Lock()
	r.stats.Files++
	r.stats.Bytes += n.Size
	r.mu.Unlock()
	r.progress.Files.Add(1)
	return f.Close()
}

// restorePart writes the chunks of part, the first at off, and returns the
// offset after them.
func (r *restorer) restorePart(ctx context.Context, f *os.File, n *repository.Node, part []repository.ID, off int64) (int64, error) {
	offsets := map[repository.ID][]int64{} // a chunk may repeat in a file
	var ids []repository.ID
	for _, id := range part {
		length := int64(n.BlockSize)
		if n.BlockSize == 0 {
			l, ok := r.repo.BlobLen(id)
			if !ok {
				return off, fmt.Errorf("chunk %s: %w", id.Short(), repository.ErrBlobMissing)
			}
			length = int64(l)
		}
		length = min(length, n.Size-off)
		if !(id == repository.ZeroChunk && n.BlockSize > 0) {
			if _, ok := offsets[id]; !ok {
				ids = append(ids, id)
			}
			offsets[id] = append(offsets[id], off)
		}
		off += length
	}
	err := r.repo.LoadBlobs(ctx, ids, func(id repository.ID, data []byte) error {
		for _, at := range offsets[id] {
			if err := writeSparse(f, data, at); err != nil {
				return err
			}
		}
		r.progress.Bytes.Add(int64(len(data) * len(offsets[id])))
		return nil
	})
	return off, err
}

// page is the granularity of holes: runs of zeros in whole, aligned pages
// are not written.
const page = 4096

// writeSparse writes data at off, skipping every aligned page of zeros, so
// that a hole in the original (or any run of zeros) is a hole again.
func writeSparse(f *os.File, data []byte, off int64) error {
	start := -1 // start of a run of pages to write
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := f.WriteAt(data[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(data); {
		// Pages are aligned to the file, not to the chunk.
		end := min(len(data), i+page-int((off+int64(i))%page))
		if repository.AllZero(data[i:end]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i = end
	}
	return flush(len(data))
}

// setMetadata applies xattrs, owner, mode and times, in that order:
// chown clears set-id bits, so mode comes after it, and times come last
// because the others change ctime and may change mtime.
func (r *restorer) setMetadata(n *repository.Node, dst string) error {
	for _, x := range n.Xattrs {
		if err := unix.Lsetxattr(dst, string(x.Name), x.Value, 0); err != nil {
			return &fs.PathError{Op: "setxattr " + string(x.Name), Path: dst, Err: err}
		}
	}
	if r.isRoot {
		if err := unix.Lchown(dst, int(n.UID), int(n.GID)); err != nil {
			return &fs.PathError{Op: "chown", Path: dst, Err: err}
		}
	}
	if n.Type != repository.NodeSymlink {
		if err := unix.Chmod(dst, n.Mode); err != nil {
			return &fs.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	// Access time is not kept; it becomes the modification time.
	ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: dst, Err: err}
	}
	return nil
}
