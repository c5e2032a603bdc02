package script

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

// logLine makes a command that appends the phase and the set's variables to
// the file in $LOG.
const logLine = `echo "$UMBRA_PHASE set=$UMBRA_SET_ID type=$UMBRA_BACKUP_TYPE writer=$UMBRA_WRITER paths=$UMBRA_PATHS inherited=$UMBRA_TEST_INHERITED" >> "$LOG"`

// logging returns options whose every command logs itself, and the log.
func logging(t *testing.T) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	t.Setenv("LOG", log)
	t.Setenv("UMBRA_TEST_INHERITED", "yes")
	opts := map[string]string{"paths": dir + "/data:" + dir + "/conf"}
	for k := range commandOptions {
		opts[k] = logLine
	}
	return opts, log
}

func newWriter(t *testing.T, opts map[string]string) *Writer {
	t.Helper()
	wr, err := New("script:test", opts)
	if err != nil {
		t.Fatalf("New(%v): %v", opts, err)
	}
	return wr
}

func readLog(t *testing.T, log string) []string {
	t.Helper()
	b, err := os.ReadFile(log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func TestConformance(t *testing.T) {
	// The freeze takes a lock directory that only thaw removes, so a second
	// writer can freeze only if Abort thawed the first.
	dir := t.TempDir()
	lock := filepath.Join(dir, "frozen")
	opts := map[string]string{
		"paths":    dir,
		"prepare":  "true",
		"freeze":   "mkdir " + lock,
		"thaw":     "rmdir " + lock,
		"post":     `test -n "$UMBRA_SET_ID"`,
		"complete": `test "$UMBRA_BACKUP_OK" = 1`,
		"timeout":  "10s",
	}
	writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, opts) })
	if _, err := os.Stat(lock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the suite: got %v for the lock directory, want it gone", err)
	}
}

func TestConformanceNoCommands(t *testing.T) {
	writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, nil) })
}

