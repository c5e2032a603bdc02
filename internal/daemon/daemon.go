// Package daemon is umbra serve: it runs the configuration's jobs on their
// schedules (no two runs of one job, nor of two jobs sharing a writer, at
// once; a time missed while it was down run once at start), keeps their
// history, and answers the REST API and Prometheus.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/forget"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/notify"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/retention"
	"github.com/umbra-backup/umbra/internal/schedule"
	"github.com/umbra-backup/umbra/internal/verify"
)

// DefaultMaxParallel is how many jobs run at once unless [serve]
// max_parallel says otherwise.
const DefaultMaxParallel = 2

// keepRuns is how many runs of each job the history keeps.
const keepRuns = 500

// ErrStopping refuses a run asked for while the daemon stops.
var ErrStopping = errors.New("the daemon is stopping")

// Options are what a daemon runs with.
type Options struct {
	// Load reads the configuration: at start, and again on Reload.
	Load func() (*config.Config, error)
	// Env is what a job runs with under cfg.
	Env func(cfg *config.Config) *job.Env
	// Open opens the repository (not locked) for one run or API call.
	Open func(ctx context.Context, cfg *config.Config) (*repository.Repository, func(), error)
	// StateDir holds the run history (StateDir/serve/runs).
	StateDir string
	Log      *slog.Logger
	Version  string
}

// Daemon runs jobs on their schedules.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	hist    *history
	metrics *metrics
	started time.Time
	wake    chan struct{}
	runs    sync.WaitGroup
	sent    sync.WaitGroup // notifications on their way

	mu       sync.Mutex
	cfg      *config.Config
	jobs     map[string]*jobState
	busy     map[string]string  // writer instance → the job running with it
	ops      map[string]*active // operations asked through the API, by run id
	running  int
	stopping bool
	// runCtx is every run's parent; cancelRuns aborts them (SIGTERM with
	// on_stop = "abort").
	runCtx     context.Context
	cancelRuns context.CancelCauseFunc
}

type jobState struct {
	cfg config.Job
	// staleSent: the "stale" notification went out; a success re-arms it.
	staleSent bool
	next      time.Time // the next scheduled time; zero: none
	due       *pending  // a run whose time came, waiting for its writers or a slot
	current   *active
}

// pending is a run to start once notBefore has passed and its writers are
// free.
type pending struct {
	trigger   string
	scheduled time.Time
	attempt   int
	notBefore time.Time
	started   chan *Run // the API waits for the run it asked for
}

type active struct {
	run      *Run
	log      runLog
	progress *archive.Progress
	restored *restore.Progress // a restore's
}

// New opens the history in the state directory and reads the
// configuration; Run starts the schedules.
func New(opts Options) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	cfg, err := opts.Load()
	if err != nil {
		return nil, err
	}
	hist, err := openHistory(filepath.Join(opts.StateDir, "serve", "runs"), keepRuns)
	if err != nil {
		return nil, fmt.Errorf("run history: %w", err)
	}
	d := &Daemon{opts: opts, log: opts.Log, hist: hist, started: time.Now(), wake: make(chan struct{}, 1),
		cfg: cfg, jobs: map[string]*jobState{}, busy: map[string]string{}, ops: map[string]*active{}}
	d.metrics = newMetrics(d)
	d.runCtx, d.cancelRuns = context.WithCancelCause(context.Background())
	d.setJobs(cfg, d.started)
	d.recover(d.started)
	return d, nil
}

// slotAfter is the job's first scheduled time after t, its jitter offset
// added; zero if it has no schedule.
func (d *Daemon) slotAfter(j config.Job, t time.Time) time.Time {
	if j.Schedule == nil {
		return time.Time{}
	}
	off := schedule.Offset(j.Name, j.Jitter)
	n := j.Schedule.Next(t.Add(-off))
	if n.IsZero() {
		return n
	}
	return n.Add(off)
}

