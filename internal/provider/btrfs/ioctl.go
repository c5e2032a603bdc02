package btrfs

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// From linux/btrfs.h. Create runs inside the application's freeze window,
// so snapshots are taken with the ioctl, not by running btrfs(8).
const (
	iocSnapCreateV2   = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
	iocSnapDestroy    = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
	iocSubvolSetflags = 0x4008941a // _IOW(0x94, 26, __u64)

	subvolRdonly = 1 << 1 // BTRFS_SUBVOL_RDONLY

	// firstFreeObjectID is the inode number of every subvolume's root
	// directory (BTRFS_FIRST_FREE_OBJECTID).
	firstFreeObjectID = 256
)

// volArgsV2 is struct btrfs_ioctl_vol_args_v2.
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	_       [4]uint64 // union of qgroup_inherit size and pointer, unused
	name    [4040]byte
}

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// snapshot makes a snapshot of the subvolume rooted at src as dir/name.
func snapshot(src, dir, name string, readOnly bool) error {
	var args volArgsV2
	if err := setName(args.name[:], name); err != nil {
		return err
	}
	srcFd, err := openDir(src)
	if err != nil {
		return err
	}
	defer unix.Close(srcFd)
	dirFd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dirFd)
	args.fd = int64(srcFd)
	if readOnly {
		args.flags = subvolRdonly
	}
	if err := ioctl(dirFd, iocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return &os.PathError{Op: "snapshot " + src + " as", Path: dir + "/" + name, Err: err}
	}
	return nil
}

// destroy deletes the subvolume dir/name, clearing its read-only flag first
// if the kernel refuses to delete a read-only subvolume.
func destroy(dir, name string) error {
	var args volArgs
	if err := setName(args.name[:], name); err != nil {
		return err
	}
	dirFd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dirFd)
	err = ioctl(dirFd, iocSnapDestroy, unsafe.Pointer(&args))
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS) {
		if werr := setWritable(dir + "/" + name); werr == nil {
			err = ioctl(dirFd, iocSnapDestroy, unsafe.Pointer(&args))
		}
	}
	if err != nil {
		return &os.PathError{Op: "delete subvolume", Path: dir + "/" + name, Err: err}
	}
	return nil
}

// setWritable clears the read-only flag of the subvolume rooted at path.
func setWritable(path string) error {
	fd, err := openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var flags uint64
	return ioctl(fd, iocSubvolSetflags, unsafe.Pointer(&flags))
}

func setName(dst []byte, name string) error {
	if len(name) >= len(dst) {
		return fmt.Errorf("subvolume name %.40q...: longer than %d bytes", name, len(dst)-1)
	}
	copy(dst, name)
	return nil
}

func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		default:
			return errno
		}
	}
}
