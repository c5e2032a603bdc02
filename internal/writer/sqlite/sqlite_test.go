package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestConformance(t *testing.T) {
	path := newDB(t)
	writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, path) })
}

func TestIdentify(t *testing.T) {
	path := newDB(t)
	md, err := newWriter(t, path).Identify(t.Context())
	if err != nil {
		t.Fatalf("Identify: got %v, want nil", err)
	}
	if len(md.Components) != 1 {
		t.Fatalf("Identify: got %d components, want 1", len(md.Components))
	}
	c := md.Components[0]
	if c.Name != "app.db" || c.Needs != writer.NeedQuiesced || c.Kind != writer.KindDatabase {
		t.Errorf("Identify: got component %+v, want app.db, database, quiesced", c)
	}
	want := []string{path, path + "-wal", path + "-journal"}
	if strings.Join(c.Paths, " ") != strings.Join(want, " ") {
		t.Errorf("Identify: got paths %q, want %q", c.Paths, want)
	}
	if md.Version == "" || !strings.HasPrefix(md.Version, "3.") {
		t.Errorf("Identify: got version %q, want 3.x", md.Version)
	}
}

func TestBadPath(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notDB, []byte("hello, world; this is not a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing.db"), "missing.db does not exist; check path="},
		{"not sqlite", notDB, "notes.txt is not an SQLite database (header \"hello, world; th\""},
		{"empty", empty, "empty.db is not an SQLite database (header \"\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr := newWriter(t, tt.path)
			_, err := wr.Identify(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `sqlite writer "sqlite:test": `) {
				t.Errorf("Identify(%s): got %v, want an error with %q", tt.path, err, tt.want)
			}
			if err := wr.Freeze(t.Context(), writer.Set{}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Freeze(%s): got %v, want an error with %q", tt.path, err, tt.want)
			}
			if _, err := os.Stat(tt.path + "-wal"); err == nil {
				t.Errorf("Freeze(%s) created %s-wal", tt.path, tt.path)
			}
		})
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name string
		opts map[string]string
		want string // error text; empty for success
	}{
		{"ok", map[string]string{"path": "/data/x.db"}, ""},
		{"relative", map[string]string{"path": "x.db"}, ""},
		{"no path", map[string]string{}, "option path is required"},
		{"unknown", map[string]string{"path": "/x.db", "pth": "/x.db"}, `unknown option "pth"; valid options: path`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("sqlite:x", tt.opts)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New(%v): got %v, want nil", tt.opts, err)
				}
				if !filepath.IsAbs(wr.path) || wr.Name() != "sqlite:x" {
					t.Errorf("New(%v): got path %q name %q, want an absolute path and sqlite:x", tt.opts, wr.path, wr.Name())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%v): got %v, want an error with %q", tt.opts, err, tt.want)
			}
		})
	}
}

// TestFreezeBlocksWriters runs a load process against the database: while
// frozen no commit goes through (readers still see the data), and after
// Thaw the load resumes.
func TestFreezeBlocksWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "load.db")
	load := testenv.StartSQLiteLoad(t, path)
	wr := newWriter(t, path)
	set := writer.Set{ID: "s", Type: writer.Full}
	ctx := t.Context()
	if err := wr.PrepareSnapshot(ctx, set); err != nil {
		t.Fatalf("PrepareSnapshot: %v", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := wr.Freeze(fctx, set); err != nil {
		t.Fatalf("Freeze under load: %v", err)
	}
	frozenAt := time.Now()
	t.Logf("Freeze under load took %v", frozenAt.Sub(start))

	reader := openDB(t, path)
	atFreeze := counterValue(t, reader)
	time.Sleep(200 * time.Millisecond)
	atThaw := counterValue(t, reader)
	thawAt := time.Now()
	if err := wr.Thaw(ctx, set); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if atThaw != atFreeze {
		t.Errorf("counter moved while frozen: got %d at Freeze and %d before Thaw, want equal", atFreeze, atThaw)
	}
	if err := load.WaitProgress(10 * time.Second); err != nil {
		t.Fatalf("after Thaw: %v", err)
	}
	if err := wr.Abort(ctx, set); err != nil {
		t.Fatalf("Abort: %v", err)
	}

	acks := load.Stop()
	for _, a := range acks {
		if a.N > atFreeze && a.At.Before(thawAt) {
			t.Errorf("commit n=%d acknowledged at %v, between Freeze (%v) and Thaw (%v)",
				a.N, a.At.Format(time.StampMicro), frozenAt.Format(time.StampMicro), thawAt.Format(time.StampMicro))
		}
	}
	if last := acks[len(acks)-1].N; last <= atFreeze {
		t.Errorf("got last ack n=%d, want the load to go on past %d after Thaw", last, atFreeze)
	}
}

func TestFreezeHonoursContext(t *testing.T) {
	path := newDB(t)
	other := openDB(t, path)
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(context.Background(), "ROLLBACK")

	wr := newWriter(t, path)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = wr.Freeze(ctx, writer.Set{})
	if !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("Freeze while another connection writes: got %v, want an error wrapping ErrRetryable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Freeze returned after %v, want soon after its 100ms context ended", d)
	}
	if err := wr.Abort(t.Context(), writer.Set{}); err != nil {
		t.Errorf("Abort: %v", err)
	}
}

