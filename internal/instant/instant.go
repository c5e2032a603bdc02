// Package instant brings a writer's application up straight from a backup
// (umbra run, instant recovery): the backup is mounted as a writable view
// (FUSE, mount.ServeWritable: the blocks the application writes go to a
// local directory, the others are read from the repository, which is never
// written), and the writer (a writer.Runner) starts its application there.
// Nothing is restored first: the time to the first answered query is the
// application's recovery, not the size of its data. Migrate then copies
// the data to a real directory while it serves and switches the
// application over with one short stop.
//
// A kernel overlay over a read-only mount was tried first and dropped: it
// copies a whole file up when it is opened for writing (PostgreSQL opens
// every relation file read-write, so its first query copied gigabytes),
// and renaming over a file of a FUSE lower layer failed with ESTALE.
package instant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/mount"
	"github.com/umbra-backup/umbra/internal/mounts"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// stateFile, in an instance's directory, records it for umbra run --stop
// and --list, and for the clean-up of one whose umbra was killed.
const stateFile = "instance.json"

// State is what an instance records of itself.
type State struct {
	PID     int       `json:"pid"`
	Backup  string    `json:"backup"`
	Writer  string    `json:"writer"`
	Port    int       `json:"port,omitempty"`
	Connect string    `json:"connect"`
	Socket  string    `json:"socket,omitempty"`
	DataDir string    `json:"data_dir"`
	Upper   string    `json:"writes"`
	Work    string    `json:"work"`
	Started time.Time `json:"started"`
	// ReadyMS is the time from the command's start until the application
	// accepted connections.
	ReadyMS float64 `json:"ready_ms"`
}

// Options says what to bring up, and where.
type Options struct {
	Repo   *repository.Repository
	Entry  repository.ManifestEntry
	Info   backup.WriterInfo
	Writer writer.Runner
	// Dir is where the instance is recorded (private to umbra); it is
	// removed when the instance stops.
	Dir string
	// Work holds the mount point and what the application writes: on a
	// local file system with room for the writes, reachable by the
	// application's user. It is made if absent; what the instance made
	// there is removed when it stops.
	Work string
	// SocketDir holds the application's socket; it is kept after a
	// migration, which leaves the application running on it.
	SocketDir  string
	Port       int
	Listen     string
	CacheBytes int64
	// Begun is when the command began, for ReadyMS; default now.
	Begun time.Time
	// Pause, if set, is called at "migrate-switch", before the
	// application is stopped for the switch (tests hold it there).
	Pause func(ctx context.Context, point string) error
}

// Instance is an application running on a backup.
type Instance struct {
	State State
	opts  Options
	dir   string
	root  string // the backup's tree, writable
	app   *writer.Running
	// fuseStop ends the mount's server; fuseDone is closed when it has.
	fuseStop context.CancelFunc
	fuseDone chan struct{}
}

// Start mounts the backup's tree writable and starts the writer's application there. Whatever it set up is taken down
// again if it fails. ctx must outlive the instance: the mount serves until
// it ends or Stop is called.
func Start(ctx context.Context, o Options) (_ *Instance, err error) {
	if o.Begun.IsZero() {
		o.Begun = time.Now()
	}
	if err := Clean(o.Dir); err != nil {
		return nil, err
	}
	if err := ownDir(o.Work); err != nil {
		return nil, err
	}
	in := &Instance{opts: o, dir: o.Dir, root: filepath.Join(o.Work, "root"), fuseDone: make(chan struct{})}
	upper := filepath.Join(o.Work, "upper")
	if entries, err := os.ReadDir(upper); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%s holds the writes of another instance; give another --datadir, or remove it", upper)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("instance directory: %w", err)
	}
	defer func() {
		if err != nil {
			in.teardown(context.WithoutCancel(ctx))
		}
	}()
	// Recorded before anything is mounted, so that a killed umbra's
	// leftovers are found.
	in.State = State{PID: os.Getpid(), Backup: o.Entry.ID.String(), Writer: o.Info.Name, Port: o.Port, Upper: upper, Work: o.Work}
	if err := in.save(); err != nil {
		return nil, err
	}
	for _, d := range []string{in.root, upper} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("instance directory: %w", err)
		}
	}
	if err := in.mountBackup(ctx, upper); err != nil {
		return nil, err
	}
	if _, err := backup.PlaceHandOnFrom(o.Info, in.root, in.root); err != nil {
		return nil, fmt.Errorf("writer %s: %w", o.Info.Name, err)
	}
	if err := os.MkdirAll(o.SocketDir, 0o755); err != nil {
		return nil, err
	}
	in.app, err = o.Writer.Start(ctx, writer.Restore{Metadata: o.Info.Metadata, Report: o.Info.Report, Target: in.root,
		Port: o.Port, Listen: o.Listen, Socket: o.SocketDir})
	if err != nil {
		return nil, err
	}
	in.State.Connect, in.State.Socket, in.State.DataDir = in.app.Connect, in.app.Socket, in.app.DataDir
	in.State.Started, in.State.ReadyMS = time.Now().UTC(), since(o.Begun)
	if err := in.save(); err != nil {
		return nil, err
	}
	return in, nil
}

