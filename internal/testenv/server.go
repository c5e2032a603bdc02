package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Server is a server process started for one test (PostgreSQL, MariaDB,
// Redis). t.Cleanup stops it, whether the test passed or not, and logs its
// output when the test failed.
type Server struct {
	Name string
	// StopSignal is what Stop sends first (SIGTERM unless set); PostgreSQL
	// takes SIGINT as its fast shutdown, where SIGTERM waits for clients.
	StopSignal syscall.Signal
	cmd        *exec.Cmd
	out        *syncBuffer

	exited  chan struct{} // closed once the process has been waited for
	waitErr error         // set before exited is closed
}

// serverStopLimit is how long a server may take to shut down on SIGTERM
// before it is killed.
const serverStopLimit = 30 * time.Second

// StartServer starts cmd (its Stdout and Stderr are taken over) and waits
// until ready returns nil, polling every 50 ms for at most limit. It fails
// the test with the server's output if the server exits first or is not
// ready in time.
func StartServer(t testing.TB, name string, cmd *exec.Cmd, limit time.Duration, ready func() error) *Server {
	t.Helper()
	s := &Server{Name: name, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = s.out
	cmd.Stderr = s.out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own process group, so that a terminal's ^C reaches the test
	// binary only and the server is stopped in order by Cleanup; Pdeathsig
	// stops it if the test binary dies.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// A child the server left behind (a PostgreSQL backend stuck in its
	// signal handler, seen once) keeps the output pipe open: Wait must
	// not wait for it.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.Stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, s.out)
		}
	})
	deadline := time.Now().Add(limit)
	for {
		err := ready()
		if err == nil {
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", name, s.waitErr, s.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %v: %v\n%s", name, limit, err, s.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the server's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Output is what the server has printed so far.
func (s *Server) Output() string { return s.out.String() }

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// Stop sends StopSignal (SIGTERM) and waits for the server to exit,
// killing it after 30 s. It is safe to call more than once.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.Exited() {
		return
	}
	sig := s.StopSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
		return
	case <-time.After(serverStopLimit):
	}
	t.Logf("%s did not stop within %v of SIGTERM; killing it", s.Name, serverStopLimit)
	s.Kill()
}

// Kill ends the server and every process of its group with SIGKILL (a
// crash) and waits for it.
func (s *Server) Kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// SystemUser returns the uid and gid of a system account such as
// "postgres", skipping the test if it does not exist.
func SystemUser(t testing.TB, name string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("needs the %s system user (created by its Debian package; scripts/test.sh installs it): %v", name, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// AsUser makes cmd run as uid:gid.
func AsUser(cmd *exec.Cmd, uid, gid int) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// Chown gives path and everything below it to uid:gid.
func Chown(t testing.TB, path string, uid, gid int) {
	t.Helper()
	out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), path).CombinedOutput()
	if err != nil {
		t.Fatalf("chown %s: %v\n%s", path, err, out)
	}
}

// Traversable lets other users (a server running as its own system user)
// reach dir: it adds search permission to dir's ancestors, which t.TempDir
// makes private.
func Traversable(t testing.TB, dir string) {
	t.Helper()
	for d := filepath.Dir(dir); d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// tempDirOn makes a fresh directory under parent (a test's loop mount),
// removed by t.Cleanup.
func tempDirOn(t testing.TB, parent, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
