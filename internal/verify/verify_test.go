package verify

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCleanRemovesWhatAKilledVerificationLeft: a sandbox whose verification
// is gone is removed, and a process still running in it (a server the
// verification started) is killed; a sandbox of a verification still
// running (this process) stays.
func TestCleanRemovesWhatAKilledVerificationLeft(t *testing.T) {
	scratch := t.TempDir()
	// A process id that is not running: one that has exited.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(scratch, fmt.Sprintf("%s%d-x", ScratchPrefix, gone.Process.Pid))
	live := filepath.Join(scratch, fmt.Sprintf("%s%d-y", ScratchPrefix, os.Getpid()))
	for _, d := range []string{dead, live} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	server := exec.Command("sleep", "600")
	server.Dir = dead
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()
	t.Cleanup(func() { _ = server.Process.Kill() })

	if err := Clean(scratch); err != nil {
		t.Fatal(err)
	}
	// Clean returns once the process is gone; its Wait above reports it.
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("a process running in the dead verification's sandbox still runs")
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead verification's sandbox is still there (%v)", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the running verification's sandbox was removed: %v", err)
	}
}
