package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Repository is an open repository. SaveBlob and LoadBlob may be called
// from many goroutines at once; Flush makes everything saved so far durable
// and findable, by LoadBlob and by other processes.
type Repository struct {
	be      backend.Backend
	cfg     Config
	key     *MasterKey
	keyName string
	kdf     KDFParams

	idx    *index // blobs to read and to reuse
	marked *index // blobs in packs a prune marked: to read, not to reuse
	enc    *zstd.Encoder
	dec    *zstd.Decoder
	lz4    bool // LZ4 for small blobs (compression "fast")

	mu       sync.Mutex
	packers  map[BlobType]*packBuilder
	unpacked map[ID]BlobType // saved into a packer, pack not yet uploaded
	indexed  []indexedPack   // uploaded, not yet in an index file
	// indexedBlobs counts the entries in indexed.
	indexedBlobs int
	uploads      sync.WaitGroup
	slots        chan struct{} // bounds concurrent uploads, and so memory
	err          error         // first upload failure; every later call fails
	scratch      sync.Pool     // *[]byte for compressing and sealing
	blobsAdded   atomic.Int64  // blobs this process stored (not deduplicated)
}

// BlobsAdded is how many blobs this Repository has stored, deduplicated
// ones not counted.
func (r *Repository) BlobsAdded() int64 { return r.blobsAdded.Load() }

// Options tune Init.
type Options struct {
	Config Config    // zero means DefaultConfig
	KDF    KDFParams // zero means DefaultKDF
}