func TestAbortInterruptsFreeze(t *testing.T) {
	path := newDB(t)
	other := openDB(t, path)
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}

	wr := newWriter(t, path)
	if err := wr.PrepareSnapshot(t.Context(), writer.Set{}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- wr.Freeze(context.Background(), writer.Set{}) }()
	time.Sleep(50 * time.Millisecond) // let Freeze wait for the lock
	if err := wr.Abort(t.Context(), writer.Set{}); err != nil {
		t.Errorf("Abort during Freeze: %v", err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Freeze interrupted by Abort: got nil, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Freeze still waiting 5s after Abort")
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// Nothing of the aborted freeze is left: a new set freezes at once.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := wr.Freeze(ctx, writer.Set{}); err != nil {
		t.Fatalf("Freeze after Abort: %v", err)
	}
	if err := wr.Abort(t.Context(), writer.Set{}); err != nil {
		t.Fatal(err)
	}
}

func TestBackupComplete(t *testing.T) {
	tests := []struct {
		name     string
		typ      writer.BackupType
		ok       bool
		truncate bool
	}{
		{"full ok truncates", writer.Full, true, true},
		{"full failed keeps", writer.Full, false, false},
		{"copy ok keeps", writer.Copy, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := newDB(t)
			// The application keeps the database open, or closing the
			// last connection would checkpoint and remove the WAL.
			app := openDB(t, path)
			for i := range 50 {
				if _, err := app.ExecContext(t.Context(), "INSERT INTO t(v) VALUES (?)", strings.Repeat("x", 1000+i)); err != nil {
					t.Fatal(err)
				}
			}
			wr := newWriter(t, path)
			md, err := wr.Identify(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			set := writer.Set{ID: "s", Type: tt.typ}
			for _, step := range []func() error{
				func() error { return wr.PrepareSnapshot(t.Context(), set) },
				func() error { return wr.Freeze(t.Context(), set) },
				func() error { return wr.Thaw(t.Context(), set) },
			} {
				if err := step(); err != nil {
					t.Fatal(err)
				}
			}
			before := size(t, path+"-wal")
			if before == 0 {
				t.Fatal("WAL is empty before BackupComplete; the test needs one")
			}
			c := writer.Completion{Set: set, Components: map[string]bool{md.Components[0].Name: tt.ok}}
			if err := wr.BackupComplete(t.Context(), c); err != nil {
				t.Fatalf("BackupComplete: %v", err)
			}
			after := size(t, path+"-wal")
			switch {
			case tt.truncate && after != 0:
				t.Errorf("BackupComplete(%s, ok=%v): got WAL of %d bytes, want 0", tt.typ, tt.ok, after)
			case !tt.truncate && after != before:
				t.Errorf("BackupComplete(%s, ok=%v): got WAL of %d bytes, want it left at %d", tt.typ, tt.ok, after, before)
			}
			if got := rowCount(t, app); got != 50 {
				t.Errorf("after BackupComplete: got %d rows, want 50", got)
			}
		})
	}
}

