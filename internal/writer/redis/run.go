package redis

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Runner = (*Writer)(nil)

// Start brings a Redis up on the files the backup holds, where they lie
// under r.Target (umbra run), or in r.DataDir: with none of production's
// configuration, appending to the AOF if the backup has one and saving
// nothing on its own; on r.Port at r.Listen (no TCP without Listen) and a
// socket in r.Socket, with the writer's password (protected mode keeps it
// to loopback without one), as the files' owner. Stop saves (SHUTDOWN
// SAVE) so that its data can be moved.
func (w *Writer) Start(ctx context.Context, r writer.Restore) (*writer.Running, error) {
	rdb, aofDir := componentFiles(r.Metadata, r.Target)
	if rdb == "" && aofDir == "" {
		return nil, fmt.Errorf("redis writer %q: the backup's metadata names no RDB or AOF file", w.name)
	}
	dir := filepath.Dir(rdb)
	if rdb == "" {
		dir = filepath.Dir(aofDir)
	}
	if r.DataDir != "" { // moved there, names kept
		dir = r.DataDir
		if rdb != "" {
			rdb = filepath.Join(dir, filepath.Base(rdb))
		}
		if aofDir != "" {
			aofDir = filepath.Join(dir, filepath.Base(aofDir))
		}
	}
	aofOn := aofManifest(aofDir) != ""
	server, err := serverProgram(r.Report.Started)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.Socket, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(r.Socket, int(st.Uid), int(st.Gid)); err != nil {
		return nil, err
	}
	sock := filepath.Join(r.Socket, "redis.sock")
	port := "0"
	if r.Listen != "" {
		port = strconv.Itoa(r.Port)
	}
	dbfile := "dump.rdb"
	if rdb != "" {
		dbfile = filepath.Base(rdb)
	}
	args := []string{"--port", port, "--unixsocket", sock, "--unixsocketperm", "770", "--dir", dir, "--dbfilename", dbfile,
		"--save", "", "--appendonly", map[bool]string{true: "yes", false: "no"}[aofOn], "--daemonize", "no",
		"--protected-mode", "yes", "--logfile", filepath.Join(r.Socket, "redis.log")}
	if r.Listen != "" {
		args = append(args, "--bind", strings.ReplaceAll(r.Listen, ",", " "))
	}
	if aofOn {
		args = append(args, "--appenddirname", filepath.Base(aofDir))
	}
	if w.password != "" {
		args = append(args, "--requirepass", w.password)
	}
	cmd := exec.Command(server, args...)
	cmd.Dir = dir // so that the clean-up of a killed umbra run finds it
	// Its own session: it outlives umbra after umbra run --migrate.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(int(st.Uid), int(st.Gid)), Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis writer %q: start %s: %w", w.name, server, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	box := &Writer{name: w.name, network: "unix", addr: sock, user: w.user, password: w.password}
	ctx, cancel := context.WithTimeout(ctx, checkLimit)
	defer cancel()
	for {
		err := box.ready(ctx)
		if err == nil {
			break
		}
		select {
		case e := <-exited:
			log, _ := os.ReadFile(filepath.Join(r.Socket, "redis.log"))
			return nil, fmt.Errorf("redis writer %q: the copy exited while loading (%v): %s", w.name, e, writer.LastLines(string(log), 15))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("redis writer %q: the copy did not load the files within %s: %w", w.name, checkLimit, err)
		case <-time.After(pollEvery):
		}
	}
	connect := "socket " + sock
	if r.Listen != "" {
		connect = net.JoinHostPort(strings.Split(r.Listen, ",")[0], port) + " (socket " + sock + ")"
	}
	return &writer.Running{Connect: connect, Socket: sock, DataDir: dir, Stop: func(ctx context.Context) error {
		c := box.client()
		defer c.Close()
		// SHUTDOWN SAVE: the data set on disk, for a move.
		_ = c.Do(ctx, "SHUTDOWN", "SAVE").Err()
		select {
		case <-exited:
			return nil
		case <-time.After(checkLimit):
			_ = cmd.Process.Kill()
			return fmt.Errorf("redis writer %q: the copy did not shut down within %v; killed", w.name, checkLimit)
		case <-ctx.Done():
			return ctx.Err()
		}
	}}, nil
}
