// Package archive reads file trees into a repository: it walks each source
// path, cuts files into chunks, stores them and their metadata as trees,
// and takes unchanged files from a parent backup without reading them.
//
// What it reads (a live path, or a shadow copy standing in for it) is kept
// apart from the path recorded, so a backup of a snapshot restores to the
// place the data lives.
package archive

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/repository"
)

// Source is one path to back up.
type Source struct {
	Path string // absolute path recorded in the backup
	Read string // where to read it now; empty means Path
}

// Options tune Run.
type Options struct {
	// Parent is the root tree of an earlier backup of the same paths:
	// files whose size, mtime, ctime and inode are unchanged take their
	// content from it without being read.
	Parent *repository.ID
	// Workers hashing, compressing and encrypting; zero means GOMAXPROCS.
	Workers int
	// Exclude, if set, leaves out every entry whose recorded path it
	// accepts (a directory with everything below it).
	Exclude func(path string) bool
	// Changing, if set, names recorded paths that may change while read
	// without a warning: a database in backup mode read live, which its
	// WAL makes consistent.
	Changing func(path string) bool
	// ReadFrom, if set, names recorded paths inside a source that are read
	// from elsewhere: a writer's own consistent copy of a file or
	// directory that lies in a directory backed up whole. An empty read
	// leaves the path out.
	ReadFrom func(path string) (read string, ok bool)
	// Progress, if set, is updated as the backup runs.
	Progress *Progress
}

// Progress is updated atomically during Run; read it from any goroutine.
type Progress struct {
	Files, Dirs      atomic.Int64
	Bytes, BytesRead atomic.Int64
	BytesAdded       atomic.Int64
	FilesChanged     atomic.Int64
	CurrentPath      atomic.Pointer[string]
}

// Result is what Run made.
type Result struct {
	Tree     repository.ID
	Stats    repository.Stats
	Warnings []string // files skipped or changed while read
}

type archiver struct {
	repo     *repository.Repository
	jobs     chan job
	progress *Progress
	names    names
	exclude  func(path string) bool
	changing func(path string) bool
	readFrom func(path string) (string, bool)
	files    chan func() // file reads, run by the file readers
	// cdcBuffers are the chunkers' read buffers (2 × the largest chunk),
	// reused across files; buffers (batchSize) carry data to the workers.
	cdcBuffers sync.Pool
	buffers    sync.Pool

	mu       sync.Mutex
	warnings []string
}

// Run backs up sources and returns the root tree. The caller flushes the
// repository and saves the manifest. Files that cannot be read, or change
// while read, are warnings, not errors: the backup goes on.
func Run(ctx context.Context, repo *repository.Repository, sources []Source, opts Options) (Result, error) {
	start := time.Now()
	blobsBefore := repo.BlobsAdded()
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	a := &archiver{
		repo:     repo,
		jobs:     make(chan job, 2*workers),
		progress: opts.Progress,
		names:    names{users: map[uint32]string{}, groups: map[uint32]string{}},
		exclude:  opts.Exclude,
		changing: opts.Changing,
		readFrom: opts.ReadFrom,
		files:    make(chan func()),
	}
	if a.progress == nil {
		a.progress = &Progress{}
	}
	bufSize := 2 * repo.Config().Chunker.MaxSize
	a.cdcBuffers.New = func() any { b := make([]byte, bufSize); return &b }
	a.buffers.New = func() any { b := make([]byte, batchSize); return &b }
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { a.worker(ctx, a.jobs) })
	}
	// Two files read at once keep the workers busy on small files, where
	// opening and stat-ing cost more than hashing.
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for fn := range a.files {
				fn()
			}
		})
	}
	root, err := a.archiveSources(ctx, sources, opts.Parent)
	close(a.files)
	readers.Wait()
	close(a.jobs)
	wg.Wait()
	if err != nil {
		return Result{}, err
	}
	p := a.progress
	return Result{
		Tree: root,
		Stats: repository.Stats{
			Files: p.Files.Load(), Dirs: p.Dirs.Load(), Bytes: p.Bytes.Load(), BytesRead: p.BytesRead.Load(),
			FilesChanged: p.FilesChanged.Load(), BytesAdded: p.BytesAdded.Load(), BlobsAdded: repo.BlobsAdded() - blobsBefore,
			DurationMS: time.Since(start).Milliseconds(),
		},
		Warnings: a.warnings,
	}, nil
}

