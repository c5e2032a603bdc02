// Package sqlite is the writer for one SQLite database file: it blocks
// writers with BEGIN IMMEDIATE on a held connection while readers go on.
package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/heldconn"
)

// header starts every SQLite 3 database file.
const header = "SQLite format 3\x00"

// Busy timeouts, in milliseconds. The freeze waits as long as the
// coordinator's context allows; the timeout is only a backstop. The TRUNCATE
// checkpoint holds the write lock while it waits for readers, so it gives up
// soon rather than stall the application.
const (
	freezeBusyMillis   = 60000
	truncateBusyMillis = 2000
)

// Primary SQLite result codes the writer branches on (sqlite3.h).
const (
	codeBusy     = 5
	codeLocked   = 6
	codeReadOnly = 8
	codeCantOpen = 14
)

var (
	_ writer.Writer           = (*Writer)(nil)
	_ writer.SnapshotPreparer = (*Writer)(nil)
	_ writer.Freezer          = (*Writer)(nil)
	_ writer.Completer        = (*Writer)(nil)
	_ writer.Aborter          = (*Writer)(nil)
)

// Writer makes one SQLite database consistent: between Freeze and Thaw it
// holds a write transaction (BEGIN IMMEDIATE) on its own connection, so
// other writers wait in their busy handlers and readers carry on. The lock
// is an fcntl lock, released by the kernel if umbra dies.
//
// A Writer may serve one set after another; Abort ends the current one.
type Writer struct {
	name      string
	path      string
	component string
	userCheck writer.UserVerify // the operator's check of a verification

	mu   sync.Mutex
	sess *session // nil between sets

	aside writer.AsideList // what PreRestore moved aside
}

// session is the held connection of one set.
type session struct {
	*heldconn.Conn          // every statement runs under Bind: closing never waits
	frozen         bool     // guarded by Writer.mu
	own            *ownCopy // the set's own copy, where the writer makes it; guarded by Writer.mu
}

// New returns the writer named name (such as "sqlite:app") for the database
// file in opts["path"]. The only option is path; the caller handles the
// instance name.
func New(name string, opts map[string]string) (*Writer, error) {
	if err := writer.CheckOptions("sqlite", name, opts, []string{"path"}); err != nil {
		return nil, err
	}
	p := opts["path"]
	if p == "" {
		return nil, fmt.Errorf("sqlite writer %q: option path is required: the database file, such as path=/var/lib/app/app.db", name)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("sqlite writer %q: path=%s: %w", name, p, err)
	}
	uv, err := writer.ParseUserVerify("sqlite", name, opts)
	if err != nil {
		return nil, err
	}
	return &Writer{name: name, path: abs, component: filepath.Base(abs), userCheck: uv}, nil
}

// Name returns the instance name.
func (w *Writer) Name() string { return w.name }

// Identify checks that path is an SQLite database and describes it: one
// component holding the file and its -wal and -journal siblings, whether
// they exist now or not.
func (w *Writer) Identify(ctx context.Context) (writer.Metadata, error) {
	if err := w.check(); err != nil {
		return writer.Metadata{}, err
	}
	version, err := libraryVersion(ctx)
	if err != nil {
		return writer.Metadata{}, fmt.Errorf("sqlite writer %q: identify: %w", w.name, err)
	}
	return writer.Metadata{
		Writer:   "sqlite",
		Instance: w.name,
		Version:  version,
		Components: []writer.Component{{
			Name:        w.component,
			Kind:        writer.KindDatabase,
			Paths:       []string{w.path, w.path + "-wal", w.path + "-journal"},
			Selectable:  true,
			BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
			Needs:       writer.NeedQuiesced,
			Restore:     writer.RestoreMethod{Method: "stop-service"},
			Logs:        writer.LogFacts{Truncates: "WAL (wal_checkpoint(TRUNCATE)) at BackupComplete"},
			OwnCopy:     true,
		}},
	}, nil
}

// PrepareSnapshot opens the held connection and runs a passive checkpoint,
// which blocks nobody and keeps the WAL that Freeze has to wait behind
// small.
func (w *Writer) PrepareSnapshot(ctx context.Context, _ writer.Set) error {
	s, err := w.session(ctx)
	if err != nil {
		return fmt.Errorf("sqlite writer %q: prepare-snapshot: %w", w.name, err)
	}
	ctx, done := s.Bind(ctx)
	defer done()
	var busy, frames, moved int64
	err = s.Conn.Conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &moved)
	if err != nil {
		return w.sqlErr(ctx, writer.PhasePrepareSnapshot, "passive checkpoint", err)
	}
	return nil
}

