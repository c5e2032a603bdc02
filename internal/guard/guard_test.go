package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/fsfreeze"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// startRun runs the guard body on pipes, as the guard process would.
func startRun(t *testing.T, plan Plan) (parent io.WriteCloser, out *bytes.Buffer, log *bytes.Buffer, done chan error) {
	t.Helper()
	log = &bytes.Buffer{}
	parent, out, _, done = startRunLog(t, log, plan)
	return parent, out, log, done
}

func startRunLog(t *testing.T, log io.Writer, plan Plan) (parent io.WriteCloser, out *bytes.Buffer, _ io.Writer, done chan error) {
	t.Helper()
	in, parent := io.Pipe()
	out = &bytes.Buffer{}
	done = make(chan error, 1)
	go func() { done <- Run(t.Context(), in, out, log) }()
	line, _ := json.Marshal(plan)
	if _, err := parent.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
	return parent, out, log, done
}

// writable reports whether a write to dir completes within d.
func writable(t *testing.T, dir string, d time.Duration) bool {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o644) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write %s: %v", dir, err)
		}
		return true
	case <-time.After(d):
		return false
	}
}

func TestThawsWhenParentGoes(t *testing.T) {
	fs := testenv.Ext4(t)
	flag := filepath.Join(t.TempDir(), "frozen")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	parent, out, log, done := startRun(t, Plan{SetID: "s", Limit: time.Minute, Mounts: []string{fs.Mount},
		Commands: []GuardedCommand{{Writer: "script:app", Command: writer.Command{Argv: []string{"sh", "-c", `rm "$FLAG"`}, Env: []string{"FLAG=" + flag}}}}})
	if err := fsfreeze.Freeze(fs.Mount); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fsfreeze.Thaw(fs.Mount) })
	parent.Close() // the parent dies: EOF
	if err := <-done; err != nil {
		t.Fatalf("guard: %v", err)
	}
	if !writable(t, fs.Mount, 2*time.Second) {
		t.Fatal("filesystem still frozen after the guard saw its parent go")
	}
	if _, err := os.Stat(flag); !os.IsNotExist(err) {
		t.Errorf("the writer's thaw command did not run (flag file: %v)", err)
	}
	if !strings.HasPrefix(out.String(), msgReady) {
		t.Errorf("guard said %q, want %q first", out.String(), msgReady)
	}
	for _, want := range []string{"umbra exited", "thaw filesystem " + fs.Mount + ": ok", "thaw writer script:app: ok"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("guard log does not say %q:\n%s", want, log)
		}
	}
}

func TestThawsAtLimit(t *testing.T) {
	fs := testenv.Ext4(t)
	parent, _, log, done := startRun(t, Plan{Limit: 300 * time.Millisecond, Mounts: []string{fs.Mount}})
	defer parent.Close()
	if err := fsfreeze.Freeze(fs.Mount); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fsfreeze.Thaw(fs.Mount) })
	if err := <-done; err != nil {
		t.Fatalf("guard: %v", err)
	}
	if !writable(t, fs.Mount, 2*time.Second) {
		t.Fatal("filesystem still frozen after the guard's limit")
	}
	if !strings.Contains(log.String(), "freeze limit") {
		t.Errorf("guard log does not give the reason:\n%s", log)
	}
}

func TestReleasedDoesNothing(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "ran")
	parent, _, log, done := startRun(t, Plan{Limit: time.Minute,
		Commands: []GuardedCommand{{Writer: "w", Command: writer.Command{Argv: []string{"touch", flag}}}}})
	if _, err := io.WriteString(parent, msgReleased+"\n"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("released guard: %v", err)
	}
	if _, err := os.Stat(flag); !os.IsNotExist(err) || log.Len() != 0 {
		t.Errorf("released guard acted: flag %v, log %q", err, log)
	}
}

func TestFailedCommandReported(t *testing.T) {
	parent, _, log, done := startRun(t, Plan{Limit: time.Minute,
		Commands: []GuardedCommand{{Writer: "script:x", Command: writer.Command{Argv: []string{"sh", "-c", "echo nope >&2; exit 3"}}}}})
	parent.Close()
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "script:x") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("got %v, want the failed command named with its output", err)
	}
	if !strings.Contains(log.String(), "thaw writer script:x: failed") {
		t.Errorf("log: %s", log)
	}
}

func TestStartNeedsCommand(t *testing.T) {
	if _, err := Start(t.Context(), nil, Plan{}); err == nil {
		t.Fatal("Start without a command: got nil error")
	}
}

func TestSignalReleases(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "ran")
	in, parent := io.Pipe()
	defer parent.Close()
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, in, io.Discard, io.Discard) }()
	line, _ := json.Marshal(Plan{Limit: time.Minute,
		Commands: []GuardedCommand{{Writer: "w", Command: writer.Command{Argv: []string{"touch", flag}}}}})
	if _, err := parent.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
	stop() // SIGTERM to the guard
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(flag); err != nil {
		t.Errorf("a stopped guard did not release: %v", err)
	}
}
