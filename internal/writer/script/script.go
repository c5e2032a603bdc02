// Package script is the writer that runs the operator's commands at each
// phase, for any program without a writer of its own.
//
// Each command runs as /bin/sh -c COMMAND in its own process group, with the
// process's environment plus:
//
//	UMBRA_PHASE        the phase (prepare-snapshot, freeze, thaw, …)
//	UMBRA_SET_ID       the snapshot set
//	UMBRA_BACKUP_TYPE  full, incremental, log or copy
//	UMBRA_WRITER       the writer's instance name
//	UMBRA_PATHS        the paths option, colon-separated
//	UMBRA_SNAPSHOTS    post and complete (and abort once known): one
//	                   "source=snapshot" line per volume of the set
//	UMBRA_BACKUP_OK    complete: 1 if the writer's data was stored, else 0
//	UMBRA_FROZEN       abort: 1 if freeze ran and thaw has not succeeded
//	UMBRA_ABORT        1 when abort runs the thaw command itself
//	UMBRA_GUARD        1 when umbra's thaw guard runs it: umbra died or
//	                   the freeze limit passed while the application was
//	                   frozen
//	UMBRA_RESTORE_TARGET, UMBRA_RESTORE_MORE, UMBRA_COMPONENTS
//	                   pre-restore and post-restore: where the files go
//	                   (empty: in place), 1 if more restores follow, and
//	                   the components restored, space-separated
//
// A command that exits non-zero fails its phase, with its status and the
// last lines of its output; one that outlives the time limit is killed with
// its whole process group. Failures are never hidden. A command may leave a
// background process behind on success (a freeze command that holds a lock,
// say); the thaw command must end it. If umbra dies while the application is
// frozen, umbra's thaw guard, a separate process, runs the abort command (or
// else the thaw command) for it.
package script

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
)

// defaultTimeout bounds each command unless the timeout option says
// otherwise.
const defaultTimeout = 60 * time.Second

// tailLines is how much of a failed command's output an error carries.
const tailLines = 10

// commandOptions maps option keys to the phase their command runs at.
var commandOptions = map[string]writer.Phase{
	"prepare":      writer.PhasePrepareSnapshot,
	"freeze":       writer.PhaseFreeze,
	"thaw":         writer.PhaseThaw,
	"post":         writer.PhasePostSnapshot,
	"complete":     writer.PhaseBackupComplete,
	"abort":        writer.PhaseAbort,
	"pre-restore":  writer.PhasePreRestore,
	"post-restore": writer.PhasePostRestore,
}

var (
	_ writer.Writer           = (*Writer)(nil)
	_ writer.BackupPreparer   = (*Writer)(nil)
	_ writer.SnapshotPreparer = (*Writer)(nil)
	_ writer.Freezer          = (*Writer)(nil)
	_ writer.PostSnapshotter  = (*Writer)(nil)
	_ writer.Completer        = (*Writer)(nil)
	_ writer.Aborter          = (*Writer)(nil)
	_ writer.Guarder          = (*Writer)(nil)
	_ writer.Restorer         = (*Writer)(nil)
)

// errTimedOut is the cause of a command's context when its own time limit
// ends it.
var errTimedOut = errors.New("command time limit reached")

// Writer runs a command per phase. It implements every phase; a phase
// without a command does nothing.
type Writer struct {
	name    string
	cmds    map[writer.Phase]string
	paths   []string
	needs   writer.Need
	timeout time.Duration
	// userCheck is the operator's check of a verification: the one
	// thing umbra verify knows to run for a script writer.
	userCheck writer.UserVerify

	abortMu sync.Mutex // one Abort at a time

	mu       sync.Mutex
	frozen   bool     // freeze started and thaw has not succeeded since
	aborted  bool     // the last Abort succeeded and no phase ran since
	inflight *running // the phase command running now
}

