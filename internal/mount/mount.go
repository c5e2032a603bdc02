// Package mount serves a repository as a read-only file system (FUSE): every
// backup by id, by host and time, and the latest, each tree with its files,
// links, modes, owners and times; file contents are read lazily by range,
// through a bounded cache, with the chunks ahead of a sequential reader
// loaded together.
package mount

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/umbra-backup/umbra/internal/repository"
)

// Options tune a mount.
type Options struct {
	CacheBytes int64 // blobs kept in memory; default 256 MiB
	// ReadAhead is how far ahead of a reader chunks are loaded, in bytes;
	// default half the cache.
	ReadAhead int64
	// Refresh is how old the list of backups may be before a directory
	// listing reads it again; default 10 s.
	Refresh time.Duration
}

// filesystem is what every node of a mount shares.
type filesystem struct {
	// ctx is the mount's (the repository lock's): reads are not cut short
	// by a reader's interrupt (a signal to the reading process would
	// otherwise fail a lookup with EINTR, which few callers retry), only by
	// the mount's end.
	ctx   context.Context
	repo  *repository.Repository
	cache *cache
	opts  Options

	mu       sync.Mutex
	backups  []repository.ManifestEntry
	listedAt time.Time

	zeroOnce sync.Once
	zero     repository.ID // the id of the chunker's longest chunk of zeros
}

func (f *filesystem) zeroChunk() repository.ID {
	f.zeroOnce.Do(func() {
		f.zero = f.repo.BlobID(make([]byte, f.repo.Config().Chunker.MaxSize))
	})
	return f.zero
}

// Root is the root node of a mount of repo; give it to fs.Mount.
func Root(ctx context.Context, repo *repository.Repository, opts Options) fs.InodeEmbedder {
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = 256 << 20
	}
	if opts.ReadAhead <= 0 || opts.ReadAhead > opts.CacheBytes/2 {
		opts.ReadAhead = opts.CacheBytes / 2
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 10 * time.Second
	}
	f := &filesystem{ctx: ctx, repo: repo, cache: newCache(repo, opts.CacheBytes), opts: opts}
	return &rootNode{f: f}
}

// list returns the backups, read again when older than Refresh.
func (f *filesystem) list(ctx context.Context) ([]repository.ManifestEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.backups != nil && time.Since(f.listedAt) < f.opts.Refresh {
		return f.backups, nil
	}
	all, err := f.repo.Manifests(f.ctx)
	if err != nil {
		return nil, err
	}
	f.backups, f.listedAt = all, time.Now()
	return all, nil
}

// errno maps an error to what the reader sees.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errors.Is(err, context.Canceled) {
		return syscall.EINTR
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e // ENOSPC from a writable view's upper directory
	}
	return syscall.EIO
}

// rootNode holds ids/, hosts/ and latest.
type rootNode struct {
	fs.Inode
	f *filesystem
}

var _ = (fs.NodeOnAdder)((*rootNode)(nil))

func (r *rootNode) OnAdd(ctx context.Context) {
	ids := r.NewPersistentInode(ctx, &idsDir{f: r.f}, fs.StableAttr{Mode: fuse.S_IFDIR})
	r.AddChild("ids", ids, false)
	hosts := r.NewPersistentInode(ctx, &hostsDir{f: r.f}, fs.StableAttr{Mode: fuse.S_IFDIR})
	r.AddChild("hosts", hosts, false)
	latest := r.NewPersistentInode(ctx, &latestLink{f: r.f}, fs.StableAttr{Mode: fuse.S_IFLNK})
	r.AddChild("latest", latest, false)
}

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFDIR | 0o555
	return 0
}

// latestLink points at the newest backup under ids/.
type latestLink struct {
	fs.Inode
	f *filesystem
}

func (l *latestLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	all, err := l.f.list(ctx)
	if err != nil {
		return nil, errno(err)
	}
	if len(all) == 0 {
		return nil, syscall.ENOENT
	}
	return []byte("ids/" + all[len(all)-1].ID.Short()), 0
}

// madeDir is a directory the mount makes up, not one of a backup.
type madeDir struct{ fs.Inode }

func (*madeDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Nlink = fuse.S_IFDIR|0o555, 2
	return 0
}

// idsDir lists every backup by its short id.
type idsDir struct {
	madeDir
	f *filesystem
}

