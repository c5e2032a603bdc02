// Package mounts reads the mount table and finds the volume that holds a
// path.
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/umbra-backup/umbra/internal/provider"
)

// Table returns the mounted filesystems of this process's mount namespace,
// in the order of /proc/self/mountinfo.
func Table() ([]provider.Volume, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	vols, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return vols, nil
}

// parse reads the mountinfo format described in proc(5):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// A volume is read-only if either the mount or the superblock is.
func parse(r io.Reader) ([]provider.Volume, error) {
	var vols []provider.Volume
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if sep < 6 || len(fields) < sep+3 {
			return nil, fmt.Errorf("line %d: malformed mountinfo entry %q", n, line)
		}
		vol := provider.Volume{
			Mount:    unescape(fields[4]),
			Device:   unescape(fields[sep+2]),
			FSType:   unescape(fields[sep+1]),
			ReadOnly: hasOption(fields[5], "ro"),
		}
		if len(fields) > sep+3 && hasOption(fields[sep+3], "ro") {
			vol.ReadOnly = true
		}
		vols = append(vols, vol)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return vols, nil
}

func hasOption(opts, name string) bool {
	return slices.Contains(strings.Split(opts, ","), name)
}

// unescape undoes the kernel's octal escapes of space, tab, newline and
// backslash (\040, \011, \012, \134).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// VolumeOf returns the volume in table that holds path, after resolving
// symbolic links. The path must exist. The deepest mount point wins; of
// several mounts at the same point, the last in the table is the one on
// top.
func VolumeOf(table []provider.Volume, path string) (provider.Volume, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return provider.Volume{}, fmt.Errorf("path %s: %w", path, err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return provider.Volume{}, fmt.Errorf("path %s: %w; fix the path or create it first", path, syscall.ENOENT)
	}
	if err != nil {
		return provider.Volume{}, fmt.Errorf("resolve path %s: %w", path, err)
	}
	best := -1
	for i, vol := range table {
		if !provider.Within(resolved, vol.Mount) {
			continue
		}
		if best < 0 || len(filepath.Clean(vol.Mount)) >= len(filepath.Clean(table[best].Mount)) {
			best = i
		}
	}
	if best < 0 {
		return provider.Volume{}, fmt.Errorf("path %s: no mounted filesystem holds %s; is /proc mounted?", path, resolved)
	}
	return table[best], nil
}
