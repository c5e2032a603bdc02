package shadow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

// fakeProvider records what it is asked to do.
type fakeProvider struct {
	name string
	copy provider.Copy
	// hook, if set, runs in Create and its error fails it.
	hook func(ctx context.Context) error

	mu      sync.Mutex
	made    map[string]bool // set id + mount of each live shadow
	deleted []string        // set ids
}

func (p *fakeProvider) Name() string { return p.name }
func (p *fakeProvider) Capabilities() provider.Capabilities {
	return provider.Capabilities{Copy: p.copy}
}
func (p *fakeProvider) CanServe(provider.Volume) error { return nil }

func (p *fakeProvider) Create(ctx context.Context, req provider.Request) (provider.Shadow, error) {
	if p.hook != nil {
		if err := p.hook(ctx); err != nil {
			return provider.Shadow{}, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.made == nil {
		p.made = map[string]bool{}
	}
	p.made[req.SetID+req.Volume.Mount] = true
	snap := req.Volume.Mount + "/.snap"
	if p.copy == provider.CopyNone {
		snap = req.Volume.Mount // a live "shadow" is the volume itself
	}
	return provider.Shadow{Provider: p.name, SetID: req.SetID, Volume: req.Volume,
		Roots: []provider.Root{{Source: req.Volume.Mount, Snapshot: snap}}}, nil
}

func (p *fakeProvider) Delete(_ context.Context, sh provider.Shadow) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.made, sh.SetID+sh.Volume.Mount)
	p.deleted = append(p.deleted, sh.SetID)
	return nil
}

// live reports the shadows created and not deleted.
func (p *fakeProvider) live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.made)
}

// rig is a coordinator over two volumes (temporary directories) with a
// writer on each.
type rig struct {
	store   *Store
	prov    *fakeProvider
	coord   *Coordinator
	writers []*writertest.Fake
	vols    []string
}

func newRig(t *testing.T, opts Options) *rig {
	t.Helper()
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{store: store, prov: &fakeProvider{name: "fake", copy: provider.CopyAtomic}}
	for i := range 2 {
		vol := t.TempDir()
		r.vols = append(r.vols, vol)
		wr := writertest.NewFake(fmt.Sprintf("fake:w%d", i))
		wr.Metadata.Components[0].Paths = []string{vol}
		r.writers = append(r.writers, wr)
	}
	opts.Mounts = func(path string) (provider.Volume, error) {
		for _, v := range r.vols {
			if path == v || strings.HasPrefix(path, v+"/") {
				return provider.Volume{Mount: v, FSType: "fake"}, nil
			}
		}
		return provider.Volume{}, fmt.Errorf("no volume for %s", path)
	}
	r.coord = New([]provider.Provider{r.prov}, store, opts)
	return r
}

func (r *rig) create(ctx context.Context) (*Set, error) {
	return r.coord.Create(ctx, r.writerList(), nil)
}

func (r *rig) writerList() []writer.Writer {
	var wrs []writer.Writer
	for _, f := range r.writers {
		wrs = append(wrs, f)
	}
	return wrs
}

// assertAborted checks the aftermath of a failed set: every writer aborted,
// every writer that froze thawed or aborted, no shadow, no record.
func (r *rig) assertAborted(t *testing.T) {
	t.Helper()
	for _, f := range r.writers {
		calls := f.Calls()
		if len(calls) == 0 || calls[len(calls)-1] != writer.PhaseAbort {
			t.Errorf("%s: calls %v, want Abort last", f.Name(), calls)
		}
	}
	if n := r.prov.live(); n != 0 {
		t.Errorf("%d shadows left after abort", n)
	}
	sets, err := r.store.Sets()
	if err != nil || len(sets) != 0 {
		t.Errorf("set records after abort: %v, %v", sets, err)
	}
}

