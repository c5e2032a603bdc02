// Package retry makes a backend ride out transient store failures: a call
// that fails with an error marked backend.ErrTransient (a 5xx, "slow down",
// a refused or reset connection, a timeout) is made again after a growing
// delay, until it succeeds, fails otherwise, or its time budget is spent.
// Permanent errors (a missing file, a refused credential, a full disk) are
// returned at once.
//
// A Save is replayed from the start of its reader, which must then be an
// io.Seeker (the repository's are); one that is not is tried once. A Load
// whose body breaks off is resumed where it stopped. A List that fails
// partway is listed again, without calling fn twice for one file.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Options tune New; zero values take the defaults.
type Options struct {
	// Budget is how long one call keeps trying (5 minutes): long enough
	// for a store to restart, short enough that a backup whose store is
	// gone fails, and aborts its writers, in bounded time. Negative: no
	// retries.
	Budget time.Duration
	// First is the first delay (500 ms); each next one doubles, up to Max
	// (30 s), with ±25% jitter so that many clients do not retry in step.
	First, Max time.Duration
	// Log gets a warning for every retry.
	Log *slog.Logger
}

// Backend is a backend whose calls retry transient failures.
type Backend struct {
	backend.Backend
	opts    Options
	retries atomic.Int64
}

var _ backend.Backend = (*Backend)(nil)

// New wraps be.
func New(be backend.Backend, opts Options) *Backend {
	if opts.Budget == 0 {
		opts.Budget = 5 * time.Minute
	}
	if opts.First == 0 {
		opts.First = 500 * time.Millisecond
	}
	if opts.Max == 0 {
		opts.Max = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Backend{Backend: be, opts: opts}
}

// Retries is how many calls were made again so far.
func (b *Backend) Retries() int64 { return b.retries.Load() }

// do calls fn until it succeeds, fails permanently, or the budget is spent.
func (b *Backend) do(ctx context.Context, op string, h backend.Handle, fn func(attempt int) error) error {
	start := time.Now()
	delay := b.opts.First
	for attempt := 1; ; attempt++ {
		err := fn(attempt)
		if err == nil || !errors.Is(err, backend.ErrTransient) || ctx.Err() != nil {
			return err
		}
		if b.opts.Budget < 0 {
			return err
		}
		if time.Since(start)+delay > b.opts.Budget {
			return fmt.Errorf("%w (gave up after %d attempts in %s)", err, attempt, time.Since(start).Round(time.Millisecond))
		}
		b.retries.Add(1)
		wait := time.Duration(float64(delay) * (0.75 + rand.Float64()/2))
		b.opts.Log.Warn("store failed; trying again", "op", op, "file", h.String(), "attempt", attempt, "in", wait.Round(time.Millisecond), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, b.opts.Max)
	}
}

// contentAddressed types name a file by the hash of its bytes: a retried
// Save that finds the name taken finds its own earlier attempt's file.
func contentAddressed(t backend.Type) bool {
	switch t {
	case backend.TypePack, backend.TypeIndex, backend.TypeManifest, backend.TypeMark, backend.TypeKey:
		return true
	}
	return false
}

// Save stores h, replaying rd from where it started if it is a Seeker.
func (b *Backend) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) error {
	seeker, _ := rd.(io.Seeker)
	start := int64(-1)
	if seeker != nil {
		if pos, err := seeker.Seek(0, io.SeekCurrent); err == nil {
			start = pos
		}
	}
	return b.do(ctx, "save", h, func(attempt int) error {
		if attempt > 1 {
			if start < 0 {
				return fmt.Errorf("save %s: cannot be sent again (its data is read once)", h)
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("save %s: rewind to send again: %w", h, err)
			}
		}
		err := b.Backend.Save(ctx, h, size, rd)
		if attempt > 1 && errors.Is(err, fs.ErrExist) && contentAddressed(h.Type) {
			return nil // the attempt that failed had stored it
		}
		return err
	})
}

// Load opens h; the reader resumes where it stopped if its body breaks off.
func (b *Backend) Load(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := b.do(ctx, "load", h, func(int) error {
		var err error
		rc, err = b.Backend.Load(ctx, h, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumer{b: b, ctx: ctx, h: h, offset: offset, length: length, limited: length > 0, rc: rc}, nil
}

// resumer reads a loaded file and, if the connection breaks off partway,
// loads the rest again.
type resumer struct {
	b       *Backend
	ctx     context.Context
	h       backend.Handle
	offset  int64 // of what is left
	length  int64 // left to read; 0 with limited false: to the end
	limited bool
	rc      io.ReadCloser
}

func (r *resumer) Read(p []byte) (int, error) {
	for {
		n, err := r.rc.Read(p)
		r.offset += int64(n)
		r.length -= int64(n)
		if err == nil || err == io.EOF || !broken(err) || r.limited && r.length <= 0 {
			return n, err
		}
		if rerr := r.resume(err); rerr != nil {
			return n, rerr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// broken reports whether a read failed because the connection did.
func broken(err error) bool {
	var nerr net.Error
	return errors.Is(err, backend.ErrTransient) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.As(err, &nerr)
}

func (r *resumer) resume(cause error) error {
	r.rc.Close()
	length := r.length
	if !r.limited {
		length = 0
	}
	r.b.retries.Add(1)
	r.b.opts.Log.Warn("store connection broke off while reading; resuming", "file", r.h.String(), "at", r.offset, "err", cause)
	return r.b.do(r.ctx, "load", r.h, func(int) error {
		rc, err := r.b.Backend.Load(r.ctx, r.h, r.offset, length)
		if err == nil {
			r.rc = rc
		}
		return err
	})
}

func (r *resumer) Close() error { return r.rc.Close() }

// Stat describes h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	var fi backend.FileInfo
	err := b.do(ctx, "stat", h, func(int) error {
		var err error
		fi, err = b.Backend.Stat(ctx, h)
		return err
	})
	return fi, err
}

// Remove deletes h; a retry that finds h gone finds the earlier attempt's
// work done.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	return b.do(ctx, "remove", h, func(attempt int) error {
		err := b.Backend.Remove(ctx, h)
		if attempt > 1 && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
}

// List lists the files of t; after a failure partway, files already given
// to fn are not given again.
func (b *Backend) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	seen := map[string]bool{}
	var fnErr error
	err := b.do(ctx, "list", backend.Handle{Type: t, Name: "*"}, func(int) error {
		return b.Backend.List(ctx, t, func(fi backend.FileInfo) error {
			if seen[fi.Name] {
				return nil
			}
			seen[fi.Name] = true
			if err := fn(fi); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}
