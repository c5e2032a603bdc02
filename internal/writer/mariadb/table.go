package mariadb

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os/exec"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.TableCopier = (*Writer)(nil)

// CopyTable copies one table from the copy from (started by Start from a
// backup, without networking) into the live server: in the copy, which is
// thrown away, rows --where does not select are deleted and the table is
// renamed (RENAME TABLE, to another database too); then mariadb-dump of
// the copy is loaded by the mariadb client into the live server, which
// serves on. A live table of that name is refused, or with Force dropped
// and created again (DDL commits at once in MariaDB: a reader may see the
// table missing or filling for that moment).
func (w *Writer) CopyTable(ctx context.Context, from *writer.Running, t writer.TableCopy) (writer.TableCopied, error) {
	src, err := tableName(t.Table)
	if err != nil {
		return writer.TableCopied{}, err
	}
	into := src
	if t.Into != "" {
		if into, err = tableName(t.Into); err != nil {
			return writer.TableCopied{}, err
		}
	}
	out := writer.TableCopied{Table: into[0] + "." + into[1]}
	copyCfg := w.cfg.Clone()
	copyCfg.Net, copyCfg.Addr = "unix", from.Socket
	copyW := &Writer{name: w.name, cfg: copyCfg, where: from.Socket}
	if err := copyW.prepareTable(ctx, src, into, t.Where); err != nil {
		return out, err
	}
	db, conn, err := w.connect(ctx)
	if err != nil {
		return out, err
	}
	defer closeConn(db, conn)
	exists, err := tableExists(ctx, conn, into)
	if err != nil {
		return out, err
	}
	if exists && !t.Force {
		return out, fmt.Errorf("%w: %s; --force replaces it, --into NAME restores it beside", writer.ErrTableExists, out.Table)
	}
	out.Replaced = exists
	if _, err := conn.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+ident(into[0])); err != nil {
		return out, err
	}
	if err := dumpAndLoad(ctx, copyCfg, w.cfg, into, exists); err != nil {
		return out, err
	}
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+ident(into[0])+"."+ident(into[1])).Scan(&out.Rows); err != nil {
		return out, err
	}
	return out, nil
}

// prepareTable makes the copy's table what the live server is to get.
func (w *Writer) prepareTable(ctx context.Context, src, into [2]string, where string) error {
	db, conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(db, conn)
	exists, err := tableExists(ctx, conn, src)
	if err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("the backup has no table %s.%s", src[0], src[1])
	}
	// Foreign keys are the live server's business, not the copy's.
	if _, err := conn.ExecContext(ctx, "SET foreign_key_checks = 0"); err != nil {
		return err
	}
	name := ident(src[0]) + "." + ident(src[1])
	if where != "" {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("DELETE FROM %s WHERE NOT (%s)", name, where)); err != nil {
			return fmt.Errorf("--where %q: %w", where, err)
		}
	}
	if src == into {
		return nil
	}
	if _, err := conn.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+ident(into[0])); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, fmt.Sprintf("RENAME TABLE %s TO %s.%s", name, ident(into[0]), ident(into[1])))
	return err
}

func tableExists(ctx context.Context, conn *sql.Conn, t [2]string) (bool, error) {
	var n int
	err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t[0], t[1]).Scan(&n)
	return n > 0, err
}

// dumpAndLoad pipes mariadb-dump of table from the copy into the mariadb
// client on the live server; the dump drops the live table first only if
// replace.
func dumpAndLoad(ctx context.Context, copyCfg, liveCfg *mysql.Config, t [2]string, replace bool) error {
	dumpArgs := append(clientArgs(copyCfg), "--single-transaction", "--skip-add-drop-table", "--no-create-db", t[0], t[1])
	if replace {
		dumpArgs = append(clientArgs(copyCfg), "--single-transaction", "--add-drop-table", "--no-create-db", t[0], t[1])
	}
	dump := exec.CommandContext(ctx, "mariadb-dump", dumpArgs...)
	load := exec.CommandContext(ctx, "mariadb", append(clientArgs(liveCfg), t[0])...)
	dump.Env = []string{"PATH=/usr/bin:/bin", "MYSQL_PWD=" + copyCfg.Passwd}
	load.Env = []string{"PATH=/usr/bin:/bin", "MYSQL_PWD=" + liveCfg.Passwd}
	derr, lerr := process.Pipe(dump, load, "")
	switch {
	case lerr != nil:
		return fmt.Errorf("loading into the live server: %w", lerr)
	case derr != nil:
		return fmt.Errorf("mariadb-dump of the backup's copy: %w (install Debian's mariadb-client)", derr)
	}
	return nil
}

// clientArgs are the mariadb client options that reach the server of cfg
// (the password goes in MYSQL_PWD).
func clientArgs(cfg *mysql.Config) []string {
	args := []string{"--no-defaults", "--user=" + cfg.User}
	if cfg.Net == "unix" {
		return append(args, "--socket="+cfg.Addr)
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		host, port = cfg.Addr, "3306"
	}
	return append(args, "--protocol=TCP", "--host="+host, "--port="+port)
}

// tableName splits DATABASE.TABLE.
func tableName(s string) ([2]string, error) {
	db, table, ok := strings.Cut(s, ".")
	if !ok || db == "" || table == "" || strings.ContainsAny(s, "`") || strings.Contains(table, ".") {
		return [2]string{}, fmt.Errorf("table %q: give DATABASE.TABLE, unquoted", s)
	}
	return [2]string{db, table}, nil
}

func ident(name string) string { return "`" + strings.ReplaceAll(name, "`", "``") + "`" }
