// Package process records how an application's server process was started
// and starts it the same way again, for writers whose restore must bring a
// server back without a start command configured.
package process

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/umbra-backup/umbra/internal/writer"
)

// Recorded returns the command line and user of process pid, as the
// kernel has them, with the program's absolute path.
func Recorded(pid int) (*writer.Started, error) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	if len(cmdline) == 0 {
		return nil, fmt.Errorf("process %d has no command line", pid)
	}
	s, err := Owner(pid)
	if err != nil {
		return nil, err
	}
	s.Argv = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if !filepath.IsAbs(s.Argv[0]) {
		if s.Argv[0], err = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Owner returns a Started with only the user and group of process pid.
func Owner(pid int) (*writer.Started, error) {
	fi, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("no owner for process %d", pid)
	}
	return &writer.Started{UID: int(st.Uid), GID: int(st.Gid)}, nil
}

// Start starts s detached from umbra (a session of its own, so that it
// outlives the restore), as its user, its output appended to logFile.
func Start(s *writer.Started, logFile string) (*os.Process, error) {
	if s == nil || len(s.Argv) == 0 {
		return nil, fmt.Errorf("no command line recorded")
	}
	out, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if os.Geteuid() == 0 && s.UID != 0 {
		cmd.SysProcAttr.Credential = Credential(s.UID, s.GID)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait() // reap it if it exits while umbra runs
	return cmd.Process, nil
}

// Alive reports whether pid runs (a zombie has ended).
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	return end < 0 || end+2 >= len(s) || s[end+2] != 'Z'
}

// Credential is the user uid with group gid and, as a login would give
// them, the user's supplementary groups: Debian's PostgreSQL reads its TLS
// key through the ssl-cert group.
func Credential(uid, gid int) *syscall.Credential {
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return c
	}
	ids, err := u.GroupIds()
	if err != nil {
		return c
	}
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil {
			c.Groups = append(c.Groups, uint32(g))
		}
	}
	return c
}
