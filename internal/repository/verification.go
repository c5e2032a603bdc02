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

// Verification records one verification of a backup: its writers brought
// up from it in a sandbox and checked by the applications themselves. It is
// stored beside the manifest, sealed like it; a backup may have several.
type Verification struct {
	Backup ID        `json:"backup"`
	Time   time.Time `json:"time"`
	Host   string    `json:"host"`
	OK     bool      `json:"ok"`
	// Writers holds the verifier's per-writer results (verify.Record).
	Writers json.RawMessage `json:"writers"`
}

// SaveVerification stores v.
func (r *Repository) SaveVerification(ctx context.Context, v *Verification) (ID, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ID{}, err
	}
	id, err := r.saveSealed(ctx, backend.TypeVerification, data, true)
	if err != nil {
		return ID{}, fmt.Errorf("save verification of %s: %w", v.Backup.Short(), err)
	}
	return id, nil
}

// Verifications lists every verification record, oldest first.
func (r *Repository) Verifications(ctx context.Context) ([]Verification, error) {
	ids, err := r.listIDs(ctx, backend.TypeVerification)
	if err != nil {
		return nil, fmt.Errorf("list verifications: %w", err)
	}
	var out []Verification
	for _, id := range ids {
		data, err := r.loadSealed(ctx, backend.TypeVerification, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("verification %s: %w", id.Short(), err)
		}
		var v Verification
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, fmt.Errorf("verification %s is damaged: %w", id.Short(), err)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// LatestVerifications maps each verified backup to its newest record.
func LatestVerifications(all []Verification) map[ID]Verification {
	latest := map[ID]Verification{}
	for _, v := range all {
		latest[v.Backup] = v // oldest first: the newest stays
	}
	return latest
}
