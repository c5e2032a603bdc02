// Package process records how an application's server process was started
// and starts it the same way again, for writers whose restore must bring a
// server back without a start command configured.
package process

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// Owner returns a Started with only the user and group process pid runs
// as (its real ids, from /proc/PID/status: the owner of /proc/PID is root
// for a process that changed its ids after exec). It refuses a process
// that runs under a systemd service other than umbra's own: that manager
// would start it again behind umbra's back, so a restore must go through
// it (service=).
func Owner(pid int) (*writer.Started, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	s := &writer.Started{UID: -1, GID: -1}
	for line := range strings.Lines(string(b)) {
		name, rest, _ := strings.Cut(line, ":")
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil {
			continue
		}
		switch name {
		case "Uid":
			s.UID = n
		case "Gid":
			s.GID = n
		}
	}
	if s.UID < 0 || s.GID < 0 {
		return nil, fmt.Errorf("no user in /proc/%d/status", pid)
	}
	if unit := serviceUnit(pid); unit != "" && unit != serviceUnit(os.Getpid()) {
		return nil, fmt.Errorf("process %d runs under %s: restore it with service=%s", pid, unit, strings.TrimSuffix(unit, ".service"))
	}
	return s, nil
}

// serviceUnit names the systemd service whose cgroup process pid is in,
// or "".
func serviceUnit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		for _, part := range strings.Split(strings.TrimSpace(line[strings.LastIndex(line, ":")+1:]), "/") {
			if strings.HasSuffix(part, ".service") {
				return part
			}
		}
	}
	return ""
}

// Named reports whether process pid runs one of the programs (by the base
// name of its executable or of its argv[0]): a pid file can name another
// process, and its command line must not be what a restore runs.
func Named(pid int, programs ...string) bool {
	var names []string
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		names = append(names, filepath.Base(exe))
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		// Redis rewrites its title: "redis-server 127.0.0.1:6379".
		arg0, _, _ := strings.Cut(string(b), "\x00")
		if f := strings.Fields(arg0); len(f) > 0 {
			names = append(names, filepath.Base(f[0]))
		}
	}
	for _, n := range names {
		for _, p := range programs {
			if n == p {
				return true
			}
		}
	}
	return false
}

// Start starts s detached from umbra (a session of its own, so that it
// outlives the restore), as its user, its output appended to logFile.
func Start(s *writer.Started, logFile string) (*os.Process, error) {
	if s == nil || len(s.Argv) == 0 {
		return nil, fmt.Errorf("no command line recorded")
	}
	out, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	cmd.Dir = "/"
	// Not umbra's environment: it holds the repository's password and
	// keys, which the server would keep for its lifetime.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
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

// KillInside kills every process whose working directory lies in dir, and
// waits (a few seconds at most) until they are gone.
func KillInside(dir string) {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd")); err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !slices.ContainsFunc(pids, Alive) {
			return
		}
	}
}

// Pipe runs from with its output as to's input (after head, if any) and
// waits for both: a dump piped into a load. Each error carries what that
// program said on stderr.
func Pipe(from, to *exec.Cmd, head string) (fromErr, toErr error) {
	out, err := from.StdoutPipe()
	if err != nil {
		return err, nil
	}
	var fromSaid, toSaid strings.Builder
	from.Stderr, to.Stderr, to.Stdout = &fromSaid, &toSaid, io.Discard
	to.Stdin = io.MultiReader(strings.NewReader(head), out)
	if err := from.Start(); err != nil {
		return err, nil
	}
	toErr = to.Run()
	if toErr != nil {
		// The reader is gone: a dump blocked on a full pipe must not
		// hold the wait.
		_ = from.Process.Kill()
	}
	fromErr = from.Wait()
	if fromErr != nil {
		fromErr = fmt.Errorf("%w: %s", fromErr, strings.TrimSpace(fromSaid.String()))
	}
	if toErr != nil {
		toErr = fmt.Errorf("%w: %s", toErr, strings.TrimSpace(toSaid.String()))
	}
	return fromErr, toErr
}
