package forget

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/retention"
)

// TestPlanAndRemove: a policy applies to each host and set of paths on its
// own; Remove forgets exactly the backups it does not keep.
func TestPlanAndRemove(t *testing.T) {
	ctx := t.Context()
	repo, err := repository.Init(ctx, mem.New(), "pw", repository.Options{KDF: repository.KDFParams{Time: 1, Memory: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 1, 12, 0, 0, 0, time.Local)
	save := func(host string, days int, paths ...string) repository.ID {
		t.Helper()
		id, err := repo.SaveManifest(ctx, &repository.Manifest{Time: day.AddDate(0, 0, days), Host: host, Paths: paths})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	oldA := save("a", 0, "/x")
	midA := save("a", 1, "/x")
	newA := save("a", 2, "/x")
	otherPaths := save("a", 0, "/y")
	otherHost := save("b", 0, "/x")

	all, err := repo.Manifests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := Plan(all, "", retention.Policy{Last: 1})
	kept := map[repository.ID]bool{}
	for _, v := range verdicts {
		kept[v.ID] = v.Keep
	}
	want := map[repository.ID]bool{oldA: false, midA: false, newA: true, otherPaths: true, otherHost: true}
	for id, keep := range want {
		if got, ok := kept[id]; !ok || got != keep {
			t.Errorf("backup %s: keep %v (judged: %v), want %v", id.Short(), got, ok, keep)
		}
	}
	if v := Plan(all, "b", retention.Policy{Last: 1}); len(v) != 1 || v[0].ID != otherHost {
		t.Errorf("Plan for host b: %+v, want only its one backup", v)
	}

	removed, err := Remove(ctx, repo, verdicts)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(removed, func(x, y repository.ID) int { return bytes.Compare(x[:], y[:]) })
	wantGone := []repository.ID{oldA, midA}
	slices.SortFunc(wantGone, func(x, y repository.ID) int { return bytes.Compare(x[:], y[:]) })
	if !slices.Equal(removed, wantGone) {
		t.Errorf("removed %v, want %v", removed, wantGone)
	}
	left, err := repo.Manifests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 3 {
		t.Errorf("%d backups left, want 3", len(left))
	}
}
