package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/testenv"
	"golang.org/x/sys/unix"
)

// Repositories written by earlier versions of umbra, one per format
// version, committed under testdata/ at the top of the project: each holds
// two backups of fixtureTree (stages 1 and 2) made from fixtureSource.
// UMBRA_WRITE_FIXTURE=1 writes the current format's if it is missing:
//
//	UMBRA_WRITE_FIXTURE=1 go test ./internal/cli -run TestFormatFixtures
const (
	fixtureDir      = "../../testdata/repository-format"
	fixtureSource   = "/tmp/umbra-format-fixture/tree"
	fixturePassword = "umbra format fixture"
)

// TestFormatFixtures: every committed repository of an older or the
// current format opens with today's code, checks clean reading every
// byte, restores both its backups exactly, and takes a new backup that
// checks clean too.
func TestFormatFixtures(t *testing.T) {
	current := filepath.Join(fixtureDir, fmt.Sprintf("v%d", repository.FormatVersion))
	if os.Getenv("UMBRA_WRITE_FIXTURE") == "1" {
		if _, err := os.Stat(current); err == nil {
			t.Fatalf("%s exists: a fixture, once committed, is never rewritten", current)
		}
		writeFormatFixture(t, current)
	}
	dirs, err := filepath.Glob(filepath.Join(fixtureDir, "v*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no repository fixtures under %s (%v)", fixtureDir, err)
	}
	if !slices.Contains(dirs, current) {
		t.Errorf("no fixture of the current format %d: write it with UMBRA_WRITE_FIXTURE=1 (see format_test.go) and commit it", repository.FormatVersion)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			repo := testRepo{loc: filepath.Join(t.TempDir(), "repo")}
			if err := os.CopyFS(repo.loc, os.DirFS(dir)); err != nil {
				t.Fatal(err)
			}
			env := []string{"UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD=" + fixturePassword}
			run := func(args ...string) result {
				t.Helper()
				res := umbraRun(t, t.TempDir(), env, args...)
				if res.code != 0 {
					t.Fatalf("umbra %v on the %s fixture: exit %d\n%s%s", args, filepath.Base(dir), res.code, res.stdout, res.stderr)
				}
				return res
			}
			run("check", "--read-data")
			var list []struct {
				ID   string    `json:"id"`
				Time time.Time `json:"time"`
			}
			if err := json.Unmarshal([]byte(run("backups", "--json").stdout), &list); err != nil || len(list) != 2 {
				t.Fatalf("backups of the fixture: %d (%v), want 2", len(list), err)
			}
			slices.SortFunc(list, func(a, b struct {
				ID   string    `json:"id"`
				Time time.Time `json:"time"`
			}) int {
				return a.Time.Compare(b.Time)
			})
			for i, b := range list {
				want := filepath.Join(t.TempDir(), "tree")
				fixtureTree(t, want, i+1)
				target := t.TempDir()
				run("restore", b.ID, "--target", target)
				testenv.CompareTrees(t, want, filepath.Join(target, fixtureSource))
			}
			// Today's code writes into the old repository, and all of it
			// still checks.
			src := filepath.Join(t.TempDir(), "tree")
			fixtureTree(t, src, 2)
			run("backup", src)
			run("check", "--read-data")
		})
	}
}

// writeFormatFixture makes a repository of the current format at dir.
func writeFormatFixture(t *testing.T, dir string) {
	if err := os.RemoveAll(filepath.Dir(fixtureSource)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(fixtureSource)) })
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"UMBRA_REPO=" + abs, "UMBRA_PASSWORD=" + fixturePassword}
	for stage, args := range [][]string{{"init"}, {"backup", fixtureSource}, {"backup", fixtureSource}} {
		if stage > 0 {
			if err := os.RemoveAll(fixtureSource); err != nil {
				t.Fatal(err)
			}
			fixtureTree(t, fixtureSource, stage)
		}
		if res := umbraRun(t, t.TempDir(), env, args...); res.code != 0 {
			t.Fatalf("umbra %v: exit %d\n%s", args, res.code, res.stderr)
		}
	}
	// Empty directories do not survive git; the repository must not need
	// them (TestFormatFixtures copies what git holds).
	_ = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if entries, _ := os.ReadDir(p); len(entries) == 0 {
				_ = os.Remove(p)
			}
		}
		return nil
	})
	cmd := exec.Command("du", "-sh", abs)
	out, _ := cmd.Output()
	t.Logf("wrote %s", strings.TrimSpace(string(out)))
}

// fixtureTree writes the same tree every time for a stage (1 or 2): each
// kind of blob the format stores (16 KiB blocks of a database file,
// content-defined chunks, compressible and not, zero blocks, a small file)
// and each kind of metadata, small enough to commit. Stage 2 changes a
// block of the database in place, appends to the log and removes a file.
func fixtureTree(t testing.TB, dir string, stage int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// Text-like bytes that compress about as well as database rows do.
	words := strings.Fields("order shipped pending berlin paris customer invoice total amount returned tokyo note")
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			fmt.Fprintf(&b, "%d|%s|%s|%.2f\n", rng.IntN(1e6), words[rng.IntN(len(words))], words[rng.IntN(len(words))], rng.Float64()*1000)
		}
		return b.Bytes()[:n]
	}
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, mode))
		must(os.Chmod(p, mode))
	}
	// app.db: fixed 16 KiB blocks; text pages, a zero block, a random one.
	var db []byte
	for i := range 24 {
		switch i {
		case 5:
			db = append(db, make([]byte, 16<<10)...)
		case 9:
			db = append(db, random(16<<10)...)
		default:
			db = append(db, text(16<<10)...)
		}
	}
	logData := text(700 << 10) // content-defined chunks, compressible
	blob := random(300 << 10)  // one chunk, stored uncompressed
	if stage == 2 {
		copy(db[3*16<<10:], text(16<<10))
		logData = append(logData, text(40<<10)...)
	}
	write("app.db", db, 0o600)
	write("log/app.log", logData, 0o640)
	write("blob.bin", blob, 0o644)
	write("small", []byte("x"), 0o400)
	write("empty", nil, 0o644)
	if stage == 1 {
		write("gone-in-stage-2", []byte("removed before the second backup"), 0o644)
	}
	must(os.Mkdir(filepath.Join(dir, "empty-dir"), 0o1777))
	must(os.Chmod(filepath.Join(dir, "empty-dir"), 0o1777))
	f, err := os.Create(filepath.Join(dir, "disk.img")) // sparse, fixed blocks
	must(err)
	_, err = f.WriteAt(text(4096), 1<<20)
	must(err)
	must(f.Truncate(3 << 20))
	must(f.Close())
	must(os.Symlink("log/app.log", filepath.Join(dir, "link")))
	must(os.Link(filepath.Join(dir, "blob.bin"), filepath.Join(dir, "hardlink")))
	if err := unix.Lsetxattr(filepath.Join(dir, "small"), "user.comment", []byte("kept"), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Fatal(err)
	}
	var paths []string
	must(filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	slices.Sort(paths)
	slices.Reverse(paths) // children before parents
	for i, p := range paths {
		ts := time.Date(2026, 12, 2, 3, 4, 5, 123456789+i, time.UTC).UnixNano()
		tt := []unix.Timespec{unix.NsecToTimespec(ts), unix.NsecToTimespec(ts + 1000)}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, tt, unix.AT_SYMLINK_NOFOLLOW))
	}
}
