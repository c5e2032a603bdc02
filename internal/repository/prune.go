package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/umbra-backup/umbra/internal/backend"
)

// PruneOptions tune Prune.
type PruneOptions struct {
	DryRun bool
	// MaxUnused is the share of a pack's bytes that may be unused before
	// the pack is rewritten with only its used blobs; zero means 10%.
	MaxUnused float64
}

// PruneReport says what Prune did (or, dry, would do).
type PruneReport struct {
	Backups       int   `json:"backups"`
	PacksKept     int   `json:"packs_kept"`
	PacksDeleted  int   `json:"packs_deleted"`  // nothing in them used
	PacksRepacked int   `json:"packs_repacked"` // used blobs copied out, then deleted
	PacksOrphan   int   `json:"packs_orphan"`   // in no index: left by interrupted backups
	PacksWritten  int   `json:"packs_written"`
	BlobsRemoved  int   `json:"blobs_removed"`
	BytesFreed    int64 `json:"bytes_freed"`
	DryRun        bool  `json:"dry_run"`
}

// Prune removes data no backup uses. It takes the exclusive lock, so it
// fails while a backup runs. Its writes are ordered so that a crash at any
// point leaves a repository that checks clean: new packs, then a new index
// of everything kept, then the old index files go, then unused packs go.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneReport, error) {
	if opts.MaxUnused == 0 {
		opts.MaxUnused = 0.1
	}
	lock, err := r.Lock(ctx, true, "prune")
	if err != nil {
		return nil, err
	}
	defer lock.Unlock(ctx)

	// Backups that finished before our lock wrote index files we have not
	// read: read everything again, pack by pack, duplicates included.
	oldIndex, packs, err := r.readAllIndexes(ctx)
	if err != nil {
		return nil, err
	}
	used, nBackups, err := r.usedBlobs(ctx)
	if err != nil {
		return nil, err
	}
	rep := &PruneReport{Backups: nBackups, DryRun: opts.DryRun}

	sizes := map[ID]int64{}
	if err := r.be.List(ctx, backend.TypePack, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			sizes[id] = fi.Size
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}

	kept := map[ID]bool{} // blobs already kept in some pack
	var keep []indexedPack
	var drop []ID
	type repack struct {
		pack    ID
		entries []PackedBlob
	}
	var repacks []repack
	for _, p := range packs {
		if _, ok := sizes[p.ID]; !ok {
			continue // indexed but gone: check reports it
		}
		var need []PackedBlob
		var needBytes, total int64
		for _, e := range p.Entries {
			total += int64(e.Length)
			if used[e.ID] && !kept[e.ID] {
				need = append(need, e)
				needBytes += int64(e.Length)
			}
		}
		for _, e := range need {
			kept[e.ID] = true
		}
		unused := total - needBytes
		switch {
		case len(need) == 0:
			drop = append(drop, p.ID)
			rep.PacksDeleted++
			rep.BlobsRemoved += len(p.Entries)
			rep.BytesFreed += sizes[p.ID]
		case float64(unused) <= opts.MaxUnused*float64(total):
			keep = append(keep, p)
			rep.PacksKept++
		default:
			repacks = append(repacks, repack{p.ID, need})
			drop = append(drop, p.ID)
			rep.PacksRepacked++
			rep.BlobsRemoved += len(p.Entries) - len(need)
			rep.BytesFreed += unused
		}
		delete(sizes, p.ID)
	}
	for id, size := range sizes {
		drop = append(drop, id) // orphans: in no index
		rep.PacksOrphan++
		rep.BytesFreed += size
	}
	if opts.DryRun {
		return rep, nil
	}

	// 1. Copy the used blobs of mostly unused packs into new packs.
	builders := map[BlobType]*packBuilder{}
	defer func() {
		for _, b := range builders {
			b.close()
		}
	}()
	var written []indexedPack
	finish := func(b *packBuilder) error {
		defer b.close()
		id, err := r.storePack(ctx, b)
		if err != nil {
			return err
		}
		written = append(written, indexedPack{ID: id, Entries: b.entries})
		return nil
	}
	for _, rp := range repacks {
		data, err := r.loadPack(ctx, rp.pack)
		if err != nil {
			return nil, err
		}
		for _, e := range rp.entries {
			sealed := data[e.Offset : e.Offset+e.Length]
			b := builders[e.Type]
			if b == nil {
				if b, err = newPackBuilder(e.Type); err != nil {
					return nil, err
				}
				builders[e.Type] = b
			}
			b.add(e, sealed)
			if b.size() >= r.cfg.PackSize {
				if err := finish(b); err != nil {
					return nil, err
				}
				delete(builders, e.Type)
			}
		}
	}
	for t, b := range builders {
		delete(builders, t)
		if err := finish(b); err != nil {
			return nil, err
		}
	}
	rep.PacksWritten = len(written)

	// 2. One new index of everything kept; 3. the old ones go.
	all := append(keep, written...)
	if len(all) > 0 {
		if _, err := r.saveSealed(ctx, backend.TypeIndex, encodeIndex(all), true); err != nil {
			return nil, fmt.Errorf("save index: %w", err)
		}
	}
	for _, id := range oldIndex {
		h := backend.Handle{Type: backend.TypeIndex, Name: id.String()}
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove old index: %w", err)
		}
	}
	// 4. Packs nothing indexes any more.
	for _, id := range drop {
		h := backend.Handle{Type: backend.TypePack, Name: id.String()}
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove pack: %w", err)
		}
	}
	r.idx = newIndex()
	for _, p := range all {
		r.idx.addPack(p.ID, p.Entries)
	}
	return rep, nil
}

