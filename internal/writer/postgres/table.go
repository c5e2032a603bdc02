package postgres

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.TableCopier = (*Writer)(nil)

// CopyTable copies one table from the copy from (started by Start from a
// backup, on a private socket) into the live cluster: what the copy should
// not carry over is changed in the copy itself, which is thrown away (rows
// --where does not select deleted, the table renamed and moved to its new
// schema with the indexes and constraints named after it), then pg_dump of
// the copy is loaded by psql into the live database in one transaction:
// the table with its rows, indexes, constraints, triggers, grants and
// owned sequences. The live cluster serves on; an existing table of that
// name is refused, or with Force dropped in the same transaction.
func (w *Writer) CopyTable(ctx context.Context, from *writer.Running, t writer.TableCopy) (writer.TableCopied, error) {
	db := t.Database
	if db == "" {
		db = keyword(w.connStr, "dbname")
	}
	if db == "" {
		db = "postgres"
	}
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
	out := writer.TableCopied{Database: db, Table: strings.Join(into, ".")}
	sockDir, port := filepath.Dir(from.Socket), strings.TrimPrefix(filepath.Ext(from.Socket), ".")
	copyW := &Writer{name: w.name, pass: w.pass,
		connStr: withKeyword(withKeyword(withKeyword(w.connStr, "host", sockDir), "port", port), "dbname", db)}
	if err := copyW.prepareTable(ctx, src, into, t.Where); err != nil {
		return out, err
	}
	live := &Writer{name: w.name, pass: w.pass, connStr: withKeyword(w.connStr, "dbname", db)}
	conn, err := live.connect(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", into.Sanitize()).Scan(&exists); err != nil {
		return out, err
	}
	if exists && !t.Force {
		return out, fmt.Errorf("%w: %s in database %s; --force replaces it, --into NAME restores it beside", writer.ErrTableExists, out.Table, db)
	}
	out.Replaced = exists
	if err := w.dumpAndLoad(ctx, from, copyW.connStr, live.connStr, into, exists); err != nil {
		return out, err
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+into.Sanitize()).Scan(&out.Rows); err != nil {
		return out, err
	}
	return out, nil
}

// prepareTable makes the copy's table what the live cluster is to get:
// only the rows where selects, named into, its indexes and constraints
// that began with its old name named after the new one.
func (w *Writer) prepareTable(ctx context.Context, src, into pgx.Identifier, where string) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", src.Sanitize()).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("the backup has no table %s in database %s", strings.Join(src, "."), keyword(w.connStr, "dbname"))
	}
	// Foreign keys and triggers are the live cluster's business: not
	// the copy's, which is thrown away (needs a superuser, as restores do).
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return err
	}
	if where != "" {
		if _, err := conn.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE NOT (%s)", src.Sanitize(), where)); err != nil {
			return fmt.Errorf("--where %q: %w", where, err)
		}
	}
	if src[0] != into[0] {
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s; ALTER TABLE %s SET SCHEMA %s",
			pgx.Identifier{into[0]}.Sanitize(), src.Sanitize(), pgx.Identifier{into[0]}.Sanitize())); err != nil {
			return err
		}
	}
	if src[1] == into[1] {
		return nil
	}
	moved := pgx.Identifier{into[0], src[1]}
	// Its indexes, the sequences its columns own (serial), and the
	// constraints that are not indexes.
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass
		UNION SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
			WHERE c.relkind = 'S' AND d.refobjid = $1::regclass AND d.deptype IN ('a', 'i')
		UNION SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype NOT IN ('p', 'u', 'x')`, moved.Sanitize())
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s RENAME TO %s", moved.Sanitize(), pgx.Identifier{into[1]}.Sanitize())); err != nil {
		return err
	}
	for _, name := range names {
		rest, ok := strings.CutPrefix(name, src[1])
		if !ok {
			continue
		}
		newName := into[1] + rest
		// ALTER TABLE renames an index or a sequence as well.
		stmt := fmt.Sprintf("ALTER TABLE %s RENAME TO %s", pgx.Identifier{into[0], name}.Sanitize(), pgx.Identifier{newName}.Sanitize())
		var isRelation bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{into[0], name}.Sanitize()).Scan(&isRelation); err != nil {
			return err
		}
		if !isRelation {
			stmt = fmt.Sprintf("ALTER TABLE %s RENAME CONSTRAINT %s TO %s", into.Sanitize(), pgx.Identifier{name}.Sanitize(), pgx.Identifier{newName}.Sanitize())
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// dumpAndLoad pipes pg_dump of table from the copy into psql on the live
// database, in one transaction that first drops the live table if
// replace; both run as the copy's data directory's owner (the user peer
// authentication expects).
func (w *Writer) dumpAndLoad(ctx context.Context, from *writer.Running, copyConn, liveConn string, table pgx.Identifier, replace bool) error {
	major, err := os.ReadFile(filepath.Join(from.DataDir, "PG_VERSION"))
	if err != nil {
		return err
	}
	bin := filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(major)), "bin")
	uid, gid, err := fileOwner(from.DataDir)
	if err != nil {
		return err
	}
	env := []string{"PATH=/usr/bin:/bin"}
	if w.pass != "" {
		env = append(env, "PGPASSWORD="+w.pass)
	}
	cred := &syscall.SysProcAttr{Credential: process.Credential(uid, gid)}
	dump := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), "--dbname="+copyConn, "--table="+table.Sanitize(), "--no-password")
	load := exec.CommandContext(ctx, filepath.Join(bin, "psql"), "--dbname="+liveConn, "-X", "-q", "--no-password",
		"-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-")
	for _, c := range []*exec.Cmd{dump, load} {
		c.Env, c.Dir, c.SysProcAttr = env, "/", cred
	}
	head := ""
	if replace {
		head = "DROP TABLE " + table.Sanitize() + ";\n"
	}
	derr, lerr := process.Pipe(dump, load, head)
	switch {
	case lerr != nil:
		return fmt.Errorf("psql into the live database (nothing of it was kept: one transaction): %w", lerr)
	case derr != nil:
		return fmt.Errorf("pg_dump of the backup's copy: %w", derr)
	}
	return nil
}

// tableName splits SCHEMA.TABLE (public if only TABLE).
func tableName(s string) (pgx.Identifier, error) {
	if s == "" || strings.ContainsAny(s, `"`) || strings.Count(s, ".") > 1 {
		return nil, fmt.Errorf("table %q: give SCHEMA.TABLE or TABLE, unquoted", s)
	}
	schema, table, ok := strings.Cut(s, ".")
	if !ok {
		schema, table = "public", s
	}
	if schema == "" || table == "" {
		return nil, fmt.Errorf("table %q: give SCHEMA.TABLE or TABLE", s)
	}
	return pgx.Identifier{schema, table}, nil
}

// keyword is the value of key in a libpq keyword string, "" if absent.
func keyword(connStr, key string) string {
	for _, kv := range strings.Fields(connStr) {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			if u, err := strconv.Unquote(v); err == nil {
				return u
			}
			return strings.Trim(v, "'")
		}
	}
	return ""
}
