// Package provider defines the contract for mechanisms that take the
// point-in-time copy of a volume (btrfs snapshot, reflink clone, live).
//
// The coordinator calls, for one volume of one set: CanServe (any time),
// Prepare if implemented, then Create once inside the commit window, and
// Delete when the set is deleted or aborted. Delete must succeed on a shadow
// whose Create failed half-way or whose files are already gone, so that abort
// and crash clean-up can always call it. Create runs inside the freeze window:
// it must be quick and must honour ctx.
//
// Providers for different volumes run in parallel; a provider never gets two
// calls for the same volume at once.
package provider

import (
	"context"
	"time"
)

// Volume is a mounted filesystem, read from the mount table.
type Volume struct {
	Mount    string `json:"mount"`  // mount point
	Device   string `json:"device"` // source device, as the mount table says
	FSType   string `json:"fstype"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Copy says what kind of copy a provider makes.
type Copy string

// Copy kinds, strongest first.
const (
	// CopyAtomic: the whole volume at one instant (btrfs snapshot).
	CopyAtomic Copy = "atomic"
	// CopyPerFile: each file copied at its own instant during the commit,
	// consistent only while writers are frozen (reflink).
	CopyPerFile Copy = "per-file"
	// CopyNone: no copy; the shadow is the live volume.
	CopyNone Copy = "none"
)

// Capabilities say what a provider's shadow is and what it can do.
type Capabilities struct {
	Copy Copy
	// FrozenCommit is set when Create works on a filesystem frozen with
	// FIFREEZE: true for block-level snapshots, false for mechanisms that
	// write through the filesystem (btrfs snapshots and FICLONE block on a
	// frozen filesystem until it is thawed).
	FrozenCommit bool
}

// Request asks for the shadow copy of some paths on one volume.
type Request struct {
	SetID  string
	Volume Volume
	Paths  []string // absolute, cleaned, all on Volume
}

// Shadow is a provider's record of one volume's shadow copy. It is stored
// as JSON between processes, so Delete and Revert must work from it alone.
type Shadow struct {
	Provider string    `json:"provider"`
	SetID    string    `json:"set_id"`
	Volume   Volume    `json:"volume"`
	Roots    []Root    `json:"roots"`
	Created  time.Time `json:"created"`
}

// Root maps a live directory to the directory holding its shadow copy.
// Every requested path lies under one root's Source.
type Root struct {
	Source   string `json:"source"`
	Snapshot string `json:"snapshot"`
}

// Provider is the required core of every provider.
type Provider interface {
	Name() string
	Capabilities() Capabilities
	// CanServe returns nil if the provider can snapshot vol, or an error
	// saying why not.
	CanServe(vol Volume) error
	// Create takes the shadow copy. On error it removes what it made.
	Create(ctx context.Context, req Request) (Shadow, error)
	// Delete removes a shadow copy; it is idempotent.
	Delete(ctx context.Context, sh Shadow) error
}

// Preparer does slow work before the freeze (PrepareSnapshot).
type Preparer interface {
	Prepare(ctx context.Context, req Request) error
}

// Reverter rolls the live volume back to the shadow's content.
type Reverter interface {
	Revert(ctx context.Context, sh Shadow) error
}

// ShadowDir is the hidden directory, at a volume's mount point, under which
// providers that keep copies on the volume itself put them:
// <mount>/.umbra-shadow/<set id>/.
const ShadowDir = ".umbra-shadow"
