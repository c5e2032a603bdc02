package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Manifest is the record of one backup. It is written last, after every
// blob it needs is in a pack and an index file, so a reader never sees a
// manifest whose data is missing.
type Manifest struct {
	Time     time.Time `json:"time"`
	Host     string    `json:"host"`
	Paths    []string  `json:"paths"`
	Tree     ID        `json:"tree"`
	Parent   *ID       `json:"parent,omitempty"`
	Tags     []string  `json:"tags,omitempty"`
	Stats    Stats     `json:"stats"`
	Warnings []string  `json:"warnings,omitempty"`
	// Writers and consistency come with application-consistent backups.
	Extra json.RawMessage `json:"extra,omitempty"`
}

// Stats count what a backup saw and added.
type Stats struct {
	Files        int64 `json:"files"`
	Dirs         int64 `json:"dirs"`
	Bytes        int64 `json:"bytes"`         // file content seen
	BytesRead    int64 `json:"bytes_read"`    // content read (unchanged files are not)
	FilesChanged int64 `json:"files_changed"` // new or changed since the parent
	BlobsAdded   int64 `json:"blobs_added"`
	BytesAdded   int64 `json:"bytes_added"` // to packs, after compression and encryption
	DurationMS   int64 `json:"duration_ms"`
}

// ManifestEntry is a manifest with its id.
type ManifestEntry struct {
	ID ID `json:"id"`
	*Manifest
}

// SaveManifest stores m and returns its id.
func (r *Repository) SaveManifest(ctx context.Context, m *Manifest) (ID, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return ID{}, err
	}
	id, err := r.saveSealed(ctx, backend.TypeManifest, data, false)
	if err != nil {
		return ID{}, fmt.Errorf("save manifest: %w", err)
	}
	return id, nil
}

// LoadManifest reads one manifest.
func (r *Repository) LoadManifest(ctx context.Context, id ID) (*Manifest, error) {
	data, err := r.loadSealed(ctx, backend.TypeManifest, id)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id.Short(), err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("backup %s is damaged: %w", id.Short(), err)
	}
	return &m, nil
}

// listIDs lists the files of type t named by an ID (manifests,
// verification records); other names are not the repository's.
func (r *Repository) listIDs(ctx context.Context, t backend.Type) ([]ID, error) {
	var ids []ID
	err := r.be.List(ctx, t, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

// Manifests lists every backup, oldest first.
func (r *Repository) Manifests(ctx context.Context) ([]ManifestEntry, error) {
	ids, err := r.listIDs(ctx, backend.TypeManifest)
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	var out []ManifestEntry
	for _, id := range ids {
		m, err := r.LoadManifest(ctx, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // forgotten meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ManifestEntry{ID: id, Manifest: m})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// RemoveManifest forgets the backup id: its manifest goes; the data only it
// used stays until prune. A backup already gone is not an error.
func (r *Repository) RemoveManifest(ctx context.Context, id ID) error {
	err := r.be.Remove(ctx, backend.Handle{Type: backend.TypeManifest, Name: id.String()})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forget %s: %w", id.Short(), err)
	}
	return nil
}

// FindManifest resolves a backup id, a unique prefix of one, or "latest".
func (r *Repository) FindManifest(ctx context.Context, ref string) (ManifestEntry, error) {
	all, err := r.Manifests(ctx)
	if err != nil {
		return ManifestEntry{}, err
	}
	if ref == "latest" {
		if len(all) == 0 {
			return ManifestEntry{}, errors.New("the repository has no backups yet")
		}
		return all[len(all)-1], nil
	}
	ids := make([]ID, len(all))
	for i, e := range all {
		ids[i] = e.ID
	}
	id, err := matchPrefix(ref, ids)
	if err != nil {
		return ManifestEntry{}, err
	}
	for _, e := range all {
		if e.ID == id {
			return e, nil
		}
	}
	return ManifestEntry{}, fmt.Errorf("no backup with id %s", ref)
}