func TestCreatePhaseOrder(t *testing.T) {
	r := newRig(t, Options{})
	set, err := r.create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []writer.Phase{writer.PhaseIdentify, writer.PhasePrepareBackup, writer.PhasePrepareSnapshot,
		writer.PhaseFreeze, writer.PhaseThaw, writer.PhasePostSnapshot}
	for _, f := range r.writers {
		if diff := cmp.Diff(want, f.Calls()); diff != "" {
			t.Errorf("%s calls (-want +got):\n%s", f.Name(), diff)
		}
	}
	if set.Status != StatusReady || len(set.Shadows) != 2 || r.prov.live() != 2 {
		t.Errorf("set %s with %d shadows (%d live); want ready with 2", set.Status, len(set.Shadows), r.prov.live())
	}
	for _, w := range set.Writers {
		if w.Consistency != Application {
			t.Errorf("%s: consistency %s, want application", w.Name, w.Consistency)
		}
	}
	if set.FreezeEnd.Before(set.FreezeStart) || set.FreezeStart.IsZero() {
		t.Errorf("freeze window %v .. %v", set.FreezeStart, set.FreezeEnd)
	}
	saved, err := r.store.LoadSet(set.ID)
	if err != nil || saved.Status != StatusReady {
		t.Fatalf("stored set: %+v, %v", saved, err)
	}
	if err := r.coord.Delete(t.Context(), set.ID); err != nil {
		t.Fatal(err)
	}
	if n := r.prov.live(); n != 0 {
		t.Errorf("after Delete %d shadows live", n)
	}
}

func TestCreateFailsInEachPhase(t *testing.T) {
	for _, phase := range []writer.Phase{writer.PhaseIdentify, writer.PhasePrepareBackup, writer.PhasePrepareSnapshot,
		writer.PhaseFreeze, writer.PhaseThaw, writer.PhasePostSnapshot} {
		t.Run(string(phase), func(t *testing.T) {
			r := newRig(t, Options{})
			r.writers[1].Errs = map[writer.Phase]error{phase: errors.New("boom")}
			_, err := r.create(t.Context())
			var pe *PhaseError
			if !errors.As(err, &pe) || pe.Who != "fake:w1" || pe.Phase != phase || pe.Retryable {
				t.Fatalf("got %v, want a non-retryable PhaseError of fake:w1 in %s", err, phase)
			}
			r.assertAborted(t)
			if phase == writer.PhaseFreeze {
				// The writer that froze was thawed before the abort.
				calls := r.writers[0].Calls()
				if !contains(phaseNames(calls), string(writer.PhaseThaw)) {
					t.Errorf("fake:w0 froze but was not thawed: %v", calls)
				}
			}
		})
	}
}

func TestCreateRetryable(t *testing.T) {
	r := newRig(t, Options{})
	r.writers[0].Errs = map[writer.Phase]error{writer.PhaseFreeze: fmt.Errorf("lock wait: %w", writer.ErrRetryable)}
	_, err := r.create(t.Context())
	var pe *PhaseError
	if !errors.As(err, &pe) || !pe.Retryable {
		t.Fatalf("got %v, want a retryable PhaseError", err)
	}
}

func TestCreateProviderFails(t *testing.T) {
	r := newRig(t, Options{})
	var once sync.Once
	r.prov.hook = func(context.Context) error {
		var err error
		once.Do(func() { err = errors.New("disk full") })
		return err
	}
	_, err := r.create(t.Context())
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "provider fake") {
		t.Fatalf("got %v, want the provider's error, named", err)
	}
	r.assertAborted(t)
}

