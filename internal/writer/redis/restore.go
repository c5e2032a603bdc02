package redis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// PreRestore stops Redis and waits until it no longer answers, then moves
// the live files of the components to be restored aside (to
// TOP/.umbra-before-restore-TIME/PATH, writer.MoveAside), so that Redis
// starts from the restored files only and nothing is lost if the restore
// fails. It refuses to stop Redis that it
// could not start again (neither start= nor service= set). With r.Target
// set the files go elsewhere, and nothing live is touched.
//
// Redis is stopped with service= (systemctl stop), stop=, or else
// SHUTDOWN NOSAVE. Never a plain SHUTDOWN: with save points configured it
// writes an RDB of the data about to be replaced, which for a large data set
// takes long, which fails the shutdown if the save fails, and which would
// overwrite a file the restore had already put in place.
func (w *Writer) PreRestore(ctx context.Context, r writer.Restore) error {
	const phase = writer.PhasePreRestore
	if r.Target != "" {
		return nil
	}
	if w.start == "" && w.service == "" && r.Report.Started == nil {
		return fmt.Errorf("redis writer %q: %s: no way to start Redis after the restore, so it was left running; set start=COMMAND or service=UNIT", w.name, phase)
	}
	// Where each file goes, made before Redis stops: a place that cannot
	// be written fails the restore while Redis still runs.
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, p := range restoredPaths(r) {
		if _, err := os.Lstat(p); err == nil {
			if _, err := writer.PrepareAside(p, stamp); err != nil {
				return fmt.Errorf("redis writer %q: %s: %w; nothing was stopped", w.name, phase, err)
			}
		}
	}
	var err error
	switch {
	case w.service != "":
		name, args := writer.ServiceCommand("stop", w.service)
		err = w.run(ctx, phase, "service="+w.service, append([]string{name}, args...)...)
	case w.stop != "":
		err = w.run(ctx, phase, "stop="+w.stop, "/bin/sh", "-c", w.stop)
	default:
		err = w.shutdownNoSave(ctx)
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, stopLimit)
	defer cancel()
	if err := w.waitGone(wctx); err != nil {
		return err
	}
	return w.moveAside(r, stamp)
}

// Limits of the waits around a restore: a large data set takes a while to
// save at a stop, or to load at a start.
const (
	stopLimit  = 5 * time.Minute
	startLimit = 10 * time.Minute
)

// shutdownNoSave stops the server without saving. On success the server
// closes the connection without a reply. A server that is down already
// (crashed, say, which may be why it is restored) is fine.
func (w *Writer) shutdownNoSave(ctx context.Context) error {
	c := w.client()
	defer c.Close()
	// ShutdownNoSave takes the closed connection (io.EOF) for success.
	err := c.ShutdownNoSave(ctx).Err()
	if err == nil || gone(err) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return w.cmdErr(ctx, writer.PhasePreRestore, "SHUTDOWN NOSAVE", err)
}

// waitGone waits until connections to the server's address are refused (or
// its socket is gone).
func (w *Writer) waitGone(ctx context.Context) error {
	for {
		d := net.Dialer{Timeout: dialLimit}
		nc, err := d.DialContext(ctx, w.network, w.addr)
		if gone(err) {
			return nil
		}
		state := "still accepts connections"
		if err == nil {
			_ = nc.Close()
		} else {
			state = fmt.Sprintf("is not seen to stop (connecting gives %v)", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis writer %q: %s: Redis at %s %s after it was told to stop: %w: %w",
				w.name, writer.PhasePreRestore, w.addr, state, context.Cause(ctx), writer.ErrRetryable)
		case <-time.After(pollEvery):
		}
	}
}

// gone reports whether a dial error means nothing listens at the address:
// the TCP port refuses, or the socket file is missing.
func gone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist)
}

// restoredPaths lists the paths of the components r restores.
func restoredPaths(r writer.Restore) []string {
	var paths []string
	for _, comp := range r.Metadata.Components {
		if len(r.Components) == 0 || slices.Contains(r.Components, comp.Name) {
			paths = append(paths, comp.Paths...)
		}
	}
	return paths
}

// moveAside moves the live paths of the restored components aside.
func (w *Writer) moveAside(r writer.Restore, stamp string) error {
	w.aside.Reset()
	for _, p := range restoredPaths(r) {
		to, err := writer.MoveAside(p, stamp)
		if err != nil {
			return fmt.Errorf("redis writer %q: %s: %w; Redis is stopped", w.name, writer.PhasePreRestore, err)
		}
		if to != "" {
			w.aside.Add(p, to)
		}
	}
	return nil
}

// MovedAside lists what the last PreRestore moved aside.
func (w *Writer) MovedAside() []writer.Moved { return w.aside.List() }

// PostRestore starts Redis (service= or start=) and waits until it answers
// PING with its data set loaded. When more restores follow (r.More), or the
// files went to r.Target, it does nothing.
//
// It then compares the key count with the one PostSnapshot recorded
// (r.Report.Positions["keys"]), loosely: keys may expire, or be evicted, in
// the meantime, so it fails only when Redis came back empty from a backup
// that held keys, the sign that Redis did not load the restored files.
func (w *Writer) PostRestore(ctx context.Context, r writer.Restore) error {
	const phase = writer.PhasePostRestore
	if r.Target != "" || r.More {
		return nil
	}
	var err error
	var proc *os.Process
	logHint := "its log says why"
	switch {
	case w.service != "":
		name, args := writer.ServiceCommand("start", w.service)
		err = w.run(ctx, phase, "service="+w.service, append([]string{name}, args...)...)
	case w.start != "":
		err = w.run(ctx, phase, "start="+w.start, "/bin/sh", "-c", w.start)
	case r.Report.Started != nil:
		// As it ran when the backup was made.
		logFile := filepath.Join(filepath.Dir(r.Metadata.Components[0].Paths[0]), "umbra-restore.log") // beside its data
		logHint = "its output is in " + logFile
		proc, err = process.Start(r.Report.Started, logFile)
		if err != nil {
			err = fmt.Errorf("redis writer %q: %s: start %s: %w", w.name, phase, strings.Join(r.Report.Started.Argv, " "), err)
		}
	default:
		err = fmt.Errorf("redis writer %q: %s: no way to start Redis; set start=COMMAND or service=UNIT, or start it by hand", w.name, phase)
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, startLimit)
	defer cancel()
	if err := w.waitReady(wctx, proc, logHint); err != nil {
		return err
	}
	return w.checkKeys(ctx, r.Report)
}

