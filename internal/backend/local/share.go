package local

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Share lets the group gid read the repository in dir and write the types in
// writable: every directory becomes group gid with read, search and
// set-group-ID (so what is made in it later belongs to gid too), every file
// group-readable, and the directories of writable types group-writable. The
// owner keeps full control; nobody else gets anything. From then on every Backend opened on the directory makes its files 0640 and its
// directories 0750.
//
// PostgreSQL's archive_command runs umbra wal-push as postgres: Share(dir,
// postgres's gid, TypeWAL) is what it needs.
func Share(dir string, gid int, writable ...backend.Type) error {
	b, err := Open(dir)
	if err != nil {
		return err
	}
	write := map[string]bool{}
	for _, t := range writable {
		write[filepath.Join(b.dir, string(t))] = true
	}
	err = filepath.WalkDir(b.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		if !d.IsDir() {
			return os.Chmod(path, fileMode|0o040)
		}
		mode := fs.FileMode(dirMode|0o050) | fs.ModeSetgid
		if write[path] {
			mode |= 0o020
		}
		return os.Chmod(path, mode)
	})
	if err != nil {
		return fmt.Errorf("share repository %s with group %d: %w", b.dir, gid, err)
	}
	return syncDir(b.dir)
}
