package archive

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc" // registers "fastcdc-v1.0.0"

	"github.com/umbra-backup/umbra/internal/repository"
)

// blockLike reports whether a file is cut into fixed, aligned blocks rather
// than content-defined chunks: database and disk-image files are rewritten
// in place page by page, so aligned blocks dedupe every unchanged page,
// where a content-defined chunk of ~1 MiB almost always holds a changed one.
func blockLike(name string, size int64, blockSize int) bool {
	if size < 4*int64(blockSize) {
		return false
	}
	if blockExt[strings.ToLower(filepath.Ext(name))] || pgRelation.MatchString(name) || innodbSystem.MatchString(name) {
		return true
	}
	// Large files in whole pages are disk images or databases more often
	// than not.
	return size >= 64<<20 && size%4096 == 0
}

var (
	blockExt = map[string]bool{
		".db": true, ".sqlite": true, ".sqlite3": true, ".ibd": true, ".mdb": true, ".ldb": true,
		".img": true, ".raw": true, ".qcow2": true, ".vmdk": true, ".vdi": true, ".vhd": true, ".vhdx": true,
	}
	// PostgreSQL relation segments: 16384, 16384.1, 16384_fsm, 16384_vm.
	pgRelation = regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)
	// InnoDB system tablespace and redo logs.
	innodbSystem = regexp.MustCompile(`^(ibdata[0-9]+|ib_logfile[0-9]+|#ib_redo[0-9]+|undo_[0-9]+)$`)
)

// batchSize is how much of a block-like file one job carries: one job per
// 16 KiB block would cost more in coordination than in hashing, and about
// eight batches are in flight at once, so larger ones cost memory.
const batchSize = 256 << 10

// job is a piece of a file for the blob workers: data cut at cuts.
type job struct {
	data []byte
	cuts []int // end offsets of each chunk within data
	// blocks is set for fixed blocks, where an all-zero block is stored
	// as repository.ZeroChunk: its length is known from the block size.
	blocks bool
	res    chan jobResult
	// release, if set, returns data's buffer for reuse once stored.
	release func()
}

type jobResult struct {
	ids   []repository.ID
	added int
	err   error
}

// worker saves the chunks of jobs until jobs closes.
func (a *archiver) worker(ctx context.Context, jobs <-chan job) {
	for j := range jobs {
		var res jobResult
		start := 0
		for _, end := range j.cuts {
			chunk := j.data[start:end]
			start = end
			if j.blocks && repository.AllZero(chunk) {
				res.ids = append(res.ids, repository.ZeroChunk)
				continue
			}
			id, added, err := a.repo.SaveBlob(ctx, repository.DataBlob, chunk)
			if err != nil {
				res.err = &repoError{err}
				break
			}
			res.ids = append(res.ids, id)
			res.added += added
		}
		if j.release != nil {
			j.release()
		}
		j.res <- res
	}
}

// repoError is a failure to store, which ends the backup, as opposed to a
// failure to read one file, which skips it.
type repoError struct{ err error }

func (e *repoError) Error() string { return e.err.Error() }
func (e *repoError) Unwrap() error { return e.err }

