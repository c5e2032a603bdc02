package shadow

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/writer"
)

// List returns every set, oldest first. A set still "creating" whose creator
// has died (kill -9 in the freeze window) is cleaned up first: its shadows
// are deleted and it is reported as failed, once.
func (c *Coordinator) List(ctx context.Context) ([]*Set, error) {
	sets, err := c.store.Sets()
	if err != nil {
		return nil, err
	}
	for _, set := range sets {
		orphan := set.Status == StatusCreating || (set.Temporary && set.Status == StatusReady)
		if !orphan || c.store.Locked("set", set.ID) {
			continue
		}
		if set.Status == StatusCreating {
			set.Error = fmt.Sprintf("umbra (pid %d) exited while creating the set; its shadows were deleted", set.PID)
		} else {
			set.Error = fmt.Sprintf("umbra (pid %d) exited while backing the set up; its shadows were deleted", set.PID)
		}
		set.Status = StatusFailed
		err := c.deleteShadows(ctx, set)
		if err == nil {
			err = c.store.RemoveSet(set.ID)
		} else {
			set.Error += fmt.Sprintf("; clean-up failed: %v", err)
			err = errors.Join(err, c.store.SaveSet(set))
		}
		if err != nil {
			return sets, fmt.Errorf("clean up set %s: %w", set.ID, err)
		}
	}
	return sets, nil
}

// Delete removes a set: unmounts where it is exposed, deletes its shadows,
// forgets it. A set being created by a live process is refused.
func (c *Coordinator) Delete(ctx context.Context, id string) error {
	set, err := c.store.LoadSet(id)
	if err != nil {
		return err
	}
	l, err := c.store.TryLock("set", id)
	if err != nil {
		return fmt.Errorf("delete set %s: it is still being created: %w", id, err)
	}
	defer l.Unlock()
	return c.deleteSet(ctx, set)
}

// DeleteHeld deletes a set made by CreateHeld while its holder still has
// its locks (the holder releases them after), so no other process's clean-
// up of dead sets deletes it at the same time.
func (c *Coordinator) DeleteHeld(ctx context.Context, set *Set) error {
	return c.deleteSet(ctx, set)
}

func (c *Coordinator) deleteSet(ctx context.Context, set *Set) error {
	id := set.ID
	for _, dir := range set.Exposed {
		if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete set %s: unmount %s: %w; stop what uses it, or umount -l %s", id, dir, err, dir)
		}
	}
	if err := c.deleteShadows(ctx, set); err != nil {
		return fmt.Errorf("delete set %s: %w", id, err)
	}
	return c.store.RemoveSet(id)
}

// deleteShadows deletes every shadow made or planned for set. Planned
// volumes without a recorded shadow (a crash during the commit) are handed to
// their provider with no roots, so it removes whatever it left for the set.
func (c *Coordinator) deleteShadows(ctx context.Context, set *Set) error {
	var errs []error
	done := map[string]bool{}
	for _, sh := range set.Shadows {
		done[sh.Volume.Mount] = true
		errs = append(errs, c.deleteShadow(ctx, sh))
	}
	for _, p := range set.Planned {
		if !done[p.Volume.Mount] {
			errs = append(errs, c.deleteShadow(ctx, provider.Shadow{Provider: p.Provider, SetID: set.ID, Volume: p.Volume}))
		}
	}
	return errors.Join(errs...)
}

func (c *Coordinator) deleteShadow(ctx context.Context, sh provider.Shadow) error {
	p, err := c.provider(sh.Provider)
	if err != nil {
		return err
	}
	if err := p.Delete(ctx, sh); err != nil {
		return fmt.Errorf("delete shadow on %s: %w", sh.Volume.Mount, err)
	}
	return nil
}

func (c *Coordinator) provider(name string) (provider.Provider, error) {
	for _, p := range c.providers {
		if p.Name() == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("provider %q is not available in this umbra", name)
}

// Expose mounts the set read-only at dir: one shadowed directory at dir
// itself, several at dir/0, dir/1, … in the order of Set.Volumes.
func (c *Coordinator) Expose(ctx context.Context, id, dir string) ([]string, error) {
	set, err := c.ready(id)
	if err != nil {
		return nil, err
	}
	vols := set.Volumes()
	var targets []string
	for i, v := range vols {
		target := dir
		if len(vols) > 1 {
			target = filepath.Join(dir, fmt.Sprint(i))
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return targets, fmt.Errorf("expose %s: %w", id, err)
		}
		if err := bindReadOnly(v.Snapshot, target); err != nil {
			return targets, fmt.Errorf("expose %s at %s: %w", id, target, err)
		}
		targets = append(targets, target)
		set.Exposed = append(set.Exposed, target)
		if err := c.store.SaveSet(set); err != nil {
			return targets, err
		}
	}
	return targets, nil
}

func bindReadOnly(src, target string) error {
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return errors.Join(err, unix.Unmount(target, 0))
	}
	return nil
}

// Revert rolls every volume of the set back to its shadow's content. Stop
// the applications on those volumes first: their open files would keep
// pointing at the data that is being replaced.
func (c *Coordinator) Revert(ctx context.Context, id string) error {
	set, err := c.ready(id)
	if err != nil {
		return err
	}
	var reverters []provider.Reverter
	for _, sh := range set.Shadows {
		p, err := c.provider(sh.Provider)
		if err != nil {
			return err
		}
		rv, ok := p.(provider.Reverter)
		if !ok {
			return fmt.Errorf("revert %s: provider %s cannot revert %s; restore the files from the shadow instead (umbra shadow expose)", id, sh.Provider, sh.Volume.Mount)
		}
		reverters = append(reverters, rv)
	}
	for _, sh := range set.Shadows {
		l, err := c.store.TryLock("volume", sh.Volume.Mount)
		if err != nil {
			return fmt.Errorf("revert %s: %w", id, err)
		}
		defer l.Unlock()
	}
	for i, sh := range set.Shadows {
		if err := reverters[i].Revert(ctx, sh); err != nil {
			return fmt.Errorf("revert %s on %s: %w", id, sh.Volume.Mount, err)
		}
	}
	return nil
}

