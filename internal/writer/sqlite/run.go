package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/umbra-backup/umbra/internal/writer"
)

var (
	_ writer.Runner      = (*Writer)(nil)
	_ writer.TableCopier = (*Writer)(nil)
)

// Start makes the database as the backup holds it usable where it lies
// under r.Target (umbra run): SQLite has no server, so this is the file,
// writable, its changes kept out of the repository. An application opens
// it by its path (Connect).
func (w *Writer) Start(ctx context.Context, r writer.Restore) (*writer.Running, error) {
	if r.DataDir != "" {
		return nil, errors.New("sqlite has no server to move: copy the database file instead")
	}
	path := filepath.Join(r.Target, w.path)
	// Only a stat: umbra serves the view itself, and SQLite in this
	// process would map the database's -shm file from it, a page fault
	// its own FUSE server can deadlock on.
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("sqlite writer %q: the backup's database: %w", w.name, err)
	}
	return &writer.Running{Connect: path, DataDir: path,
		NoMigrate: "SQLite has no server to switch: copy the file (sqlite3 FILE \".backup NEW\") or umbra restore --target"}, nil
}

// createName finds the name in CREATE TABLE / CREATE [UNIQUE] INDEX.
var (
	createTable = regexp.MustCompile(`(?is)^(\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?)("[^"]+"|\[[^\]]+\]|` + "`[^`]+`" + `|[^\s(]+)`)
	createIndex = regexp.MustCompile(`(?is)^(\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?)("[^"]+"|\[[^\]]+\]|` + "`[^`]+`" + `|\S+)(\s+ON\s+)("[^"]+"|\[[^\]]+\]|` + "`[^`]+`" + `|[^\s(]+)`)
)

// CopyTable copies one table from the backup's database (from.DataDir, the
// file in the backup's view) into the live database, in one transaction
// of the live database (waiting up to 30 s for its writers): the table as
// the backup created it, the rows (those --where selects), its indexes,
// and, under its own name, its triggers. A live table of that name is
// refused, or with Force dropped in that transaction.
func (w *Writer) CopyTable(ctx context.Context, from *writer.Running, t writer.TableCopy) (writer.TableCopied, error) {
	into := t.Into
	if into == "" {
		into = t.Table
	}
	out := writer.TableCopied{Table: into}
	if t.Table == "" || strings.ContainsAny(t.Table+into, "\"`[]") {
		return out, fmt.Errorf("table %q: give the table's name, unquoted", t.Table)
	}
	// The backup's database is copied out of the view first, with plain
	// reads: opened in place, SQLite would map its -shm file from the
	// FUSE mount this very process serves, and deadlock on a page fault.
	scratch, err := os.MkdirTemp(filepath.Dir(w.path), ".umbra-table-")
	if err != nil {
		return out, err
	}
	defer os.RemoveAll(scratch)
	backupDB := filepath.Join(scratch, filepath.Base(w.path))
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(from.DataDir+suffix, backupDB+suffix); err != nil {
			return out, fmt.Errorf("copy the backup's database out: %w", err)
		}
	}
	db, err := sql.Open("sqlite", dsn(w.path, "mode=rw&_txlock=immediate&_pragma=busy_timeout(30000)"))
	if err != nil {
		return out, err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "ATTACH DATABASE ? AS backup", dsn(backupDB, "mode=ro")); err != nil {
		return out, fmt.Errorf("open the backup's database: %w", err)
	}
	var create string
	err = conn.QueryRowContext(ctx, "SELECT sql FROM backup.sqlite_master WHERE type = 'table' AND name = ?", t.Table).Scan(&create)
	if errors.Is(err, sql.ErrNoRows) {
		return out, fmt.Errorf("the backup's database has no table %s", t.Table)
	}
	if err != nil {
		return out, err
	}
	var extra []string // indexes and triggers
	rows, err := conn.QueryContext(ctx, "SELECT type, sql FROM backup.sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL", t.Table)
	if err != nil {
		return out, err
	}
	for rows.Next() {
		var kind, stmt string
		if err := rows.Scan(&kind, &stmt); err != nil {
			rows.Close()
			return out, err
		}
		switch {
		case into == t.Table:
			extra = append(extra, stmt)
		case kind == "index":
			m := createIndex.FindStringSubmatchIndex(stmt)
			if m == nil {
				rows.Close()
				return out, fmt.Errorf("cannot rename the index %q for --into", stmt)
			}
			name := strings.Trim(stmt[m[4]:m[5]], "\"`[]")
			extra = append(extra, stmt[:m[4]]+quoteIdent(into+"_"+name)+stmt[m[5]:m[8]]+quoteIdent(into)+stmt[m[9]:])
		}
		// A trigger's text names its table in too many places to rewrite:
		// under another name the table comes without its triggers.
	}
	rows.Close()
	if into != t.Table {
		m := createTable.FindStringSubmatchIndex(create)
		if m == nil {
			return out, fmt.Errorf("cannot rename the table %q for --into", create)
		}
		create = create[:m[4]] + quoteIdent(into) + create[m[5]:]
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return out, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?", into).Scan(&n); err != nil {
		return out, err
	}
	if n > 0 && !t.Force {
		return out, fmt.Errorf("%w: %s in %s; --force replaces it, --into NAME restores it beside", writer.ErrTableExists, into, w.path)
	}
	out.Replaced = n > 0
	stmts := []string{}
	if out.Replaced {
		stmts = append(stmts, "DROP TABLE main."+quoteIdent(into))
	}
	insert := fmt.Sprintf("INSERT INTO main.%s SELECT * FROM backup.%s", quoteIdent(into), quoteIdent(t.Table))
	if t.Where != "" {
		insert += " WHERE " + t.Where
	}
	stmts = append(append(append(stmts, create), insert), extra...)
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return out, fmt.Errorf("%s: %w", firstLine(s), err)
		}
	}
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM main."+quoteIdent(into)).Scan(&out.Rows); err != nil {
		return out, err
	}
	return out, tx.Commit()
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
