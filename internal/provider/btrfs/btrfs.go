// Package btrfs is the provider that takes read-only btrfs subvolume
// snapshots and can revert a subvolume to one.
package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/provider"
)

// Provider snapshots each subvolume that holds a requested path into
// <mount>/.umbra-shadow/<set id>/<n>. A set of several subvolumes is taken
// one subvolume after another, each at its own instant; btrfs has no
// multi-subvolume snapshot.
type Provider struct{}

var (
	_ provider.Provider = (*Provider)(nil)
	_ provider.Reverter = (*Provider)(nil)
)

// New returns the btrfs provider.
func New() *Provider { return &Provider{} }

// Name returns "btrfs".
func (p *Provider) Name() string { return "btrfs" }

// Capabilities says the copy is atomic per subvolume and is taken with the
// filesystem thawed.
func (p *Provider) Capabilities() provider.Capabilities {
	return provider.Capabilities{Copy: provider.CopyAtomic, FrozenCommit: false}
}

// CanServe accepts read-write btrfs volumes.
func (p *Provider) CanServe(vol provider.Volume) error {
	if vol.FSType != "btrfs" {
		return fmt.Errorf("btrfs provider: %s at %s is not btrfs", vol.FSType, vol.Mount)
	}
	if vol.ReadOnly {
		return fmt.Errorf("btrfs provider: %s is mounted read-only; snapshots need it read-write (mount -o remount,rw %s)", vol.Mount, vol.Mount)
	}
	return nil
}

// Create snapshots, read-only, every subvolume that holds a requested path.
// On error it deletes the snapshots it made.
func (p *Provider) Create(ctx context.Context, req provider.Request) (_ provider.Shadow, err error) {
	mount := filepath.Clean(req.Volume.Mount)
	setDir, err := provider.SetDir(mount, req.SetID)
	if err != nil {
		return provider.Shadow{}, err
	}
	if err := ctx.Err(); err != nil {
		return provider.Shadow{}, fmt.Errorf("snapshot %s: %w", mount, err)
	}
	if err := checkBtrfs(mount); err != nil {
		return provider.Shadow{}, err
	}
	sources, err := subvolumeRoots(mount, req.Paths)
	if err != nil {
		return provider.Shadow{}, err
	}

	if err := provider.MakeSetDir(setDir); err != nil {
		return provider.Shadow{}, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, removeSet(context.WithoutCancel(ctx), setDir))
		}
	}()

	roots := make([]provider.Root, 0, len(sources))
	for i, src := range sources {
		if err := ctx.Err(); err != nil {
			return provider.Shadow{}, fmt.Errorf("snapshot %s: %w", src, err)
		}
		name := strconv.Itoa(i)
		if err := snapshot(src, setDir, name, true); err != nil {
			return provider.Shadow{}, err
		}
		roots = append(roots, provider.Root{Source: src, Snapshot: filepath.Join(setDir, name)})
	}
	return provider.Shadow{
		Provider: p.Name(),
		SetID:    req.SetID,
		Volume:   req.Volume,
		Roots:    roots,
		Created:  time.Now(),
	}, nil
}

// Delete deletes every snapshot in the set's directory, then the directory.
// It works from the directory rather than sh.Roots, so that it also cleans
// up after a Create that crashed before it could return the roots.
func (p *Provider) Delete(ctx context.Context, sh provider.Shadow) error {
	setDir, err := setDirOf(sh)
	if err != nil {
		return err
	}
	return removeSet(ctx, setDir)
}

// Revert replaces each live subvolume by a writable snapshot of its shadow.
// The live subvolume is renamed aside first and deleted last, so a failure
// in between leaves the live data in place (or next to it, named in the
// error). The mounted root subvolume cannot be replaced this way. Nested
// subvolumes are not part of a snapshot and come back as empty directories.
func (p *Provider) Revert(ctx context.Context, sh provider.Shadow) error {
	setDir, err := setDirOf(sh)
	if err != nil {
		return err
	}
	mount := filepath.Clean(sh.Volume.Mount)
	for _, r := range sh.Roots {
		src := filepath.Clean(r.Source)
		if src == mount {
			return fmt.Errorf("revert %s: cannot revert the mounted root subvolume of %s; mount its parent subvolume, or restore the files instead", src, mount)
		}
		if !provider.Within(src, mount) || provider.Within(src, filepath.Join(mount, provider.ShadowDir)) {
			return fmt.Errorf("revert %s: not a live subvolume of %s", src, mount)
		}
		ok, err := isSubvolume(r.Snapshot)
		if err != nil {
			return fmt.Errorf("revert %s: %w", src, err)
		}
		if !ok {
			return fmt.Errorf("revert %s: snapshot %s is not a subvolume", src, r.Snapshot)
		}
	}
	for _, r := range sh.Roots {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("revert %s: %w", r.Source, err)
		}
		if err := revert(filepath.Clean(r.Source), r.Snapshot, sh.SetID); err != nil {
			return fmt.Errorf("revert %s from %s: %w", r.Source, setDir, err)
		}
	}
	return nil
}

