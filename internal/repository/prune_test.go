package repository

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// saveBackup stores one backup of a file with the given content.
func saveBackup(t *testing.T, r *Repository, content []byte) ID {
	t.Helper()
	ctx := t.Context()
	id, _, err := r.SaveBlob(ctx, DataBlob, content)
	if err != nil {
		t.Fatal(err)
	}
	tid, _, err := r.SaveTree(ctx, &Tree{Nodes: []Node{{Name: "f", Type: NodeFile, Size: int64(len(content)), Content: []ID{id}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mid, err := r.SaveManifest(ctx, &Manifest{Tree: tid, Time: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return mid
}

func countFiles(be interface {
	Files() map[backend.Handle][]byte
}, typ backend.Type) int {
	n := 0
	for h := range be.Files() {
		if h.Type == typ {
			n++
		}
	}
	return n
}

func TestPruneRemovesOnlyUnused(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	keepData, dropData := random(t, 100_000), random(t, 100_000)
	keep := saveBackup(t, r, keepData)
	drop := saveBackup(t, r, dropData)
	if err := r.be.Remove(ctx, backend.Handle{Type: backend.TypeManifest, Name: drop.String()}); err != nil {
		t.Fatal(err)
	}
	packsBefore := countFiles(be, backend.TypePack)
	dry, err := r.Prune(ctx, PruneOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if countFiles(be, backend.TypePack) != packsBefore || dry.PacksMarked == 0 || dry.PacksDeleted != 0 {
		t.Fatalf("dry run: %+v, and %d packs now (had %d)", dry, countFiles(be, backend.TypePack), packsBefore)
	}
	rep, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksDeleted == 0 || rep.BytesFreed < 100_000 {
		t.Errorf("prune: %+v; want the dropped backup's packs gone", rep)
	}
	r2 := reopen(t, be, "secret")
	c, err := r2.Check(ctx, true, nil)
	if err != nil || !c.OK() || len(c.Notes) != 0 {
		t.Fatalf("check after prune: %+v, %v", c, err)
	}
	m, err := r2.LoadManifest(ctx, keep)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := r2.LoadTree(ctx, m.Tree)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r2.LoadBlob(ctx, tree.Nodes[0].Content[0]); err != nil || string(got) != string(keepData) {
		t.Errorf("kept backup after prune: %v", err)
	}
	if r2.HasBlob(r2.BlobID(dropData)) {
		t.Error("the forgotten backup's data is still indexed")
	}
}

// A pack mostly unused is rewritten with only its used blobs.
func TestPruneRepacks(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	used := random(t, 10_000)
	var ids []ID
	for _, b := range [][]byte{used, random(t, 200_000), random(t, 200_000)} {
		id, _, err := r.SaveBlob(ctx, DataBlob, b)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	tid, _, err := r.SaveTree(ctx, &Tree{Nodes: []Node{{Name: "f", Type: NodeFile, Size: 10_000, Content: ids[:1]}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveManifest(ctx, &Manifest{Tree: tid}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksRepacked != 1 || rep.PacksWritten != 1 || rep.BlobsRemoved != 2 {
		t.Errorf("prune: %+v; want the data pack repacked, 2 blobs removed", rep)
	}
	r2 := reopen(t, be, "secret")
	if got, err := r2.LoadBlob(ctx, ids[0]); err != nil || string(got) != string(used) {
		t.Errorf("used blob after repack: %v", err)
	}
	if c, err := r2.Check(ctx, true, nil); err != nil || !c.OK() {
		t.Errorf("check after repack: %+v, %v", c, err)
	}
}

// Backups share the repository with each other and with one prune; prunes
// (and checks) exclude one another.
func TestLocks(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	shared1, err := r.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatal(err)
	}
	shared2, err := r.Lock(ctx, false, "backup")
	if err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
		t.Errorf("prune beside a backup's lock: %v", err)
	}
	ex, err := r.Lock(ctx, true, "prune")
	if err != nil {
		t.Fatalf("exclusive lock beside shared ones: %v", err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); !errors.Is(err, ErrLocked) {
		t.Errorf("prune beside another prune: got %v, want ErrLocked", err)
	}
	shared3, err := r.Lock(ctx, false, "backup")
	if err != nil {
		t.Errorf("backup beside prune's lock: %v", err)
	}
	for _, l := range []*Lock{shared1, shared2, shared3, ex} {
		if err := l.Unlock(ctx); err != nil {
			t.Error(err)
		}
	}
}

func TestStaleLocksExpire(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	for _, info := range []lockInfo{
		{Exclusive: false, Host: "elsewhere", PID: 1, Time: time.Now().Add(-lockStale - time.Minute)}, // not refreshed
		{Exclusive: false, Host: hostname(t), PID: deadPID(t), Time: time.Now()},                      // process gone
	} {
		l := &Lock{repo: r, name: "stale" + time.Now().Format("150405.000000000"), info: info}
		if err := l.write(ctx); err != nil {
			t.Fatal(err)
		}
	}
	live := &Lock{repo: r, name: "live", info: lockInfo{Host: "elsewhere", PID: 1, Time: time.Now()}}
	if err := live.write(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lock(ctx, true, "prune"); !errors.Is(err, ErrLocked) {
		t.Fatalf("a live lock from another host: got %v, want ErrLocked", err)
	}
	if err := r.be.Remove(ctx, live.handle()); err != nil {
		t.Fatal(err)
	}
	ex, err := r.Lock(ctx, true, "prune")
	if err != nil {
		t.Fatalf("stale locks should not block: %v", err)
	}
	ex.Unlock(ctx)
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

// crashAfter lets n saves and removes through, then fails every one: the
// process "died" there.
type crashAfter struct {
	backend.Backend
	mu sync.Mutex
	n  int
}

var errCrashed = errors.New("crashed")

func (c *crashAfter) step() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		return errCrashed
	}
	c.n--
	return nil
}

func (c *crashAfter) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.Backend.Save(ctx, h, size, rd)
}

func (c *crashAfter) Remove(ctx context.Context, h backend.Handle) error {
	if err := c.step(); err != nil {
		return err
	}
	return c.Backend.Remove(ctx, h)
}

// TestPruneCrashAtEveryStep stops prune after every possible number of
// writes and removals: each time the repository must check clean, every
// backup must read back whole, and a second prune must finish the job.
func TestPruneCrashAtEveryStep(t *testing.T) {
	r, be := newRepo(t)
	ctx := t.Context()
	var keep []ID
	contents := map[ID][]byte{}
	for i := range 6 {
		c := random(t, 50_000+i)
		id := saveBackup(t, r, c)
		contents[id] = c
		if i%2 == 0 {
			keep = append(keep, id)
		} else if err := be.Remove(ctx, backend.Handle{Type: backend.TypeManifest, Name: id.String()}); err != nil {
			t.Fatal(err)
		}
	}
	// A mostly unused pack, to exercise repacking too.
	if _, _, err := r.SaveBlob(ctx, DataBlob, random(t, 300_000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	start := be.Clone()
	for steps := 0; ; steps++ {
		state := start.Clone()
		crash := &crashAfter{Backend: state, n: steps}
		rc, err := Open(ctx, crash, "secret")
		if err != nil {
			t.Fatal(err)
		}
		_, perr := rc.Prune(ctx, PruneOptions{})
		rc.Close()
		verify := func(when string) {
			t.Helper()
			rv := reopen(t, state, "secret")
			rep, err := rv.Check(ctx, true, nil)
			if err != nil || !rep.OK() {
				t.Fatalf("crash after %d steps, %s: check %+v, %v", steps, when, rep, err)
			}
			for _, id := range keep {
				m, err := rv.LoadManifest(ctx, id)
				if err != nil {
					t.Fatalf("crash after %d steps, %s: %v", steps, when, err)
				}
				tree, err := rv.LoadTree(ctx, m.Tree)
				if err != nil {
					t.Fatalf("crash after %d steps, %s: %v", steps, when, err)
				}
				if got, err := rv.LoadBlob(ctx, tree.Nodes[0].Content[0]); err != nil || !bytes.Equal(got, contents[id]) {
					t.Fatalf("crash after %d steps, %s: backup %s: %v", steps, when, id.Short(), err)
				}
			}
		}
		verify("after the crash")
		// The crashed prune's lock is the same process's (still alive
		// here): clear it as its death would.
		clearLocks(t, state)
		if _, err := reopen(t, state, "secret").Prune(ctx, PruneOptions{}); err != nil {
			t.Fatalf("crash after %d steps: second prune: %v", steps, err)
		}
		verify("after a second prune")
		if perr == nil {
			t.Logf("prune needs %d writes and removals; a crash after each of them left a sound repository", steps)
			break
		}
		if !errors.Is(perr, errCrashed) {
			t.Fatalf("crash after %d steps: prune failed otherwise: %v", steps, perr)
		}
	}
}

func clearLocks(t *testing.T, be backend.Backend) {
	t.Helper()
	var hs []backend.Handle
	_ = be.List(t.Context(), backend.TypeLock, func(fi backend.FileInfo) error {
		hs = append(hs, fi.Handle)
		return nil
	})
	for _, h := range hs {
		if err := be.Remove(t.Context(), h); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPruneRemovesOrphanVerifications: prune removes the verification
// records of forgotten backups and keeps those of the backups there.
func TestPruneRemovesOrphanVerifications(t *testing.T) {
	r, _ := newRepo(t)
	ctx := t.Context()
	keep := saveBackup(t, r, random(t, 1000))
	drop := saveBackup(t, r, random(t, 1000))
	for _, id := range []ID{keep, drop} {
		if _, err := r.SaveVerification(ctx, &Verification{Backup: id, Time: time.Now(), OK: true, Writers: []byte("[]")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.RemoveManifest(ctx, drop); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	left, err := r.Verifications(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.VerificationsRemoved != 1 || len(left) != 1 || left[0].Backup != keep {
		t.Errorf("after prune: %d removed, records left %+v; want the forgotten backup's removed and %s's kept", rep.VerificationsRemoved, left, keep.Short())
	}
}
