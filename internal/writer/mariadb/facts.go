package mariadb

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/umbra-backup/umbra/internal/writer"
)

// facts are what the writer reads from the server about itself.
type facts struct {
	version  string
	user     string // 'name'@'host', as GRANT wants it
	dataDir  string
	logBin   bool
	binBase  string // the binary logs' path without the .NNNNNN suffix
	binIndex string // the binary log index file
	binDir   string
	extra    []string // InnoDB directories outside the data directory
	excludes []string // files of the component never to restore, as globs
}

func (w *Writer) facts(ctx context.Context, conn *sql.Conn, phase writer.Phase) (facts, error) {
	var f facts
	// The version first: other servers may lack the variables below.
	if err := conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&f.version); err != nil {
		return f, w.sqlErr(ctx, phase, "SELECT VERSION()", w.cfg.User, "", err)
	}
	if err := checkVersion(f.version); err != nil {
		return f, fmt.Errorf("mariadb writer %q: %w", w.name, err)
	}
	var user, dataDir, pidFile, socket, tmpPath string
	var logBin int
	var binBase, binIndex, dataHome, logHome, undoDir sql.NullString
	err := conn.QueryRowContext(ctx, `SELECT CURRENT_USER(), @@datadir, @@log_bin, @@log_bin_basename, @@log_bin_index,
		@@pid_file, @@socket, @@innodb_data_home_dir, @@innodb_log_group_home_dir, @@innodb_undo_directory,
		@@innodb_temp_data_file_path`).Scan(
		&user, &dataDir, &logBin, &binBase, &binIndex, &pidFile, &socket, &dataHome, &logHome, &undoDir, &tmpPath)
	if err != nil {
		return f, w.sqlErr(ctx, phase, "read server variables", w.cfg.User, "", err)
	}
	name, host, _ := strings.Cut(user, "@")
	f.user = quote(name) + "@" + quote(host)
	f.dataDir = filepath.Clean(dataDir)
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(f.dataDir, p)
	}
	f.logBin = logBin == 1 && binBase.Valid && binBase.String != ""
	if f.logBin {
		f.binBase = abs(binBase.String)
		f.binDir = filepath.Dir(f.binBase)
		f.binIndex = f.binBase + ".index"
		if binIndex.Valid && binIndex.String != "" {
			f.binIndex = abs(binIndex.String)
		}
	}
	home := f.dataDir
	if dataHome.Valid && dataHome.String != "" {
		home = abs(dataHome.String)
	}
	for _, d := range []sql.NullString{dataHome, logHome, undoDir} {
		if d.Valid && d.String != "" {
			if p := abs(d.String); !within(p, f.dataDir) && !slices.Contains(f.extra, p) {
				f.extra = append(f.extra, p)
			}
		}
	}
	// The pid file and socket belong to the running server; the InnoDB
	// temporary tablespace is recreated at every start.
	tmpFile, _, _ := strings.Cut(tmpPath, ":")
	for _, p := range []string{abs(pidFile), abs(socket), filepath.Join(home, tmpFile)} {
		if within(p, f.dataDir) || slices.ContainsFunc(f.extra, func(d string) bool { return within(p, d) }) {
			f.excludes = append(f.excludes, escapeGlob(p))
		}
	}
	return f, nil
}

// binlogComponent names the component that holds the binary logs.
func (f facts) binlogComponent() string {
	if within(f.binDir, f.dataDir) || slices.ContainsFunc(f.extra, func(d string) bool { return within(f.binDir, d) }) {
		return DataComponent
	}
	return BinlogComponent
}

// older reports whether the server is older than version v (x.y.z).
func (f facts) older(v string) bool {
	a, _ := parseVersion(f.version)
	b, _ := parseVersion(v)
	return slices.Compare(a, b) < 0
}

func (w *Writer) metadata(f facts) writer.Metadata {
	truncates := "nothing (purge_binlogs is off)"
	switch {
	case !f.logBin:
		truncates = "nothing (the server writes no binary log)"
	case w.purge:
		truncates = "binary logs before the backup's binlog file (purge_binlogs=true), unless a replica is connected"
	}
	restore := writer.RestoreMethod{Method: "stop-service", Service: w.service}
	data := writer.Component{
		Name:        DataComponent,
		Kind:        writer.KindDatabase,
		Paths:       append([]string{f.dataDir}, f.extra...),
		Excludes:    f.excludes,
		Selectable:  true,
		BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
		Needs:       writer.NeedAtomic,
		Restore:     restore,
		// mariadb-backup copies it where no volume snapshot can;
		// not with InnoDB files outside it, which it would gather in one
		// directory.
		OwnCopy: len(f.extra) == 0,
	}
	md := writer.Metadata{Writer: "mariadb", Instance: w.name, Version: f.version}
	if !f.logBin || f.binlogComponent() == DataComponent {
		data.Logs.Truncates = truncates
		md.Components = []writer.Component{data}
		return md
	}
	md.Components = []writer.Component{data, {
		Name:        BinlogComponent,
		Kind:        writer.KindLogs,
		Paths:       []string{f.binDir},
		BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
		Needs:       writer.NeedAtomic,
		Restore:     restore,
		Logs:        writer.LogFacts{Truncates: truncates},
		OwnCopy:     data.OwnCopy,
	}}
	return md
}

// globalGrants returns the privileges granted ON *.* to the current user
// and its enabled roles, as SHOW GRANTS spells them.
func globalGrants(ctx context.Context, conn *sql.Conn) (map[string]bool, error) {
	rows, err := conn.QueryContext(ctx, "SHOW GRANTS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	privs := map[string]bool{}
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		list, ok := strings.CutPrefix(g, "GRANT ")
		if !ok {
			continue
		}
		list, _, ok = strings.Cut(list, " ON *.* TO ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(list, ", ") {
			privs[strings.TrimSpace(p)] = true
		}
	}
	return privs, rows.Err()
}

// checkVersion returns an error unless v is MariaDB 10.4 or later.
func checkVersion(v string) error {
	if !strings.Contains(v, "MariaDB") {
		return fmt.Errorf("server %s is not MariaDB: MySQL is not supported, as the writer relies on MariaDB's BACKUP STAGE (10.4 or later)", v)
	}
	n, err := parseVersion(v)
	if err != nil {
		return fmt.Errorf("server version %q: %w", v, err)
	}
	if slices.Compare(n, []int{10, 4}) < 0 {
		return fmt.Errorf("MariaDB %s is too old: the writer needs 10.4 or later for BACKUP STAGE; upgrade the server", v)
	}
	return nil
}

// parseVersion reads the leading x.y.z of a version string.
func parseVersion(v string) ([]int, error) {
	head, _, _ := strings.Cut(v, "-")
	var n []int
	for _, part := range strings.Split(head, ".") {
		i, err := strconv.Atoi(part)
		if err != nil {
			return nil, fmt.Errorf("want x.y.z at the start")
		}
		n = append(n, i)
	}
	if len(n) < 2 {
		return nil, fmt.Errorf("want x.y.z at the start")
	}
	return n, nil
}

// escapeGlob makes path a pattern (writer.Excluded) that matches just it.
func escapeGlob(path string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(path)
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}
