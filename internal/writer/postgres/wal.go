package postgres

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// segment is a WAL file name taken apart: timeline and segment number.
type segment struct {
	tli uint32
	no  uint64
}

// parseSegment reads a WAL file name such as 000000010000000000000002
// (timeline, then the segment number split in two 32-bit halves, of which
// the low one counts to 4 GiB / segSize).
func parseSegment(name string, segSize int64) (segment, error) {
	if len(name) != 24 {
		return segment{}, fmt.Errorf("%q is not a WAL file name", name)
	}
	var parts [3]uint64
	for i := range parts {
		v, err := strconv.ParseUint(name[i*8:i*8+8], 16, 32)
		if err != nil {
			return segment{}, fmt.Errorf("%q is not a WAL file name", name)
		}
		parts[i] = v
	}
	perID := uint64(0x100000000) / uint64(segSize)
	return segment{tli: uint32(parts[0]), no: parts[1]*perID + parts[2]}, nil
}

func (s segment) name(segSize int64) string {
	perID := uint64(0x100000000) / uint64(segSize)
	return fmt.Sprintf("%08X%08X%08X", s.tli, s.no/perID, s.no%perID)
}

// copyWAL copies the segments from first to last, and the timeline's
// history file if there is one, from src to dst. It returns the names
// copied, in order. A missing or short segment is an error: the backup
// would not recover.
func copyWAL(src, dst, first, last string, segSize int64) ([]string, error) {
	from, err := parseSegment(first, segSize)
	if err != nil {
		return nil, err
	}
	to, err := parseSegment(last, segSize)
	if err != nil {
		return nil, err
	}
	if from.tli != to.tli || to.no < from.no {
		return nil, fmt.Errorf("the backup starts in %s and stops in %s: the server changed timeline during the backup; try again", first, last)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return nil, err
	}
	var names []string
	if from.tli > 1 {
		h := fmt.Sprintf("%08X.history", from.tli)
		if _, err := os.Stat(filepath.Join(src, h)); err == nil {
			if _, err := copyFile(filepath.Join(src, h), filepath.Join(dst, h)); err != nil {
				return nil, err
			}
			names = append(names, h)
		}
	}
	for no := from.no; no <= to.no; no++ {
		name := segment{tli: from.tli, no: no}.name(segSize)
		n, err := copyFile(filepath.Join(src, name), filepath.Join(dst, name))
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%w: %s in %s (the replication slot should have kept it)", errNoSegment, name, src)
		}
		if err != nil {
			return nil, err
		}
		if n != segSize {
			return nil, fmt.Errorf("%s in %s has %d bytes, want %d", name, src, n, segSize)
		}
		names = append(names, name)
	}
	return names, nil
}

func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
