package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("repository is locked")

// ErrLockLost is the cause of a lock's context ending because the lock
// could not be kept: another client could soon take it for stale.
var ErrLockLost = errors.New("the repository lock could not be refreshed")

// Lock timing: a held lock is rewritten every lockRefresh (a failed rewrite
// is tried again every lockRetry); its holder gives up once it has not
// managed to for lockGiveUp, well before other clients take a lock not
// rewritten for lockStale for one whose process is gone.
var (
	lockRefresh = 5 * time.Minute
	lockRetry   = time.Minute
	lockGiveUp  = 15 * time.Minute
	lockStale   = 30 * time.Minute
)

// Lock file names say their kind, so that taking a lock needs no reads:
// backups, restores and forget share ("s-"); prune and check exclude one
// another ("x-") but not the shared ones. Names without a prefix were
// written by umbra before marks existed; their content says the kind.
const (
	sharedPrefix    = "s-"
	exclusivePrefix = "x-"
)

// lockInfo is the content of a lock file (sealed: host names are nobody
// else's business).
type lockInfo struct {
	Exclusive bool      `json:"exclusive"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Time      time.Time `json:"time"` // last refresh
	Purpose   string    `json:"purpose"`
}

func (l lockInfo) String() string {
	kind := "shared"
	if l.Exclusive {
		kind = "exclusive"
	}
	return fmt.Sprintf("%s lock for %s by pid %d on %s, refreshed %s ago", kind, l.Purpose, l.PID, l.Host,
		time.Since(l.Time).Round(time.Second))
}

// stale reports whether the lock's holder is gone: not refreshed for
// lockStale, or its process on this host no longer exists.
func (l lockInfo) stale(now time.Time, host string) bool {
	if now.Sub(l.Time) > lockStale {
		return true
	}
	if l.Host == host {
		err := syscall.Kill(l.PID, 0)
		return errors.Is(err, syscall.ESRCH)
	}
	return false
}

// Lock is a held repository lock. Work done under it uses Context, which
// ends if the lock cannot be kept.
type Lock struct {
	repo   *Repository
	name   string
	info   lockInfo
	ctx    context.Context
	cancel context.CancelCauseFunc
	lastOK time.Time // last successful write
	stop   chan struct{}
	done   sync.WaitGroup
	once   sync.Once
}

// Lock takes a shared lock (backups, restores, forget: any number at once,
// beside a prune) or an exclusive one (prune, check: one at a time), then
// reads the repository's index anew: what an operation under a lock sees
// is what a prune running beside it knows it may see (see Prune). A
// conflicting lock that is stale is removed; a live one fails with
// ErrLocked naming its holder. The lock is refreshed until Unlock; if it
// cannot be, Context ends with ErrLockLost as its cause.
func (r *Repository) Lock(ctx context.Context, exclusive bool, purpose string) (*Lock, error) {
	l, err := r.lock(ctx, exclusive, purpose)
	if err != nil {
		return nil, err
	}
	if err := r.loadIndex(l.ctx); err != nil {
		_ = l.Unlock(ctx)
		return nil, err
	}
	return l, nil
}

// lock takes a lock without reading the index (prune reads it its own way).
func (r *Repository) lock(ctx context.Context, exclusive bool, purpose string) (*Lock, error) {
	host, _ := os.Hostname()
	if err := r.checkLocks(ctx, exclusive, "", host); err != nil {
		return nil, err
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	prefix := sharedPrefix
	if exclusive {
		prefix = exclusivePrefix
	}
	now := time.Now().UTC()
	l := &Lock{repo: r, name: prefix + hex.EncodeToString(b), stop: make(chan struct{}), lastOK: now,
		info: lockInfo{Exclusive: exclusive, Host: host, PID: os.Getpid(), Time: now, Purpose: purpose}}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	// Two processes may have checked at the same moment: check again, now
	// that ours is visible, and back off if another one is there.
	if err := r.checkLocks(ctx, exclusive, l.name, host); err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), l.handle())
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	l.done.Add(1)
	go l.refresh()
	return l, nil
}

// Context is the lock's context: it ends when the context the lock was
// taken with does, or, with ErrLockLost as its cause, when the lock could
// not be refreshed.
func (l *Lock) Context() context.Context { return l.ctx }

// Name is the lock's file name.
func (l *Lock) Name() string { return l.name }

func (l *Lock) handle() backend.Handle { return backend.Handle{Type: backend.TypeLock, Name: l.name} }

func (l *Lock) write(ctx context.Context) error {
	plain, err := json.Marshal(l.info)
	if err != nil {
		return err
	}
	data, err := seal(l.repo.key.Encrypt, nil, plain)
	if err != nil {
		return err
	}
	if err := l.repo.be.Save(ctx, l.handle(), int64(len(data)), bytes.NewReader(data)); err != nil {
		return fmt.Errorf("write lock: %w", err)
	}
	return nil
}

func (l *Lock) refresh() {
	defer l.done.Done()
	wait := lockRefresh
	for {
		t := time.NewTimer(wait)
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-t.C:
		}
		switch err := l.refreshAt(time.Now()); {
		case errors.Is(err, ErrLockLost):
			return
		case err != nil:
			wait = lockRetry
		default:
			wait = lockRefresh
		}
	}
}

// refreshAt rewrites the lock as of now. If the lock file is gone (another
// client took it for stale), or it has not been rewritten for lockGiveUp,
// the lock's context ends and refreshAt returns ErrLockLost: the work under
// it must stop before a prune elsewhere could take it for dead.
func (l *Lock) refreshAt(now time.Time) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), lockRetry)
	defer cancel()
	_, err := l.repo.be.Stat(ctx, l.handle())
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%w: its file %s was removed by another client", ErrLockLost, l.handle())
		l.cancel(err)
		return err
	}
	if err == nil {
		l.info.Time = now.UTC()
		err = l.write(ctx)
	}
	if err == nil {
		l.lastOK = now
		return nil
	}
	if now.Sub(l.lastOK) >= lockGiveUp {
		err = fmt.Errorf("%w for %s (%v); stopping before another client takes it for stale", ErrLockLost,
			now.Sub(l.lastOK).Round(time.Second), err)
		l.cancel(err)
		return err
	}
	return err
}

// Unlock releases the lock; more calls do nothing.
func (l *Lock) Unlock(ctx context.Context) (err error) {
	l.once.Do(func() {
		close(l.stop)
		l.done.Wait()
		l.cancel(context.Canceled)
		err = l.repo.be.Remove(context.WithoutCancel(ctx), l.handle())
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	})
	return err
}

// lockKind tells a lock's kind from its name: 's', 'x', or 0 for a name
// without a prefix (its content says).
func lockKind(name string) byte {
	switch {
	case strings.HasPrefix(name, sharedPrefix):
		return 's'
	case strings.HasPrefix(name, exclusivePrefix):
		return 'x'
	}
	return 0
}

// checkLocks fails if a live lock conflicts with the one wanted: exclusive
// locks conflict with each other, shared ones with nothing (but with the
// exclusive locks of an umbra from before marks, which deleted at once).
// Stale locks are removed on the way.
func (r *Repository) checkLocks(ctx context.Context, exclusive bool, own, host string) error {
	var names []string
	if err := r.be.List(ctx, backend.TypeLock, func(fi backend.FileInfo) error {
		kind := lockKind(fi.Name)
		if fi.Name != own && (kind == 0 || exclusive && kind == 'x') {
			names = append(names, fi.Name)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	now := time.Now()
	for _, name := range names {
		info, live, err := r.lockLive(ctx, name, now, host)
		if err != nil {
			return err
		}
		if live && (exclusive || info.Exclusive) {
			return fmt.Errorf("%w: %s; wait for it to finish (a lock is stale %s after its last refresh, or at once once its process is gone)",
				ErrLocked, info, lockStale)
		}
	}
	return nil
}

// lockLive reads a lock and reports whether its holder may still be at
// work; a stale lock is removed, a vanished one is not live.
func (r *Repository) lockLive(ctx context.Context, name string, now time.Time, host string) (lockInfo, bool, error) {
	h := backend.Handle{Type: backend.TypeLock, Name: name}
	info, err := r.readLock(ctx, h)
	if errors.Is(err, fs.ErrNotExist) {
		return info, false, nil // released meanwhile
	}
	if err != nil {
		return info, false, err
	}
	if info.stale(now, host) {
		if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return info, false, fmt.Errorf("remove stale lock: %w", err)
		}
		return info, false, nil
	}
	return info, true, nil
}

// lockNames lists the names of every lock file but own.
func (r *Repository) lockNames(ctx context.Context, own string) ([]string, error) {
	var names []string
	err := r.be.List(ctx, backend.TypeLock, func(fi backend.FileInfo) error {
		if fi.Name != own {
			names = append(names, fi.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	return names, nil
}

func (r *Repository) readLock(ctx context.Context, h backend.Handle) (lockInfo, error) {
	var info lockInfo
	rd, err := r.be.Load(ctx, h, 0, 0)
	if err != nil {
		return info, err
	}
	data, err := io.ReadAll(io.LimitReader(rd, 1<<16))
	rd.Close()
	if err != nil {
		return info, err
	}
	plain, err := open(r.key.Encrypt, nil, data)
	if err != nil {
		return info, fmt.Errorf("lock %s: %w", h.Name, err)
	}
	if err := json.Unmarshal(plain, &info); err != nil {
		return info, fmt.Errorf("lock %s is damaged: %w", h.Name, err)
	}
	return info, nil
}
