package repository

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/backend"
)

func TestWAL(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	seg := bytes.Repeat([]byte("wal record "), 100000)
	if err := r.SaveWAL(ctx, "00000001000000000000000A", seg); err != nil {
		t.Fatal(err)
	}
	if err := r.SaveWAL(ctx, "00000001000000000000000A", seg); err != nil {
		t.Errorf("archiving the same segment again: %v, want success", err)
	}
	if err := r.SaveWAL(ctx, "00000001000000000000000A", seg[1:]); err == nil {
		t.Error("other content under an archived name was accepted")
	}
	got, err := r.LoadWAL(ctx, "00000001000000000000000A")
	if err != nil || !bytes.Equal(got, seg) {
		t.Fatalf("LoadWAL: %d bytes, %v", len(got), err)
	}
	if _, err := r.LoadWAL(ctx, "00000001000000000000000B"); !errors.Is(err, ErrNoWAL) {
		t.Errorf("missing segment: %v, want ErrNoWAL", err)
	}
	for _, bad := range []string{"../config", "a/b", ""} {
		if err := r.SaveWAL(ctx, bad, seg); err == nil {
			t.Errorf("SaveWAL(%q) accepted a bad name", bad)
		}
	}
	// A file renamed in the repository does not open as another.
	files := be.Files()
	for h, data := range files {
		if h.Type == backend.TypeWAL {
			be.Put(backend.Handle{Type: backend.TypeWAL, Name: "00000001000000000000000c"}, data)
		}
	}
	if _, err := r.LoadWAL(ctx, "00000001000000000000000C"); !errors.Is(err, ErrAuth) {
		t.Errorf("renamed WAL file: %v, want an authentication error", err)
	}
	names, err := r.WALNames(ctx)
	if err != nil || len(names) != 2 || !strings.HasPrefix(names[0], "00000001") {
		t.Errorf("WALNames = %v, %v", names, err)
	}
}