// Init makes a new repository on an empty backend.
func Init(ctx context.Context, be backend.Backend, password string, opts Options) (*Repository, error) {
	cfg := opts.Config
	if cfg.Version == 0 {
		cfg = DefaultConfig()
	}
	cfg.ID, cfg.Created = newRepoID(), time.Now().UTC()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	kdf := opts.KDF
	if kdf.Time == 0 {
		kdf = DefaultKDF
	}
	if _, err := be.Stat(ctx, configHandle); err == nil {
		return nil, fmt.Errorf("%s already holds a repository", be.Location())
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	mk, err := newMasterKey()
	if err != nil {
		return nil, err
	}
	// The key first: a config without a key would be a repository no one
	// can open; a key without a config is just an unfinished init.
	name, err := saveKey(ctx, be, mk, password, kdf)
	if err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := be.Save(ctx, configHandle, int64(len(data)), bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("save config: %w", err)
	}
	return newRepository(be, cfg, mk, name, kdf)
}

var configHandle = backend.Handle{Type: backend.TypeConfig, Name: "config"}

// Open opens the repository on be with password and reads its index.
func Open(ctx context.Context, be backend.Backend, password string) (*Repository, error) {
	return open2(ctx, be, password, true)
}

// OpenWAL opens the repository for archiving WAL (umbra wal-push and
// wal-fetch, run by PostgreSQL): it reads the config and a key only, not
// the index, so it needs no access to the rest.
func OpenWAL(ctx context.Context, be backend.Backend, password string) (*Repository, error) {
	return open2(ctx, be, password, false)
}

// OpenToLock opens the repository without reading its index, for an
// operation that takes a lock next (Lock reads the index, after the lock).
func OpenToLock(ctx context.Context, be backend.Backend, password string) (*Repository, error) {
	return open2(ctx, be, password, false)
}

func open2(ctx context.Context, be backend.Backend, password string, withIndex bool) (*Repository, error) {
	rd, err := be.Load(ctx, configHandle, 0, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not an umbra repository (no config); create one with umbra init", be.Location())
	}
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", be.Location(), err)
	}
	data, err := io.ReadAll(io.LimitReader(rd, 1<<20))
	rd.Close()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("repository config is damaged: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	mk, name, err := openKey(ctx, be, password)
	if err != nil {
		return nil, err
	}
	// argon2id's work area (64 MiB) is garbage now; give it back rather
	// than carry it as heap headroom through a whole backup.
	debug.FreeOSMemory()
	r, err := newRepository(be, cfg, mk, name, DefaultKDF)
	if err != nil {
		return nil, err
	}
	if !withIndex {
		return r, nil
	}
	if err := r.loadIndex(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func newRepository(be backend.Backend, cfg Config, mk *MasterKey, keyName string, kdf KDFParams) (*Repository, error) {
	// Every input is a whole blob of at most 4 MiB (a chunk) or a small
	// file, so a window beyond that buys nothing; the encoders' history
	// buffers are sized by it.
	level := zstd.SpeedFastest
	if cfg.compression() == CompressionMax {
		level = zstd.SpeedBetterCompression
	}
	// No frame checksum: a sealed blob is authenticated, and its
	// plaintext checked against its id.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithWindowSize(4<<20), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(256<<20))
	if err != nil {
		return nil, err
	}
	return &Repository{
		be: be, cfg: cfg, key: mk, keyName: keyName, kdf: kdf,
		idx: newIndex(), marked: newIndex(), enc: enc, dec: dec, lz4: cfg.compression() == CompressionFast,
		packers: map[BlobType]*packBuilder{}, unpacked: map[ID]BlobType{},
		slots: make(chan struct{}, 2),
	}, nil
}

// Config returns the repository's configuration.
func (r *Repository) Config() Config { return r.cfg }

// ChunkerKey is the secret key of the content-defined chunker.
func (r *Repository) ChunkerKey() []byte { return r.key.Chunker }

// Backend is where the repository's files are.
func (r *Repository) Backend() backend.Backend { return r.be }

// Close releases the compressors (not the backend).
func (r *Repository) Close() error {
	r.dec.Close()
	return r.enc.Close()
}

// BlobID is the id data gets as a blob, without storing it.
func (r *Repository) BlobID(data []byte) ID { return r.key.blobID(data) }

// HasBlob reports whether a blob is stored or being stored.
func (r *Repository) HasBlob(id ID) bool {
	if r.idx.has(id) {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.unpacked[id]
	return ok
}

// SaveBlob stores data as a blob of type t unless a blob with its id
// exists, and returns the id and the bytes it added to packs (0 when
// deduplicated).
func (r *Repository) SaveBlob(ctx context.Context, t BlobType, data []byte) (ID, int, error) {
	id := r.key.blobID(data)
	if r.idx.has(id) {
		return id, 0, nil
	}
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return id, 0, r.err
	}
	if _, ok := r.unpacked[id]; ok {
		r.mu.Unlock()
		return id, 0, nil
	}
	r.unpacked[id] = t
	r.mu.Unlock()

	e := PackedBlob{Type: t, ID: id, RawLen: uint32(len(data))}
	payload := data
	// Both scratch buffers are reused: fresh ones cost zeroing and
	// garbage-collector headroom for every chunk.
	scratch := r.getBuf(2*len(data) + Overhead)
	defer r.putBuf(scratch)
	// Compressed only when it pays: at least 1/32 smaller. Content lists
	// are ids, random bytes: not worth trying.
	if t != ListBlob {
		payload, e.Flags = compress(r.enc, r.lz4, data, *scratch)
	}
	sealed, err := seal(r.key.Encrypt, (*scratch)[len(payload):len(payload)], payload)
	if err != nil {
		return id, 0, err
	}

	r.mu.Lock()
	p := r.packers[t]
	if p == nil {
		if p, err = newPackBuilder(t); err != nil {
			r.mu.Unlock()
			return id, 0, err
		}
		r.packers[t] = p
	}
	p.add(e, sealed) // copies sealed
	r.blobsAdded.Add(1)
	var full *packBuilder
	if p.size() >= r.cfg.PackSize {
		full = p
		delete(r.packers, t)
	}
	r.mu.Unlock()
	if full != nil {
		if err := r.upload(ctx, full); err != nil {
			return id, 0, err
		}
	}
	return id, len(sealed), nil
}

// upload sends a finished pack in the background; at most two at a time.
func (r *Repository) upload(ctx context.Context, p *packBuilder) error {
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.uploads.Add(1)
	go func() {
		defer r.uploads.Done()
		defer func() { <-r.slots }()
		err := r.savePack(ctx, p)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil && r.err == nil {
			r.err = err
		}
	}()
	return nil
}

func (r *Repository) savePack(ctx context.Context, p *packBuilder) error {
	defer p.close()
	id, err := r.storePack(ctx, p)
	if err != nil {
		return err
	}
	r.idx.addPack(id, p.entries)
	r.mu.Lock()
	for _, e := range p.entries {
		delete(r.unpacked, e.ID)
	}
	r.indexed = append(r.indexed, indexedPack{ID: id, Entries: p.entries})
	r.indexedBlobs += len(p.entries)
	var full []indexedPack
	if r.indexedBlobs >= indexFileBlobs {
		full, r.indexed, r.indexedBlobs = r.indexed, nil, 0
	}
	r.mu.Unlock()
	if full != nil {
		return r.saveIndex(ctx, full)
	}
	return nil
}

// indexFileBlobs is how many blobs an index file written during a backup
// holds (about 1.5 MiB): a long backup writes its index as it goes, rather
// than hold every entry until Flush.
const indexFileBlobs = 32768

// saveIndex writes an index file for packs already stored; on failure the
// entries go back to be written by the next Flush.
func (r *Repository) saveIndex(ctx context.Context, packs []indexedPack) error {
	if _, err := r.saveSealed(ctx, backend.TypeIndex, encodeIndex(packs), true); err != nil {
		r.mu.Lock()
		r.indexed = append(packs, r.indexed...)
		for _, p := range packs {
			r.indexedBlobs += len(p.Entries)
		}
		r.mu.Unlock()
		return err
	}
	return nil
}

// Flush uploads every partly filled pack and writes an index file for
// every pack uploaded since the last Flush. Only then is what was saved
// visible to other processes; a manifest must be saved after Flush.
func (r *Repository) Flush(ctx context.Context) error {
	r.mu.Lock()
	var open []*packBuilder
	for t, p := range r.packers {
		open = append(open, p)
		delete(r.packers, t)
	}
	r.mu.Unlock()
	for _, p := range open {
		if err := r.upload(ctx, p); err != nil {
			return err
		}
	}
	r.uploads.Wait()
	r.mu.Lock()
	err, packs := r.err, r.indexed
	r.indexed, r.indexedBlobs = nil, 0
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if len(packs) == 0 {
		return nil
	}
	if err := r.saveIndex(ctx, packs); err != nil {
		return fmt.Errorf("save index: %w", err)
	}
	return nil
}

// saveSealed compresses (optionally), seals and stores a small file, named
// by the hash of its stored bytes.
func (r *Repository) saveSealed(ctx context.Context, t backend.Type, plain []byte, compress bool) (ID, error) {
	flag := byte(0)
	if compress {
		plain, flag = r.enc.EncodeAll(plain, nil), flagZstd
	}
	data, err := seal(r.key.Encrypt, []byte{flag}, plain)
	if err != nil {
		return ID{}, err
	}
	id := hashID(data)
	err = r.be.Save(ctx, backend.Handle{Type: t, Name: id.String()}, int64(len(data)), bytes.NewReader(data))
	if errors.Is(err, fs.ErrExist) {
		err = nil // same bytes, same name: already stored
	}
	return id, err
}

// loadSealed reads a file written by saveSealed and checks its name.
func (r *Repository) loadSealed(ctx context.Context, t backend.Type, id ID) ([]byte, error) {
	h := backend.Handle{Type: t, Name: id.String()}
	rd, err := r.be.Load(ctx, h, 0, 0)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(rd)
	rd.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", h, err)
	}
	if hashID(data) != id || len(data) < 1 {
		return nil, fmt.Errorf("%s is damaged: its content does not match its name", h)
	}
	plain, err := open(r.key.Encrypt, nil, data[1:])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	if data[0]&flagZstd != 0 {
		if plain, err = r.dec.DecodeAll(plain, nil); err != nil {
			return nil, fmt.Errorf("%s: decompress: %w", h, err)
		}
	}
	return plain, nil
}

// indexState is what the marks and the index files say.
type indexState struct {
	files []ID          // the index files read
	packs []indexedPack // from the index files, each pack once
	marks []*mark
}

// readIndexState reads the marks, then the index files: in that order, so
// that a pack marked by a prune meanwhile is either seen marked, or is in
// a mark that names this process's lock (see mark).
func (r *Repository) readIndexState(ctx context.Context) (*indexState, error) {
	marks, err := r.loadMarks(ctx)
	if err != nil {
		return nil, err
	}
	st := &indexState{marks: marks}
	err = r.be.List(ctx, backend.TypeIndex, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			st.files = append(st.files, id)
		}
		return nil // not ours
	})
	if err != nil {
		return nil, fmt.Errorf("list index files: %w", err)
	}
	seen := map[ID]bool{}
	for _, id := range st.files {
		plain, err := r.loadSealed(ctx, backend.TypeIndex, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a concurrent prune
		}
		if err != nil {
			return nil, fmt.Errorf("load index: %w", err)
		}
		packs, err := decodeIndex(plain)
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", id.Short(), err)
		}
		for _, p := range packs {
			if !seen[p.ID] {
				seen[p.ID] = true
				st.packs = append(st.packs, p)
			}
		}
	}
	return st, nil
}

