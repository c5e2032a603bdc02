// Package mariadb is the writer for a MariaDB server (10.4 or later): it
// holds BACKUP STAGE on one connection from PrepareSnapshot to Thaw and
// records the binary log position the snapshot ends at.
package mariadb

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/heldconn"
)

// Components of every MariaDB writer. The binary logs are a component of
// their own only when they live outside the data directory.
const (
	DataComponent   = "datadir"
	BinlogComponent = "binlog"
)

// Keys of writer.Report.Positions.
const (
	PosFile = "binlog_file"     // binary log file the snapshot ends in
	PosPos  = "binlog_position" // its size at the snapshot: the end of the last event
	PosGTID = "gtid_binlog_pos" // @@gtid_binlog_pos at the snapshot
)

// defaultSocket is where Debian's MariaDB listens.
const defaultSocket = "/run/mysqld/mysqld.sock"

// purgeLimit is how long BackupComplete retries a purge the server did
// not finish.
const purgeLimit = 5 * time.Second

// defaultLockWait is the lock_wait_timeout, in seconds, of a BACKUP STAGE
// statement whose context has no deadline.
const defaultLockWait = 300

// Server error numbers the writer branches on (mysqld_error.h).
const (
	errAccessDenied     = 1045 // wrong user or password
	errLockWaitTimeout  = 1205
	errDeadlock         = 1213
	errSpecificAccess   = 1227 // a privilege is missing
	errUnknownTarget    = 1373 // PURGE: log not in the index
	errNoPasswordDenied = 1698 // unix_socket or similar refused
)

var options = []string{"host", "password", "password_file", "port", "purge_binlogs", "service", "socket", "start", "stop", "user"}

var (
	_ writer.Writer           = (*Writer)(nil)
	_ writer.BackupPreparer   = (*Writer)(nil)
	_ writer.SnapshotPreparer = (*Writer)(nil)
	_ writer.Freezer          = (*Writer)(nil)
	_ writer.PostSnapshotter  = (*Writer)(nil)
	_ writer.Completer        = (*Writer)(nil)
	_ writer.Aborter          = (*Writer)(nil)
	_ writer.Restorer         = (*Writer)(nil)
)

// Writer makes one MariaDB server consistent. PrepareSnapshot runs BACKUP
// STAGE START, FLUSH and BLOCK_DDL on a connection of its own, Freeze
// BLOCK_COMMIT (and reads the binary log position), Thaw BACKUP STAGE END.
// Every lock belongs to that connection, so closing it (Abort, or the kernel
// when umbra dies) releases them all.
//
// InnoDB flushes pages in the background even under BLOCK_COMMIT, so the
// data directory needs an atomic snapshot of its volume.
//
// A Writer may serve one set after another; Abort ends the current one.
type Writer struct {
	userCheck writer.UserVerify // the operator's check of a verification
	name      string
	cfg       *mysql.Config
	where     string // the server's address, for messages
	purge     bool
	stop      string
	start     string
	service   string

	mu        sync.Mutex
	sess      *session             // nil between sets
	gen       int                  // counts Aborts, so a phase racing one does not open a session after it
	positions map[string]*position // set id → recorded at Freeze

	aside writer.AsideList // what PreRestore moved aside
}

// session is the held connection of one set.
type session struct {
	*heldconn.Conn        // every statement runs under Bind: closing never waits
	user           string // 'name'@'host', for GRANT in messages
	logBin         bool
	stage          int // BACKUP STAGEs done, counted in stages; guarded by Writer.mu
}

// stages are the BACKUP STAGE steps in order; END releases them all.
var stages = []string{"START", "FLUSH", "BLOCK_DDL", "BLOCK_COMMIT"}

const (
	stageBlockDDL    = 3
	stageBlockCommit = 4
)

