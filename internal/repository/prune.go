package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

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
	PacksDeleted  int   `json:"packs_deleted"`  // marked earlier (or in this run) and deleted
	PacksRepacked int   `json:"packs_repacked"` // used blobs copied out, then marked
	PacksOrphan   int   `json:"packs_orphan"`   // in no index: left by interrupted backups
	PacksWritten  int   `json:"packs_written"`
	PacksRescued  int   `json:"packs_rescued"` // marked, but a backup that was running used them
	BlobsRemoved  int   `json:"blobs_removed"`
	BytesFreed    int64 `json:"bytes_freed"`
	// PacksMarked are marked for deletion and wait for the operations
	// that were running when they were found unused (WaitingFor locks);
	// the next prune after those have ended deletes them.
	PacksMarked int   `json:"packs_marked"`
	BytesMarked int64 `json:"bytes_marked"`
	WaitingFor  int   `json:"waiting_for"`
	// VerificationsRemoved are the records of backups that are gone.
	VerificationsRemoved int  `json:"verifications_removed"`
	DryRun               bool `json:"dry_run"`
}

// Prune removes data no backup uses, beside running backups and restores:
// it holds only the exclusive lock that keeps other prunes and checks out.
// Data it finds unused is marked, not deleted (see mark); what was marked
// by earlier runs is deleted once every operation running when it was
// marked has ended, unless a backup now needs it. With nothing running,
// one run does both. Its writes are ordered so that a crash at any point
// leaves a repository that checks clean: new packs, a new index of
// everything kept, the mark, then the old index files go, then the packs
// whose marks are done, then those marks.
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneReport, error) {
	if opts.MaxUnused == 0 {
		opts.MaxUnused = 0.1
	}
	lock, err := r.lock(ctx, true, "prune")
	if err != nil {
		return nil, err
	}
	defer lock.Unlock(ctx)
	ctx = lock.Context()

	rep := &PruneReport{DryRun: opts.DryRun}
	used := map[ID]bool{} // across passes: a tree's blobs never change
	// A second pass deletes at once what the first marked if no lock was
	// held when it marked: nothing can be using it.
	for pass := 0; pass < 2; pass++ {
		again, err := r.prunePass(ctx, lock.Name(), opts, used, rep)
		if err != nil {
			return nil, pruneErr(ctx, err)
		}
		if !again || opts.DryRun {
			break
		}
	}
	if !opts.DryRun {
		n, err := r.removeOrphanVerifications(ctx)
		if err != nil {
			return nil, pruneErr(ctx, err)
		}
		rep.VerificationsRemoved = n
	}
	return rep, nil
}

// removeOrphanVerifications removes the verification records of backups
// that were forgotten.
func (r *Repository) removeOrphanVerifications(ctx context.Context) (int, error) {
	ids, err := r.listIDs(ctx, backend.TypeVerification)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	backups, err := r.listIDs(ctx, backend.TypeManifest)
	if err != nil {
		return 0, err
	}
	live := map[ID]bool{}
	for _, id := range backups {
		live[id] = true
	}
	removed := 0
	for _, id := range ids {
		data, err := r.loadSealed(ctx, backend.TypeVerification, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("verification %s: %w", id.Short(), err)
		}
		var v Verification
		if err := json.Unmarshal(data, &v); err != nil || live[v.Backup] {
			continue // a damaged record is check's to report
		}
		if err := r.be.Remove(ctx, backend.Handle{Type: backend.TypeVerification, Name: id.String()}); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, err
		}
		removed++
	}
	return removed, nil
}

func pruneErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrLockLost) {
		return fmt.Errorf("prune stopped: %w", cause)
	}
	return err
}

// packState is what one pass found for each pack.
type packState struct {
	waiting   map[ID]bool  // in a mark whose operations still run: left as it is
	ready     []*mark      // marks whose operations have ended
	unsettled []*mark      // marks of a prune that died: looked at anew
	stored    map[ID]int64 // every pack file, by size
}

