package mariadb

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/umbra-backup/umbra/internal/writer"
)

// The writer's own copy, where no provider can copy the data directory
// atomically (ext4): mariadb-backup copies it while the server runs,
// taking BACKUP STAGE itself, and prepares it (InnoDB's crash recovery on
// the copy), so that the set holds a data directory that starts as it is;
// the binary logs are copied up to the position mariadb-backup recorded.
// A binary log directory of its own on such a volume, with the data on a
// snapshot, is copied up to the position Freeze recorded: binary logs
// only grow, so that copy is consistent with the snapshot.

// ownCopyData reports whether the writer copies the data directory itself
// in set: then it takes no BACKUP STAGE of its own (mariadb-backup does).
func (w *Writer) ownCopyData(set writer.Set) bool {
	return set.CopiesOwn(w.name, DataComponent)
}

// ownCopy makes the set's own copy and returns its report.
func (w *Writer) ownCopy(ctx context.Context, set writer.Set, pos *position) (writer.Report, *position, error) {
	const phase = writer.PhasePostSnapshot
	db, conn, err := w.connect(ctx)
	if err != nil {
		return writer.Report{}, nil, err
	}
	defer closeConn(db, conn)
	f, err := w.facts(ctx, conn, phase)
	if err != nil {
		return writer.Report{}, nil, err
	}
	scratch, err := set.ScratchFor(w.name)
	if err != nil {
		return writer.Report{}, nil, fmt.Errorf("mariadb writer %q: %s: %w", w.name, phase, err)
	}
	var rep writer.Report
	binTarget := filepath.Join(scratch, "binlog")
	if w.ownCopyData(set) {
		if len(f.extra) > 0 {
			return rep, nil, fmt.Errorf("mariadb writer %q: %s: InnoDB keeps files outside the data directory (%s), which mariadb-backup would gather into one; put the data on a volume with snapshots (btrfs)", w.name, phase, strings.Join(f.extra, ", "))
		}
		target := filepath.Join(scratch, "datadir")
		if err := writer.CheckRoom(scratch, append([]string{f.dataDir}, f.binDir)...); err != nil {
			return rep, nil, fmt.Errorf("mariadb writer %q: %s: no volume snapshot can copy %s, so mariadb-backup copies it into the set: %w", w.name, phase, f.dataDir, err)
		}
		if pos, err = w.mariadbBackup(ctx, conn, f, scratch, target); err != nil {
			return rep, nil, err
		}
		rep.Copies = append(rep.Copies, writer.OwnCopy{Path: f.dataDir, Source: target})
		if f.logBin && f.binlogComponent() == DataComponent {
			binTarget = filepath.Join(target, strings.TrimPrefix(f.binDir, f.dataDir))
		}
	}
	if f.logBin && pos.File != "" {
		if err := copyBinlogs(f.binIndex, f.binDir, binTarget, pos); err != nil {
			return rep, nil, fmt.Errorf("mariadb writer %q: %s: copy the binary logs up to %s:%d: %w", w.name, phase, pos.File, pos.Pos, err)
		}
		if f.binlogComponent() == BinlogComponent {
			if err := chownLike(binTarget, f.binDir); err != nil {
				return rep, nil, err
			}
			rep.Copies = append(rep.Copies, writer.OwnCopy{Path: f.binDir, Source: binTarget})
		}
	}
	if w.ownCopyData(set) {
		if err := chownLike(filepath.Join(scratch, "datadir"), f.dataDir); err != nil {
			return rep, nil, err
		}
	}
	return rep, pos, nil
}