// Freeze takes the write lock with BEGIN IMMEDIATE. It waits for a writer
// that is in a transaction now, for as long as ctx allows; when ctx ends
// first it returns an error wrapping writer.ErrRetryable. Where the writer
// makes the set's copy itself (set.OwnCopies), it then pins the database
// with a read transaction of its own, which PostSnapshot copies (see
// ownCopy).
func (w *Writer) Freeze(ctx context.Context, set writer.Set) error {
	s, err := w.session(ctx)
	if err != nil {
		return fmt.Errorf("sqlite writer %q: freeze: %w", w.name, err)
	}
	fctx, done := s.Bind(ctx)
	defer done()
	err = beginImmediate(fctx, s.Conn.Conn)

	w.mu.Lock()
	current := w.sess == s
	if err == nil && current {
		s.frozen = true
	}
	w.mu.Unlock()
	switch {
	case !current:
		// Abort took the session and closes it, which rolls back.
		return fmt.Errorf("sqlite writer %q: freeze: aborted while waiting for the write lock on %s: %w", w.name, w.path, context.Canceled)
	case err != nil:
		// Close the connection so that nothing half-taken stays behind.
		err = w.sqlErr(fctx, writer.PhaseFreeze, "BEGIN IMMEDIATE (waiting for the write lock)", err)
		return errors.Join(err, w.drop(s))
	}
	if !set.CopiesOwn(w.name, w.component) {
		return nil
	}
	oc, err := w.beginOwnCopy(fctx)
	if err != nil {
		return errors.Join(err, w.drop(s))
	}
	w.mu.Lock()
	current = w.sess == s
	if current {
		s.own = oc
	}
	w.mu.Unlock()
	if !current {
		// Abort came meanwhile and found no reader to close.
		return errors.Join(fmt.Errorf("sqlite writer %q: freeze: aborted: %w", w.name, context.Canceled), oc.close())
	}
	return nil
}

// beginImmediate takes the write lock, polling for it. SQLite's busy
// handler sleeps with backoff (up to 100 ms a try) and never wins against an
// application that commits in a tight loop: the lock is free only for
// microseconds between two commits. Measured here, that starved Freeze for
// 2.4 s; polling every 50 µs catches the gap within milliseconds. The poll
// lasts only until the lock is won, bounded by ctx.
func beginImmediate(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		return err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf("PRAGMA busy_timeout = %d", freezeBusyMillis))
	for {
		_, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		if err == nil || primaryCode(err) != codeBusy {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Microsecond):
		}
	}
}

// Thaw rolls the empty transaction back. If that fails it closes the
// connection, which releases the lock too, and still reports the failure.
func (w *Writer) Thaw(ctx context.Context, _ writer.Set) error {
	w.mu.Lock()
	s := w.sess
	frozen := s != nil && s.frozen
	w.mu.Unlock()
	if !frozen {
		return nil
	}
	tctx, done := s.Bind(ctx)
	defer done()
	if _, err := s.Conn.Conn.ExecContext(tctx, "ROLLBACK"); err != nil {
		err = fmt.Errorf("sqlite writer %q: thaw: ROLLBACK on %s failed, so closed the connection, which releases the lock: %w", w.name, w.path, err)
		return errors.Join(err, w.drop(s))
	}
	w.mu.Lock()
	s.frozen = false
	w.mu.Unlock()
	return nil
}

// BackupComplete truncates the WAL (wal_checkpoint(TRUNCATE)) only if the
// database's component was stored and the backup type truncates; then, and
// in every other case, it closes the held connection.
//
// Closing the connection is what any SQLite client does: if it is the last
// connection, SQLite itself checkpoints the WAL into the database file.
func (w *Writer) BackupComplete(ctx context.Context, c writer.Completion) error {
	var err error
	if c.Components[w.component] && c.Set.Type.Truncates() {
		err = w.truncateWAL(ctx)
	}
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s != nil {
		err = errors.Join(err, w.drop(s))
	}
	return err
}

func (w *Writer) truncateWAL(ctx context.Context) error {
	s, err := w.session(ctx)
	if err != nil {
		return fmt.Errorf("sqlite writer %q: backup-complete: %w", w.name, err)
	}
	ctx, done := s.Bind(ctx)
	defer done()
	// A checkpoint the application runs (every wal_autocheckpoint pages)
	// holds SQLite's checkpoint lock, and a TRUNCATE that meets it returns
	// busy at once, without its busy handler: try again until the budget is
	// spent, each try waiting only for what is left of it.
	deadline := time.Now().Add(truncateBusyMillis * time.Millisecond)
	for {
		left := time.Until(deadline).Milliseconds()
		if _, err := s.Conn.Conn.ExecContext(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", max(left, 1))); err != nil {
			return w.sqlErr(ctx, writer.PhaseBackupComplete, "busy_timeout", err)
		}
		var busy, frames, moved int64
		err = s.Conn.Conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &moved)
		if err != nil {
			return w.sqlErr(ctx, writer.PhaseBackupComplete, "wal_checkpoint(TRUNCATE)", err)
		}
		if busy == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sqlite writer %q: backup-complete: WAL of %s not truncated: readers, writers or the application's own checkpoints kept it busy for %d ms; the next successful backup truncates it: %w",
				w.name, w.path, truncateBusyMillis, writer.ErrRetryable)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sqlite writer %q: backup-complete: %w", w.name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Abort closes the held connection, which rolls back a freeze and releases