// readContent reads f and hands its chunks to the workers, in order. It
// returns once f is read, with the block size if it used fixed blocks, the
// bytes read, and collect, which waits for the workers and returns the
// chunk ids in order. collect must be called, even after an error, so
// that every buffer comes back.
func (a *archiver) readContent(ctx context.Context, f *os.File, name string, size int64) (blockSize int, n int64, collect func() ([]repository.ID, error), err error) {
	params := a.repo.Config().Chunker
	if blockLike(name, size, params.BlockSize) {
		blockSize = params.BlockSize
	}
	var pending []chan jobResult
	submit := func(data []byte, cuts []int, release func()) error {
		res := make(chan jobResult, 1)
		select {
		case a.jobs <- job{data: data, cuts: cuts, blocks: blockSize > 0, res: res, release: release}:
		case <-ctx.Done():
			if release != nil {
				release()
			}
			return ctx.Err()
		}
		n += int64(len(data))
		pending = append(pending, res)
		return nil
	}
	collect = func() ([]repository.ID, error) {
		var ids []repository.ID
		var errs []error
		for _, res := range pending {
			r := <-res
			errs = append(errs, r.err)
			ids = append(ids, r.ids...)
			a.progress.BytesAdded.Add(int64(r.added))
		}
		return ids, joinDistinct(errs)
	}

	switch {
	case blockSize > 0:
		err = a.readBlocks(f, blockSize, submit)
	case size <= int64(params.MinSize):
		err = a.readWhole(f, submit)
	default:
		err = a.readCDC(f, params, submit)
	}
	return blockSize, n, collect, err
}

func (a *archiver) readBlocks(f *os.File, blockSize int, submit func([]byte, []int, func()) error) error {
	for {
		p := a.buffers.Get().(*[]byte)
		buf := (*p)[:batchSize]
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			a.progress.BytesRead.Add(int64(n))
			var cuts []int
			for end := blockSize; ; end += blockSize {
				if end >= n {
					cuts = append(cuts, n)
					break
				}
				cuts = append(cuts, end)
			}
			if serr := submit(buf[:n], cuts, func() { a.buffers.Put(p) }); serr != nil {
				return serr
			}
		} else {
			a.buffers.Put(p)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readWhole reads a small file (at most the chunker's minimum, 256 KiB by
// default, as batchSize; a larger one takes the slow path) into a pooled buffer: io.ReadAll's growing buffers
// cost an allocation and copy per doubling, for tens of thousands of files.
func (a *archiver) readWhole(f *os.File, submit func([]byte, []int, func()) error) error {
	p := a.buffers.Get().(*[]byte)
	buf := (*p)[:cap(*p)]
	n, err := io.ReadFull(f, buf)
	switch {
	case err == nil: // fills the buffer: it grew since stat; read the rest
		rest, rerr := io.ReadAll(f)
		data := append(append([]byte(nil), buf...), rest...)
		a.buffers.Put(p)
		if rerr != nil {
			return rerr
		}
		a.progress.BytesRead.Add(int64(len(data)))
		return submit(data, []int{len(data)}, nil)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		a.progress.BytesRead.Add(int64(n))
		return submit(buf[:n], []int{n}, func() { a.buffers.Put(p) })
	default:
		a.buffers.Put(p)
		return err
	}
}

// cdcAlgorithm is FastCDC with masks computed for the configured sizes and
// a gear table derived from the repository's secret chunker key. (An
// earlier library XORed its seed into a package-wide table on every new
// chunker, so chunk boundaries depended on how many files came before.)
const cdcAlgorithm = "fastcdc-v1.0.0"

func (a *archiver) readCDC(f *os.File, p repository.ChunkerParams, submit func([]byte, []int, func()) error) error {
	buf := a.cdcBuffers.Get().(*[]byte)
	defer a.cdcBuffers.Put(buf)
	c, err := chunkers.NewChunkerBuffer(cdcAlgorithm, f, &chunkers.ChunkerOpts{
		MinSize: p.MinSize, NormalSize: p.AvgSize, MaxSize: p.MaxSize, Key: a.repo.ChunkerKey(),
	}, *buf)
	if err != nil {
		return err
	}
	for {
		chunk, err := c.Next()
		if len(chunk) > 0 {
			a.progress.BytesRead.Add(int64(len(chunk)))
			// chunk is the chunker's buffer: copy it for the worker.
			var release func()
			var data []byte
			if len(chunk) <= batchSize {
				bp := a.buffers.Get().(*[]byte)
				data, release = append((*bp)[:0], chunk...), func() { a.buffers.Put(bp) }
			} else {
				data = append([]byte(nil), chunk...)
			}
			if serr := submit(data, []int{len(data)}, release); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
