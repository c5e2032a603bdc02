package mariadb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/umbra-backup/umbra/internal/writer"
)

// position is where the binary log stood while commits were blocked. File
// is empty when the server writes no binary log.
type position struct {
	File string `json:"file"`
	Pos  uint64 `json:"pos"`
	GTID string `json:"gtid"`
}

// logsBefore lists the binary logs the server still has before file.
func logsBefore(ctx context.Context, conn *sql.Conn, file string) ([]string, error) {
	rows, err := conn.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var before []string
	for rows.Next() {
		var name string
		dest := []any{&name}
		for range cols[1:] {
			dest = append(dest, new(sql.RawBytes))
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		if name == file {
			return before, nil
		}
		before = append(before, name)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return nil, nil // file is gone from the index: nothing before it either
}

// replicas lists the threads that stream the binary log to a replica (or
// to mariadb-binlog --read-from-remote-server). Without the PROCESS
// privilege the user sees only its own threads, so purge_binlogs needs it.
func (w *Writer) replicas(ctx context.Context, conn *sql.Conn, phase writer.Phase) ([]string, error) {
	rows, err := conn.QueryContext(ctx, "SELECT ID, USER, HOST FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%' ORDER BY ID")
	if err != nil {
		return nil, w.sqlErr(ctx, phase, "list Binlog Dump threads", w.cfg.User, "", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id int64
		var user, host string
		if err := rows.Scan(&id, &user, &host); err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("Binlog Dump thread %d of %s@%s", id, user, host))
	}
	return out, rows.Err()
}

// readPosition reads the binary log file and position and the GTID
// position; File is empty when the server writes no binary log.
func readPosition(ctx context.Context, conn *sql.Conn) (*position, error) {
	var p position
	if err := conn.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&p.GTID); err != nil {
		return nil, err
	}
	rows, err := conn.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	if rows.Next() {
		dest := make([]any, len(cols))
		dest[0], dest[1] = &p.File, &p.Pos
		for i := 2; i < len(dest); i++ {
			dest[i] = new(sql.RawBytes)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
	}
	return &p, rows.Err()
}

// positionFile is where PostSnapshot keeps the set's position for a
// BackupComplete that may run in another process.
func positionFile(set writer.Set, name string) (string, error) {
	dir, err := set.ScratchFor(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "binlog-position.json"), nil
}

func savePosition(set writer.Set, name string, p *position) error {
	path, err := positionFile(set, name)
	if err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func loadPosition(set writer.Set, name string) (*position, error) {
	path, err := positionFile(set, name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p position
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

func removePosition(set writer.Set, name string) error {
	path, err := positionFile(set, name)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// quote makes s an SQL string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
