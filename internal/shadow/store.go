package shadow

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Store keeps sets, writer results and locks in a state directory
// (default /var/lib/umbra), so that list, delete and clean-up work across
// processes and after a crash.
type Store struct {
	dir string
}

// OpenStore opens, creating if needed, the state directory dir.
func OpenStore(dir string) (*Store, error) {
	for _, sub := range []string{"sets", "locks", "writers"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("state directory %s: %w; set --state-dir to a writable directory", dir, err)
		}
	}
	return &Store{dir: dir}, nil
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) setPath(id string) string { return filepath.Join(s.dir, "sets", id+".json") }

// SaveSet writes set atomically: a reader sees the old or the new record,
// never a torn one.
func (s *Store) SaveSet(set *Set) error {
	return writeJSON(s.setPath(set.ID), set)
}

// LoadSet reads one set by id.
func (s *Store) LoadSet(id string) (*Set, error) {
	if id == "" || strings.ContainsAny(id, "/\x00") {
		return nil, fmt.Errorf("set id %q: %w", id, ErrNoSet)
	}
	var set Set
	if err := readJSON(s.setPath(id), &set); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("set %s: %w; umbra shadow list shows the sets", id, ErrNoSet)
		}
		return nil, err
	}
	return &set, nil
}

// Sets lists every recorded set, oldest first.
func (s *Store) Sets() ([]*Set, error) {
	names, err := filepath.Glob(filepath.Join(s.dir, "sets", "*.json"))
	if err != nil {
		return nil, err
	}
	var sets []*Set
	for _, n := range names {
		set, err := s.LoadSet(strings.TrimSuffix(filepath.Base(n), ".json"))
		if err != nil {
			return nil, err
		}
		sets = append(sets, set)
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].ID < sets[j].ID })
	return sets, nil
}

// ScratchDir is the set's private directory for files writers hand on.
func (s *Store) ScratchDir(id string) string { return filepath.Join(s.dir, "sets", id+".d") }

// RemoveSet forgets a set's record and its scratch files (its shadows must
// be gone already).
func (s *Store) RemoveSet(id string) error {
	if err := os.RemoveAll(s.ScratchDir(id)); err != nil {
		return err
	}
	err := os.Remove(s.setPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// WriterState is the outcome of a writer's last set, shown by umbra writers.
type WriterState struct {
	Writer string    `json:"writer"`
	SetID  string    `json:"set_id"`
	Time   time.Time `json:"time"`
	Phase  string    `json:"phase"` // last phase reached
	OK     bool      `json:"ok"`
	Error  string    `json:"error,omitempty"`
}

// SaveWriterState records a writer's last result.
func (s *Store) SaveWriterState(st WriterState) error {
	return writeJSON(filepath.Join(s.dir, "writers", lockName(st.Writer)+".json"), st)
}

// WriterState reads a writer's last result; ok is false if it never ran.
func (s *Store) WriterState(name string) (st WriterState, ok bool, err error) {
	err = readJSON(filepath.Join(s.dir, "writers", lockName(name)+".json"), &st)
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	return st, err == nil, err
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state file %s is damaged: %w", path, err)
	}
	return nil
}

// lockName turns a writer name or mount point into a file name.
func lockName(s string) string {
	return strings.NewReplacer("/", "%2F", "%", "%25", "\x00", "").Replace(s)
}

// Lock is a held exclusive lock; the kernel drops it if the process dies.
type Lock struct {
	f *os.File
	// remove is the lock file to remove at Unlock: a set's, named by its
	// unique id, would otherwise pile up one per set.
	remove string
}

// Unlock releases the lock. A set's lock file goes first, while still
// held: a process that opened it meanwhile finds it busy, one that comes
// later makes a new one.
func (l *Lock) Unlock() error {
	if l.remove != "" {
		_ = os.Remove(l.remove)
	}
	return l.f.Close()
}

// TryLock takes the named lock of a kind ("writer", "volume", "set") without
// waiting. When another process holds it, the error wraps ErrBusy and names
// the holder's pid.
func (s *Store) TryLock(kind, name string) (*Lock, error) {
	path := filepath.Join(s.dir, "locks", kind+"-"+lockName(name)+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s %s: %w", kind, name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s %s is in use by another set (pid %s): %w", kind, name, strings.TrimSpace(string(holder)), ErrBusy)
		}
		return nil, fmt.Errorf("lock %s %s: %w", kind, name, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	l := &Lock{f: f}
	if kind == "set" {
		l.remove = path
	}
	return l, nil
}

// Locked reports whether the named lock is held by a live process.
func (s *Store) Locked(kind, name string) bool {
	l, err := s.TryLock(kind, name)
	if err != nil {
		return errors.Is(err, ErrBusy)
	}
	_ = l.Unlock()
	return false
}
