package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// restoreOptions say how the server is stopped and started at restore.
type restoreOptions struct {
	service, start, stop string
	// startLimit bounds starting the restored server and its recovery,
	// and stopping the running one.
	startLimit time.Duration
}

// defaultStartLimit is start_timeout's default: recovery of a backup's own
// WAL takes seconds, a point-in-time recovery may replay hours of archive.
const defaultStartLimit = time.Hour

// PreRestore stops the server and moves its data directory, tablespaces,
// separate pg_wal and configuration directory aside (writer.MoveAside: to
// .umbra-before-restore-TIME at the top of each one's filesystem, where
// postgresql-common does not take a moved configuration for a cluster), so
// that the
// restore writes into empty places and nothing live is lost. Restoring to
// a target directory touches nothing live.
func (w *Writer) PreRestore(ctx context.Context, r writer.Restore) error {
	if r.Target != "" {
		return nil
	}
	dataDir, err := dataDirOf(r.Metadata)
	if err != nil {
		return fmt.Errorf("postgres writer %q: pre-restore: %w", w.name, err)
	}
	if err := w.CheckRestore(ctx, r); err != nil {
		return err
	}
	// Where each path goes, made before the server stops: a place that
	// cannot be written fails the restore while production still runs.
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, c := range r.Metadata.Components {
		for _, p := range c.Paths {
			if _, err := os.Lstat(p); err == nil && !writer.MountPoint(p) {
				if _, err := writer.PrepareAside(p, stamp); err != nil {
					return fmt.Errorf("postgres writer %q: pre-restore: %w; nothing was stopped", w.name, err)
				}
			}
		}
	}
	if err := w.stopServer(ctx, dataDir); err != nil {
		return err
	}
	w.aside.Reset()
	for _, c := range r.Metadata.Components {
		for _, p := range c.Paths {
			if writer.MountPoint(p) {
				continue // empty (checked above): restored into as it is
			}
			to, err := writer.MoveAside(p, stamp)
			if err != nil {
				return fmt.Errorf("postgres writer %q: pre-restore: %w; if it is a mount point, empty it yourself and restore again", w.name, err)
			}
			if to != "" {
				w.aside.Add(p, to)
			}
		}
	}
	return nil
}

// fetchCheckLimit bounds the trial run of restore_command.
const fetchCheckLimit = time.Minute

// checkFetch runs the restore_command fetch once, as the user that will run
// the server, for a WAL file that cannot exist (timeline 0): "not archived"
// (exit 1) means PostgreSQL will be able to fetch. Anything else (the
// repository, its password file or key unreadable by that user, umbra out
// of its reach) would stop recovery with production already stopped, so
// the restore is refused now.
func (w *Writer) checkFetch(ctx context.Context, fetch, dataDir string) error {
	uid, gid, ok := nearestOwner(dataDir)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, fetchCheckLimit)
	defer cancel()
	line := strings.NewReplacer("%f", "000000000000000000000000", "%p", os.DevNull, "%%", "%").Replace(fetch)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(uid, gid)}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err == nil || errors.As(err, &exit) && exit.ExitCode() == 1 {
		return nil
	}
	who := strconv.Itoa(uid)
	if u, err := user.LookupId(who); err == nil {
		who = u.Username
	}
	return fmt.Errorf("postgres writer %q: pre-restore: PostgreSQL, running as %s, could not fetch archived WAL with its restore_command (%v: %s); "+
		"it needs to run umbra, read the repository and its password file (group-readable, such as root:postgres 0640; umbra init --group postgres); nothing was stopped",
		w.name, who, err, strings.TrimSpace(string(out)))
}

// nearestOwner is the owner of path, or of its nearest existing ancestor (the
// data directory may be gone: the disaster), unless that is root.
func nearestOwner(path string) (uid, gid int, ok bool) {
	for p := path; ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err == nil {
			return int(st.Uid), int(st.Gid), st.Uid != 0
		}
		if p == "/" || p == "." {
			return 0, 0, false
		}
	}
}

// CheckRestore refuses, with the server still running, an in-place restore
// that could not finish: a mount point holding data (which cannot be moved
// aside), a restore_command the server's user could not run.
func (w *Writer) CheckRestore(ctx context.Context, r writer.Restore) error {
	if r.Target != "" {
		return nil
	}
	dataDir, err := dataDirOf(r.Metadata)
	if err != nil {
		return fmt.Errorf("postgres writer %q: pre-restore: %w", w.name, err)
	}
	// Moving aside renames each directory in its parent: a mount point
	// cannot be.
	for _, c := range r.Metadata.Components {
		for _, p := range c.Paths {
			if writer.MountPoint(p) && !writer.EmptyDir(p) {
				return fmt.Errorf("postgres writer %q: pre-restore: %s is a mount point holding data, which umbra cannot move aside; empty it yourself (the server stopped) and restore again, or restore with --target", w.name, p)
			}
		}
	}
	if r.FetchLog != "" {
		return w.checkFetch(ctx, r.FetchLog, dataDir)
	}
	return nil
}

