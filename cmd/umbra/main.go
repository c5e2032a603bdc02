// Command umbra makes application-consistent shadow copies of Linux volumes:
// writers bring applications to a consistent point and freeze them briefly,
// providers take a point-in-time copy of every volume, and umbra backs them
// up. Everything it does lives in importable packages (internal/cli and
// below); here are only the process's own settings and the registry of
// writers and providers it runs with.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/umbra-backup/umbra/internal/cli"
	"github.com/umbra-backup/umbra/internal/peerdial"
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
			os.Exit(cli.ExitFail)
		}
		code := cli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Standard())
		stop()
		os.Exit(code)
	}
	if path := os.Getenv("UMBRA_MEMPROFILE"); path != "" {
		// Sample the heap at its largest: every allocation of 512 KiB or
		// more is recorded, and the profile keeps what was allocated.
		runtime.MemProfileRate = 512 << 10
		code := cli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Standard())
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
		code := cli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Standard())
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("block").WriteTo(f, 0)
			f.Close()
		}
		os.Exit(code)
	}
	os.Exit(cli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Standard()))
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
