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

	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

var _ writer.Runner = (*Writer)(nil)

// Start brings the cluster up where the backup's files lie under r.Target
// (umbra run: a writable view of the backup): its pg_wal and tablespace
// links, and tablespace_map, lead into r.Target (never to the original's),
// it recovers from the backup's own WAL, archives nothing, follows no
// primary, and listens on r.Port at r.Listen and on a socket in r.Socket.
// With r.DataDir it starts on that cleanly stopped, copied data directory
// instead (no recovery). It returns once the copy accepts connections.
func (w *Writer) Start(ctx context.Context, r writer.Restore) (*writer.Running, error) {
	if r.Socket == "" {
		return nil, fmt.Errorf("postgres writer %q: an instant copy needs a socket directory", w.name)
	}
	dataDir, recover := r.DataDir, false
	if dataDir == "" {
		rel, err := dataDirOf(r.Metadata)
		if err != nil {
			return nil, fmt.Errorf("postgres writer %q: %w", w.name, err)
		}
		dataDir, recover = filepath.Join(r.Target, rel), true
		if err := confine(dataDir, r.Target); err != nil {
			return nil, fmt.Errorf("postgres writer %q: %w", w.name, err)
		}
		paths := map[string]string{}
		for _, c := range r.Metadata.Components {
			if len(c.Paths) == 1 {
				paths[c.Name] = c.Paths[0]
			}
		}
		if cfg, ok := paths["config"]; ok {
			if err := copyConfig(filepath.Join(r.Target, cfg), dataDir); err != nil {
				return nil, fmt.Errorf("postgres writer %q: copy the configuration into %s: %w", w.name, dataDir, err)
			}
		}
	}
	if err := syncByFilesystem(dataDir); err != nil {
		return nil, fmt.Errorf("postgres writer %q: %w", w.name, err)
	}
	if err := w.startCopy(ctx, dataDir, r, sandboxCopy, recover); err != nil {
		_ = stopCopy(context.WithoutCancel(ctx), dataDir, "immediate")
		// The log goes with the instance: say its end here.
		return nil, fmt.Errorf("postgres writer %q: %w\nthe end of its log:\n%s", w.name, err, logTail(filepath.Join(dataDir, restoreLog)))
	}
	conn := fmt.Sprintf("host=%s port=%d", r.Socket, r.Port)
	if r.Listen != "" {
		conn = fmt.Sprintf("host=%s port=%d", strings.Split(r.Listen, ",")[0], r.Port)
	}
	noMigrate := ""
	if links, _ := filepath.Glob(filepath.Join(dataDir, "pg_tblspc", "*")); len(links) > 0 {
		noMigrate = "the cluster has tablespaces, which are not moved yet; umbra restore --writer " + w.name + " --to-datadir restores them"
	}
	return &writer.Running{
		NoMigrate: noMigrate, Connect: conn, Socket: filepath.Join(r.Socket, fmt.Sprintf(".s.PGSQL.%d", r.Port)), DataDir: dataDir,
		Stop: func(ctx context.Context) error { return stopCopy(ctx, dataDir, "fast") },
	}, nil
}

// syncByFilesystem has a server of version 14 or later, starting after a
// crash or from a backup, flush its files with one syncfs instead of an
// fsync of each: on a backup's view that walk would open every file of the
// cluster (on a kernel overlay, copying each up whole).
func syncByFilesystem(dataDir string) error {
	major, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return err
	}
	if v, err := strconv.Atoi(strings.TrimSpace(string(major))); err != nil || v < 14 {
		return nil
	}
	uid, gid, err := fileOwner(dataDir)
	if err != nil {
		return err
	}
	return appendFile(filepath.Join(dataDir, "postgresql.auto.conf"), "# umbra run: one syncfs, not a copy-up of every file\nrecovery_init_sync_method = syncfs\n", uid, gid)
}

// stopCopy stops the server on dataDir with pg_ctl as the directory's
// owner, in the given shutdown mode (fast: a checkpoint, so the files can
// be copied and started elsewhere; immediate: they are thrown away),
// if one runs there.
func stopCopy(ctx context.Context, dataDir, mode string) error {
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err != nil {
		return nil
	}
	major, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return err
	}
	uid, gid, err := fileOwner(dataDir)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(major)), "bin", "pg_ctl"), "stop", "-D", dataDir, "-m", mode, "-w", "-t", "120")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: process.Credential(uid, gid)}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// logTail is the end of a server log, without the refused connections
// of a client that waited for it.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	var kept []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, "not yet accepting connections") || strings.Contains(line, "Consistent recovery state has not") {
			continue
		}
		kept = append(kept, line)
	}
	return writer.LastLines(strings.Join(kept, ""), 25)
}