// MovedAside lists what the last PreRestore moved aside.
func (w *Writer) MovedAside() []writer.Moved { return w.aside.List() }

// dataDirOf finds the data directory in a backup's metadata.
func dataDirOf(md writer.Metadata) (string, error) {
	for _, c := range md.Components {
		if c.Name == "data" && len(c.Paths) == 1 {
			return c.Paths[0], nil
		}
	}
	return "", errors.New("the backup's metadata has no data component")
}

// stopServer stops the server running on dataDir, if any: with the stop
// command or systemd unit when configured, else a fast shutdown (SIGINT)
// of the postmaster named in postmaster.pid.
func (w *Writer) stopServer(ctx context.Context, dataDir string) error {
	pid := readPostmasterPID(dataDir).pid
	if pid == 0 {
		return nil
	}
	var err error
	switch {
	case w.restore.stop != "":
		err = runShell(ctx, w.restore.stop)
	case w.restore.service != "":
		name, args := writer.ServiceCommand("stop", w.restore.service)
		err = runCommand(ctx, name, args...)
	default:
		err = syscall.Kill(pid, syscall.SIGINT)
	}
	if err != nil {
		return fmt.Errorf("postgres writer %q: stop the server (pid %d): %w", w.name, pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.restore.startLimit)
	defer cancel()
	escalate := time.After(fastShutdownLimit)
	for syscall.Kill(pid, 0) == nil {
		select {
		case <-escalate:
			if w.restore.stop == "" && w.restore.service == "" {
				// A fast shutdown waits for every backend; one that
				// hangs (seen: a backend stuck in its signal handler)
				// would hold it for good. Immediate shutdown kills
				// what does not exit; the data is being replaced, and
				// crash recovery would bring it back if put back.
				_ = syscall.Kill(pid, syscall.SIGQUIT)
			}
		case <-ctx.Done():
			return fmt.Errorf("postgres writer %q: the server (pid %d) did not stop within %v (start_timeout=): %w; nothing was moved aside; stop it yourself and restore again: %w", w.name, pid, w.restore.startLimit, ctx.Err(), writer.ErrRetryable)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// PostRestore makes the restored data directory ready to recover (the
// directories base backups leave out, recovery.signal, a restore_command)
// and, restoring in place, starts the server and waits until recovery is
// over and it accepts connections.
func (w *Writer) PostRestore(ctx context.Context, r writer.Restore) error {
	dataDir, err := dataDirOf(r.Metadata)
	if err != nil {
		return fmt.Errorf("postgres writer %q: post-restore: %w", w.name, err)
	}
	if r.DataDir != "" {
		if err := w.relocate(ctx, r, r.Metadata); err != nil {
			return fmt.Errorf("postgres writer %q: post-restore to %s: %w", w.name, r.DataDir, err)
		}
		return nil
	}
	root := filepath.Join(r.Target, dataDir)
	if r.Target != "" {
		// A copy under a target must not reach the original: its pg_wal
		// and tablespace links, and tablespace_map, lead into the target,
		// and it archives nothing.
		if err := confine(root, r.Target); err != nil {
			return fmt.Errorf("postgres writer %q: post-restore: %w", w.name, err)
		}
	}
	if r.Crash {
		// A crash-consistent copy, pg_wal included: crash recovery
		// replays it; there is no label and no archive to read.
		if err := os.Remove(filepath.Join(root, "postmaster.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else if err := prepare(root, r.FetchLog, r.Until); err != nil {
		return fmt.Errorf("postgres writer %q: post-restore: %w", w.name, err)
	}
	if r.Target != "" {
		uid, gid, err := fileOwner(root)
		if err != nil {
			return err
		}
		return appendFile(filepath.Join(root, "postgresql.auto.conf"), "# umbra restore --target: a copy; it archives nothing\narchive_mode = off\n", uid, gid)
	}
	if r.More {
		return nil
	}
	if err := w.startServer(ctx, root); err != nil {
		return err
	}
	return w.awaitRecovery(ctx, root, w.logHint(root))
}

// Prepare readies a data directory restored from a backup (files plus the
// writer's backup_label and WAL) for archive recovery to the end of the
// WAL it holds.
func Prepare(dataDir string) error { return prepare(dataDir, "", time.Time{}) }

// prepare readies dataDir for archive recovery: the directories base
// backups leave out, recovery.signal, and a restore_command (fetch, or one
// that finds nothing, since the backup's WAL is in pg_wal); with until, a
// recovery target time at which the server is promoted.
func prepare(dataDir, fetch string, until time.Time) error {
	if _, err := os.Stat(filepath.Join(dataDir, "backup_label")); err != nil {
		return fmt.Errorf("%s has no backup_label: it was not restored with the files the writer hands on (%w)", dataDir, err)
	}
	uid, gid, err := fileOwner(dataDir)
	if err != nil {
		return err
	}
	mk := func(p string) error {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}
	for _, d := range append(excludedContents, "pg_wal/archive_status") {
		if err := mk(filepath.Join(dataDir, d)); err != nil {
			return err
		}
	}
	// postmaster.opts stays: it is how the server was started (the
	// writer hands it on), and startServer starts it the same way.
	if err := os.Remove(filepath.Join(dataDir, "postmaster.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if fetch == "" {
		fetch = "false"
	}
	settings := fmt.Sprintf("# %s\nrestore_command = '%s'\n", recoveryMark, strings.ReplaceAll(fetch, "'", "''"))
	if !until.IsZero() {
		settings += fmt.Sprintf("recovery_target_time = '%s'\nrecovery_target_action = 'promote'\n", until.UTC().Format("2006-01-02 15:04:05.999999-07:00"))
	}
	if err := appendFile(filepath.Join(dataDir, "postgresql.auto.conf"), settings, uid, gid); err != nil {
		return err
	}
	return appendFile(filepath.Join(dataDir, "recovery.signal"), "", uid, gid)
}

// recoveryMark labels the settings prepare adds; they are reset once
// recovery is over.
const recoveryMark = "umbra restore: recovery settings, reset when recovery is over"

// confine points the links of a data directory restored under target
// (pg_wal, pg_tblspc/*) and the paths in its tablespace_map at their copies
// under target instead of the live system.
func confine(dataDir, target string) error {
	relink := func(link string) error {
		dst, err := os.Readlink(link)
		if err != nil || !filepath.IsAbs(dst) || within(dst, target) {
			return nil
		}
		if err := os.Remove(link); err != nil {
			return err
		}
		return os.Symlink(filepath.Join(target, dst), link)
	}
	if err := relink(filepath.Join(dataDir, "pg_wal")); err != nil {
		return err
	}
	links, _ := filepath.Glob(filepath.Join(dataDir, "pg_tblspc", "*"))
	for _, l := range links {
		if err := relink(l); err != nil {
			return err
		}
	}
	mapFile := filepath.Join(dataDir, "tablespace_map")
	b, err := os.ReadFile(mapFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var out strings.Builder
	for line := range strings.Lines(string(b)) {
		oid, path, ok := strings.Cut(strings.TrimRight(line, "\n"), " ")
		if ok && filepath.IsAbs(path) && !within(path, target) {
			path = filepath.Join(target, path)
		}
		fmt.Fprintf(&out, "%s %s\n", oid, path)
	}
	return os.WriteFile(mapFile, []byte(out.String()), 0o600)
}

// fileOwner returns the owner of path.
func fileOwner(path string) (uid, gid int, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), nil
}

func appendFile(path, text string, uid, gid int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Lchown(path, uid, gid)
}

// startServer starts the server with the start command or systemd unit
// when configured, else with pg_ctl as the data directory's owner and the
// options it was started with before (postmaster.opts, handed on by the
// backup).
func (w *Writer) startServer(ctx context.Context, dataDir string) error {
	ctx, cancel := context.WithTimeout(ctx, w.restore.startLimit)
	defer cancel()
	var err error
	switch {
	case w.restore.start != "":
		err = runShell(ctx, w.restore.start)
	case w.restore.service != "":
		name, args := writer.ServiceCommand("start", w.restore.service)
		err = runCommand(ctx, name, args...)
	default:
		var opts []string
		if opts, err = startOptions(dataDir, originalServer); err == nil {
			err = pgCtlStart(ctx, dataDir, opts)
		}
	}
	if err != nil {
		return fmt.Errorf("postgres writer %q: start the server: %w; its log: %s", w.name, err, w.logHint(dataDir))
	}
	return nil
}

// fastShutdownLimit is how long restore lets a fast shutdown (SIGINT) take
// before it asks for an immediate one (SIGQUIT).
const fastShutdownLimit = time.Minute

// restoreLog is the log of a server restore starts with pg_ctl, in its
// data directory.
const restoreLog = "umbra-restore.log"

// logHint says where the log of the server on dataDir is.
func (w *Writer) logHint(dataDir string) string {
	switch {
	case w.restore.start != "":
		return "the log of start=" + w.restore.start + " (and log_directory in postgresql.conf)"
	case w.restore.service != "":
		return "journalctl -u " + w.restore.service + " (and log_directory in postgresql.conf)"
	}
	return filepath.Join(dataDir, restoreLog)
}

// startOptions reads the command line the server was started with from
// dataDir/postmaster.opts (its program, then each argument in double
// quotes) and returns the arguments to start it again with, without the
// data directory (pg_ctl gives it). A copy relocated beside the original
// also leaves out what would make it the original again: its port and
// the files its configuration names; a sandbox (verification) also where
// it listens and what it follows.
func startOptions(dataDir string, mode copyMode) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.opts"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // a backup made before umbra handed it on
	}
	if err != nil {
		return nil, err
	}
	line := strings.TrimSpace(string(b))
	_, rest, ok := strings.Cut(line, ` "`)
	if !ok {
		return nil, nil // the program alone
	}
	args := strings.Split(strings.TrimSuffix(rest, `"`), `" "`)
	// Options that take a value in the next argument, and are left out.
	dropped := map[string]bool{"-D": true}
	if mode >= relocatedCopy {
		dropped["-p"] = true
	}
	if mode == sandboxCopy {
		dropped["-k"], dropped["-h"] = true, true
	}
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		flag := a[:min(2, len(a))]
		switch {
		case dropped[a]:
			i++ // and its value
		case len(a) > 2 && strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && dropped[flag]:
		case mode == sandboxCopy && a == "-i":
		case a == "-c" && i+1 < len(args):
			if !ownSetting(args[i+1], mode) {
				out = append(out, a, args[i+1])
			}
			i++
		case (strings.HasPrefix(a, "-c") || strings.HasPrefix(a, "--")) && ownSetting(strings.TrimLeft(a[2:], "-"), mode):
		default:
			out = append(out, a)
		}
	}
	return out, nil
}

// copyMode says what a server is started as.
type copyMode int

const (
	originalServer copyMode = iota // the restored original, in place
	relocatedCopy                  // a copy beside it (--to-datadir)
	sandboxCopy                    // a copy nobody reaches (verification)
)

// ownSetting reports whether a name=value setting is one the copy sets for
// itself.
func ownSetting(kv string, mode copyMode) bool {
	name, _, _ := strings.Cut(kv, "=")
	switch strings.ReplaceAll(name, "-", "_") {
	case "port", "data_directory", "config_file", "hba_file", "ident_file", "external_pid_file", "archive_mode", "archive_command", "cluster_name":
		return mode >= relocatedCopy
	case "listen_addresses", "unix_socket_directories", "primary_conninfo", "primary_slot_name", "restore_command":
		return mode == sandboxCopy
	}
	return false
}

// pgCtlStart runs pg_ctl start, as the data directory's owner, for a data
// directory that holds its own postgresql.conf or whose options name one
// (Debian's clusters keep theirs in /etc: those need service=), with the
// server options opts. It returns once the server accepts connections or
// has reached a consistent state in recovery, within ctx.
func pgCtlStart(ctx context.Context, dataDir string, opts []string) error {
	if _, err := os.Stat(filepath.Join(dataDir, "postgresql.conf")); err != nil && !slices.ContainsFunc(opts, func(o string) bool { return strings.Contains(o, "config_file=") }) {
		return fmt.Errorf("%s has no postgresql.conf, so umbra cannot start it with pg_ctl; configure the writer with service=UNIT (such as postgresql@15-main) or start=COMMAND", dataDir)
	}
	major, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return err
	}
	pgCtl := filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(major)), "bin", "pg_ctl")
	if _, err := os.Stat(pgCtl); err != nil {
		return fmt.Errorf("no pg_ctl for PostgreSQL %s at %s; install that server version or configure start=COMMAND", strings.TrimSpace(string(major)), pgCtl)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	logFile := filepath.Join(dataDir, restoreLog)
	wait := 3600
	if d, ok := ctx.Deadline(); ok {
		wait = max(1, int(time.Until(d).Seconds()))
	}
	args := []string{"start", "-D", dataDir, "-l", logFile, "-w", "-t", strconv.Itoa(wait)}
	if len(opts) > 0 {
		quoted := make([]string, len(opts))
		for i, o := range opts {
			quoted[i] = "'" + strings.ReplaceAll(o, "'", `'\''`) + "'"
		}
		args = append(args, "-o", strings.Join(quoted, " "))
	}
	cmd := exec.CommandContext(ctx, pgCtl, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(int(st.Uid), int(st.Gid)), Setsid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		tail, _ := os.ReadFile(logFile)
		return fmt.Errorf("pg_ctl start: %w\n%s%s", err, out, writer.LastLines(string(tail), 20))
	}
	return nil
}

// startGrace is how long a server that says it is ready may refuse the
// writer's connections before restore says where it listens instead, and
// how long a start command may take to leave a running server behind.
const startGrace = 15 * time.Second

// awaitRecovery waits, within the writer's start limit, until the server
// on dataDir accepts connections and has left recovery, then resets the
// restore_command PostRestore put in. It gives up at once when the server
// has exited, and soon when the server says it is ready but not where the
// writer connects; each error names the server's log.
func (w *Writer) awaitRecovery(ctx context.Context, dataDir, logHint string) error {
	ctx, cancel := context.WithTimeout(ctx, w.restore.startLimit)
	defer cancel()
	var last error
	var refusedSince time.Time
	begun, seen := time.Now(), false
	for {
		last = w.recovered(ctx)
		if last == nil {
			return nil
		}
		st := readPostmasterPID(dataDir)
		switch {
		case errors.Is(last, errInRecovery):
			// Connected: replaying WAL, for as long as start_timeout.
			seen = true
			refusedSince = time.Time{}
		case st.pid == 0:
			// A service manager may return before the server has
			// written postmaster.pid: only a server seen and gone, or
			// never seen for a while, has stopped.
			if seen || time.Since(begun) > startGrace {
				return fmt.Errorf("postgres writer %q: the restored server on %s is not running (it stopped, or never started): %v; its log: %s", w.name, dataDir, last, logHint)
			}
		case st.status == "ready" || st.status == "standby":
			seen = true
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			}
			if time.Since(refusedSince) > startGrace {
				return fmt.Errorf("postgres writer %q: the restored server (pid %d) is %s on port %s, socket directory %q, listen addresses %q, but the writer cannot connect with %s: %v; make host= and port= match how the server runs, or its options (postmaster.opts, postgresql.conf); its log: %s",
					w.name, st.pid, st.status, st.port, st.socketDir, st.listen, w.connStr, last, logHint)
			}
		default:
			seen = true
			refusedSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres writer %q: the restored server on %s (pid %d, %s) did not finish recovery within %v (start_timeout=): %v; its log: %s", w.name, dataDir, st.pid, cmp.Or(st.status, "starting"), w.restore.startLimit, last, logHint)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// postmasterState is what postmaster.pid says of a running server.
type postmasterState struct {
	pid                             int
	port, socketDir, listen, status string
}

// readPostmasterPID reads dataDir/postmaster.pid: pid, data directory,
// start time, port, socket directory, listen addresses, shared memory key,
// status. pid is 0 unless that process is alive.
func readPostmasterPID(dataDir string) postmasterState {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return postmasterState{}
	}
	lines := strings.Split(string(b), "\n")
	field := func(i int) string {
		if i < len(lines) {
			return strings.TrimSpace(lines[i])
		}
		return ""
	}
	pid, err := strconv.Atoi(field(0))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return postmasterState{}
	}
	return postmasterState{pid: pid, port: field(3), socketDir: field(4), listen: field(5), status: field(7)}
}

// errInRecovery is recovered's answer from a server that accepts
// connections but still replays WAL (hot standby during archive recovery,
// which may last hours): progress, not a server out of reach.
var errInRecovery = errors.New("still in recovery")

func (w *Writer) recovered(ctx context.Context) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		return errInRecovery
	}
	// The recovery settings prepare added (restore_command, a target)
	// would steer a later recovery: remove them.
	for _, name := range []string{"restore_command", "recovery_target_time", "recovery_target_action"} {
		if _, err := conn.Exec(ctx, "ALTER SYSTEM RESET "+name); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	// What restore_command fetched ahead and recovery did not need.
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(dataDir, "pg_wal", writer.FetchSpoolDir))
}

func runShell(ctx context.Context, command string) error {
	return runCommand(ctx, "/bin/sh", "-c", command)
}

func runCommand(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
