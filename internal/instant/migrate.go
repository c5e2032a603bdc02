package instant

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/writer"
)

// Migration is how an instance moved to a real data directory.
type Migration struct {
	DataDir string `json:"data_dir"`
	Connect string `json:"connect"`
	// Copied is what was copied while the application served.
	Files  int   `json:"files"`
	Copied int64 `json:"bytes"`
	// The stop: the clean shutdown, the copy of what changed meanwhile,
	// and the start on the new directory; StopMS is their sum, the time
	// the application answered nobody.
	ShutdownMS float64 `json:"shutdown_ms"`
	SyncMS     float64 `json:"sync_ms"`
	Synced     int64   `json:"synced_bytes"`
	StartMS    float64 `json:"start_ms"`
	StopMS     float64 `json:"stop_ms"`
}

// Migrate copies the application's data from the backup's writable view to dst (absent or
// empty) while it serves, then stops it cleanly, copies what changed since,
// and starts it on dst, on the same port and socket. On success the
// application runs on dst, on its own (it outlives this process), and the
// instance is taken down; should the start on dst fail, the application is
// started on the backup again and the error returned.
func (in *Instance) Migrate(ctx context.Context, dst string, progress func(files int, bytes int64)) (Migration, error) {
	var m Migration
	if in.app.NoMigrate != "" {
		return m, fmt.Errorf("--migrate: %s", in.app.NoMigrate)
	}
	dst, err := filepath.Abs(dst)
	if err != nil {
		return m, err
	}
	if entries, err := os.ReadDir(dst); err == nil && len(entries) > 0 {
		return m, fmt.Errorf("--migrate %s: the directory is not empty; give a new or empty one", dst)
	}
	src := in.app.DataDir
	c := &treeCopy{src: src, dst: dst, root: in.root, seen: map[string]stamp{}, progress: progress}
	if err := c.run(ctx); err != nil {
		return m, fmt.Errorf("--migrate: copy to %s while serving: %w", dst, err)
	}
	m.DataDir, m.Files, m.Copied = dst, c.files, c.bytes
	if in.opts.Pause != nil {
		if err := in.opts.Pause(ctx, "migrate-switch"); err != nil {
			return m, err
		}
	}

	began := time.Now()
	if err := in.app.Stop(ctx); err != nil {
		return m, fmt.Errorf("--migrate: stop %s on the backup for the switch: %w", in.State.Writer, err)
	}
	m.ShutdownMS = since(began)
	t := time.Now()
	sync := &treeCopy{src: src, dst: dst, root: in.root, seen: map[string]stamp{}, before: c.seen}
	err = sync.run(ctx)
	m.SyncMS, m.Synced = since(t), sync.bytes
	if err != nil {
		return m, in.restartAfter(ctx, fmt.Errorf("--migrate: copy what changed to %s: %w", dst, err))
	}
	t = time.Now()
	app, err := in.opts.Writer.Start(ctx, writer.Restore{Metadata: in.opts.Info.Metadata, Report: in.opts.Info.Report,
		DataDir: dst, Port: in.opts.Port, Listen: in.opts.Listen, Socket: in.opts.SocketDir})
	if err != nil {
		return m, in.restartAfter(ctx, fmt.Errorf("--migrate: start %s on %s: %w", in.State.Writer, dst, err))
	}
	m.StartMS, m.StopMS = since(t), since(began)
	m.Connect = app.Connect
	in.app = nil // it runs on dst now, on its own
	in.teardown(ctx)
	return m, nil
}

// restartAfter starts the application on the backup again after a failed
// switch, and returns cause (with the restart's failure, if it failed too).
func (in *Instance) restartAfter(ctx context.Context, cause error) error {
	app, err := in.opts.Writer.Start(ctx, writer.Restore{Metadata: in.opts.Info.Metadata, Report: in.opts.Info.Report,
		DataDir: in.app.DataDir, Port: in.opts.Port, Listen: in.opts.Listen, Socket: in.opts.SocketDir})
	if err != nil {
		return fmt.Errorf("%w; and starting it on the backup again failed: %v", cause, err)
	}
	in.app = app
	return fmt.Errorf("%w; it runs on the backup again", cause)
}

