package redis

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/umbra-backup/umbra/internal/writer"
)

// copyTries bounds how often copyAOF starts again because a rewrite
// replaced the manifest while it opened the files.
const copyTries = 5

// copyAOF is the writer's own copy of the append-only data where no
// provider can copy it atomically (ext4): Redis only appends to the last
// incremental file, and a rewrite writes new files and a new manifest
// (by rename) before it deletes the old ones. So the manifest is read, every
// file it names opened (an open file outlives its deletion), the manifest
// read again to see that no rewrite came between, and each file copied up
// to its size then: a prefix of the append-only data holding every write
// acknowledged before, since Redis writes to the file before it replies (a
// command cut short at the end is what aof-load-truncated, on by default,
// lets Redis load). Before Redis 7 the data is one file, replaced by
// rename: a prefix of it is as good.
func (w *Writer) copyAOF(ctx context.Context, set writer.Set, aofPath, manifestName string) (string, error) {
	scratch, err := set.ScratchFor(w.name)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(scratch, "aof", filepath.Base(aofPath))
	if err := os.RemoveAll(filepath.Dir(dst)); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	fi, err := os.Stat(aofPath)
	if err != nil {
		return "", err
	}
	if err := writer.CheckRoom(scratch, aofPath); err != nil {
		return "", err
	}
	if !fi.IsDir() {
		// Before Redis 7: one file, which a rewrite replaces by rename.
		// Its size is the opened file's, and it is cut after its last
		// whole command unless it starts with an RDB preamble, which
		// this does not parse (aof-load-truncated loads such a cut).
		f, err := os.Open(aofPath)
		if err != nil {
			return "", err
		}
		defer f.Close()
		if fi, err = f.Stat(); err != nil {
			return "", err
		}
		if err := copyOpen(f, dst, fi); err != nil {
			return "", err
		}
		head := make([]byte, 5)
		if n, _ := f.ReadAt(head, 0); n == 5 && string(head) == "REDIS" {
			return dst, nil
		}
		return dst, trimToCommand(dst)
	}
	for try := 0; try < copyTries; try++ {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		done, err := copyAOFDir(aofPath, manifestName, dst, fi)
		if done || err != nil {
			return dst, err
		}
	}
	return "", fmt.Errorf("rewrites of %s replaced its manifest %d times while umbra copied it; try again when Redis is less busy rewriting", aofPath, copyTries)
}

// copyAOFDir makes one try of copyAOF for a Redis 7 directory; it reports
// false when a rewrite came between.
func copyAOFDir(dir, manifestName, dst string, dirInfo fs.FileInfo) (bool, error) {
	manifest := filepath.Join(dir, manifestName)
	m1, err := os.ReadFile(manifest)
	if err != nil {
		return false, err
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for line := range strings.Lines(string(m1)) {
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "file" {
			continue
		}
		f, err := os.Open(filepath.Join(dir, strings.Trim(fields[1], `"`)))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // deleted by a rewrite since the manifest was read
		}
		if err != nil {
			return false, err
		}
		files = append(files, f)
	}
	if m2, err := os.ReadFile(manifest); err != nil || !bytes.Equal(m1, m2) {
		return false, err
	}
	if err := os.RemoveAll(dst); err != nil {
		return false, err
	}
	if err := os.Mkdir(dst, dirInfo.Mode().Perm()); err != nil {
		return false, err
	}
	for i, f := range files {
		fi, err := f.Stat()
		if err != nil {
			return false, err
		}
		out := filepath.Join(dst, filepath.Base(f.Name()))
		if err := copyOpen(f, out, fi); err != nil {
			return false, err
		}
		// The last file is the incremental one Redis appends to: a
		// command it was writing as the copy read is cut off, so that
		// the copy loads with aof-load-truncated off too.
		if i == len(files)-1 && !strings.HasSuffix(f.Name(), ".rdb") {
			if err := trimToCommand(out); err != nil {
				return false, err
			}
		}
	}
	mfi, err := os.Stat(manifest)
	if err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(dst, manifestName), m1, mfi.Mode().Perm()); err != nil {
		return false, err
	}
	if err := chown(filepath.Join(dst, manifestName), mfi); err != nil {
		return false, err
	}
	return true, chown(dst, dirInfo)
}

// copyOpen copies the first fi.Size() bytes of f to dst, with fi's mode
// and owner.
func copyOpen(f *os.File, dst string, fi fs.FileInfo) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return chown(dst, fi)
}

// chown gives path the owner of fi, as root only.
func chown(path string, fi fs.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		return os.Lchown(path, int(st.Uid), int(st.Gid))
	}
	return nil
}

// trimToCommand truncates an append-only file after its last complete
// command (RESP arrays of bulk strings, as Redis writes them).
func trimToCommand(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	end, err := completeCommands(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Truncate(end); err != nil {
		return err
	}
	return f.Close()
}

// completeCommands returns the length of the longest prefix of r that
// holds only whole commands (RESP arrays of bulk strings, and the #
// annotations Redis 7 may write), never ending inside a MULTI … EXEC
// block. A malformed command (not a cut one) is an error: the copy would
// not be what Redis wrote.
func completeCommands(r *bufio.Reader) (int64, error) {
	var end, off int64
	inMulti := false
	line := func() (string, bool, error) {
		s, err := r.ReadString('\n')
		off += int64(len(s))
		if err == io.EOF {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		return strings.TrimSuffix(s, "\r\n"), true, nil
	}
	for {
		head, ok, err := line()
		if err != nil || !ok {
			return end, err
		}
		if strings.HasPrefix(head, "#") {
			if !inMulti {
				end = off // an annotation (aof-timestamp-enabled), whole
			}
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(head, "*"))
		if !strings.HasPrefix(head, "*") || err != nil || n < 0 {
			return end, fmt.Errorf("at byte %d: %q is not the start of a command", end, head)
		}
		var name string
		for i := range n {
			h, ok, err := line()
			if err != nil || !ok {
				return end, err
			}
			size, err := strconv.Atoi(strings.TrimPrefix(h, "$"))
			if !strings.HasPrefix(h, "$") || err != nil || size < 0 {
				return end, fmt.Errorf("at byte %d: %q is not a bulk string", off-int64(len(h))-2, h)
			}
			if i == 0 && size <= 16 {
				b := make([]byte, size+2)
				got, err := io.ReadFull(r, b)
				off += int64(got)
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					return end, nil
				}
				if err != nil {
					return end, err
				}
				name = strings.ToUpper(string(b[:size]))
				continue
			}
			got, err := io.CopyN(io.Discard, r, int64(size)+2)
			off += got
			if err == io.EOF {
				return end, nil
			}
			if err != nil {
				return end, err
			}
		}
		switch name {
		case "MULTI":
			inMulti = true
		case "EXEC", "DISCARD":
			inMulti = false
		}
		if !inMulti {
			end = off
		}
	}
}