// mountBackup serves the writable view of the backup at the instance's
// root, in this process, until fuseStop.
func (in *Instance) mountBackup(ctx context.Context, upper string) error {
	// The mount outlives the command's context: on Ctrl-C the application
	// must shut down on it first; teardown ends it.
	fctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	in.fuseStop = stop
	ready := make(chan struct{})
	failed := make(chan error, 1)
	go func() {
		defer close(in.fuseDone)
		err := mount.ServeWritable(fctx, in.opts.Repo, in.opts.Entry.Manifest.Tree, in.root, upper, mount.Options{CacheBytes: in.opts.CacheBytes}, func() { close(ready) })
		failed <- err
	}()
	select {
	case <-ready:
		return nil
	case err := <-failed:
		if err == nil {
			err = errors.New("it ended at once")
		}
		return fmt.Errorf("mount backup %s: %w", in.opts.Entry.ID.Short(), err)
	}
}

func (in *Instance) save() error {
	b, err := json.MarshalIndent(in.State, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(in.dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(in.dir, stateFile))
}

// Stop shuts the application down and unmounts the backup; the instance's
// writes are discarded.
func (in *Instance) Stop(ctx context.Context) error {
	var err error
	if in.app != nil && in.app.Stop != nil {
		err = in.app.Stop(ctx)
	}
	in.teardown(ctx)
	return err
}

// teardown kills what still runs on the mount, unmounts it, and removes
// the instance's directory and writes.
func (in *Instance) teardown(ctx context.Context) {
	unmount(in.root)
	if in.fuseStop != nil {
		in.fuseStop()
		select {
		case <-in.fuseDone:
		case <-ctx.Done():
		case <-time.After(30 * time.Second):
		}
	}
	removeWork(in.State.Work)
	_ = os.RemoveAll(in.dir)
}

// removeWork removes what an instance made in its work directory (the
// mount point, the writes), and the directory itself if that leaves it
// empty.
func removeWork(dir string) {
	if dir == "" {
		return
	}
	for _, d := range []string{"root", "upper"} {
		_ = os.RemoveAll(filepath.Join(dir, d))
	}
	_ = os.Remove(dir)
}

// ownDir makes dir (0755) or checks that it is a directory of umbra's
// user, not a link: it may lie in a shared place such as /var/tmp.
func ownDir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("work directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%s is not a directory of umbra's own user; remove it or give another --datadir", dir)
	}
	return os.Chmod(dir, 0o755)
}

// unmount ends whatever runs with its working directory on the mount at
// root and unmounts it (detached if still busy).
func unmount(root string) {
	if !isMount(root) {
		return
	}
	if err := syscall.Unmount(root, 0); err == nil {
		return
	}
	process.KillInside(root)
	if err := syscall.Unmount(root, 0); err != nil {
		_ = syscall.Unmount(root, syscall.MNT_DETACH)
	}
}

func isMount(p string) bool {
	table, err := mounts.Table()
	if err != nil {
		return false
	}
	for _, m := range table {
		if m.Mount == p {
			return true
		}
	}
	return false
}

// Read returns the state of the instance in dir; os.ErrNotExist if none.
func Read(dir string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// Running reports whether the umbra serving the instance in dir is alive.
func Running(dir string) (State, bool) {
	st, err := Read(dir)
	return st, err == nil && st.PID != os.Getpid() && process.Alive(st.PID)
}

// Clean takes down an instance left in dir by an umbra that was killed
// (its application killed, its mount detached, its writes
// removed), and refuses one whose umbra still runs.
func Clean(dir string) error {
	st, alive := Running(dir)
	if alive {
		return fmt.Errorf("%s from backup %s already runs from %s (umbra pid %d); umbra run --stop --writer %s ends it", st.Writer, shortID(st.Backup), dir, st.PID, st.Writer)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if st.Work != "" {
		root := filepath.Join(st.Work, "root")
		process.KillInside(root)
		if isMount(root) {
			if err := syscall.Unmount(root, syscall.MNT_DETACH); err != nil {
				return fmt.Errorf("clean up the mount a killed umbra run left at %s: %w", root, err)
			}
		}
	}
	removeWork(st.Work)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove what a killed umbra run left in %s: %w", dir, err)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
