package testenv

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/umbra-backup/umbra/internal/peerdial"
)

// loadEnv carries a load process's configuration, as JSON, from
// StartSQLiteLoad to Main in the re-executed test binary.
const loadEnv = "UMBRA_TESTENV_LOAD"

// loadConfig is what the load process is told to do.
type loadConfig struct {
	DBs    []string `json:"dbs"`
	Acks   string   `json:"acks"`   // file the acknowledgements are appended to
	Parent int      `json:"parent"` // the test process; the load ends with it
	// Synchronous is the load connections' PRAGMA synchronous; "" keeps
	// SQLite's default.
	Synchronous string `json:"synchronous,omitempty"`
}

// SQLiteLoadOptions are the durability settings of a load's databases.
type SQLiteLoadOptions struct {
	// JournalMode of a database the load creates: "" or WAL, DELETE,
	// TRUNCATE, PERSIST.
	JournalMode string
	// Synchronous of the load's connections: "" (SQLite's default), OFF,
	// NORMAL, FULL.
	Synchronous string
}

// Main runs the tests, or, in a process started by StartSQLiteLoad, the
// load, or in one started by peerdial.Dial, its helper. A package whose tests start loads calls it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	peerdial.Main()
	if cfg := os.Getenv(loadEnv); cfg != "" {
		os.Exit(runLoad(cfg))
	}
	os.Exit(m.Run())
}

// Ack is one commit the load process saw succeed: database index (in the
// order given to StartSQLiteLoad), the counter value it committed, and when
// the commit returned.
type Ack struct {
	DB int
	N  int64
	At time.Time
}

// Load is a running load process: a separate process committing to SQLite
// databases as fast as it can, so that tests can freeze, kill and restore
// around it. Its acknowledgements are the ground truth of what committed
// when.
type Load struct {
	t    testing.TB
	cmd  *exec.Cmd
	acks string
	out  *syncBuffer

	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // set before exited is closed

	mu       sync.Mutex
	signaled bool
}

// StartSQLiteLoad creates each database that does not exist yet (WAL mode,
// table counter(id INTEGER PRIMARY KEY, n INTEGER) with the row id=1, n=0)
// and starts a load process on them. It returns once the process has
// committed once. The test binary's TestMain must call Main.
//
// With one database the process runs UPDATE counter SET n=n+1 in autocommit,
// over and over. With several it sets the counter to n in database 0, then
// to n in database 1, and so on, each its own commit, for n = 1, 2, 3, …
// (continuing above the largest counter found), so that at any instant the
// counters differ by at most 1 and database i never runs ahead of database
// i-1. It waits (busy_timeout 120 s) rather than fails while a writer holds
// the write lock. Any SQL error ends it with a non-zero status.
//
// The process is killed when the test ends.
func StartSQLiteLoad(t testing.TB, dbs ...string) *Load {
	t.Helper()
	return StartSQLiteLoadWith(t, SQLiteLoadOptions{}, dbs...)
}

// StartSQLiteLoadWith is StartSQLiteLoad with durability settings.
func StartSQLiteLoadWith(t testing.TB, opts SQLiteLoadOptions, dbs ...string) *Load {
	t.Helper()
	if len(dbs) == 0 {
		t.Fatal("StartSQLiteLoad: no databases")
	}
	for _, db := range dbs {
		if err := createCounterDB(t.Context(), db, cmp.Or(opts.JournalMode, "WAL")); err != nil {
			t.Fatalf("StartSQLiteLoad: %v", err)
		}
	}
	l := &Load{
		t:      t,
		acks:   filepath.Join(t.TempDir(), "acks"),
		out:    &syncBuffer{},
		exited: make(chan struct{}),
	}
	cfg, err := json.Marshal(loadConfig{DBs: dbs, Acks: l.acks, Parent: os.Getpid(), Synchronous: opts.Synchronous})
	if err != nil {
		t.Fatalf("StartSQLiteLoad: %v", err)
	}
	// -test.run=^$ keeps a binary whose TestMain forgot Main from running
	// the tests again; it then exits without committing and says so below.
	l.cmd = exec.Command(os.Args[0], "-test.run=^$")
	l.cmd.Env = append(os.Environ(), loadEnv+"="+string(cfg))
	l.cmd.Stdout = l.out
	l.cmd.Stderr = l.out
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("StartSQLiteLoad: %v", err)
	}
	go func() {
		l.waitErr = l.cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-l.exited:
		default:
			_ = l.cmd.Process.Kill()
			<-l.exited
		}
	})
	if err := l.waitAck(time.Time{}, 0, time.Minute); err != nil {
		t.Fatalf("StartSQLiteLoad: %v (does TestMain call testenv.Main?)", err)
	}
	return l
}