// running is a phase command in progress, which Abort can stop.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns the writer named name from its options: a command for each of
// prepare, freeze, thaw, post, complete, abort, pre-restore and
// post-restore; paths, the application's data as absolute paths separated
// by colons (one component, "data"; none if empty); needs, atomic,
// quiesced or live (default quiesced with a freeze command, else atomic);
// and timeout, a Go duration per command (default 60s).
func New(name string, opts map[string]string) (*Writer, error) {
	w := &Writer{name: name, cmds: map[writer.Phase]string{}, timeout: defaultTimeout}
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		v := opts[k]
		if phase, ok := commandOptions[k]; ok {
			if strings.TrimSpace(v) != "" {
				w.cmds[phase] = v
			}
			continue
		}
		switch k {
		case "paths":
			for p := range strings.SplitSeq(v, ":") {
				if p == "" {
					continue
				}
				if !filepath.IsAbs(p) {
					return nil, fmt.Errorf("script writer %q: paths: %q is not an absolute path; give absolute paths separated by colons, such as paths=/srv/app/data:/etc/app", name, p)
				}
				w.paths = append(w.paths, filepath.Clean(p))
			}
		case "needs":
			switch n := writer.Need(v); n {
			case writer.NeedAtomic, writer.NeedQuiesced, writer.NeedLive:
				w.needs = n
			default:
				return nil, fmt.Errorf("script writer %q: needs=%q; want atomic, quiesced or live", name, v)
			}
		case "verify", "verify_timeout":
			// writer.ParseUserVerify, below
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("script writer %q: timeout=%q; want a positive Go duration, such as 30s or 2m", name, v)
			}
			w.timeout = d
		default:
			valid := append(slices.Collect(maps.Keys(commandOptions)), append([]string{"paths", "needs", "timeout"}, writer.CommonOptions...)...)
			slices.Sort(valid)
			return nil, fmt.Errorf("script writer %q: unknown option %q; valid options: %s", name, k, strings.Join(valid, ", "))
		}
	}
	uv, err := writer.ParseUserVerify("script", name, opts)
	if err != nil {
		return nil, err
	}
	w.userCheck = uv
	_, freezes := w.cmds[writer.PhaseFreeze]
	switch {
	case w.needs == "" && freezes:
		w.needs = writer.NeedQuiesced
	case w.needs == "":
		w.needs = writer.NeedAtomic
	case w.needs == writer.NeedQuiesced && !freezes:
		return nil, fmt.Errorf("script writer %q: needs=quiesced without a freeze command; set freeze= to a command that stops every write, or needs=atomic", name)
	}
	return w, nil
}

// Name returns the instance name.
func (w *Writer) Name() string { return w.name }

// Identify describes the paths option as one component, "data", restored
// by the pre-restore and post-restore commands (method custom).
func (w *Writer) Identify(context.Context) (writer.Metadata, error) {
	md := writer.Metadata{Writer: "script", Instance: w.name, Components: []writer.Component{}}
	if len(w.paths) > 0 {
		md.Components = append(md.Components, writer.Component{
			Name:        "data",
			Kind:        writer.KindFiles,
			Paths:       slices.Clone(w.paths),
			Selectable:  true,
			BackupTypes: []writer.BackupType{writer.Full, writer.Incremental, writer.Copy},
			Needs:       w.needs,
			Restore:     writer.RestoreMethod{Method: "custom"},
		})
	}
	return md, nil
}

// PrepareBackup has no command; it starts a new set.
func (w *Writer) PrepareBackup(context.Context, writer.Set) error {
	w.begin(writer.PhasePrepareBackup)
	return nil
}

// PrepareSnapshot runs the prepare command.
func (w *Writer) PrepareSnapshot(ctx context.Context, set writer.Set) error {
	w.begin(writer.PhasePrepareSnapshot)
	return w.phase(ctx, writer.PhasePrepareSnapshot, set)
}

// Freeze runs the freeze command. From its start until a thaw succeeds,
// Abort runs the thaw command (or the abort command) even if Freeze failed.
func (w *Writer) Freeze(ctx context.Context, set writer.Set) error {
	w.begin(writer.PhaseFreeze)
	return w.phase(ctx, writer.PhaseFreeze, set)
}

// Thaw runs the thaw command.
func (w *Writer) Thaw(ctx context.Context, set writer.Set) error {
	w.begin(writer.PhaseThaw)
	if err := w.phase(ctx, writer.PhaseThaw, set); err != nil {
		return err
	}
	w.mu.Lock()
	w.frozen = false
	w.mu.Unlock()
	return nil
}

// PostSnapshot runs the post command and returns an empty report.
func (w *Writer) PostSnapshot(ctx context.Context, set writer.Set) (writer.Report, error) {
	w.begin(writer.PhasePostSnapshot)
	return writer.Report{}, w.phase(ctx, writer.PhasePostSnapshot, set)
}

