package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses, documented in umbra --help.
const (
	exitOK       = 0
	exitFail     = 1
	exitUsage    = 2
	exitWarnings = 3 // completed with warnings
	exitPartial  = 4 // stored without a writer that failed
	// exitFatal is wal-fetch's failure other than "not archived": above
	// 125, so that PostgreSQL stops recovery instead of ending it.
	exitFatal = 126
	// exitInterrupted is 128 + SIGINT, as a shell reports a command it
	// interrupted.
	exitInterrupted = 130
)

// ExitFail is the status of a failure that is none of the others.
const ExitFail = exitFail

// Run runs umbra with the command line args (without the program's name)
// and the writers and providers of reg, and returns its exit status. It
// stops what it runs on SIGINT and SIGTERM.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer, reg Registry) int {
	return run(args, stdin, stdout, stderr, reg)
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, reg Registry) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, reg: reg}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if n := a.storeRetries(); n > 0 && !a.json {
		fmt.Fprintf(stderr, "umbra: %s to the repository failed for a moment and %s tried again (-v shows them).\n",
			count(n, "call"), map[bool]string{true: "was", false: "were"}[n == 1])
	}
	if err == nil {
		return exitOK
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Ctrl-C or SIGTERM: one line, and the shell's status for it.
		fmt.Fprintln(stderr, "umbra: interrupted")
		return exitInterrupted
	}
	var reported *reportedError
	if !errors.As(err, &reported) {
		fmt.Fprintf(stderr, "umbra: %v\n", err)
	}
	var usage *usageError
	if errors.As(err, &usage) {
		return exitUsage
	}
	var code *exitError
	if errors.As(err, &code) {
		return code.code
	}
	var warn *warningsError
	if errors.As(err, &warn) {
		return exitWarnings
	}
	return exitFail
}

// exitError ends umbra with a given status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// reportedError has already been shown to the user (in --json output, say).
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }
