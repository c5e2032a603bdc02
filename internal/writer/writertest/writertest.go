// Package writertest holds the conformance suite every writer runs and a
// scriptable fake writer for the coordinator's tests.
package writertest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/writer"
)

// phaseLimit bounds each phase the suite calls; releaseLimit is how soon a
// second writer must be able to freeze after the first one aborted.
const (
	phaseLimit   = 30 * time.Second
	releaseLimit = 5 * time.Second
)

// Run checks that writers from newWriter keep the writer contract. Every
// call of newWriter must return a fresh writer for the same application
// instance (the same database, the same scripts): one test freezes with one
// writer, aborts, and freezes again with a second.
//
// It checks that Identify returns valid metadata with absolute paths and
// the same document twice; that the full phase sequence succeeds in order;
// that Abort succeeds, twice, after every prefix of the sequence; and that
// Abort after Freeze releases the freeze.
func Run(t *testing.T, newWriter func(t *testing.T) writer.Writer) {
	t.Run("Identify", func(t *testing.T) {
		wr := newWriter(t)
		md := identify(t, wr)
		if err := md.Validate(); err != nil {
			t.Errorf("Identify: Validate: %v", err)
		}
		if md.Instance != wr.Name() {
			t.Errorf("Identify: got instance %q, want Name() %q", md.Instance, wr.Name())
		}
		for _, c := range md.Components {
			if len(c.BackupTypes) == 0 {
				t.Errorf("Identify: component %q has no backup types", c.Name)
			}
			for _, p := range c.Paths {
				if !filepath.IsAbs(p) {
					t.Errorf("Identify: component %q: got path %q, want an absolute path", c.Name, p)
				}
			}
		}
		again := identify(t, wr)
		if diff := cmp.Diff(md, again); diff != "" {
			t.Errorf("Identify twice: documents differ (-first +second):\n%s", diff)
		}
	})

	t.Run("FullSequence", func(t *testing.T) {
		wr := newWriter(t)
		md := identify(t, wr)
		set := newSet(t)
		runPrefix(t, wr, set, writer.PhaseFreeze)
		if f, ok := wr.(writer.Freezer); ok {
			call(t, wr, writer.PhaseThaw, func(ctx context.Context) error { return f.Thaw(ctx, set) })
		}
		if p, ok := wr.(writer.PostSnapshotter); ok {
			call(t, wr, writer.PhasePostSnapshot, func(ctx context.Context) error {
				_, err := p.PostSnapshot(ctx, set)
				return err
			})
		}
		if c, ok := wr.(writer.Completer); ok {
			done := writer.Completion{Set: set, Components: map[string]bool{}}
			for _, comp := range md.Components {
				done.Components[comp.Name] = true
			}
			call(t, wr, writer.PhaseBackupComplete, func(ctx context.Context) error { return c.BackupComplete(ctx, done) })
		}
		abortTwice(t, wr, set)
	})

	for _, last := range []writer.Phase{writer.PhaseIdentify, writer.PhasePrepareSnapshot, writer.PhaseFreeze} {
		t.Run("AbortAfter/"+string(last), func(t *testing.T) {
			wr := newWriter(t)
			set := newSet(t)
			identify(t, wr)
			runPrefix(t, wr, set, last)
			abortTwice(t, wr, set)
		})
	}

	t.Run("AbortReleasesFreeze", func(t *testing.T) {
		first := newWriter(t)
		if _, ok := first.(writer.Freezer); !ok {
			t.Skip("writer does not freeze")
		}
		set := newSet(t)
		identify(t, first)
		runPrefix(t, first, set, writer.PhaseFreeze)
		abortTwice(t, first, set)

		second := newWriter(t)
		identify(t, second)
		runPrefix(t, second, set, writer.PhasePrepareSnapshot)
		ctx, cancel := context.WithTimeout(t.Context(), releaseLimit)
		defer cancel()
		if err := second.(writer.Freezer).Freeze(ctx, set); err != nil {
			t.Fatalf("Freeze of a second writer after Abort of the first: got %v, want nil within %v", err, releaseLimit)
		}
		call(t, second, writer.PhaseThaw, func(ctx context.Context) error { return second.(writer.Freezer).Thaw(ctx, set) })
		abortTwice(t, second, set)
	})
}

func newSet(t *testing.T) writer.Set {
	return writer.Set{ID: "test-set", Type: writer.Full, Scratch: t.TempDir()}
}

func identify(t *testing.T, wr writer.Writer) writer.Metadata {
	t.Helper()
	var md writer.Metadata
	call(t, wr, writer.PhaseIdentify, func(ctx context.Context) error {
		var err error
		md, err = wr.Identify(ctx)
		return err
	})
	return md
}

// runPrefix calls PrepareBackup, PrepareSnapshot and Freeze, as far as wr
// implements them, up to and including last.
func runPrefix(t *testing.T, wr writer.Writer, set writer.Set, last writer.Phase) {
	t.Helper()
	if last == writer.PhaseIdentify {
		return
	}
	if p, ok := wr.(writer.BackupPreparer); ok {
		call(t, wr, writer.PhasePrepareBackup, func(ctx context.Context) error { return p.PrepareBackup(ctx, set) })
	}
	if last == writer.PhasePrepareBackup {
		return
	}
	if p, ok := wr.(writer.SnapshotPreparer); ok {
		call(t, wr, writer.PhasePrepareSnapshot, func(ctx context.Context) error { return p.PrepareSnapshot(ctx, set) })
	}
	if last == writer.PhasePrepareSnapshot {
		return
	}
	if f, ok := wr.(writer.Freezer); ok {
		call(t, wr, writer.PhaseFreeze, func(ctx context.Context) error { return f.Freeze(ctx, set) })
	}
}

func abortTwice(t *testing.T, wr writer.Writer, set writer.Set) {
	t.Helper()
	a, ok := wr.(writer.Aborter)
	if !ok {
		return
	}
	for range 2 {
		call(t, wr, writer.PhaseAbort, func(ctx context.Context) error { return a.Abort(ctx, set) })
	}
}

// call runs one phase under the suite's time limit and stops the test if
// it fails.
func call(t *testing.T, wr writer.Writer, phase writer.Phase, fn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), phaseLimit)
	defer cancel()
	if err := fn(ctx); err != nil {
		t.Fatalf("%s %s: got %v, want nil", phase, wr.Name(), err)
	}
}

// CleanAside removes, when the test ends, what a restore moved aside and
// the directories writer.MoveAside made for it (TOP/.umbra-before-restore-
// TIME/…) as far as they are then empty: another test's moved data, under
// the same TIME at the same TOP, stays.
func CleanAside(t testing.TB, moved ...writer.Moved) {
	t.Helper()
	for _, m := range moved {
		top := strings.TrimSuffix(m.To, m.From)
		if top == m.To || !strings.Contains(top, writer.AsideDirPrefix) {
			continue // not MoveAside's layout
		}
		t.Cleanup(func() {
			_ = os.RemoveAll(m.To)
			// Each directory above it that is now empty, up to top.
			d := filepath.Dir(m.To)
			for len(d) >= len(top) && os.Remove(d) == nil {
				d = filepath.Dir(d)
			}
		})
	}
}
