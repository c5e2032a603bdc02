package repository

import "encoding/binary"

// blobTable maps blob ids to locations in about 60 bytes per blob, half of
// what a Go map of the same takes: a block-cut database of 2 GiB has
// 131,072 blobs, and the table is most of a backup's memory. Entries live
// in fixed-size chunks (no copying as it grows); an open-addressing table
// of 32-bit entry numbers finds them, probing linearly from the id's first
// bytes (ids are keyed hashes, so those are uniform). Nothing is ever
// removed: prune builds a new index. Not safe for concurrent use.
type blobTable struct {
	chunks [][]blobEntry
	n      int
	slots  []uint32 // entry number + 1; 0 is empty
}

type blobEntry struct {
	id  ID
	loc location
}

const blobChunk = 4096

func (t *blobTable) len() int { return t.n }

func (t *blobTable) entry(i uint32) *blobEntry { return &t.chunks[i/blobChunk][i%blobChunk] }

// find returns the slot that holds id, or the empty slot where it belongs.
func (t *blobTable) find(id ID) (slot int, found bool) {
	mask := len(t.slots) - 1
	for s := int(binary.LittleEndian.Uint64(id[:8])) & mask; ; s = (s + 1) & mask {
		e := t.slots[s]
		if e == 0 {
			return s, false
		}
		if t.entry(e-1).id == id {
			return s, true
		}
	}
}

func (t *blobTable) get(id ID) (location, bool) {
	if t.n == 0 {
		return location{}, false
	}
	s, ok := t.find(id)
	if !ok {
		return location{}, false
	}
	return t.entry(t.slots[s] - 1).loc, true
}

// add stores id's location unless id is there already (the first pack
// found for a blob stored twice wins).
func (t *blobTable) add(id ID, loc location) {
	if 4*(t.n+1) > 3*len(t.slots) {
		t.grow()
	}
	s, ok := t.find(id)
	if ok {
		return
	}
	if t.n%blobChunk == 0 {
		t.chunks = append(t.chunks, make([]blobEntry, 0, blobChunk))
	}
	last := &t.chunks[len(t.chunks)-1]
	*last = append(*last, blobEntry{id, loc})
	t.n++
	t.slots[s] = uint32(t.n)
}

// grow doubles the slots (load stays at most 3/4) and places every entry
// again.
func (t *blobTable) grow() {
	t.slots = make([]uint32, max(1024, 2*len(t.slots)))
	for i := range uint32(t.n) {
		s, _ := t.find(t.entry(i).id)
		t.slots[s] = i + 1
	}
}