// setJobs takes the jobs of cfg, keeping the state of those that stay.
func (d *Daemon) setJobs(cfg *config.Config, now time.Time) {
	jobs := map[string]*jobState{}
	for _, j := range cfg.Jobs {
		js := d.jobs[j.Name]
		if js == nil {
			js = &jobState{}
		}
		js.cfg = j
		js.next = d.slotAfter(j, now)
		jobs[j.Name] = js
	}
	// A job removed while it runs finishes; it is not scheduled again.
	for name, js := range d.jobs {
		if jobs[name] == nil && js.current != nil {
			js.next, js.due = time.Time{}, nil
			jobs[name] = js
		}
	}
	d.cfg, d.jobs = cfg, jobs
	d.metrics.setJobs(cfg.Jobs)
}

// recover looks at each job's last run: one the daemon died in is marked
// interrupted and run again at once; a scheduled time that passed since
// the last run (the daemon was down) is run once, now.
func (d *Daemon) recover(now time.Time) {
	for name, js := range d.jobs {
		last, _ := d.hist.last(name)
		if last == nil {
			continue
		}
		if last.Status == StatusRunning {
			r, _ := d.hist.get(last.ID)
			r.Status, r.Ended = StatusInterrupted, now
			r.Error = "umbra serve stopped during this run (killed or crashed); the next start cleaned up after it and ran the job again"
			if err := d.hist.save(&r); err != nil {
				d.log.Error("history", "err", err)
			}
			d.log.Warn("the last run was interrupted; running the job again", "job", name, "run", last.ID)
			d.notify(d.cfg.Notify, notify.Event{Kind: notify.Failure, Job: name, Message: r.Error, Run: r})
			js.due = &pending{trigger: TriggerRecover, scheduled: last.Scheduled, attempt: 1}
			continue
		}
		ref := last.Started
		if last.Scheduled.After(ref) {
			ref = last.Scheduled
		}
		if missed := d.slotAfter(js.cfg, ref); !missed.IsZero() && !missed.After(now) {
			d.log.Info("a scheduled run was missed while umbra serve was down; running it now", "job", name, "scheduled", missed)
			js.due = &pending{trigger: TriggerCatchUp, scheduled: missed, attempt: 1}
		}
	}
}

// Reload reads the configuration again (SIGHUP). A configuration that
// does not load is refused, and the old one kept.
func (d *Daemon) Reload() error {
	cfg, err := d.opts.Load()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.setJobs(cfg, time.Now())
	d.mu.Unlock()
	d.poke()
	d.log.Info("configuration reloaded", "jobs", len(cfg.Jobs))
	return nil
}

func (d *Daemon) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run schedules jobs until ctx ends, then stops: by [serve] on_stop, the
// running jobs are aborted (every writer thawed, nothing truncated) or
// finished; Run returns once none runs.
func (d *Daemon) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wakeAt := d.tick(time.Now())
		wait := time.Hour
		if !wakeAt.IsZero() {
			wait = max(time.Until(wakeAt), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			d.stop()
			return nil
		case <-d.wake:
		case <-timer.C:
		}
	}
}

// stop starts no run again, aborts the running ones unless on_stop is
// "finish", and waits for them.
func (d *Daemon) stop() {
	d.mu.Lock()
	d.stopping = true
	finish := d.cfg.Serve.OnStop == "finish"
	n := d.running + len(d.ops)
	d.mu.Unlock()
	if n > 0 {
		if finish {
			d.log.Info("stopping: letting the running jobs finish", "running", n)
		} else {
			d.log.Info("stopping: aborting the running jobs (writers thawed, nothing truncated)", "running", n)
			d.cancelRuns(ErrStopping)
		}
	}
	d.runs.Wait()
	d.sent.Wait() // each is bounded by notify.Limit
}

