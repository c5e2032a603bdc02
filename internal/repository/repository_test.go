package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/mem"
)

// fastKDF keeps tests quick; the real costs are tested by the CLI.
var fastKDF = KDFParams{Time: 1, Memory: 64, Threads: 1}

func newRepo(t *testing.T) (*Repository, *mem.Backend) {
	t.Helper()
	be := mem.New()
	r, err := Init(t.Context(), be, "secret", Options{KDF: fastKDF})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, be
}

func reopen(t *testing.T, be backend.Backend, password string) *Repository {
	t.Helper()
	r, err := Open(t.Context(), be, password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBlobRoundTripAndDedupe(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	blobs := [][]byte{random(t, 1<<20), bytes.Repeat([]byte("compressible "), 10000), {}, random(t, 10)}
	var ids []ID
	for _, b := range blobs {
		id, added, err := r.SaveBlob(ctx, DataBlob, b)
		if err != nil {
			t.Fatal(err)
		}
		if added == 0 {
			t.Errorf("first save of a %d-byte blob added nothing", len(b))
		}
		ids = append(ids, id)
		if _, again, _ := r.SaveBlob(ctx, DataBlob, b); again != 0 {
			t.Errorf("second save of the same blob added %d bytes", again)
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be, "secret")
	for i, id := range ids {
		got, err := r2.LoadBlob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, blobs[i]) {
			t.Errorf("blob %d: got %d bytes back, want %d equal", i, len(got), len(blobs[i]))
		}
		if _, added, _ := r2.SaveBlob(ctx, DataBlob, blobs[i]); added != 0 {
			t.Errorf("blob %d stored again after reopen", i)
		}
	}
	// Compression paid for the compressible blob.
	var total int
	for h, data := range be.Files() {
		if h.Type == backend.TypePack {
			total += len(data)
		}
	}
	if want := 1<<20 + 130000; total > want {
		t.Errorf("packs hold %d bytes; want under %d (the repetitive blob compressed)", total, want)
	}
}

func TestWrongPassword(t *testing.T) {
	_, be := newRepo(t)
	if _, err := Open(t.Context(), be, "guess"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("got %v, want ErrWrongPassword", err)
	}
}

func TestKeys(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	r.kdf = fastKDF
	name, err := r.AddKey(ctx, "second")
	if err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be, "second")
	if r2.keyName != name {
		t.Errorf("opened with key %s, want %s", r2.keyName, name)
	}
	keys, err := r2.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys: %v, %v", keys, err)
	}
	if err := r2.RemoveKey(ctx, name[:8]); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("removing the key in use: got %v", err)
	}
	if err := r2.RemoveKey(ctx, r.keyName[:8]); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, be, "secret"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("removed key still opens: %v", err)
	}
}

