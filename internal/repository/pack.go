package repository

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// BlobType says what a blob holds; data and trees live in separate packs.
type BlobType uint8

// Blob types.
const (
	DataBlob BlobType = 1
	TreeBlob BlobType = 2
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blob-type-%d", t)
}

// Blob flags.
const flagZstd = 1

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
type packBuilder struct {
	typ     BlobType
	buf     bytes.Buffer
	entries []PackedBlob
}

// newPackBuilder sizes the buffer for a full pack up front: grown by
// doubling, a 16 MiB pack would hold a 32 MiB buffer.
func newPackBuilder(t BlobType, packSize int) *packBuilder {
	p := &packBuilder{typ: t}
	if t == DataBlob {
		p.buf.Grow(packSize + 4<<20) // the last blob may overshoot by a chunk
	}
	return p
}

func (p *packBuilder) add(e PackedBlob, sealed []byte) {
	e.Offset = uint32(p.buf.Len())
	e.Length = uint32(len(sealed))
	p.buf.Write(sealed)
	p.entries = append(p.entries, e)
}

func (p *packBuilder) size() int { return p.buf.Len() }

// finish appends the sealed header and returns the pack's bytes.
func (p *packBuilder) finish(key []byte) ([]byte, error) {
	hdr := make([]byte, 0, len(p.entries)*headerEntrySize)
	for _, e := range p.entries {
		hdr = appendEntry(hdr, e)
	}
	sealed, err := seal(key, nil, hdr)
	if err != nil {
		return nil, err
	}
	p.buf.Write(sealed)
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(sealed)))
	p.buf.Write(n[:])
	return p.buf.Bytes(), nil
}

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
