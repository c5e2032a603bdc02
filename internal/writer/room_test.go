package writer_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// TestCheckRoom: a copy that would leave less than a twentieth of a 512 MiB
// filesystem free is refused with the fix; a small one is not.
func TestCheckRoom(t *testing.T) {
	fs := testenv.Ext4(t)
	src := t.TempDir()
	big := filepath.Join(src, "big.db")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(500 << 20); err != nil { // sparse: costs nothing here
		t.Fatal(err)
	}
	f.Close()
	err = writer.CheckRoom(fs.Mount, src)
	if err == nil || !strings.Contains(err.Error(), "needs 500 MiB") || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("a 500 MiB copy into 512 MiB: got %v, want a refusal with the size and the fix", err)
	}
	if err := os.Truncate(big, 10<<20); err != nil {
		t.Fatal(err)
	}
	if err := writer.CheckRoom(fs.Mount, src); err != nil {
		t.Errorf("a 10 MiB copy into 512 MiB: %v", err)
	}
}