func revert(src, snap, setID string) error {
	aside := src + ".umbra-revert-" + setID
	if err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, aside, unix.RENAME_NOREPLACE); err != nil {
		return &os.LinkError{Op: "move live subvolume aside", Old: src, New: aside, Err: err}
	}
	if err := snapshot(snap, filepath.Dir(src), filepath.Base(src), false); err != nil {
		if rerr := unix.Renameat2(unix.AT_FDCWD, aside, unix.AT_FDCWD, src, unix.RENAME_NOREPLACE); rerr != nil {
			return errors.Join(err, fmt.Errorf("live data left at %s: %w",
				aside, &os.LinkError{Op: "move back", Old: aside, New: src, Err: rerr}))
		}
		return err
	}
	if err := destroy(filepath.Dir(aside), filepath.Base(aside)); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) {
			return fmt.Errorf("reverted, but the old content is left at %s because it holds nested subvolumes; move or delete them, then run btrfs subvolume delete %s: %w", aside, aside, err)
		}
		return fmt.Errorf("reverted, but the old content is left at %s: %w", aside, err)
	}
	return nil
}

// subvolumeRoots returns, in request order and without repeats, the root
// of the subvolume that holds each path.
func subvolumeRoots(mount string, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("snapshot %s: no paths requested", mount)
	}
	shadowDir := filepath.Join(mount, provider.ShadowDir)
	var roots []string
	seen := make(map[string]bool)
	for _, path := range paths {
		path = filepath.Clean(path)
		if !provider.Within(path, mount) {
			return nil, fmt.Errorf("snapshot %s: path %s is not on this volume", mount, path)
		}
		if provider.Within(path, shadowDir) {
			return nil, fmt.Errorf("snapshot %s: path %s is inside umbra's shadow directory", mount, path)
		}
		root, err := subvolumeRoot(mount, path)
		if err != nil {
			return nil, err
		}
		if !seen[root] {
			seen[root] = true
			roots = append(roots, root)
		}
	}
	return roots, nil
}

// subvolumeRoot walks up from path, not above mount, to the first
// directory whose inode number marks a subvolume root.
func subvolumeRoot(mount, path string) (string, error) {
	dir := path
	for {
		var st unix.Stat_t
		if err := unix.Lstat(dir, &st); err != nil {
			return "", &os.PathError{Op: "find subvolume of", Path: dir, Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == firstFreeObjectID {
			return dir, nil
		}
		if dir == mount {
			return "", fmt.Errorf("find subvolume of %s: no subvolume root at or below the mount point %s; is it a bind mount of a plain directory?", path, mount)
		}
		dir = filepath.Dir(dir)
	}
}

func isSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == firstFreeObjectID, nil
}

func checkBtrfs(mount string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil {
		return &os.PathError{Op: "statfs", Path: mount, Err: err}
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return fmt.Errorf("snapshot %s: not a btrfs filesystem (magic %#x)", mount, st.Type)
	}
	return nil
}

// removeSet deletes the snapshots and anything else in setDir, setDir
// itself, and the shadow directory above it if that is now empty. A missing
// setDir is not an error.
func removeSet(ctx context.Context, setDir string) error {
	entries, err := os.ReadDir(setDir)
	if errors.Is(err, os.ErrNotExist) {
		return provider.RemoveSetDir(setDir)
	}
	if err != nil {
		return fmt.Errorf("delete set: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("delete set %s: %w", setDir, err)
		}
		path := filepath.Join(setDir, e.Name())
		sub, err := isSubvolume(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			errs = append(errs, err)
		case sub:
			errs = append(errs, destroy(setDir, e.Name()))
		default:
			errs = append(errs, os.RemoveAll(path))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete set %s: %w", setDir, err)
	}
	if err := os.Remove(setDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete set: %w", err)
	}
	return provider.RemoveSetDir(setDir)
}

// setDirOf returns the set's directory, and refuses a shadow whose roots
// point anywhere else: Delete and Revert must never touch live data because
// a stored record was damaged.
func setDirOf(sh provider.Shadow) (string, error) {
	setDir, err := provider.SetDir(sh.Volume.Mount, sh.SetID)
	if err != nil {
		return "", err
	}
	for _, r := range sh.Roots {
		if filepath.Dir(filepath.Clean(r.Snapshot)) != setDir {
			return "", fmt.Errorf("shadow %s: snapshot %s is not in %s; refusing to touch it", sh.SetID, r.Snapshot, setDir)
		}
	}
	return setDir, nil
}