func (c *Coordinator) ready(id string) (*Set, error) {
	set, err := c.store.LoadSet(id)
	if err != nil {
		return nil, err
	}
	if set.Status != StatusReady {
		return nil, fmt.Errorf("set %s is %s, not ready", id, set.Status)
	}
	return set, nil
}

// CompleteCopy tells the set's writers that the requester has read every
// shadow copy (writer.CopyCompleter) and adds the files they hand on then to
// the set's reports. wrs are the writers Create was given, still holding
// their sessions. On failure the caller aborts the writers.
func (c *Coordinator) CompleteCopy(ctx context.Context, set *Set, wrs []writer.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.PhaseLimit)
	defer cancel()
	ws := set.writerSet()
	var mu sync.Mutex
	var names []string
	var calls []func(context.Context) error
	for _, wr := range wrs {
		cc, ok := wr.(writer.CopyCompleter)
		if !ok {
			continue
		}
		names = append(names, wr.Name())
		calls = append(calls, func(ctx context.Context) error {
			rep, err := cc.CopyComplete(ctx, ws)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range set.Writers {
				if set.Writers[i].Name == wr.Name() {
					set.Writers[i].Report = mergeReports(set.Writers[i].Report, rep)
				}
			}
			return nil
		})
	}
	if err := parallel(ctx, writer.PhaseCopyComplete, names, calls, nil); err != nil {
		return err
	}
	return c.store.SaveSet(set)
}

// Complete tells the set's writers that the backup is stored
// (writer.Completer), so they may truncate their logs; the writers named
// in noTruncate hear that it was a copy backup. All at once, each under
// the phase limit, panics turned into errors; every error is returned.
func (c *Coordinator) Complete(ctx context.Context, set *Set, wrs []writer.Writer, noTruncate []string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.PhaseLimit)
	defer cancel()
	var names []string
	var calls []func(context.Context) error
	for _, wr := range wrs {
		cw, ok := wr.(writer.Completer)
		if !ok {
			continue
		}
		ws := set.writerSet()
		if slices.Contains(noTruncate, wr.Name()) {
			ws.Type = writer.Copy
		}
		comp := writer.Completion{Set: ws, Components: map[string]bool{}}
		for _, w := range set.Writers {
			if w.Name == wr.Name() {
				for _, cr := range w.Components {
					comp.Components[cr.Name] = cr.Consistency == Application
				}
			}
		}
		names = append(names, wr.Name())
		calls = append(calls, func(ctx context.Context) error { return cw.BackupComplete(ctx, comp) })
	}
	return parallel(ctx, writer.PhaseBackupComplete, names, calls, nil)
}

// Abort tells the set's writers that the backup failed (writer.Aborter):
// they release what they hold and truncate nothing. All at once, each
// under the phase limit, on a context of its own (it runs after a
// cancellation), panics turned into errors; every error is returned.
func (c *Coordinator) Abort(ctx context.Context, set *Set, wrs []writer.Writer) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.PhaseLimit)
	defer cancel()
	ws := set.writerSet()
	var names []string
	var calls []func(context.Context) error
	for _, wr := range wrs {
		if a, ok := wr.(writer.Aborter); ok {
			names = append(names, wr.Name())
			calls = append(calls, func(ctx context.Context) error { return a.Abort(ctx, ws) })
		}
	}
	return parallel(ctx, writer.PhaseAbort, names, calls, nil)
}

func mergeReports(a, b writer.Report) writer.Report {
	if len(b.Positions) > 0 && a.Positions == nil {
		a.Positions = map[string]string{}
	}
	maps.Copy(a.Positions, b.Positions)
	a.Files = append(a.Files, b.Files...)
	a.Warnings = append(a.Warnings, b.Warnings...)
	return a
}

// Settle ends a set that no requester reads (umbra shadow create): the
// writers complete at once. A component on a live volume of a writer that
// needed the copy to happen first (writer.CopyCompleter) is then marked
// consistency none: whoever reads it later reads it after the writer let
// go. On failure the writers are aborted and the set deleted.
func (c *Coordinator) Settle(ctx context.Context, set *Set, wrs []writer.Writer) error {
	ws := set.writerSet()
	for _, wr := range wrs {
		if _, ok := wr.(writer.CopyCompleter); !ok {
			continue
		}
		for i := range set.Writers {
			res := &set.Writers[i]
			if res.Name != wr.Name() {
				continue
			}
			for j := range res.Components {
				for _, p := range res.Components[j].Paths {
					if ws.LiveFor(p) {
						res.Components[j].Consistency = None
						res.Consistency = None
					}
				}
			}
		}
	}
	err := c.CompleteCopy(ctx, set, wrs)
	if err == nil {
		return nil
	}
	err = errors.Join(err, c.Abort(ctx, set, wrs))
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.PhaseLimit)
	defer cancel()
	return errors.Join(err, c.Delete(actx, set.ID))
}

// Keep makes a held set permanent: it stays after its requester ends,
// until umbra shadow delete (umbra backup --keep-shadows).
func (c *Coordinator) Keep(set *Set) error {
	set.Temporary = false
	return c.store.SaveSet(set)
}