// New returns the writer named name (such as "mariadb:main") for the server
// that opts describe:
//
//	socket=PATH            Unix socket (default /run/mysqld/mysqld.sock), or
//	host=HOST, port=N      TCP (port 3306 by default)
//	user=NAME              default root
//	password / password_file / MYSQL_PWD   see writer.Password
//	purge_binlogs=BOOL     purge binary logs before the backup's position at
//	                       BackupComplete (default false)
//	stop=CMD, start=CMD    shell commands that stop and start the server for
//	                       a restore, or
//	service=UNIT           the systemd unit to stop and start
func New(name string, opts map[string]string) (*Writer, error) {
	if err := writer.CheckOptions("mariadb", name, opts, options); err != nil {
		return nil, err
	}
	cfg := mysql.NewConfig()
	cfg.User = cmp.Or(opts["user"], "root")
	cfg.Timeout = 10 * time.Second // dial
	cfg.InterpolateParams = true
	// The driver would log to stderr; every error reaches the caller.
	cfg.Logger = &mysql.NopLogger{}
	switch host, socket := opts["host"], opts["socket"]; {
	case host != "" && socket != "":
		return nil, fmt.Errorf("mariadb writer %q: give socket= or host=, not both", name)
	case host != "":
		port := cmp.Or(opts["port"], "3306")
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("mariadb writer %q: port=%s is not a TCP port (1-65535)", name, port)
		}
		cfg.Net, cfg.Addr = "tcp", net.JoinHostPort(host, port)
	default:
		if opts["port"] != "" {
			return nil, fmt.Errorf("mariadb writer %q: port= needs host=; over a socket give socket= only", name)
		}
		socket = cmp.Or(socket, defaultSocket)
		if !filepath.IsAbs(socket) {
			return nil, fmt.Errorf("mariadb writer %q: socket=%s must be an absolute path", name, socket)
		}
		cfg.Net, cfg.Addr = "unix", socket
	}
	pw, err := writer.Password(opts, "MYSQL_PWD")
	if err != nil {
		return nil, fmt.Errorf("mariadb writer %q: %w", name, err)
	}
	cfg.Passwd = pw
	w := &Writer{
		name:      name,
		cfg:       cfg,
		where:     cfg.Addr,
		stop:      opts["stop"],
		start:     opts["start"],
		service:   opts["service"],
		positions: map[string]*position{},
	}
	if cfg.Net == "unix" {
		w.where = "socket " + cfg.Addr
	}
	if v, ok := opts["purge_binlogs"]; ok {
		if w.purge, err = strconv.ParseBool(v); err != nil {
			return nil, fmt.Errorf("mariadb writer %q: purge_binlogs=%s: want true or false", name, v)
		}
	}
	uv, err := writer.ParseUserVerify("mariadb", name, opts)
	if err != nil {
		return nil, err
	}
	w.userCheck = uv
	return w, nil
}

// Name returns the instance name.
func (w *Writer) Name() string { return w.name }

// Identify describes the server: its version, the data directory (with
// InnoDB's directories that lie outside it) and, when they lie elsewhere,
// the binary logs. It sets LogsOwnedBy while a replica reads the binary
// log, so that the set truncates nothing.
func (w *Writer) Identify(ctx context.Context) (writer.Metadata, error) {
	db, conn, err := w.connect(ctx)
	if err != nil {
		return writer.Metadata{}, err
	}
	defer closeConn(db, conn)
	f, err := w.facts(ctx, conn, writer.PhaseIdentify)
	if err != nil {
		return writer.Metadata{}, err
	}
	md := w.metadata(f)
	if f.logBin {
		replicas, err := w.replicas(ctx, conn, writer.PhaseIdentify)
		if err != nil {
			return writer.Metadata{}, err
		}
		if len(replicas) > 0 {
			md.LogsOwnedBy = "replicas read the binary log (" + strings.Join(replicas, ", ") + ")"
		}
	}
	return md, nil
}

// PrepareBackup checks, without holding anything afterwards, that the
// writer's user may run what the set needs: BACKUP STAGE (RELOAD), SHOW
// MASTER STATUS (BINLOG MONITOR), with a relaxed
// innodb_flush_log_at_trx_commit setting it for Freeze's flush (SUPER), and
// with purge_binlogs PURGE BINARY LOGS (BINLOG ADMIN) and seeing replicas'
// threads (PROCESS).
// Check runs PrepareBackup's checks; they hold nothing afterwards.
func (w *Writer) Check(ctx context.Context) error {
	return w.PrepareBackup(ctx, writer.Set{Type: writer.Full})
}

