// Package catalog lists what a repository holds the way umbra shows it, to
// the command line (text and --json) and to the daemon's API alike.
package catalog

import (
	"context"
	"time"

	"github.com/umbra-backup/umbra/internal/repository"
)

// Backup is a backup with its last verification.
type Backup struct {
	repository.ManifestEntry
	Verification *Verified `json:"verification,omitempty"`
}

// Verified is the outcome of a backup's last verification.
type Verified struct {
	Time time.Time `json:"time"`
	OK   bool      `json:"ok"`
}

// Backups lists the repository's backups, oldest first, each with its
// last verification.
func Backups(ctx context.Context, repo *repository.Repository) ([]Backup, error) {
	all, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	records, err := repo.Verifications(ctx)
	if err != nil {
		return nil, err
	}
	verified := repository.LatestVerifications(records)
	out := []Backup{}
	for _, e := range all {
		b := Backup{ManifestEntry: e}
		if v, ok := verified[e.ID]; ok {
			b.Verification = &Verified{Time: v.Time, OK: v.OK}
		}
		out = append(out, b)
	}
	return out, nil
}
