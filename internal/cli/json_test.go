package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestSetJSONGolden pins the JSON that scripts read from shadow create and
// shadow list: a change to it is a change to umbra's interface.
func TestSetJSONGolden(t *testing.T) {
	start := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	set := &shadow.Set{
		ID: "20261122T103000Z-3f9a2c1b", Status: shadow.StatusReady, Type: writer.Full, PID: 4242, Created: start,
		Shadows: []provider.Shadow{{Provider: "btrfs", SetID: "20261122T103000Z-3f9a2c1b",
			Volume: provider.Volume{Mount: "/srv", Device: "/dev/sdb1", FSType: "btrfs"},
			Roots:  []provider.Root{{Source: "/srv/app", Snapshot: "/srv/.umbra-shadow/20261122T103000Z-3f9a2c1b/0"}}}},
		Writers: []shadow.WriterResult{{Name: "sqlite:app", Consistency: shadow.Application,
			Metadata: writer.Metadata{Writer: "sqlite", Instance: "sqlite:app", Version: "3.54.1", Components: []writer.Component{{
				Name: "app.db", Kind: writer.KindDatabase, Paths: []string{"/srv/app/app.db", "/srv/app/app.db-wal"},
				Selectable: true, BackupTypes: []writer.BackupType{writer.Full, writer.Copy}, Needs: writer.NeedQuiesced,
				Restore: writer.RestoreMethod{Method: "stop-service"}}}},
			Components: []shadow.ComponentResult{{Name: "app.db", Consistency: shadow.Application, Paths: []string{"/srv/app/app.db", "/srv/app/app.db-wal"}}}}},
		Paths:       []shadow.PathResult{{Path: "/srv/app", Consistency: shadow.Crash}},
		FreezeStart: start.Add(10 * time.Millisecond),
		FreezeEnd:   start.Add(14*time.Millisecond + 250*time.Microsecond),
	}
	v := viewOf(set)
	v.DurationMS = 61
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "shadow-create.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestSetJSONGolden -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("shadow create --json changed (-want +got):\n%s\nrun with -update if the change is meant", cmp.Diff(string(want), string(got)))
	}
}
