package repository

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/zeebo/blake3"
)

// BlobType says what a blob holds; data and trees live in separate packs.
type BlobType uint8

// Blob types.
const (
	DataBlob BlobType = 1
	TreeBlob BlobType = 2
	// ListBlob holds part of a large file's chunk ids (Node.ContentLists).
	ListBlob BlobType = 3
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	case ListBlob:
		return "list"
	}
	return fmt.Sprintf("blob-type-%d", t)
}

// Blob flags: how the payload is compressed (at most one is set).
const (
	flagZstd = 1
	flagLZ4  = 2
)

// lz4Max is the largest blob compressed with LZ4 rather than zstd under
// compression "fast". On 16 KiB database blocks zstd's hash table, sized
// for the window, falls out of the cache inside a backup: a first backup
// takes about twice LZ4's CPU, for blocks about a third smaller; on ~1 MiB
// chunks zstd's better ratio pays for itself in any setting.
const lz4Max = 64 << 10

// PackedBlob is where a blob is: its pack and its place in it.
type PackedBlob struct {
	Type   BlobType
	ID     ID
	Flags  uint8
	Offset uint32 // in the pack file
	Length uint32 // stored (sealed) length
	RawLen uint32 // plaintext length
}

// headerEntrySize is the encoded size of one PackedBlob in a pack header
// or an index file: type, flags, id, offset, length, raw length.
const headerEntrySize = 1 + 1 + 32 + 4 + 4 + 4

func appendEntry(b []byte, e PackedBlob) []byte {
	b = append(b, byte(e.Type), e.Flags)
	b = append(b, e.ID[:]...)
	b = binary.LittleEndian.AppendUint32(b, e.Offset)
	b = binary.LittleEndian.AppendUint32(b, e.Length)
	return binary.LittleEndian.AppendUint32(b, e.RawLen)
}

func readEntry(b []byte) PackedBlob {
	var e PackedBlob
	e.Type, e.Flags = BlobType(b[0]), b[1]
	copy(e.ID[:], b[2:34])
	e.Offset = binary.LittleEndian.Uint32(b[34:])
	e.Length = binary.LittleEndian.Uint32(b[38:])
	e.RawLen = binary.LittleEndian.Uint32(b[42:])
	return e
}

// packBuilder collects sealed blobs into one pack file:
//
//	blob… ‖ seal(header entries) ‖ uint32 LE length of the sealed header
//
// so that a pack describes itself and an index can be rebuilt from packs.
// The pack grows in an unlinked temporary file, not in memory: a backup
// holds one pack filling and others uploading, tens of MiB each.
type packBuilder struct {
	typ     BlobType
	f       *os.File // unlinked: gone with the process, whatever happens
	w       *bufio.Writer
	hash    *blake3.Hasher
	n       int
	entries []PackedBlob
	err     error
}

func newPackBuilder(t BlobType) (*packBuilder, error) {
	f, err := os.CreateTemp("", "umbra-pack-")
	if err != nil {
		return nil, fmt.Errorf("temporary pack file: %w; set TMPDIR to a directory with room", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return &packBuilder{typ: t, f: f, w: bufio.NewWriterSize(f, 256<<10), hash: blake3.New()}, nil
}

func (p *packBuilder) write(b []byte) {
	if p.err != nil {
		return
	}
	if _, err := p.w.Write(b); err != nil {
		p.err = fmt.Errorf("temporary pack file: %w", err)
		return
	}
	p.hash.Write(b)
	p.n += len(b)
}

// add appends a sealed blob (copying it).
func (p *packBuilder) add(e PackedBlob, sealed []byte) {
	e.Offset = uint32(p.n)
	e.Length = uint32(len(sealed))
	p.write(sealed)
	p.entries = append(p.entries, e)
}

func (p *packBuilder) size() int { return p.n }

// finish appends the sealed header and returns the pack's id, size and a
// reader of its bytes; close releases the temporary file.
func (p *packBuilder) finish(key []byte) (id ID, size int64, rd io.ReadSeeker, err error) {
	hdr := make([]byte, 0, len(p.entries)*headerEntrySize)
	for _, e := range p.entries {
		hdr = appendEntry(hdr, e)
	}
	sealed, err := seal(key, nil, hdr)
	if err != nil {
		return id, 0, nil, err
	}
	p.write(sealed)
	p.write(binary.LittleEndian.AppendUint32(nil, uint32(len(sealed))))
	if p.err == nil {
		p.err = p.w.Flush()
	}
	if p.err != nil {
		return id, 0, nil, p.err
	}
	p.hash.Sum(id[:0])
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return id, 0, nil, err
	}
	return id, int64(p.n), p.f, nil
}

func (p *packBuilder) close() { p.f.Close() }

// readPackHeader decodes a pack's header from its trailing bytes.
func readPackHeader(key, tail []byte, packSize int64) ([]PackedBlob, error) {
	if len(tail) < 4 {
		return nil, errors.New("pack too short for a header")
	}
	n := int64(binary.LittleEndian.Uint32(tail[len(tail)-4:]))
	if n+4 > int64(len(tail)) || n+4 > packSize {
		return nil, fmt.Errorf("pack header length %d does not fit", n)
	}
	hdr, err := open(key, nil, tail[int64(len(tail))-4-n:len(tail)-4])
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if len(hdr)%headerEntrySize != 0 {
		return nil, errors.New("pack header is damaged")
	}
	entries := make([]PackedBlob, 0, len(hdr)/headerEntrySize)
	for i := 0; i < len(hdr); i += headerEntrySize {
		entries = append(entries, readEntry(hdr[i:]))
	}
	return entries, nil
}
