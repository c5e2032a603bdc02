package repository

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Range reads: blobs of one pack closer than maxGap are read in one
// request, up to maxRange bytes. Fewer, larger reads matter on a local
// disk and much more on an object store.
const (
	maxGap   = 256 << 10
	maxRange = 4 << 20
)

// rangeBufs recycles range buffers: a restore reads gigabytes through them.
var rangeBufs sync.Pool

// BlobLen is the plaintext length of a stored blob, from the index.
func (r *Repository) BlobLen(id ID) (int, bool) {
	_, loc, ok := r.lookup(id)
	return int(loc.rawLen), ok
}

type blobRange struct {
	pack  ID
	start int64
	end   int64
	blobs []rangeBlob
}

type rangeBlob struct {
	id  ID
	loc location
}

// LoadBlobs loads every blob of ids, each once, and calls fn with its
// verified plaintext, which is valid only until fn returns (the buffers are
// reused). Blobs in one pack are read together, in ranges; ranges are read
// and decrypted on a worker per core, so fn is called from several
// goroutines at once and must be safe for that. The first error stops the
// work and is returned.
func (r *Repository) LoadBlobs(ctx context.Context, ids []ID, fn func(id ID, data []byte) error) error {
	byPack := map[ID][]rangeBlob{}
	seen := map[ID]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		pack, loc, ok := r.lookup(id)
		if !ok {
			return fmt.Errorf("blob %s: %w", id.Short(), ErrBlobMissing)
		}
		byPack[pack] = append(byPack[pack], rangeBlob{id, loc})
	}
	var ranges []blobRange
	for pack, blobs := range byPack {
		sort.Slice(blobs, func(i, j int) bool { return blobs[i].loc.offset < blobs[j].loc.offset })
		var cur *blobRange
		for _, b := range blobs {
			start, end := int64(b.loc.offset), int64(b.loc.offset)+int64(b.loc.length)
			if cur == nil || start-cur.end > maxGap || end-cur.start > maxRange {
				ranges = append(ranges, blobRange{pack: pack, start: start})
				cur = &ranges[len(ranges)-1]
			}
			cur.end = max(cur.end, end)
			cur.blobs = append(cur.blobs, b)
		}
	}
	// Packs in order, then offsets: reads go forward through each file.
	sort.Slice(ranges, func(i, j int) bool {
		if ranges[i].pack != ranges[j].pack {
			return ranges[i].pack.String() < ranges[j].pack.String()
		}
		return ranges[i].start < ranges[j].start
	})

	if len(ranges) == 1 { // most files: no workers to start
		return r.loadRange(ctx, ranges[0], fn)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan blobRange)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for rg := range work {
				if err := r.loadRange(ctx, rg, fn); err != nil {
					cancel(err)
				}
			}
		})
	}
	for _, rg := range ranges {
		select {
		case work <- rg:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

func (r *Repository) loadRange(ctx context.Context, rg blobRange, fn func(ID, []byte) error) error {
	rd, err := r.be.Load(ctx, backend.Handle{Type: backend.TypePack, Name: rg.pack.String()}, rg.start, rg.end-rg.start)
	if err != nil {
		return fmt.Errorf("pack %s: %w", rg.pack.Short(), err)
	}
	bp, _ := rangeBufs.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < rg.end-rg.start {
		b := make([]byte, max(rg.end-rg.start, maxRange))
		bp = &b
	}
	defer rangeBufs.Put(bp)
	buf := (*bp)[:rg.end-rg.start]
	_, err = io.ReadFull(rd, buf)
	rd.Close()
	if err != nil {
		return fmt.Errorf("pack %s: %w", rg.pack.Short(), err)
	}
	var scratch []byte
	for _, b := range rg.blobs {
		off := int64(b.loc.offset) - rg.start
		plain, err := r.openBlobInto(b.id, b.loc.flags, b.loc.rawLen, buf[off:off+int64(b.loc.length)], rg.pack, &scratch)
		if err != nil {
			return err
		}
		if err := fn(b.id, plain); err != nil {
			return err
		}
	}
	return nil
}