// readAllIndexes reads every index file, keeping every pack's entries.
func (r *Repository) readAllIndexes(ctx context.Context) ([]ID, []indexedPack, error) {
	var ids []ID
	if err := r.be.List(ctx, backend.TypeIndex, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			ids = append(ids, id)
		}
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("list index files: %w", err)
	}
	seen := map[ID]bool{}
	var packs []indexedPack
	for _, id := range ids {
		plain, err := r.loadSealed(ctx, backend.TypeIndex, id)
		if err != nil {
			return nil, nil, fmt.Errorf("load index: %w", err)
		}
		ps, err := decodeIndex(plain)
		if err != nil {
			return nil, nil, fmt.Errorf("index %s: %w", id.Short(), err)
		}
		for _, p := range ps {
			if !seen[p.ID] {
				seen[p.ID] = true
				packs = append(packs, p)
			}
		}
	}
	// Blobs of packs read here are what the walk of trees must find.
	r.idx = newIndex()
	for _, p := range packs {
		r.idx.addPack(p.ID, p.Entries)
	}
	return ids, packs, nil
}

// usedBlobs walks every backup and returns every blob id it needs. A tree
// that cannot be read stops prune: deleting what it names would make the
// damage worse.
func (r *Repository) usedBlobs(ctx context.Context) (map[ID]bool, int, error) {
	manifests, err := r.Manifests(ctx)
	if err != nil {
		return nil, 0, err
	}
	used := map[ID]bool{}
	var walk func(id ID) error
	walk = func(id ID) error {
		if used[id] {
			return nil
		}
		used[id] = true
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			return fmt.Errorf("prune stopped, nothing removed: %w; run umbra check", err)
		}
		for _, n := range t.Nodes {
			for _, l := range n.ContentLists {
				used[l] = true
			}
			err := r.ContentParts(ctx, &n, func(part []ID) error {
				for _, c := range part {
					used[c] = true
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("prune stopped, nothing removed: %w; run umbra check", err)
			}
			if n.Subtree != nil {
				if err := walk(*n.Subtree); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, m := range manifests {
		if err := walk(m.Tree); err != nil {
			return nil, 0, err
		}
	}
	return used, len(manifests), nil
}

func (r *Repository) loadPack(ctx context.Context, id ID) ([]byte, error) {
	rd, err := r.be.Load(ctx, backend.Handle{Type: backend.TypePack, Name: id.String()}, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if hashID(data) != id {
		return nil, fmt.Errorf("pack %s is damaged: its content does not match its name; run umbra check --read-data", id.Short())
	}
	return data, nil
}

// storePack finishes and stores a pack and returns its id.
func (r *Repository) storePack(ctx context.Context, p *packBuilder) (ID, error) {
	id, size, rd, err := p.finish(r.key.Encrypt)
	if err != nil {
		return ID{}, err
	}
	h := backend.Handle{Type: backend.TypePack, Name: id.String()}
	if err := r.be.Save(ctx, h, size, rd); err != nil && !errors.Is(err, fs.ErrExist) {
		return ID{}, fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return id, nil
}
