package provider

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// SetDir returns <mount>/.umbra-shadow/<setID>, the directory in which a
// provider that keeps copies on the volume itself puts one set's copies. It
// refuses a set id that is not one path element and a mount that is not an
// absolute path, so that a damaged record can never aim Delete at live data.
func SetDir(mount, setID string) (string, error) {
	if setID == "" || setID == "." || setID == ".." || strings.ContainsAny(setID, "/\x00") || len(setID) > 200 {
		return "", fmt.Errorf("set id %q: must be one path element of at most 200 bytes", setID)
	}
	if !filepath.IsAbs(mount) {
		return "", fmt.Errorf("set %s: volume mount %q is not an absolute path", setID, mount)
	}
	return filepath.Join(filepath.Clean(mount), ShadowDir, setID), nil
}

// MakeSetDir creates setDir (from SetDir) and the .umbra-shadow directory
// above it. A set directory that exists already is an error: set ids are
// unique, so it belongs to another set.
func MakeSetDir(setDir string) error {
	if err := os.Mkdir(filepath.Dir(setDir), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make shadow directory: %w", err)
	}
	if err := os.Mkdir(setDir, 0o700); err != nil {
		err = fmt.Errorf("make set directory: %w", err)
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%w; a set with this id exists, delete it first", err)
		}
		return errors.Join(err, removeIfEmpty(filepath.Dir(setDir)))
	}
	return nil
}

// RemoveSetDir removes a set's emptied directory, and the .umbra-shadow
// directory above it unless another set still lives there.
func RemoveSetDir(setDir string) error {
	if err := os.Remove(setDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove set directory: %w", err)
	}
	return removeIfEmpty(filepath.Dir(setDir))
}

func removeIfEmpty(dir string) error {
	err := os.Remove(dir)
	if err == nil || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return nil
	}
	return fmt.Errorf("remove shadow directory: %w", err)
}

// Within reports whether the clean path is dir or lies below it.
func Within(path, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}
