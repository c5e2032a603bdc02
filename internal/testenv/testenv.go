// Package testenv gives tests the real components they need (loop-device
// filesystems, load processes) and skips, with the reason, when it cannot.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// NeedRoot skips the test unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices, mounts and fsfreeze; run scripts/test.sh as root")
	}
}

// NeedCommand skips the test unless name is on PATH.
func NeedCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("needs %s on PATH; scripts/test.sh installs it", name)
	}
}