// BackupComplete runs the complete command with UMBRA_BACKUP_OK=1 if the
// writer's component was stored and 0 otherwise. A writer without paths
// has no component; it gets 1 only if the requester reported components
// and all of them stored.
func (w *Writer) BackupComplete(ctx context.Context, c writer.Completion) error {
	w.begin(writer.PhaseBackupComplete)
	var ok bool
	if len(w.paths) > 0 {
		ok = c.Components["data"]
	} else {
		ok = len(c.Components) > 0
		for _, stored := range c.Components {
			ok = ok && stored
		}
	}
	return w.phase(ctx, writer.PhaseBackupComplete, c.Set, "UMBRA_BACKUP_OK="+flag(ok))
}

// Abort stops a phase command still running (killing its process group),
// then runs the abort command, with UMBRA_FROZEN saying whether the
// application may be frozen. Without an abort command it runs the thaw
// command if freeze started and thaw has not succeeded, so the application
// never stays frozen. Abort is idempotent: after one succeeds, another does
// nothing until the next phase runs.
func (w *Writer) Abort(ctx context.Context, set writer.Set) error {
	w.abortMu.Lock()
	defer w.abortMu.Unlock()

	w.mu.Lock()
	r := w.inflight
	w.mu.Unlock()
	if r != nil {
		r.cancel()
		select {
		case <-r.done:
		case <-ctx.Done():
			return fmt.Errorf("script writer %q: abort: a phase command is still running: %w", w.name, context.Cause(ctx))
		}
	}

	w.mu.Lock()
	frozen, aborted := w.frozen, w.aborted
	w.mu.Unlock()
	if aborted {
		return nil
	}
	var err error
	switch {
	case w.cmds[writer.PhaseAbort] != "":
		err = w.run(ctx, "abort", w.cmds[writer.PhaseAbort], w.env(writer.PhaseAbort, set, "UMBRA_FROZEN="+flag(frozen)))
	case frozen:
		// UMBRA_PHASE=thaw, so that one hook script for both phases that
		// dispatches on it thaws.
		err = w.run(ctx, "abort (thaw command)", w.cmds[writer.PhaseThaw], w.env(writer.PhaseThaw, set, "UMBRA_ABORT=1"))
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.frozen, w.aborted = false, true
	w.mu.Unlock()
	return nil
}

// ThawGuard hands the thaw guard what Abort would run for a frozen
// application: the abort command, else the thaw command. The guard runs it,
// with UMBRA_GUARD=1, if umbra dies or the freeze limit passes while the
// application is frozen: a stopped application does not resume by itself.
func (w *Writer) ThawGuard(set writer.Set) (writer.Command, bool) {
	if w.cmds[writer.PhaseFreeze] == "" {
		return writer.Command{}, false
	}
	var env []string
	cmdline := w.cmds[writer.PhaseAbort]
	if cmdline != "" {
		env = w.umbraEnv(writer.PhaseAbort, set, "UMBRA_FROZEN=1", "UMBRA_GUARD=1")
	} else {
		cmdline = w.cmds[writer.PhaseThaw]
		env = w.umbraEnv(writer.PhaseThaw, set, "UMBRA_ABORT=1", "UMBRA_GUARD=1")
	}
	if cmdline == "" {
		return writer.Command{}, false
	}
	return writer.Command{Argv: []string{"/bin/sh", "-c", cmdline}, Env: env}, true
}

// PreRestore runs the pre-restore command.
func (w *Writer) PreRestore(ctx context.Context, r writer.Restore) error {
	return w.restore(ctx, writer.PhasePreRestore, r)
}

// PostRestore runs the post-restore command.
func (w *Writer) PostRestore(ctx context.Context, r writer.Restore) error {
	return w.restore(ctx, writer.PhasePostRestore, r)
}

func (w *Writer) restore(ctx context.Context, phase writer.Phase, r writer.Restore) error {
	env := w.env(phase, writer.Set{},
		"UMBRA_RESTORE_TARGET="+r.Target,
		"UMBRA_RESTORE_MORE="+flag(r.More),
		"UMBRA_COMPONENTS="+strings.Join(r.Components, " "))
	return w.run(ctx, string(phase), w.cmds[phase], env)
}

// begin marks the start of a phase of a set.
func (w *Writer) begin(phase writer.Phase) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.aborted = false
	if phase == writer.PhaseFreeze && w.cmds[writer.PhaseFreeze] != "" {
		w.frozen = true
	}
}