// Acks returns the acknowledgements written so far, in commit order.
func (l *Load) Acks() []Ack {
	l.t.Helper()
	b, err := os.ReadFile(l.acks)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		l.t.Errorf("load acks: %v", err)
		return nil
	}
	acks, _, err := parseAcks(b)
	if err != nil {
		l.t.Errorf("load acks: %v", err)
	}
	return acks
}

// Stop ends the load process with SIGTERM, waits for it and returns every
// acknowledgement. A process that failed other than by that signal fails
// the test, with its output.
func (l *Load) Stop() []Ack {
	l.t.Helper()
	select {
	case <-l.exited:
	default:
		l.mu.Lock()
		l.signaled = true
		l.mu.Unlock()
		if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			l.t.Errorf("stop load: %v", err)
		}
		select {
		case <-l.exited:
		case <-time.After(30 * time.Second):
			_ = l.cmd.Process.Kill()
			<-l.exited
			l.t.Errorf("stop load: still running 30s after SIGTERM; killed it\n%s", l.out)
		}
	}
	if err := l.failure(); err != nil {
		l.t.Errorf("load process: %v", err)
	}
	return l.Acks()
}

// WaitProgress returns nil as soon as a commit made after the call is
// acknowledged, and an error if none is within d or the process ends.
func (l *Load) WaitProgress(d time.Duration) error {
	start := time.Now()
	b, err := os.ReadFile(l.acks)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_, complete, err := parseAcks(b)
	if err != nil {
		return err
	}
	return l.waitAck(start, int64(complete), d)
}

