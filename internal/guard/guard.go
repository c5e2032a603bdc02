// Package guard runs the thaw guard: a process, separate from umbra, that
// releases every freeze of a set if umbra dies or the freeze limit passes
// first. Linux has no time-out for a frozen filesystem, and a stopped
// application stays stopped: a freeze that outlives its coordinator is the
// worst failure umbra can cause, so nothing that cannot release itself is
// frozen without a guard watching.
package guard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/fsfreeze"
	"github.com/umbra-backup/umbra/internal/writer"
)

// The protocol, over the guard's stdin and stdout: the parent writes the
// plan as one JSON line; the guard answers "ready" once it watches. After the
// thaw the parent writes "released" and the guard exits without acting. If
// stdin reaches EOF before that (the parent died) or the limit passes, the
// guard releases everything in the plan itself.
const (
	msgReady    = "ready"
	msgReleased = "released"
)

// Plan is what a guard releases, in order: mounts first (a writer's thaw
// command may need to write), then commands.
type Plan struct {
	SetID    string           `json:"set_id"`
	Limit    time.Duration    `json:"limit"`
	Mounts   []string         `json:"mounts,omitempty"`
	Commands []GuardedCommand `json:"commands,omitempty"`
}

// GuardedCommand is a writer's thaw command.
type GuardedCommand struct {
	Writer string `json:"writer"`
	writer.Command
}

// commandLimit bounds each command the guard runs.
const commandLimit = time.Minute

// Guard is a running guard process.
type Guard struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// Start launches argv (umbra's own executable and its hidden guard
// subcommand) in a session of its own, so that a Ctrl-C to umbra's process
// group does not reach it, hands it the plan and waits until it watches.
func Start(ctx context.Context, argv []string, plan Plan) (*Guard, error) {
	if len(argv) == 0 {
		return nil, errors.New("start thaw guard: no guard command configured")
	}
	line, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start thaw guard: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start thaw guard: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start thaw guard %s: %w", argv[0], err)
	}
	ready := make(chan error, 1)
	go func() {
		if _, err := stdin.Write(append(line, '\n')); err != nil {
			ready <- err
			return
		}
		answer, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(answer) != msgReady {
			err = fmt.Errorf("unexpected answer %q", answer)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(10 * time.Second):
		err = errors.New("no answer in 10s")
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("start thaw guard: %w", err)
	}
	return &Guard{cmd: cmd, stdin: stdin}, nil
}

// Release tells the guard that umbra thawed everything itself.
func (g *Guard) Release() error {
	_, werr := io.WriteString(g.stdin, msgReleased+"\n")
	_ = g.stdin.Close()
	if err := g.cmd.Wait(); err != nil {
		return fmt.Errorf("thaw guard: %w", errors.Join(werr, err))
	}
	return werr
}

// Run is the guard process's body. It reads the plan from in, reports ready
// on out, then waits for "released". On EOF (the parent died), when the
// plan's limit passes, or when ctx ends (the guard itself is told to stop),
// it thaws every mount and runs every command, writes what it did to log,
// and returns the errors it met.
//
// The guard must outlive whatever killed umbra: it ignores SIGPIPE, so that
// a log line to a stderr nobody reads any more (a closed SSH session, a dead
// "| tee") cannot kill it before it thaws, and SIGHUP.
func Run(ctx context.Context, in io.Reader, out, log io.Writer) error {
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	r := bufio.NewReader(in)
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("thaw guard: read plan: %w", err)
	}
	var plan Plan
	if err := json.Unmarshal([]byte(line), &plan); err != nil {
		return fmt.Errorf("thaw guard: read plan: %w", err)
	}
	if _, err := fmt.Fprintln(out, msgReady); err != nil {
		return err
	}
	released := make(chan bool, 1)
	go func() {
		line, err := r.ReadString('\n')
		released <- err == nil && strings.TrimSpace(line) == msgReleased
	}()
	timer := time.NewTimer(plan.Limit)
	defer timer.Stop()
	var reason string
	select {
	case ok := <-released:
		if ok {
			return nil
		}
		reason = "umbra exited while the set was frozen"
	case <-timer.C:
		reason = fmt.Sprintf("the freeze limit of %s passed", plan.Limit)
	case <-ctx.Done():
		reason = "the guard was told to stop"
	}
	fmt.Fprintf(log, "umbra thaw guard: set %s: %s; releasing every freeze\n", plan.SetID, reason)
	return release(plan, log)
}

func release(plan Plan, log io.Writer) error {
	var errs []error
	for _, m := range plan.Mounts {
		err := fsfreeze.Thaw(m)
		fmt.Fprintf(log, "umbra thaw guard: thaw filesystem %s: %s\n", m, result(err))
		errs = append(errs, err)
	}
	for _, c := range plan.Commands {
		err := runCommand(c.Command)
		fmt.Fprintf(log, "umbra thaw guard: thaw writer %s: %s\n", c.Writer, result(err))
		if err != nil {
			errs = append(errs, fmt.Errorf("thaw writer %s: %w", c.Writer, err))
		}
	}
	return errors.Join(errs...)
}

func runCommand(c writer.Command) error {
	if len(c.Argv) == 0 {
		return errors.New("empty command")
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func result(err error) string {
	if err != nil {
		return "failed: " + err.Error()
	}
	return "ok"
}