// phase runs phase's command where Abort can stop it.
func (w *Writer) phase(ctx context.Context, phase writer.Phase, set writer.Set, extra ...string) error {
	cmdline := w.cmds[phase]
	if cmdline == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &running{cancel: cancel, done: make(chan struct{})}
	w.mu.Lock()
	w.inflight = r
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.inflight == r {
			w.inflight = nil
		}
		w.mu.Unlock()
		cancel()
		close(r.done)
	}()
	return w.run(ctx, string(phase), cmdline, w.env(phase, set, extra...))
}

// env is the environment of phase's command.
func (w *Writer) env(phase writer.Phase, set writer.Set, extra ...string) []string {
	return append(os.Environ(), w.umbraEnv(phase, set, extra...)...)
}

// umbraEnv is what umbra adds to a command's environment.
func (w *Writer) umbraEnv(phase writer.Phase, set writer.Set, extra ...string) []string {
	env := append([]string{},
		"UMBRA_PHASE="+string(phase),
		"UMBRA_SET_ID="+set.ID,
		"UMBRA_BACKUP_TYPE="+string(set.Type),
		"UMBRA_WRITER="+w.name,
		"UMBRA_PATHS="+strings.Join(w.paths, ":"),
	)
	if phase == writer.PhasePostSnapshot || phase == writer.PhaseBackupComplete || len(set.Volumes) > 0 {
		var lines []string
		for _, v := range set.Volumes {
			lines = append(lines, v.Source+"="+v.Snapshot)
		}
		env = append(env, "UMBRA_SNAPSHOTS="+strings.Join(lines, "\n"))
	}
	return append(env, extra...)
}

// run runs cmdline with /bin/sh in a process group of its own and kills the
// group when the command's time limit or ctx ends; phase labels its errors. Output goes to an
// unlinked file rather than a pipe, so a background process the command
// leaves behind cannot hold up the wait.
func (w *Writer) run(ctx context.Context, phase, cmdline string, env []string) error {
	if cmdline == "" {
		return nil
	}
	ctx, cancel := context.WithTimeoutCause(ctx, w.timeout, errTimedOut)
	defer cancel()

	out, err := os.CreateTemp("", "umbra-script-*.out")
	if err != nil {
		return fmt.Errorf("script writer %q: %s: output file: %w", w.name, phase, err)
	}
	defer out.Close()
	if err := os.Remove(out.Name()); err != nil {
		return fmt.Errorf("script writer %q: %s: output file: %w", w.name, phase, err)
	}

	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Env = env
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if err == nil {
		return nil
	}

	prefix := fmt.Sprintf("script writer %q: %s: command %q", w.name, phase, cmdline)
	output := tail(out)
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errTimedOut):
		return fmt.Errorf("%s did not finish within %v; killed its process group (raise timeout= if it needs longer)%s: %w", prefix, w.timeout, output, writer.ErrRetryable)
	case errors.Is(cause, context.DeadlineExceeded):
		return fmt.Errorf("%s outlived the phase's time limit; killed its process group%s: %w: %w", prefix, output, cause, writer.ErrRetryable)
	case cause != nil:
		return fmt.Errorf("%s stopped; killed its process group%s: %w", prefix, output, cause)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("%s killed by signal %v%s", prefix, ws.Signal(), output)
		}
		return fmt.Errorf("%s exited with status %d%s", prefix, ee.ExitCode(), output)
	}
	return fmt.Errorf("%s: %w%s", prefix, err, output)
}

// tail returns the last lines of the command's output, formatted to end an
// error message, or "" if there was none.
func tail(f *os.File) string {
	const window = 4096
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return ""
	}
	off := max(0, fi.Size()-window)
	b, err := io.ReadAll(io.NewSectionReader(f, off, window))
	if err != nil {
		return ""
	}
	s := string(b)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return "; last output:\n    " + strings.Join(lines, "\n    ")
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

var _ writer.Verifier = (*Writer)(nil)

// Verify runs the operator's verify command, if there is one, with
// UMBRA_VERIFY_DIR naming where the backup's data was restored: a script
// writer knows no more of its application.
func (w *Writer) Verify(ctx context.Context, r writer.Restore) ([]writer.Check, error) {
	if c, ok := w.userCheck.Run(ctx, []string{"UMBRA_VERIFY_DIR=" + r.Target}, -1, -1); ok {
		return []writer.Check{c}, nil
	}
	return nil, nil
}
