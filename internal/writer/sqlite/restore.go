package sqlite

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
)

var _ writer.Restorer = (*Writer)(nil)

// PreRestore, in place, refuses while any process has the database open
// (SQLite has no server to stop: the operator stops the application), then
// moves the database, its -wal, -shm and -journal aside to
// NAME.umbra-before-restore-TIME. Restoring to a target touches nothing.
func (w *Writer) PreRestore(_ context.Context, r writer.Restore) error {
	if r.Target != "" {
		return nil
	}
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if pids := openedBy(w.path + suffix); len(pids) > 0 {
			return fmt.Errorf("sqlite writer %q: pre-restore: %s is open in process %v; stop the application that uses it, then restore again", w.name, w.path+suffix, pids)
		}
	}
	stamp := ".umbra-before-restore-" + time.Now().UTC().Format("20060102T150405Z")
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		p := w.path + suffix
		if err := os.Rename(p, p+stamp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sqlite writer %q: pre-restore: move %s aside: %w", w.name, p, err)
		}
	}
	return nil
}

// PostRestore checks the restored database with PRAGMA integrity_check.
func (w *Writer) PostRestore(ctx context.Context, r writer.Restore) error {
	if r.More {
		return nil
	}
	if err := IntegrityCheck(ctx, filepath.Join(r.Target, w.path)); err != nil {
		return fmt.Errorf("sqlite writer %q: post-restore: %w", w.name, err)
	}
	return nil
}

// openedBy lists the processes that have path open, from /proc (umbra runs
// as root, so it can read every process's descriptors).
func openedBy(path string) []int {
	want, err := os.Stat(path)
	if err != nil {
		return nil
	}
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			fi, err := os.Stat(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err == nil && os.SameFile(fi, want) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}
