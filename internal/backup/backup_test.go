package backup

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/umbra-backup/umbra/internal/backend/mem"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
)

func TestWALKey(t *testing.T) {
	if got := WALKey("postgres:Main", "000000010000000000000003"); got != "postgres-3a-4dain.000000010000000000000003" {
		t.Errorf("WALKey = %q", got)
	}
	if WALKey("a.b", "x") == WALKey("a-b", "x") || WALKey("a-b", "x") == WALKey("a-2db", "x") {
		t.Error("two writer names share a WAL prefix")
	}
	if got := WALKey("", "00000002.history"); got != "00000002.history" {
		t.Errorf("WALKey without a writer = %q", got)
	}
}

// TestPruneArchive: archived segments older than the oldest backup's
// archive_from go, for that writer only; histories and newer segments stay.
func TestPruneArchive(t *testing.T) {
	ctx := t.Context()
	repo, err := repository.Init(ctx, mem.New(), "pw", repository.Options{KDF: repository.KDFParams{Time: 1, Memory: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	for _, n := range []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000005", "00000002.history"} {
		for _, w := range []string{"postgres:main", "postgres:other"} {
			if err := repo.SaveWAL(ctx, WALKey(w, n), []byte(n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	save := func(from string) *Info {
		info := &Info{Type: writer.Full, Writers: []WriterInfo{{Name: "postgres:main",
			Report: writer.Report{Positions: map[string]string{writer.PosArchiveFrom: from}}}}}
		extra, _ := json.Marshal(info)
		if _, err := repo.SaveManifest(ctx, &repository.Manifest{Extra: extra}); err != nil {
			t.Fatal(err)
		}
		return info
	}
	save("000000010000000000000002")
	latest := save("000000010000000000000005")
	if err := pruneArchive(ctx, repo, latest, nil); err != nil {
		t.Fatal(err)
	}
	names, err := repo.WALNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"postgres-3amain.000000010000000000000002", "postgres-3amain.000000010000000000000005", "postgres-3amain.00000002.history",
		"postgres-3aother.000000010000000000000001", "postgres-3aother.000000010000000000000002",
		"postgres-3aother.000000010000000000000005", "postgres-3aother.00000002.history",
	}
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Errorf("after pruning: %v\nwant %v", names, want)
	}
	// A writer told to truncate nothing keeps its whole archive.
	if err := pruneArchive(ctx, repo, latest, []string{"postgres:main"}); err != nil {
		t.Fatal(err)
	}
}
