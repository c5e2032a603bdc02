package restore_test

import (
	"os"

	"github.com/google/go-cmp/cmp"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/testenv"
)

func newRepo(t *testing.T) *repository.Repository {
	t.Helper()
	r, err := repository.Init(t.Context(), mem.New(), "pw", repository.Options{KDF: repository.KDFParams{Time: 1, Memory: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func backup(t *testing.T, repo *repository.Repository, parent *repository.ID, paths ...string) archive.Result {
	t.Helper()
	var srcs []archive.Source
	for _, p := range paths {
		srcs = append(srcs, archive.Source{Path: p})
	}
	res, err := archive.Run(t.Context(), repo, srcs, archive.Options{Parent: parent})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	testenv.MakeTree(t, src)
	repo := newRepo(t)
	res := backup(t, repo, nil, src)
	if len(res.Warnings) != 0 {
		t.Errorf("warnings: %v", res.Warnings)
	}
	target := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, src, filepath.Join(target, src))
}

func TestUnchangedFilesAreNotRead(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	testenv.MakeTree(t, src)
	repo := newRepo(t)
	first := backup(t, repo, nil, src)
	second := backup(t, repo, &first.Tree, src)
	if second.Stats.BytesRead != 0 || second.Stats.FilesChanged != 0 {
		t.Errorf("unchanged tree: read %d bytes of %d changed files; want none", second.Stats.BytesRead, second.Stats.FilesChanged)
	}
	if second.Stats.BytesAdded > first.Stats.Bytes/100 {
		t.Errorf("unchanged tree added %d bytes; want under 1%% of %d", second.Stats.BytesAdded, first.Stats.Bytes)
	}
	// blobs_added counts what was stored (issue 11: always 0).
	if first.Stats.BlobsAdded == 0 || second.Stats.BlobsAdded >= first.Stats.BlobsAdded {
		t.Errorf("blobs added: %d by the first backup, %d by the unchanged second; want some, then fewer", first.Stats.BlobsAdded, second.Stats.BlobsAdded)
	}
	// The roots may differ: they hold the metadata of the source's parent
	// directories (/tmp changes whenever anything on the machine makes a
	// temporary file). The source's own tree must not.
	a, b := subtreeAt(t, repo, first.Tree, src), subtreeAt(t, repo, second.Tree, src)
	if a != b {
		t.Errorf("unchanged tree got a new subtree %s, want %s", b.Short(), a.Short())
		diffTrees(t, repo, a, b, src)
	}
}

// subtreeAt follows path from root to its directory's tree.
func subtreeAt(t *testing.T, repo *repository.Repository, root repository.ID, path string) repository.ID {
	t.Helper()
	id := root
	for _, name := range strings.Split(strings.Trim(path, "/"), "/") {
		tree, err := repo.LoadTree(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		n := tree.Find(name)
		if n == nil || n.Subtree == nil {
			t.Fatalf("%s: no directory %q in the backup", path, name)
		}
		id = *n.Subtree
	}
	return id
}

// diffTrees reports, node by node, how two trees of the same paths differ.
func diffTrees(t *testing.T, repo *repository.Repository, a, b repository.ID, path string) {
	t.Helper()
	ta, err1 := repo.LoadTree(t.Context(), a)
	tb, err2 := repo.LoadTree(t.Context(), b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if len(ta.Nodes) != len(tb.Nodes) {
		t.Errorf("%s: %d entries, then %d", path, len(ta.Nodes), len(tb.Nodes))
		return
	}
	for i := range ta.Nodes {
		na, nb := ta.Nodes[i], tb.Nodes[i]
		p := path + "/" + string(na.Name)
		if na.Subtree != nil && nb.Subtree != nil && *na.Subtree != *nb.Subtree {
			diffTrees(t, repo, *na.Subtree, *nb.Subtree, p)
		}
		na.Subtree, nb.Subtree = nil, nil
		if d := cmp.Diff(na, nb); d != "" {
			t.Errorf("%s (-first +second):\n%s", p, d)
		}
	}
}

// After 1% of a block-like file's 8 KiB pages change in place, the next
// backup adds about that much: only the blocks holding them.
func TestBlockFileIncremental(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "base.db")
	const size = 64 << 20
	if err := os.WriteFile(db, testenv.Random(t, size), 0o600); err != nil {
		t.Fatal(err)
	}
	repo := newRepo(t)
	first := backup(t, repo, nil, dir)
	f, err := os.OpenFile(db, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	const pageSize = 8192
	changed := 0
	for range size / pageSize / 100 {
		page := testenv.RandomInt(size / pageSize)
		if _, err := f.WriteAt(testenv.Random(t, pageSize), page*pageSize); err != nil {
			t.Fatal(err)
		}
		changed += pageSize
	}
	f.Close()
	second := backup(t, repo, &first.Tree, dir)
	ratio := float64(second.Stats.BytesAdded) / float64(changed)
	t.Logf("changed %d bytes in place; the backup added %d (%.2f×)", changed, second.Stats.BytesAdded, ratio)
	if ratio > 3 {
		t.Errorf("backup after 1%% page changes added %.2f× the changed bytes; want at most 3×", ratio)
	}
	target := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, second.Tree, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, dir, filepath.Join(target, dir))
}

func TestUnreadableFileIsAWarning(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file; unreadable files are tested through the CLI as another user")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	res := backup(t, newRepo(t), nil, dir)
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "secret") {
		t.Errorf("warnings: %v", res.Warnings)
	}
}

func TestInclude(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	testenv.MakeTree(t, src)
	repo := newRepo(t)
	res := backup(t, repo, nil, src)
	target := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{Include: []string{filepath.Join(src, "sub")}}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, filepath.Join(src, "sub"), filepath.Join(target, src, "sub"))
	if _, err := os.Lstat(filepath.Join(target, src, "random.bin")); !os.IsNotExist(err) {
		t.Errorf("a file outside --include was restored (%v)", err)
	}
}

func TestRestoreNeverOverwrites(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("backed up"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := newRepo(t)
	res := backup(t, repo, nil, src)
	target := t.TempDir()
	live := filepath.Join(target, src, "f")
	if err := os.MkdirAll(filepath.Dir(live), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{})
	if err == nil || !strings.Contains(err.Error(), "never overwrites") {
		t.Fatalf("restore over an existing file: got %v, want a refusal naming the fix", err)
	}
	if b, _ := os.ReadFile(live); string(b) != "precious" {
		t.Errorf("the existing file now holds %q", b)
	}
}

// TestLargeFileContentLists: a block file of more than 8192 blocks keeps
// its ids in two content lists; it restores byte for byte (holes too),
// check finds every chunk, and an unchanged second backup reuses the lists.
func TestLargeFileContentLists(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "big.db"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 130 << 20 // 8320 blocks of 16 KiB: two lists
	for _, off := range []int64{0, 64 << 20, 128<<20 - 4096, size - 100} {
		block := testenv.Random(t, 8192)
		if _, err := f.WriteAt(block[:min(8192, int(size-off))], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	repo := newRepo(t)
	first := backup(t, repo, nil, src)
	tree, err := repo.LoadTree(t.Context(), subtreeAt(t, repo, first.Tree, src))
	if err != nil {
		t.Fatal(err)
	}
	n := tree.Find("big.db")
	if n == nil || len(n.ContentLists) != 2 || n.Content != nil {
		t.Fatalf("big.db node %+v: want two content lists and no inline content", n)
	}
	target := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, first.Tree, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, src, filepath.Join(target, src))
	rep, err := repo.Check(t.Context(), true, nil)
	if err != nil || len(rep.Errors) != 0 {
		t.Fatalf("check: %+v, %v", rep, err)
	}
	second := backup(t, repo, &first.Tree, src)
	if second.Stats.BytesRead != 0 || second.Stats.BytesAdded > 64<<10 {
		t.Errorf("unchanged large file: read %d, added %d bytes; want nothing read, almost nothing added", second.Stats.BytesRead, second.Stats.BytesAdded)
	}
	// Prune keeps what the lists reference: the backup still restores.
	if _, err := repo.SaveManifest(t.Context(), &repository.Manifest{Tree: second.Tree, Paths: []string{src}}); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Prune(t.Context(), repository.PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	again := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, second.Tree, again, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, src, filepath.Join(again, src))
}

func TestExclude(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	for _, p := range []string{"keep/a", "skip/b", "keep/tmp/c"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo := newRepo(t)
	exclude := func(p string) bool { return p == filepath.Join(src, "skip") || p == filepath.Join(src, "keep/tmp/c") }
	res, err := archive.Run(t.Context(), repo, []archive.Source{{Path: src}}, archive.Options{Exclude: exclude})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"keep/a": true, "skip": false, "keep/tmp": true, "keep/tmp/c": false} {
		_, err := os.Lstat(filepath.Join(target, src, p))
		if got := err == nil; got != want {
			t.Errorf("%s restored: %v, want %v", p, got, want)
		}
	}
}

// TestSourceBelowALink: a source reached through a symbolic link to a
// directory is stored and restored, not lost behind the link.
func TestSourceBelowALink(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "real", "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "real", "data", "f"), []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "real"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(root, "link", "data")
	repo := newRepo(t)
	res := backup(t, repo, nil, src)
	target := t.TempDir()
	stats, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(target, src, "f")); err != nil || string(b) != "content" || stats.Files != 1 {
		t.Errorf("restored %d files; %s: %q, %v", stats.Files, filepath.Join(target, src, "f"), b, err)
	}
}

// TestIncludeKeepsDirectoriesAbove: restoring one directory (a writer's
// component) under a new target brings the directories above it back with
// their backed-up mode and owner, as a database's own user needs to reach
// its data directory; directories that existed already keep theirs.
func TestIncludeKeepsDirectoriesAbove(t *testing.T) {
	testenv.NeedRoot(t)
	top := t.TempDir()
	above := filepath.Join(top, "srv", "pg")
	data := filepath.Join(above, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{filepath.Join(top, "srv"): 0o751, above: 0o750, data: 0o700} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 4242, 4343); err != nil {
			t.Fatal(err)
		}
	}
	repo := newRepo(t)
	res := backup(t, repo, nil, data)
	target := filepath.Join(t.TempDir(), "copy")
	if err := os.MkdirAll(filepath.Join(target, top), 0o700); err != nil { // there already: left alone
		t.Fatal(err)
	}
	if _, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{Include: []string{data}}); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{filepath.Join(top, "srv"): 0o751, above: 0o750, data: 0o700} {
		fi, err := os.Stat(filepath.Join(target, p))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || st.Uid != 4242 || st.Gid != 4343 {
			t.Errorf("%s restored under the target: mode %v owner %d:%d, want %v 4242:4343 as backed up", p, fi.Mode().Perm(), st.Uid, st.Gid, mode)
		}
	}
	if fi, err := os.Stat(filepath.Join(target, top)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("a directory that was there before the restore: got %v (%v), want it left 0700", fi.Mode().Perm(), err)
	}
}

// TestRestoreIsFlushed: a restore flushes every filesystem it wrote to
// (here the target's and a tmpfs mounted below it) before it returns, and a
// failed flush fails it: an application started on the files must not lose
// them to a power cut.
func TestRestoreIsFlushed(t *testing.T) {
	testenv.NeedRoot(t)
	src := filepath.Join(t.TempDir(), "data")
	for _, d := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, d, "f"), []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo := newRepo(t)
	res := backup(t, repo, nil, src)

	target := t.TempDir()
	mnt := filepath.Join(target, src, "b")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	flushed := map[uint64]bool{}
	real := *restore.SyncFS
	defer func() { *restore.SyncFS = real }()
	*restore.SyncFS = func(fd int) error {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return err
		}
		flushed[st.Dev] = true
		return real(fd)
	}
	if _, err := restore.Run(t.Context(), repo, res.Tree, target, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	testenv.CompareTrees(t, src, filepath.Join(target, src))
	for _, dir := range []string{target, mnt} {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		if !flushed[st.Dev] {
			t.Errorf("the filesystem of %s was not flushed", dir)
		}
	}

	*restore.SyncFS = func(int) error { return syscall.EIO }
	if _, err := restore.Run(t.Context(), repo, res.Tree, t.TempDir(), restore.Options{}); err == nil || !strings.Contains(err.Error(), "not durable") {
		t.Errorf("restore whose flush fails: %v; want an error saying it is not durable", err)
	}
}
