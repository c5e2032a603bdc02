// Package repository is umbra's storage format: content-addressed,
// deduplicated, compressed and encrypted blobs in pack files, per-pack
// index files, trees of file metadata, backup manifests and password keys,
// on any backend. docs/repository.md is its specification.
package repository

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/zeebo/blake3"
)

// ID names a blob, pack, index or manifest: 32 bytes of BLAKE3.
type ID [32]byte

// String is the full lowercase hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 8 hex digits, as shown to people.
func (id ID) Short() string { return id.String()[:8] }

// IsZero reports whether id is unset.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText writes the hex form (JSON, map keys).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads the hex form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseID reads a full hex id.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid id %q: want 64 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// hashID is the unkeyed hash that names pack, index and manifest files by
// their stored bytes, so that check can verify them without the key.
func hashID(data []byte) ID { return blake3.Sum256(data) }

// matchPrefix finds the one id among ids that starts with prefix.
func matchPrefix(prefix string, ids []ID) (ID, error) {
	var found []ID
	for _, id := range ids {
		if strings.HasPrefix(id.String(), prefix) {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return ID{}, fmt.Errorf("no backup with id %s", prefix)
	case 1:
		return found[0], nil
	}
	return ID{}, fmt.Errorf("backup id %s is ambiguous (%d match); give more digits", prefix, len(found))
}
