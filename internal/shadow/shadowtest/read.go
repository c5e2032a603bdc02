// Package shadowtest reads a shadow set the way a requester does, for
// tests of writers with real applications: each component copied from its
// shadow without what it excludes, then the files the writer handed on.
package shadowtest

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

// SnapshotOf finds where path can be read in the set.
func SnapshotOf(t testing.TB, set *shadow.Set, path string) string {
	t.Helper()
	for _, v := range set.Volumes() {
		if rel, err := filepath.Rel(v.Source, path); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(v.Snapshot, rel)
		}
	}
	t.Fatalf("%s is in no volume of the set", path)
	return ""
}

// Writer returns the set's result for the writer named name.
func Writer(t testing.TB, set *shadow.Set, name string) shadow.WriterResult {
	t.Helper()
	for _, w := range set.Writers {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("writer %s is not in set %s", name, set.ID)
	return shadow.WriterResult{}
}

// CopyComponents copies each component of writer name from its shadow, or
// from the writer's own copy (Report.Copies), to to(path) (cp -a,
// reflinked where the filesystem can), leaving out what the component
// excludes, as the requester reads them.
func CopyComponents(t testing.TB, set *shadow.Set, name string, to func(string) string) {
	t.Helper()
	res := Writer(t, set, name)
	for _, c := range res.Metadata.Components {
		for _, p := range c.Paths {
			src := SnapshotOf(t, set, p)
			if i := slices.IndexFunc(res.Report.Copies, func(o writer.OwnCopy) bool { return o.Path == p }); i >= 0 {
				if src = res.Report.Copies[i].Source; src == "" {
					continue
				}
			}
			if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
				continue // an SQLite -journal or -wal that is not there now
			}
			dst := to(p)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			run(t, "cp", "-a", "--reflink=auto", src, dst)
			err := filepath.Walk(dst, func(q string, _ os.FileInfo, err error) error {
				if err != nil {
					return err
				}
				if q != dst && writer.Excluded(c.Excludes, p+strings.TrimPrefix(q, dst)) {
					if err := os.RemoveAll(q); err != nil {
						return err
					}
					return filepath.SkipDir
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// HandOn puts the files writer name handed on under their component's
// first path, mapped by to, owned like that directory. It returns their
// relative paths.
func HandOn(t testing.TB, set *shadow.Set, name string, to func(string) string) []string {
	t.Helper()
	res := Writer(t, set, name)
	roots := map[string]string{}
	for _, c := range res.Metadata.Components {
		if len(c.Paths) > 0 {
			roots[c.Name] = to(c.Paths[0])
		}
	}
	var paths []string
	for _, f := range res.Report.Files {
		root, ok := roots[f.Component]
		if !ok {
			t.Fatalf("hand-on %+v names no component of %s", f, name)
		}
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "cp", f.Source, dst)
		run(t, "chown", "--reference="+root, dst)
		paths = append(paths, f.Path)
	}
	return paths
}

// Read copies the components and then the hand-on files.
func Read(t testing.TB, set *shadow.Set, name string, to func(string) string) {
	t.Helper()
	CopyComponents(t, set, name, to)
	t.Logf("%s handed on: %s", name, strings.Join(HandOn(t, set, name, to), " "))
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
