package archive

import (
	"errors"
	"fmt"
	"io/fs"
	"os/user"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/repository"
)

// names caches uid and gid lookups, which can be slow through NSS.
type names struct {
	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
}

func (n *names) user(uid uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.users[uid]; ok {
		return s
	}
	s := ""
	if u, err := user.LookupId(strconv.Itoa(int(uid))); err == nil {
		s = u.Username
	}
	n.users[uid] = s
	return s
}

func (n *names) group(gid uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.groups[gid]; ok {
		return s
	}
	s := ""
	if g, err := user.LookupGroupId(strconv.Itoa(int(gid))); err == nil {
		s = g.Name
	}
	n.groups[gid] = s
	return s
}

// nodeOf describes path (read without following a final symlink) as a
// node named name, with its xattrs, but without content or subtree.
func (a *archiver) nodeOf(path, name string) (repository.Node, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return repository.Node{}, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	n := repository.Node{
		Name:   repository.Name(name),
		Mode:   st.Mode & 07777,
		UID:    st.Uid,
		GID:    st.Gid,
		User:   a.names.user(st.Uid),
		Group:  a.names.group(st.Gid),
		MTime:  st.Mtim.Nano(),
		CTime:  st.Ctim.Nano(),
		Inode:  st.Ino,
		Device: st.Dev,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type, n.Size = repository.NodeFile, st.Size
	case unix.S_IFDIR:
		n.Type = repository.NodeDir
	case unix.S_IFLNK:
		n.Type = repository.NodeSymlink
		target, err := readlink(path)
		if err != nil {
			return n, err
		}
		n.Target = repository.Name(target)
	case unix.S_IFBLK:
		n.Type, n.Rdev = repository.NodeDev, st.Rdev
	case unix.S_IFCHR:
		n.Type, n.Rdev = repository.NodeCharDev, st.Rdev
	case unix.S_IFIFO:
		n.Type = repository.NodeFifo
	case unix.S_IFSOCK:
		n.Type = repository.NodeSocket
	default:
		return n, fmt.Errorf("%s: unknown file type %o", path, st.Mode&unix.S_IFMT)
	}
	if n.Type != repository.NodeDir {
		n.Links = uint64(st.Nlink)
	} else {
		n.Links = 0 // a directory's link count is its subdirectories, not hard links
	}
	xattrs, err := readXattrs(path)
	if err != nil {
		return n, err
	}
	n.Xattrs = xattrs
	return n, nil
}

func readlink(path string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlink(path, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: path, Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// readXattrs reads every extended attribute of path, not following a
// final symlink. A filesystem without xattrs has none.
func readXattrs(path string) ([]repository.Xattr, error) {
	size, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, &fs.PathError{Op: "listxattr", Path: path, Err: err}
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil, &fs.PathError{Op: "listxattr", Path: path, Err: err}
	}
	var out []repository.Xattr
	for _, name := range splitNul(buf[:size]) {
		vsize, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			return nil, &fs.PathError{Op: "getxattr " + name, Path: path, Err: err}
		}
		val := make([]byte, vsize)
		if vsize > 0 {
			if vsize, err = unix.Lgetxattr(path, name, val); err != nil {
				return nil, &fs.PathError{Op: "getxattr " + name, Path: path, Err: err}
			}
		}
		out = append(out, repository.Xattr{Name: repository.Name(name), Value: val[:vsize]})
	}
	return out, nil
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
