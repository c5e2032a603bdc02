package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// Ceilings on waiting for the server to stop and to start (InnoDB recovery
// included), when the caller's context allows longer.
const (
	stopLimit  = 5 * time.Minute
	startLimit = 10 * time.Minute
)

// PreRestore prepares a restore in place: it stops the server (stop=,
// service=, else the SHUTDOWN statement), waits until the process and its
// socket are gone, and renames each restored component's live directory to
// TOP/.umbra-before-restore-TIME/DIR (writer.MoveAside: TOP is the top of
// its filesystem), leaving an empty DIR with the same owner and mode for the
// restored files. The old directories are kept for the operator to remove.
//
// With r.Target set the files go there and nothing live is touched. A
// server that is already down is not an error. Without start= or
// service= it refuses before stopping anything, as PostRestore could not
// start the server again.
func (w *Writer) PreRestore(ctx context.Context, r writer.Restore) error {
	if r.Target != "" {
		return nil
	}
	if err := w.canStart(writer.PhasePreRestore, r); err != nil {
		return err
	}
	dirs, err := restoreDirs(r)
	if err != nil {
		return fmt.Errorf("mariadb writer %q: pre-restore: %w", w.name, err)
	}
	// A mount point cannot be renamed: refused before the server stops
	// unless it is empty (a new volume where the lost one was), when the
	// restore goes straight into it.
	for _, d := range dirs {
		if writer.MountPoint(d) && !writer.EmptyDir(d) {
			return fmt.Errorf("mariadb writer %q: pre-restore: %s is a mount point holding data, which umbra cannot move aside; empty it yourself (the server stopped) and restore again, or restore with --target", w.name, d)
		}
	}
	// Where each directory goes, made before the server stops: a place
	// that cannot be written fails the restore while production runs.
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, d := range dirs {
		if _, err := os.Lstat(d); err == nil && !writer.MountPoint(d) {
			if _, err := writer.PrepareAside(d, stamp); err != nil {
				return fmt.Errorf("mariadb writer %q: pre-restore: %w; nothing was stopped", w.name, err)
			}
		}
	}
	if err := w.stopServer(ctx); err != nil {
		return err
	}
	// The server at the configured address is gone; make sure no other
	// server still works in these directories (a socket= that points
	// elsewhere) before they move.
	for _, d := range dirs {
		if err := inUse(d); err != nil {
			return fmt.Errorf("mariadb writer %q: pre-restore: %w; stop that server, or check socket= (host=, port=)", w.name, err)
		}
	}
	w.aside.Reset()
	for _, d := range dirs {
		if writer.MountPoint(d) {
			continue // empty (checked above)
		}
		to, err := moveAside(d, stamp)
		if to != "" {
			w.aside.Add(d, to)
		}
		if err != nil {
			return fmt.Errorf("mariadb writer %q: pre-restore: %w", w.name, err)
		}
	}
	return nil
}

// MovedAside lists what the last PreRestore moved aside.
func (w *Writer) MovedAside() []writer.Moved { return w.aside.List() }