func since(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// stamp is what tells that a file changed between two copies: any write
// moves its modification or change time.
type stamp struct {
	size         int64
	mtime, ctime syscall.Timespec
	mode         uint32
}

func stampOf(st *syscall.Stat_t) stamp {
	return stamp{size: st.Size, mtime: st.Mtim, ctime: st.Ctim, mode: st.Mode}
}

// treeCopy copies the tree src to dst. A symbolic link that leads to a
// directory inside root (pg_wal kept elsewhere in the backup) is copied as
// that directory, so that dst holds the data itself; others are copied as
// links. With before (the stamps of an earlier copy), files whose stamp is
// unchanged are left alone and what is no longer in src is removed.
type treeCopy struct {
	src, dst, root string
	before, seen   map[string]stamp
	files          int
	bytes          int64
	progress       func(int, int64)
}

func (c *treeCopy) run(ctx context.Context) error {
	if err := c.copyDir(ctx, c.src, c.dst, ""); err != nil {
		return err
	}
	if c.before == nil {
		return nil
	}
	// Remove what the application deleted meanwhile, deepest first.
	var gone []string
	err := filepath.WalkDir(c.dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(c.dst, p)
		if _, ok := c.seen[rel]; !ok && rel != "." {
			gone = append(gone, p)
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range gone {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

func (c *treeCopy) copyDir(ctx context.Context, src, dst, rel string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(src, &st); err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := setOwnerMode(dst, &st); err != nil {
		return err
	}
	if rel != "" {
		c.seen[rel] = stampOf(&st)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, d, r := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), filepath.Join(rel, e.Name())
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			if target, ok := c.inside(s); ok {
				err = c.copyDir(ctx, target, d, r)
			} else {
				err = c.copyLink(s, d, r)
			}
		case e.IsDir():
			err = c.copyDir(ctx, s, d, r)
		case e.Type().IsRegular():
			err = c.copyFile(s, d, r)
		}
		if errors.Is(err, os.ErrNotExist) {
			continue // removed as it was listed: the next pass sees it gone
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// inside resolves the link at p and reports whether it leads to a
// directory within the view's root.
func (c *treeCopy) inside(p string) (string, bool) {
	target, err := filepath.EvalSymlinks(p)
	if err != nil || !strings.HasPrefix(target, c.root+string(filepath.Separator)) {
		return "", false
	}
	fi, err := os.Stat(target)
	return target, err == nil && fi.IsDir()
}

func (c *treeCopy) copyLink(src, dst, rel string) error {
	target, err := os.Readlink(src)
	if err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(src, &st); err != nil {
		return err
	}
	c.seen[rel] = stampOf(&st)
	if old, err := os.Readlink(dst); err == nil && old == target {
		return nil
	}
	_ = os.RemoveAll(dst)
	if err := os.Symlink(target, dst); err != nil {
		return err
	}
	return os.Lchown(dst, int(st.Uid), int(st.Gid))
}

// copyFile copies src to dst unless its stamp is what the earlier copy saw;
// the stamp is taken before the contents are read, so a write during the
// copy shows in the next pass.
func (c *treeCopy) copyFile(src, dst, rel string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(src, &st); err != nil {
		return err
	}
	s := stampOf(&st)
	c.seen[rel] = s
	if prev, ok := c.before[rel]; ok && prev == s {
		if _, err := os.Lstat(dst); err == nil {
			return nil
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	c.files++
	c.bytes += n
	if c.progress != nil {
		c.progress(c.files, c.bytes)
	}
	if err := setOwnerMode(dst, &st); err != nil {
		return err
	}
	return os.Chtimes(dst, time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()))
}

func setOwnerMode(p string, st *syscall.Stat_t) error {
	if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return os.Chmod(p, fs.FileMode(st.Mode&0o777))
}