// the lock. It interrupts a Freeze still waiting for the lock. Abort is
// idempotent and safe at any time.
func (w *Writer) Abort(_ context.Context, _ writer.Set) error {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := w.drop(s); err != nil {
		return fmt.Errorf("sqlite writer %q: abort: %w", w.name, err)
	}
	return nil
}

// session returns the held connection of the current set, opening it if
// needed.
func (w *Writer) session(ctx context.Context) (*session, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sess != nil {
		return w.sess, nil
	}
	if err := w.check(); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(w.path, fmt.Sprintf("mode=rw&_pragma=busy_timeout(%d)", freezeBusyMillis)))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", w.path, err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open %s: %w", w.path, err), db.Close())
	}
	s := &session{Conn: heldconn.New(db, conn)}
	w.sess = s
	return s, nil
}

// drop ends s: it interrupts whatever runs on it and closes the connection,
// which rolls back an open transaction.
func (w *Writer) drop(s *session) error {
	w.mu.Lock()
	if w.sess == s {
		w.sess = nil
	}
	oc := s.own
	s.own = nil
	w.mu.Unlock()
	err := s.Close()
	if oc != nil {
		err = errors.Join(err, oc.close())
	}
	return err
}

// sqlErr describes a failed statement; time-outs and busy or locked
// databases are retryable.
func (w *Writer) sqlErr(ctx context.Context, phase writer.Phase, what string, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return fmt.Errorf("sqlite writer %q: %s: %s on %s: gave up: %w: %w", w.name, phase, what, w.path, cause, writer.ErrRetryable)
	}
	if code := primaryCode(err); code == codeBusy || code == codeLocked {
		return fmt.Errorf("sqlite writer %q: %s: %s on %s: %w: %w", w.name, phase, what, w.path, err, writer.ErrRetryable)
	}
	return fmt.Errorf("sqlite writer %q: %s: %s on %s: %w", w.name, phase, what, w.path, err)
}

// check reports, for the operator, why path is not a usable database.
func (w *Writer) check() error {
	f, err := os.Open(w.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sqlite writer %q: %s does not exist; check path=", w.name, w.path)
	}
	if err != nil {
		return fmt.Errorf("sqlite writer %q: %w; check path= and umbra's permissions", w.name, err)
	}
	defer f.Close()
	buf := make([]byte, len(header))
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("sqlite writer %q: read %s: %w", w.name, w.path, err)
	}
	if n < len(header) || !bytes.Equal(buf, []byte(header)) {
		return fmt.Errorf("sqlite writer %q: %s is not an SQLite database (header %q, want %q); check path=", w.name, w.path, buf[:n], header)
	}
	return nil
}

// libraryVersion asks the SQLite library linked into umbra for its version.
func libraryVersion(ctx context.Context) (string, error) {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		return "", err
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&v); err != nil {
		return "", fmt.Errorf("sqlite_version(): %w", err)
	}
	return v, nil
}

// dsn makes an SQLite URI filename for path, escaping what a URI would
// take for a query or fragment.
func dsn(path, query string) string {
	return "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path) + "?" + query
}

func primaryCode(err error) int {
	var se interface{ Code() int }
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// IntegrityCheck runs PRAGMA integrity_check on the database at path and
// returns an error listing the first problems unless it says "ok". It opens
// the file read-only in place; where SQLite cannot do that (a read-only
// shadow copy with a WAL needs a writable -shm, a hot journal needs a
// rollback) it checks a copy of the database and its -wal and -journal in
// a temporary directory, so path itself is never changed.
func IntegrityCheck(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("integrity check: %s does not exist", path)
		}
		return fmt.Errorf("integrity check: %w", err)
	}
	err := integrityCheck(ctx, dsn(path, "mode=ro"))
	if code := primaryCode(err); code != codeCantOpen && code != codeReadOnly {
		if err != nil {
			return fmt.Errorf("integrity check %s: %w", path, err)
		}
		return nil
	}
	dir, err := os.MkdirTemp("", "umbra-sqlite-check-")
	if err != nil {
		return fmt.Errorf("integrity check %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	for _, suffix := range []string{"", "-wal", "-journal"} {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("integrity check %s: %w", path, err)
		}
		if err := copyFile(path+suffix, tmp+suffix); err != nil {
			return fmt.Errorf("integrity check %s: copy to %s: %w", path, dir, err)
		}
	}
	if err := integrityCheck(ctx, dsn(tmp, "mode=rw")); err != nil {
		return fmt.Errorf("integrity check %s (checked a copy): %w", path, err)
	}
	return nil
}

func integrityCheck(ctx context.Context, dsn string) error {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return err
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return err
		}
		problems = append(problems, s)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(problems) == 1 && problems[0] == "ok" {
		return nil
	}
	const show = 10
	more := ""
	if len(problems) > show {
		more = fmt.Sprintf("; and %d more", len(problems)-show)
		problems = problems[:show]
	}
	return fmt.Errorf("database is damaged: %s%s", strings.Join(problems, "; "), more)
}

// copyFile copies src to dst; a missing src is not an error.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		return errors.Join(err, out.Close())
	}
	return out.Close()
}
