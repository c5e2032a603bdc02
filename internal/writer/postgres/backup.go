package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/umbra-backup/umbra/internal/writer"
)

// closeLimit bounds closing a session; the server ends the backup and drops
// the temporary slot on its side when the connection goes, whatever we do.
const closeLimit = 5 * time.Second

// session is the held connection of one set. The backup and the temporary
// replication slot belong to it: if umbra dies, the kernel closes the
// socket and PostgreSQL aborts the backup and drops the slot by itself.
type session struct {
	conn     *pgx.Conn
	srv      *server
	slot     string
	label    string
	inBackup bool

	// ctx ends when Abort or the end of the set closes the session; every
	// statement runs under it, so closing never waits on a long query.
	ctx    context.Context
	cancel context.CancelFunc
	op     sync.Mutex // one statement at a time on conn
	once   sync.Once
}

// do runs fn on the session's connection under a context that ends with
// either ctx or the session.
func (s *session) do(ctx context.Context, fn func(ctx context.Context, conn *pgx.Conn) error) error {
	s.op.Lock()
	defer s.op.Unlock()
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("the set was aborted: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	return fn(ctx, s.conn)
}

// close ends the session: the server aborts a backup still running on it
// and drops the temporary slot.
func (s *session) close() {
	s.once.Do(func() {
		s.cancel()
		s.op.Lock()
		defer s.op.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), closeLimit)
		defer cancel()
		_ = s.conn.Close(ctx)
	})
}

// PrepareBackup checks what a backup needs: a supported primary whose files
// are here, the privileges for pg_backup_start/stop and a replication slot,
// and a WAL level that allows online backups.
// Check runs PrepareBackup's checks; they hold nothing afterwards.
func (w *Writer) Check(ctx context.Context) error {
	return w.PrepareBackup(ctx, writer.Set{Type: writer.Full})
}

func (w *Writer) PrepareBackup(ctx context.Context, _ writer.Set) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	srv, err := w.inspect(ctx, conn)
	if err != nil {
		return err
	}
	start, stop := backupFunctions(srv.versionNum)
	var user, walLevel string
	var replication, canStart, canStop bool
	var maxSlots, slots int
	err = conn.QueryRow(ctx, `SELECT current_user, rolsuper OR rolreplication,
		has_function_privilege(current_user, $1, 'EXECUTE'), has_function_privilege(current_user, $2, 'EXECUTE'),
		current_setting('wal_level'), current_setting('max_replication_slots')::int,
		(SELECT count(*) FROM pg_replication_slots)
		FROM pg_roles WHERE rolname = current_user`, start.signature, stop.signature).
		Scan(&user, &replication, &canStart, &canStop, &walLevel, &maxSlots, &slots)
	if err != nil {
		return w.queryErr("check privileges", err)
	}
	switch {
	case walLevel == "minimal":
		return fmt.Errorf("postgres writer %q: wal_level is minimal, which allows no online backup; set wal_level = replica in postgresql.conf and restart the server", w.name)
	case !replication:
		return fmt.Errorf("postgres writer %q: role %s may not create a replication slot; run ALTER ROLE %s REPLICATION, or connect as a superuser", w.name, user, user)
	case !canStart || !canStop:
		return fmt.Errorf("postgres writer %q: role %s may not run %s and %s; GRANT EXECUTE ON FUNCTION %s, %s TO %s, or connect as a superuser", w.name, user, start.name, stop.name, start.signature, stop.signature, user)
	case slots >= maxSlots:
		return fmt.Errorf("postgres writer %q: all %d replication slots are in use (max_replication_slots); raise it and restart, or drop an unused slot: %w", w.name, maxSlots, writer.ErrRetryable)
	}
	return nil
}

// backupFunction is pg_backup_start or pg_backup_stop under its name in a
// server version (renamed in 15).
type backupFunction struct{ name, signature, call string }

func backupFunctions(versionNum int) (start, stop backupFunction) {
	if versionNum >= 150000 {
		return backupFunction{"pg_backup_start", "pg_backup_start(text, boolean)", "SELECT pg_backup_start($1, true)"},
			backupFunction{"pg_backup_stop", "pg_backup_stop(boolean)", "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"}
	}
	return backupFunction{"pg_start_backup", "pg_start_backup(text, boolean, boolean)", "SELECT pg_start_backup($1, true, false)"},
		backupFunction{"pg_stop_backup", "pg_stop_backup(boolean, boolean)", "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"}
}