// tick moves jobs whose time came to due, starts what can start, and
// returns when it must look again.
func (d *Daemon) tick(now time.Time) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return time.Time{}
	}
	var wakeAt time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (wakeAt.IsZero() || t.Before(wakeAt)) {
			wakeAt = t
		}
	}
	for _, name := range slices.Sorted(maps.Keys(d.jobs)) {
		js := d.jobs[name]
		if !js.next.IsZero() && !now.Before(js.next) {
			if js.current != nil || js.due != nil {
				d.log.Warn("a scheduled run is skipped: the job's last run has not ended", "job", name, "scheduled", js.next)
				d.metrics.skipped(name)
			} else {
				js.due = &pending{trigger: TriggerSchedule, scheduled: js.next, attempt: 1}
			}
			js.next = d.slotAfter(js.cfg, now)
		}
		earliest(js.next)
		if js.cfg.AlertAfter > 0 && !js.staleSent {
			since := d.started
			if _, success := d.hist.last(name); success != nil {
				since = success.Ended
			}
			if deadline := since.Add(js.cfg.AlertAfter); now.Before(deadline) {
				earliest(deadline)
			} else {
				js.staleSent = true
				d.notify(d.cfg.Notify, notify.Event{Kind: notify.Stale, Job: name,
					Message: fmt.Sprintf("job %s has stored no backup since %s (alert_after %s)", name, since.Format(time.RFC3339), js.cfg.AlertAfter)})
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(d.jobs)) {
		js := d.jobs[name]
		if js.due == nil || js.current != nil {
			continue
		}
		if now.Before(js.due.notBefore) {
			earliest(js.due.notBefore)
			continue
		}
		if d.running >= cmp.Or(d.cfg.Serve.MaxParallel, DefaultMaxParallel) || !d.writersFree(js.cfg) {
			continue // a run that ends wakes the loop
		}
		d.start(js, now)
	}
	return wakeAt
}

// jobWriters are the writer instances a job runs: those it names, else
// every configured one.
func (d *Daemon) jobWriters(j config.Job) []string {
	if j.Type != "backup" {
		return nil // verifications and prunes touch no live writer
	}
	if len(j.Writers) > 0 {
		return j.Writers
	}
	var all []string
	for _, s := range d.cfg.Writers {
		all = append(all, s.Instance())
	}
	return all
}

func (d *Daemon) writersFree(j config.Job) bool {
	for _, w := range d.jobWriters(j) {
		if d.busy[w] != "" {
			return false
		}
	}
	return true
}

// start begins the due run of js; d.mu is held.
func (d *Daemon) start(js *jobState, now time.Time) {
	p := js.due
	js.due = nil
	run := &Run{ID: newRunID(now), Job: js.cfg.Name, Kind: js.cfg.Type, Trigger: p.trigger, Attempt: p.attempt,
		Scheduled: p.scheduled, Started: now, Status: StatusRunning}
	if err := d.hist.save(run); err != nil {
		d.log.Error("history", "err", err)
	}
	js.current = &active{run: run, progress: &archive.Progress{}}
	for _, w := range d.jobWriters(js.cfg) {
		d.busy[w] = js.cfg.Name
	}
	d.running++
	d.runs.Add(1)
	cfg := d.cfg
	if p.started != nil {
		c := *run // before the run's goroutine changes it
		p.started <- &c
	}
	d.log.Info("job started", "job", run.Job, "run", run.ID, "trigger", run.Trigger, "attempt", run.Attempt)
	go d.execute(cfg, js.cfg, js, js.current, p)
}

// execute runs one job to its end and records it.
// cfg and j are the configuration as the run started (a reload may change
// js meanwhile).
func (d *Daemon) execute(cfg *config.Config, j config.Job, js *jobState, a *active, p *pending) {
	defer d.runs.Done()
	run := a.run
	var backupID string
	var storedErr, err error
	switch j.Type {
	case "verify":
		err = d.verifyJob(cfg, j, a)
	case "prune":
		err = d.pruneJob(cfg, j, a)
	default:
		backupID, storedErr, err = d.backup(cfg, j, a)
	}
	now := time.Now()
	final := d.record(run, now, &a.log, backupID, storedErr, err)
	d.metrics.observe(&final)

	// The job is free before its end is told (log, notifications): whoever
	// reads that may start it again.
	d.mu.Lock()
	js.current = nil
	if final.Succeeded() {
		js.staleSent = false
	}
	for w, holder := range d.busy {
		if holder == j.Name {
			delete(d.busy, w)
		}
	}
	d.running--
	var retryIn time.Duration
	if final.Status == StatusFailed && !d.stopping && p.attempt <= j.RetryRuns && js.due == nil {
		retryIn = j.RetryWait << (p.attempt - 1)
		js.due = &pending{trigger: TriggerRetry, scheduled: p.scheduled, attempt: p.attempt + 1, notBefore: now.Add(retryIn)}
	}
	targets := d.cfg.Notify
	d.mu.Unlock()
	d.poke()

	d.tell(final, targets, "job ended")
	if retryIn > 0 {
		d.log.Info("the job will be tried again", "job", run.Job, "in", retryIn, "attempt", p.attempt+1)
	}
}

// record writes how a run ended into the history and returns it.
func (d *Daemon) record(run *Run, now time.Time, log *runLog, backupID string, storedErr, err error) Run {
	_ = d.hist.update(run, func(r *Run) {
		r.Ended = now
		r.Log = log.snapshot()
		switch {
		case err != nil && errors.Is(context.Cause(d.runCtx), ErrStopping):
			r.Status, r.Error = StatusAborted, "stopped by SIGTERM before it ended; every writer was thawed and nothing was truncated: "+err.Error()
		case err != nil && errors.Is(err, verify.ErrFailed):
			r.Status, r.Error = StatusUnverified, "the backup did not pass its verification: "+err.Error()
		case err != nil:
			r.Status, r.Error = StatusFailed, err.Error()
		case r.Status == StatusRunning:
			r.Status = StatusOK
		case storedErr != nil:
			r.Error = storedErr.Error()
		}
		if backupID != "" {
			r.Backup = backupID
		}
	})
	final, _ := d.hist.get(run.ID)
	return final
}

// tell sends a run's notifications and logs its end.
func (d *Daemon) tell(final Run, targets []config.Notify, msg string) {
	for _, e := range events(&final) {
		d.notify(targets, e)
	}
	level := slog.LevelInfo
	if !final.Succeeded() {
		level = slog.LevelWarn
	}
	attrs := []any{"job", final.Job, "kind", final.Kind, "run", final.ID, "status", final.Status, "duration", final.Duration().Round(time.Millisecond)}
	if final.Backup != "" {
		attrs = append(attrs, "backup", final.Backup)
	}
	if final.Target != "" {
		attrs = append(attrs, "target", final.Target)
	}
	if final.Error != "" {
		attrs = append(attrs, "error", final.Error)
	}
	d.log.Log(context.Background(), level, msg, attrs...)
}

// backup runs a backup job into the repository under a shared lock, and
// fills a's run as it learns. storedErr is a failure after the backup was
// stored (retention); err means nothing was stored.
func (d *Daemon) backup(cfg *config.Config, j config.Job, a *active) (backupID string, storedErr, err error) {
	ctx := d.runCtx
	env := d.opts.Env(cfg)
	env.Log = a.log.logger(env.Log, a.run.ID)
	b, err := env.FromConfig(j)
	if err != nil {
		return "", nil, err
	}
	if len(b.Writers) == 0 && len(b.Paths) == 0 {
		return "", nil, fmt.Errorf("job %s has nothing to back up: it names no writers and no paths, and none are configured", j.Name)
	}
	b.Progress = a.progress
	repo, done, err := d.opts.Open(ctx, cfg)
	if err != nil {
		return "", nil, err
	}
	defer done()
	lock, err := repo.Lock(ctx, false, "backup")
	if err != nil {
		return "", nil, err
	}
	lctx := lock.Context()
	out, err := env.RunBackup(lctx, repo, b)
	lock.Unlock(context.Background())
	if out == nil {
		if err != nil && errors.Is(context.Cause(lctx), repository.ErrLockLost) {
			err = context.Cause(lctx)
		}
		return "", nil, err
	}
	res := out.Result
	_ = d.hist.update(a.run, func(r *Run) {
		s := res.Manifest.Stats
		r.Files, r.Bytes, r.BytesRead, r.BytesAdded = s.Files, s.Bytes, s.BytesRead, s.BytesAdded
		r.FreezeMS = res.Info.FreezeMS
		r.Warnings = slices.Clone(res.Warnings)
		if res.CompleteErr != nil {
			r.Warnings = append(r.Warnings, "a writer failed after the backup was stored (its logs may not be truncated): "+res.CompleteErr.Error())
		}
		for _, w := range res.Info.Writers {
			r.Writers = append(r.Writers, RunWriter{Name: w.Name, Consistency: string(w.Consistency), Failed: w.Failed, Error: w.Error})
		}
		if v := out.Verification; v != nil {
			ok := v.Record.OK
			r.Verified, r.Verification = &ok, v.ID.String()
		} else if out.VerifyErr != nil {
			no := false
			r.Verified = &no
		}
		r.Forgotten = out.Forgotten
		switch {
		case out.VerifyErr != nil:
			r.Status, r.Error = StatusUnverified, "the backup did not pass its verification: "+out.VerifyErr.Error()
		case len(res.Failed) > 0:
			r.Status, r.Error = StatusPartial, fmt.Sprintf("%v failed and were left out; the rest is stored", res.Failed)
		case len(r.Warnings) > 0 || err != nil:
			r.Status = StatusWarning
		default:
			r.Status = StatusOK
		}
	})
	d.repositoryStats(ctx, repo)
	return res.ID.String(), err, nil
}

// locked opens the repository and takes a shared lock for fn.
func (d *Daemon) locked(cfg *config.Config, purpose string, fn func(ctx context.Context, repo *repository.Repository) error) error {
	repo, done, err := d.opts.Open(d.runCtx, cfg)
	if err != nil {
		return err
	}
	defer done()
	lock, err := repo.Lock(d.runCtx, false, purpose)
	if err != nil {
		return err
	}
	lctx := lock.Context()
	err = fn(lctx, repo)
	lock.Unlock(context.Background())
	if err != nil && errors.Is(context.Cause(lctx), repository.ErrLockLost) {
		err = context.Cause(lctx)
	}
	return err
}

// verifyJob verifies the latest backup of this host (the job's writers
// only, if it names some).
func (d *Daemon) verifyJob(cfg *config.Config, j config.Job, a *active) error {
	return d.verify(cfg, "latest-of-host", j.Writers, a)
}

// verify verifies the backup ref ("latest-of-host": this host's newest).
func (d *Daemon) verify(cfg *config.Config, ref string, only []string, a *active) error {
	env := d.opts.Env(cfg)
	env.Log = a.log.logger(env.Log, a.run.ID)
	return d.locked(cfg, "verify", func(ctx context.Context, repo *repository.Repository) error {
		if ref == "latest-of-host" {
			ref = ""
			host, _ := os.Hostname()
			all, err := repo.Manifests(ctx)
			if err != nil {
				return err
			}
			for _, m := range all {
				if m.Host == host && m.Extra != nil {
					ref = m.ID.String() // the newest: manifests come oldest first
				}
			}
			if ref == "" {
				return fmt.Errorf("no application backup of %s in the repository to verify yet", host)
			}
		}
		e, res, err := env.Verify(ctx, repo, ref, only, "", func(name string) { env.Log.Info("verifying", "writer", name) })
		for _, w := range res.Writers {
			for _, c := range w.Checks {
				level := slog.LevelInfo
				if !c.OK {
					level = slog.LevelError
				}
				env.Log.Log(ctx, level, "check", "writer", w.Name, "check", c.Name, "ok", c.OK, "took", c.Duration.Round(time.Millisecond), "detail", c.Detail)
			}
			if w.Error != "" {
				env.Log.Error("verification did not run to its end", "writer", w.Name, "err", w.Error)
			}
		}
		_ = d.hist.update(a.run, func(r *Run) {
			if e.Manifest != nil {
				r.Backup = e.ID.String()
			}
			if res.Record != nil {
				ok := res.Record.OK
				r.Verified, r.Verification = &ok, res.ID.String()
			}
		})
		return err
	})
}

// pruneJob forgets the backups the job's keep policy does not keep (this
// host's, or every host's with all_hosts), then removes unused data.
func (d *Daemon) pruneJob(cfg *config.Config, j config.Job, a *active) error {
	host := ""
	if !j.AllHosts {
		host, _ = os.Hostname()
	}
	var gone []string
	if err := d.locked(cfg, "forget", func(ctx context.Context, repo *repository.Repository) error {
		all, err := repo.Manifests(ctx)
		if err != nil {
			return err
		}
		removed, err := forget.Remove(ctx, repo, forget.Plan(all, host, retention.Policy(j.Keep)))
		for _, id := range removed {
			gone = append(gone, id.String())
		}
		return err
	}); err != nil {
		return err
	}
	repo, done, err := d.opts.Open(d.runCtx, cfg)
	if err != nil {
		return err
	}
	defer done()
	rep, err := repo.Prune(d.runCtx, repository.PruneOptions{}) // takes its own lock
	_ = d.hist.update(a.run, func(r *Run) {
		r.Forgotten = gone
		if rep != nil {
			r.BytesFreed = rep.BytesFreed
		}
	})
	if err == nil {
		d.repositoryStats(d.runCtx, repo)
	}
	return err
}

// repositoryStats counts the backups and the bytes of the repository's
// packs for the metrics.
func (d *Daemon) repositoryStats(ctx context.Context, repo *repository.Repository) {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return
	}
	var size int64
	if err := repo.Backend().List(ctx, backend.TypePack, func(fi backend.FileInfo) error {
		size += fi.Size
		return nil
	}); err != nil {
		return
	}
	d.metrics.repository(len(ms), size)
}

