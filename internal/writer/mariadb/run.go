package mariadb

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Runner = (*Writer)(nil)

// Start brings a server up where the backup's data directory lies under
// r.Target (umbra run), or on r.DataDir: none of production's option
// files, the backup's own users and grants, no binary log, no replica
// threads, no events; on r.Port at r.Listen (no TCP without Listen) and
// a socket in r.Socket, as the files' owner. InnoDB recovers as after a
// crash. It returns once the server accepts the writer's connection.
func (w *Writer) Start(ctx context.Context, r writer.Restore) (*writer.Running, error) {
	dataDir := r.DataDir
	if dataDir == "" {
		if dataDir = dataDirIn(r.Metadata, r.Target); dataDir == "" {
			return nil, fmt.Errorf("mariadb writer %q: the backup's metadata names no data directory", w.name)
		}
	}
	program, err := serverProgram(r.Report.Started)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dataDir, &st); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.Socket, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(r.Socket, int(st.Uid), int(st.Gid)); err != nil {
		return nil, err
	}
	sock := filepath.Join(r.Socket, "mysqld.sock")
	errLog := filepath.Join(r.Socket, "error.log")
	args := []string{"--no-defaults", "--datadir=" + dataDir, "--socket=" + sock, "--pid-file=" + filepath.Join(r.Socket, "mysqld.pid"),
		"--log-error=" + errLog, "--tmpdir=" + r.Socket, "--skip-slave-start", "--event-scheduler=OFF"}
	// From the backup, the restored binary logs, as a verification has
	// them: InnoDB resolves what it finds prepared with them. A server
	// stopped cleanly (on a migrated directory) needs none.
	var binlog []string
	if r.DataDir == "" {
		if binlog, err = sandboxBinlog(r, r.Socket, int(st.Uid), int(st.Gid)); err != nil {
			return nil, err
		}
	}
	if binlog == nil {
		binlog = []string{"--skip-log-bin"}
	}
	args = append(args, binlog...)
	if r.Listen == "" {
		args = append(args, "--skip-networking")
	} else {
		args = append(args, "--bind-address="+r.Listen, "--port="+strconv.Itoa(r.Port))
	}
	cmd := exec.Command(program, args...)
	cmd.Dir = dataDir // so that the clean-up of a killed umbra run finds it
	// Its own session: it outlives umbra after umbra run --migrate.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(int(st.Uid), int(st.Gid)), Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("mariadb writer %q: start %s: %w", w.name, program, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	cfg := w.cfg.Clone()
	cfg.Net, cfg.Addr = "unix", sock
	boxW := &Writer{name: w.name, cfg: cfg, where: sock}
	db, conn, err := boxW.awaitSandbox(ctx, exited, errLog)
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("mariadb writer %q: %w", w.name, err)
	}
	closeConn(db, conn)
	connect := "socket " + sock
	if r.Listen != "" {
		connect = fmt.Sprintf("%s port %d (socket %s)", r.Listen, r.Port, sock)
	}
	return &writer.Running{Connect: connect, Socket: sock, DataDir: dataDir, Stop: func(ctx context.Context) error {
		// SIGTERM is mariadbd's clean shutdown.
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-exited:
			return nil
		case <-time.After(stopLimit):
			_ = cmd.Process.Kill()
			return fmt.Errorf("mariadb writer %q: the server did not shut down within %v; killed:\n%s", w.name, stopLimit, tail(errLog))
		case <-ctx.Done():
			return ctx.Err()
		}
	}}, nil
}
