package reflink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cloner recreates files below mount under setDir for one Create.
type cloner struct {
	ctx       context.Context
	mount     string
	shadowDir string // never descended into
	setDir    string
	root      unix.Statx_t // of mount: its mount id bounds the walk

	dirs  []dirMeta        // made so far, in order; their metadata is set last
	made  map[string]bool  // source directories already made
	links map[inode]string // copies of files with several hard links
}

// dirMeta is a directory whose mode, owner and times are applied after its
// entries are made, since making them changes its mtime.
type dirMeta struct {
	dst string
	st  unix.Statx_t
}

type inode struct {
	major, minor uint32
	ino          uint64
}

// copyPath copies path, after making its parent directories.
func (c *cloner) copyPath(path string) error {
	var parents []string
	for dir := path; dir != c.mount; {
		dir = filepath.Dir(dir)
		parents = append(parents, dir)
	}
	for i := len(parents) - 1; i >= 0; i-- {
		if c.made[parents[i]] {
			continue
		}
		var st unix.Statx_t
		if err := statx(parents[i], &st); err != nil {
			return err
		}
		if err := c.mkdir(parents[i], &st); err != nil {
			return err
		}
	}
	var st unix.Statx_t
	if err := statx(path, &st); err != nil {
		return err
	}
	if !c.sameMount(&st) {
		return fmt.Errorf("clone %s: it is on another mount than %s", path, c.mount)
	}
	return c.copy(path, &st)
}

// copy copies one file, or a directory and what lies below it on the same
// mount. Devices, fifos and sockets are skipped: they hold no data.
func (c *cloner) copy(src string, st *unix.Statx_t) error {
	if err := c.ctx.Err(); err != nil {
		return fmt.Errorf("clone %s: %w", src, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.copyDir(src, st)
	case unix.S_IFREG:
		return c.clone(src, st)
	case unix.S_IFLNK:
		return c.symlink(src, st)
	}
	return nil
}

func (c *cloner) copyDir(src string, st *unix.Statx_t) error {
	if err := c.mkdir(src, st); err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	for _, name := range names {
		path := filepath.Join(src, name)
		if path == c.shadowDir {
			continue
		}
		var st unix.Statx_t
		if err := statx(path, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && !c.sameMount(&st) {
			continue // another volume, with its own provider
		}
		if err := c.copy(path, &st); err != nil {
			return err
		}
	}
	return nil
}

// mkdir makes the copy of the directory src, owner-only until finishDirs.
func (c *cloner) mkdir(src string, st *unix.Statx_t) error {
	if c.made[src] {
		return nil
	}
	dst := c.dst(src)
	if src != c.mount {
		if err := unix.Mkdir(dst, 0o700); err != nil {
			return &os.PathError{Op: "clone: mkdir", Path: dst, Err: err}
		}
	}
	c.made[src] = true
	c.dirs = append(c.dirs, dirMeta{dst: dst, st: *st})
	return nil
}

// clone copies a regular file by sharing its extents.
func (c *cloner) clone(src string, st *unix.Statx_t) error {
	dst := c.dst(src)
	key := inode{st.Dev_major, st.Dev_minor, st.Ino}
	if st.Nlink > 1 {
		if first, ok := c.links[key]; ok {
			if err := os.Link(first, dst); err != nil {
				return fmt.Errorf("clone: %w", err)
			}
			return nil
		}
	}
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "clone: open", Path: src, Err: err}
	}
	defer unix.Close(sfd)
	dfd, err := unix.Open(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "clone: create", Path: dst, Err: err}
	}
	err = c.fill(sfd, dfd, src, st)
	if cerr := unix.Close(dfd); err == nil && cerr != nil {
		err = &os.PathError{Op: "clone: close", Path: dst, Err: cerr}
	}
	if err != nil {
		return err
	}
	if err := setTimes(dst, st); err != nil {
		return err
	}
	if st.Nlink > 1 {
		c.links[key] = dst
	}
	return nil
}

