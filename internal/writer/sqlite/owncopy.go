package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	sqlite "modernc.org/sqlite"

	"github.com/umbra-backup/umbra/internal/writer"
)

var _ writer.PostSnapshotter = (*Writer)(nil)

// copyPages is how many pages one step of the online backup copies before
// the writer checks its context again.
const copyPages = 4096

// ownCopy is the writer's own copy of the database in a set where no
// provider can copy it consistently (ext4): a read transaction on a
// connection of its own, begun while Freeze holds the write lock, pins the
// database as it is at the freeze; after Thaw, PostSnapshot copies that
// state with SQLite's online backup API into the set's scratch directory.
// In WAL mode the reader blocks no writer. In a rollback journal mode its
// shared lock holds off this database's commits (not the other writers'
// of the set) until the copy is made: the application's writers wait in
// their busy handlers for that long.
type ownCopy struct {
	db     *sql.DB
	conn   *sql.Conn // in a read transaction
	copied string    // the copy's path, once made
}

// beginOwnCopy starts the read transaction of a set's own copy; Freeze
// calls it holding the write lock, so the snapshot is the frozen state.
func (w *Writer) beginOwnCopy(ctx context.Context) (*ownCopy, error) {
	// Read-write, as a reader of a WAL database needs its -shm; it
	// writes nothing.
	db, err := sql.Open("sqlite", dsn(w.path, "mode=rw"))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", w.path, err)
	}
	db.SetMaxOpenConns(1)
	oc := &ownCopy{db: db}
	if oc.conn, err = db.Conn(ctx); err != nil {
		return nil, errors.Join(w.sqlErr(ctx, writer.PhaseFreeze, "open a reader", err), db.Close())
	}
	// A deferred transaction's snapshot is taken at its first read.
	var n int
	if _, err = oc.conn.ExecContext(ctx, "BEGIN"); err == nil {
		err = oc.conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&n)
	}
	if err != nil {
		return nil, errors.Join(w.sqlErr(ctx, writer.PhaseFreeze, "begin the read transaction of the copy", err), oc.close())
	}
	return oc, nil
}

// make copies the database as the read transaction sees it to
// scratch/<file name>, with the live file's mode, owner and times.
func (oc *ownCopy) make(ctx context.Context, path, scratch string) error {
	dst := filepath.Join(scratch, filepath.Base(path))
	for _, p := range []string{dst, dst + "-journal", dst + "-wal"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	err := oc.conn.Raw(func(dc any) error {
		src, ok := dc.(interface {
			NewBackup(string) (*sqlite.Backup, error)
		})
		if !ok {
			return fmt.Errorf("the SQLite driver has no online backup (%T)", dc)
		}
		bk, err := src.NewBackup(dst)
		if err != nil {
			return err
		}
		for more := true; more && err == nil; {
			if err = ctx.Err(); err == nil {
				more, err = bk.Step(copyPages)
			}
		}
		return errors.Join(err, bk.Finish())
	})
	if err != nil {
		return fmt.Errorf("online backup of %s into %s: %w", path, scratch, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	oc.copied = dst
	return nil
}

// close ends the read transaction.
func (oc *ownCopy) close() error {
	var err error
	if oc.conn != nil {
		err = oc.conn.Close() // rolls the read transaction back
	}
	return errors.Join(err, oc.db.Close())
}

// PostSnapshot makes the set's own copy from the read transaction Freeze
// began, ends that, and says where the database is to be read: the copy,
// which folds in the WAL, so the live -wal and -journal files stay out.
func (w *Writer) PostSnapshot(ctx context.Context, set writer.Set) (writer.Report, error) {
	if !set.CopiesOwn(w.name, w.component) {
		return writer.Report{}, nil
	}
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil || s.own == nil {
		return writer.Report{}, fmt.Errorf("sqlite writer %q: post-snapshot: no read transaction for the copy of %s: Freeze did not run in this set, or it was aborted", w.name, w.path)
	}
	oc := s.own
	if oc.copied == "" {
		scratch, err := set.ScratchFor(w.name)
		if err == nil {
			err = writer.CheckRoom(scratch, w.path, w.path+"-wal")
		}
		if err == nil {
			err = oc.make(ctx, w.path, scratch)
		}
		if err != nil {
			return writer.Report{}, fmt.Errorf("sqlite writer %q: post-snapshot: %w", w.name, err)
		}
	}
	w.mu.Lock()
	s.own = nil
	w.mu.Unlock()
	if err := oc.close(); err != nil {
		return writer.Report{}, fmt.Errorf("sqlite writer %q: post-snapshot: end the read transaction: %w", w.name, err)
	}
	return writer.Report{Copies: []writer.OwnCopy{
		{Path: w.path, Source: oc.copied},
		{Path: w.path + "-wal"},
		{Path: w.path + "-journal"},
	}}, nil
}
