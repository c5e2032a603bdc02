package fsfreeze

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

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

func TestFreezeBlocksWritesUntilThaw(t *testing.T) {
	fs := testenv.Ext4(t)
	if err := Freeze(fs.Mount); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Thaw(fs.Mount) })
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(filepath.Join(fs.Mount, "f"), []byte("x"), 0o644) }()
	select {
	case err := <-done:
		t.Fatalf("write on a frozen filesystem returned (%v); want it blocked", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := Thaw(fs.Mount); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("write after thaw: %v", err)
	}
	if err := Thaw(fs.Mount); err != nil {
		t.Errorf("second thaw: got %v, want nil", err)
	}
}

func TestGuardThawsWhenParentGoes(t *testing.T) {
	fs := testenv.Ext4(t)
	in, parent := io.Pipe()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- RunGuard(in, &out, time.Minute, []string{fs.Mount}) }()
	if err := Freeze(fs.Mount); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Thaw(fs.Mount) })
	parent.Close() // the parent dies: EOF
	if err := <-done; err != nil {
		t.Fatalf("guard: %v", err)
	}
	if !writable(t, fs.Mount, 2*time.Second) {
		t.Fatal("filesystem still frozen after the guard saw its parent go")
	}
	if !strings.HasPrefix(out.String(), msgReady) {
		t.Errorf("guard said %q, want %q first", out.String(), msgReady)
	}
}

func TestGuardThawsAtLimit(t *testing.T) {
	fs := testenv.Ext4(t)
	in, parent := io.Pipe()
	defer parent.Close()
	done := make(chan error, 1)
	go func() { done <- RunGuard(in, io.Discard, 300*time.Millisecond, []string{fs.Mount}) }()
	if err := Freeze(fs.Mount); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Thaw(fs.Mount) })
	if err := <-done; err != nil {
		t.Fatalf("guard: %v", err)
	}
	if !writable(t, fs.Mount, 2*time.Second) {
		t.Fatal("filesystem still frozen after the guard's limit")
	}
}

func TestGuardReleasedLeavesMountsAlone(t *testing.T) {
	in, parent := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- RunGuard(in, io.Discard, time.Minute, []string{"/nonexistent-mount"}) }()
	if _, err := io.WriteString(parent, msgReleased+"\n"); err != nil {
		t.Fatal(err)
	}
	// Thawing the nonexistent mount would fail: nil proves nothing was thawed.
	if err := <-done; err != nil {
		t.Fatalf("released guard: got %v, want nil", err)
	}
}

// The full protocol with a real guard process is exercised through the CLI
// (cmd/umbra), whose binary is the guard; here the process side is covered by
// a guard that cannot start.
func TestGuardedFreezeNeedsCommand(t *testing.T) {
	if _, err := (Guarded{}).Freeze(context.Background(), []string{"/"}, time.Second); err == nil {
		t.Fatal("Freeze without a guard command: got nil error")
	}
}
