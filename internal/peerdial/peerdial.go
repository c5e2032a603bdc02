// Package peerdial connects to a Unix socket as another local user, so that
// a server checking its peer's credentials sees that user: PostgreSQL's
// "peer" authentication, which Debian sets up for the postgres role. umbra
// runs as root; pgBackRest and Barman run as postgres instead. A child
// process, this same executable running as the user, connects and hands the
// connected socket back over a socket pair (SCM_RIGHTS); the kernel keeps
// the credentials of the process that connected.
package peerdial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// helperEnv names the socket the helper is to connect to.
const helperEnv = "UMBRA_PEERDIAL_SOCKET"

// Main runs the helper and exits if this process was started as one;
// otherwise it returns at once. Every main that may Dial calls it first
// (and every TestMain: a test binary dials as itself).
func Main() {
	path, ok := os.LookupEnv(helperEnv)
	if !ok {
		return
	}
	if err := helper(path); err != nil {
		fmt.Fprintf(os.Stderr, "connect to %s as uid %d: %v\n", path, os.Getuid(), err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helper connects to path and sends the socket over fd 3.
func helper(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return err
	}
	return unix.Sendmsg(3, []byte{0}, unix.UnixRights(fd), nil, 0)
}

// Dial connects to the Unix socket at path as the user uid, group gid. The
// executable must be one that calls Main and that the user may run.
func Dial(ctx context.Context, path string, uid, gid int) (net.Conn, error) {
	conn, err := dial(ctx, path, uid, gid)
	if err != nil {
		return nil, fmt.Errorf("connect to %s as uid %d: %w", path, uid, err)
	}
	return conn, nil
}

func dial(ctx context.Context, path string, uid, gid int) (net.Conn, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "peerdial")
	theirs := os.NewFile(uintptr(pair[1]), "peerdial-helper")
	defer ours.Close()
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("%s: %w", self, err)
	}
	// The helper has exited: its message is in the socket buffer, or it
	// never sent one.
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("no socket from the helper: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("no socket from the helper (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("no socket from the helper (%v)", err)
	}
	f := os.NewFile(uintptr(fds[0]), path)
	defer f.Close()
	return net.FileConn(f)
}
