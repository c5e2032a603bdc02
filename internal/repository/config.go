package repository

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// FormatVersion is the version of docs/repository.md this code writes.
const FormatVersion = 1

// Config is the repository's plaintext configuration, fixed at init.
type Config struct {
	Version int           `json:"version"`
	ID      string        `json:"id"`
	Created time.Time     `json:"created"`
	Chunker ChunkerParams `json:"chunker"`
	// PackSize is the size at which a pack file is finished.
	PackSize int `json:"pack_size"`
	// Compression is how new blobs are compressed (see Compression*).
	// Readers need no setting: each blob's flags say how it is stored.
	// Repositories made before the field existed have none: "fast".
	Compression string `json:"compression,omitempty"`
}

// Compression settings: what a repository compresses new blobs with.
const (
	// CompressionFast is LZ4 for blobs up to 64 KiB (the 16 KiB blocks of
	// database files) and zstd's fastest level above: the least CPU.
	CompressionFast = "fast"
	// CompressionAuto is zstd's fastest level for every blob: a database
	// with real rows takes about a third less room than with LZ4, for about
	// twice the CPU of its first backup; incrementals, which compress only
	// changed blocks, cost the same (docs/benchmarks.md).
	CompressionAuto = "auto"
	// CompressionMax is zstd's better level for every blob: a few per cent
	// smaller again, at about three times auto's CPU.
	CompressionMax = "max"
)

// Compressions lists the settings, for help texts and errors.
var Compressions = []string{CompressionAuto, CompressionFast, CompressionMax}

// compression returns the setting, a missing one read as fast.
func (c Config) compression() string {
	if c.Compression == "" {
		return CompressionFast
	}
	return c.Compression
}

// ChunkerParams say how files are cut into chunks.
type ChunkerParams struct {
	// Content-defined (FastCDC) sizes for ordinary files.
	MinSize int `json:"min_size"`
	AvgSize int `json:"avg_size"`
	MaxSize int `json:"max_size"`
	// BlockSize is the fixed, aligned chunk size for block-like files
	// (databases, disk images): small enough that scattered page writes
	// touch few blocks, large enough to keep the index small.
	BlockSize int `json:"block_size"`
}

// DefaultConfig is used by Init unless options say otherwise.
func DefaultConfig() Config {
	return Config{
		Version:     FormatVersion,
		Chunker:     ChunkerParams{MinSize: 256 << 10, AvgSize: 1 << 20, MaxSize: 4 << 20, BlockSize: 16 << 10},
		PackSize:    16 << 20,
		Compression: CompressionAuto,
	}
}

func (c Config) validate() error {
	if c.Version != FormatVersion {
		return fmt.Errorf("repository format version %d; this umbra reads version %d: use a matching umbra", c.Version, FormatVersion)
	}
	ch := c.Chunker
	if ch.MinSize < 64 || ch.MinSize > ch.AvgSize || ch.AvgSize > ch.MaxSize || ch.MaxSize > 64<<20 {
		return fmt.Errorf("chunker sizes %d/%d/%d are not min ≤ avg ≤ max within 64 B..64 MiB", ch.MinSize, ch.AvgSize, ch.MaxSize)
	}
	if ch.BlockSize < 512 || ch.BlockSize > 16<<20 || ch.BlockSize&(ch.BlockSize-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two in 512 B..16 MiB", ch.BlockSize)
	}
	if !slices.Contains(Compressions, c.compression()) {
		return fmt.Errorf("compression %q: want one of %s", c.Compression, strings.Join(Compressions, ", "))
	}
	if c.PackSize < 1<<20 || c.PackSize > 1<<30 {
		return fmt.Errorf("pack size %d is not within 1 MiB..1 GiB", c.PackSize)
	}
	return nil
}

func newRepoID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