// PostRestore starts the server (start= or service=) once the last restore
// is written (not while r.More), waits until it accepts connections, and
// checks that InnoDB came up, which means its crash recovery is done, and
// that the binary log ends at the GTID position the backup recorded. With
// r.Target set there is no live server to start.
func (w *Writer) PostRestore(ctx context.Context, r writer.Restore) error {
	const phase = writer.PhasePostRestore
	if r.Target != "" || r.More {
		return nil
	}
	if err := w.canStart(phase, r); err != nil {
		return err
	}
	var err error
	var proc *os.Process
	logHint := "see its error log"
	switch {
	case w.start != "":
		err = run(ctx, "sh", "-c", w.start)
	case w.service != "":
		name, args := writer.ServiceCommand("start", w.service)
		err = run(ctx, name, args...)
	default:
		// As it ran when the backup was made: its command line (options
		// included) and user.
		dirs, derr := restoreDirs(r)
		if derr != nil || len(dirs) == 0 {
			return fmt.Errorf("mariadb writer %q: %s: %v", w.name, phase, derr)
		}
		logFile := filepath.Join(filepath.Dir(dirs[0]), filepath.Base(dirs[0])+".umbra-restore.log")
		logHint = "its output is in " + logFile + ", and see its error log"
		proc, err = process.Start(r.Report.Started, logFile)
	}
	if err != nil {
		return fmt.Errorf("mariadb writer %q: %s: start the server: %w", w.name, phase, err)
	}
	ctx, cancel := context.WithTimeout(ctx, startLimit)
	defer cancel()
	for {
		if proc != nil && !process.Alive(proc.Pid) {
			return fmt.Errorf("mariadb writer %q: %s: the server started as when the backup was made (%s) exited; %s", w.name, phase, strings.Join(r.Report.Started.Argv, " "), logHint)
		}
		db, conn, err := w.connect(ctx)
		if err == nil {
			defer closeConn(db, conn)
			if _, err := w.facts(ctx, conn, phase); err != nil {
				return err
			}
			var support string
			err := conn.QueryRowContext(ctx, "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'").Scan(&support)
			if err != nil {
				return w.sqlErr(ctx, phase, "check InnoDB", w.cfg.User, "", err)
			}
			if support != "YES" && support != "DEFAULT" {
				return fmt.Errorf("mariadb writer %q: %s: the server started without InnoDB (support %q): its recovery failed; see the server's error log", w.name, phase, support)
			}
			return w.checkGTID(ctx, conn, r)
		}
		if !down(err) {
			return fmt.Errorf("%w (after the restore, the server's users are those of the backup)", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mariadb writer %q: %s: the server did not accept connections at %s within %v: %w; %s", w.name, phase, w.where, startLimit, context.Cause(ctx), logHint)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkGTID compares the restored server's @@gtid_binlog_pos with the one
// recorded at the snapshot, when the binary logs were restored: they are
// the same unless the files are not the backup's.
func (w *Writer) checkGTID(ctx context.Context, conn *sql.Conn, r writer.Restore) error {
	want := r.Report.Positions[PosGTID]
	logs := DataComponent
	for _, c := range r.Metadata.Components {
		if c.Name == BinlogComponent {
			logs = BinlogComponent
		}
	}
	if want == "" || len(r.Components) > 0 && !slices.Contains(r.Components, logs) {
		return nil
	}
	var got string
	if err := conn.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&got); err != nil {
		return w.sqlErr(ctx, writer.PhasePostRestore, "read @@gtid_binlog_pos", w.cfg.User, "", err)
	}
	if got != want {
		return fmt.Errorf("mariadb writer %q: post-restore: the restored server's binary log ends at GTID %q, the backup recorded %q: the binary logs in place are not the backup's", w.name, got, want)
	}
	return nil
}

func (w *Writer) canStart(phase writer.Phase, r writer.Restore) error {
	if w.start == "" && w.service == "" && r.Report.Started == nil {
		return fmt.Errorf("mariadb writer %q: %s: a restore in place must start the server again: set start=COMMAND or service=UNIT (and stop=COMMAND if SHUTDOWN is not the way to stop it), or restore to a target directory", w.name, phase)
	}
	return nil
}

// stopServer stops the server and waits until its process and socket are
// gone.
func (w *Writer) stopServer(ctx context.Context) error {
	const phase = writer.PhasePreRestore
	db, conn, err := w.connect(ctx)
	if down(err) {
		return nil // already stopped
	}
	if err != nil {
		return err
	}
	defer closeConn(db, conn)
	var pidFile string
	if err := conn.QueryRowContext(ctx, "SELECT @@pid_file").Scan(&pidFile); err != nil {
		return w.sqlErr(ctx, phase, "read @@pid_file", w.cfg.User, "", err)
	}
	pid := 0
	if b, err := os.ReadFile(pidFile); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	switch {
	case w.stop != "":
		err = run(ctx, "sh", "-c", w.stop)
	case w.service != "":
		name, args := writer.ServiceCommand("stop", w.service)
		err = run(ctx, name, args...)
	default:
		if _, err := conn.ExecContext(ctx, "SHUTDOWN"); err != nil {
			return w.sqlErr(ctx, phase, "SHUTDOWN", w.cfg.User, "SHUTDOWN", err)
		}
	}
	if err != nil {
		return fmt.Errorf("mariadb writer %q: %s: stop the server: %w", w.name, phase, err)
	}
	ctx, cancel := context.WithTimeout(ctx, stopLimit)
	defer cancel()
	for {
		gone := pid == 0 || !process.Alive(pid)
		if gone {
			db, conn, err := w.connect(ctx)
			if err == nil {
				closeConn(db, conn)
				gone = false
			}
		}
		if gone {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mariadb writer %q: %s: the server at %s (pid %d) has not stopped: %w: %w", w.name, phase, w.where, pid, context.Cause(ctx), writer.ErrRetryable)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// restoreDirs lists the live directories of the components being restored.
func restoreDirs(r writer.Restore) ([]string, error) {
	var dirs []string
	for _, c := range r.Metadata.Components {
		if len(r.Components) > 0 && !slices.Contains(r.Components, c.Name) {
			continue
		}
		dirs = append(dirs, c.Paths...)
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("the backup's metadata names no directory for components %q", r.Components)
	}
	return dirs, nil
}

// moveAside moves dir aside (writer.MoveAside) and makes an empty dir with
// the same mode and owner in its place. It returns where dir went, "" if
// it did not exist.
func moveAside(dir, stamp string) (string, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	aside, err := writer.MoveAside(dir, stamp)
	if err != nil {
		return "", fmt.Errorf("%w; if it is a mount point, empty it yourself or restore to a target directory", err)
	}
	if err := os.Mkdir(dir, fi.Mode().Perm()); err != nil {
		return aside, fmt.Errorf("moved %s aside to %s, then: %w", dir, aside, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
			return aside, fmt.Errorf("moved %s aside to %s, then: %w", dir, aside, err)
		}
	}
	// Mkdir obeys the umask; the server wants the mode it had.
	return aside, os.Chmod(dir, fi.Mode().Perm())
}

// lockedFiles are files a running MariaDB server holds an fcntl lock on.
var lockedFiles = []string{"ibdata1", "ib_logfile0", "aria_log_control"}

// inUse returns an error naming the process that holds a server's lock on
// a file in dir.
func inUse(dir string) error {
	for _, name := range lockedFiles {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
		err = syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk)
		f.Close()
		if err != nil {
			return fmt.Errorf("check for a server using %s: %w", f.Name(), err)
		}
		if lk.Type != syscall.F_UNLCK {
			return fmt.Errorf("a server (pid %d) still uses %s: it holds a lock on %s", lk.Pid, dir, name)
		}
	}
	return nil
}

// down reports whether a connection failed because nothing listens.
func down(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// run runs a stop or start command, its output in a file rather than a
// pipe, so that a server it leaves running in the background cannot hold
// run up.
func run(ctx context.Context, name string, args ...string) error {
	out, err := os.CreateTemp("", "umbra-mariadb-")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(out.Name())
		const show = 2000
		if len(b) > show {
			b = b[len(b)-show:]
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(b)))
	}
	return nil
}

// started reads how the server runs: the pid in @@pid_file, then its
// command line and user. It returns nil where it cannot tell (a server on
// another host, a pid file it may not read).
func started(ctx context.Context, conn *sql.Conn) *writer.Started {
	var pidFile string
	if err := conn.QueryRowContext(ctx, "SELECT @@pid_file").Scan(&pidFile); err != nil {
		return nil
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !process.Named(pid, "mariadbd", "mysqld") {
		return nil // not this host's server (a container's, a remote one's pid file)
	}
	s, err := process.Recorded(pid)
	if err != nil {
		return nil
	}
	return s
}