func (w *Writer) PrepareBackup(ctx context.Context, _ writer.Set) error {
	db, conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(db, conn)
	f, err := w.facts(ctx, conn, writer.PhasePrepareBackup)
	if err != nil {
		return err
	}
	if w.purge && !f.logBin {
		return fmt.Errorf("mariadb writer %q: purge_binlogs=true but the server writes no binary log (log_bin is off); turn purge_binlogs off or enable log_bin", w.name)
	}
	// Trying is the only sure test of privileges that may come from roles.
	// START blocks nobody; a time-out means another backup or a LOCK
	// TABLES holds it, and this is only a check: PrepareSnapshot waits.
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET STATEMENT lock_wait_timeout=%d FOR BACKUP STAGE START", min(lockWait(ctx), 10))); err != nil {
		return w.sqlErr(ctx, writer.PhasePrepareBackup, "BACKUP STAGE START", f.user, "RELOAD", err)
	}
	if _, err := conn.ExecContext(ctx, "BACKUP STAGE END"); err != nil {
		return w.sqlErr(ctx, writer.PhasePrepareBackup, "BACKUP STAGE END", f.user, "", err)
	}
	if f.logBin {
		if _, err := readPosition(ctx, conn); err != nil {
			return w.sqlErr(ctx, writer.PhasePrepareBackup, "SHOW MASTER STATUS", f.user, "BINLOG MONITOR", err)
		}
	}
	if _, err := w.setRedoFlush(ctx, conn, writer.PhasePrepareBackup, f.user, -1); err != nil {
		return err
	}
	if !w.purge {
		return nil
	}
	grants, err := globalGrants(ctx, conn)
	if err != nil {
		return w.sqlErr(ctx, writer.PhasePrepareBackup, "SHOW GRANTS", f.user, "", err)
	}
	for _, need := range []struct{ privs, why string }{
		{"BINLOG ADMIN", "PURGE BINARY LOGS (purge_binlogs=true) needs it"},
		{"PROCESS", "purge_binlogs=true needs it to see replicas that still read the binary log"},
	} {
		if !grants["ALL PRIVILEGES"] && !grants[need.privs] && !(need.privs == "BINLOG ADMIN" && grants["SUPER"] && f.older("10.5.2")) {
			return fmt.Errorf("mariadb writer %q: user %s lacks the %s privilege: %s; GRANT %s ON *.* TO %s, or turn purge_binlogs off",
				w.name, f.user, need.privs, need.why, need.privs, f.user)
		}
	}
	return nil
}

// PrepareSnapshot opens the held connection and runs BACKUP STAGE START,
// FLUSH and BLOCK_DDL: from here until Thaw, DDL waits, DML goes on. A
// lock wait that outlasts ctx is retryable; any failure closes the
// connection, which releases what was taken.
func (w *Writer) PrepareSnapshot(ctx context.Context, set writer.Set) error {
	if w.ownCopyData(set) {
		return nil // mariadb-backup takes BACKUP STAGE at PostSnapshot
	}
	s, err := w.session(ctx, writer.PhasePrepareSnapshot)
	if err != nil {
		return err
	}
	if err := w.advance(ctx, s, stageBlockDDL, writer.PhasePrepareSnapshot); err != nil {
		return errors.Join(err, w.drop(s))
	}
	return nil
}

