package mount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/umbra-backup/umbra/internal/repository"
)

// A writable view of one backup (umbra run): the backup's tree as it was,
// which an application may change. Nothing is written to the repository:
// a file's changed blocks go to a sparse file of its own in the upper
// directory, its other blocks are still read from the backup, and the
// names, modes, owners and times live in memory. Unlike a kernel overlay,
// which copies a whole file up when it is opened for writing (a database
// opens every relation file read-write), a first write costs one block.

// cowBlock is the unit in which a file's contents move to the upper file:
// the block size umbra cuts database files in.
const cowBlock = 16 << 10

// cowFS is what every node of a writable view shares.
type cowFS struct {
	f     *filesystem
	upper string
	seq   atomic.Uint64 // names the upper files
}

// cowNode is a file, directory or link of a writable view.
type cowNode struct {
	fs.Inode
	c *cowFS

	mu   sync.RWMutex
	attr fuse.Attr
	src  *repository.Node // as backed up; nil for what the application made

	// A directory's entries are read from the backup at first use.
	loaded bool

	target string // a symlink's

	// A regular file's contents: blocks marked in present are in data,
	// the others are the backup's (up to srcEnd: past it, zeros).
	srcH    *fileHandle
	srcEnd  int64
	data    *os.File
	present []uint64
}

var (
	_ = (fs.NodeLookuper)((*cowNode)(nil))
	_ = (fs.NodeReaddirer)((*cowNode)(nil))
	_ = (fs.NodeGetattrer)((*cowNode)(nil))
	_ = (fs.NodeSetattrer)((*cowNode)(nil))
	_ = (fs.NodeOpener)((*cowNode)(nil))
	_ = (fs.NodeCreater)((*cowNode)(nil))
	_ = (fs.NodeMkdirer)((*cowNode)(nil))
	_ = (fs.NodeUnlinker)((*cowNode)(nil))
	_ = (fs.NodeRmdirer)((*cowNode)(nil))
	_ = (fs.NodeRenamer)((*cowNode)(nil))
	_ = (fs.NodeSymlinker)((*cowNode)(nil))
	_ = (fs.NodeReadlinker)((*cowNode)(nil))
	_ = (fs.NodeStatfser)((*cowNode)(nil))
	_ = (fs.NodeGetxattrer)((*cowNode)(nil))
	_ = (fs.NodeListxattrer)((*cowNode)(nil))
	_ = (fs.NodeFsyncer)((*cowNode)(nil))
	_ = (fs.NodeReader)((*cowNode)(nil))
	_ = (fs.NodeWriter)((*cowNode)(nil))
	_ = (fs.NodeAllocater)((*cowNode)(nil))
)

// WritableRoot is the root of a writable view of the backup whose root
// tree is tree, keeping what changes in the directory upper.
func WritableRoot(ctx context.Context, repo *repository.Repository, tree repository.ID, upper string, opts Options) fs.InodeEmbedder {
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = 256 << 20
	}
	if opts.ReadAhead <= 0 || opts.ReadAhead > opts.CacheBytes/2 {
		opts.ReadAhead = opts.CacheBytes / 2
	}
	f := &filesystem{ctx: ctx, repo: repo, cache: newCache(repo, opts.CacheBytes), opts: opts}
	c := &cowFS{f: f, upper: upper}
	root := &cowNode{c: c, src: &repository.Node{Type: repository.NodeDir, Mode: 0o755, Subtree: &tree}}
	root.attr.Mode = syscall.S_IFDIR | 0o755
	root.attr.Nlink = 2
	return root
}

// newChild makes the node of a backup's tree entry.
func (c *cowFS) newChild(ctx context.Context, parent *fs.Inode, n *repository.Node) *fs.Inode {
	node := &cowNode{c: c, src: n, srcEnd: n.Size}
	attrs(n, &node.attr)
	node.attr.Blocks = node.attr.Size / 512
	if n.Type == repository.NodeSymlink {
		node.target = string(n.Target)
	}
	return parent.NewPersistentInode(ctx, node, fs.StableAttr{Mode: modeOf(n.Type)})
}

// load reads a directory's entries from the backup, once.
func (n *cowNode) load(ctx context.Context) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.loaded || n.src == nil {
		n.loaded = true
		return 0
	}
	if n.src.Subtree != nil && !n.src.Subtree.IsZero() {
		t, err := n.c.f.repo.LoadTree(n.c.f.ctx, *n.src.Subtree)
		if err != nil {
			return errno(err)
		}
		for i := range t.Nodes {
			child := t.Nodes[i]
			n.AddChild(string(child.Name), n.c.newChild(ctx, n.EmbeddedInode(), &child), false)
		}
	}
	n.loaded = true
	return 0
}

