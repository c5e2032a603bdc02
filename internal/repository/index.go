package repository

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// location is where a blob is, without its id (the map key).
type location struct {
	pack   uint32 // into index.packs
	typ    BlobType
	flags  uint8
	offset uint32
	length uint32
	rawLen uint32
}

// index maps every blob to its pack. It is built from all index files at
// open and grows as this process uploads packs. A blob stored twice (two
// hosts backing up the same data at once) is found in either pack.
type index struct {
	mu      sync.RWMutex
	packs   []ID
	packNum map[ID]uint32
	blobs   blobTable
}

func newIndex() *index {
	return &index{packNum: map[ID]uint32{}}
}

func (x *index) addPack(pack ID, entries []PackedBlob) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n, ok := x.packNum[pack]
	if !ok {
		n = uint32(len(x.packs))
		x.packs = append(x.packs, pack)
		x.packNum[pack] = n
	}
	for _, e := range entries {
		x.blobs.add(e.ID, location{pack: n, typ: e.Type, flags: e.Flags, offset: e.Offset, length: e.Length, rawLen: e.RawLen})
	}
}

func (x *index) lookup(id ID) (pack ID, loc location, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	loc, ok = x.blobs.get(id)
	if !ok {
		return ID{}, loc, false
	}
	return x.packs[loc.pack], loc, true
}

func (x *index) has(id ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.blobs.get(id)
	return ok
}

// packIDs lists every pack the index knows.
func (x *index) packIDs() []ID {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return append([]ID(nil), x.packs...)
}

// Index file, before compression and sealing:
//
//	repeated: pack id (32) ‖ uint32 LE count ‖ count × header entry
type indexedPack struct {
	ID      ID
	Entries []PackedBlob
}

func encodeIndex(packs []indexedPack) []byte {
	var b []byte
	for _, p := range packs {
		b = append(b, p.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Entries)))
		for _, e := range p.Entries {
			b = appendEntry(b, e)
		}
	}
	return b
}

func decodeIndex(b []byte) ([]indexedPack, error) {
	var packs []indexedPack
	for len(b) > 0 {
		if len(b) < 36 {
			return nil, errors.New("index file is truncated")
		}
		var p indexedPack
		copy(p.ID[:], b)
		n := int(binary.LittleEndian.Uint32(b[32:]))
		b = b[36:]
		if n > len(b)/headerEntrySize {
			return nil, fmt.Errorf("index entry for pack %s is truncated", p.ID.Short())
		}
		p.Entries = make([]PackedBlob, n)
		for i := range n {
			p.Entries[i] = readEntry(b[i*headerEntrySize:])
		}
		b = b[n*headerEntrySize:]
		packs = append(packs, p)
	}
	return packs, nil
}