func (a *archiver) warn(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warnings = append(a.warnings, fmt.Sprintf(format, args...))
}

// archiveSources builds the root tree: each source's absolute path becomes
// nested directories, with the metadata of the live directories on the way.
func (a *archiver) archiveSources(ctx context.Context, sources []Source, parent *repository.ID) (repository.ID, error) {
	type entry struct {
		src  Source
		segs []string
	}
	var entries []*entry
	for _, s := range sources {
		clean := filepath.Clean(s.Path)
		if !filepath.IsAbs(clean) {
			return repository.ID{}, fmt.Errorf("source %q is not an absolute path", s.Path)
		}
		if s.Read == "" {
			s.Read = clean
		}
		s.Path = clean
		entries = append(entries, &entry{src: s, segs: strings.Split(strings.TrimPrefix(clean, "/"), "/")})
	}
	// build makes the tree for the directory at depth, holding the given
	// entries below it.
	var build func(dir string, depth int, group []*entry, parentTree *repository.Tree) (repository.ID, error)
	build = func(dir string, depth int, group []*entry, parentTree *repository.Tree) (repository.ID, error) {
		byName := map[string][]*entry{}
		tree := &repository.Tree{}
		for _, e := range group {
			if e.segs[0] == "" {
				return repository.ID{}, errors.New("backing up / as a whole is not supported yet; list its directories")
			}
			if len(e.segs) == depth+1 {
				// The source itself.
				name := e.segs[depth]
				node, ok, err := a.archivePath(ctx, e.src.Read, e.src.Path, name, parentNode(parentTree, name))
				if err != nil {
					return repository.ID{}, err
				}
				if ok {
					tree.Nodes = append(tree.Nodes, node)
				}
				continue
			}
			byName[e.segs[depth]] = append(byName[e.segs[depth]], e)
		}
		sort.Slice(tree.Nodes, func(i, j int) bool { return tree.Nodes[i].Name < tree.Nodes[j].Name })
		for name, sub := range byName {
			if tree.Find(name) != nil {
				continue // a source contains another: the outer one has it
			}
			path := filepath.Join(dir, name)
			node, err := a.nodeOf(path, name)
			if err == nil && node.Type == repository.NodeSymlink {
				// A link on the way to a source (/var/lib/postgresql ->
				// /srv/pg): recorded as the directory it leads to, or
				// restore would make the link and never enter it.
				node, err = a.nodeOf(path+"/.", name)
			}
			if err != nil {
				return repository.ID{}, fmt.Errorf("source directory %s: %w", path, err)
			}
			id, err := build(path, depth+1, sub, a.parentSubtree(ctx, parentNode(parentTree, name)))
			if err != nil {
				return repository.ID{}, err
			}
			node.Subtree = &id
			tree.Nodes = append(tree.Nodes, node)
			sort.Slice(tree.Nodes, func(i, j int) bool { return tree.Nodes[i].Name < tree.Nodes[j].Name })
		}
		id, _, err := a.repo.SaveTree(ctx, tree)
		return id, err
	}
	var parentTree *repository.Tree
	if parent != nil {
		parentTree = a.loadParent(ctx, *parent)
	}
	return build("/", 0, entries, parentTree)
}

func parentNode(t *repository.Tree, name string) *repository.Node {
	if t == nil {
		return nil
	}
	return t.Find(name)
}

func (a *archiver) parentSubtree(ctx context.Context, n *repository.Node) *repository.Tree {
	if n == nil || n.Type != repository.NodeDir || n.Subtree == nil {
		return nil
	}
	return a.loadParent(ctx, *n.Subtree)
}

// loadParent reads a parent tree; one that cannot be read only costs
// reading the files again.
func (a *archiver) loadParent(ctx context.Context, id repository.ID) *repository.Tree {
	t, err := a.repo.LoadTree(ctx, id)
	if err != nil {
		a.warn("parent tree %s unreadable, reading files again: %v", id.Short(), err)
		return nil
	}
	return t
}

