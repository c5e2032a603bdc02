// Package reflink is the provider that copies files by cloning their
// extents (FICLONE) into a hidden directory on the same filesystem.
package reflink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/umbra-backup/umbra/internal/provider"
)

// Provider clones each requested file into <mount>/.umbra-shadow/<set id>,
// at the same path relative to the mount. Each file is copied at its own
// instant, so the copy is consistent only while writers are frozen.
type Provider struct {
	mu     sync.Mutex
	probed map[provider.Volume]error // nil: FICLONE works
}

var _ provider.Provider = (*Provider)(nil)

// New returns the reflink provider.
func New() *Provider { return &Provider{} }

// Name returns "reflink".
func (p *Provider) Name() string { return "reflink" }

// Capabilities says the copy is per file and writes through the filesystem,
// so it cannot run while the filesystem is frozen.
func (p *Provider) Capabilities() provider.Capabilities {
	return provider.Capabilities{Copy: provider.CopyPerFile, FrozenCommit: false}
}

// CanServe accepts read-write volumes on which a probe file can be cloned.
// The answer is remembered per volume; a probe that fails for another
// reason (a full disk, say) is not.
func (p *Provider) CanServe(vol provider.Volume) error {
	if vol.ReadOnly {
		return fmt.Errorf("reflink provider: %s is mounted read-only; clones need it read-write", vol.Mount)
	}
	key := vol
	// Probes are short; one at a time keeps the cache simple.
	p.mu.Lock()
	defer p.mu.Unlock()
	if err, ok := p.probed[key]; ok {
		return err
	}
	if p.probed == nil {
		p.probed = make(map[provider.Volume]error)
	}
	err := probe(vol.Mount)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) {
		err = unsupported(vol, err)
		p.probed[key] = err
		return err
	}
	if err != nil {
		return fmt.Errorf("reflink provider: probe %s: %w", vol.Mount, err)
	}
	p.probed[key] = nil
	return nil
}

func unsupported(vol provider.Volume, err error) error {
	if vol.FSType == "xfs" {
		return fmt.Errorf("reflink provider: xfs at %s without reflink; make it with mkfs.xfs -m reflink=1, or use the live provider: %w", vol.Mount, err)
	}
	return fmt.Errorf("reflink provider: %s at %s cannot clone files (FICLONE); use a snapshot provider or the live provider: %w", vol.FSType, vol.Mount, err)
}

// probe clones a small file at the mount point.
func probe(mount string) (err error) {
	src, err := os.CreateTemp(mount, ".umbra-probe-*")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, src.Close(), os.Remove(src.Name())) }()
	if _, err := src.WriteString("umbra reflink probe\n"); err != nil {
		return err
	}
	dst, err := os.CreateTemp(mount, ".umbra-probe-*")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dst.Close(), os.Remove(dst.Name())) }()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
}

// Create clones the requested files and directories. On error it removes
// the set's directory.
func (p *Provider) Create(ctx context.Context, req provider.Request) (_ provider.Shadow, err error) {
	mount := filepath.Clean(req.Volume.Mount)
	setDir, err := provider.SetDir(mount, req.SetID)
	if err != nil {
		return provider.Shadow{}, err
	}
	if err := ctx.Err(); err != nil {
		return provider.Shadow{}, fmt.Errorf("clone %s: %w", mount, err)
	}
	shadowDir := filepath.Join(mount, provider.ShadowDir)
	paths, err := topmost(mount, shadowDir, req.Paths)
	if err != nil {
		return provider.Shadow{}, err
	}
	var root unix.Statx_t
	if err := statx(mount, &root); err != nil {
		return provider.Shadow{}, err
	}

	if err := provider.MakeSetDir(setDir); err != nil {
		return provider.Shadow{}, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, removeSet(setDir))
		}
	}()

	c := &cloner{
		ctx:       ctx,
		mount:     mount,
		shadowDir: shadowDir,
		setDir:    setDir,
		root:      root,
		made:      make(map[string]bool),
		links:     make(map[inode]string),
	}
	for _, path := range paths {
		if err := c.copyPath(path); err != nil {
			return provider.Shadow{}, err
		}
	}
	if err := c.finishDirs(); err != nil {
		return provider.Shadow{}, err
	}
	return provider.Shadow{
		Provider: p.Name(),
		SetID:    req.SetID,
		Volume:   req.Volume,
		Roots:    []provider.Root{{Source: mount, Snapshot: setDir}},
		Created:  time.Now(),
	}, nil
}

// Delete removes the set's directory, and the shadow directory if no other
// set is left in it.
func (p *Provider) Delete(_ context.Context, sh provider.Shadow) error {
	setDir, err := provider.SetDir(sh.Volume.Mount, sh.SetID)
	if err != nil {
		return err
	}
	// Refuse a damaged record rather than remove live data.
	for _, r := range sh.Roots {
		if filepath.Clean(r.Snapshot) != setDir {
			return fmt.Errorf("shadow %s: copy %s is not %s; refusing to remove it", sh.SetID, r.Snapshot, setDir)
		}
	}
	return removeSet(setDir)
}

func removeSet(setDir string) error {
	if err := os.RemoveAll(setDir); err != nil {
		return fmt.Errorf("delete set: %w", err)
	}
	return provider.RemoveSetDir(setDir)
}

// topmost checks the requested paths and drops repeats and those that lie
// below another requested path, keeping the request order.
func topmost(mount, shadowDir string, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("clone %s: no paths requested", mount)
	}
	cleaned := make([]string, len(paths))
	requested := make(map[string]bool, len(paths))
	for i, path := range paths {
		path = filepath.Clean(path)
		if !provider.Within(path, mount) {
			return nil, fmt.Errorf("clone %s: path %s is not on this volume", mount, path)
		}
		if provider.Within(path, shadowDir) {
			return nil, fmt.Errorf("clone %s: path %s is inside umbra's shadow directory", mount, path)
		}
		cleaned[i] = path
		requested[path] = true
	}
	var top []string
	seen := make(map[string]bool, len(paths))
	for _, path := range cleaned {
		if seen[path] {
			continue
		}
		seen[path] = true
		below := false
		for dir := path; dir != mount && !below; {
			dir = filepath.Dir(dir)
			below = requested[dir]
		}
		if !below {
			top = append(top, path)
		}
	}
	return top, nil
}
