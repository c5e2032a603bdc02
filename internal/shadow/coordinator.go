package shadow

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/umbra-backup/umbra/internal/fsfreeze"
	"github.com/umbra-backup/umbra/internal/guard"
	"github.com/umbra-backup/umbra/internal/mounts"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/writer"
)

// Options tune a Coordinator. Zero values mean the defaults.
type Options struct {
	PhaseLimit time.Duration // each writer phase but Freeze; zero means 5m
	// CopyLimit bounds PostSnapshot instead of PhaseLimit when writers
	// copy their own data in it (Set.OwnCopies: mariadb-backup of a large
	// database takes hours); zero means 12h.
	CopyLimit   time.Duration
	FreezeLimit time.Duration // first Freeze call to last Thaw; zero means 60s
	CommitLimit time.Duration // providers' commit; zero means 10s
	Type        writer.BackupType
	// Provider forces one provider, by name, for every volume.
	Provider string
	// FSFreeze freezes every volume's filesystem for the commit.
	FSFreeze bool
	// Guard starts the thaw guard, a process that releases every freeze if
	// this one dies (guard.Start on umbra's own executable). It must be set
	// when FSFreeze is on or a writer is a writer.Guarder.
	Guard func(ctx context.Context, p guard.Plan) (release func() error, err error)
	// Mounts resolves a path to its volume; zero means the live mount table.
	Mounts func(path string) (provider.Volume, error)
	// OnPhase, if set, is called after each phase of Create succeeds, with
	// the set still in that phase's state (writers frozen after PhaseFreeze,
	// filesystems frozen after PhaseCommit when FSFreeze is on). Returning an
	// error fails the set. It exists for fault injection: a test can kill
	// the process at a named phase.
	OnPhase func(ctx context.Context, p writer.Phase) error
	Log     *slog.Logger
	// WaitBusy is how long a set waits for a writer or volume that another
	// set holds (another job of umbra serve, a backup from the command
	// line) before it fails as busy; nothing is frozen while it waits.
	// Zero: it fails at once, and a backup's retries try again later.
	WaitBusy time.Duration
}

// guardGrace is how long after the freeze limit the guard acts, so that
// umbra's own thaw at the limit normally comes first.
const guardGrace = time.Second

