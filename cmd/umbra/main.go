// Command umbra makes application-consistent shadow copies of Linux volumes:
// writers bring applications to a consistent point and freeze them briefly,
// providers take a point-in-time copy of every volume, and umbra keeps track
// of the sets it made.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/peerdial"
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

func main() {
	peerdial.Main() // a helper connecting as PostgreSQL's user: never returns
	// Backups hold mostly pointer-free byte slices, cheap to collect: a
	// smaller heap goal keeps peak memory close to what is live (measured:
	// 152 → 117 MB on 100 MiB of mixed files, for ~10% more CPU).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if path := os.Getenv("UMBRA_CPUPROFILE"); path != "" {
		stop, err := profileCPU(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "umbra: UMBRA_CPUPROFILE: %v\n", err)
			os.Exit(exitFail)
		}
		code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if path := os.Getenv("UMBRA_MEMPROFILE"); path != "" {
		// Sample the heap at its largest: every allocation of 512 KiB or
		// more is recorded, and the profile keeps what was allocated.
		runtime.MemProfileRate = 512 << 10
		code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		os.Exit(code)
	}
	if path := os.Getenv("UMBRA_BLOCKPROFILE"); path != "" {
		// Where goroutines wait (channels, locks, I/O slots) for 1 ms
		// or more: what keeps the cores idle.
		runtime.SetBlockProfileRate(int(time.Millisecond))
		code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("block").WriteTo(f, 0)
			f.Close()
		}
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// profileCPU writes a CPU profile to path until stop is called
// (UMBRA_CPUPROFILE, for performance work: go tool pprof bin/umbra path).
func profileCPU(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
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
