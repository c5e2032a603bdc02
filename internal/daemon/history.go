package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Run statuses. A run is "running" until it ends; one that was running
// when the daemon died is found "interrupted" at the next start.
const (
	StatusRunning     = "running"
	StatusOK          = "ok"
	StatusWarning     = "warning"    // stored, with warnings (exit 3)
	StatusPartial     = "partial"    // a writer failed and was left out (exit 4)
	StatusUnverified  = "unverified" // stored, failed its verification (exit 5)
	StatusFailed      = "failed"     // nothing stored
	StatusAborted     = "aborted"    // stopped by SIGTERM; undone
	StatusInterrupted = "interrupted"
)

// Triggers: why a run started.
const (
	TriggerSchedule = "schedule"
	TriggerCatchUp  = "catch-up" // a scheduled time passed while the daemon was down
	TriggerRetry    = "retry"
	TriggerAPI      = "api"
	TriggerRecover  = "recover" // the daemon died during the last run
)

// Run is one run of a job, as the history keeps it.
type Run struct {
	ID  string `json:"id"`
	Job string `json:"job,omitempty"` // empty for an operation asked through the API
	// Kind is what ran: "backup", "verify", "prune" (a job's type), or
	// "restore" (asked through the API, into Target).
	Kind      string    `json:"kind"`
	Target    string    `json:"target,omitempty"`
	Trigger   string    `json:"trigger"`
	Attempt   int       `json:"attempt"` // 1, then 2… for retries of a failed run
	Scheduled time.Time `json:"scheduled,omitzero"`
	Started   time.Time `json:"started"`
	Ended     time.Time `json:"ended,omitzero"`
	Status    string    `json:"status"`
	Error     string    `json:"error,omitempty"`
	Warnings  []string  `json:"warnings,omitempty"`

	Backup     string      `json:"backup,omitempty"` // the id of the backup stored
	Files      int64       `json:"files"`
	Bytes      int64       `json:"bytes"`
	BytesRead  int64       `json:"bytes_read"`
	BytesAdded int64       `json:"bytes_added"`
	FreezeMS   float64     `json:"freeze_ms"`
	Writers    []RunWriter `json:"writers,omitempty"`
	// Verified is the verification's outcome, if one ran.
	Verified     *bool    `json:"verified,omitempty"`
	Verification string   `json:"verification,omitempty"` // its record's id
	Forgotten    []string `json:"forgotten,omitempty"`
	BytesFreed   int64    `json:"bytes_freed,omitempty"` // by a prune
	// Log is the run's last log lines: each phase, warnings, retries.
	Log []string `json:"log,omitempty"`
}

// RunWriter is one writer's part in a run.
type RunWriter struct {
	Name        string `json:"name"`
	Consistency string `json:"consistency,omitempty"` // application, crash, copy
	Failed      bool   `json:"failed,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Duration is how long the run took (so far, if it runs).
func (r *Run) Duration() time.Duration {
	if r.Ended.IsZero() {
		return time.Since(r.Started)
	}
	return r.Ended.Sub(r.Started)
}

// Succeeded says whether the run did what it was for: stored a backup that
// can be relied on, verified one, pruned, restored.
func (r *Run) Succeeded() bool { return r.Status == StatusOK || r.Status == StatusWarning }

// history keeps runs, one JSON file each under dir, written whole (a
// temporary file renamed) so a crash leaves the last complete state.
type history struct {
	dir  string
	keep int // runs kept per job

	mu   sync.Mutex
	runs []*Run // by start, oldest first
}

func openHistory(dir string, keep int) (*history, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	h := &history{dir: dir, keep: keep}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var r Run
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("run history %s: %w; move the file away to start", filepath.Join(dir, e.Name()), err)
		}
		h.runs = append(h.runs, &r)
	}
	slices.SortFunc(h.runs, func(a, b *Run) int { return a.Started.Compare(b.Started) })
	return h, nil
}

// newRunID is sortable by time and unique.
func newRunID(t time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

// save writes r (a copy is taken under the lock) and adds it if new.
func (h *history) save(r *Run) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch i := slices.IndexFunc(h.runs, func(o *Run) bool { return o.ID == r.ID }); {
	case i < 0:
		h.runs = append(h.runs, r)
		h.trim(r.Job)
	case h.runs[i] != r:
		h.runs[i] = r // a copy, changed and saved
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(h.dir, "."+r.ID+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(h.dir, r.ID+".json"))
}

// trim drops the oldest runs of job beyond keep.
func (h *history) trim(job string) {
	n := 0
	for i := len(h.runs) - 1; i >= 0; i-- {
		if h.runs[i].Job != job {
			continue
		}
		if n++; n > h.keep {
			if err := os.Remove(filepath.Join(h.dir, h.runs[i].ID+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				continue
			}
			h.runs = slices.Delete(h.runs, i, i+1)
		}
	}
}

// list returns copies of the runs of job ("" for all), newest first, at
// most limit (0: all).
func (h *history) list(job string, limit int) []Run {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Run
	for i := len(h.runs) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		if job == "" || h.runs[i].Job == job {
			out = append(out, *h.runs[i])
		}
	}
	return out
}

// get returns a copy of the run id.
func (h *history) get(id string) (Run, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.runs {
		if r.ID == id {
			return *r, true
		}
	}
	return Run{}, false
}

// last is the newest run of job, and the newest that succeeded.
func (h *history) last(job string) (last, success *Run) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.runs) - 1; i >= 0; i-- {
		r := h.runs[i]
		if r.Job != job {
			continue
		}
		if last == nil {
			c := *r
			last = &c
		}
		if r.Succeeded() {
			c := *r
			return last, &c
		}
	}
	return last, nil
}

// update changes a run under the history's lock (the API reads it
// meanwhile) and saves it.
func (h *history) update(r *Run, fn func(*Run)) error {
	h.mu.Lock()
	fn(r)
	h.mu.Unlock()
	return h.save(r)
}
