package repository

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/dict"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// BenchmarkBlockCompression compares ways to compress the 16 KiB blocks
// of real database files (the non-zero ones, as umbra stores them), one
// block at a time as the repository does: each sub-benchmark reports the
// stored size as a share of the input (ratio) and its speed on one core.
// The ways of the compression settings, and two that would need a format
// change: a dictionary trained on a sample of the blocks, and 1 MiB runs
// of consecutive blocks compressed together.
//
//	UMBRA_BENCH_BLOCKS=/var/lib/postgresql/15/main/base go test -run '^$' -bench BlockCompression ./internal/repository
func BenchmarkBlockCompression(b *testing.B) {
	dir := os.Getenv("UMBRA_BENCH_BLOCKS")
	if dir == "" {
		b.Skip("set UMBRA_BENCH_BLOCKS to a directory of database files")
	}
	var blocks [][]byte
	total := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || total >= 4<<30 {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i := 0; i+16<<10 <= len(data); i += 16 << 10 {
			if blk := data[i : i+16<<10]; !AllZero(blk) {
				blocks = append(blocks, blk)
				total += len(blk)
			}
		}
		return nil
	})
	if err != nil || len(blocks) == 0 {
		b.Fatalf("no blocks under %s (%v)", dir, err)
	}
	zstdWith := func(level zstd.EncoderLevel, opts ...zstd.EOption) func([]byte, []byte) []byte {
		enc, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(4 << 20), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false)}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		return func(dst, src []byte) []byte { return enc.EncodeAll(src, dst[:0]) }
	}
	var sample [][]byte
	for i := 0; i < len(blocks); i += max(1, len(blocks)/1000) {
		sample = append(sample, blocks[i])
	}
	trained, err := dict.BuildZstdDict(sample, dict.Options{MaxDictSize: 112 << 10, HashBytes: 6, ZstdDictID: 1, ZstdLevel: zstd.SpeedFastest})
	if err != nil {
		b.Fatal(err)
	}
	ways := []struct {
		name   string
		run    int // blocks compressed together
		squash func(dst, src []byte) []byte
	}{
		{"lz4", 1, func(dst, src []byte) []byte {
			n, _ := lz4.CompressBlock(src, dst[:cap(dst)], nil)
			return dst[:n]
		}},
		{"zstd-fastest", 1, zstdWith(zstd.SpeedFastest)},
		{"zstd-better", 1, zstdWith(zstd.SpeedBetterCompression)},
		{"zstd-fastest-dict", 1, zstdWith(zstd.SpeedFastest, zstd.WithEncoderDict(trained))},
		{"zstd-fastest-1MiB-runs", 64, zstdWith(zstd.SpeedFastest)},
	}
	for _, w := range ways {
		b.Run(w.name, func(b *testing.B) {
			dst := make([]byte, 0, 2*w.run*16<<10)
			run := make([]byte, 0, w.run*16<<10)
			stored := 0
			b.SetBytes(int64(total))
			for b.Loop() {
				stored = 0
				for i := 0; i < len(blocks); i += w.run {
					run = run[:0]
					for _, blk := range blocks[i:min(i+w.run, len(blocks))] {
						run = append(run, blk...)
					}
					c := w.squash(dst, run)
					// Stored as it is unless compression saves 1/32.
					if len(c) == 0 || len(c) >= len(run)-len(run)/32 {
						stored += len(run)
					} else {
						stored += len(c)
					}
				}
			}
			b.ReportMetric(float64(stored)/float64(total), "ratio")
		})
	}
}
