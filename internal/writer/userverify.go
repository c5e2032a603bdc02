package writer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// CommonOptions are taken by every writer: the operator's own check of a
// verification sandbox (UserVerify).
var CommonOptions = []string{"verify", "verify_timeout"}

// defaultVerifyLimit bounds a UserVerify command unless verify_timeout says.
const defaultVerifyLimit = 5 * time.Minute

// UserVerify is the operator's check of a sandbox, run by umbra verify
// while the application is up in it: the writer's verify= shell command,
// within verify_timeout (5m). It sees UMBRA_VERIFY_DIR (where the backup
// was restored) and the writer's variables for reaching the sandbox
// (PGHOST and PGPORT, MYSQL_UNIX_PORT, UMBRA_VERIFY_SOCKET,
// UMBRA_VERIFY_DB); it passes when it exits 0.
type UserVerify struct {
	Command string
	Limit   time.Duration
}

// ParseUserVerify reads verify= and verify_timeout= from a writer's options.
func ParseUserVerify(kind, name string, opts map[string]string) (UserVerify, error) {
	u := UserVerify{Command: opts["verify"], Limit: defaultVerifyLimit}
	if v := opts["verify_timeout"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return u, fmt.Errorf("%s writer %q: verify_timeout=%s: want a duration such as 30s or 10m", kind, name, v)
		}
		u.Limit = d
	}
	return u, nil
}

// Run runs the command, if there is one, with env added to umbra's own
// environment, as uid/gid when uid >= 0; it reports whether it ran.
func (u UserVerify) Run(ctx context.Context, env []string, uid, gid int) (Check, bool) {
	if u.Command == "" {
		return Check{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, u.Limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", u.Command)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if uid >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// A time-out ends the command's whole process group.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	out, err := cmd.CombinedOutput()
	c := Check{Name: "verify: " + u.Command, OK: err == nil, Duration: time.Since(start)}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer within %v (verify_timeout)", u.Limit)
		}
		c.Detail = strings.TrimSpace(fmt.Sprintf("%v\n%s", err, LastLines(string(out), 15)))
	}
	return c, true
}

// LastLines is the last n lines of s: the end of a command's output or a
// log, for an error message.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