func TestCreateHungFreezeFailsAtLimit(t *testing.T) {
	r := newRig(t, Options{FreezeLimit: 200 * time.Millisecond})
	r.writers[1].Hooks = map[writer.Phase]func(context.Context) error{writer.PhaseFreeze: writertest.Hang}
	start := time.Now()
	_, err := r.create(t.Context())
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Who != "fake:w1" || pe.Phase != writer.PhaseFreeze || !pe.Retryable {
		t.Fatalf("got %v, want a retryable time-out of fake:w1 in freeze", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Create took %v with a 200ms freeze limit", took)
	}
	r.assertAborted(t)
}

func TestCreatePanicAborts(t *testing.T) {
	r := newRig(t, Options{})
	r.writers[0].Hooks = map[writer.Phase]func(context.Context) error{
		writer.PhasePrepareSnapshot: func(context.Context) error { panic("writer bug") },
	}
	_, err := r.create(t.Context())
	if err == nil || !strings.Contains(err.Error(), "panic: writer bug") {
		t.Fatalf("got %v, want the panic as an error", err)
	}
	r.assertAborted(t)
}

// A cancellation (SIGINT, SIGTERM) during the commit still thaws and aborts.
func TestCreateCancelledInCommit(t *testing.T) {
	r := newRig(t, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	r.prov.hook = func(ctx context.Context) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}
	_, err := r.create(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	for _, f := range r.writers {
		if !contains(phaseNames(f.Calls()), string(writer.PhaseThaw)) {
			t.Errorf("%s not thawed after cancel: %v", f.Name(), f.Calls())
		}
	}
	r.assertAborted(t)
}

func TestCreateWriterBusy(t *testing.T) {
	r := newRig(t, Options{})
	l, err := r.store.TryLock("writer", "fake:w0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	_, err = r.create(t.Context())
	if !errors.Is(err, ErrBusy) || !errors.Is(err, writer.ErrRetryable) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
	if calls := r.writers[1].Calls(); contains(phaseNames(calls), string(writer.PhaseFreeze)) {
		t.Errorf("a writer was frozen although the set could not lock: %v", calls)
	}
}

func TestCreateRefusesUnmetNeed(t *testing.T) {
	r := newRig(t, Options{})
	r.prov.copy = provider.CopyNone // cannot give the fakes their atomic copy
	_, err := r.create(t.Context())
	if err == nil || !strings.Contains(err.Error(), "needs an atomic copy") {
		t.Fatalf("got %v, want a refusal naming the need", err)
	}
	// The refusal is the writer's, so that a backup can go on without it.
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Who != r.writers[0].Name() {
		t.Errorf("refusal %v is attributed to %q, want the writer %s", err, pe.Who, r.writers[0].Name())
	}
	for _, f := range r.writers {
		if diff := cmp.Diff([]writer.Phase{writer.PhaseIdentify, writer.PhaseAbort}, f.Calls()); diff != "" {
			t.Errorf("%s calls (-want +got):\n%s", f.Name(), diff)
		}
	}
}

func TestUserPathConsistency(t *testing.T) {
	for _, tt := range []struct {
		copy provider.Copy
		want Consistency
	}{{provider.CopyAtomic, Crash}, {provider.CopyPerFile, None}, {provider.CopyNone, None}} {
		r := newRig(t, Options{})
		r.prov.copy = tt.copy
		set, err := r.coord.Create(t.Context(), nil, []string{r.vols[0]})
		if err != nil {
			t.Fatal(err)
		}
		if len(set.Paths) != 1 || set.Paths[0].Consistency != tt.want {
			t.Errorf("%s copy: paths %+v, want %s", tt.copy, set.Paths, tt.want)
		}
	}
}

// A set whose creator died is cleaned up by the next List.
func TestListCleansDeadSet(t *testing.T) {
	r := newRig(t, Options{})
	dead := &Set{ID: newID(time.Now()), Status: StatusCreating, PID: 1 << 30,
		Planned: []Planned{{Volume: provider.Volume{Mount: r.vols[0]}, Provider: "fake"}}}
	if err := r.store.SaveSet(dead); err != nil {
		t.Fatal(err)
	}
	sets, err := r.coord.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || sets[0].Status != StatusFailed || !strings.Contains(sets[0].Error, "exited") {
		t.Fatalf("List: %+v, want the dead set once, failed", sets)
	}
	if diff := cmp.Diff([]string{dead.ID}, r.prov.deleted); diff != "" {
		t.Errorf("provider deletes (-want +got):\n%s", diff)
	}
	if sets, _ := r.coord.List(t.Context()); len(sets) != 0 {
		t.Errorf("second List: %d sets, want none", len(sets))
	}
}

// A set being created by a live process is left alone.
func TestListKeepsLiveCreation(t *testing.T) {
	r := newRig(t, Options{})
	release := make(chan struct{})
	r.writers[0].Hooks = map[writer.Phase]func(context.Context) error{
		writer.PhaseFreeze: func(context.Context) error { <-release; return nil },
	}
	done := make(chan error, 1)
	go func() { _, err := r.create(t.Context()); done <- err }()
	var sets []*Set
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var err error
		if sets, err = r.coord.List(t.Context()); err != nil {
			t.Fatal(err)
		}
		if len(sets) > 0 {
			break
		}
	}
	close(release)
	if len(sets) != 1 || sets[0].Status != StatusCreating {
		t.Fatalf("List during creation: %+v, want one creating set", sets)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDeleteUnknownSet(t *testing.T) {
	r := newRig(t, Options{})
	if err := r.coord.Delete(t.Context(), "nope"); !errors.Is(err, ErrNoSet) {
		t.Errorf("got %v, want ErrNoSet", err)
	}
	if err := r.coord.Delete(t.Context(), "../x"); !errors.Is(err, ErrNoSet) {
		t.Errorf("path in id: got %v, want ErrNoSet", err)
	}
}

func phaseNames(ps []writer.Phase) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

func TestCreateBecomesCopyWhenLogsOwnedElsewhere(t *testing.T) {
	r := newRig(t, Options{Type: writer.Full})
	r.writers[1].Metadata.LogsOwnedBy = "archive_command is not umbra's"
	set, err := r.create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if set.Type != writer.Copy || !strings.Contains(set.CopyReason, "fake:w1: archive_command") {
		t.Errorf("set type %s, reason %q; want a copy backup naming fake:w1", set.Type, set.CopyReason)
	}
}

func TestScratchGoesWithTheSet(t *testing.T) {
	r := newRig(t, Options{})
	set, err := r.create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := set.writerSet().ScratchFor("fake:w0")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "backup_label"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.coord.Delete(t.Context(), set.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(set.Scratch); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch %s after Delete: %v, want it gone", set.Scratch, err)
	}
}

// copyCompleter is a fake that hands on a file at CopyComplete.
type copyCompleter struct {
	*writertest.Fake
	calls int
}

func (c *copyCompleter) CopyComplete(context.Context, writer.Set) (writer.Report, error) {
	c.calls++
	return writer.Report{Files: []writer.HandOn{{Component: "data", Path: "label", Source: "/x"}}}, nil
}

func TestSettle(t *testing.T) {
	for _, copy := range []provider.Copy{provider.CopyAtomic, provider.CopyNone} {
		t.Run(string(copy), func(t *testing.T) {
			r := newRig(t, Options{})
			r.prov.copy = copy
			cc := &copyCompleter{Fake: r.writers[0]}
			r.writers[0].Metadata.Components[0].Needs = writer.NeedLive
			wrs := []writer.Writer{cc, r.writers[1]}
			r.writers[1].Metadata.Components[0].Needs = writer.NeedLive
			set, err := r.coord.Create(t.Context(), wrs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.coord.Settle(t.Context(), set, wrs); err != nil {
				t.Fatal(err)
			}
			got := set.Writers[0]
			if cc.calls != 1 || len(got.Report.Files) != 1 {
				t.Errorf("CopyComplete called %d times, report %+v; want once, with its file", cc.calls, got.Report)
			}
			want := Application
			if copy == provider.CopyNone {
				want = None // read live after the writer let go
			}
			if got.Components[0].Consistency != want || set.Writers[1].Consistency != Application {
				t.Errorf("consistency %s (other writer %s), want %s (application)", got.Components[0].Consistency, set.Writers[1].Consistency, want)
			}
			saved, err := r.store.LoadSet(set.ID)
			if err != nil || len(saved.Writers[0].Report.Files) != 1 {
				t.Errorf("stored set lacks the hand-on file: %+v, %v", saved, err)
			}
		})
	}
}

func TestCreateHeldKeepsLocksUntilRelease(t *testing.T) {
	r := newRig(t, Options{})
	wrs := r.writerList()
	set, release, err := r.coord.CreateHeld(t.Context(), wrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !set.Temporary {
		t.Error("a held set is not marked temporary")
	}
	// A second set of the same writers is busy while the first is held.
	if _, err := r.coord.Create(t.Context(), wrs, nil); !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("second set while the first is held: %v, want a retryable busy error", err)
	}
	// While held, List leaves it alone.
	if _, err := r.coord.List(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r.prov.live() != 2 {
		t.Fatalf("List touched a held set: %d shadows live", r.prov.live())
	}
	// Released without deleting, as when its process dies: List deletes it.
	release()
	sets, err := r.coord.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.prov.live() != 0 || len(sets) != 1 || sets[0].Status != StatusFailed {
		t.Errorf("after release: %d shadows live, sets %+v; want the orphan cleaned and reported failed", r.prov.live(), sets)
	}
}

func TestKeepHeldSet(t *testing.T) {
	r := newRig(t, Options{})
	wrs := r.writerList()
	set, release, err := r.coord.CreateHeld(t.Context(), wrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.coord.Keep(set); err != nil {
		t.Fatal(err)
	}
	release()
	sets, err := r.coord.List(t.Context())
	if err != nil || len(sets) != 1 || sets[0].Status != StatusReady || r.prov.live() != 2 {
		t.Errorf("a kept set after its holder ended: %+v, %v, %d shadows; want it ready and whole", sets, err, r.prov.live())
	}
}

// TestOwnCopies: on a volume whose provider copies file by file, a
// component that needs an atomic copy and whose writer can copy it itself
// is left to the writer, and only that one (the other on the volume, which
// needs only a quiesced copy, is the provider's); a writer that then gives
// no copy fails the set, aborted.
func TestOwnCopies(t *testing.T) {
	r := newRig(t, Options{})
	r.prov.copy = provider.CopyPerFile
	atomic, quiesced := r.writers[0], r.writers[1]
	atomic.Metadata.Components[0].OwnCopy = true
	quiesced.Metadata.Components[0].OwnCopy = true
	quiesced.Metadata.Components[0].Needs = writer.NeedQuiesced
	sub := filepath.Join(r.vols[0], "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	quiesced.Metadata.Components[0].Paths = []string{sub}
	atomic.Report.Copies = []writer.OwnCopy{{Path: r.vols[0], Source: t.TempDir()}}

	set, err := r.create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"fake:w0/data"}; !slices.Equal(set.OwnCopies, want) {
		t.Errorf("own copies %v, want %v", set.OwnCopies, want)
	}
	if err := r.coord.Delete(t.Context(), set.ID); err != nil {
		t.Fatal(err)
	}

	atomic.Report.Copies = nil
	if _, err := r.create(t.Context()); err == nil || !strings.Contains(err.Error(), "but it gave no copy of it") {
		t.Fatalf("a writer that gives no copy of its own: got %v, want the set to fail saying so", err)
	}
	r.assertAborted(t)
}

// Complete and Abort run like every other phase: all writers at once, each
// under the phase limit, a panic an error, every error kept, and Abort
// after a cancellation too.
func TestCompleteAndAbortAreCoordinated(t *testing.T) {
	for _, p := range []writer.Phase{writer.PhaseBackupComplete, writer.PhaseAbort} {
		t.Run(string(p), func(t *testing.T) {
			r := newRig(t, Options{PhaseLimit: 200 * time.Millisecond})
			set, release, err := r.coord.CreateHeld(t.Context(), r.writerList(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			panics, hangs, fails := writertest.NewFake("fake:panics"), writertest.NewFake("fake:hangs"), writertest.NewFake("fake:fails")
			panics.Hooks = map[writer.Phase]func(context.Context) error{p: func(context.Context) error { panic("boom") }}
			hangs.Hooks = map[writer.Phase]func(context.Context) error{p: writertest.Hang}
			fails.Errs = map[writer.Phase]error{p: errors.New("refused")}
			wrs := append(r.writerList(), panics, hangs, fails)
			ctx := t.Context()
			if p == writer.PhaseAbort {
				cancelled, cancel := context.WithCancel(ctx)
				cancel()
				ctx = cancelled
			}
			start := time.Now()
			if p == writer.PhaseAbort {
				err = r.coord.Abort(ctx, set, wrs)
			} else {
				err = r.coord.Complete(ctx, set, wrs, nil)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%s took %s with a phase limit of 200ms", p, d)
			}
			for _, want := range []string{"fake:panics", "boom", "fake:hangs", "no answer in time", "fake:fails", "refused"} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s: error %v; want it to name %q", p, err, want)
				}
			}
			for _, f := range r.writers {
				if !slices.Contains(f.Calls(), p) {
					t.Errorf("%s was not called at %s beside the failing writers", f.Name(), p)
				}
			}
		})
	}
}

// TestNoLockFilesPileUp: a set's lock file goes with the set; only the
// writers' and volumes' (one per name) stay (issue 11: one set-*.lock per
// set was never removed).
func TestNoLockFilesPileUp(t *testing.T) {
	r := newRig(t, Options{})
	for range 3 {
		set, err := r.create(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.coord.Delete(t.Context(), set.ID); err != nil {
			t.Fatal(err)
		}
	}
	files, err := filepath.Glob(filepath.Join(r.store.dir, "locks", "set-*"))
	if err != nil || len(files) != 0 {
		t.Errorf("set lock files left after three sets: %v (%v)", files, err)
	}
}
