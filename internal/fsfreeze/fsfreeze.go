// Package fsfreeze freezes and thaws filesystems (FIFREEZE/FITHAW). Linux has
// no time-out for a frozen filesystem: callers freeze only under the thaw
// guard (package guard), which thaws if umbra dies.
package fsfreeze

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW are _IOWR('X', 119/120, int) from linux/fs.h; x/sys
// does not export them. The encoding is the generic one (x86, arm, riscv).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Freeze freezes the filesystem mounted at mount: it flushes dirty data and
// blocks every new write until Thaw.
func Freeze(mount string) error {
	return ioctl(mount, fiFreeze, "freeze")
}

// Thaw releases a frozen filesystem. Thawing one that is not frozen is not an
// error, so Thaw is safe to call from every clean-up path.
func Thaw(mount string) error {
	err := ioctl(mount, fiThaw, "thaw")
	if errors.Is(err, unix.EINVAL) {
		return nil
	}
	return err
}

func ioctl(mount string, req uint, op string) error {
	f, err := os.Open(mount)
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, mount, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), req, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%s %s: the filesystem does not support freezing: %w", op, mount, err)
		}
		return fmt.Errorf("%s %s: %w", op, mount, err)
	}
	return nil
}
