package repository

import (
	"crypto/rand"
	"testing"
)

func TestBlobTable(t *testing.T) {
	var tab blobTable
	if _, ok := tab.get(ID{1}); ok {
		t.Fatal("empty table found an id")
	}
	ids := make([]ID, 20000)
	for i := range ids {
		rand.Read(ids[i][:])
		tab.add(ids[i], location{pack: uint32(i), offset: uint32(i * 7)})
	}
	// Ids that share their first 8 bytes (the probe start) stay apart.
	a, b := ids[0], ids[0]
	b[31] ^= 1
	tab.add(b, location{pack: 99999})
	tab.add(ids[1], location{pack: 12345}) // a duplicate keeps the first
	if tab.len() != len(ids)+1 {
		t.Errorf("len %d, want %d", tab.len(), len(ids)+1)
	}
	for i, id := range ids {
		loc, ok := tab.get(id)
		if !ok || loc.pack != uint32(i) || loc.offset != uint32(i*7) {
			t.Fatalf("get(%d) = %+v, %v", i, loc, ok)
		}
	}
	if loc, ok := tab.get(b); !ok || loc.pack != 99999 {
		t.Errorf("colliding id: %+v, %v", loc, ok)
	}
	if loc, _ := tab.get(a); loc.pack != 0 {
		t.Errorf("the colliding id overwrote the first: %+v", loc)
	}
	var absent ID
	rand.Read(absent[:])
	if _, ok := tab.get(absent); ok {
		t.Error("found an id never added")
	}
}
