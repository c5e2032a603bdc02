package writertest

import (
	"context"
	"slices"
	"sync"

	"github.com/umbra-backup/umbra/internal/writer"
)

var (
	_ writer.Writer           = (*Fake)(nil)
	_ writer.BackupPreparer   = (*Fake)(nil)
	_ writer.SnapshotPreparer = (*Fake)(nil)
	_ writer.Freezer          = (*Fake)(nil)
	_ writer.PostSnapshotter  = (*Fake)(nil)
	_ writer.Completer        = (*Fake)(nil)
	_ writer.Aborter          = (*Fake)(nil)
	_ writer.Restorer         = (*Fake)(nil)
)

// Fake is a writer for the coordinator's tests that implements every phase
// and does what its fields say. Set the fields before the first call and
// leave them alone afterwards; the call log is safe for concurrent use.
//
// Each phase first records its name in the call log, then runs
// Hooks[phase] if there is one and returns its error (a hook can hang until
// ctx ends, see Hang, or panic), and otherwise returns Errs[phase].
type Fake struct {
	// Metadata is what Identify returns; its Instance is the Name.
	Metadata writer.Metadata
	// Report is what PostSnapshot returns when it succeeds.
	Report writer.Report
	// Errs holds the error each phase returns.
	Errs map[writer.Phase]error
	// Hooks replace a phase's behaviour; they win over Errs.
	Hooks map[writer.Phase]func(ctx context.Context) error

	mu    sync.Mutex
	calls []writer.Phase
}

// NewFake returns a fake named name with one component, "data", of kind
// files at /fake/name, needing an atomic copy, and no errors.
func NewFake(name string) *Fake {
	return &Fake{Metadata: writer.Metadata{
		Writer:   "fake",
		Instance: name,
		Components: []writer.Component{{
			Name:        "data",
			Kind:        writer.KindFiles,
			Paths:       []string{"/fake/" + name},
			Selectable:  true,
			BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
			Needs:       writer.NeedAtomic,
			Restore:     writer.RestoreMethod{Method: "restore-if-absent"},
		}},
	}}
}

// Hang blocks until ctx ends and returns its error: a hook for a writer
// that never answers.
func Hang(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// Calls returns the phases called so far, in order.
func (f *Fake) Calls() []writer.Phase {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *Fake) do(ctx context.Context, phase writer.Phase) error {
	f.mu.Lock()
	f.calls = append(f.calls, phase)
	f.mu.Unlock()
	if h := f.Hooks[phase]; h != nil {
		return h(ctx)
	}
	return f.Errs[phase]
}

// Name returns f.Metadata.Instance.
func (f *Fake) Name() string { return f.Metadata.Instance }

// Identify returns f.Metadata.
func (f *Fake) Identify(ctx context.Context) (writer.Metadata, error) {
	if err := f.do(ctx, writer.PhaseIdentify); err != nil {
		return writer.Metadata{}, err
	}
	return f.Metadata, nil
}

// PrepareBackup records the call.
func (f *Fake) PrepareBackup(ctx context.Context, _ writer.Set) error {
	return f.do(ctx, writer.PhasePrepareBackup)
}

// PrepareSnapshot records the call.
func (f *Fake) PrepareSnapshot(ctx context.Context, _ writer.Set) error {
	return f.do(ctx, writer.PhasePrepareSnapshot)
}

// Freeze records the call.
func (f *Fake) Freeze(ctx context.Context, _ writer.Set) error {
	return f.do(ctx, writer.PhaseFreeze)
}

// Thaw records the call.
func (f *Fake) Thaw(ctx context.Context, _ writer.Set) error {
	return f.do(ctx, writer.PhaseThaw)
}

// PostSnapshot records the call and returns f.Report.
func (f *Fake) PostSnapshot(ctx context.Context, _ writer.Set) (writer.Report, error) {
	if err := f.do(ctx, writer.PhasePostSnapshot); err != nil {
		return writer.Report{}, err
	}
	return f.Report, nil
}

// BackupComplete records the call.
func (f *Fake) BackupComplete(ctx context.Context, _ writer.Completion) error {
	return f.do(ctx, writer.PhaseBackupComplete)
}

// Abort records the call.
func (f *Fake) Abort(ctx context.Context, _ writer.Set) error {
	return f.do(ctx, writer.PhaseAbort)
}

// PreRestore records the call.
func (f *Fake) PreRestore(ctx context.Context, _ writer.Restore) error {
	return f.do(ctx, writer.PhasePreRestore)
}

// PostRestore records the call.
func (f *Fake) PostRestore(ctx context.Context, _ writer.Restore) error {
	return f.do(ctx, writer.PhasePostRestore)
}