func (d *idsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	all, err := d.f.list(ctx)
	if err != nil {
		return nil, errno(err)
	}
	var out []fuse.DirEntry
	for _, e := range all {
		out = append(out, fuse.DirEntry{Name: e.ID.Short(), Mode: fuse.S_IFDIR})
	}
	return fs.NewListDirStream(out), 0
}

func (d *idsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	all, err := d.f.list(ctx)
	if err != nil {
		return nil, errno(err)
	}
	for _, e := range all {
		if e.ID.Short() == name {
			n := &dirNode{f: d.f, node: repository.Node{Type: repository.NodeDir, Mode: 0o555, MTime: e.Time.UnixNano()}, tree: e.Tree}
			n.fill(&out.Attr)
			return d.NewInode(ctx, n, fs.StableAttr{Mode: fuse.S_IFDIR}), 0
		}
	}
	return nil, syscall.ENOENT
}

// hostsDir lists hosts; each holds its backups by time, as links into ids/.
type hostsDir struct {
	madeDir
	f *filesystem
}

func (d *hostsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	all, err := d.f.list(ctx)
	if err != nil {
		return nil, errno(err)
	}
	var hosts []string
	for _, e := range all {
		if !slices.Contains(hosts, e.Host) {
			hosts = append(hosts, e.Host)
		}
	}
	sort.Strings(hosts)
	var out []fuse.DirEntry
	for _, h := range hosts {
		out = append(out, fuse.DirEntry{Name: h, Mode: fuse.S_IFDIR})
	}
	return fs.NewListDirStream(out), 0
}

func (d *hostsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	all, err := d.f.list(ctx)
	if err != nil {
		return nil, errno(err)
	}
	if !slices.ContainsFunc(all, func(e repository.ManifestEntry) bool { return e.Host == name }) {
		return nil, syscall.ENOENT
	}
	out.Mode = fuse.S_IFDIR | 0o555
	return d.NewInode(ctx, &hostDir{f: d.f, host: name}, fs.StableAttr{Mode: fuse.S_IFDIR}), 0
}

// timeName names a backup in hosts/HOST/ by its time, in local time.
func timeName(e repository.ManifestEntry) string {
	return e.Time.Local().Format("2006-01-02T15:04:05")
}

type hostDir struct {
	madeDir
	f    *filesystem
	host string
}

func (d *hostDir) entries(ctx context.Context) (map[string]string, []string, error) {
	all, err := d.f.list(ctx)
	if err != nil {
		return nil, nil, err
	}
	links := map[string]string{}
	var names []string
	for _, e := range all {
		if e.Host != d.host {
			continue
		}
		name := timeName(e)
		if _, taken := links[name]; taken {
			name += "-" + e.ID.Short() // two backups in one second
		}
		links[name] = "../../ids/" + e.ID.Short()
		names = append(names, name)
	}
	return links, names, nil
}

func (d *hostDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	_, names, err := d.entries(ctx)
	if err != nil {
		return nil, errno(err)
	}
	var out []fuse.DirEntry
	for _, n := range names {
		out = append(out, fuse.DirEntry{Name: n, Mode: fuse.S_IFLNK})
	}
	return fs.NewListDirStream(out), 0
}

