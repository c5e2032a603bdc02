package mount

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/umbra-backup/umbra/internal/repository"
)

// fileNode is a regular file of a backup.
type fileNode struct {
	fs.Inode
	f    *filesystem
	node repository.Node

	blocksOnce sync.Once
	nblocks    uint64
}

// blocks is the space the file took, in 512-byte blocks: zero blocks are
// holes, as a restore leaves them (a block-cut file's ZeroChunk; in a file
// cut by content, the chunker's longest chunk of zeros, which is how a
// run of zeros is cut: a shorter end of such a run is counted as data).
func (n *fileNode) blocks(ctx context.Context) uint64 {
	n.blocksOnce.Do(func() {
		n.nblocks = (uint64(n.node.Size) + 511) / 512
		if n.node.Size < 1<<20 {
			return
		}
		var data int64
		err := n.f.repo.ContentParts(n.f.ctx, &n.node, func(part []repository.ID) error {
			for _, id := range part {
				switch {
				case id == repository.ZeroChunk:
				case n.node.BlockSize > 0:
					data += int64(n.node.BlockSize)
				default:
					if l, _ := n.f.repo.BlobLen(id); id != n.f.zeroChunk() {
						data += int64(l)
					}
				}
			}
			return nil
		})
		if err == nil {
			n.nblocks = uint64(min(data, n.node.Size)+511) / 512
		}
	})
	return n.nblocks
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
)

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	attrs(&n.node, &out.Attr)
	out.Blocks = n.blocks(ctx)
	if n.node.Links > 1 {
		out.Nlink = uint32(n.node.Links)
	}
	return 0
}

func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return getxattr(&n.node, attr, dest)
}

func (n *fileNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(&n.node, dest)
}

// Open reads the file's chunk list and where each chunk starts; the
// contents are loaded as they are read. A file whose contents were not
// stored (unreadable at backup time) cannot be opened.
func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.node.Size > 0 && !n.node.HasContent() {
		return nil, 0, syscall.EIO
	}
	h, err := n.f.openContent(&n.node)
	if err != nil {
		return nil, 0, errno(err)
	}
	// The kernel may cache what it read: a backup never changes.
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// openContent reads the chunk list of a file of a backup, and where each
// chunk starts, for reading it by range.
func (f *filesystem) openContent(node *repository.Node) (*fileHandle, error) {
	h := &fileHandle{f: f, size: node.Size}
	err := f.repo.ContentParts(f.ctx, node, func(part []repository.ID) error {
		for _, id := range part {
			length := node.BlockSize
			if id != repository.ZeroChunk || node.BlockSize == 0 {
				l, ok := f.repo.BlobLen(id)
				if !ok {
					return fmt.Errorf("chunk %s is not in the repository's index", id.Short())
				}
				length = l
			}
			h.starts = append(h.starts, h.end)
			h.ids = append(h.ids, id)
			h.end += int64(length)
		}
		return nil
	})
	return h, err
}

// fileHandle reads one open file.
type fileHandle struct {
	f      *filesystem
	ids    []repository.ID
	starts []int64 // where each chunk starts in the file
	end    int64   // the chunks' total length (a last zero block may pass size)
	size   int64

	mu   sync.Mutex
	next int // the first chunk not yet asked for by a read-ahead
	last int // the chunk read last: a read before it is a seek back
	to   int // the end of the window, as far as it was scanned
}

// readAhead asks for the chunks up to ReadAhead bytes past chunk i that
// no read-ahead has asked for yet, once they are a quarter of the window:
// each load is large (one read per pack), several run at once.
func (h *fileHandle) readAhead(i int) {
	h.mu.Lock()
	if i+8 < h.last || i > max(h.to, h.last+8) {
		// A jump (a database's random reads), not the kernel's own
		// read-ahead, which asks for chunks out of order within the
		// window: no read-ahead until the reader goes on from here.
		h.next, h.to, h.last = i+1, i+1, i
		h.mu.Unlock()
		return
	}
	h.last = i
	from := max(h.next, i+1)
	h.to = max(h.to, from)
	for h.to < len(h.ids) && h.starts[h.to]-h.starts[i] < h.f.opts.ReadAhead {
		h.to++ // each chunk scanned once, not at every read
	}
	to := h.to
	if to == from || (h.starts[min(to, len(h.starts)-1)]-h.starts[from] < h.f.opts.ReadAhead/4 && to < len(h.ids)) {
		h.mu.Unlock()
		return
	}
	h.next = to
	h.mu.Unlock()
	var ahead []repository.ID
	for _, id := range h.ids[from:to] {
		if id != repository.ZeroChunk {
			ahead = append(ahead, id)
		}
	}
	h.f.cache.prefetch(ahead)
}

var _ = (fs.FileReader)((*fileHandle)(nil))

// zeros backs holes: block-cut files store none of their zero blocks.
var zeros = make([]byte, 1<<20)

func (h *fileHandle) chunk(i int) ([]byte, error) {
	id := h.ids[i]
	length := h.end - h.starts[i]
	if i+1 < len(h.starts) {
		length = h.starts[i+1] - h.starts[i]
	}
	if id == repository.ZeroChunk {
		if length <= int64(len(zeros)) {
			return zeros[:length], nil
		}
		return make([]byte, length), nil
	}
	return h.f.cache.get(h.f.ctx, id)
}

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	data, e := h.readAt(dest, off)
	if e != 0 {
		return nil, e
	}
	return fuse.ReadResultData(data), 0
}

// readAt returns the file's bytes from off, as many as dest holds (fewer
// at its end): a slice of a cached chunk when they lie in one, else
// copied into dest.
func (h *fileHandle) readAt(dest []byte, off int64) ([]byte, syscall.Errno) {
	if off >= h.size {
		return nil, 0
	}
	end := min(off+int64(len(dest)), h.size)
	i := sort.Search(len(h.starts), func(i int) bool { return h.starts[i] > off }) - 1
	if i < 0 {
		return nil, syscall.EIO
	}
	// Load the chunks ahead of a sequential reader together, in the
	// background: blobs of one pack come in one read. A quarter of the
	// window missing starts a load: several are under way at once, on
	// every core.
	h.readAhead(i)
	// A read within one chunk is answered from the cached chunk itself,
	// without a copy (the common case: chunks are larger than reads).
	if i+1 >= len(h.starts) || end <= h.starts[i+1] {
		data, err := h.chunk(i)
		if err != nil {
			return nil, errno(err)
		}
		from, to := off-h.starts[i], end-h.starts[i]
		if to > int64(len(data)) {
			return nil, syscall.EIO
		}
		return data[from:to], 0
	}
	n := 0
	for pos := off; pos < end; i++ {
		data, err := h.chunk(i)
		if err != nil {
			return nil, errno(err)
		}
		from := pos - h.starts[i]
		if from > int64(len(data)) {
			return nil, syscall.EIO
		}
		c := copy(dest[n:end-off], data[from:])
		n += c
		pos += int64(c)
		if c == 0 {
			break
		}
	}
	return dest[:n], 0
}