// mariadbBackup runs mariadb-backup --backup, then --prepare, into target,
// and returns the binary log position it recorded. A relaxed
// innodb_flush_log_at_trx_commit is 1 while it runs: mariadb-backup copies
// the redo log from disk, where commits acknowledged into InnoDB's log
// buffer are not yet.
func (w *Writer) mariadbBackup(ctx context.Context, conn *sql.Conn, f facts, scratch, target string) (_ *position, err error) {
	const phase = writer.PhasePostSnapshot
	if err := os.RemoveAll(target); err != nil {
		return nil, err
	}
	trx, err := w.setRedoFlush(ctx, conn, phase, f.user, 1)
	if err != nil {
		return nil, err
	}
	// The setting goes back as soon as mariadb-backup has copied, and on
	// every way out before that.
	relaxed := trx != durableTrx
	reset := func() error {
		if !relaxed {
			return nil
		}
		relaxed = false
		return w.resetRedoFlush(ctx, conn, phase, trx)
	}
	defer func() {
		if rerr := reset(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	if relaxed {
		if _, err := conn.ExecContext(ctx, "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS"); err != nil {
			return nil, w.sqlErr(ctx, phase, "FLUSH ENGINE LOGS", f.user, "RELOAD", err)
		}
	}
	bin, err := exec.LookPath("mariadb-backup")
	if err != nil {
		return nil, fmt.Errorf("mariadb writer %q: %s: no volume snapshot can copy %s, and mariadb-backup, which can, is not installed: apt-get install mariadb-backup, or put the data on btrfs", w.name, phase, f.dataDir)
	}
	// The password goes in an option file of the set's, never in argv.
	cnf := filepath.Join(scratch, "client.cnf")
	if err := os.WriteFile(cnf, []byte("[client]\npassword=\""+strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(w.cfg.Passwd)+"\"\n"), 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(cnf)
	conArgs := []string{"--defaults-extra-file=" + cnf, "--user=" + w.cfg.User}
	if w.cfg.Net == "unix" {
		conArgs = append(conArgs, "--socket="+w.cfg.Addr)
	} else {
		host, port, err := net.SplitHostPort(w.cfg.Addr)
		if err != nil {
			return nil, err
		}
		conArgs = append(conArgs, "--host="+host, "--port="+port)
	}
	logFile := filepath.Join(scratch, "mariadb-backup.log")
	run := func(args ...string) error {
		out, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Dir = scratch
		// It holds BACKUP STAGE: it must not outlive umbra.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Run(); err != nil {
			tail, _ := os.ReadFile(logFile)
			return fmt.Errorf("mariadb writer %q: %s: mariadb-backup %s: %w\n%s", w.name, phase, args[len(conArgs)], err, writer.LastLines(string(tail), 15))
		}
		return nil
	}
	// The redo log copier checks every second by default, and commits
	// stay blocked until it has caught up: 1 s pauses, measured.
	if err := run(append(conArgs, "--backup", "--log-copy-interval=10", "--target-dir="+target, "--datadir="+f.dataDir)...); err != nil {
		return nil, err
	}
	if err := reset(); err != nil {
		return nil, err
	}
	if err := run(append(conArgs, "--prepare", "--target-dir="+target)...); err != nil {
		return nil, err
	}
	pos := &position{}
	if f.logBin {
		b, err := os.ReadFile(filepath.Join(target, "xtrabackup_binlog_info"))
		if err != nil {
			return nil, fmt.Errorf("mariadb writer %q: %s: mariadb-backup recorded no binary log position: %w", w.name, phase, err)
		}
		fields := strings.Fields(string(b))
		if len(fields) < 2 {
			return nil, fmt.Errorf("mariadb writer %q: %s: xtrabackup_binlog_info %q: want file, position and GTID", w.name, phase, b)
		}
		pos.File = fields[0]
		if pos.Pos, err = strconv.ParseUint(fields[1], 10, 64); err != nil {
			return nil, fmt.Errorf("mariadb writer %q: %s: xtrabackup_binlog_info %q: %w", w.name, phase, b, err)
		}
		if len(fields) > 2 {
			pos.GTID = fields[2]
		}
	}
	return pos, nil
}

// copyBinlogs copies the binary logs that index names, from binDir, up to
// pos into dir: the files before pos.File whole, pos.File up to pos.Pos,
// and the index, as it is, with the lines up to pos.File. Where the index
// lives in binDir its copy goes to dir; elsewhere (log-bin-index= apart)
// it is left out, and the restored server makes a new one.
func copyBinlogs(index, binDir, dir string, pos *position) error {
	idx, err := os.Open(index)
	if err != nil {
		return err
	}
	defer idx.Close()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	var listed []string
	sc := bufio.NewScanner(idx)
	found := false
	for sc.Scan() && !found {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		src := line
		if !filepath.IsAbs(src) {
			src = filepath.Join(binDir, filepath.Base(line))
		}
		limit := int64(-1)
		if filepath.Base(line) == pos.File {
			limit, found = int64(pos.Pos), true
		}
		if err := copyPrefix(src, filepath.Join(dir, filepath.Base(line)), limit); err != nil {
			return err
		}
		listed = append(listed, line)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s is not in %s", pos.File, index)
	}
	if filepath.Dir(index) != binDir {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, filepath.Base(index)), []byte(strings.Join(listed, "\n")+"\n"), 0o640)
}

// copyPrefix copies src to dst, only its first limit bytes unless limit
// is negative, with src's mode.
func copyPrefix(src, dst string, limit int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	var r io.Reader = in
	if limit >= 0 {
		if fi.Size() < limit {
			out.Close()
			return fmt.Errorf("%s is %d bytes, shorter than the recorded position %d", src, fi.Size(), limit)
		}
		r = io.LimitReader(in, limit)
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// chownLike gives dir and everything below it the owner of like, and dir
// itself its mode, as the restore makes them: mariadb-backup writes as
// root.
func chownLike(dir, like string) error {
	fi, err := os.Stat(like)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode().Perm()); err != nil {
		return err
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(st.Uid), int(st.Gid))
	})
}
