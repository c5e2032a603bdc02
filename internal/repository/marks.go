package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// A mark lists packs a prune found unused, with their index entries. Prune
// does not delete a pack when it finds it unused: a backup running beside it
// may have found a blob in it before and be about to name it in its
// manifest. It marks the pack instead, and records which locks were held
// then; a later prune deletes the pack once all of those have ended and no
// backup, read afterwards, needs it (otherwise the pack is indexed again).
//
// Marks win over index files: an operation that reads a mark does not reuse
// the blobs of its packs (a backup stores such data anew), but still reads
// them (a backup stored by an operation that did reuse them restores). An
// operation reads the marks after its lock is visible, and a prune lists
// the locks after its mark is visible, so an operation either appears in
// the mark's locks or sees the mark.
//
// A mark is first written unsettled (no locks recorded), then settled with
// the locks listed after the unsettled one was visible; the unsettled one
// is removed. A prune that died in between leaves an unsettled mark: it
// keeps its packs from being reused, and the next prune looks at them anew.
type mark struct {
	ID      ID            `json:"-"`
	Time    time.Time     `json:"time"`
	Settled bool          `json:"settled"`
	Locks   []string      `json:"locks"`
	Index   []byte        `json:"index"` // encodeIndex of the packs
	Packs   []indexedPack `json:"-"`
}

func (r *Repository) saveMark(ctx context.Context, m *mark) error {
	m.Index = encodeIndex(m.Packs)
	if m.Locks == nil {
		m.Locks = []string{}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if m.ID, err = r.saveSealed(ctx, backend.TypeMark, data, true); err != nil {
		return fmt.Errorf("save mark: %w", err)
	}
	return nil
}

func (r *Repository) removeMark(ctx context.Context, id ID) error {
	err := r.be.Remove(ctx, backend.Handle{Type: backend.TypeMark, Name: id.String()})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove mark: %w", err)
	}
	return nil
}

// loadMarks reads every mark.
func (r *Repository) loadMarks(ctx context.Context) ([]*mark, error) {
	var ids []ID
	if err := r.be.List(ctx, backend.TypeMark, func(fi backend.FileInfo) error {
		if id, err := ParseID(fi.Name); err == nil {
			ids = append(ids, id)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list marks: %w", err)
	}
	var marks []*mark
	for _, id := range ids {
		plain, err := r.loadSealed(ctx, backend.TypeMark, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a prune meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("load mark: %w", err)
		}
		m := &mark{ID: id}
		if err := json.Unmarshal(plain, m); err != nil {
			return nil, fmt.Errorf("mark %s is damaged: %w", id.Short(), err)
		}
		if m.Packs, err = decodeIndex(m.Index); err != nil {
			return nil, fmt.Errorf("mark %s: %w", id.Short(), err)
		}
		m.Index = nil
		marks = append(marks, m)
	}
	return marks, nil
}
