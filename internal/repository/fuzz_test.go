package repository

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/mem"
)

// The fuzz targets feed malformed objects to every decoder of the
// repository: nothing may panic, hang or allocate without bound, and each
// failure is an error. Sealed objects are fuzzed by their plaintext, sealed
// with the repository's key, so the fuzzer reaches the decoders behind the
// authentication. CI fuzzes each for a few seconds (scripts/test.sh);
// testdata/fuzz holds the seeds and anything found.

// fuzzRepo is a repository with one backup, reused by every input.
func fuzzRepo(f *testing.F) (*Repository, *mem.Backend) {
	be := mem.New()
	r, err := Init(f.Context(), be, "secret", Options{KDF: fastKDF})
	if err != nil {
		f.Fatal(err)
	}
	id, _, err := r.SaveBlob(f.Context(), DataBlob, []byte("content"))
	if err != nil {
		f.Fatal(err)
	}
	tid, _, err := r.SaveTree(f.Context(), &Tree{Nodes: []Node{{Name: "f", Type: NodeFile, Size: 7, Content: []ID{id}}}})
	if err != nil {
		f.Fatal(err)
	}
	if err := r.Flush(f.Context()); err != nil {
		f.Fatal(err)
	}
	if _, err := r.SaveManifest(f.Context(), &Manifest{Tree: tid, Time: time.Unix(0, 0)}); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	return r, be
}

// put replaces every file of type t with one holding data.
func put(be *mem.Backend, t backend.Type, name string, data []byte) {
	for h := range be.Files() {
		if h.Type == t {
			_ = be.Remove(context.Background(), h)
		}
	}
	be.Put(backend.Handle{Type: t, Name: name}, data)
}

// sealedFile is what saveSealed stores for plain (not compressed).
func sealedFile(r *Repository, plain []byte) []byte {
	data, err := seal(r.key.Encrypt, []byte{0}, plain)
	if err != nil {
		panic(err)
	}
	return data
}

func filesOf(be *mem.Backend, t backend.Type) [][]byte {
	var out [][]byte
	for h, d := range be.Files() {
		if h.Type == t {
			out = append(out, d)
		}
	}
	return out
}

func FuzzIndex(f *testing.F) {
	r, be := fuzzRepo(f)
	for _, d := range filesOf(be, backend.TypeIndex) {
		plain, err := r.loadSealed(f.Context(), backend.TypeIndex, hashID(d))
		if err == nil {
			f.Add(plain)
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, plain []byte) {
		packs, err := decodeIndex(plain)
		if err == nil && !bytes.Equal(encodeIndex(packs), plain) {
			t.Errorf("index decodes, but encodes differently")
		}
		data := sealedFile(r, plain)
		put(be, backend.TypeIndex, hashID(data).String(), data)
		_ = r.loadIndex(t.Context())
	})
}

func FuzzPackHeader(f *testing.F) {
	r, be := fuzzRepo(f)
	for _, d := range filesOf(be, backend.TypePack) {
		f.Add(d, false)
	}
	hdr := appendEntry(nil, PackedBlob{Type: DataBlob, Length: 40, RawLen: 7})
	f.Add(hdr, true)
	f.Fuzz(func(t *testing.T, b []byte, sealIt bool) {
		tail := b
		if sealIt { // b is the header's plaintext
			sealed, err := seal(r.key.Encrypt, nil, b)
			if err != nil {
				t.Fatal(err)
			}
			tail = binary.LittleEndian.AppendUint32(sealed, uint32(len(sealed)))
		}
		entries, err := readPackHeader(r.key.Encrypt, tail, int64(len(tail)))
		if err == nil && len(entries)*headerEntrySize != len(b) && sealIt {
			t.Errorf("%d entries from a %d-byte header", len(entries), len(b))
		}
		// A pack whose content does not match its name, or whose
		// blobs lie beyond it, is reported by check.
		id := hashID(tail)
		put(be, backend.TypePack, id.String(), tail)
		_ = r.checkPack(t.Context(), id, int64(len(tail)))
	})
}

// FuzzBlob: an index entry with any flags and lengths, over any payload.
func FuzzBlob(f *testing.F) {
	r, be := fuzzRepo(f)
	f.Add(uint8(flagLZ4), uint32(100), []byte("\x1fhello"), true)
	f.Add(uint8(flagZstd), uint32(1<<31), []byte{0x28, 0xb5, 0x2f, 0xfd}, true)
	f.Add(uint8(0), uint32(5), []byte("hello"), false)
	f.Fuzz(func(t *testing.T, flags uint8, rawLen uint32, payload []byte, sealIt bool) {
		data := payload
		if sealIt {
			var err error
			if data, err = seal(r.key.Encrypt, nil, payload); err != nil {
				t.Fatal(err)
			}
		}
		pack := hashID(data)
		put(be, backend.TypePack, pack.String(), data)
		id := ID{1}
		r.idx = newIndex()
		r.idx.addPack(pack, []PackedBlob{{Type: DataBlob, Flags: flags, ID: id, Length: uint32(len(data)), RawLen: rawLen}})
		if _, err := r.LoadBlob(t.Context(), id); err == nil {
			t.Error("a blob that cannot match its id loaded")
		}
		_ = r.LoadBlobs(t.Context(), []ID{id}, func(ID, []byte) error { return nil })
	})
}

