package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/umbra-backup/umbra/internal/mounts"
	"github.com/umbra-backup/umbra/internal/repository"
)

// fsName is what the mount table shows: fstype fuse.umbra.
const fsName = "umbra"

// Serve mounts repo read-only at mountpoint and serves it until ctx ends or
// the mount is unmounted (umbra mount --unmount, umount), then unmounts.
// A mount of umbra left at mountpoint by a process that died (kill -9) is
// cleaned up first. ready, if set, is called once the mount answers.
func Serve(ctx context.Context, repo *repository.Repository, mountpoint string, opts Options, ready func()) error {
	timeout := time.Hour // a backup never changes: the kernel may keep what it learnt
	return serve(ctx, mountpoint, Root(ctx, repo, opts), &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "umbra:" + repo.Backend().Location(), Name: fsName, DirectMount: true,
			Options: []string{"ro", "default_permissions"}, AllowOther: os.Geteuid() == 0,
			// Reads of up to 1 MiB (the kernel's most), ahead of a
			// sequential reader too: fewer, larger calls.
			MaxWrite: 1 << 20, MaxReadAhead: 1 << 20, DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
			// Replies come from memory: splicing them gains nothing, and a
			// 1 MiB read's reply does not fit a pipe (go-fuse logs each).
			DisableSplice: true,
		},
		EntryTimeout: &timeout, AttrTimeout: &timeout,
	}, ready)
}

// ServeWritable mounts a writable view of the backup whose root tree is
// tree at mountpoint (WritableRoot: changes kept in upper, the repository
// never written) and serves it until ctx ends or it is unmounted.
func ServeWritable(ctx context.Context, repo *repository.Repository, tree repository.ID, mountpoint, upper string, opts Options, ready func()) error {
	// Names change only through this mount, which the kernel sees; sizes
	// and times are asked for each time (a copy compares them).
	entries, attrs := time.Hour, time.Duration(0)
	return serve(ctx, mountpoint, WritableRoot(ctx, repo, tree, upper, opts), &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "umbra-run:" + repo.Backend().Location(), Name: fsName, DirectMount: true,
			Options: []string{"default_permissions"}, AllowOther: true,
			MaxWrite: 1 << 20, MaxReadAhead: 1 << 20, DirectMountFlags: syscall.MS_NOSUID | syscall.MS_NODEV, DisableSplice: true,
		},
		EntryTimeout: &entries, AttrTimeout: &attrs,
	}, ready)
}

func serve(ctx context.Context, mountpoint string, root fs.InodeEmbedder, opts *fs.Options, ready func()) error {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	if err := cleanStale(mp); err != nil {
		return err
	}
	fi, err := os.Stat(mp)
	if err != nil {
		return fmt.Errorf("mount point %s: %w; make the directory first", mp, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", mp)
	}
	server, err := fs.Mount(mp, root, opts)
	if err != nil {
		return fmt.Errorf("mount %s: %w (FUSE: /dev/fuse and the fuse module are needed)", mp, err)
	}
	closeOnExec()
	if ready != nil {
		ready()
	}
	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-done: // unmounted from outside
		return nil
	case <-ctx.Done():
	}
	if err := server.Unmount(); err != nil {
		// Busy: a process has a file open. Detach it, so nothing stays
		// mounted without a server behind it.
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	// A detached mount's connection lives until its last open file is
	// closed: umbra does not wait for that, it exits, which ends it.
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	return nil
}

// Mounted reports whether an umbra mount is at mp, per the mount table.
func Mounted(mp string) (bool, error) {
	table, err := mounts.Table()
	if err != nil {
		return false, err
	}
	for _, v := range table {
		if v.Mount == mp && v.FSType == "fuse."+fsName {
			return true, nil
		}
	}
	return false, nil
}

// cleanStale unmounts an umbra mount at mp whose server is gone (its
// directory answers ENOTCONN), and refuses one that still answers.
func cleanStale(mp string) error {
	mounted, err := Mounted(mp)
	if err != nil || !mounted {
		return err
	}
	if !gone(mp) {
		return fmt.Errorf("%s is already an umbra mount; umbra mount --unmount %s ends it", mp, mp)
	}
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("clean up the mount a killed umbra left at %s: %w", mp, err)
	}
	return nil
}

// gone reports whether the FUSE mount at mp has no server: listing it
// (which the kernel cannot answer from its cache, as it may a stat) fails
// with ENOTCONN. A server that does not answer within 10 s is taken to be
// alive (a hung one is not unmounted from under its readers).
func gone(mp string) bool {
	res := make(chan error, 1)
	go func() {
		f, err := os.Open(mp)
		if err == nil {
			_, err = f.Readdirnames(1)
			f.Close()
		}
		res <- err
	}()
	select {
	case err := <-res:
		return errors.Is(err, syscall.ENOTCONN)
	case <-time.After(10 * time.Second):
		return false
	}
}

// Unmount ends the umbra mount at mountpoint; the umbra mount serving it
// then exits.
func Unmount(mountpoint string) error {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	mounted, err := Mounted(mp)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("no umbra mount at %s", mp)
	}
	if err := syscall.Unmount(mp, 0); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%s is busy: a process has a file or its working directory there (fuser -vm %s); close it and try again", mp, mp)
		}
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	return nil
}

// closeOnExec marks this process's /dev/fuse descriptors close-on-exec:
// go-fuse opens it without, and a server umbra run starts must not hold
// the connection. One that did would keep a mount whose umbra was killed
// alive with nobody answering, and its exit would hang on it for good.
func closeOnExec() {
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, e := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				syscall.CloseOnExec(fd)
			}
		}
	}
}