// useIndex makes st the index: blobs in marked packs are readable but not
// reused.
func (r *Repository) useIndex(st *indexState) {
	idx, marked := newIndex(), newIndex()
	inMark := map[ID]bool{}
	for _, m := range st.marks {
		for _, p := range m.Packs {
			inMark[p.ID] = true
			marked.addPack(p.ID, p.Entries)
		}
	}
	for _, p := range st.packs {
		if inMark[p.ID] {
			// A pack marked while in no index yet (its backup was
			// still writing) has its entries here.
			marked.addPack(p.ID, p.Entries)
		} else {
			idx.addPack(p.ID, p.Entries)
		}
	}
	r.idx, r.marked = idx, marked
}

func (r *Repository) loadIndex(ctx context.Context) error {
	st, err := r.readIndexState(ctx)
	if err != nil {
		return err
	}
	r.useIndex(st)
	return nil
}

// LoadIndex reads the index without a lock, for a reader that cannot
// write one (a read-only repository).
func (r *Repository) LoadIndex(ctx context.Context) error { return r.loadIndex(ctx) }

// lookup finds a blob, in a marked pack if nowhere else.
func (r *Repository) lookup(id ID) (ID, location, bool) {
	if pack, loc, ok := r.idx.lookup(id); ok {
		return pack, loc, true
	}
	return r.marked.lookup(id)
}