// Freeze runs BACKUP STAGE BLOCK_COMMIT on PrepareSnapshot's connection
// and, while commits are blocked, reads the binary log position and
// @@gtid_binlog_pos. When ctx ends first it returns an error wrapping
// writer.ErrRetryable.
func (w *Writer) Freeze(ctx context.Context, set writer.Set) error {
	if w.ownCopyData(set) {
		return nil
	}
	// Only PrepareSnapshot opens the session: a Freeze that comes after an
	// Abort must not freeze again with no Thaw to follow.
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil {
		return fmt.Errorf("mariadb writer %q: freeze: no BACKUP STAGE in progress: PrepareSnapshot did not run, or the set was aborted", w.name)
	}
	var err error
	if err := w.advance(ctx, s, stageBlockCommit, writer.PhaseFreeze); err != nil {
		return errors.Join(err, w.drop(s))
	}
	fctx, done := s.Bind(ctx)
	err = w.flushRedo(fctx, s)
	done()
	if err != nil {
		return errors.Join(err, w.drop(s))
	}
	pos := &position{}
	if s.logBin {
		fctx, done := s.Bind(ctx)
		pos, err = readPosition(fctx, s.Conn.Conn)
		if err != nil {
			err = w.sqlErr(fctx, writer.PhaseFreeze, "SHOW MASTER STATUS", s.user, "BINLOG MONITOR", err)
		}
		done()
		if err != nil {
			return errors.Join(err, w.drop(s))
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sess != s {
		return fmt.Errorf("mariadb writer %q: freeze: aborted: %w", w.name, context.Canceled)
	}
	w.positions[set.ID] = pos
	return nil
}

// flushRedo makes InnoDB's redo log durable up to the last commit, with
// commits blocked. With innodb_flush_log_at_trx_commit=0 acknowledged
// commits wait in the log buffer for up to a second (with 2, in the page
// cache), and BLOCK_COMMIT writes none of them: a snapshot would lose them,
// and disagree with the binary log it holds. FLUSH ENGINE LOGS writes the
// buffer only as durably as the setting says (with 0, not at all), so the
// setting is 1 for the instant of the flush and then what it was. Nothing
// commits meanwhile, so the application pays nothing for it.
func (w *Writer) flushRedo(ctx context.Context, s *session) error {
	trx, err := w.setRedoFlush(ctx, s.Conn.Conn, writer.PhaseFreeze, s.user, 1)
	if err != nil || trx == durableTrx {
		return err
	}
	_, err = s.Conn.Conn.ExecContext(ctx, "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
	if err != nil {
		err = w.sqlErr(ctx, writer.PhaseFreeze, "FLUSH ENGINE LOGS", s.user, "RELOAD", err)
	}
	// The setting goes back even when the flush failed.
	return errors.Join(err, w.resetRedoFlush(ctx, s.Conn.Conn, writer.PhaseFreeze, trx))
}

// resetRedoFlush sets innodb_flush_log_at_trx_commit back to trx, even if
// ctx has ended, within a limit of its own.
func (w *Writer) resetRedoFlush(ctx context.Context, conn *sql.Conn, phase writer.Phase, trx int) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resetLimit)
	defer cancel()
	if _, err := conn.ExecContext(rctx, fmt.Sprintf("SET GLOBAL innodb_flush_log_at_trx_commit=%d", trx)); err != nil {
		return fmt.Errorf("mariadb writer %q: %s: innodb_flush_log_at_trx_commit could not be set back to %d and is 1 now (durable, slower); SET GLOBAL innodb_flush_log_at_trx_commit=%d: %w", w.name, phase, trx, trx, err)
	}
	return nil
}

// resetLimit bounds setting innodb_flush_log_at_trx_commit back.
const resetLimit = 10 * time.Second

// durableTrx stands for the innodb_flush_log_at_trx_commit settings that
// make every commit durable when it is acknowledged (1 and 3).
const durableTrx = -1

// setRedoFlush reads innodb_flush_log_at_trx_commit and, unless it is
// durable (then it returns durableTrx), sets it to v. PrepareBackup sets it
// to what it is, the one sure test that the user may (roles included).
func (w *Writer) setRedoFlush(ctx context.Context, conn *sql.Conn, phase writer.Phase, user string, v int) (int, error) {
	var trx int
	if err := conn.QueryRowContext(ctx, "SELECT @@global.innodb_flush_log_at_trx_commit").Scan(&trx); err != nil {
		return 0, w.sqlErr(ctx, phase, "read innodb_flush_log_at_trx_commit", user, "", err)
	}
	if trx == 1 || trx == 3 {
		return durableTrx, nil
	}
	if v < 0 {
		v = trx
	}
	q := fmt.Sprintf("SET GLOBAL innodb_flush_log_at_trx_commit=%d", v)
	if _, err := conn.ExecContext(ctx, q); err != nil {
		if context.Cause(ctx) != nil {
			return 0, w.sqlErr(ctx, phase, q, user, "", err)
		}
		return 0, fmt.Errorf("mariadb writer %q: %s: innodb_flush_log_at_trx_commit=%d leaves acknowledged commits out of the redo log, so umbra sets it to 1 for the instant of a flush while commits are blocked, and the user may not: %s: %w; GRANT SUPER ON *.* TO %s, or run the server with innodb_flush_log_at_trx_commit=1",
			w.name, phase, trx, q, err, user)
	}
	return trx, nil
}

// advance runs the BACKUP STAGEs up to stage upto, each with
// a lock_wait_timeout that ends with ctx.
func (w *Writer) advance(ctx context.Context, s *session, upto int, phase writer.Phase) error {
	ctx, done := s.Bind(ctx)
	defer done()
	for {
		w.mu.Lock()
		next := s.stage
		current := w.sess == s
		w.mu.Unlock()
		if !current {
			return fmt.Errorf("mariadb writer %q: %s: aborted: %w", w.name, phase, context.Canceled)
		}
		if next >= upto {
			return nil
		}
		stage := "BACKUP STAGE " + stages[next]
		if _, err := s.Conn.Conn.ExecContext(ctx, fmt.Sprintf("SET STATEMENT lock_wait_timeout=%d FOR %s", lockWait(ctx), stage)); err != nil {
			return w.sqlErr(ctx, phase, stage, s.user, "RELOAD", err)
		}
		w.mu.Lock()
		s.stage = next + 1
		w.mu.Unlock()
	}
}

// Thaw runs BACKUP STAGE END and closes the connection; closing alone
// would release the locks too, so a failed END is reported but leaves
// nothing held.
func (w *Writer) Thaw(ctx context.Context, _ writer.Set) error {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s == nil {
		return nil
	}
	tctx, done := s.Bind(ctx)
	defer done()
	var err error
	if _, e := s.Conn.Conn.ExecContext(tctx, "BACKUP STAGE END"); e != nil {
		err = fmt.Errorf("mariadb writer %q: thaw: BACKUP STAGE END failed, so closed the connection, which releases the locks: %w", w.name, e)
	}
	return errors.Join(err, w.drop(s))
}

// PostSnapshot returns the binary log position recorded at Freeze, and
// keeps it in the set's scratch directory for BackupComplete.
func (w *Writer) PostSnapshot(ctx context.Context, set writer.Set) (writer.Report, error) {
	w.mu.Lock()
	pos := w.positions[set.ID]
	w.mu.Unlock()
	if pos == nil && !w.ownCopyData(set) {
		return writer.Report{}, fmt.Errorf("mariadb writer %q: post-snapshot: no binary log position recorded for set %s: Freeze did not run in this set", w.name, set.ID)
	}
	var rep writer.Report
	if w.ownCopyData(set) || set.CopiesOwn(w.name, BinlogComponent) {
		var err error
		if rep, pos, err = w.ownCopy(ctx, set, pos); err != nil {
			return writer.Report{}, err
		}
		w.mu.Lock()
		w.positions[set.ID] = pos
		w.mu.Unlock()
	}
	// How the server runs, for a restore with no start= or service=.
	if db, conn, err := w.connect(ctx); err == nil {
		rep.Started = started(ctx, conn)
		closeConn(db, conn)
	}
	if pos.File == "" {
		return rep, nil
	}
	if set.Scratch != "" {
		if err := savePosition(set, w.name, pos); err != nil {
			return writer.Report{}, fmt.Errorf("mariadb writer %q: post-snapshot: %w", w.name, err)
		}
	}
	rep.Positions = map[string]string{
		PosFile: pos.File,
		PosPos:  strconv.FormatUint(pos.Pos, 10),
		PosGTID: pos.GTID,
	}
	return rep, nil
}

// BackupComplete purges the binary logs before the file of the backup's
// position (PURGE BINARY LOGS TO), and only when purge_binlogs is on, the
// backup type truncates, the component holding the binary logs was stored,
// and no replica is reading the binary log: a replica connected now may
// still need older logs, so then nothing is purged and the error, which is
// retryable, says so.
func (w *Writer) BackupComplete(ctx context.Context, c writer.Completion) error {
	w.mu.Lock()
	s := w.sess
	pos := w.positions[c.Set.ID]
	delete(w.positions, c.Set.ID)
	w.mu.Unlock()
	var err error
	if s != nil {
		err = w.drop(s)
	}
	if !w.purge || !c.Set.Type.Truncates() {
		return err
	}
	return errors.Join(err, w.purgeBefore(ctx, c, pos))
}

func (w *Writer) purgeBefore(ctx context.Context, c writer.Completion, pos *position) error {
	const phase = writer.PhaseBackupComplete
	if pos == nil {
		var err error
		if pos, err = loadPosition(c.Set, w.name); err != nil {
			return fmt.Errorf("mariadb writer %q: backup-complete: no binary log position recorded for set %s (%v); nothing purged", w.name, c.Set.ID, err)
		}
	}
	if pos.File == "" {
		return nil
	}
	db, conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(db, conn)
	f, err := w.facts(ctx, conn, phase)
	if err != nil {
		return err
	}
	if !c.Components[f.binlogComponent()] {
		return nil
	}
	replicas, err := w.replicas(ctx, conn, phase)
	if err != nil {
		return err
	}
	if len(replicas) > 0 {
		return fmt.Errorf("mariadb writer %q: backup-complete: binary logs not purged: replicas read the binary log (%s) and may still need logs before %s; a later backup purges them once no replica is connected: %w",
			w.name, strings.Join(replicas, ", "), pos.File, writer.ErrRetryable)
	}
	// The server skips, without a word, logs it still needs for crash
	// recovery until InnoDB has checkpointed their transactions, which
	// takes a moment after a rotation: try for a while, then say so.
	q := "PURGE BINARY LOGS TO " + quote(pos.File)
	deadline := time.Now().Add(purgeLimit)
	for {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			var me *mysql.MySQLError
			if errors.As(err, &me) && me.Number == errUnknownTarget {
				return fmt.Errorf("mariadb writer %q: backup-complete: %s is no longer in the binary log index (purged by someone else, or expire_logs_days); nothing purged: %w", w.name, pos.File, err)
			}
			return w.sqlErr(ctx, phase, q, f.user, "BINLOG ADMIN", err)
		}
		left, err := logsBefore(ctx, conn, pos.File)
		if err != nil {
			return w.sqlErr(ctx, phase, "SHOW BINARY LOGS", f.user, "BINLOG MONITOR", err)
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("mariadb writer %q: backup-complete: the server kept %s before %s after PURGE BINARY LOGS for %v (still needed for crash recovery, or read by a client); a later backup purges them: %w",
				w.name, strings.Join(left, ", "), pos.File, purgeLimit, writer.ErrRetryable)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Abort closes the held connection, which ends every BACKUP STAGE, and
// forgets the set's position so that nothing is purged for it. It
// interrupts a phase still waiting for a lock. Abort is idempotent.
func (w *Writer) Abort(_ context.Context, set writer.Set) error {
	w.mu.Lock()
	s := w.sess
	w.gen++
	delete(w.positions, set.ID)
	w.mu.Unlock()
	var err error
	if s != nil {
		if err = w.drop(s); err != nil {
			err = fmt.Errorf("mariadb writer %q: abort: %w", w.name, err)
		}
	}
	if set.Scratch != "" {
		if _, serr := os.Stat(set.Scratch); serr == nil {
			if perr := removePosition(set, w.name); perr != nil {
				err = errors.Join(err, fmt.Errorf("mariadb writer %q: abort: %w", w.name, perr))
			}
		}
	}
	return err
}

// connect opens a connection of its own, for one phase.
func (w *Writer) connect(ctx context.Context) (*sql.DB, *sql.Conn, error) {
	c, err := mysql.NewConnector(w.cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("mariadb writer %q: %w", w.name, err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, nil, errors.Join(w.connErr(ctx, err), db.Close())
	}
	return db, conn, nil
}

func closeConn(db *sql.DB, conn *sql.Conn) {
	conn.Close()
	db.Close()
}

// connErr describes a failed connection for the operator.
func (w *Writer) connErr(ctx context.Context, err error) error {
	var me *mysql.MySQLError
	switch {
	case context.Cause(ctx) != nil:
		return fmt.Errorf("mariadb writer %q: connect to %s: gave up: %w: %w", w.name, w.where, context.Cause(ctx), writer.ErrRetryable)
	case errors.As(err, &me) && (me.Number == errAccessDenied || me.Number == errNoPasswordDenied):
		return fmt.Errorf("mariadb writer %q: the server at %s refused user %s: %s; give the right user= and password (in the configuration file, password_file= or MYSQL_PWD)", w.name, w.where, w.cfg.User, me.Message)
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT):
		fix := "check socket="
		if w.cfg.Net == "tcp" {
			fix = "check host= and port="
		}
		return fmt.Errorf("mariadb writer %q: no server is listening at %s; start MariaDB or %s: %w", w.name, w.where, fix, err)
	}
	return fmt.Errorf("mariadb writer %q: connect to %s: %w", w.name, w.where, err)
}

// sqlErr describes a failed statement. priv is the privilege the statement
// needs, for the fix when the server says one is missing. Lock wait
// time-outs, deadlocks and a context that ended are retryable.
func (w *Writer) sqlErr(ctx context.Context, phase writer.Phase, what, user, priv string, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return fmt.Errorf("mariadb writer %q: %s: %s: gave up: %w: %w", w.name, phase, what, cause, writer.ErrRetryable)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case errLockWaitTimeout, errDeadlock:
			return fmt.Errorf("mariadb writer %q: %s: %s: %w (another backup, such as mariadb-backup, or a LOCK TABLES holds the lock): %w", w.name, phase, what, err, writer.ErrRetryable)
		case errSpecificAccess:
			if priv != "" {
				return fmt.Errorf("mariadb writer %q: %s: %s needs the %s privilege: %s; GRANT %s ON *.* TO %s", w.name, phase, what, priv, me.Message, priv, user)
			}
		}
	}
	return fmt.Errorf("mariadb writer %q: %s: %s: %w", w.name, phase, what, err)
}

// session returns the held connection of the current set, opening it if
// needed.
func (w *Writer) session(ctx context.Context, phase writer.Phase) (*session, error) {
	w.mu.Lock()
	s, gen := w.sess, w.gen
	w.mu.Unlock()
	if s != nil {
		return s, nil
	}
	db, conn, err := w.connect(ctx)
	if err != nil {
		return nil, err
	}
	f, err := w.facts(ctx, conn, phase)
	if err != nil {
		closeConn(db, conn)
		return nil, err
	}
	s = &session{Conn: heldconn.New(db, conn), user: f.user, logBin: f.logBin}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gen != gen || w.sess != nil {
		// Abort came while this connected: it must not be undone.
		s.Close()
		return nil, fmt.Errorf("mariadb writer %q: %s: aborted: %w", w.name, phase, context.Canceled)
	}
	w.sess = s
	return s, nil
}

// drop ends s: closing the connection makes the server end its BACKUP
// STAGE, also while a statement still waits for a lock.
func (w *Writer) drop(s *session) error {
	w.mu.Lock()
	if w.sess == s {
		w.sess = nil
	}
	w.mu.Unlock()
	return s.Close()
}

// lockWait is the lock_wait_timeout, in whole seconds, that ends no later
// than ctx; the context ends the wait sooner by closing the connection.
func lockWait(ctx context.Context) int {
	d, ok := ctx.Deadline()
	if !ok {
		return defaultLockWait
	}
	return max(1, int(math.Ceil(time.Until(d).Seconds())))
}