// archivePath stores the file or directory at path as a node named name.
// ok is false when it was skipped with a warning.
func (a *archiver) archivePath(ctx context.Context, path, rec, name string, parent *repository.Node) (repository.Node, bool, error) {
	node, err := a.nodeOf(path, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return node, false, fmt.Errorf("%s does not exist; check the path", path)
		}
		a.warn("%v (skipped)", err)
		return node, false, nil
	}
	switch node.Type {
	case repository.NodeDir:
		id, err := a.archiveDir(ctx, path, rec, parent)
		if err != nil {
			return node, false, err
		}
		node.Subtree = &id
	case repository.NodeFile:
		done := make(chan error, 1)
		a.submitFile(ctx, path, rec, &node, parent, done)
		if err := <-done; err != nil {
			return node, false, err
		}
		if !node.HasContent() && node.Size > 0 {
			return node, false, nil // unreadable: warned
		}
	}
	return node, true, nil
}

// archiveDir stores the directory at path and returns its tree.
func (a *archiver) archiveDir(ctx context.Context, path, rec string, parent *repository.Node) (repository.ID, error) {
	var node repository.Node
	done := make(chan error, 1)
	a.walkDir(ctx, path, rec, parent, &node, done)
	if err := <-done; err != nil {
		return repository.ID{}, err
	}
	return *node.Subtree, nil
}

// walkDir walks the directory at path: it hands its files to the file
// readers and walks its subdirectories, then returns without waiting for
// them. A goroutine waits, stores the directory's tree, sets node.Subtree
// and sends the outcome to done. Waiting here instead stalled the whole
// pipeline at the end of every directory: no file of the next one was
// read until the last chunk of this one was stored.
// path is where the directory is read, rec the path recorded in the backup.
func (a *archiver) walkDir(ctx context.Context, path, rec string, parent *repository.Node, node *repository.Node, done chan<- error) {
	a.progress.Dirs.Add(1)
	parentTree := a.parentSubtree(ctx, parent)
	entries, err := os.ReadDir(path)
	if err != nil {
		a.warn("read directory %s: %v (its entries are skipped)", path, err)
	}
	tree := &repository.Tree{Nodes: make([]repository.Node, 0, len(entries))}
	var pending []chan error
	skip := make([]bool, len(entries))
	var walkErr error
	for i, e := range entries {
		if walkErr = ctx.Err(); walkErr != nil {
			break
		}
		name := e.Name()
		child, childRec := filepath.Join(path, name), filepath.Join(rec, name)
		if a.exclude != nil && a.exclude(childRec) {
			skip[i] = true
			tree.Nodes = append(tree.Nodes, repository.Node{})
			continue
		}
		if a.readFrom != nil {
			if read, ok := a.readFrom(childRec); ok {
				if read == "" {
					skip[i] = true
					tree.Nodes = append(tree.Nodes, repository.Node{})
					continue
				}
				child = read
			}
		}
		n, err := a.nodeOf(child, name)
		if err != nil {
			a.warn("%v (skipped)", err)
			skip[i] = true
			tree.Nodes = append(tree.Nodes, n)
			continue
		}
		// Capacity is len(entries): the pointer below stays valid.
		tree.Nodes = append(tree.Nodes, n)
		slot := &tree.Nodes[len(tree.Nodes)-1]
		switch n.Type {
		case repository.NodeFile:
			d := make(chan error, 1)
			a.submitFile(ctx, child, childRec, slot, parentNode(parentTree, name), d)
			pending = append(pending, d)
		case repository.NodeDir:
			d := make(chan error, 1)
			a.walkDir(ctx, child, childRec, parentNode(parentTree, name), slot, d)
			pending = append(pending, d)
		}
	}
	go func() {
		// Everything submitted is waited for, even after an error, so
		// that nothing still writes to the repository once Run returns.
		errs := []error{walkErr}
		for _, d := range pending {
			errs = append(errs, <-d)
		}
		if err := joinDistinct(errs); err != nil {
			done <- err
			return
		}
		kept := tree.Nodes[:0]
		for i, n := range tree.Nodes {
			if skip[i] || (n.Type == repository.NodeFile && n.Size > 0 && !n.HasContent()) {
				continue
			}
			kept = append(kept, n)
		}
		tree.Nodes = kept
		id, added, err := a.repo.SaveTree(ctx, tree)
		a.progress.BytesAdded.Add(int64(added))
		node.Subtree = &id
		done <- err
	}()
}