// LoadBlob reads, authenticates, decompresses and verifies one blob.
func (r *Repository) LoadBlob(ctx context.Context, id ID) ([]byte, error) {
	pack, loc, ok := r.lookup(id)
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", id.Short(), ErrBlobMissing)
	}
	rd, err := r.be.Load(ctx, backend.Handle{Type: backend.TypePack, Name: pack.String()}, int64(loc.offset), int64(loc.length))
	if err != nil {
		return nil, fmt.Errorf("blob %s in pack %s: %w", id.Short(), pack.Short(), err)
	}
	sealed := make([]byte, loc.length)
	_, err = io.ReadFull(rd, sealed)
	rd.Close()
	if err != nil {
		return nil, fmt.Errorf("blob %s in pack %s: %w", id.Short(), pack.Short(), err)
	}
	return r.openBlob(id, loc.flags, loc.rawLen, sealed, pack)
}

func (r *Repository) openBlob(id ID, flags uint8, rawLen uint32, sealed []byte, pack ID) ([]byte, error) {
	return r.openBlobInto(id, flags, rawLen, sealed, pack, nil)
}

// openBlobInto opens a blob; with scratch, it decrypts over sealed and
// decompresses into *scratch (grown as needed), so the plaintext aliases
// one of them and is valid only until they are reused.
func (r *Repository) openBlobInto(id ID, flags uint8, rawLen uint32, sealed []byte, pack ID, scratch *[]byte) ([]byte, error) {
	var plain []byte
	var err error
	if scratch == nil {
		plain, err = open(r.key.Encrypt, nil, sealed)
	} else {
		plain, err = openInPlace(r.key.Encrypt, sealed)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s in pack %s: %w", id.Short(), pack.Short(), err)
	}
	if plain, err = r.decompress(flags, rawLen, plain, scratch); err != nil {
		return nil, fmt.Errorf("blob %s in pack %s: decompress: %w", id.Short(), pack.Short(), err)
	}
	if r.key.blobID(plain) != id {
		return nil, fmt.Errorf("blob %s in pack %s: content does not match its id: %w", id.Short(), pack.Short(), ErrAuth)
	}
	return plain, nil
}

