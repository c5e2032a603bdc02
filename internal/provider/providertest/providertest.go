// Package providertest is the conformance suite that every provider's
// tests run against a real volume.
package providertest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/provider"
)

// Run checks p against the provider contract. vol returns a fresh volume
// that p can serve, and a directory on it that the test may fill; it is
// called once per subtest and must clean up after itself.
func Run(t *testing.T, p provider.Provider, vol func(t *testing.T) (provider.Volume, string)) {
	t.Helper()
	caps := p.Capabilities()
	switch caps.Copy {
	case provider.CopyAtomic, provider.CopyPerFile, provider.CopyNone:
	default:
		t.Fatalf("%s: Capabilities().Copy = %q, want one of the Copy constants", p.Name(), caps.Copy)
	}

	t.Run("CanServe", func(t *testing.T) {
		v, _ := vol(t)
		if err := p.CanServe(v); err != nil {
			t.Errorf("CanServe(%+v) = %v, want nil", v, err)
		}
	})

	t.Run("Create", func(t *testing.T) {
		v, dir := vol(t)
		files := fill(t, dir)
		req := provider.Request{SetID: "conformance-create", Volume: v, Paths: []string{
			filepath.Join(dir, "a.txt"),
			filepath.Join(dir, "sub"),
		}}
		sh := create(t, p, req)

		if sh.Provider != p.Name() || sh.SetID != req.SetID || sh.Volume != v || sh.Created.IsZero() || len(sh.Roots) == 0 {
			t.Errorf("Create(%+v) = %+v; want provider %q, set %q, volume %+v, a creation time and roots",
				req, sh, p.Name(), req.SetID, v)
		}
		for _, path := range req.Paths {
			if _, ok := snapshotPath(sh, path); !ok {
				t.Errorf("requested path %s is under no root of %+v", path, sh.Roots)
			}
		}
		checkFiles(t, sh, files)

		if caps.Copy == provider.CopyNone {
			return
		}
		// Change everything after the copy: the shadow must not move.
		write(t, filepath.Join(dir, "a.txt"), "changed alpha")
		f, err := os.OpenFile(filepath.Join(dir, "sub/b.txt"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(" appended"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, "sub/deeper/c.txt")); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "sub/new.txt"), "new")
		checkFiles(t, sh, files)
		if snap, _ := snapshotPath(sh, filepath.Join(dir, "sub/new.txt")); exists(t, snap) {
			t.Errorf("file made after Create appears in the shadow at %s", snap)
		}
	})

	t.Run("DeleteTwice", func(t *testing.T) {
		v, dir := vol(t)
		files := fill(t, dir)
		req := provider.Request{SetID: "conformance-delete", Volume: v, Paths: []string{dir}}
		sh := create(t, p, req)

		// Delete must work from the stored record alone.
		stored := roundTrip(t, sh)
		for i := range 2 {
			if err := p.Delete(t.Context(), stored); err != nil {
				t.Fatalf("Delete #%d: %v", i+1, err)
			}
		}
		checkNoSet(t, v, req.SetID)
		if caps.Copy != provider.CopyNone {
			for path := range files {
				if snap, ok := snapshotPath(sh, path); ok && exists(t, snap) {
					t.Errorf("after Delete the copy %s of %s still exists", snap, path)
				}
			}
		}
		for path, want := range files {
			if got, err := os.ReadFile(path); err != nil || string(got) != want {
				t.Errorf("after Delete live %s = %q, %v; want %q untouched", path, got, err, want)
			}
		}
	})

	t.Run("DeleteWithoutRoots", func(t *testing.T) {
		v, _ := vol(t)
		sh := provider.Shadow{Provider: p.Name(), SetID: "conformance-never-made", Volume: v}
		if err := p.Delete(t.Context(), sh); err != nil {
			t.Errorf("Delete(%+v) of a set never made = %v, want nil", sh, err)
		}
	})

	t.Run("TwoSets", func(t *testing.T) {
		v, dir := vol(t)
		files := fill(t, dir)
		first := create(t, p, provider.Request{SetID: "conformance-first", Volume: v, Paths: []string{dir}})
		second := create(t, p, provider.Request{SetID: "conformance-second", Volume: v, Paths: []string{dir}})
		if err := p.Delete(t.Context(), first); err != nil {
			t.Fatalf("Delete first: %v", err)
		}
		checkNoSet(t, v, first.SetID)
		checkFiles(t, second, files)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		v, dir := vol(t)
		fill(t, dir)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		req := provider.Request{SetID: "conformance-cancelled", Volume: v, Paths: []string{dir}}
		sh, err := p.Create(ctx, req)
		if err == nil {
			t.Cleanup(func() { _ = p.Delete(context.WithoutCancel(ctx), sh) })
			t.Fatalf("Create with a cancelled context = %+v, nil; want an error", sh)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Create with a cancelled context: %v; want it to wrap context.Canceled", err)
		}
		checkNoSet(t, v, req.SetID)
	})
}

// fill writes a small tree under dir and returns each file's content.
func fill(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{
		filepath.Join(dir, "a.txt"):            "alpha",
		filepath.Join(dir, "sub/b.txt"):        "bravo",
		filepath.Join(dir, "sub/deeper/c.txt"): strings.Repeat("charlie ", 4096),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, path, content)
	}
	return files
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// create makes a shadow copy and deletes it when the test ends.
func create(t *testing.T, p provider.Provider, req provider.Request) provider.Shadow {
	t.Helper()
	sh, err := p.Create(t.Context(), req)
	if err != nil {
		t.Fatalf("Create(%+v): %v", req, err)
	}
	t.Cleanup(func() {
		if err := p.Delete(context.Background(), sh); err != nil {
			t.Errorf("Delete at clean-up: %v", err)
		}
	})
	return sh
}

// checkFiles reads each file through the shadow and compares it with its
// content at Create time.
func checkFiles(t *testing.T, sh provider.Shadow, files map[string]string) {
	t.Helper()
	for path, want := range files {
		snap, ok := snapshotPath(sh, path)
		if !ok {
			t.Errorf("%s is under no root of %+v", path, sh.Roots)
			continue
		}
		got, err := os.ReadFile(snap)
		if err != nil {
			t.Errorf("read copy of %s: %v", path, err)
			continue
		}
		if string(got) != want {
			t.Errorf("copy %s of %s holds %.40q, want %.40q", snap, path, got, want)
		}
	}
}

// checkNoSet fails unless the set's shadow directory is gone.
func checkNoSet(t *testing.T, v provider.Volume, setID string) {
	t.Helper()
	if dir := filepath.Join(v.Mount, provider.ShadowDir, setID); exists(t, dir) {
		t.Errorf("%s exists, want it gone", dir)
	}
}

// snapshotPath maps a live path to its copy through the deepest root that
// holds it.
func snapshotPath(sh provider.Shadow, path string) (string, bool) {
	best := -1
	for i, r := range sh.Roots {
		rel, err := filepath.Rel(r.Source, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		if best < 0 || len(r.Source) > len(sh.Roots[best].Source) {
			best = i
		}
	}
	if best < 0 {
		return "", false
	}
	rel, _ := filepath.Rel(sh.Roots[best].Source, path)
	return filepath.Join(sh.Roots[best].Snapshot, rel), true
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func roundTrip(t *testing.T, sh provider.Shadow) provider.Shadow {
	t.Helper()
	b, err := json.Marshal(sh)
	if err != nil {
		t.Fatal(err)
	}
	var out provider.Shadow
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