func TestNoPlaintextStored(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	secret := []byte("the-launch-codes-are-0000-and-this-is-long-enough")
	id, _, err := r.SaveBlob(ctx, DataBlob, bytes.Repeat(secret, 100))
	if err != nil {
		t.Fatal(err)
	}
	tree := &Tree{Nodes: []Node{{Name: "secret-file-name.txt", Type: NodeFile, Content: []ID{id}}}}
	tid, _, err := r.SaveTree(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveManifest(ctx, &Manifest{Host: "h", Paths: []string{"/secret-dir-name"}, Tree: tid}); err != nil {
		t.Fatal(err)
	}
	for h, data := range be.Files() {
		for _, needle := range []string{"launch-codes", "secret-file-name", "secret-dir-name"} {
			if bytes.Contains(data, []byte(needle)) {
				t.Errorf("%s holds %q in plaintext", h, needle)
			}
		}
	}
}

func TestDamageDetected(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	id, _, err := r.SaveBlob(ctx, DataBlob, random(t, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for h, data := range be.Files() {
		if h.Type == backend.TypePack {
			bad := bytes.Clone(data)
			bad[100] ^= 1
			be.Put(h, bad)
		}
	}
	if _, err := reopen(t, be, "secret").LoadBlob(ctx, id); !errors.Is(err, ErrAuth) {
		t.Errorf("flipped byte: got %v, want ErrAuth", err)
	}
}

func TestTreeNamesAnyBytes(t *testing.T) {
	r, _ := newRepo(t)
	ctx := t.Context()
	names := []Name{"plain", "ünïcode", "bad\xff\xfeutf8", "new\nline", "tab\tand \"quotes\""}
	tree := &Tree{}
	for _, n := range names {
		tree.Nodes = append(tree.Nodes, Node{Name: n, Type: NodeSymlink, Target: n + "/target"})
	}
	id, _, err := r.SaveTree(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.LoadTree(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tree, got); diff != "" {
		t.Errorf("tree round trip (-want +got):\n%s", diff)
	}
	for _, n := range names {
		if node := got.Find(string(n)); node == nil || node.Target != n+"/target" {
			t.Errorf("Find(%q) = %+v", n, node)
		}
	}
}

func TestManifests(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	var ids []ID
	for _, host := range []string{"a", "b"} {
		id, err := r.SaveManifest(ctx, &Manifest{Host: host})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	all, err := r.Manifests(ctx)
	if err != nil || len(all) != 2 {
		t.Fatalf("manifests: %v, %v", all, err)
	}
	e, err := r.FindManifest(ctx, ids[1].String()[:10])
	if err != nil || e.Host != "b" {
		t.Errorf("find by prefix: %+v, %v", e, err)
	}
	if _, err := r.FindManifest(ctx, "zz"); err == nil {
		t.Error("unknown prefix found a backup")
	}
}

func TestInitRefusesExisting(t *testing.T) {
	_, be := newRepo(t)
	if _, err := Init(t.Context(), be, "x", Options{KDF: fastKDF}); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("second init: %v", err)
	}
}

func TestCheckFindsDamageAndAffectedBackups(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	save := func(content []byte) ID {
		id, _, err := r.SaveBlob(ctx, DataBlob, content)
		if err != nil {
			t.Fatal(err)
		}
		tid, _, err := r.SaveTree(ctx, &Tree{Nodes: []Node{{Name: "f", Type: NodeFile, Size: int64(len(content)), Content: []ID{id}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Flush(ctx); err != nil { // one pack per backup
			t.Fatal(err)
		}
		mid, err := r.SaveManifest(ctx, &Manifest{Tree: tid})
		if err != nil {
			t.Fatal(err)
		}
		return mid
	}
	good, bad := save(random(t, 1000)), save(random(t, 1000))
	rep, err := reopen(t, be, "secret").Check(ctx, true, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("clean repository: %+v, %v", rep, err)
	}
	// Damage the data pack of the second backup.
	m, _ := r.LoadManifest(ctx, bad)
	tree, _ := reopen(t, be, "secret").LoadTree(ctx, m.Tree)
	pack, _, _ := r.idx.lookup(tree.Nodes[0].Content[0])
	h := backend.Handle{Type: backend.TypePack, Name: pack.String()}
	data := bytes.Clone(be.Files()[h])
	data[10] ^= 0x80
	be.Put(h, data)

	r2 := reopen(t, be, "secret")
	rep, err = r2.Check(ctx, false, nil)
	if err != nil || !rep.OK() {
		t.Errorf("without --read-data a flipped byte in file content is not seen: %+v, %v", rep, err)
	}
	rep, err = r2.Check(ctx, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.AffectedBackups) != 1 || rep.AffectedBackups[0] != bad {
		t.Fatalf("check --read-data: %+v; want an error naming backup %s only", rep, bad.Short())
	}
	// The other backup still reads.
	gm, err := r2.LoadManifest(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	gt, err := r2.LoadTree(ctx, gm.Tree)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.LoadBlob(ctx, gt.Nodes[0].Content[0]); err != nil {
		t.Errorf("undamaged backup: %v", err)
	}
}

// TestCompressionSettings: with "fast" small blobs (database blocks) use
// LZ4 and larger ones zstd; with "auto" and "max" every blob uses zstd,
// and the small ones take less room than LZ4's; incompressible ones are
// stored as they are; a repository made before the setting existed
// writes as "fast"; all come back intact, and an unknown setting is
// refused.
func TestCompressionSettings(t *testing.T) {
	ctx := t.Context()
	text := []byte{}
	for i := 0; len(text) < 2<<20; i++ {
		text = fmt.Appendf(text, "row %d, balance %d, name %s; ", i, i*7919%100000, []string{"alice", "bob", "carol"}[i%3])
	}
	block := text[:16<<10]
	sizes := map[string]int{}
	for _, setting := range []string{CompressionFast, CompressionAuto, CompressionMax, ""} {
		name := setting
		if name == "" {
			name = "unset"
		}
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Compression = setting
			be := mem.New()
			r, err := Init(ctx, be, "secret", Options{Config: cfg, KDF: fastKDF})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			small := uint8(flagZstd)
			if setting == CompressionFast || setting == "" {
				small = flagLZ4
			}
			tests := []struct {
				data []byte
				flag uint8
			}{
				{block, small},
				{text[:lz4Max], small},
				{text[:lz4Max+1], flagZstd},
				{text[:1<<20], flagZstd},
				{random(t, 16<<10), 0},
			}
			for _, tt := range tests {
				id, _, err := r.SaveBlob(ctx, DataBlob, tt.data)
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				r2 := reopen(t, be, "secret")
				_, loc, _ := r2.idx.lookup(id)
				if loc.flags != tt.flag {
					t.Errorf("%d-byte blob stored with flags %d, want %d", len(tt.data), loc.flags, tt.flag)
				}
				if len(tt.data) == len(block) && tt.flag != 0 {
					sizes[setting] = int(loc.length)
				}
				got, err := r2.LoadBlob(ctx, id)
				if err != nil || !bytes.Equal(got, tt.data) {
					t.Errorf("%d-byte blob: got %d bytes back (%v), want it intact", len(tt.data), len(got), err)
				}
			}
		})
	}
	if !(sizes[CompressionAuto] < sizes[CompressionFast] && sizes[CompressionMax] <= sizes[CompressionAuto]) {
		t.Errorf("a 16 KiB block of rows took %v bytes by setting; want max ≤ auto < fast", sizes)
	}
	cfg := DefaultConfig()
	cfg.Compression = "brotli"
	if _, err := Init(ctx, mem.New(), "secret", Options{Config: cfg, KDF: fastKDF}); err == nil || !strings.Contains(err.Error(), "auto, fast, max") {
		t.Errorf("compression brotli: %v; want refused, naming the settings", err)
	}
}

// TestIndexWrittenAsItGoes: a backup of many blobs writes index files
// before Flush, so memory does not hold every entry; all stay findable.
func TestIndexWrittenAsItGoes(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	var ids []ID
	data := random(t, 1024+indexFileBlobs*2)
	const n = indexFileBlobs * 3 / 2 // about three 16 MiB packs
	for i := range n {
		id, _, err := r.SaveBlob(ctx, DataBlob, data[i:i+1024])
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	r.uploads.Wait()
	indexFiles := func() int {
		n := 0
		for h := range be.Files() {
			if h.Type == backend.TypeIndex {
				n++
			}
		}
		return n
	}
	if n := indexFiles(); n == 0 {
		t.Errorf("no index file before Flush after %d blobs", n)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be, "secret")
	for _, id := range ids {
		if !r2.HasBlob(id) {
			t.Fatalf("blob %s lost from the index", id.Short())
		}
	}
}

// deniedKeys is a store where some key files cannot be read by this user
// (root-only, beside the one made for wal-push); they are listed first.
type deniedKeys struct {
	backend.Backend
	deny map[string]bool
}

func (d deniedKeys) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	var first, rest []backend.FileInfo
	err := d.Backend.List(ctx, t, func(fi backend.FileInfo) error {
		if d.deny[fi.Name] {
			first = append(first, fi)
		} else {
			rest = append(rest, fi)
		}
		return nil
	})
	for _, fi := range append(first, rest...) {
		if err := fn(fi); err != nil {
			return err
		}
	}
	return err
}

func (d deniedKeys) Load(ctx context.Context, h backend.Handle, off, n int64) (io.ReadCloser, error) {
	if h.Type == backend.TypeKey && d.deny[h.Name] {
		return nil, &fs.PathError{Op: "open", Path: h.String(), Err: fs.ErrPermission}
	}
	return d.Backend.Load(ctx, h, off, n)
}

// TestUnreadableKeysAreSkipped: a key file this user cannot read does not
// stop it opening the repository with a key it can (issue 11: wal-push
// aborted on root's key and WAL archiving stopped silently).
func TestUnreadableKeysAreSkipped(t *testing.T) {
	r, be := newRepo(t)
	r.kdf = fastKDF
	readable, err := r.AddKey(t.Context(), "wal")
	if err != nil {
		t.Fatal(err)
	}
	deny := map[string]bool{}
	for h := range be.Files() {
		if h.Type == backend.TypeKey && h.Name != readable {
			deny[h.Name] = true
		}
	}
	if _, err := OpenWAL(t.Context(), deniedKeys{be, deny}, "wal"); err != nil {
		t.Errorf("open with the one readable key: %v", err)
	}
	_, err = OpenWAL(t.Context(), deniedKeys{be, deny}, "secret")
	if !errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("open with the password of an unreadable key: %v; want wrong password, naming the unreadable keys", err)
	}
}
