package repository

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/umbra-backup/umbra/internal/backend"
)

// CheckReport is what Check found. Errors mean data is missing or damaged;
// notes are harmless leftovers.
type CheckReport struct {
	Packs     int      `json:"packs"`
	Blobs     int      `json:"blobs"`
	Trees     int      `json:"trees"`
	Backups   int      `json:"backups"`
	PacksRead int      `json:"packs_read"`
	Errors    []string `json:"errors"`
	Notes     []string `json:"notes"`
	// DamagedPacks failed to read or verify; AffectedBackups use them.
	DamagedPacks    []ID `json:"damaged_packs"`
	AffectedBackups []ID `json:"affected_backups"`
}

// OK reports whether no error was found.
func (c *CheckReport) OK() bool { return len(c.Errors) == 0 }

// Check verifies the repository: every indexed pack exists, every backup's
// trees load and authenticate and every blob they name is indexed. With
// readData it also reads every pack, checks it against its name and
// authenticates every blob in it; backups that use a damaged pack are named.
// progress, if set, is called after each pack read.
func (r *Repository) Check(ctx context.Context, readData bool, progress func(done, total int)) (*CheckReport, error) {
	rep := &CheckReport{Errors: []string{}, Notes: []string{}, DamagedPacks: []ID{}, AffectedBackups: []ID{}}
	stored := map[ID]int64{}
	err := r.be.List(ctx, backend.TypePack, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			stored[id] = fi.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	indexed := r.idx.packIDs()
	rep.Packs = len(indexed)
	damaged := map[ID]bool{}
	for _, id := range indexed {
		if _, ok := stored[id]; !ok {
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s is in the index but missing", id.Short()))
			damaged[id] = true
		}
	}
	inIndex := map[ID]bool{}
	for _, id := range indexed {
		inIndex[id] = true
	}
	// Marked packs may be gone already (a prune died before removing its
	// mark): only an error if a backup needs one.
	markedGone := map[ID]bool{}
	marked := 0
	for _, id := range r.marked.packIDs() {
		if inIndex[id] {
			continue
		}
		inIndex[id] = true
		if _, ok := stored[id]; ok {
			marked++
			indexed = append(indexed, id)
		} else {
			markedGone[id] = true
		}
	}
	if marked > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d packs are marked for deletion, waiting for operations that were running when a prune found them unused; the next prune removes them", marked))
	}
	orphans := 0
	for id := range stored {
		if !inIndex[id] {
			orphans++
		}
	}
	if orphans > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d packs are in no index (left by an interrupted backup, or being written by one now); prune removes them", orphans))
	}
	r.idx.mu.RLock()
	rep.Blobs = r.idx.blobs.len()
	r.idx.mu.RUnlock()

	if readData {
		for i, id := range indexed {
			if damaged[id] {
				continue
			}
			if err := r.checkPack(ctx, id, stored[id]); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				rep.Errors = append(rep.Errors, err.Error())
				damaged[id] = true
			}
			rep.PacksRead++
			if progress != nil {
				progress(i+1, len(indexed))
			}
		}
	}

	// Walk every backup; note the packs it uses.
	manifests, err := r.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	rep.Backups = len(manifests)
	seenTrees := map[ID]bool{}
	treePacks := map[ID]map[ID]bool{} // tree → packs of everything below it
	var walk func(id ID) map[ID]bool
	walk = func(id ID) map[ID]bool {
		if seenTrees[id] {
			return treePacks[id]
		}
		seenTrees[id] = true
		packs := map[ID]bool{}
		treePacks[id] = packs
		if p, _, ok := r.lookup(id); ok {
			packs[p] = true
		}
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			return packs
		}
		rep.Trees++
		for _, n := range t.Nodes {
			for _, l := range n.ContentLists {
				if p, _, ok := r.lookup(l); ok {
					packs[p] = true
				}
			}
			err := r.ContentParts(ctx, &n, func(part []ID) error {
				for _, c := range part {
					if c == ZeroChunk && n.BlockSize > 0 {
						continue
					}
					p, _, ok := r.lookup(c)
					if !ok {
						rep.Errors = append(rep.Errors, fmt.Sprintf("file %q: blob %s is missing", n.Name, c.Short()))
						continue
					}
					packs[p] = true
				}
				return nil
			})
			if err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("file %q: %v", n.Name, err))
			}
			if n.Subtree != nil {
				for p := range walk(*n.Subtree) {
					packs[p] = true
				}
			}
		}
		return packs
	}
	for _, m := range manifests {
		affected := false
		for p := range walk(m.Tree) {
			if markedGone[p] {
				rep.Errors = append(rep.Errors, fmt.Sprintf("backup %s uses pack %s, which a prune deleted", m.ID.Short(), p.Short()))
				affected = true
			}
			affected = affected || damaged[p]
		}
		if affected {
			rep.AffectedBackups = append(rep.AffectedBackups, m.ID)
		}
	}
	for id := range damaged {
		rep.DamagedPacks = append(rep.DamagedPacks, id)
	}
	sort.Slice(rep.DamagedPacks, func(i, j int) bool { return rep.DamagedPacks[i].String() < rep.DamagedPacks[j].String() })
	return rep, nil
}

// checkPack reads a whole pack and verifies its name, header and blobs.
func (r *Repository) checkPack(ctx context.Context, id ID, size int64) error {
	rd, err := r.be.Load(ctx, backend.Handle{Type: backend.TypePack, Name: id.String()}, 0, 0)
	if err != nil {
		return fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	data, err := io.ReadAll(rd)
	rd.Close()
	if err != nil {
		return fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if hashID(data) != id {
		return fmt.Errorf("pack %s is damaged: its content does not match its name", id.Short())
	}
	entries, err := readPackHeader(r.key.Encrypt, data, int64(len(data)))
	if err != nil {
		return fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	for _, e := range entries {
		end := int64(e.Offset) + int64(e.Length)
		if end > int64(len(data)) {
			return fmt.Errorf("pack %s: blob %s lies beyond the pack", id.Short(), e.ID.Short())
		}
		if _, err := r.openBlob(e.ID, e.Flags, e.RawLen, data[e.Offset:end], id); err != nil {
			return err
		}
	}
	return nil
}