// started records how the server runs, for a restore with no start= or
// service=: its program and configuration file (Redis rewrites its
// process title, so /proc has no command line to replay), in the
// foreground, with the settings that place it as they are now, whether
// they came from the file or the command line.
func (w *Writer) started(ctx context.Context, c *goredis.Client) *writer.Started {
	inf, err := info(ctx, c, "server")
	if err != nil || inf["executable"] == "" {
		return nil
	}
	pid, err := strconv.Atoi(inf["process_id"])
	if err != nil || !process.Named(pid, "redis-server") {
		return nil // not on this host (a container's, a remote one's)
	}
	if inf["config_file"] == "" {
		// Started with its settings on the command line, which Redis
		// hides behind its process title: they cannot be replayed.
		return nil
	}
	s, err := process.Owner(pid)
	if err != nil {
		return nil
	}
	// INFO's executable joins a relative argv[0] to the working
	// directory, which may not hold it; the program's name matters
	// (Debian's redis-server is a link to redis-check-rdb, which acts on
	// the name it is called by): the same name beside what the kernel
	// ran, or on PATH.
	exe := inf["executable"]
	if _, err := os.Stat(exe); err != nil {
		name := filepath.Base(exe)
		if real, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			exe = filepath.Join(filepath.Dir(real), name)
		}
		if _, err := os.Stat(exe); err != nil {
			if exe, err = exec.LookPath(name); err != nil {
				return nil
			}
		}
	}
	s.Argv = []string{exe, inf["config_file"]}
	s.Argv = append(s.Argv, "--daemonize", "no")
	for _, name := range []string{"port", "bind", "unixsocket", "dir", "dbfilename", "appendonly", "appenddirname", "appendfilename"} {
		v, err := configGet(ctx, c, name)
		if err != nil || v == "" {
			continue
		}
		s.Argv = append(s.Argv, "--"+name)
		s.Argv = append(s.Argv, strings.Fields(v)...)
	}
	return s
}

// checkKeys fails when Redis holds no keys but rep recorded some.
func (w *Writer) checkKeys(ctx context.Context, rep writer.Report) error {
	const phase = writer.PhasePostRestore
	recorded, ok := rep.Positions["keys"]
	if !ok {
		return nil // a backup from before the count was recorded
	}
	want, err := strconv.ParseInt(recorded, 10, 64)
	if err != nil {
		return fmt.Errorf("redis writer %q: %s: the backup recorded keys=%q, not a number; is the manifest damaged?", w.name, phase, recorded)
	}
	if want == 0 {
		return nil
	}
	c := w.client()
	defer c.Close()
	info, err := info(ctx, c, "keyspace")
	if err != nil {
		return w.cmdErr(ctx, phase, "INFO keyspace", err)
	}
	if keyCount(info) == 0 {
		return fmt.Errorf("redis writer %q: %s: Redis at %s started with no keys, but the backup held %d, so it did not load the restored files; check that they are where CONFIG GET dir, dbfilename and appendonly say, and the Redis log",
			w.name, phase, w.addr, want)
	}
	return nil
}

// waitReady waits until the server answers PING and INFO says loading:0.
// Wrong credentials end the wait at once; anything else may be a server
// still starting.
func (w *Writer) waitReady(ctx context.Context, proc *os.Process, logHint string) error {
	const phase = writer.PhasePostRestore
	var last error
	for {
		last = w.ready(ctx)
		if last == nil {
			return nil
		}
		if !errors.Is(last, writer.ErrRetryable) {
			return last
		}
		if proc != nil && !process.Alive(proc.Pid) {
			return fmt.Errorf("redis writer %q: %s: Redis, started as when the backup was made, exited (%w); %s", w.name, phase, last, logHint)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis writer %q: %s: Redis at %s not ready after it was started (%w); %s: %w",
				w.name, phase, w.addr, last, logHint, writer.ErrRetryable)
		case <-time.After(pollEvery):
		}
	}
}

func (w *Writer) ready(ctx context.Context) error {
	const phase = writer.PhasePostRestore
	c := w.client()
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return w.cmdErr(ctx, phase, "PING", err)
	}
	info, err := info(ctx, c, "persistence")
	if err != nil {
		return w.cmdErr(ctx, phase, "INFO persistence", err)
	}
	if info["loading"] != "0" {
		return fmt.Errorf("still loading its data set: %w", writer.ErrRetryable)
	}
	return nil
}

// run runs a stop or start command; what names its option in errors. The
// command gets the password in REDISCLI_AUTH, for redis-cli.
func (w *Writer) run(ctx context.Context, phase writer.Phase, what string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = os.Environ()
	if w.password != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+w.password)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis writer %q: %s: %s: %w: %s", w.name, phase, what, err, strings.TrimSpace(string(out)))
	}
	return nil
}