func (c *cloner) fill(sfd, dfd int, src string, st *unix.Statx_t) error {
	if st.Size > 0 {
		err := unix.IoctlFileClone(dfd, sfd)
		if errors.Is(err, unix.EINVAL) && matchNoCOW(sfd, dfd) {
			err = unix.IoctlFileClone(dfd, sfd)
		}
		if err != nil {
			return &os.PathError{Op: "clone: FICLONE", Path: src, Err: err}
		}
	}
	// Owner before mode: chown clears set-user-ID and set-group-ID bits.
	if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
		return &os.PathError{Op: "clone: chown copy of", Path: src, Err: err}
	}
	if err := unix.Fchmod(dfd, uint32(st.Mode&0o7777)); err != nil {
		return &os.PathError{Op: "clone: chmod copy of", Path: src, Err: err}
	}
	return nil
}

// fsNoCOWFl is FS_NOCOW_FL (chattr +C) from linux/fs.h.
const fsNoCOWFl = 0x00800000

// matchNoCOW gives the empty copy the source's nodatacow flag, which btrfs
// requires of both ends of a clone, and reports whether that changed it.
func matchNoCOW(sfd, dfd int) bool {
	sflags, err := unix.IoctlGetInt(sfd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false
	}
	dflags, err := unix.IoctlGetInt(dfd, unix.FS_IOC_GETFLAGS)
	if err != nil || (sflags^dflags)&fsNoCOWFl == 0 {
		return false
	}
	dflags = dflags&^fsNoCOWFl | sflags&fsNoCOWFl
	return unix.IoctlSetPointerInt(dfd, unix.FS_IOC_SETFLAGS, dflags) == nil
}

func (c *cloner) symlink(src string, st *unix.Statx_t) error {
	dst := c.dst(src)
	target, err := os.Readlink(src)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	if err := os.Symlink(target, dst); err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return &os.PathError{Op: "clone: chown", Path: dst, Err: err}
	}
	return setTimes(dst, st)
}

// finishDirs gives the directories their mode, owner and times, children
// before parents so that a read-only parent does not get in the way.
func (c *cloner) finishDirs() error {
	for i := len(c.dirs) - 1; i >= 0; i-- {
		d := c.dirs[i]
		if err := unix.Lchown(d.dst, int(d.st.Uid), int(d.st.Gid)); err != nil {
			return &os.PathError{Op: "clone: chown", Path: d.dst, Err: err}
		}
		if err := unix.Fchmodat(unix.AT_FDCWD, d.dst, uint32(d.st.Mode&0o7777), 0); err != nil {
			return &os.PathError{Op: "clone: chmod", Path: d.dst, Err: err}
		}
		if err := setTimes(d.dst, &d.st); err != nil {
			return err
		}
	}
	return nil
}

func (c *cloner) sameMount(st *unix.Statx_t) bool {
	if st.Mask&unix.STATX_MNT_ID == 0 || c.root.Mask&unix.STATX_MNT_ID == 0 {
		return true // kernel before 5.8: trust the caller
	}
	return st.Mnt_id == c.root.Mnt_id
}

// dst maps a path at or below mount (topmost checked) to its copy.
func (c *cloner) dst(src string) string {
	return filepath.Join(c.setDir, strings.TrimPrefix(src, c.mount))
}

func statx(path string, st *unix.Statx_t) error {
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW,
		unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, st)
	if err != nil {
		return &os.PathError{Op: "clone: stat", Path: path, Err: err}
	}
	return nil
}

func setTimes(path string, st *unix.Statx_t) error {
	ts := []unix.Timespec{
		unix.NsecToTimespec(time.Unix(st.Atime.Sec, int64(st.Atime.Nsec)).UnixNano()),
		unix.NsecToTimespec(time.Unix(st.Mtime.Sec, int64(st.Mtime.Nsec)).UnixNano()),
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "clone: set times of", Path: path, Err: err}
	}
	return nil
}