// PrepareSnapshot opens the held session, reserves the WAL from now on
// with a temporary physical replication slot, and starts a non-exclusive
// backup with an immediate ("fast") checkpoint. Nothing is blocked: the
// application goes on writing.
func (w *Writer) PrepareSnapshot(ctx context.Context, set writer.Set) error {
	w.mu.Lock()
	old := w.sess
	w.sess = nil
	w.mu.Unlock()
	if old != nil {
		old.close()
	}
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &session{conn: conn, ctx: sctx, cancel: cancel, slot: slotName(set.ID), label: "umbra " + set.ID}
	w.mu.Lock()
	w.sess = s
	w.mu.Unlock()
	return s.do(ctx, func(ctx context.Context, conn *pgx.Conn) error {
		if s.srv, err = w.inspect(ctx, conn); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true, true)", s.slot); err != nil {
			return w.queryErr("create the temporary replication slot "+s.slot, err)
		}
		start, _ := backupFunctions(s.srv.versionNum)
		if _, err := conn.Exec(ctx, start.call, s.label); err != nil {
			return w.queryErr(start.name, err)
		}
		s.inBackup = true
		return nil
	})
}

// slotName makes a replication slot name (lower case, digits, _) of a set id.
func slotName(setID string) string {
	var b strings.Builder
	b.WriteString("umbra_")
	for _, r := range strings.ToLower(setID) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()[:min(b.Len(), 63)]
}

// PostSnapshot ends the backup, unless a component lies on a volume the
// requester reads live: then the backup must stay open until it has read
// it, and CopyComplete ends it.
func (w *Writer) PostSnapshot(ctx context.Context, set writer.Set) (writer.Report, error) {
	s, err := w.inBackup(writer.PhasePostSnapshot)
	if err != nil {
		return writer.Report{}, err
	}
	for _, p := range s.srv.paths() {
		if set.LiveFor(p) {
			return writer.Report{}, nil
		}
	}
	return w.finish(ctx, s, set)
}

// CopyComplete ends a backup that PostSnapshot left open.
func (w *Writer) CopyComplete(ctx context.Context, set writer.Set) (writer.Report, error) {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil || !s.inBackup {
		return writer.Report{}, nil // ended at PostSnapshot
	}
	return w.finish(ctx, s, set)
}

func (w *Writer) inBackup(phase writer.Phase) (*session, error) {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil || !s.inBackup {
		return nil, fmt.Errorf("postgres writer %q: %s: no backup in progress (PrepareSnapshot did not run or the set was aborted)", w.name, phase)
	}
	return s, nil
}

// finish ends the backup, then copies the WAL from the start to the stop
// segment (kept by the slot) into the set's scratch directory and hands it
// on with backup_label and tablespace_map. The session closes once the WAL
// is safe, so the slot holds the server's WAL no longer than needed.
func (w *Writer) finish(ctx context.Context, s *session, set writer.Set) (writer.Report, error) {
	defer w.endSession(s)
	var stopLSN, label, spcmap, stopFile, archiveWarning string
	err := s.do(ctx, func(ctx context.Context, conn *pgx.Conn) error {
		_, stop := backupFunctions(s.srv.versionNum)
		if err := conn.QueryRow(ctx, stop.call).Scan(&stopLSN, &label, &spcmap); err != nil {
			return w.queryErr(stop.name, err)
		}
		s.inBackup = false
		if err := conn.QueryRow(ctx, "SELECT pg_walfile_name($1::pg_lsn)", stopLSN).Scan(&stopFile); err != nil {
			return w.queryErr("name the stop WAL file", err)
		}
		var err error
		archiveWarning, err = w.archiveHealth(ctx, conn)
		return err
	})
	if err != nil {
		return writer.Report{}, err
	}
	dir, err := set.ScratchFor(w.name)
	if err != nil {
		return writer.Report{}, fmt.Errorf("postgres writer %q: %w", w.name, err)
	}
	startLSN, startFile, err := parseLabel(label)
	if err != nil {
		return writer.Report{}, fmt.Errorf("postgres writer %q: %w", w.name, err)
	}
	walDir := s.srv.walDir
	if walDir == "" {
		walDir = filepath.Join(s.srv.dataDir, "pg_wal")
	}
	files, err := copyWAL(walDir, filepath.Join(dir, "pg_wal"), startFile, stopFile, s.srv.segSize)
	if err != nil {
		return writer.Report{}, fmt.Errorf("postgres writer %q: copy the backup's WAL: %w", w.name, err)
	}
	rep := writer.Report{Positions: map[string]string{
		"start_lsn": startLSN, "stop_lsn": stopLSN, "start_wal": startFile, "stop_wal": stopFile,
		writer.PosArchiveFrom: startFile,
	}}
	if archiveWarning != "" {
		rep.Warnings = append(rep.Warnings, archiveWarning)
	}
	for _, f := range files {
		rep.Files = append(rep.Files, writer.HandOn{Component: "data", Path: filepath.Join("pg_wal", f), Source: filepath.Join(dir, "pg_wal", f)})
	}
	// How the server was started (its command line: a port, a socket
	// directory, a configuration file given as options), which base
	// backups leave out: restore starts the server the same way.
	opts, err := os.ReadFile(filepath.Join(s.srv.dataDir, "postmaster.opts"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return writer.Report{}, fmt.Errorf("postgres writer %q: read how the server was started: %w", w.name, err)
	}
	for name, content := range map[string]string{"backup_label": label, "tablespace_map": spcmap, "postmaster.opts": string(opts)} {
		if content == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return writer.Report{}, fmt.Errorf("postgres writer %q: %w", w.name, err)
		}
		rep.Files = append(rep.Files, writer.HandOn{Component: "data", Path: name, Source: p})
	}
	return rep, nil
}

