package live

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/providertest"
)

func TestConformance(t *testing.T) {
	// The live provider touches nothing, so any directory can stand in for
	// a mounted volume; no root needed.
	providertest.Run(t, New(), func(t *testing.T) (provider.Volume, string) {
		mount := t.TempDir()
		dir := filepath.Join(mount, "data")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return provider.Volume{Mount: mount, Device: "/dev/fake", FSType: "ext4"}, dir
	})
}

func TestCreate(t *testing.T) {
	vol := provider.Volume{Mount: "/srv/", FSType: "ext4", ReadOnly: true}
	p := New()
	if err := p.CanServe(vol); err != nil {
		t.Errorf("CanServe(%+v) = %v, want nil", vol, err)
	}
	sh, err := p.Create(t.Context(), provider.Request{SetID: "s", Volume: vol, Paths: []string{"/srv/db"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []provider.Root{{Source: "/srv", Snapshot: "/srv"}}
	if len(sh.Roots) != 1 || sh.Roots[0] != want[0] || sh.Provider != "live" || sh.SetID != "s" {
		t.Errorf("Create = %+v, want provider live, set s, roots %+v", sh, want)
	}
}
