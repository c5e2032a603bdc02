package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/peerdial"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

// The test binary doubles as umbra: re-executed with asUmbraEnv set, it runs
// the CLI. So the thaw guard (umbra's own executable) works in tests too.
const asUmbraEnv = "UMBRA_TEST_AS_UMBRA"

func TestMain(m *testing.M) {
	peerdial.Main()
	if os.Getenv(asUmbraEnv) != "" {
		if at := os.Getenv(pauseAtEnv); at != "" {
			testPause = pauseAt(at, os.Stderr)
		}
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, Standard()))
	}
	testenv.Main(m)
}

// pauseAtEnv names the point where the test binary, run as umbra, waits to
// be killed (the shipped umbra has no such hook).
const pauseAtEnv = "UMBRA_TEST_PAUSE_AT"

// pauseAt holds umbra at point, having said so on stderr, until SIGUSR1
// lets it go on or its context ends.
func pauseAt(at string, stderr io.Writer) func(context.Context, string) error {
	return func(ctx context.Context, point string) error {
		if point != at {
			return nil
		}
		resume := make(chan os.Signal, 1)
		signal.Notify(resume, syscall.SIGUSR1)
		defer signal.Stop(resume)
		fmt.Fprintf(stderr, "umbra: paused at %s (%s)\n", point, pauseAtEnv)
		select {
		case <-resume:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// result is one finished umbra run.
type result struct {
	stdout, stderr string
	code           int
}

// umbraCmd prepares an umbra run with its own state directory.
func umbraCmd(t testing.TB, state string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--state-dir", state, "--config", emptyConfig(t)}, args...)...)
	cmd.Env = append(append(os.Environ(), asUmbraEnv+"=1"), env...)
	return cmd
}

// umbraRunLimit bounds one umbra run in a test: past it the run gets
// SIGQUIT, so that a hang fails its test with umbra's goroutines (Go prints
// them) instead of the whole package's timeout with nothing to go on.
const umbraRunLimit = 5 * time.Minute

// umbraRun runs umbra to the end.
func umbraRun(t testing.TB, state string, env []string, args ...string) result {
	t.Helper()
	cmd := umbraCmd(t, state, env, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// Children (database servers, dump tools) that keep the output pipes
	// open must not keep Wait from returning once umbra is gone.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("run umbra %v: %v", args, err)
	}
	var hung atomic.Bool
	watchdog := time.AfterFunc(umbraRunLimit, func() {
		hung.Store(true)
		_ = cmd.Process.Signal(syscall.SIGQUIT)
	})
	err := cmd.Wait()
	watchdog.Stop()
	res := result{stdout: out.String(), stderr: errb.String()}
	if hung.Load() {
		t.Errorf("umbra %v still ran after %v: sent SIGQUIT; its output:\n%s\n%s", args, umbraRunLimit, res.stdout, res.stderr)
	}
	cleanAside(t, res.stdout)
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case errors.Is(err, exec.ErrWaitDelay): // umbra ended; a child held its output
		res.code = cmd.ProcessState.ExitCode()
	case err != nil:
		t.Fatalf("run umbra %v: %v", args, err)
	}
	return res
}

// mustUmbra runs umbra and fails the test unless it exits 0.
func mustUmbra(t testing.TB, state string, args ...string) result {
	t.Helper()
	res := umbraRun(t, state, nil, args...)
	if res.code != 0 {
		t.Fatalf("umbra %v: exit %d: %s", args, res.code, res.stderr)
	}
	return res
}

// startPaused starts umbra with UMBRA_TEST_PAUSE_AT=phase and returns once
// it says it is paused there, with the reading end of its stderr.
func startPaused(t testing.TB, state, phase string, args ...string) (*exec.Cmd, io.Closer) {
	t.Helper()
	return startPausedEnv(t, state, nil, phase, args...)
}

// startPausedEnv is startPaused with extra environment variables.
func startPausedEnv(t testing.TB, state string, env []string, phase string, args ...string) (*exec.Cmd, io.Closer) {
	t.Helper()
	cmd := umbraCmd(t, state, append([]string{"UMBRA_TEST_PAUSE_AT=" + phase}, env...), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	paused := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var seen []string
		for sc.Scan() {
			seen = append(seen, sc.Text())
			if strings.Contains(sc.Text(), "paused at "+phase) {
				paused <- nil
				go io.Copy(io.Discard, stderr)
				return
			}
		}
		paused <- errors.New("umbra ended before pausing: " + strings.Join(seen, "\n"))
	}()
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("umbra did not pause at %s in 30s", phase)
	}
	return cmd, stderr
}

func emptyConfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "umbra.toml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// createdSet is the part of shadow create --json the tests read.
type createdSet struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Volumes []struct {
		Source   string `json:"source"`
		Snapshot string `json:"snapshot"`
		Provider string `json:"provider"`
	} `json:"volumes"`
	Writers []struct {
		Name        string `json:"name"`
		Consistency string `json:"consistency"`
	} `json:"writers"`
	Paths []struct {
		Path        string `json:"path"`
		Consistency string `json:"consistency"`
	} `json:"paths"`
	FreezeMS    float64   `json:"freeze_ms"`
	FreezeStart time.Time `json:"freeze_start"`
	FreezeEnd   time.Time `json:"freeze_end"`
	DurationMS  float64   `json:"duration_ms"`
	Error       *struct {
		Message string `json:"message"`
		Phase   string `json:"phase"`
		Who     string `json:"who"`
	} `json:"error"`
}

