package repository

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/backendtest"
)

// client is one process's view of a shared repository: its own Repository
// on the same backend, as a separate host has.
func client(t *testing.T, be backend.Backend) *Repository {
	t.Helper()
	return reopen(t, be, "secret")
}

// backupUnderLock stores one backup of content as a backup does: lock,
// blobs, tree, flush, manifest, unlock.
func backupUnderLock(t *testing.T, r *Repository, content []byte) ID {
	t.Helper()
	lock, err := r.Lock(t.Context(), false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock(t.Context())
	return saveBackup(t, r, content)
}

// restorable checks that every backup in the repository reads back whole
// and that check --read-data finds nothing wrong.
func restorable(t *testing.T, be backend.Backend, want map[ID][]byte) {
	t.Helper()
	ctx := t.Context()
	r := client(t, be)
	for id, content := range want {
		m, err := r.LoadManifest(ctx, id)
		if err != nil {
			t.Fatalf("backup %s: %v", id.Short(), err)
		}
		tree, err := r.LoadTree(ctx, m.Tree)
		if err != nil {
			t.Fatalf("backup %s: %v", id.Short(), err)
		}
		got, err := r.LoadBlob(ctx, tree.Nodes[0].Content[0])
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("backup %s does not restore: %v", id.Short(), err)
		}
	}
	rep, err := r.Check(ctx, true, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("check --read-data: %+v, %v", rep, err)
	}
}

func forget(t *testing.T, be backend.Backend, id ID) {
	t.Helper()
	if err := be.Remove(t.Context(), backend.Handle{Type: backend.TypeManifest, Name: id.String()}); err != nil {
		t.Fatal(err)
	}
}

// A backup that opened the repository before a prune removed the data of a
// forgotten backup must not count on that data being there: the field
// failure of issue 10 (packs referenced by kept backups gone).
func TestBackupOpenedBeforePrune(t *testing.T) {
	_, be := newRepo(t)
	content := random(t, 100_000)
	old := backupUnderLock(t, client(t, be), content)

	late := client(t, be) // opens now, locks later
	forget(t, be, old)
	if _, err := client(t, be).Prune(t.Context(), PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	id := backupUnderLock(t, late, content)
	restorable(t, be, map[ID][]byte{id: content})
}

// A prune beside a running backup never deletes what that backup uses, even
// data it found in packs the prune found unused; and a backup that starts
// after the prune marked them does not take its data from them.
func TestPruneBesideRunningBackup(t *testing.T) {
	_, be := newRepo(t)
	ctx := t.Context()
	content := random(t, 100_000)
	old := backupUnderLock(t, client(t, be), content)
	forget(t, be, old)

	running := client(t, be)
	lock, err := running.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	pruner := client(t, be)
	rep, err := pruner.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatalf("prune beside a running backup: %v", err)
	}
	if rep.PacksDeleted != 0 || rep.PacksMarked == 0 {
		t.Fatalf("prune beside a running backup: %+v; want the unused packs marked, none deleted", rep)
	}
	// The running backup finds the content in its index and reuses it.
	id := saveBackup(t, running, content)

	// A backup starting now must store the content anew.
	later := client(t, be)
	laterLock, err := later.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	if later.HasBlob(later.BlobID(content)) {
		t.Error("a backup that started after the mark reuses data marked for deletion")
	}
	content2 := append(bytes.Clone(content), 1)
	id2 := saveBackup(t, later, content2)

	// While the first backup runs, a second prune deletes nothing it uses.
	if _, err := pruner.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	restorable(t, be, map[ID][]byte{id: content, id2: content2})
	lock.Unlock(ctx)
	laterLock.Unlock(ctx)

	// Once it has ended, the marked packs are looked at again: the one
	// the backup used is kept (indexed again), the rest deleted.
	rep, err = pruner.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksRescued == 0 {
		t.Errorf("prune after the backup ended: %+v; want the pack it used kept", rep)
	}
	restorable(t, be, map[ID][]byte{id: content, id2: content2})
	// With nothing running, a prune removes what no backup uses at once.
	forget(t, be, id)
	forget(t, be, id2)
	rep, err = pruner.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksDeleted == 0 || rep.PacksMarked != 0 {
		t.Errorf("prune with nothing running: %+v; want packs deleted at once", rep)
	}
	if n := countFiles(be, backend.TypeMark); n != 0 {
		t.Errorf("%d marks left after a prune with nothing running", n)
	}
	restorable(t, be, nil)
}