// submitFile hands the reading of one file to the file readers; done gets
// nil when node is filled in (or the file skipped with a warning), and an
// error only for failures that end the backup (the repository failing).
func (a *archiver) submitFile(ctx context.Context, path, rec string, node *repository.Node, parent *repository.Node, done chan<- error) {
	a.progress.Files.Add(1)
	a.progress.Bytes.Add(node.Size)
	if unchanged(node, parent) && a.haveContent(parent) {
		node.Content, node.ContentLists, node.BlockSize = parent.Content, parent.ContentLists, parent.BlockSize
		done <- nil
		return
	}
	a.progress.FilesChanged.Add(1)
	quiet := a.changing != nil && a.changing(rec)
	fn := func() { a.readFile(ctx, path, node, quiet, done) }
	select {
	case a.files <- fn:
	case <-ctx.Done():
		done <- ctx.Err()
	}
}

func unchanged(n, parent *repository.Node) bool {
	return parent != nil && parent.Type == repository.NodeFile && parent.Size == n.Size &&
		parent.MTime == n.MTime && parent.CTime == n.CTime && parent.Inode == n.Inode
}

// haveContent checks the parent's chunks (or content lists) are still
// stored (not pruned).
func (a *archiver) haveContent(parent *repository.Node) bool {
	for _, id := range parent.ContentLists {
		if !a.repo.HasBlob(id) {
			return false
		}
	}
	for _, id := range parent.Content {
		if id != repository.ZeroChunk && !a.repo.HasBlob(id) {
			return false
		}
	}
	return true
}

// readFile stores one file's content in node and then sends the outcome
// to done. A file that cannot be read is skipped with a warning; one that
// changes while read is kept as read, with a warning. Only failures that
// end the backup reach done as errors.
//
// The file reader returns as soon as the file is read: waiting for the
// workers to store its last chunks would leave the reader idle, and with
// many small files the whole backup ran on little more than one core.
// quiet files may change while read without a warning (Options.Changing).
func (a *archiver) readFile(ctx context.Context, path string, node *repository.Node, quiet bool, done chan<- error) {
	p := path
	a.progress.CurrentPath.Store(&p)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.Open(path) // O_NOATIME needs ownership
	}
	if err != nil {
		// A file read live while its writer covers it (a table dropped
		// during a PostgreSQL backup) may be gone: not worth a warning.
		if !(quiet && errors.Is(err, fs.ErrNotExist)) {
			a.warn("open %s: %v (skipped)", path, err)
		}
		node.Content = nil
		done <- nil
		return
	}
	blockSize, n, collect, readErr := a.readContent(ctx, f, filepath.Base(path), node.Size)
	var after unix.Stat_t
	changed := !quiet && readErr == nil && unix.Fstat(int(f.Fd()), &after) == nil &&
		(after.Size != node.Size || after.Mtim.Nano() != node.MTime || after.Ctim.Nano() != node.CTime)
	f.Close()
	go func() {
		ids, err := collect()
		done <- a.finishFile(ctx, path, node, ids, blockSize, n, errors.Join(readErr, err), changed)
	}()
}

// finishFile records what readFile stored, or skips the file.
func (a *archiver) finishFile(ctx context.Context, path string, node *repository.Node, ids []repository.ID, blockSize int, n int64, err error, changed bool) error {
	if err != nil {
		var repoErr *repoError
		if ctx.Err() != nil || errors.As(err, &repoErr) {
			return err
		}
		a.warn("read %s: %v (skipped)", path, err)
		node.Content = nil
		return nil
	}
	if changed {
		a.warn("%s changed while it was read; the backup holds a mix of before and after", path)
	}
	// The content is what was read, whatever the size said before.
	node.Size, node.BlockSize = n, blockSize
	added, err := a.repo.SetContent(ctx, node, ids)
	a.progress.BytesAdded.Add(int64(added))
	if err != nil {
		return &repoError{err}
	}
	return nil
}

// joinDistinct joins errs, nils dropped, each message once: a repository
// that fails (a full disk) fails every file being stored at the moment with
// the same error, which must not be printed hundreds of times.
func joinDistinct(errs []error) error {
	var kept []error
	seen := map[string]int{}
	for _, err := range errs {
		if err == nil {
			continue
		}
		msg := err.Error()
		if _, ok := seen[msg]; !ok {
			kept = append(kept, err)
		}
		seen[msg]++
	}
	if len(kept) == 0 {
		return nil
	}
	if len(kept) == 1 {
		if n := seen[kept[0].Error()]; n > 1 {
			return fmt.Errorf("%w (%d times)", kept[0], n)
		}
		return kept[0]
	}
	return errors.Join(kept...)
}
