package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/umbra-backup/umbra/internal/writer"
)

var _ writer.Relocator = (*Writer)(nil)

// Relocates marks the writer as able to bring a copy up elsewhere.
func (w *Writer) Relocates() {}

// relocate turns the files restored under r.Target into a cluster of its
// own in r.DataDir on r.Port, beside the original: the data directory is
// moved there, pg_wal becomes a directory inside it, each tablespace moves
// to DataDir.tablespaces/OID (tablespace_map rewritten, so recovery links
// the copy's, never the original's), a configuration kept outside the data
// directory is copied in, and settings appended to its postgresql.conf
// give the copy its own directory, port and no archiving.
func (w *Writer) relocate(ctx context.Context, r writer.Restore, md writer.Metadata) error {
	if r.Target == "" {
		return errors.New("--to-datadir needs the files restored under a staging directory first")
	}
	newDir, err := filepath.Abs(r.DataDir)
	if err != nil {
		return err
	}
	if entries, err := os.ReadDir(newDir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty; give a new or empty --to-datadir", newDir)
	}
	paths := map[string]string{} // component → its backed-up path
	for _, c := range md.Components {
		if len(c.Paths) == 1 {
			paths[c.Name] = c.Paths[0]
		}
	}
	staged := func(p string) string { return filepath.Join(r.Target, p) }
	_ = os.Remove(newDir) // an empty directory is replaced
	if err := os.Rename(staged(paths["data"]), newDir); err != nil {
		return fmt.Errorf("move the restored data directory to %s: %w", newDir, err)
	}
	if wal, ok := paths["wal"]; ok {
		link := filepath.Join(newDir, "pg_wal")
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Rename(staged(wal), link); err != nil {
			return fmt.Errorf("move the restored pg_wal into %s: %w", newDir, err)
		}
	}
	if err := relocateTablespaces(newDir, staged); err != nil {
		return err
	}
	if cfg, ok := paths["config"]; ok {
		if err := copyConfig(staged(cfg), newDir); err != nil {
			return fmt.Errorf("copy the configuration into %s: %w", newDir, err)
		}
	}
	mode := relocatedCopy
	if r.Socket != "" {
		mode = sandboxCopy
	}
	return w.startCopy(ctx, newDir, r, mode, true)
}

// startCopy gives the copy in newDir its own places (appended to its
// postgresql.conf, and to postgresql.auto.conf, which is read last:
// settings the original made with ALTER SYSTEM, its port and its
// archive_command, must not win there), prepares its recovery if recover,
// starts it and waits until it accepts connections. mode says what it is
// started as; an instant copy listens where r says.
func (w *Writer) startCopy(ctx context.Context, newDir string, r writer.Restore, mode copyMode, recover bool) error {
	overrides := fmt.Sprintf("\n# umbra: this copy's own places, beside the original\n"+
		"data_directory = '%s'\nhba_file = '%s'\nident_file = '%s'\nexternal_pid_file = ''\nport = %d\narchive_mode = off\ncluster_name = ''\n",
		newDir, filepath.Join(newDir, "pg_hba.conf"), filepath.Join(newDir, "pg_ident.conf"), r.Port)
	owner, err := ownerOf(newDir)
	if err != nil {
		return err
	}
	own := ""
	if r.Socket != "" {
		if err := os.MkdirAll(r.Socket, 0o700); err != nil {
			return err
		}
		if err := os.Chown(r.Socket, owner.uid, owner.gid); err != nil {
			return err
		}
		// Reachable by nobody else (a sandbox) or where the caller
		// said (an instant copy): a private socket, no primary.
		own = fmt.Sprintf("listen_addresses = '%s'\nunix_socket_directories = '%s'\nprimary_conninfo = ''\nprimary_slot_name = ''\n", r.Listen, r.Socket)
		overrides += own
	}
	if err := appendFile(filepath.Join(newDir, "postgresql.conf"), overrides, owner.uid, owner.gid); err != nil {
		return err
	}
	if recover {
		if err := prepare(newDir, r.FetchLog, r.Until); err != nil {
			return err
		}
	}
	if err := appendFile(filepath.Join(newDir, "postgresql.auto.conf"), fmt.Sprintf(
		"# umbra: this copy's own port, no archiving\nport = %d\narchive_mode = off\narchive_command = ''\ncluster_name = ''\n%s", r.Port, own), owner.uid, owner.gid); err != nil {
		return err
	}
	opts, err := startOptions(newDir, mode)
	if err != nil {
		return err
	}
	copyW := w.copyAt(r)
	sctx, cancel := context.WithTimeout(ctx, w.restore.startLimit)
	defer cancel()
	if err := pgCtlStart(sctx, newDir, opts); err != nil {
		return fmt.Errorf("start the copy: %w", err)
	}
	return copyW.awaitRecovery(ctx, newDir, filepath.Join(newDir, restoreLog))
}

