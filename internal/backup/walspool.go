package backup

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
)

// WALSpoolDir (writer.FetchSpoolDir) is where wal-fetch --prefetch leaves
// the segments it fetched ahead, beside PostgreSQL's %p (in pg_wal, where
// the server ignores what is not named as WAL): PostgreSQL runs
// restore_command once per segment, and each run that opens the repository
// spends about half a second on key derivation; a spooled segment is only
// renamed into place.
const WALSpoolDir = writer.FetchSpoolDir

// walSpoolLimit bounds what one prefetch spools, whatever the segment size.
const walSpoolLimit = 256 << 20

// TakeSpooled moves the spooled copy of the WAL file name to dst, if the
// spool beside dst holds one.
func TakeSpooled(name, dst string) (bool, error) {
	err := os.Rename(filepath.Join(filepath.Dir(dst), WALSpoolDir, name), dst)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// PrefetchWAL spools up to n archived segments that follow the segment name
// on its timeline (archived by writerName) beside dst, up to
// walSpoolLimit bytes. Names that are not segments (.history, .partial)
// prefetch nothing.
func PrefetchWAL(ctx context.Context, repo *repository.Repository, writerName, name, dst string, n int) error {
	if n <= 0 || !isSegment(name) {
		return nil
	}
	keys, err := repo.WALNames(ctx)
	if err != nil {
		return err
	}
	prefix := WALKey(writerName, "")
	var next []string
	for _, k := range keys {
		f, ok := strings.CutPrefix(k, prefix)
		if !ok || !isSegment(f) {
			continue
		}
		// PostgreSQL's names are upper-case hex; the repository's lower.
		if f = strings.ToUpper(f); f[:8] == name[:8] && f > name {
			next = append(next, f)
		}
	}
	slices.Sort(next)
	dir := filepath.Join(filepath.Dir(dst), WALSpoolDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	spooled := 0
	for _, f := range next[:min(n, len(next))] {
		final := filepath.Join(dir, f)
		if _, err := os.Stat(final); err == nil {
			continue
		}
		data, err := repo.LoadWAL(ctx, WALKey(writerName, f))
		if err != nil {
			return err
		}
		tmp := final + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return err
		}
		if spooled += len(data); spooled >= walSpoolLimit {
			break
		}
	}
	return nil
}

// isSegment reports whether name is a WAL segment's: 24 hex digits.
func isSegment(name string) bool {
	if len(name) != 24 {
		return false
	}
	for _, c := range name {
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