// prunePass marks what is unused and deletes what earlier marks may now
// give up; it returns true if it left a mark that no running operation can
// be using.
func (r *Repository) prunePass(ctx context.Context, own string, opts PruneOptions, used map[ID]bool, rep *PruneReport) (bool, error) {
	// 1. The locks first: an operation that ended before this list was
	// taken has its manifest in the walk below.
	live, err := r.liveLocks(ctx, own)
	if err != nil {
		return false, err
	}
	// 2. The backups, then the index: a backup's index files are written
	// before its manifest, so every tree listed is in what is read next.
	manifests, err := r.Manifests(ctx)
	if err != nil {
		return false, err
	}
	st, err := r.readIndexState(ctx)
	if err != nil {
		return false, err
	}
	r.useIndex(st) // for the walk: trees may be in marked packs
	if err := r.walkUsed(ctx, manifests, used); err != nil {
		return false, err
	}
	nBackups := len(manifests)
	rep.Backups = nBackups
	ps := packState{waiting: map[ID]bool{}, stored: map[ID]int64{}}
	waitFor := map[string]bool{}
	for _, m := range st.marks {
		switch {
		case !m.Settled:
			ps.unsettled = append(ps.unsettled, m)
		case slices.ContainsFunc(m.Locks, func(l string) bool { return live[l] }):
			for _, p := range m.Packs {
				ps.waiting[p.ID] = true
			}
			for _, l := range m.Locks {
				if live[l] {
					waitFor[l] = true
				}
			}
		default:
			ps.ready = append(ps.ready, m)
		}
	}
	if err := r.be.List(ctx, backend.TypePack, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			ps.stored[id] = fi.Size
		}
		return nil
	}); err != nil {
		return false, fmt.Errorf("list packs: %w", err)
	}

	// 3. Sort the packs. Indexed ones first, so that the blobs they keep
	// are known when marked ones are weighed.
	seen := map[ID]bool{}
	var candidates, stillIndexed []indexedPack
	for _, p := range st.packs {
		switch {
		case ps.waiting[p.ID]:
			// Stays marked, and indexed: a pack marked while its backup
			// was writing it has its entries only here.
			stillIndexed = append(stillIndexed, p)
		case !seen[p.ID]:
			seen[p.ID] = true
			candidates = append(candidates, p)
		}
	}
	for _, m := range ps.unsettled {
		for _, p := range m.Packs {
			if !ps.waiting[p.ID] && !seen[p.ID] {
				seen[p.ID] = true
				candidates = append(candidates, p)
			}
		}
	}
	kept := map[ID]bool{} // blobs already kept in some pack
	var keep, marked []indexedPack
	var repacks []repackJob
	var markedBytes int64
	weigh := func(p indexedPack) {
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
			marked = append(marked, p)
			markedBytes += ps.stored[p.ID]
			rep.BlobsRemoved += len(p.Entries)
		case float64(unused) <= opts.MaxUnused*float64(total):
			keep = append(keep, p)
			rep.PacksKept++
		default:
			repacks = append(repacks, repackJob{p.ID, need})
			marked = append(marked, p)
			markedBytes += unused
			rep.PacksRepacked++
			rep.BlobsRemoved += len(p.Entries) - len(need)
		}
	}
	for _, p := range candidates {
		if _, ok := ps.stored[p.ID]; ok {
			weigh(p)
		} // indexed but gone: check reports it
	}
	// Packs of finished marks: deleted, unless in an index again (their
	// backup finished after all) or holding what a backup now needs.
	var deleteNow []ID
	for _, m := range ps.ready {
		for _, p := range m.Packs {
			size, ok := ps.stored[p.ID]
			if seen[p.ID] || ps.waiting[p.ID] || !ok {
				continue
			}
			seen[p.ID] = true
			if slices.ContainsFunc(p.Entries, func(e PackedBlob) bool { return used[e.ID] && !kept[e.ID] }) {
				rep.PacksRescued++
				weigh(p)
				continue
			}
			deleteNow = append(deleteNow, p.ID)
			rep.PacksDeleted++
			rep.BytesFreed += size
		}
	}
	for id := range ps.stored {
		if !seen[id] && !ps.waiting[id] {
			marked = append(marked, indexedPack{ID: id}) // in no index
			markedBytes += ps.stored[id]
			rep.PacksOrphan++
		}
	}
	if opts.DryRun {
		rep.PacksMarked += len(marked)
		rep.BytesMarked += markedBytes
		return false, nil
	}

	// 3. Copy the used blobs of mostly unused packs into new packs.
	written, err := r.repack(ctx, repacks)
	if err != nil {
		return false, err
	}
	rep.PacksWritten += len(written)

	// 4. One new index of everything kept.
	all := append(append(keep, written...), stillIndexed...)
	if len(all) > 0 {
		if _, err := r.saveSealed(ctx, backend.TypeIndex, encodeIndex(all), true); err != nil {
			return false, fmt.Errorf("save index: %w", err)
		}
	}
	// 5. The mark, settled with the locks held once it was visible.
	settledFree := false
	var newMark *mark
	if len(marked) > 0 {
		pending := &mark{Time: time.Now().UTC(), Packs: marked}
		if err := r.saveMark(ctx, pending); err != nil {
			return false, err
		}
		names, err := r.lockNames(ctx, own)
		if err != nil {
			return false, err
		}
		newMark = &mark{Time: pending.Time, Settled: true, Locks: names, Packs: marked}
		if err := r.saveMark(ctx, newMark); err != nil {
			return false, err
		}
		if err := r.removeMark(ctx, pending.ID); err != nil {
			return false, err
		}
		settledFree = len(names) == 0
		for _, l := range names {
			waitFor[l] = true
		}
	}
	// 6. The old index files go; what they listed is in the new one or in
	// a mark.
	for _, id := range st.files {
		h := backend.Handle{Type: backend.TypeIndex, Name: id.String()}
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("remove old index: %w", err)
		}
	}
	// 7. Packs whose marks are done, then those marks and the unsettled
	// ones, whose packs are in the new index or the new mark now.
	for _, id := range deleteNow {
		h := backend.Handle{Type: backend.TypePack, Name: id.String()}
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("remove pack: %w", err)
		}
	}
	for _, m := range append(ps.ready, ps.unsettled...) {
		if err := r.removeMark(ctx, m.ID); err != nil {
			return false, err
		}
	}

	// What is marked now: the new mark and those still waiting.
	rep.PacksMarked, rep.BytesMarked = len(marked), markedBytes
	for _, m := range st.marks {
		if m.Settled && !slices.Contains(ps.ready, m) {
			for _, p := range m.Packs {
				rep.PacksMarked++
				rep.BytesMarked += ps.stored[p.ID]
			}
		}
	}
	rep.WaitingFor = len(waitFor)
	marks := slices.DeleteFunc(st.marks, func(m *mark) bool { return !m.Settled || slices.Contains(ps.ready, m) })
	if newMark != nil {
		marks = append(marks, newMark)
	}
	r.useIndex(&indexState{packs: all, marks: marks})
	return settledFree, nil
}

