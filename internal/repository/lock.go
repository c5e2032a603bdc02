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
	"sync"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("repository is locked")

// Lock timing: a held lock is rewritten every lockRefresh; one not
// rewritten for lockStale is from a process that is gone.
const (
	lockRefresh = 5 * time.Minute
	lockStale   = 30 * time.Minute
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

// Lock is a held repository lock.
type Lock struct {
	repo *Repository
	name string
	info lockInfo
	stop chan struct{}
	done sync.WaitGroup
	once sync.Once
}

// Lock takes a shared lock (backups; many at once) or an exclusive one
// (prune; alone). A conflicting lock that is stale is removed; a live one
// fails with ErrLocked naming its holder. The lock is refreshed until
// Unlock.
func (r *Repository) Lock(ctx context.Context, exclusive bool, purpose string) (*Lock, error) {
	host, _ := os.Hostname()
	if err := r.checkLocks(ctx, exclusive, "", host); err != nil {
		return nil, err
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	l := &Lock{repo: r, name: hex.EncodeToString(b), stop: make(chan struct{}),
		info: lockInfo{Exclusive: exclusive, Host: host, PID: os.Getpid(), Time: time.Now().UTC(), Purpose: purpose}}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	// Two processes may have checked at the same moment: check again, now
	// that ours is visible, and back off if another one is there.
	if err := r.checkLocks(ctx, exclusive, l.name, host); err != nil {
		_ = r.be.Remove(context.WithoutCancel(ctx), l.handle())
		return nil, err
	}
	l.done.Add(1)
	go l.refresh()
	return l, nil
}

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
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.info.Time = time.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_ = l.write(ctx) // a missed refresh is retried; staleness takes six
			cancel()
		}
	}
}

// Unlock releases the lock; more calls do nothing.
func (l *Lock) Unlock(ctx context.Context) (err error) {
	l.once.Do(func() {
		close(l.stop)
		l.done.Wait()
		err = l.repo.be.Remove(context.WithoutCancel(ctx), l.handle())
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	})
	return err
}

// checkLocks fails if a live lock conflicts with the one wanted; stale
// locks are removed on the way.
func (r *Repository) checkLocks(ctx context.Context, exclusive bool, own, host string) error {
	var names []string
	if err := r.be.List(ctx, backend.TypeLock, func(fi backend.FileInfo) error {
		if fi.Name != own {
			names = append(names, fi.Name)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	now := time.Now()
	for _, name := range names {
		h := backend.Handle{Type: backend.TypeLock, Name: name}
		info, err := r.readLock(ctx, h)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return err
		}
		if info.stale(now, host) {
			if err := r.be.Remove(ctx, h); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove stale lock: %w", err)
			}
			continue
		}
		if exclusive || info.Exclusive {
			return fmt.Errorf("%w: %s; wait for it to finish (a lock is stale %s after its last refresh, or at once once its process is gone)",
				ErrLocked, info, lockStale)
		}
	}
	return nil
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
	return info, json.Unmarshal(plain, &info)
}
