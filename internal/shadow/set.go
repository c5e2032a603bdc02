// Package shadow is the coordinator: it drives writers and providers through
// the phases of DESIGN §1 to make one shadow set — a point-in-time copy of
// every volume that holds the selected data — and always ends in either a
// complete set or an abort that thaws every writer and deletes every shadow.
package shadow

import (
	"errors"
	"fmt"
	"time"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/writer"
)

// Sentinels callers branch on.
var (
	ErrBusy  = fmt.Errorf("busy: %w", writer.ErrRetryable)
	ErrNoSet = errors.New("no such shadow set")
)

// Status of a set.
type Status string

// Set statuses. A set is "creating" only while its creator runs; a creating
// set whose creator died is cleaned up and never reported as ready.
const (
	StatusCreating Status = "creating"
	StatusReady    Status = "ready"
	StatusFailed   Status = "failed"
)

// Consistency is what a component's copy is consistent with.
type Consistency string

// Consistency levels (DESIGN §1).
const (
	Application Consistency = "application"
	Crash       Consistency = "crash"
	None        Consistency = "none"
)

// Set is one shadow set, as recorded in the state directory.
type Set struct {
	ID     string            `json:"id"`
	Status Status            `json:"status"`
	Type   writer.BackupType `json:"type"`
	// CopyReason says why a set asked for as a truncating backup became a
	// copy backup: another tool owns a writer's logs.
	CopyReason string `json:"copy_reason,omitempty"`
	// Temporary sets belong to a requester reading them (umbra backup):
	// they live only as long as its process.
	Temporary bool      `json:"temporary,omitempty"`
	PID       int       `json:"pid"`
	Created   time.Time `json:"created"`
	// Planned lists the volumes and providers chosen before the commit, so
	// that clean-up after a crash knows where shadows may be.
	Planned     []Planned         `json:"planned,omitempty"`
	Shadows     []provider.Shadow `json:"shadows,omitempty"`
	Writers     []WriterResult    `json:"writers,omitempty"`
	Paths       []PathResult      `json:"paths,omitempty"`
	FreezeStart time.Time         `json:"freeze_start,omitzero"`
	FreezeEnd   time.Time         `json:"freeze_end,omitzero"`
	// Exposed lists directories where the set is mounted read-only.
	Exposed []string `json:"exposed,omitempty"`
	// Scratch holds the files writers hand on; it goes with the set.
	Scratch string `json:"scratch,omitempty"`
	// OwnCopies are the components ("writer/component") whose writer
	// makes their copy itself, as no provider could (writer.Set).
	OwnCopies []string `json:"own_copies,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// Planned is a volume and the provider chosen for it.
type Planned struct {
	Volume   provider.Volume `json:"volume"`
	Provider string          `json:"provider"`
	Paths    []string        `json:"paths"`
}

// WriterResult is one writer's part in a set.
type WriterResult struct {
	Name        string            `json:"name"`
	Consistency Consistency       `json:"consistency"`
	Metadata    writer.Metadata   `json:"metadata"`
	Components  []ComponentResult `json:"components"`
	Report      writer.Report     `json:"report,omitzero"`
}

// ComponentResult is one component's consistency.
type ComponentResult struct {
	Name        string      `json:"name"`
	Consistency Consistency `json:"consistency"`
	Paths       []string    `json:"paths"`
}

// PathResult is a path given by the user, not covered by a writer.
type PathResult struct {
	Path        string      `json:"path"`
	Consistency Consistency `json:"consistency"`
}

// FreezeWindow is how long writers were frozen.
func (s *Set) FreezeWindow() time.Duration { return s.FreezeEnd.Sub(s.FreezeStart) }

// Volume is a flat view of one shadowed directory.
type Volume struct {
	Source   string `json:"source"`
	Snapshot string `json:"snapshot"`
	Provider string `json:"provider"`
	Mount    string `json:"mount"`
	Live     bool   `json:"live,omitempty"` // no copy: Snapshot is the live directory
}

// Volumes lists every shadowed directory of the set.
func (s *Set) Volumes() []Volume {
	var vs []Volume
	for _, sh := range s.Shadows {
		for _, r := range sh.Roots {
			vs = append(vs, Volume{Source: r.Source, Snapshot: r.Snapshot, Provider: sh.Provider, Mount: sh.Volume.Mount, Live: r.Snapshot == r.Source})
		}
	}
	return vs
}

// writerVolumes is the set as writers see it.
func (s *Set) writerSet() writer.Set {
	ws := writer.Set{ID: s.ID, Type: s.Type, Scratch: s.Scratch, OwnCopies: s.OwnCopies}
	for _, v := range s.Volumes() {
		ws.Volumes = append(ws.Volumes, writer.Volume{Source: v.Source, Snapshot: v.Snapshot, Live: v.Live})
	}
	return ws
}

// PhaseError is a failure of one writer or provider in one phase.
type PhaseError struct {
	Who       string // writer or provider name, or "" for the coordinator
	Phase     writer.Phase
	Retryable bool
	Err       error
}

func (e *PhaseError) Error() string {
	kind := "not retryable"
	if e.Retryable {
		kind = "retryable"
	}
	if e.Who == "" {
		return fmt.Sprintf("%s (%s): %v", e.Phase, kind, e.Err)
	}
	return fmt.Sprintf("%s: %s (%s): %v", e.Phase, e.Who, kind, e.Err)
}

func (e *PhaseError) Unwrap() error { return e.Err }

func phaseError(who string, p writer.Phase, err error) *PhaseError {
	var pe *PhaseError
	if errors.As(err, &pe) {
		return pe
	}
	return &PhaseError{Who: who, Phase: p, Retryable: errors.Is(err, writer.ErrRetryable), Err: err}
}
