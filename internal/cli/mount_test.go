package cli

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/mount"
	"github.com/umbra-backup/umbra/internal/testenv"
)

// startMount starts umbra mount and returns once it says it is mounted.
func startMount(t *testing.T, repo testRepo, mp string) *exec.Cmd {
	t.Helper()
	cmd := umbraCmd(t, t.TempDir(), repo.environ(), "mount", mp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if ok, _ := mount.Mounted(mp); ok {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		if !strings.HasPrefix(l, "Mounted ") {
			t.Fatalf("umbra mount: %q\n%s", l, errb.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("umbra mount did not mount within a minute\n%s", errb.String())
	}
	return cmd
}

// waitExit waits for a process to end and returns its exit status.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(time.Minute):
		t.Fatal("umbra mount did not end within a minute")
		return -1
	}
}

// TestMount: every backup of the generated tree reads back through the
// mount as it was backed up (contents, modes, owners, times, links, holes,
// extended attributes), from a local repository and from S3; ids/, hosts/
// and latest agree with umbra backups; --unmount and Ctrl-C end the mount
// and umbra exits 0; a mount killed with -9 is cleaned up by the next.
func TestMount(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse: FUSE is needed")
	}
	forEachBackend(t, testMount)
}

func testMount(t *testing.T, repo testRepo) {
	gen := filepath.Join(t.TempDir(), "gen")
	testenv.MakeTree(t, gen)
	first := backupOf(t, repo, gen)
	old := t.TempDir()
	mustRepo(t, repo, "restore", first.ID[:8], "--target", old)
	// Changes between the two backups: a file grown, one removed, one new.
	f, err := os.OpenFile(filepath.Join(gen, "random.bin"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(testenv.Random(t, 100_000))
	f.Close()
	if err := os.Remove(filepath.Join(gen, "fifo")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "new.txt"), []byte("new\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	second := backupOf(t, repo, gen)

	mp := t.TempDir()
	m := startMount(t, repo, mp)
	// The mount counts a file's space by whole chunks: holes within a
	// chunk that holds data show as data (du), unlike a restore's.
	loose := testenv.CompareOptions{AnyAllocation: true}
	testenv.CompareTreesWith(t, gen, filepath.Join(mp, "ids", second.ID[:8], gen), loose)
	testenv.CompareTreesWith(t, filepath.Join(old, gen), filepath.Join(mp, "ids", first.ID[:8], gen), loose)
	ids, err := os.ReadDir(filepath.Join(mp, "ids"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ids {
		names = append(names, e.Name())
	}
	want := []string{first.ID[:8], second.ID[:8]}
	slices.Sort(want)
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Errorf("ids/: %v; want %v", names, want)
	}
	if l, err := os.Readlink(filepath.Join(mp, "latest")); err != nil || l != "ids/"+second.ID[:8] {
		t.Errorf("latest -> %q (%v); want ids/%s", l, err, second.ID[:8])
	}
	host, _ := os.Hostname()
	times, err := os.ReadDir(filepath.Join(mp, "hosts", host))
	if err != nil || len(times) != 2 {
		t.Errorf("hosts/%s: %v (%v); want the two backups", host, times, err)
	}
	if _, err := os.Stat(filepath.Join(mp, "hosts", host, times[len(times)-1].Name(), gen, "new.txt")); err != nil {
		t.Errorf("the newest backup by time: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mp, "ids", second.ID[:8], gen, "new.txt"), []byte("x"), 0o644); err == nil {
		t.Error("a write through the mount succeeded")
	}
	if res := umbraRepo(t, repo, "mount", "--unmount", mp); res.code != 0 {
		t.Fatalf("mount --unmount: exit %d: %s", res.code, res.stderr)
	}
	if code := waitExit(t, m); code != 0 {
		t.Errorf("umbra mount after --unmount: exit %d", code)
	}
	if ok, _ := mount.Mounted(mp); ok {
		t.Error("still mounted after --unmount")
	}

	m = startMount(t, repo, mp)
	_ = m.Process.Signal(os.Interrupt)
	if code := waitExit(t, m); code != 0 {
		t.Errorf("umbra mount after Ctrl-C: exit %d", code)
	}
	if ok, _ := mount.Mounted(mp); ok {
		t.Error("still mounted after Ctrl-C")
	}

	m = startMount(t, repo, mp)
	_ = m.Process.Kill()
	_ = m.Wait()
	if ok, _ := mount.Mounted(mp); !ok {
		t.Fatal("a mount killed with -9 is gone at once: the next one has nothing to clean up, the test proves nothing")
	}
	m = startMount(t, repo, mp)
	if b, err := os.ReadFile(filepath.Join(mp, "latest", gen, "new.txt")); err != nil || string(b) != "new\n" {
		t.Errorf("read through the mount that replaced a killed one: %q, %v", b, err)
	}
	if res := umbraRepo(t, repo, "mount", "--unmount", mp); res.code != 0 {
		t.Fatalf("mount --unmount: exit %d: %s", res.code, res.stderr)
	}
	waitExit(t, m)
}