func FuzzTree(f *testing.F) {
	r, _ := fuzzRepo(f)
	f.Add([]byte(`{"nodes":[{"name":"f","type":"file","size":7,"content":["` + ID{}.String() + `"]}]}`))
	f.Add([]byte(`{"nodes":[{"name":{"b64":"/w=="},"type":"dir","subtree":"00"}]}`))
	f.Fuzz(func(t *testing.T, plain []byte) {
		id, _, err := r.SaveBlob(t.Context(), TreeBlob, plain)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		tree, err := r.LoadTree(t.Context(), id)
		if err != nil {
			return
		}
		for i := range tree.Nodes {
			_ = r.ContentParts(t.Context(), &tree.Nodes[i], func([]ID) error { return nil })
			tree.Find(string(tree.Nodes[i].Name))
		}
	})
}

func FuzzContentList(f *testing.F) {
	r, _ := fuzzRepo(f)
	f.Add(make([]byte, 64))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, plain []byte) {
		id, _, err := r.SaveBlob(t.Context(), ListBlob, plain)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		n := Node{Type: NodeFile, ContentLists: []ID{id}}
		err = r.ContentParts(t.Context(), &n, func(part []ID) error {
			if len(part)*len(ID{}) != len(plain) {
				t.Errorf("%d ids from a list of %d bytes", len(part), len(plain))
			}
			return nil
		})
		if err == nil && (len(plain) == 0 || len(plain)%len(ID{}) != 0) {
			t.Errorf("a list of %d bytes is taken for ids", len(plain))
		}
	})
}

func FuzzManifest(f *testing.F) {
	r, be := fuzzRepo(f)
	for _, d := range filesOf(be, backend.TypeManifest) {
		if plain, err := r.loadSealed(f.Context(), backend.TypeManifest, hashID(d)); err == nil {
			f.Add(plain)
		}
	}
	f.Fuzz(func(t *testing.T, plain []byte) {
		data := sealedFile(r, plain)
		put(be, backend.TypeManifest, hashID(data).String(), data)
		if all, err := r.Manifests(t.Context()); err == nil {
			for _, m := range all {
				_, _ = r.LoadTree(t.Context(), m.Tree)
			}
		}
		_, _ = r.FindManifest(t.Context(), "latest")
	})
}

func FuzzMark(f *testing.F) {
	r, be := fuzzRepo(f)
	m, _ := json.Marshal(mark{Settled: true, Locks: []string{"s-1"}, Index: encodeIndex([]indexedPack{{ID: ID{2}, Entries: []PackedBlob{{ID: ID{3}}}}})})
	f.Add(m)
	f.Add([]byte(`{"index":"AAAA"}`))
	f.Fuzz(func(t *testing.T, plain []byte) {
		data := sealedFile(r, plain)
		put(be, backend.TypeMark, hashID(data).String(), data)
		_ = r.loadIndex(t.Context())
		_, _ = r.Check(t.Context(), false, nil)
	})
}

func FuzzLock(f *testing.F) {
	r, be := fuzzRepo(f)
	l, _ := json.Marshal(lockInfo{Exclusive: true, Host: "h", PID: 1, Time: time.Unix(0, 0), Purpose: "prune"})
	f.Add(l, "x-1")
	f.Add([]byte(`{"pid":-1}`), "1")
	f.Fuzz(func(t *testing.T, plain []byte, name string) {
		h := backend.Handle{Type: backend.TypeLock, Name: name}
		if h.Valid() != nil {
			return
		}
		data, err := seal(r.key.Encrypt, nil, plain)
		if err != nil {
			t.Fatal(err)
		}
		put(be, backend.TypeLock, name, data)
		_, _ = r.readLock(t.Context(), h)
		_ = r.checkLocks(t.Context(), true, "", "h")
		_, _ = r.liveLocks(t.Context(), "")
	})
}

func FuzzKeyFile(f *testing.F) {
	_, be := fuzzRepo(f)
	for h, d := range be.Files() {
		if h.Type == backend.TypeKey {
			f.Add(d, h.Name)
		}
	}
	f.Add([]byte(`{"kdf":"argon2id","params":{"time":1,"memory_kib":64,"threads":0}}`), "k")
	f.Add([]byte(`{"kdf":"argon2id","params":{"time":4294967295,"memory_kib":4294967295,"threads":255}}`), "abcdefgh")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		keys := be.Clone()
		h := backend.Handle{Type: backend.TypeKey, Name: name}
		if h.Valid() != nil {
			return
		}
		var kf keyFile
		if json.Unmarshal(data, &kf) == nil && kf.Params.valid() == nil && uint64(kf.Params.Time)*uint64(kf.Params.Memory) > 1<<16 {
			return // valid, and too slow to derive for a fuzzer
		}
		put(keys, backend.TypeKey, name, data)
		if r, err := Open(t.Context(), keys, "secret"); err == nil {
			r.Close()
		}
	})
}

func FuzzRepoConfig(f *testing.F) {
	_, be := fuzzRepo(f)
	for h, d := range be.Files() {
		if h.Type == backend.TypeConfig {
			f.Add(d)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := be.Clone()
		c.Put(configHandle, data)
		if r, err := OpenWAL(t.Context(), c, "secret"); err == nil {
			r.Close()
		}
	})
}

func FuzzWAL(f *testing.F) {
	r, be := fuzzRepo(f)
	const name = "000000010000000000000001"
	if err := r.SaveWAL(f.Context(), name, []byte("wal")); err != nil {
		f.Fatal(err)
	}
	for h, d := range be.Files() {
		if h.Type == backend.TypeWAL {
			if plain, err := open(r.key.Encrypt, nil, d[1:]); err == nil {
				f.Add(plain)
			}
		}
	}
	f.Fuzz(func(t *testing.T, plain []byte) {
		sealed, err := seal(r.key.Encrypt, []byte{0}, plain)
		if err != nil {
			t.Fatal(err)
		}
		put(be, backend.TypeWAL, name, sealed)
		_, _ = r.LoadWAL(t.Context(), name)
	})
}
