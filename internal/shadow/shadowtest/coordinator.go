package shadowtest

import (
	"testing"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/provider/reflink"
	"github.com/umbra-backup/umbra/internal/shadow"
)

// NewCoordinator returns a coordinator with a store of its own and provs,
// or, given none, the umbra command's providers in its order: btrfs, reflink, live.
func NewCoordinator(t testing.TB, provs ...provider.Provider) *shadow.Coordinator {
	t.Helper()
	store, err := shadow.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(provs) == 0 {
		provs = []provider.Provider{btrfs.New(), reflink.New(), live.New()}
	}
	return shadow.New(provs, store, shadow.Options{})
}