// RunNow starts the job now (the API's "run"), unless it runs or waits to
// run already. It returns the run once it started, or, when its writers
// are busy or all slots taken, nil: it starts when they free.
func (d *Daemon) RunNow(name string) (*Run, error) {
	d.mu.Lock()
	js := d.jobs[name]
	switch {
	case d.stopping:
		d.mu.Unlock()
		return nil, ErrStopping
	case js == nil:
		d.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNoJob, name)
	case js.current != nil:
		id := js.current.run.ID // set once; the rest changes under the history's lock
		d.mu.Unlock()
		r, _ := d.hist.get(id)
		return &r, fmt.Errorf("%w: run %s started %s", ErrBusy, r.ID, r.Started.Format(time.RFC3339))
	case js.due != nil:
		trigger := js.due.trigger
		d.mu.Unlock()
		return nil, fmt.Errorf("%w: a %s run waits for its writers or a free slot", ErrBusy, trigger)
	}
	started := make(chan *Run, 1)
	js.due = &pending{trigger: TriggerAPI, attempt: 1, started: started}
	d.mu.Unlock()
	d.poke()
	select {
	case r := <-started:
		return r, nil
	case <-time.After(2 * time.Second):
		return nil, nil
	}
}

// notify sends an event to the configured targets.
func (d *Daemon) notify(to []config.Notify, e notify.Event) {
	var targets []notify.Target
	for _, n := range to {
		targets = append(targets, notify.Target(n))
	}
	if len(targets) == 0 {
		return
	}
	d.log.Info("notifying", "event", e.Kind, "job", e.Job)
	d.sent.Add(1)
	done := (&notify.Notifier{Targets: targets, Log: d.log}).Send(e)
	go func() {
		<-done
		d.sent.Done()
	}()
}

// events are the notifications a run that ended calls for.
func events(r *Run) []notify.Event {
	var out []notify.Event
	add := func(kind, msg string) {
		out = append(out, notify.Event{Kind: kind, Job: r.Job, Message: msg, Run: r})
	}
	switch r.Status {
	case StatusFailed, StatusPartial:
		add(notify.Failure, fmt.Sprintf("job %s: %s: %s", r.Job, r.Status, r.Error))
	case StatusWarning:
		add(notify.Warning, fmt.Sprintf("job %s: stored backup %.8s with warnings: %s", r.Job, r.Backup, strings.Join(append(r.Warnings, r.Error), "; ")))
	case StatusUnverified:
		add(notify.Unverified, fmt.Sprintf("job %s: backup %.8s is stored but failed its verification: %s", r.Job, r.Backup, r.Error))
	}
	for _, w := range r.Writers {
		if w.Consistency == "crash" && !w.Failed {
			add(notify.Crash, fmt.Sprintf("job %s: writer %s's data in backup %.8s is only crash-consistent: %s", r.Job, w.Name, r.Backup, w.Error))
		}
	}
	return out
}

// Errors of RunNow.
var (
	ErrNoJob = errors.New("no such job")
	ErrBusy  = errors.New("the job is running")
)