func (n *cowNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.load(ctx); e != 0 {
		return nil, e
	}
	ch := n.GetChild(name)
	if ch == nil {
		return nil, syscall.ENOENT
	}
	ch.Operations().(*cowNode).fill(&out.Attr)
	return ch, 0
}

func (n *cowNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if e := n.load(ctx); e != 0 {
		return nil, e
	}
	children := n.Children()
	names := make([]string, 0, len(children))
	for name := range children {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		ch := children[name]
		out = append(out, fuse.DirEntry{Name: name, Mode: ch.Mode(), Ino: ch.StableAttr().Ino})
	}
	return fs.NewListDirStream(out), 0
}

func (n *cowNode) fill(out *fuse.Attr) {
	n.mu.RLock()
	*out = n.attr
	n.mu.RUnlock()
	out.Ino = n.StableAttr().Ino
}

func (n *cowNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	return 0
}

func (n *cowNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	now := time.Now()
	if size, ok := in.GetSize(); ok {
		if e := n.truncate(int64(size)); e != 0 {
			return e
		}
	}
	n.mu.Lock()
	if mode, ok := in.GetMode(); ok {
		n.attr.Mode = n.attr.Mode&syscall.S_IFMT | mode&0o7777
	}
	if uid, ok := in.GetUID(); ok {
		n.attr.Uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		n.attr.Gid = gid
	}
	if t, ok := in.GetMTime(); ok {
		n.attr.Mtime, n.attr.Mtimensec = uint64(t.Unix()), uint32(t.Nanosecond())
	}
	if t, ok := in.GetATime(); ok {
		n.attr.Atime, n.attr.Atimensec = uint64(t.Unix()), uint32(t.Nanosecond())
	}
	setCtime(&n.attr, now)
	n.mu.Unlock()
	n.fill(&out.Attr)
	return 0
}

func setCtime(a *fuse.Attr, t time.Time) {
	a.Ctime, a.Ctimensec = uint64(t.Unix()), uint32(t.Nanosecond())
}

func setMtime(a *fuse.Attr, t time.Time) {
	a.Mtime, a.Mtimensec = uint64(t.Unix()), uint32(t.Nanosecond())
	setCtime(a, t)
}

// caller is the user and group of the process that asked.
func caller(ctx context.Context) (uint32, uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// made is a new node of the application's.
func (n *cowNode) made(ctx context.Context, mode uint32) *cowNode {
	uid, gid := caller(ctx)
	now := time.Now()
	m := &cowNode{c: n.c, loaded: true}
	m.attr.Mode, m.attr.Uid, m.attr.Gid, m.attr.Nlink = mode, uid, gid, 1
	n.mu.RLock()
	if n.attr.Mode&syscall.S_ISGID != 0 {
		m.attr.Gid = n.attr.Gid // as a setgid directory gives it
	}
	n.mu.RUnlock()
	setMtime(&m.attr, now)
	m.attr.Atime, m.attr.Atimensec = m.attr.Mtime, m.attr.Mtimensec
	return m
}

// changed marks a directory's entries changed.
func (n *cowNode) changed() {
	n.mu.Lock()
	setMtime(&n.attr, time.Now())
	n.mu.Unlock()
}

func (n *cowNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if e := n.load(ctx); e != 0 {
		return nil, nil, 0, e
	}
	if n.GetChild(name) != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	m := n.made(ctx, syscall.S_IFREG|mode&0o7777)
	if err := m.ensureData(); err != nil {
		return nil, nil, 0, errno(err)
	}
	ch := n.NewPersistentInode(ctx, m, fs.StableAttr{Mode: syscall.S_IFREG})
	n.changed()
	m.fill(&out.Attr)
	return ch, nil, 0, 0
}

func (n *cowNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.load(ctx); e != 0 {
		return nil, e
	}
	if n.GetChild(name) != nil {
		return nil, syscall.EEXIST
	}
	m := n.made(ctx, syscall.S_IFDIR|mode&0o7777)
	m.attr.Nlink = 2
	ch := n.NewPersistentInode(ctx, m, fs.StableAttr{Mode: syscall.S_IFDIR})
	n.changed()
	m.fill(&out.Attr)
	return ch, 0
}

func (n *cowNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.load(ctx); e != 0 {
		return nil, e
	}
	if n.GetChild(name) != nil {
		return nil, syscall.EEXIST
	}
	m := n.made(ctx, syscall.S_IFLNK|0o777)
	m.target = target
	m.attr.Size = uint64(len(target))
	ch := n.NewPersistentInode(ctx, m, fs.StableAttr{Mode: syscall.S_IFLNK})
	n.changed()
	m.fill(&out.Attr)
	return ch, 0
}

func (n *cowNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(n.target), 0
}

func (n *cowNode) Unlink(ctx context.Context, name string) syscall.Errno {
	if e := n.load(ctx); e != 0 {
		return e
	}
	ch := n.GetChild(name)
	if ch == nil {
		return syscall.ENOENT
	}
	ch.Operations().(*cowNode).drop()
	n.changed()
	return 0
}

// drop frees what a file removed kept in the upper directory (a reader
// that still has it open reads on from the open file).
func (n *cowNode) drop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.data != nil {
		_ = os.Remove(n.data.Name())
	}
}

