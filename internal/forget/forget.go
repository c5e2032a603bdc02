// Package forget decides which backups a keep policy removes, and removes
// them: for the forget command, and for a job's retention after each
// backup.
package forget

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/retention"
)

// Verdict is the decision on one backup.
type Verdict struct {
	ID      repository.ID `json:"id"`
	Time    time.Time     `json:"time"`
	Host    string        `json:"host"`
	Paths   []string      `json:"paths"`
	Keep    bool          `json:"keep"`
	Reasons []string      `json:"reasons,omitempty"`
}

// Of is the verdict on e without a policy: it goes.
func Of(e repository.ManifestEntry) Verdict {
	return Verdict{ID: e.ID, Time: e.Time, Host: e.Host, Paths: e.Paths}
}

// Plan applies a keep policy to the backups of each host and set of paths
// on its own (of host only, unless host is empty), in local time.
func Plan(all []repository.ManifestEntry, host string, policy retention.Policy) []Verdict {
	groups := map[string][]repository.ManifestEntry{}
	var order []string
	for _, e := range all {
		if host != "" && e.Host != host {
			continue
		}
		key := e.Host + "\x00" + strings.Join(e.Paths, "\x00")
		if _, ok := groups[key]; !ok {
			order = append(order, key)
		}
		groups[key] = append(groups[key], e)
	}
	var verdicts []Verdict
	for _, key := range order {
		byID := map[string]repository.ManifestEntry{}
		var items []retention.Item
		for _, e := range groups[key] {
			byID[e.ID.String()] = e
			items = append(items, retention.Item{ID: e.ID.String(), Time: e.Time})
		}
		for _, d := range retention.Apply(items, policy, time.Local) {
			v := Of(byID[d.ID])
			v.Keep, v.Reasons = d.Keep, d.Reasons
			verdicts = append(verdicts, v)
		}
	}
	return verdicts
}

// Remove forgets every backup whose verdict is not Keep, going on past a
// failure; it returns the ids removed.
func Remove(ctx context.Context, repo *repository.Repository, verdicts []Verdict) ([]repository.ID, error) {
	var removed []repository.ID
	var errs []error
	for _, v := range verdicts {
		if v.Keep {
			continue
		}
		if err := repo.RemoveManifest(ctx, v.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, v.ID)
	}
	return removed, errors.Join(errs...)
}