// waitAck waits up to d for an acknowledgement of a commit at or after
// since, looking at the ack file from offset on.
func (l *Load) waitAck(since time.Time, offset int64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		f, err := os.Open(l.acks)
		if err == nil {
			b, rerr := io.ReadAll(io.NewSectionReader(f, offset, 1<<62))
			f.Close()
			if rerr != nil {
				return rerr
			}
			acks, n, perr := parseAcks(b)
			if perr != nil {
				return perr
			}
			offset += int64(n)
			for _, a := range acks {
				if !a.At.Before(since) {
					return nil
				}
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		select {
		case <-l.exited:
			if err := l.failure(); err != nil {
				return fmt.Errorf("load process ended: %w", err)
			}
			return fmt.Errorf("load process ended without acknowledging a commit\n%s", l.out)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no commit acknowledged within %v", d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// failure describes how the exited process failed, if it did other than by
// our SIGTERM.
func (l *Load) failure() error {
	select {
	case <-l.exited:
	default:
		return nil
	}
	if l.waitErr == nil {
		return nil
	}
	l.mu.Lock()
	signaled := l.signaled
	l.mu.Unlock()
	var ee *exec.ExitError
	if signaled && errors.As(l.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return fmt.Errorf("%w\n%s", l.waitErr, l.out)
}

// parseAcks parses the complete lines of b ("db n unixnano") and returns
// them with the number of bytes they take.
func parseAcks(b []byte) ([]Ack, int, error) {
	end := bytes.LastIndexByte(b, '\n') + 1
	var acks []Ack
	for line := range strings.Lines(string(b[:end])) {
		f := strings.Fields(line)
		if len(f) != 3 {
			return acks, end, fmt.Errorf("bad ack line %q", line)
		}
		db, err1 := strconv.Atoi(f[0])
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		at, err3 := strconv.ParseInt(f[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return acks, end, fmt.Errorf("bad ack line %q: %w", line, err)
		}
		acks = append(acks, Ack{DB: db, N: n, At: time.Unix(0, at)})
	}
	return acks, end, nil
}

// createCounterDB creates the load's database at path unless it exists.
func createCounterDB(ctx context.Context, path, journalMode string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	db, err := sql.Open("sqlite", loadDSN(path, ""))
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range []string{
		"PRAGMA journal_mode=" + journalMode,
		"CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)",
		"INSERT INTO counter(id, n) VALUES (1, 0)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("create %s: %s: %w", path, q, err)
		}
	}
	return db.Close()
}

func loadDSN(path, synchronous string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	dsn := "file:" + esc + "?_pragma=busy_timeout(120000)"
	if synchronous != "" {
		dsn += "&_pragma=synchronous(" + synchronous + ")"
	}
	return dsn
}

// runLoad is the load process's main; it returns the exit status.
func runLoad(cfgJSON string) int {
	var cfg loadConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "load: %s: %v\n", loadEnv, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, orphaned := context.WithCancel(ctx)
	defer orphaned()
	go func() {
		// A test binary killed at its time-out runs no cleanup; the load
		// must not spin on without it.
		for ctx.Err() == nil && os.Getppid() == cfg.Parent {
			time.Sleep(100 * time.Millisecond)
		}
		orphaned()
	}()

	f, err := os.OpenFile(cfg.Acks, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "load: %v\n", err)
		return 2
	}
	log := newAckLog(f)
	err = load(ctx, cfg.DBs, cfg.Synchronous, log)
	if ctx.Err() != nil {
		err = nil // stopped by a signal: a commit cut short is not a failure
	}
	if cerr := log.close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("write acks: %w", cerr))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "load: %v\n", err)
		return 1
	}
	return 0
}

func load(ctx context.Context, paths []string, synchronous string, log *ackLog) error {
	dbs := make([]*sql.DB, len(paths))
	for i, p := range paths {
		db, err := sql.Open("sqlite", loadDSN(p, synchronous))
		if err != nil {
			return err
		}
		defer db.Close()
		db.SetMaxOpenConns(1)
		dbs[i] = db
	}
	if len(dbs) == 1 {
		for ctx.Err() == nil {
			n, err := increment(ctx, dbs[0])
			if err != nil {
				return fmt.Errorf("%s: %w", paths[0], err)
			}
			log.add(0, n, time.Now())
		}
		return nil
	}
	var n int64
	for i, db := range dbs {
		var cur int64
		if err := db.QueryRowContext(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&cur); err != nil {
			return fmt.Errorf("%s: %w", paths[i], err)
		}
		n = max(n, cur)
	}
	for ctx.Err() == nil {
		n++
		for i, db := range dbs {
			if _, err := db.ExecContext(ctx, "UPDATE counter SET n = ? WHERE id = 1", n); err != nil {
				return fmt.Errorf("%s: %w", paths[i], err)
			}
			log.add(i, n, time.Now())
		}
	}
	return nil
}

// increment adds one to the counter and returns the committed value. It
// steps the statement to its end, where the autocommit transaction commits.
func increment(ctx context.Context, db *sql.DB) (int64, error) {
	rows, err := db.QueryContext(ctx, "UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	got := false
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, err
		}
		got = true
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if !got {
		return 0, errors.New("counter row id=1 is missing")
	}
	return n, rows.Close()
}

// ackLog appends acknowledgements to a file, buffered and flushed at least
// every few milliseconds.
type ackLog struct {
	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	err  error
	stop chan struct{}
	done chan struct{}
}

func newAckLog(f *os.File) *ackLog {
	a := &ackLog{f: f, w: bufio.NewWriterSize(f, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-tick.C:
				a.mu.Lock()
				if err := a.w.Flush(); err != nil && a.err == nil {
					a.err = err
				}
				a.mu.Unlock()
			}
		}
	}()
	return a
}

func (a *ackLog) add(db int, n int64, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := fmt.Fprintf(a.w, "%d %d %d\n", db, n, at.UnixNano()); err != nil && a.err == nil {
		a.err = err
	}
}

func (a *ackLog) close() error {
	close(a.stop)
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	return errors.Join(a.err, a.w.Flush(), a.f.Close())
}

// syncBuffer is a bytes.Buffer safe for the writes of exec's copying
// goroutines and reads from the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
