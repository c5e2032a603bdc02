package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Verifier = (*Writer)(nil)

// sandboxPort names the sandbox's socket file; no TCP port is opened.
const sandboxPort = 5432

// Verify brings the cluster restored under r.Target up as a sandbox (the
// --to-datadir copy, listening only on a socket in r.Target, archiving
// nothing, following no primary, no restore_command but the backup's own
// WAL), then checks that recovery reached the backup's stop LSN and runs
// pg_amcheck --heapallindexed on every database; it stops the sandbox
// before it returns.
func (w *Writer) Verify(ctx context.Context, r writer.Restore) ([]writer.Check, error) {
	box := r
	box.DataDir = filepath.Join(r.Target, ".umbra-sandbox")
	box.Socket = filepath.Join(r.Target, ".umbra-socket")
	box.Port = sandboxPort
	defer stopSandbox(box.DataDir)

	start := time.Now()
	err := w.relocate(ctx, box, r.Metadata)
	recovery := writer.Check{Name: "recovery", OK: err == nil, Duration: time.Since(start)}
	if err != nil {
		recovery.Detail = err.Error()
		return []writer.Check{recovery}, ctx.Err()
	}
	copyW := w.copyAt(box)
	conn, err := copyW.connect(ctx)
	if err != nil {
		return []writer.Check{recovery}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var lsn string
	reached := true
	if stop := r.Report.Positions["stop_lsn"]; stop != "" {
		if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text, pg_current_wal_lsn() >= $1::pg_lsn", stop).Scan(&lsn, &reached); err != nil {
			return []writer.Check{recovery}, err
		}
		recovery.Detail = fmt.Sprintf("consistent at %s; the backup stopped at %s", lsn, stop)
		if !reached {
			recovery.OK = false
			recovery.Detail = fmt.Sprintf("recovery ended at %s, before the backup's stop LSN %s", lsn, stop)
		}
	}
	checks := []writer.Check{recovery}
	start = time.Now()
	out, err := w.amcheck(ctx, box)
	amcheck := writer.Check{Name: "pg_amcheck --heapallindexed", OK: err == nil, Duration: time.Since(start)}
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			return append(checks, amcheck), fmt.Errorf("pg_amcheck: %w", err)
		}
		amcheck.Detail = writer.LastLines(string(out), 20)
	}
	checks = append(checks, amcheck)
	user := "postgres"
	if u, _ := parseConn(w.connStr); u != "" {
		user = u
	}
	uid, gid, err := fileOwner(box.DataDir)
	if err != nil {
		return checks, err
	}
	env := []string{"UMBRA_VERIFY_DIR=" + r.Target, "PGHOST=" + box.Socket, "PGPORT=" + strconv.Itoa(box.Port), "PGUSER=" + user, "PGDATABASE=postgres"}
	if c, ok := w.userCheck.Run(ctx, env, uid, gid); ok {
		checks = append(checks, c)
	}
	return checks, ctx.Err()
}

// amcheck runs pg_amcheck on every database of the sandbox, as its owner,
// installing amcheck where it is missing (in the sandbox only).
func (w *Writer) amcheck(ctx context.Context, box writer.Restore) ([]byte, error) {
	major, err := os.ReadFile(filepath.Join(box.DataDir, "PG_VERSION"))
	if err != nil {
		return nil, err
	}
	bin := filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(major)), "bin", "pg_amcheck")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no %s: install PostgreSQL's client programs (postgresql-client) for version %s", bin, strings.TrimSpace(string(major)))
	}
	uid, gid, err := fileOwner(box.DataDir)
	if err != nil {
		return nil, err
	}
	user := "postgres"
	if cfg, err := parseConn(w.connStr); err == nil && cfg != "" {
		user = cfg
	}
	// One connection per core: the check reads every heap and index page.
	cmd := exec.CommandContext(ctx, bin, "--all", "--heapallindexed", "--install-missing", "--no-strict-names",
		"--jobs", strconv.Itoa(runtime.NumCPU()), "-h", box.Socket, "-p", strconv.Itoa(box.Port), "-U", user)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if w.pass != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+w.pass)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(uid, gid)}
	return cmd.CombinedOutput()
}

// parseConn returns the user of a libpq keyword string, "" for the default.
func parseConn(connStr string) (string, error) {
	for _, kv := range strings.Fields(connStr) {
		if v, ok := strings.CutPrefix(kv, "user="); ok {
			return strings.Trim(v, "'"), nil
		}
	}
	return "", nil
}

// stopSandbox stops a sandbox server at once (its files are thrown away),
// if one runs on dataDir.
func stopSandbox(dataDir string) {
	_ = stopCopy(context.Background(), dataDir, "immediate")
}
