package local

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestShare: after Share with a group and TypeWAL, an account in that group
// (postgres, as archive_command runs) reads the config and every key, the
// ones saved before and after, by this Backend or one opened later, and
// writes into wal/, but writes nowhere else.
func TestShare(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a command as another user")
	}
	uid, gid := testenv.SystemUser(t, "postgres")
	be := create(t)
	testenv.Traversable(t, be.dir)
	ctx := context.Background()
	save := func(b *Backend, h backend.Handle) {
		t.Helper()
		if err := b.Save(ctx, h, 4, bytes.NewReader([]byte("data"))); err != nil {
			t.Fatal(err)
		}
	}
	save(be, backend.Handle{Type: backend.TypeConfig, Name: "config"})
	save(be, backend.Handle{Type: backend.TypeKey, Name: "before"})
	if err := Share(be.dir, gid, backend.TypeWAL); err != nil {
		t.Fatal(err)
	}
	// be was opened before: what it saves is not shared yet.
	reopened, err := Open(be.dir)
	if err != nil {
		t.Fatal(err)
	}
	save(reopened, backend.Handle{Type: backend.TypeKey, Name: "after"})
	again, err := Open(be.dir)
	if err != nil {
		t.Fatal(err)
	}
	save(again, backend.Handle{Type: backend.TypeKey, Name: "reopened"})
	// A directory the repository makes later, as for a pack whose fan-out
	// Create did not make.
	if err := os.RemoveAll(filepath.Join(be.dir, "index")); err != nil {
		t.Fatal(err)
	}
	save(reopened, backend.Handle{Type: backend.TypeIndex, Name: "0123"})

	as := func(script string) (string, error) {
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = be.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := as("cat config keys/before keys/after keys/reopened index/0123 >/dev/null && echo wal >wal/000000010000000000000001"); err != nil {
		t.Errorf("the group cannot read the repository or write its wal/: %v: %s", err, out)
	}
	for _, dir := range []string{"keys", "index", "manifests", "."} {
		if _, err := as("touch " + dir + "/x"); err == nil {
			t.Errorf("the group can write into %s; only wal/ was shared for writing", dir)
		}
	}
	// Anyone else: nothing.
	cmd := exec.Command("cat", filepath.Join(be.dir, "keys", "after"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if cmd.Run() == nil {
		t.Error("an account outside the group reads a key")
	}
}