func (o Options) withDefaults() Options {
	if o.PhaseLimit == 0 {
		o.PhaseLimit = 5 * time.Minute
	}
	if o.CopyLimit == 0 {
		o.CopyLimit = 12 * time.Hour
	}
	if o.FreezeLimit == 0 {
		o.FreezeLimit = 60 * time.Second
	}
	if o.CommitLimit == 0 {
		o.CommitLimit = 10 * time.Second
	}
	if o.Type == "" {
		o.Type = writer.Full
	}
	if o.Mounts == nil {
		o.Mounts = func(path string) (provider.Volume, error) {
			table, err := mounts.Table()
			if err != nil {
				return provider.Volume{}, err
			}
			return mounts.VolumeOf(table, path)
		}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Coordinator makes, lists and deletes shadow sets.
type Coordinator struct {
	providers []provider.Provider // in order of preference
	store     *Store
	opts      Options
}

// New returns a coordinator choosing among providers in the order given.
func New(providers []provider.Provider, store *Store, opts Options) *Coordinator {
	return &Coordinator{providers: providers, store: store, opts: opts.withDefaults()}
}

// Create makes one shadow set of the writers' components and of paths.
// On any failure, panic or cancellation it aborts: every writer is thawed
// and aborted, every shadow deleted, and the error (a *PhaseError where a
// phase failed) is returned with the set as far as it got.
func (c *Coordinator) Create(ctx context.Context, wrs []writer.Writer, paths []string) (set *Set, err error) {
	set, _, err = c.create(ctx, wrs, paths, false)
	return set, err
}

// CreateHeld makes a set for a requester that reads it now: the set is
// temporary, and its locks (the set's, each writer's, each volume's) stay
// held until release is called. Should the process die first, the next
// List finds the set unlocked and deletes its shadows, so a killed backup
// leaves no snapshot behind; and a second backup of the same writers or
// volumes meanwhile gets ErrBusy.
func (c *Coordinator) CreateHeld(ctx context.Context, wrs []writer.Writer, paths []string) (set *Set, release func(), err error) {
	return c.create(ctx, wrs, paths, true)
}

func (c *Coordinator) create(ctx context.Context, wrs []writer.Writer, paths []string, held bool) (set *Set, release func(), err error) {
	set = &Set{ID: newID(time.Now()), Status: StatusCreating, Type: c.opts.Type, PID: os.Getpid(), Created: time.Now().UTC(), Temporary: held}
	set.Scratch = c.store.ScratchDir(set.ID)
	run := &creation{c: c, set: set, wrs: wrs, log: c.opts.Log.With("set", set.ID)}
	defer func() {
		if r := recover(); r != nil {
			err = &PhaseError{Phase: run.phase, Err: fmt.Errorf("panic: %v\n%s", r, debug.Stack())}
		}
		if err != nil {
			err = errors.Join(err, run.abort())
			set.Status = StatusFailed
			set.Error = err.Error()
		}
		run.recordWriters(err)
		if err != nil || !held {
			run.unlock()
			release = nil
		}
	}()
	release = sync.OnceFunc(run.unlock)
	return set, release, run.create(ctx, paths)
}

// creation is the state of one Create call.
type creation struct {
	c     *Coordinator
	set   *Set
	wrs   []writer.Writer
	log   *slog.Logger
	phase writer.Phase
	locks []*Lock
	saved bool // the set's record exists in the store

	mu       sync.Mutex
	pending  sync.WaitGroup // provider creates that may still run
	metadata map[string]writer.Metadata
	plans    []plan
}

type plan struct {
	vol   provider.Volume
	prov  provider.Provider
	paths []string
}

func (r *creation) create(ctx context.Context, paths []string) error {
	if err := r.lockWriters(ctx); err != nil {
		return err
	}
	if err := r.identify(ctx); err != nil {
		return err
	}
	if err := r.onPhase(ctx, writer.PhaseIdentify); err != nil {
		return err
	}
	if err := r.plan(ctx, paths); err != nil {
		return err
	}
	ws := r.set.writerSet()
	if err := r.eachWriter(ctx, writer.PhasePrepareBackup, r.c.opts.PhaseLimit, func(ctx context.Context, wr writer.Writer) error {
		if p, ok := wr.(writer.BackupPreparer); ok {
			return p.PrepareBackup(ctx, ws)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := r.onPhase(ctx, writer.PhasePrepareBackup); err != nil {
		return err
	}
	if err := r.prepareSnapshot(ctx, ws); err != nil {
		return err
	}
	// From here on shadows may exist: record where, for crash clean-up.
	if err := r.save(); err != nil {
		return err
	}
	if err := r.onPhase(ctx, writer.PhasePrepareSnapshot); err != nil {
		return err
	}
	if err := r.freezeAndCommit(ctx, ws); err != nil {
		return err
	}
	if err := r.onPhase(ctx, writer.PhaseThaw); err != nil {
		return err
	}
	ws = r.set.writerSet()
	postLimit := r.c.opts.PhaseLimit
	if len(r.set.OwnCopies) > 0 {
		postLimit = r.c.opts.CopyLimit
	}
	if err := r.eachWriter(ctx, writer.PhasePostSnapshot, postLimit, func(ctx context.Context, wr writer.Writer) error {
		p, ok := wr.(writer.PostSnapshotter)
		if !ok {
			return nil
		}
		rep, err := p.PostSnapshot(ctx, ws)
		if err == nil {
			r.mu.Lock()
			for i := range r.set.Writers {
				if r.set.Writers[i].Name == wr.Name() {
					r.set.Writers[i].Report = rep
				}
			}
			r.mu.Unlock()
		}
		return err
	}); err != nil {
		return err
	}
	if err := r.checkOwnCopies(); err != nil {
		return err
	}
	if err := r.onPhase(ctx, writer.PhasePostSnapshot); err != nil {
		return err
	}
	r.set.Status = StatusReady
	return r.save()
}

// checkOwnCopies makes sure every writer that was to copy a component
// itself said, by PostSnapshot, where each of its paths is to be read: the
// live files of such a component are not consistent.
func (r *creation) checkOwnCopies() error {
	for _, res := range r.set.Writers {
		for _, comp := range res.Metadata.Components {
			if !slices.Contains(r.set.OwnCopies, res.Name+"/"+comp.Name) {
				continue
			}
			for _, p := range comp.Paths {
				if !slices.ContainsFunc(res.Report.Copies, func(c writer.OwnCopy) bool { return c.Path == p }) {
					return &PhaseError{Who: res.Name, Phase: writer.PhasePostSnapshot, Err: fmt.Errorf(
						"component %s: no provider can copy %s consistently, so the writer was to copy it itself, but it gave no copy of it", comp.Name, p)}
				}
			}
		}
	}
	return nil
}

func (r *creation) save() error {
	if err := r.c.store.SaveSet(r.set); err != nil {
		return &PhaseError{Phase: r.phase, Err: fmt.Errorf("save set state: %w", err)}
	}
	r.saved = true
	return nil
}

// lockWriters takes every writer's lock, and the set's own lock, which tells
// later processes whether the creator is still alive.
func (r *creation) lockWriters(ctx context.Context) error {
	r.phase = writer.PhaseIdentify
	l, err := r.c.store.TryLock("set", r.set.ID)
	if err != nil {
		return &PhaseError{Phase: r.phase, Err: err}
	}
	r.locks = append(r.locks, l)
	seen := map[string]bool{}
	for _, wr := range sortedWriters(r.wrs) {
		if seen[wr.Name()] {
			return &PhaseError{Who: wr.Name(), Phase: r.phase, Err: errors.New("writer named twice; give each instance its own name")}
		}
		seen[wr.Name()] = true
		l, err := r.c.lock(ctx, "writer", wr.Name())
		if err != nil {
			return phaseError(wr.Name(), r.phase, err)
		}
		r.locks = append(r.locks, l)
	}
	return nil
}

// lock takes a writer's or volume's lock, waiting up to WaitBusy while
// another set holds it.
func (c *Coordinator) lock(ctx context.Context, kind, name string) (*Lock, error) {
	var deadline <-chan time.Time
	if c.opts.WaitBusy > 0 {
		t := time.NewTimer(c.opts.WaitBusy)
		defer t.Stop()
		deadline = t.C
	}
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	logged := false
	for {
		l, err := c.store.TryLock(kind, name)
		if err == nil || !errors.Is(err, ErrBusy) || deadline == nil {
			return l, err
		}
		if !logged {
			c.opts.Log.Info("waiting for another set to end", "kind", kind, "name", name, "for", c.opts.WaitBusy, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-deadline:
			return nil, fmt.Errorf("waited %s: %w", c.opts.WaitBusy, err)
		case <-poll.C:
		}
	}
}

func (r *creation) unlock() {
	for i := len(r.locks) - 1; i >= 0; i-- {
		_ = r.locks[i].Unlock()
	}
	r.locks = nil
}

func (r *creation) identify(ctx context.Context) error {
	r.metadata = map[string]writer.Metadata{}
	if err := r.eachWriter(ctx, writer.PhaseIdentify, r.c.opts.PhaseLimit, func(ctx context.Context, wr writer.Writer) error {
		md, err := wr.Identify(ctx)
		if err != nil {
			return err
		}
		if err := md.Validate(); err != nil {
			return err
		}
		r.mu.Lock()
		r.metadata[wr.Name()] = md
		r.mu.Unlock()
		return nil
	}); err != nil {
		return err
	}
	// A writer whose logs another tool owns makes the whole set a copy
	// backup: truncating them would break that tool.
	for _, wr := range sortedWriters(r.wrs) {
		if md := r.metadata[wr.Name()]; md.LogsOwnedBy != "" && r.set.Type.Truncates() {
			r.set.CopyReason = fmt.Sprintf("%s: %s", wr.Name(), md.LogsOwnedBy)
			r.set.Type = writer.Copy
			r.log.Info("copy backup: another tool owns the logs", "writer", wr.Name(), "owner", md.LogsOwnedBy)
		}
	}
	return nil
}

func (r *creation) prepareSnapshot(ctx context.Context, ws writer.Set) error {
	if err := r.eachWriter(ctx, writer.PhasePrepareSnapshot, r.c.opts.PhaseLimit, func(ctx context.Context, wr writer.Writer) error {
		if p, ok := wr.(writer.SnapshotPreparer); ok {
			return p.PrepareSnapshot(ctx, ws)
		}
		return nil
	}); err != nil {
		return err
	}
	return r.eachPlan(ctx, r.c.opts.PhaseLimit, func(ctx context.Context, p plan) error {
		if pp, ok := p.prov.(provider.Preparer); ok {
			return pp.Prepare(ctx, r.request(p))
		}
		return nil
	})
}

func (r *creation) request(p plan) provider.Request {
	return provider.Request{SetID: r.set.ID, Volume: p.vol, Paths: p.paths}
}

// freezeAndCommit is the freeze window: (start the thaw guard,) freeze every
// writer, (fsfreeze,) let each provider take its shadow, (fsthaw,) thaw.
// Every release is deferred, so it runs however the window ends, in the
// reverse order: filesystems, then writers, then the guard.
func (r *creation) freezeAndCommit(ctx context.Context, ws writer.Set) (err error) {
	opts := r.c.opts
	r.phase = writer.PhaseFreeze
	if plan, ok := r.guardPlan(ws); ok {
		release, err := opts.Guard(ctx, plan)
		if err != nil {
			return &PhaseError{Phase: writer.PhaseFreeze, Err: err}
		}
		defer func() {
			if gerr := release(); gerr != nil {
				err = errors.Join(err, &PhaseError{Phase: writer.PhaseThaw, Err: gerr})
			}
		}()
	}
	fctx, cancel := context.WithTimeout(ctx, opts.FreezeLimit)
	defer cancel()
	r.set.FreezeStart = time.Now().UTC()
	var frozenMu sync.Mutex
	var frozen []writer.Writer
	defer func() {
		frozenMu.Lock()
		toThaw := append([]writer.Writer(nil), frozen...)
		frozenMu.Unlock()
		err = errors.Join(err, r.thaw(ctx, toThaw, ws))
		r.set.FreezeEnd = time.Now().UTC()
	}()
	err = r.eachWriter(fctx, writer.PhaseFreeze, opts.FreezeLimit, func(ctx context.Context, wr writer.Writer) error {
		f, ok := wr.(writer.Freezer)
		if !ok {
			return nil
		}
		if err := f.Freeze(ctx, ws); err != nil {
			return err
		}
		frozenMu.Lock()
		frozen = append(frozen, wr)
		frozenMu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	if err := r.onPhase(fctx, writer.PhaseFreeze); err != nil {
		return err
	}
	r.phase = writer.PhaseCommit
	if opts.FSFreeze {
		var frozenMounts []string
		defer func() {
			for i := len(frozenMounts) - 1; i >= 0; i-- {
				if terr := fsfreeze.Thaw(frozenMounts[i]); terr != nil {
					err = errors.Join(err, &PhaseError{Phase: writer.PhaseThaw, Err: terr})
				}
			}
		}()
		for _, p := range r.plans {
			if err := fsfreeze.Freeze(p.vol.Mount); err != nil {
				return &PhaseError{Phase: writer.PhaseCommit, Err: err}
			}
			frozenMounts = append(frozenMounts, p.vol.Mount)
		}
	}
	if err := r.commit(fctx); err != nil {
		return err
	}
	return r.onPhase(fctx, writer.PhaseCommit)
}

// guardPlan lists what the thaw guard must release: the filesystems under
// --fsfreeze and every guarded writer's thaw command. ok is false when
// nothing needs a guard.
func (r *creation) guardPlan(ws writer.Set) (plan guard.Plan, ok bool) {
	plan = guard.Plan{SetID: r.set.ID, Limit: r.c.opts.FreezeLimit + guardGrace}
	if r.c.opts.FSFreeze {
		for _, p := range r.plans {
			plan.Mounts = append(plan.Mounts, p.vol.Mount)
		}
	}
	for _, wr := range r.wrs {
		if g, ok := wr.(writer.Guarder); ok {
			if cmd, ok := g.ThawGuard(ws); ok {
				plan.Commands = append(plan.Commands, guard.GuardedCommand{Writer: wr.Name(), Command: cmd})
			}
		}
	}
	return plan, len(plan.Mounts)+len(plan.Commands) > 0
}

// thaw releases the frozen writers. It runs on a context that outlives
// cancellation (a Ctrl-C must still thaw), but not forever.
func (r *creation) thaw(ctx context.Context, frozen []writer.Writer, ws writer.Set) error {
	if len(frozen) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.c.opts.PhaseLimit)
	defer cancel()
	saved := r.phase
	defer func() { r.phase = saved }()
	return r.runEach(ctx, writer.PhaseThaw, frozen, func(ctx context.Context, wr writer.Writer) error {
		return wr.(writer.Freezer).Thaw(ctx, ws)
	})
}

func (r *creation) commit(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.c.opts.CommitLimit)
	defer cancel()
	return r.eachPlan(ctx, r.c.opts.CommitLimit, func(ctx context.Context, p plan) error {
		req := r.request(p)
		// Writers' files come and go (an SQLite -wal); copy what exists now.
		req.Paths = existing(req.Paths)
		if len(req.Paths) == 0 {
			return nil
		}
		sh, err := p.prov.Create(ctx, req)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.set.Shadows = append(r.set.Shadows, sh)
		r.mu.Unlock()
		return nil
	})
}

func (r *creation) onPhase(ctx context.Context, p writer.Phase) error {
	if r.c.opts.OnPhase == nil {
		return nil
	}
	if err := r.c.opts.OnPhase(ctx, p); err != nil {
		return &PhaseError{Phase: p, Err: err}
	}
	return nil
}

// abort undoes a failed set: every writer aborted (which releases any
// freeze), every shadow deleted, the record removed. It must work after a
// cancellation, so it runs on a context of its own.
func (r *creation) abort() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.c.opts.PhaseLimit)
	defer cancel()
	var errs []error
	ws := r.set.writerSet()
	if err := r.runEach(ctx, writer.PhaseAbort, r.wrs, func(ctx context.Context, wr writer.Writer) error {
		if a, ok := wr.(writer.Aborter); ok {
			return a.Abort(ctx, ws)
		}
		return nil
	}); err != nil {
		errs = append(errs, err)
	}
	// A provider create that outlived its time limit may still finish:
	// wait a while so that its shadow is deleted too.
	waited := make(chan struct{})
	go func() { r.pending.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(r.c.opts.CommitLimit):
		errs = append(errs, errors.New("abort: a provider is still creating a shadow; umbra shadow list cleans it up later"))
		return errors.Join(errs...)
	}
	if err := r.c.deleteShadows(ctx, r.set); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 && r.saved {
		errs = append(errs, r.c.store.RemoveSet(r.set.ID))
	}
	return errors.Join(errs...)
}

// recordWriters saves each writer's last result for umbra writers.
func (r *creation) recordWriters(err error) {
	var pe *PhaseError
	errors.As(err, &pe)
	for _, wr := range r.wrs {
		st := WriterState{Writer: wr.Name(), SetID: r.set.ID, Time: time.Now().UTC(), Phase: string(r.phase), OK: err == nil}
		if err != nil {
			st.Error = err.Error()
			if pe != nil && pe.Who != "" && pe.Who != wr.Name() {
				st.Error = "set failed in another writer or provider: " + st.Error
			}
		}
		if serr := r.c.store.SaveWriterState(st); serr != nil {
			r.log.Warn("record writer state", "writer", wr.Name(), "err", serr)
		}
	}
}

// eachWriter runs fn for every writer at once, as phase p, with a barrier
// at the end, under limit.
func (r *creation) eachWriter(ctx context.Context, p writer.Phase, limit time.Duration, fn func(context.Context, writer.Writer) error) error {
	r.phase = p
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := r.runEach(ctx, p, r.wrs, fn); err != nil {
		return err
	}
	r.log.Debug("phase done", "phase", p)
	return nil
}

// runEach calls fn for each writer in parallel and waits for all of them,
// or until ctx ends: a writer that does not answer in time has failed, and
// is named. Panics become errors.
func (r *creation) runEach(ctx context.Context, p writer.Phase, wrs []writer.Writer, fn func(context.Context, writer.Writer) error) error {
	names := make([]string, len(wrs))
	calls := make([]func(context.Context) error, len(wrs))
	for i, wr := range wrs {
		names[i] = wr.Name()
		calls[i] = func(ctx context.Context) error { return fn(ctx, wr) }
	}
	return parallel(ctx, p, names, calls, nil)
}

func (r *creation) eachPlan(ctx context.Context, limit time.Duration, fn func(context.Context, plan) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	names := make([]string, len(r.plans))
	calls := make([]func(context.Context) error, len(r.plans))
	for i, p := range r.plans {
		names[i] = fmt.Sprintf("provider %s on %s", p.prov.Name(), p.vol.Mount)
		calls[i] = func(ctx context.Context) error { return fn(ctx, p) }
	}
	return parallel(ctx, r.phase, names, calls, &r.pending)
}

// parallel runs calls at once and returns when all are done or ctx ends.
// Calls still running then are reported by name; pending, if set, lets a
// caller wait for them later.
func parallel(ctx context.Context, p writer.Phase, names []string, calls []func(context.Context) error, pending *sync.WaitGroup) error {
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(calls))
	for i, call := range calls {
		if pending != nil {
			pending.Add(1)
		}
		go func() {
			if pending != nil {
				defer pending.Done()
			}
			defer func() {
				if v := recover(); v != nil {
					results <- result{i, fmt.Errorf("panic: %v\n%s", v, debug.Stack())}
				}
			}()
			results <- result{i, call(ctx)}
		}()
	}
	var errs []error
	done := make([]bool, len(calls))
	for range calls {
		select {
		case res := <-results:
			done[res.i] = true
			if res.err != nil {
				errs = append(errs, phaseError(names[res.i], p, res.err))
			}
		case <-ctx.Done():
			for i, ok := range done {
				if !ok {
					errs = append(errs, &PhaseError{Who: names[i], Phase: p, Retryable: true,
						Err: fmt.Errorf("no answer in time (%w)", context.Cause(ctx))})
				}
			}
			return firstError(errs)
		}
	}
	return firstError(errs)
}

// firstError returns the first error, or all of them joined if several
// callers failed: the first stays reachable with errors.As.
func firstError(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

func existing(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// newID makes a set id that sorts by time: 20261122T103000Z-3f9a2c1b.
func newID(t time.Time) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}