// liveLocks returns the names of the locks whose holders may still be at
// work, own excepted; stale ones are removed.
func (r *Repository) liveLocks(ctx context.Context, own string) (map[string]bool, error) {
	names, err := r.lockNames(ctx, own)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	now := time.Now()
	live := map[string]bool{}
	for _, name := range names {
		_, ok, err := r.lockLive(ctx, name, now, host)
		if err != nil {
			return nil, err
		}
		live[name] = ok
	}
	return live, nil
}

// repackJob is a mostly unused pack and the blobs of it to keep.
type repackJob struct {
	pack    ID
	entries []PackedBlob
}

// repack copies the used blobs of mostly unused packs into new packs.
func (r *Repository) repack(ctx context.Context, repacks []repackJob) ([]indexedPack, error) {
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
				delete(builders, e.Type)
				if err := finish(b); err != nil {
					return nil, err
				}
			}
		}
	}
	for t, b := range builders {
		delete(builders, t)
		if err := finish(b); err != nil {
			return nil, err
		}
	}
	return written, nil
}

// walkUsed walks the backups and adds every blob id they need to used
// (trees already in used are not walked again). A tree that cannot be read stops prune: deleting what it names
// would make the damage worse.
func (r *Repository) walkUsed(ctx context.Context, manifests []ManifestEntry, used map[ID]bool) error {
	var walk func(id ID) error
	walk = func(id ID) error {
		if used[id] {
			return nil
		}
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			return fmt.Errorf("prune stopped, nothing removed: %w; run umbra check", err)
		}
		used[id] = true
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
			return err
		}
	}
	return nil
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
