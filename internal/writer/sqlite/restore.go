package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
)

var _ writer.Restorer = (*Writer)(nil)

// PreRestore, in place, refuses while any process has the database open
// (SQLite has no server to stop: the operator stops the application), then
// moves the database, its -wal, -shm and -journal aside to
// TOP/.umbra-before-restore-TIME/PATH (writer.MoveAside), where the
// application's own directory scans do not see them; MovedAside says where.
// Restoring to a target touches nothing.
func (w *Writer) PreRestore(_ context.Context, r writer.Restore) error {
	if r.Target != "" {
		return nil
	}
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if pids := openedBy(w.path + suffix); len(pids) > 0 {
			return fmt.Errorf("sqlite writer %q: pre-restore: %s is open in process %v; stop the application that uses it, then restore again", w.name, w.path+suffix, pids)
		}
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	w.aside.Reset()
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		p := w.path + suffix
		to, err := writer.MoveAside(p, stamp)
		if err != nil {
			return fmt.Errorf("sqlite writer %q: pre-restore: %w", w.name, err)
		}
		if to != "" {
			w.aside.Add(p, to)
		}
	}
	return nil
}

var _ writer.AsideMover = (*Writer)(nil)

// MovedAside lists what the last PreRestore moved aside.
func (w *Writer) MovedAside() []writer.Moved { return w.aside.List() }

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

var _ writer.Verifier = (*Writer)(nil)

// Verify runs PRAGMA integrity_check and PRAGMA foreign_key_check on the
// database restored under r.Target.
func (w *Writer) Verify(ctx context.Context, r writer.Restore) ([]writer.Check, error) {
	path := filepath.Join(r.Target, w.path)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("sqlite writer %q: verify: %w", w.name, err)
	}
	var checks []writer.Check
	start := time.Now()
	err := IntegrityCheck(ctx, path)
	checks = append(checks, writer.Check{Name: "integrity_check", OK: err == nil, Detail: errText(err), Duration: time.Since(start)})
	start = time.Now()
	err = foreignKeyCheck(ctx, path)
	checks = append(checks, writer.Check{Name: "foreign_key_check", OK: err == nil, Detail: errText(err), Duration: time.Since(start)})
	if c, ok := w.userCheck.Run(ctx, []string{"UMBRA_VERIFY_DIR=" + r.Target, "UMBRA_VERIFY_DB=" + path}, -1, -1); ok {
		checks = append(checks, c)
	}
	return checks, ctx.Err()
}

// foreignKeyCheck runs PRAGMA foreign_key_check on the database at path (a
// copy: it is opened for writing) and lists the first violations.
func foreignKeyCheck(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", dsn(path, "mode=rw"))
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return err
	}
	defer rows.Close()
	var found []string
	n := 0
	for rows.Next() {
		var table, parent string
		var rowid sql.NullInt64
		var fk int64
		if err := rows.Scan(&table, &rowid, &parent, &fk); err != nil {
			return err
		}
		if n++; n <= 10 {
			found = append(found, fmt.Sprintf("%s row %d refers to a missing row of %s", table, rowid.Int64, parent))
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%d foreign key violations: %s", n, strings.Join(found, "; "))
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