func decodeSet(t testing.TB, res result) createdSet {
	t.Helper()
	var set createdSet
	if err := json.Unmarshal([]byte(res.stdout), &set); err != nil {
		t.Fatalf("decode shadow create --json: %v\n%s", err, res.stdout)
	}
	return set
}

// snapshotOf maps a live path into the set's shadow copy.
func snapshotOf(t testing.TB, set createdSet, path string) string {
	t.Helper()
	best := -1
	for i, v := range set.Volumes {
		if (path == v.Source || strings.HasPrefix(path, v.Source+"/")) && (best < 0 || len(v.Source) > len(set.Volumes[best].Source)) {
			best = i
		}
	}
	if best < 0 {
		t.Fatalf("no volume of set %s holds %s: %+v", set.ID, path, set.Volumes)
	}
	v := set.Volumes[best]
	return filepath.Join(v.Snapshot, strings.TrimPrefix(path, v.Source))
}

// shadowDirs lists what is left under a volume's .umbra-shadow directory.
func shadowDirs(t testing.TB, mount string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(mount, ".umbra-shadow"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestExitStatuses: an unknown command is a usage error (2); an interrupted
// run (SIGINT while a shadow set is being made) says so once and exits 130.
func TestExitStatuses(t *testing.T) {
	if res := umbraRun(t, t.TempDir(), nil, "frobnicate"); res.code != 2 || !strings.Contains(res.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q; want 2 naming it", res.code, res.stderr)
	}
	if res := umbraRun(t, t.TempDir(), nil); res.code != 0 || !strings.Contains(res.stdout, "Usage:") {
		t.Errorf("umbra alone: exit %d, want the help", res.code)
	}

	db := filepath.Join(t.TempDir(), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	cmd := umbraCmd(t, t.TempDir(), []string{"UMBRA_TEST_PAUSE_AT=freeze"}, "shadow", "create", "--writer", "sqlite:path="+db)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "paused at freeze") {
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for sc.Scan() {
		rest = append(rest, sc.Text())
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Errorf("interrupted: %v, want exit 130", err)
	}
	out := strings.Join(rest, "\n")
	if strings.Count(out, "interrupted") != 1 || strings.Contains(out, "context canceled") {
		t.Errorf("interrupted: said %q; want \"interrupted\" once and no \"context canceled\"", out)
	}
}

// movedAside finds what a restore says it moved aside.
var movedAside = regexp.MustCompile(`The data from before the restore of (\S+) is kept at (\S+); remove it`)

// cleanAside removes, when the test ends, what an in-place restore moved
// aside (under /.umbra-before-restore-TIME for the tests' temporary
// directories).
func cleanAside(t testing.TB, out string) {
	for _, m := range movedAside.FindAllStringSubmatch(out, -1) {
		writertest.CleanAside(t, writer.Moved{From: m[1], To: m[2]})
	}
}
