package fsfreeze

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

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
