package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Verifier = (*Writer)(nil)

// Verify starts a sandbox server on the data directory restored under
// r.Target (none of production's option files; no network, a private
// socket, no replica threads, no binary log, no events, no grant tables)
// as the files' owner, checks that InnoDB came up, runs CHECK TABLE on
// every table, and stops it.
func (w *Writer) Verify(ctx context.Context, r writer.Restore) ([]writer.Check, error) {
	dataDir := dataDirIn(r.Metadata, r.Target)
	if dataDir == "" {
		return nil, fmt.Errorf("mariadb writer %q: verify: the backup's metadata names no data directory", w.name)
	}
	program, err := serverProgram(r.Report.Started)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dataDir, &st); err != nil {
		return nil, err
	}
	// A socket path must be short: a private directory of the server's
	// user, for its socket, pid file, error log and temporary files.
	box, err := os.MkdirTemp("", "umbra-verify-mariadb-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(box)
	if err := os.Chown(box, int(st.Uid), int(st.Gid)); err != nil {
		return nil, err
	}
	sock := filepath.Join(box, "mysqld.sock")
	errLog := filepath.Join(box, "error.log")
	args := []string{"--no-defaults", "--datadir=" + dataDir, "--socket=" + sock, "--pid-file=" + filepath.Join(box, "pid"),
		"--log-error=" + errLog, "--tmpdir=" + box, "--skip-networking", "--skip-slave-start",
		"--event-scheduler=OFF", "--skip-grant-tables"}
	// The restored binary logs, as a restore in place has them: InnoDB
	// resolves transactions it finds prepared with them, and the GTID
	// position can be compared. The index is the sandbox's own, naming
	// the restored files (production's may name its own by absolute path).
	binlog, err := sandboxBinlog(r, box, int(st.Uid), int(st.Gid))
	if err != nil {
		return nil, err
	}
	if binlog == nil {
		args = append(args, "--skip-log-bin")
	}
	args = append(args, binlog...)
	cmd := exec.Command(program, args...)
	cmd.Dir = box
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(int(st.Uid), int(st.Gid)), Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("mariadb writer %q: verify: start %s: %w", w.name, program, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr, cfg.User = "unix", sock, "root"
	boxW := &Writer{name: w.name, cfg: cfg, where: sock}
	recovery := writer.Check{Name: "recovery"}
	db, conn, err := boxW.awaitSandbox(ctx, exited, errLog)
	recovery.Duration = time.Since(start)
	if err != nil {
		recovery.Detail = err.Error()
		return []writer.Check{recovery}, ctx.Err()
	}
	defer closeConn(db, conn)
	var support string
	if err := conn.QueryRowContext(ctx, "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'").Scan(&support); err != nil {
		return []writer.Check{recovery}, err
	}
	recovery.OK = support == "YES" || support == "DEFAULT"
	if !recovery.OK {
		recovery.Detail = "the server came up without InnoDB: its recovery failed\n" + tail(errLog)
		return []writer.Check{recovery}, nil
	}
	switch pos := r.Report.Positions[PosGTID]; {
	case pos != "" && binlog != nil:
		if err := boxW.checkGTID(ctx, conn, r); err != nil {
			recovery.OK, recovery.Detail = false, err.Error()
			return []writer.Check{recovery}, nil
		}
		recovery.Detail = "InnoDB recovered; the binary log ends at the recorded GTID " + pos
	case pos != "":
		recovery.Detail = "InnoDB recovered; the backup recorded GTID " + pos + " (not compared: its binary logs are not in the backup)"
	}
	start = time.Now()
	problems, err := checkEveryTable(ctx, conn)
	check := writer.Check{Name: "CHECK TABLE", OK: err == nil && len(problems) == 0, Duration: time.Since(start)}
	if err != nil {
		return []writer.Check{recovery, check}, err
	}
	if len(problems) > 0 {
		check.Detail = strings.Join(problems, "\n")
	}
	checks := []writer.Check{recovery, check}
	env := []string{"UMBRA_VERIFY_DIR=" + r.Target, "MYSQL_UNIX_PORT=" + sock, "UMBRA_VERIFY_SOCKET=" + sock}
	if c, ok := w.userCheck.Run(ctx, env, -1, -1); ok {
		checks = append(checks, c)
	}
	return checks, nil
}

// dataDirIn is where the backup's data directory lies under target, ""
// if its metadata names none.
func dataDirIn(md writer.Metadata, target string) string {
	for _, c := range md.Components {
		if c.Name == DataComponent && len(c.Paths) == 1 {
			return filepath.Join(target, c.Paths[0])
		}
	}
	return ""
}

// sandboxBinlog finds the binary logs restored under r.Target (the backup's
// last one is recorded as PosFile) and returns the options that make the
// sandbox use them, with an index of its own in box; nil if there are none.
func sandboxBinlog(r writer.Restore, box string, uid, gid int) ([]string, error) {
	last := r.Report.Positions[PosFile]
	if last == "" {
		return nil, nil
	}
	base := strings.TrimSuffix(last, filepath.Ext(last))
	for _, c := range r.Metadata.Components {
		if c.Name != DataComponent && c.Name != BinlogComponent || len(c.Paths) != 1 {
			continue
		}
		dir := filepath.Join(r.Target, c.Paths[0])
		files, _ := filepath.Glob(filepath.Join(dir, base+".[0-9]*"))
		if len(files) == 0 {
			continue
		}
		slices.Sort(files)
		index := filepath.Join(box, "binlog.index")
		if err := os.WriteFile(index, []byte(strings.Join(files, "\n")+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := os.Chown(index, uid, gid); err != nil {
			return nil, err
		}
		return []string{"--log-bin=" + filepath.Join(dir, base), "--log-bin-index=" + index}, nil
	}
	return nil, nil
}

// awaitSandbox connects to the sandbox server once it accepts connections,
// within startLimit; it gives up at once if the server exited.
func (w *Writer) awaitSandbox(ctx context.Context, exited chan error, errLog string) (*sql.DB, *sql.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, startLimit)
	defer cancel()
	for {
		db, conn, err := w.connect(ctx)
		if err == nil {
			return db, conn, nil
		}
		select {
		case e := <-exited:
			exited <- e
			return nil, nil, fmt.Errorf("the sandbox server exited (%v):\n%s", e, tail(errLog))
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("the sandbox server did not accept connections within %v: %w\n%s", startLimit, err, tail(errLog))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkEveryTable runs CHECK TABLE on every base table but the server's own
// schemas' and lists what is not OK, naming each table.
func checkEveryTable(ctx context.Context, conn *sql.Conn) ([]string, error) {
	rows, err := conn.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
		WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys')`)
	if err != nil {
		return nil, err
	}
	var tables []string
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			rows.Close()
			return nil, err
		}
		tables = append(tables, "`"+strings.ReplaceAll(schema, "`", "``")+"`.`"+strings.ReplaceAll(name, "`", "``")+"`")
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var problems []string
	for _, t := range tables {
		res, err := conn.QueryContext(ctx, "CHECK TABLE "+t)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", t, err))
			continue
		}
		ok := false
		var notes []string
		for res.Next() {
			var table, op, kind, text string
			if err := res.Scan(&table, &op, &kind, &text); err != nil {
				res.Close()
				return nil, err
			}
			switch {
			case kind == "status" && text == "OK":
				ok = true
			case kind == "error" || kind == "warning" || kind == "status":
				notes = append(notes, kind+": "+text)
			}
		}
		res.Close()
		if !ok || len(notes) > 0 {
			problems = append(problems, t+": "+strings.Join(notes, "; "))
		}
	}
	return problems, nil
}

// serverProgram is the mariadbd to check with: the one the backup saw
// running, else the one on PATH.
func serverProgram(started *writer.Started) (string, error) {
	if started != nil && len(started.Argv) > 0 {
		if _, err := os.Stat(started.Argv[0]); err == nil {
			return started.Argv[0], nil
		}
	}
	for _, name := range []string{"mariadbd", "mysqld"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if _, err := os.Stat("/usr/sbin/" + name); err == nil {
			return "/usr/sbin/" + name, nil
		}
	}
	return "", errors.New("no mariadbd to verify with: install Debian's mariadb-server")
}

// tail is the end of a log file, for an error.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	return writer.LastLines(string(b), 15)
}