// relocateTablespaces moves each tablespace named in tablespace_map from
// the staging directory to DIR.tablespaces/OID and rewrites the map and
// the pg_tblspc links to match.
func relocateTablespaces(dataDir string, staged func(string) string) error {
	mapFile := filepath.Join(dataDir, "tablespace_map")
	b, err := os.ReadFile(mapFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	owner, err := ownerOf(dataDir)
	if err != nil {
		return err
	}
	var out strings.Builder
	for line := range strings.Lines(string(b)) {
		oid, path, ok := strings.Cut(strings.TrimRight(line, "\n"), " ")
		if !ok {
			continue
		}
		dst := filepath.Join(dataDir+".tablespaces", oid)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := os.Chown(filepath.Dir(dst), owner.uid, owner.gid); err != nil {
			return err
		}
		if err := os.Rename(staged(path), dst); err != nil {
			return fmt.Errorf("move tablespace %s to %s: %w", oid, dst, err)
		}
		link := filepath.Join(dataDir, "pg_tblspc", oid)
		_ = os.Remove(link)
		if err := os.Symlink(dst, link); err != nil {
			return err
		}
		fmt.Fprintf(&out, "%s %s\n", oid, dst)
	}
	return os.WriteFile(mapFile, []byte(out.String()), 0o600)
}

// copyConfig copies the configuration directory's files (and conf.d) into
// the data directory, keeping what is there.
func copyConfig(src, dataDir string) error {
	owner, err := ownerOf(dataDir)
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(dataDir, rel)
		switch {
		case d.IsDir():
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
			return os.Lchown(dst, owner.uid, owner.gid)
		case !d.Type().IsRegular():
			return nil
		}
		if _, err := os.Lstat(dst); err == nil {
			return nil
		}
		if _, err := copyFile(p, dst); err != nil {
			return err
		}
		return os.Lchown(dst, owner.uid, owner.gid)
	})
}

type owner struct{ uid, gid int }

func ownerOf(path string) (owner, error) {
	uid, gid, err := fileOwner(path)
	return owner{uid, gid}, err
}

// copyAt is the writer of the copy relocate brings up for r: its port, and
// its socket directory for a sandbox.
func (w *Writer) copyAt(r writer.Restore) *Writer {
	connStr := withPort(w.connStr, r.Port)
	if r.Socket != "" {
		connStr = withKeyword(connStr, "host", r.Socket)
	}
	return &Writer{name: w.name, connStr: connStr, pass: w.pass, restore: restoreOptions{startLimit: w.restore.startLimit}}
}

// withKeyword replaces (or adds) key in a libpq keyword string.
func withKeyword(connStr, key, value string) string {
	var kept []string
	for _, kv := range strings.Fields(connStr) {
		if !strings.HasPrefix(kv, key+"=") {
			kept = append(kept, kv)
		}
	}
	return strings.Join(append(kept, key+"="+quote(value)), " ")
}

// withPort replaces (or adds) the port in a libpq keyword string.
func withPort(connStr string, port int) string {
	return withKeyword(connStr, "port", strconv.Itoa(port))
}
