package peerdial_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/peerdial"
	"github.com/umbra-backup/umbra/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestDial: the server sees the user Dial was asked for as its peer, not
// the caller, and the connection carries data both ways.
func TestDial(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to connect as another user")
	}
	uid, gid := testenv.SystemUser(t, "nobody")
	// The helper is this test binary, run as nobody.
	testenv.Traversable(t, os.Args[0])
	dir := t.TempDir()
	testenv.Traversable(t, filepath.Join(dir, "x"))
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	peer := make(chan *unix.Ucred, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			peer <- nil
			return
		}
		defer c.Close()
		raw, _ := c.(*net.UnixConn).SyscallConn()
		var cred *unix.Ucred
		_ = raw.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		peer <- cred
		_, _ = io.Copy(c, io.LimitReader(c, 5)) // echo
	}()
	conn, err := peerdial.Dial(context.Background(), sock, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hello" {
		t.Errorf("echo: %q, %v", got, err)
	}
	cred := <-peer
	if cred == nil || int(cred.Uid) != uid || int(cred.Gid) != gid {
		t.Errorf("the server saw peer %+v, want uid %d gid %d", cred, uid, gid)
	}
}

// TestDialRefused: a socket the user may not reach fails with the reason.
func TestDialRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to connect as another user")
	}
	uid, gid := testenv.SystemUser(t, "nobody")
	testenv.Traversable(t, os.Args[0])
	sock := filepath.Join(t.TempDir(), "s") // a private directory
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = peerdial.Dial(context.Background(), sock, uid, gid)
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Dial to a socket nobody may reach: %v, want permission denied", err)
	}
}
