// Package live is the provider that makes no copy: the shadow is the live
// volume, consistent only while its writers stay frozen or are safe to copy
// live.
package live

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/umbra-backup/umbra/internal/provider"
)

// Provider serves any volume by pointing the shadow at the volume itself.
type Provider struct{}

var _ provider.Provider = (*Provider)(nil)

// New returns the live provider.
func New() *Provider { return &Provider{} }

// Name returns "live".
func (p *Provider) Name() string { return "live" }

// Capabilities says there is no copy, so the filesystem may stay frozen
// for the whole commit.
func (p *Provider) Capabilities() provider.Capabilities {
	return provider.Capabilities{Copy: provider.CopyNone, FrozenCommit: true}
}

// CanServe accepts every volume.
func (p *Provider) CanServe(provider.Volume) error { return nil }

// Create returns a shadow whose only root maps the mount point to itself.
func (p *Provider) Create(ctx context.Context, req provider.Request) (provider.Shadow, error) {
	if err := ctx.Err(); err != nil {
		return provider.Shadow{}, fmt.Errorf("live shadow of %s: %w", req.Volume.Mount, err)
	}
	mount := filepath.Clean(req.Volume.Mount)
	return provider.Shadow{
		Provider: p.Name(),
		SetID:    req.SetID,
		Volume:   req.Volume,
		Roots:    []provider.Root{{Source: mount, Snapshot: mount}},
		Created:  time.Now(),
	}, nil
}

// Delete does nothing: there is no copy to remove.
func (p *Provider) Delete(context.Context, provider.Shadow) error { return nil }