func (n *cowNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := n.load(ctx); e != 0 {
		return e
	}
	ch := n.GetChild(name)
	if ch == nil {
		return syscall.ENOENT
	}
	d := ch.Operations().(*cowNode)
	if e := d.load(ctx); e != 0 {
		return e
	}
	if len(ch.Children()) > 0 {
		return syscall.ENOTEMPTY
	}
	n.changed()
	return 0
}

func (n *cowNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags&^uint32(1) != 0 { // RENAME_NOREPLACE alone is known here
		return syscall.EINVAL
	}
	to := newParent.(*cowNode)
	if e := n.load(ctx); e != 0 {
		return e
	}
	if e := to.load(ctx); e != 0 {
		return e
	}
	src := n.GetChild(name)
	if src == nil {
		return syscall.ENOENT
	}
	if dst := to.GetChild(newName); dst != nil && dst != src {
		if flags&1 != 0 {
			return syscall.EEXIST
		}
		d := dst.Operations().(*cowNode)
		switch {
		case dst.IsDir() && !src.IsDir():
			return syscall.EISDIR
		case !dst.IsDir() && src.IsDir():
			return syscall.ENOTDIR
		case dst.IsDir():
			if e := d.load(ctx); e != 0 {
				return e
			}
			if len(dst.Children()) > 0 {
				return syscall.ENOTEMPTY
			}
		default:
			d.drop()
		}
	}
	s := src.Operations().(*cowNode)
	s.mu.Lock()
	setCtime(&s.attr, time.Now())
	s.mu.Unlock()
	n.changed()
	if to != n {
		to.changed()
	}
	return 0
}

