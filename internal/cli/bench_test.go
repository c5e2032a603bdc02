package cli

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// BenchmarkFreezeWindow makes one shadow set per iteration of a SQLite
// database under a load committing as fast as it can, on btrfs, through the
// CLI as an operator runs it, and reports the freeze window and the time
// from "umbra shadow create" to its exit at p50 and p99.
//
//	scripts/bench-freeze.sh        (go test -bench FreezeWindow -benchtime 50x ./cmd/umbra)
func BenchmarkFreezeWindow(b *testing.B) {
	fs := testenv.Btrfs(b)
	db := filepath.Join(fs.Subvolume(b, "app"), "app.db")
	load := testenv.StartSQLiteLoad(b, db)
	state := b.TempDir()
	var freeze, total []float64
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res := mustUmbra(b, state, "--json", "shadow", "create", "--writer", "sqlite:path="+db)
		total = append(total, ms(time.Since(start)))
		set := decodeSet(b, res)
		freeze = append(freeze, set.FreezeMS)
		mustUmbra(b, state, "shadow", "delete", set.ID)
	}
	b.StopTimer()
	acks := load.Stop()
	b.ReportMetric(percentile(freeze, 50), "freeze-p50-ms")
	b.ReportMetric(percentile(freeze, 99), "freeze-p99-ms")
	b.ReportMetric(percentile(total, 50), "create-p50-ms")
	b.ReportMetric(percentile(total, 99), "create-p99-ms")
	b.Logf("%d sets; freeze window p50 %.1f ms p99 %.1f ms max %.1f ms; create to exit p50 %.0f ms p99 %.0f ms; load committed %d times",
		len(freeze), percentile(freeze, 50), percentile(freeze, 99), slices.Max(freeze), percentile(total, 50), percentile(total, 99), len(acks))
}

// percentile by nearest rank.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}
