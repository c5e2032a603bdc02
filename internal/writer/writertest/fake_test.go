package writertest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/writer"
)

func TestFakeConforms(t *testing.T) {
	Run(t, func(t *testing.T) writer.Writer { return NewFake("fake:a") })
}

func TestFakeCallsHooksAndErrors(t *testing.T) {
	boom := errors.New("boom")
	f := NewFake("fake:b")
	f.Errs = map[writer.Phase]error{writer.PhasePrepareSnapshot: boom}
	f.Hooks = map[writer.Phase]func(context.Context) error{writer.PhaseFreeze: Hang}
	ctx := t.Context()
	set := writer.Set{ID: "s", Type: writer.Full}

	if _, err := f.Identify(ctx); err != nil {
		t.Fatalf("Identify: got %v, want nil", err)
	}
	if err := f.PrepareSnapshot(ctx, set); !errors.Is(err, boom) {
		t.Errorf("PrepareSnapshot: got %v, want %v", err, boom)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := f.Freeze(fctx, set); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Freeze with Hang: got %v, want %v", err, context.DeadlineExceeded)
	}
	if err := f.Abort(ctx, set); err != nil {
		t.Errorf("Abort: got %v, want nil", err)
	}
	want := []writer.Phase{writer.PhaseIdentify, writer.PhasePrepareSnapshot, writer.PhaseFreeze, writer.PhaseAbort}
	if diff := cmp.Diff(want, f.Calls()); diff != "" {
		t.Errorf("Calls (-want +got):\n%s", diff)
	}
}
