package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
)

// Operations asked through the API on one backup, besides the jobs.
const (
	KindVerify  = "verify"
	KindRestore = "restore"
)

// Operate starts a verification of the backup ref, or its restore under
// target (absent or empty: nothing is overwritten, nothing live touched).
// It returns the run at once; the history has its end.
func (d *Daemon) Operate(kind, ref, target string) (*Run, error) {
	if kind != KindVerify && kind != KindRestore {
		return nil, fmt.Errorf("no operation %q: verify or restore", kind)
	}
	if kind == KindRestore && target == "" {
		return nil, fmt.Errorf("a restore through the API needs a target directory: it never restores in place")
	}
	now := time.Now()
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return nil, ErrStopping
	}
	cfg := d.cfg
	run := &Run{ID: newRunID(now), Kind: kind, Trigger: TriggerAPI, Attempt: 1, Started: now, Status: StatusRunning, Backup: ref, Target: target}
	if err := d.hist.save(run); err != nil {
		d.mu.Unlock()
		return nil, err
	}
	a := &active{run: run, progress: &archive.Progress{}, restored: &restore.Progress{}}
	d.ops[run.ID] = a
	d.runs.Add(1)
	c := *run
	d.mu.Unlock()
	d.log.Info("operation started", "kind", kind, "run", run.ID, "backup", ref, "target", target)

	go func() {
		defer d.runs.Done()
		var err error
		switch kind {
		case KindVerify:
			err = d.verify(cfg, ref, nil, a)
		case KindRestore:
			env := d.opts.Env(cfg)
			env.Log = a.log.logger(env.Log, run.ID)
			err = d.locked(cfg, "restore", func(ctx context.Context, repo *repository.Repository) error {
				e, err := env.RestoreTo(ctx, repo, ref, target, a.restored)
				if e.Manifest != nil {
					_ = d.hist.update(run, func(r *Run) {
						r.Backup = e.ID.String()
						r.Files, r.Bytes = a.restored.Files.Load(), a.restored.Bytes.Load()
					})
				}
				return err
			})
		}
		final := d.record(run, time.Now(), &a.log, "", nil, err)
		d.mu.Lock()
		delete(d.ops, run.ID)
		targets := d.cfg.Notify
		d.mu.Unlock()
		d.tell(final, targets, "operation ended")
	}()
	return &c, nil
}