func (n *cowNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.c.upper, &st); err != nil {
		return errno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

func (n *cowNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.src == nil {
		return 0, syscall.ENODATA
	}
	return getxattr(n.src, attr, dest)
}

func (n *cowNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.src == nil {
		return 0, 0
	}
	return listxattr(n.src, dest)
}

// Open opens a regular file: reads and writes go through the node.
func (n *cowNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.src != nil && n.src.Size > 0 && !n.src.HasContent() {
		return nil, 0, syscall.EIO // not stored: unreadable when backed up
	}
	return nil, 0, n.openSource()
}

// openSource reads the chunk list of the backup's contents, once. Called
// with mu held for writing.
func (n *cowNode) openSource() syscall.Errno {
	if n.srcH != nil || n.src == nil || n.srcEnd == 0 {
		return 0
	}
	h, err := n.c.f.openContent(n.src)
	if err != nil {
		return errno(err)
	}
	n.srcH = h
	return 0
}

// ensureData makes the file's upper file, sparse, as long as the file.
// Called with mu held for writing (or before the node is shared).
func (n *cowNode) ensureData() error {
	if n.data != nil {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(n.c.upper, fmt.Sprintf("%d", n.c.seq.Add(1))), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(n.attr.Size)); err != nil {
		f.Close()
		return err
	}
	n.data = f
	return nil
}

func (n *cowNode) has(b int64) bool {
	i := b / 64
	return i < int64(len(n.present)) && n.present[i]&(1<<(b%64)) != 0
}

func (n *cowNode) mark(b int64) {
	i := b / 64
	for int64(len(n.present)) <= i {
		n.present = append(n.present, 0)
	}
	n.present[i] |= 1 << (b % 64)
}

// fromSource reads the backup's bytes of [off, off+len(dest)) into dest,
// zeros past what is left of them.
func (n *cowNode) fromSource(dest []byte, off int64) syscall.Errno {
	clear(dest)
	if n.srcH == nil || off >= n.srcEnd {
		return 0
	}
	want := dest[:min(int64(len(dest)), n.srcEnd-off)]
	for done := 0; done < len(want); {
		data, e := n.srcH.readAt(want[done:], off+int64(done))
		if e != 0 {
			return e
		}
		if len(data) == 0 {
			break
		}
		copy(want[done:], data)
		done += len(data)
	}
	return 0
}

// fill brings block b into the upper file, from the backup, before part
// of it is written. Called with mu held for writing.
func (n *cowNode) fillBlock(b int64) syscall.Errno {
	if n.has(b) {
		return 0
	}
	if b*cowBlock < n.srcEnd {
		if e := n.openSource(); e != 0 {
			return e
		}
		buf := make([]byte, cowBlock)
		if e := n.fromSource(buf, b*cowBlock); e != 0 {
			return e
		}
		if _, err := n.data.WriteAt(buf[:min(cowBlock, n.srcEnd-b*cowBlock)], b*cowBlock); err != nil {
			return errno(err)
		}
	}
	n.mark(b)
	return 0
}

func (n *cowNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	size := int64(n.attr.Size)
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	for done := int64(0); done < int64(len(dest)); {
		pos := off + done
		b := pos / cowBlock
		// A run of blocks from one side.
		end := (b + 1) * cowBlock
		for end < off+int64(len(dest)) && n.has(end/cowBlock) == n.has(b) {
			end += cowBlock
		}
		part := dest[done:min(int64(len(dest)), end-off)]
		if n.has(b) {
			if k, err := n.data.ReadAt(part, pos); err != nil && !errors.Is(err, io.EOF) {
				return nil, errno(err)
			} else {
				clear(part[k:]) // past the upper file's end: zeros
			}
		} else if e := n.fromSource(part, pos); e != 0 {
			return nil, e
		}
		done += int64(len(part))
	}
	return fuse.ReadResultData(dest), 0
}

func (n *cowNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.ensureData(); err != nil {
		return 0, errno(err)
	}
	end := off + int64(len(data))
	for b := off / cowBlock; b*cowBlock < end; b++ {
		whole := b*cowBlock >= off && (b+1)*cowBlock <= end
		if !whole {
			if e := n.fillBlock(b); e != 0 {
				return 0, e
			}
		}
	}
	if _, err := n.data.WriteAt(data, off); err != nil {
		return 0, errno(err)
	}
	for b := off / cowBlock; b*cowBlock < end; b++ {
		n.mark(b)
	}
	if uint64(end) > n.attr.Size {
		n.attr.Size = uint64(end)
		n.attr.Blocks = (n.attr.Size + 511) / 512
	}
	setMtime(&n.attr, time.Now())
	return uint32(len(data)), 0
}

// truncate sets the file's length: what is cut off the backup's contents
// stays cut, should the file grow again.
func (n *cowNode) truncate(size int64) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return syscall.EINVAL
	}
	if err := n.ensureData(); err != nil {
		return errno(err)
	}
	if size < n.srcEnd {
		// The block the cut falls in keeps its head from the backup.
		if size%cowBlock != 0 {
			if e := n.fillBlock(size / cowBlock); e != 0 {
				return e
			}
		}
		n.srcEnd = size
	}
	if err := n.data.Truncate(size); err != nil {
		return errno(err)
	}
	// Blocks past the end read as zeros from now on.
	for b := (size + cowBlock - 1) / cowBlock; b/64 < int64(len(n.present)); b++ {
		n.present[b/64] &^= 1 << (b % 64)
	}
	n.attr.Size = uint64(size)
	n.attr.Blocks = (n.attr.Size + 511) / 512
	setMtime(&n.attr, time.Now())
	return 0
}

func (n *cowNode) Allocate(ctx context.Context, fh fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	if mode&^uint32(1) != 0 { // FALLOC_FL_KEEP_SIZE alone; callers fall back on writing zeros
		return syscall.EOPNOTSUPP
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.ensureData(); err != nil {
		return errno(err)
	}
	if err := syscall.Fallocate(int(n.data.Fd()), mode, int64(off), int64(size)); err != nil {
		return errno(err)
	}
	if mode == 0 && off+size > n.attr.Size {
		n.attr.Size = off + size
		n.attr.Blocks = (n.attr.Size + 511) / 512
		setMtime(&n.attr, time.Now())
	}
	return 0
}

func (n *cowNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.data == nil {
		return 0
	}
	return errno(n.data.Sync())
}
