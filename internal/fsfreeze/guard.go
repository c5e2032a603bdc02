package fsfreeze

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// The guard protocol, over the guard's stdin and stdout: the guard prints
// "ready" once it watches; the parent freezes, commits, thaws and then writes
// "released". If stdin reaches EOF before that (the parent died) or the
// deadline passes first, the guard thaws every mount itself.
const (
	msgReady    = "ready"
	msgReleased = "released"
)

// Guarded freezes filesystems under a guard process started from Command
// (typically umbra's own executable and its hidden guard subcommand), which
// gets "--limit DURATION MOUNT..." appended.
type Guarded struct {
	Command []string
}

// Freeze starts a guard for mounts, freezes them in order, and returns the
// function that thaws them and dismisses the guard. The guard thaws on its own
// after limit, or at once if this process dies. On error nothing is left
// frozen.
func (g Guarded) Freeze(ctx context.Context, mounts []string, limit time.Duration) (thaw func() error, err error) {
	guard, err := startGuard(ctx, g.Command, limit, mounts)
	if err != nil {
		return nil, err
	}
	var frozen []string
	thaw = func() error {
		var errs []error
		for i := len(frozen) - 1; i >= 0; i-- {
			errs = append(errs, Thaw(frozen[i]))
		}
		errs = append(errs, guard.release())
		return errors.Join(errs...)
	}
	for _, m := range mounts {
		if err := Freeze(m); err != nil {
			return nil, errors.Join(err, thaw())
		}
		frozen = append(frozen, m)
	}
	return thaw, nil
}

type guardProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startGuard(ctx context.Context, command []string, limit time.Duration, mounts []string) (*guardProc, error) {
	if len(command) == 0 {
		return nil, errors.New("fsfreeze: no guard command configured")
	}
	args := append(append([]string{}, command[1:]...), "--limit", limit.String())
	args = append(args, mounts...)
	cmd := exec.Command(command[0], args...)
	// Its own session: a Ctrl-C to umbra's process group must not reach it.
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
		return nil, fmt.Errorf("start thaw guard %s: %w", command[0], err)
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != msgReady {
			err = fmt.Errorf("unexpected %q", line)
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
	return &guardProc{cmd: cmd, stdin: stdin}, nil
}

func (g *guardProc) release() error {
	_, werr := io.WriteString(g.stdin, msgReleased+"\n")
	_ = g.stdin.Close()
	if err := g.cmd.Wait(); err != nil {
		return fmt.Errorf("thaw guard: %w", errors.Join(werr, err))
	}
	return nil
}

// RunGuard is the guard process's body: it reports ready on out, then waits
// for "released" on in. On EOF (the parent died) or when limit passes, it
// thaws every mount and returns what that found.
func RunGuard(in io.Reader, out io.Writer, limit time.Duration, mounts []string) error {
	if _, err := fmt.Fprintln(out, msgReady); err != nil {
		return err
	}
	released := make(chan bool, 1)
	go func() {
		line, err := bufio.NewReader(in).ReadString('\n')
		released <- err == nil && strings.TrimSpace(line) == msgReleased
	}()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	reason := ""
	select {
	case ok := <-released:
		if ok {
			return nil
		}
		reason = "umbra exited while the filesystems were frozen"
	case <-timer.C:
		reason = fmt.Sprintf("freeze limit %s passed", limit)
	}
	var errs []error
	for _, m := range mounts {
		errs = append(errs, Thaw(m))
	}
	err := errors.Join(errs...)
	fmt.Fprintf(os.Stderr, "umbra thaw guard: %s; thawed %s (errors: %v)\n", reason, strings.Join(mounts, " "), err)
	return err
}