func (d *hostDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	links, _, err := d.entries(ctx)
	if err != nil {
		return nil, errno(err)
	}
	target, ok := links[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	out.Mode = fuse.S_IFLNK | 0o777
	out.Size = uint64(len(target))
	return d.NewInode(ctx, &fs.MemSymlink{Data: []byte(target)}, fs.StableAttr{Mode: fuse.S_IFLNK}), 0
}

// modeOf is a node's file type bits.
func modeOf(t repository.NodeType) uint32 {
	switch t {
	case repository.NodeDir:
		return fuse.S_IFDIR
	case repository.NodeSymlink:
		return fuse.S_IFLNK
	case repository.NodeDev:
		return syscall.S_IFBLK
	case repository.NodeCharDev:
		return syscall.S_IFCHR
	case repository.NodeFifo:
		return syscall.S_IFIFO
	case repository.NodeSocket:
		return syscall.S_IFSOCK
	}
	return fuse.S_IFREG
}

// attrs fills out from a tree node: what it was when backed up.
func attrs(n *repository.Node, out *fuse.Attr) {
	out.Mode = modeOf(n.Type) | n.Mode&0o7777
	out.Uid, out.Gid = n.UID, n.GID
	out.Size = uint64(n.Size)
	if n.Type == repository.NodeSymlink {
		out.Size = uint64(len(n.Target))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Nlink = 1
	if n.Type == repository.NodeDir {
		out.Nlink = 2
	}
	out.Rdev = uint32(n.Rdev)
	sec, nsec := uint64(n.MTime/1e9), uint32(n.MTime%1e9)
	out.Mtime, out.Mtimensec = sec, nsec
	out.Atime, out.Atimensec = sec, nsec
	c := n.CTime
	if c == 0 {
		c = n.MTime
	}
	out.Ctime, out.Ctimensec = uint64(c/1e9), uint32(c%1e9)
}

// newNode is the inode of a tree entry.
func (f *filesystem) newNode(ctx context.Context, parent *fs.Inode, n *repository.Node, out *fuse.Attr) *fs.Inode {
	attrs(n, out)
	var emb fs.InodeEmbedder
	switch n.Type {
	case repository.NodeDir:
		var tree repository.ID
		if n.Subtree != nil {
			tree = *n.Subtree
		}
		emb = &dirNode{f: f, node: *n, tree: tree}
	case repository.NodeFile:
		fn := &fileNode{f: f, node: *n}
		out.Blocks = fn.blocks(ctx)
		emb = fn
	default:
		emb = &leafNode{node: *n}
	}
	return parent.NewInode(ctx, emb, fs.StableAttr{Mode: modeOf(n.Type), Ino: linkIno(n)})
}

// linkIno gives the names of one hard-linked file one inode number (from
// its device and inode when backed up); 0 lets go-fuse number the rest.
func linkIno(n *repository.Node) uint64 {
	if n.Type == repository.NodeDir || n.Links < 2 || n.Inode == 0 {
		return 0
	}
	h := fnv.New64a()
	_ = binary.Write(h, binary.LittleEndian, [2]uint64{n.Device, n.Inode})
	return h.Sum64() | 1<<63 // apart from go-fuse's own numbers, which count up from 1
}

// dirNode is a directory of a backup.
type dirNode struct {
	fs.Inode
	f    *filesystem
	node repository.Node
	tree repository.ID
}

func (d *dirNode) fill(out *fuse.Attr) { attrs(&d.node, out) }

func (d *dirNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fill(&out.Attr)
	return 0
}

func (d *dirNode) load(ctx context.Context) (*repository.Tree, error) {
	if d.tree.IsZero() {
		return &repository.Tree{}, nil
	}
	return d.f.repo.LoadTree(d.f.ctx, d.tree)
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	t, err := d.load(ctx)
	if err != nil {
		return nil, errno(err)
	}
	out := make([]fuse.DirEntry, 0, len(t.Nodes))
	for _, n := range t.Nodes {
		out = append(out, fuse.DirEntry{Name: string(n.Name), Mode: modeOf(n.Type)})
	}
	return fs.NewListDirStream(out), 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, err := d.load(ctx)
	if err != nil {
		return nil, errno(err)
	}
	i := sort.Search(len(t.Nodes), func(i int) bool { return string(t.Nodes[i].Name) >= name })
	if i == len(t.Nodes) || string(t.Nodes[i].Name) != name {
		return nil, syscall.ENOENT
	}
	return d.f.newNode(ctx, d.EmbeddedInode(), &t.Nodes[i], &out.Attr), 0
}

func (d *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(&d.node, attr, dest)
}

func (d *dirNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(&d.node, dest)
}

// leafNode is a symlink, device, fifo or socket.
type leafNode struct {
	fs.Inode
	node repository.Node
}

func (l *leafNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	attrs(&l.node, &out.Attr)
	return 0
}

func (l *leafNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if l.node.Type != repository.NodeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(l.node.Target), 0
}

func (l *leafNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(&l.node, attr, dest)
}

func (l *leafNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(&l.node, dest)
}

func getxattr(n *repository.Node, attr string, dest []byte) (uint32, syscall.Errno) {
	for _, x := range n.Xattrs {
		if string(x.Name) == attr {
			if len(dest) < len(x.Value) {
				return uint32(len(x.Value)), syscall.ERANGE
			}
			return uint32(copy(dest, x.Value)), 0
		}
	}
	return 0, syscall.ENODATA
}

func listxattr(n *repository.Node, dest []byte) (uint32, syscall.Errno) {
	var names []byte
	for _, x := range n.Xattrs {
		names = append(append(names, x.Name...), 0)
	}
	if len(dest) < len(names) {
		return uint32(len(names)), syscall.ERANGE
	}
	return uint32(copy(dest, names)), 0
}