// Backups and prunes by many clients at once lose nothing.
func TestManyClientsWithPrune(t *testing.T) {
	_, be := newRepo(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	shared := random(t, 60_000)
	const clients, rounds = 8, 4
	type stored struct {
		id      ID
		content []byte
	}
	results := make(chan stored, clients*rounds)
	errs := make(chan error, clients+1)
	for c := range clients {
		go func() {
			for i := range rounds {
				r, err := Open(ctx, be, "secret")
				if err != nil {
					errs <- err
					return
				}
				lock, err := r.Lock(ctx, false, "backup")
				if err != nil {
					errs <- err
					return
				}
				content := append(bytes.Clone(shared), byte(c), byte(i))
				if i%2 == 1 {
					content = shared // the same data as everyone
				}
				id, _, err := r.SaveBlob(ctx, DataBlob, content)
				if err == nil {
					var tid ID
					tid, _, err = r.SaveTree(ctx, &Tree{Nodes: []Node{{Name: "f", Type: NodeFile, Size: int64(len(content)), Content: []ID{id}}}})
					if err == nil {
						err = r.Flush(ctx)
					}
					if err == nil {
						var mid ID
						mid, err = r.SaveManifest(ctx, &Manifest{Tree: tid, Time: time.Now(), Host: string(rune('a' + c))})
						results <- stored{mid, content}
					}
				}
				lock.Unlock(ctx)
				r.Close()
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	stop := make(chan struct{})
	pruned := make(chan int)
	go func() {
		n := 0
		defer func() { pruned <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := Open(ctx, be, "secret")
			if err != nil {
				errs <- err
				return
			}
			// Forget all but each host's newest backup, then prune.
			all, err := r.Manifests(ctx)
			if err == nil {
				newest := map[string]ID{}
				for _, m := range all {
					newest[m.Host] = m.ID
				}
				for _, m := range all {
					if newest[m.Host] != m.ID {
						_ = be.Remove(ctx, backend.Handle{Type: backend.TypeManifest, Name: m.ID.String()})
					}
				}
				_, err = r.Prune(ctx, PruneOptions{})
			}
			r.Close()
			if err != nil {
				errs <- err
				return
			}
			n++
		}
	}()
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if n := <-pruned; n == 0 {
		t.Fatal("no prune finished beside the backups")
	}
	close(results)
	want := map[ID][]byte{}
	all, err := client(t, be).Manifests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[ID]bool{}
	for _, m := range all {
		kept[m.ID] = true
	}
	for s := range results {
		if kept[s.id] {
			want[s.id] = s.content
		}
	}
	restorable(t, be, want)
}

func isLock(h backend.Handle) bool { return h.Type == backend.TypeLock }

// A lock that cannot be refreshed ends the work under it before another
// client may take it for stale: refreshes fail, and at lockGiveUp after the
// last good one the lock's context ends while, seen from another client,
// the lock is still live; the backup under it cannot store anything more.
func TestLockThatCannotBeRefreshed(t *testing.T) {
	_, be := newRepo(t)
	fb := &backendtest.Faulty{Backend: be}
	r := client(t, fb)
	ctx := t.Context()
	lock, err := r.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock(ctx)
	start := lock.lastOK
	fb.Down(isLock)
	if err := lock.refreshAt(start.Add(lockRefresh)); err == nil || errors.Is(err, ErrLockLost) {
		t.Fatalf("first failed refresh: %v; want an error, not yet the lock lost", err)
	}
	if lock.Context().Err() != nil {
		t.Fatal("one failed refresh ended the work")
	}
	giveUp := start.Add(lockGiveUp)
	if err := lock.refreshAt(giveUp); !errors.Is(err, ErrLockLost) {
		t.Fatalf("refresh failing for %s: %v; want ErrLockLost", lockGiveUp, err)
	}
	if !errors.Is(context.Cause(lock.Context()), ErrLockLost) {
		t.Fatalf("the lock's context: %v; want it ended by ErrLockLost", context.Cause(lock.Context()))
	}
	// Another client, at that moment, still sees a live lock: the work
	// stopped first.
	other := client(t, be)
	info, err := other.readLock(ctx, lock.handle())
	if err != nil {
		t.Fatal(err)
	}
	if info.stale(giveUp, "another host") {
		t.Errorf("the lock was stale for other clients (at %s after its last refresh) before its holder gave up", lockGiveUp)
	}
	// Work under the lost lock fails instead of storing more.
	if _, _, err := r.SaveBlob(lock.Context(), DataBlob, random(t, 20<<20)); err == nil {
		if err = r.Flush(lock.Context()); err == nil {
			t.Error("a backup under a lost lock stored its data")
		}
	}
}

// A lock whose file another client removed (taking it for stale) is lost
// at the next refresh; with real timing, a lock that cannot be written ends
// its context by itself.
func TestLockLost(t *testing.T) {
	_, be := newRepo(t)
	ctx := t.Context()
	r := client(t, be)
	lock, err := r.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Remove(ctx, lock.handle()); err != nil {
		t.Fatal(err)
	}
	if err := lock.refreshAt(time.Now()); !errors.Is(err, ErrLockLost) || lock.Context().Err() == nil {
		t.Errorf("refresh of a removed lock: %v; want ErrLockLost and the context ended", err)
	}
	lock.Unlock(ctx)

	defer func(refresh, retry, giveUp time.Duration) {
		lockRefresh, lockRetry, lockGiveUp = refresh, retry, giveUp
	}(lockRefresh, lockRetry, lockGiveUp)
	lockRefresh, lockRetry, lockGiveUp = 5*time.Millisecond, 5*time.Millisecond, 50*time.Millisecond
	fb := &backendtest.Faulty{Backend: be}
	r2 := client(t, fb)
	lock2, err := r2.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	defer lock2.Unlock(ctx)
	fb.Down(isLock)
	select {
	case <-lock2.Context().Done():
		if !errors.Is(context.Cause(lock2.Context()), ErrLockLost) {
			t.Errorf("the lock's context ended with %v, want ErrLockLost", context.Cause(lock2.Context()))
		}
	case <-time.After(time.Minute):
		t.Fatal("a lock that cannot be written was held for a minute")
	}
}