func TestPhasesAndEnvironment(t *testing.T) {
	opts, log := logging(t)
	opts["complete"] = `echo "complete ok=$UMBRA_BACKUP_OK snapshots=$UMBRA_SNAPSHOTS" | tr '\n' ' ' >> "$LOG"; echo >> "$LOG"`
	wr := newWriter(t, opts)
	ctx := t.Context()
	set := writer.Set{ID: "set-1", Type: writer.Full}

	for _, step := range []func() error{
		func() error { return wr.PrepareBackup(ctx, set) },
		func() error { return wr.PrepareSnapshot(ctx, set) },
		func() error { return wr.Freeze(ctx, set) },
		func() error { return wr.Thaw(ctx, set) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	set.Volumes = []writer.Volume{{Source: "/srv", Snapshot: "/snap/srv"}, {Source: "/var", Snapshot: "/snap/var"}}
	rep, err := wr.PostSnapshot(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(writer.Report{}, rep); diff != "" {
		t.Errorf("PostSnapshot report (-want +got):\n%s", diff)
	}
	for _, stored := range []bool{true, false} {
		c := writer.Completion{Set: set, Components: map[string]bool{"data": stored}}
		if err := wr.BackupComplete(ctx, c); err != nil {
			t.Fatal(err)
		}
	}

	tail := " set=set-1 type=full writer=script:test paths=" + opts["paths"] + " inherited=yes"
	want := []string{
		"prepare-snapshot" + tail,
		"freeze" + tail,
		"thaw" + tail,
		"post-snapshot" + tail,
		"complete ok=1 snapshots=/srv=/snap/srv /var=/snap/var ",
		"complete ok=0 snapshots=/srv=/snap/srv /var=/snap/var ",
	}
	if diff := cmp.Diff(want, readLog(t, log)); diff != "" {
		t.Errorf("command log (-want +got):\n%s", diff)
	}
}

func TestRestoreEnvironment(t *testing.T) {
	opts, log := logging(t)
	opts["pre-restore"] = `echo "$UMBRA_PHASE target=$UMBRA_RESTORE_TARGET more=$UMBRA_RESTORE_MORE components=$UMBRA_COMPONENTS" >> "$LOG"`
	opts["post-restore"] = opts["pre-restore"]
	wr := newWriter(t, opts)
	r := writer.Restore{Components: []string{"data"}, Target: "/restore", More: true}
	if err := wr.PreRestore(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	r.More = false
	if err := wr.PostRestore(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"pre-restore target=/restore more=1 components=data",
		"post-restore target=/restore more=0 components=data",
	}
	if diff := cmp.Diff(want, readLog(t, log)); diff != "" {
		t.Errorf("command log (-want +got):\n%s", diff)
	}
}

// TestHungFreeze: a freeze that hangs is killed at the time limit with its
// whole process group, the error names writer, phase and command, and
// Abort runs thaw.
func TestHungFreeze(t *testing.T) {
	opts, log := logging(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	delete(opts, "abort")
	opts["freeze"] = "sleep 60 & echo $! > " + pidFile + "; wait"
	opts["timeout"] = "300ms"
	wr := newWriter(t, opts)
	set := writer.Set{ID: "s", Type: writer.Full}

	start := time.Now()
	err := wr.Freeze(t.Context(), set)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Freeze returned after %v, want soon after its 300ms limit", d)
	}
	t.Logf("hung freeze: %v", err)
	if !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("hung Freeze: got %v, want an error wrapping ErrRetryable", err)
	}
	for _, want := range []string{`script writer "script:test"`, "freeze", "sleep 60", "did not finish within 300ms"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("hung Freeze: got %v, want an error with %q", err, want)
		}
	}
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatalf("bad pid file %q", b)
	}
	if gone := waitGone(pid, 5*time.Second); !gone {
		t.Errorf("background sleep %d of the killed freeze still runs, want its process group killed", pid)
	}

	if err := wr.Abort(t.Context(), set); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if got := readLog(t, log); len(got) != 1 || !strings.HasPrefix(got[0], "thaw set=s") {
		t.Errorf("after Abort of a hung freeze: got log %q, want one thaw line", got)
	}
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		// A killed child of the killed shell is reaped by init; until
		// then it shows as a zombie, which is as good as gone.
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func TestAbortStopsRunningFreeze(t *testing.T) {
	opts, log := logging(t)
	delete(opts, "abort")
	opts["freeze"] = "sleep 60"
	wr := newWriter(t, opts)
	set := writer.Set{ID: "s", Type: writer.Full}
	errc := make(chan error, 1)
	go func() { errc <- wr.Freeze(context.Background(), set) }()
	time.Sleep(100 * time.Millisecond)
	if err := wr.Abort(t.Context(), set); err != nil {
		t.Fatalf("Abort during Freeze: %v", err)
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "stopped") {
			t.Errorf("Freeze stopped by Abort: got %v, want an error saying it stopped", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Freeze still running 5s after Abort returned")
	}
	if got := readLog(t, log); len(got) != 1 || !strings.HasPrefix(got[0], "thaw ") {
		t.Errorf("after Abort: got log %q, want one thaw line", got)
	}
}

func TestExitStatus(t *testing.T) {
	opts, _ := logging(t)
	opts["freeze"] = `for i in $(seq 1 20); do echo "line $i"; done; echo oops >&2; exit 3`
	wr := newWriter(t, opts)
	err := wr.Freeze(t.Context(), writer.Set{ID: "s"})
	if err == nil {
		t.Fatal("Freeze of a failing command: got nil, want an error")
	}
	if errors.Is(err, writer.ErrRetryable) {
		t.Errorf("Freeze exiting 3: got a retryable error %v, want not retryable", err)
	}
	t.Logf("failing freeze: %v", err)
	msg := err.Error()
	for _, want := range []string{`script writer "script:test": freeze: command`, "exited with status 3", "line 20", "oops"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Freeze exiting 3: got %q, want it to contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "line 10\n") || strings.Contains(msg, "line 1\n") {
		t.Errorf("Freeze exiting 3: got %q, want only the last 10 lines of output", msg)
	}
}

func TestBackgroundProcessDoesNotHoldFreeze(t *testing.T) {
	opts, _ := logging(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The holder keeps stdout and stderr open; Freeze must not wait for it.
	opts["freeze"] = "sleep 60 & echo $! > " + pidFile
	opts["thaw"] = "kill $(cat " + pidFile + ")"
	wr := newWriter(t, opts)
	start := time.Now()
	if err := wr.Freeze(t.Context(), writer.Set{}); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Freeze took %v, want it to return when its command exits", d)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("background holder %d: %v, want it running until thaw", pid, err)
	}
	if err := wr.Thaw(t.Context(), writer.Set{}); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if !waitGone(pid, 5*time.Second) {
		t.Errorf("background holder %d still runs after thaw", pid)
	}
}

func TestAbort(t *testing.T) {
	tests := []struct {
		name  string
		abort bool                                   // set an abort command
		run   func(wr *Writer, set writer.Set) error // before Abort
		want  []string                               // log prefixes after two Aborts
	}{
		{
			name: "after prepare, no abort command: nothing",
			run:  func(wr *Writer, set writer.Set) error { return wr.PrepareSnapshot(context.Background(), set) },
			want: []string{"prepare-snapshot "},
		},
		{
			name: "after freeze, no abort command: thaw once",
			run:  func(wr *Writer, set writer.Set) error { return wr.Freeze(context.Background(), set) },
			want: []string{"freeze ", "thaw "},
		},
		{
			name: "after thaw, no abort command: nothing",
			run: func(wr *Writer, set writer.Set) error {
				return errors.Join(wr.Freeze(context.Background(), set), wr.Thaw(context.Background(), set))
			},
			want: []string{"freeze ", "thaw "},
		},
		{
			name:  "after freeze, abort command: abort once, frozen",
			abort: true,
			run:   func(wr *Writer, set writer.Set) error { return wr.Freeze(context.Background(), set) },
			want:  []string{"freeze ", "abort frozen=1"},
		},
		{
			name:  "after thaw, abort command: abort once, not frozen",
			abort: true,
			run: func(wr *Writer, set writer.Set) error {
				return errors.Join(wr.Freeze(context.Background(), set), wr.Thaw(context.Background(), set))
			},
			want: []string{"freeze ", "thaw ", "abort frozen=0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, log := logging(t)
			delete(opts, "abort")
			if tt.abort {
				opts["abort"] = `echo "abort frozen=$UMBRA_FROZEN" >> "$LOG"`
			}
			wr := newWriter(t, opts)
			set := writer.Set{ID: "s", Type: writer.Full}
			if err := tt.run(wr, set); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := wr.Abort(t.Context(), set); err != nil {
					t.Fatalf("Abort: %v", err)
				}
			}
			got := readLog(t, log)
			if len(got) != len(tt.want) {
				t.Fatalf("got log %q, want lines starting %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("log line %d: got %q, want it to start with %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestAbortAfterFailedAbortRetries(t *testing.T) {
	dir := t.TempDir()
	flagFile := filepath.Join(dir, "fail")
	if err := os.WriteFile(flagFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wr := newWriter(t, map[string]string{
		"freeze": "true",
		"thaw":   "test ! -e " + flagFile,
	})
	set := writer.Set{ID: "s"}
	if err := wr.Freeze(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	err := wr.Abort(t.Context(), set)
	if err == nil || !strings.Contains(err.Error(), "abort (thaw command)") {
		t.Fatalf("Abort with a failing thaw: got %v, want an error naming abort (thaw command)", err)
	}
	if err := os.Remove(flagFile); err != nil {
		t.Fatal(err)
	}
	if err := wr.Abort(t.Context(), set); err != nil {
		t.Errorf("second Abort once thaw works: got %v, want nil", err)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name      string
		opts      map[string]string
		wantNeeds writer.Need
		wantPaths []string
		wantErr   string
	}{
		{name: "no options", opts: nil, wantNeeds: writer.NeedAtomic},
		{name: "freeze means quiesced", opts: map[string]string{"freeze": "x", "paths": "/a:/b/"}, wantNeeds: writer.NeedQuiesced, wantPaths: []string{"/a", "/b"}},
		{name: "live", opts: map[string]string{"needs": "live", "paths": "/a::"}, wantNeeds: writer.NeedLive, wantPaths: []string{"/a"}},
		{name: "unknown", opts: map[string]string{"frezee": "x"}, wantErr: `unknown option "frezee"; valid options: abort, complete, freeze, needs, paths, post, post-restore, pre-restore, prepare, thaw, timeout`},
		{name: "relative path", opts: map[string]string{"paths": "/a:data"}, wantErr: `paths: "data" is not an absolute path`},
		{name: "bad needs", opts: map[string]string{"needs": "frozen"}, wantErr: `needs="frozen"; want atomic, quiesced or live`},
		{name: "quiesced without freeze", opts: map[string]string{"needs": "quiesced"}, wantErr: "needs=quiesced without a freeze command"},
		{name: "bad timeout", opts: map[string]string{"timeout": "10"}, wantErr: `timeout="10"; want a positive Go duration`},
		{name: "zero timeout", opts: map[string]string{"timeout": "0s"}, wantErr: `timeout="0s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("script:x", tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%v): got %v, want an error with %q", tt.opts, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%v): %v", tt.opts, err)
			}
			md, err := wr.Identify(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.wantPaths) == 0 {
				if len(md.Components) != 0 {
					t.Errorf("New(%v): got components %+v, want none", tt.opts, md.Components)
				}
				return
			}
			if len(md.Components) != 1 {
				t.Fatalf("New(%v): got %d components, want 1", tt.opts, len(md.Components))
			}
			c := md.Components[0]
			if c.Needs != tt.wantNeeds || c.Name != "data" {
				t.Errorf("New(%v): got component %q needs %q, want data needs %q", tt.opts, c.Name, c.Needs, tt.wantNeeds)
			}
			if diff := cmp.Diff(tt.wantPaths, c.Paths); diff != "" {
				t.Errorf("New(%v): paths (-want +got):\n%s", tt.opts, diff)
			}
		})
	}
}

func TestThawGuard(t *testing.T) {
	set := writer.Set{ID: "s1", Type: writer.Full}
	for _, tt := range []struct {
		name  string
		opts  map[string]string
		ok    bool
		cmd   string
		phase string
	}{
		{"no freeze", map[string]string{"thaw": "t"}, false, "", ""},
		{"thaw", map[string]string{"freeze": "f", "thaw": "t"}, true, "t", "thaw"},
		{"abort wins", map[string]string{"freeze": "f", "thaw": "t", "abort": "a"}, true, "a", "abort"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("script:x", tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			cmd, ok := wr.ThawGuard(set)
			if ok != tt.ok {
				t.Fatalf("ThawGuard ok %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if got := cmd.Argv[len(cmd.Argv)-1]; got != tt.cmd {
				t.Errorf("command %q, want %q", got, tt.cmd)
			}
			for _, want := range []string{"UMBRA_PHASE=" + tt.phase, "UMBRA_GUARD=1", "UMBRA_SET_ID=s1"} {
				if !slices.Contains(cmd.Env, want) {
					t.Errorf("env %v lacks %s", cmd.Env, want)
				}
			}
		})
	}
}