// compress returns data compressed into scratch (capacity at least
// 2*len(data)) and its flag, or data itself and 0 when compression saves
// less than 1/32. With lz4 set, blobs up to lz4Max use LZ4.
func compress(enc *zstd.Encoder, lz4Small bool, data, scratch []byte) ([]byte, uint8) {
	if lz4Small && len(data) <= lz4Max {
		n, err := lz4.CompressBlock(data, scratch[:cap(scratch)], nil)
		if err == nil && n > 0 && n < len(data)-len(data)/32 {
			return scratch[:n], flagLZ4
		}
		return data, 0
	}
	if c := enc.EncodeAll(data, scratch[:0]); len(c) < len(data)-len(data)/32 {
		return c, flagZstd
	}
	return data, 0
}

// decompress undoes compress, into *scratch when given.
func (r *Repository) decompress(flags uint8, rawLen uint32, payload []byte, scratch *[]byte) ([]byte, error) {
	if flags&(flagZstd|flagLZ4) == 0 {
		return payload, nil
	}
	if rawLen > maxBlobLen {
		return nil, fmt.Errorf("the index says the blob is %d bytes, more than any blob umbra writes: damaged", rawLen)
	}
	if rawLen == 0 {
		// umbra stores an empty blob uncompressed; and lz4's decoder
		// must not be given an empty buffer (it panics).
		return nil, errors.New("a compressed blob the index says is empty: damaged")
	}
	var out []byte
	if scratch != nil {
		if cap(*scratch) < int(rawLen) {
			*scratch = make([]byte, rawLen)
		}
		out = (*scratch)[:rawLen]
	} else {
		out = make([]byte, rawLen)
	}
	switch {
	case flags&flagZstd != 0:
		got, err := r.dec.DecodeAll(payload, out[:0])
		if err == nil && len(got) != int(rawLen) {
			err = fmt.Errorf("zstd: %d bytes, want %d", len(got), rawLen)
		}
		return got, err
	case flags&flagLZ4 != 0:
		n, err := lz4.UncompressBlock(payload, out)
		if err == nil && n != int(rawLen) {
			err = fmt.Errorf("lz4: %d bytes, want %d", n, rawLen)
		}
		return out, err
	}
	return payload, nil
}

// maxBlobLen bounds a blob's plaintext: chunks are at most 64 MiB, trees
// of huge directories larger, but no blob comes near this.
const maxBlobLen = 1 << 30

// getBuf returns a scratch buffer for compressing and sealing one blob.
func (r *Repository) getBuf(n int) *[]byte {
	if b, ok := r.scratch.Get().(*[]byte); ok && cap(*b) >= n {
		return b
	}
	b := make([]byte, 0, n)
	return &b
}

func (r *Repository) putBuf(b *[]byte) { r.scratch.Put(b) }

// ErrBlobMissing means no index knows the blob.
var ErrBlobMissing = errors.New("not in the repository's index")
