package redis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Verifier = (*Writer)(nil)

// checkLimit bounds each check program and the sandbox's load.
const checkLimit = 10 * time.Minute

// rdbKeys finds the key count in redis-check-rdb's report.
var rdbKeys = regexp.MustCompile(`(\d+) keys read`)

// Verify checks the files restored under r.Target with redis-check-rdb and
// redis-check-aof, then loads them into a sandbox Redis (no TCP port, a
// socket in r.Target, no saves, no replication, as the files' owner) and
// compares the keys it loaded with the RDB's count and with the count
// recorded when the backup's save ended.
func (w *Writer) Verify(ctx context.Context, r writer.Restore) ([]writer.Check, error) {
	rdb, aofDir := componentFiles(r.Metadata, r.Target)
	server, err := serverProgram(r.Report.Started)
	if err != nil {
		return nil, err
	}
	var checks []writer.Check
	rdbCount := int64(-1)
	if _, err := os.Stat(rdb); err == nil {
		start := time.Now()
		out, err := runCheck(ctx, filepath.Join(filepath.Dir(server), "redis-check-rdb"), rdb)
		c := writer.Check{Name: "redis-check-rdb", OK: err == nil, Duration: time.Since(start)}
		if m := rdbKeys.FindStringSubmatch(out); m != nil {
			rdbCount, _ = strconv.ParseInt(m[1], 10, 64)
			c.Detail = m[0]
		}
		if err != nil {
			c.Detail = rel(r.Target, rdb) + ": " + writer.LastLines(out, 15)
		}
		checks = append(checks, c)
	}
	aofOn := false
	if manifest := aofManifest(aofDir); manifest != "" {
		aofOn = true
		start := time.Now()
		out, err := runCheck(ctx, filepath.Join(filepath.Dir(server), "redis-check-aof"), manifest)
		c := writer.Check{Name: "redis-check-aof", OK: err == nil, Duration: time.Since(start)}
		if err != nil {
			c.Detail = rel(r.Target, aofDir) + ": " + writer.LastLines(out, 15)
		}
		checks = append(checks, c)
	}
	if !allOK(checks) {
		return checks, nil
	}
	start := time.Now()
	var user writer.Check
	checked := false
	loaded, err := w.loadSandbox(ctx, server, rdb, aofDir, aofOn, func(sock string) {
		user, checked = w.userCheck.Run(ctx, []string{"UMBRA_VERIFY_DIR=" + r.Target, "UMBRA_VERIFY_SOCKET=" + sock}, -1, -1)
	})
	c := writer.Check{Name: "load", OK: err == nil, Duration: time.Since(start)}
	if err != nil {
		c.Detail = err.Error()
		return append(checks, c), ctx.Err()
	}
	recorded, _ := strconv.ParseInt(r.Report.Positions["keys"], 10, 64)
	c.Detail = fmt.Sprintf("%d keys loaded; %d when the backup's save ended", loaded, recorded)
	switch {
	case rdbCount >= 0 && !aofOn && loaded != rdbCount:
		c.OK, c.Detail = false, fmt.Sprintf("%d keys loaded, but the RDB file holds %d", loaded, rdbCount)
	case loaded == 0 && recorded > 0:
		c.OK = false
		c.Detail = fmt.Sprintf("no keys loaded; %d when the backup's save ended", recorded)
	}
	checks = append(checks, c)
	if checked {
		checks = append(checks, user)
	}
	return checks, nil
}

// componentFiles is where the backup's RDB file and AOF directory lie
// under target ("" for one it does not hold).
func componentFiles(md writer.Metadata, target string) (rdb, aofDir string) {
	for _, c := range md.Components {
		if len(c.Paths) == 0 {
			continue
		}
		switch c.Name {
		case componentRDB:
			rdb = filepath.Join(target, c.Paths[0])
		case componentAOF:
			aofDir = filepath.Join(target, c.Paths[0])
		}
	}
	return rdb, aofDir
}

// serverProgram is the redis-server to check with: the one the backup saw
// running, else the one on PATH.
func serverProgram(started *writer.Started) (string, error) {
	if started != nil && len(started.Argv) > 0 {
		if _, err := os.Stat(started.Argv[0]); err == nil {
			return started.Argv[0], nil
		}
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("no redis-server to verify with: install Redis (Debian's redis-server and redis-tools)")
	}
	return p, nil
}

// aofManifest is the manifest of the multi-part AOF in dir (Redis 7), or
// "" if there is none.
func aofManifest(dir string) string {
	if dir == "" {
		return ""
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.manifest"))
	if len(m) != 1 {
		return ""
	}
	return m[0]
}

// runCheck runs a check program (redis-check-rdb, redis-check-aof) on a
// file of the sandbox, within checkLimit.
func runCheck(ctx context.Context, program, file string) (string, error) {
	if _, err := os.Stat(program); err != nil {
		if p, lerr := exec.LookPath(filepath.Base(program)); lerr == nil {
			program = p
		} else {
			return "", fmt.Errorf("no %s: install Debian's redis-tools", filepath.Base(program))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, checkLimit)
	defer cancel()
	out, err := exec.CommandContext(ctx, program, file).CombinedOutput()
	return string(out), err
}

// loadSandbox starts Redis on the restored files, privately, waits until it
// has loaded them, counts the keys, and shuts it down.
// While it runs, up is called with its socket (the operator's check).
func (w *Writer) loadSandbox(ctx context.Context, server, rdb, aofDir string, aofOn bool, up func(sock string)) (int64, error) {
	dir := filepath.Dir(rdb)
	if aofOn {
		dir = filepath.Dir(aofDir)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, err
	}
	// A socket path must be short (108 bytes): a private directory of its
	// own, the server's user's.
	sockDir, err := os.MkdirTemp("", "umbra-verify-redis-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(sockDir)
	if err := os.Chown(sockDir, int(st.Uid), int(st.Gid)); err != nil {
		return 0, err
	}
	sock := filepath.Join(sockDir, "redis.sock")
	args := []string{"--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", dir,
		"--dbfilename", filepath.Base(rdb), "--save", "", "--appendonly", map[bool]string{true: "yes", false: "no"}[aofOn],
		"--daemonize", "no", "--protected-mode", "yes", "--logfile", ""}
	if aofOn {
		args = append(args, "--appenddirname", filepath.Base(aofDir))
	}
	cmd := exec.Command(server, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(int(st.Uid), int(st.Gid)), Setsid: true}
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", server, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	box := &Writer{name: w.name, network: "unix", addr: sock}
	ctx, cancel := context.WithTimeout(ctx, checkLimit)
	defer cancel()
	for {
		err := box.ready(ctx)
		if err == nil {
			break
		}
		select {
		case e := <-exited:
			exited <- e
			return 0, fmt.Errorf("the sandbox Redis exited while loading (%v): %s", e, writer.LastLines(log.String(), 15))
		case <-ctx.Done():
			return 0, fmt.Errorf("the sandbox Redis did not load the files within %s: %w", checkLimit, err)
		case <-time.After(pollEvery):
		}
	}
	c := box.client()
	defer c.Close()
	inf, err := info(ctx, c, "keyspace")
	if err != nil {
		return 0, err
	}
	up(sock)
	return keyCount(inf), nil
}

// rel names a restored file by its path in the backup, as the operator
// knows it, rather than by the sandbox it was checked in.
func rel(target, path string) string {
	if r, err := filepath.Rel(target, path); err == nil {
		return "/" + r
	}
	return path
}

func allOK(checks []writer.Check) bool {
	for _, c := range checks {
		if !c.OK {
			return false
		}
	}
	return true
}