// parseLabel reads the start LSN and WAL file from a backup label, whose
// first line is "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)".
func parseLabel(label string) (lsn, file string, err error) {
	for line := range strings.Lines(label) {
		rest, ok := strings.CutPrefix(line, "START WAL LOCATION: ")
		if !ok {
			continue
		}
		if _, err := fmt.Sscanf(rest, "%s (file %24s)", &lsn, &file); err != nil {
			break
		}
		return lsn, file, nil
	}
	return "", "", fmt.Errorf("backup label without a readable START WAL LOCATION line:\n%s", label)
}

// endSession closes s if it is still the writer's session.
func (w *Writer) endSession(s *session) {
	w.mu.Lock()
	if w.sess == s {
		w.sess = nil
	}
	w.mu.Unlock()
	s.close()
}

// BackupComplete ends the set's session if it is still open. The writer
// truncates nothing: PostgreSQL recycles its WAL itself (and umbra prunes
// its own WAL archive after a backup).
func (w *Writer) BackupComplete(_ context.Context, _ writer.Completion) error {
	w.closeSession()
	return nil
}

// Abort closes the session, which makes the server abort the backup and
// drop the temporary slot. It is safe at any time and more than once.
func (w *Writer) Abort(_ context.Context, _ writer.Set) error {
	w.closeSession()
	return nil
}

func (w *Writer) closeSession() {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s != nil {
		w.endSession(s)
	}
}

// errNoSegment is returned when a WAL segment the backup needs is missing.
var errNoSegment = errors.New("WAL segment missing")

// archiveHealth says, when WAL archiving is on and its last attempt failed,
// that it does not work: a point-in-time restore cannot reach past the last
// archived segment, and nothing else would say so (issue 11: archiving
// stopped silently while backups went on reporting their positions).
func (w *Writer) archiveHealth(ctx context.Context, conn *pgx.Conn) (string, error) {
	var mode string
	var failed int64
	var lastArchived, lastFailed *string
	var failing bool
	err := conn.QueryRow(ctx, `SELECT current_setting('archive_mode'), failed_count, last_archived_wal, last_failed_wal,
		last_failed_time IS NOT NULL AND (last_archived_time IS NULL OR last_failed_time > last_archived_time)
		FROM pg_stat_archiver`).Scan(&mode, &failed, &lastArchived, &lastFailed, &failing)
	if err != nil {
		return "", w.queryErr("read pg_stat_archiver", err)
	}
	if mode == "off" || !failing {
		return "", nil
	}
	last := "none yet"
	if lastArchived != nil {
		last = *lastArchived
	}
	return fmt.Sprintf("WAL archiving is failing (%d failures, the last for %s; last archived: %s): a point-in-time restore cannot reach past the last archived segment until it works; PostgreSQL's log has archive_command's error",
		failed, deref(lastFailed), last), nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