func TestIntegrityCheck(t *testing.T) {
	path := newDB(t)
	app := openDB(t, path)
	if _, err := app.ExecContext(t.Context(), "INSERT INTO t(v) VALUES ('a')"); err != nil {
		t.Fatal(err)
	}
	if err := IntegrityCheck(t.Context(), path); err != nil {
		t.Errorf("IntegrityCheck of a sound database: got %v, want nil", err)
	}

	// A copy of the files, as a shadow copy would hold them.
	shadow := filepath.Join(t.TempDir(), "app.db")
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(path+suffix, shadow+suffix); err != nil {
			t.Fatal(err)
		}
	}
	if err := IntegrityCheck(t.Context(), shadow); err != nil {
		t.Errorf("IntegrityCheck of a copy with its WAL: got %v, want nil", err)
	}

	if err := IntegrityCheck(t.Context(), filepath.Join(t.TempDir(), "none.db")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("IntegrityCheck of a missing file: got %v, want does not exist", err)
	}

	broken := newDB(t)
	db := openDB(t, broken)
	for range 200 {
		if _, err := db.ExecContext(t.Context(), "INSERT INTO t(v) VALUES (?)", strings.Repeat("y", 500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(broken, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Scribble over the middle of page 3, a leaf of table t.
	if _, err := f.WriteAt([]byte(strings.Repeat("\xff", 2000)), 2*4096+1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := IntegrityCheck(t.Context(), broken); err == nil {
		t.Error("IntegrityCheck of a damaged database: got nil, want an error")
	} else {
		t.Logf("damaged: %v", err)
	}
}

// newDB creates app.db in WAL mode with a table t in a new directory.
func newDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db := openDB(t, path)
	for _, q := range []string{
		"PRAGMA journal_mode=WAL",
		"CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
	} {
		if _, err := db.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func newWriter(t *testing.T, path string) *Writer {
	t.Helper()
	wr, err := New("sqlite:test", map[string]string{"path": path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wr.Abort(context.Background(), writer.Set{}) })
	return wr
}

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path, "_pragma=busy_timeout(10000)"))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func counterValue(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRowContext(t.Context(), "SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatalf("read counter while frozen: %v", err)
	}
	return n
}

func rowCount(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestRestorePhases(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.db")
	load := testenv.StartSQLiteLoad(t, path)
	wr := newWriter(t, path)
	ctx := t.Context()
	r := writer.Restore{Components: []string{"app.db"}}
	if err := wr.PreRestore(ctx, r); err == nil || !strings.Contains(err.Error(), "stop the application") {
		t.Errorf("PreRestore with the database open: got %v, want a refusal", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("a refused PreRestore moved the database: %v", err)
	}
	load.Stop()
	if err := wr.PreRestore(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PreRestore left the database in place: %v", err)
	}
	moved := wr.MovedAside()
	writertest.CleanAside(t, moved...)
	if len(moved) == 0 || moved[0].From != path || !strings.Contains(moved[0].To, "/"+writer.AsideDirPrefix) {
		t.Fatalf("moved aside: %+v; want the database under a %s directory", moved, writer.AsideDirPrefix)
	}
	if err := os.Rename(moved[0].To, path); err != nil {
		t.Fatal(err)
	}
	if err := wr.PostRestore(ctx, r); err != nil {
		t.Errorf("PostRestore of an intact database: %v", err)
	}
	if err := os.WriteFile(path, []byte("SQLite format 3\x00 and then garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := wr.PostRestore(ctx, r); err == nil {
		t.Error("PostRestore of a damaged database succeeded")
	}
}

// TestTruncateBesideCheckpoints: an application that checkpoints after
// every commit (wal_autocheckpoint=1) holds SQLite's checkpoint lock much of
// the time, and a TRUNCATE checkpoint that meets it gets SQLITE_BUSY at once,
// without its busy handler. BackupComplete still truncates, round after
// round, while the application writes on.
func TestTruncateBesideCheckpoints(t *testing.T) {
	path := newDB(t)
	app := openDB(t, path)
	if _, err := app.ExecContext(t.Context(), "PRAGMA wal_autocheckpoint = 1"); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if ctx.Err() != nil {
				done <- nil
				return
			}
			if _, err := app.ExecContext(ctx, "INSERT INTO t(v) VALUES (?)", strings.Repeat("x", 1000+i%100)); err != nil && ctx.Err() == nil {
				done <- err
				return
			}
		}
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("application write: %v", err)
		}
	}()
	wr := newWriter(t, path)
	md, err := wr.Identify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		set := writer.Set{ID: fmt.Sprint("s", round), Type: writer.Full}
		for _, step := range []func() error{
			func() error { return wr.PrepareSnapshot(t.Context(), set) },
			func() error { return wr.Freeze(t.Context(), set) },
			func() error { return wr.Thaw(t.Context(), set) },
			func() error {
				return wr.BackupComplete(t.Context(), writer.Completion{Set: set, Components: map[string]bool{md.Components[0].Name: true}})
			},
		} {
			if err := step(); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}
