package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name string
		opts map[string]string
		want string // error text; empty for success
		addr string // cfg.Addr on success
	}{
		{"defaults", map[string]string{}, "", defaultSocket},
		{"socket", map[string]string{"socket": "/tmp/x.sock", "user": "backup"}, "", "/tmp/x.sock"},
		{"tcp default port", map[string]string{"host": "db.example"}, "", "db.example:3306"},
		{"tcp", map[string]string{"host": "127.0.0.1", "port": "3307", "purge_binlogs": "true"}, "", "127.0.0.1:3307"},
		{"unknown", map[string]string{"sock": "/x"}, `unknown option "sock"; valid options: host, password, password_file, port, purge_binlogs, service, socket, start, stop, user`, ""},
		{"both", map[string]string{"socket": "/x", "host": "h"}, "give socket= or host=, not both", ""},
		{"port without host", map[string]string{"port": "3306"}, "port= needs host=", ""},
		{"bad port", map[string]string{"host": "h", "port": "99999"}, "port=99999 is not a TCP port", ""},
		{"relative socket", map[string]string{"socket": "x.sock"}, "must be an absolute path", ""},
		{"bad purge", map[string]string{"purge_binlogs": "sometimes"}, "purge_binlogs=sometimes: want true or false", ""},
		{"missing password file", map[string]string{"password_file": "/nonexistent/pw"}, "password_file:", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("mariadb:x", tt.opts)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New(%v): got %v, want nil", tt.opts, err)
				}
				if wr.cfg.Addr != tt.addr || wr.Name() != "mariadb:x" {
					t.Errorf("New(%v): got address %q name %q, want %q and mariadb:x", tt.opts, wr.cfg.Addr, wr.Name(), tt.addr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `mariadb writer "mariadb:x": `) {
				t.Errorf("New(%v): got %v, want an error naming the writer with %q", tt.opts, err, tt.want)
			}
		})
	}
}

func TestPasswordSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("from-file\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MYSQL_PWD", "from-env")
	for _, tt := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"password": "from-config"}, "from-config"},
		{map[string]string{"password_file": file}, "from-file"},
		{map[string]string{}, "from-env"},
	} {
		wr, err := New("mariadb:x", tt.opts)
		if err != nil {
			t.Fatal(err)
		}
		if wr.cfg.Passwd != tt.want {
			t.Errorf("New(%v): got password %q, want %q", tt.opts, wr.cfg.Passwd, tt.want)
		}
	}
}

func TestEscapeGlob(t *testing.T) {
	for _, path := range []string{"/var/lib/mysql/ibtmp1", `/data/[x]/a*b?c\d/ibtmp1`} {
		pattern := escapeGlob(path)
		if !writer.Excluded([]string{pattern}, path) {
			t.Errorf("escapeGlob(%q) = %q does not match the path", path, pattern)
		}
		if other := path + "x"; writer.Excluded([]string{pattern}, other) {
			t.Errorf("escapeGlob(%q) = %q matches %q too", path, pattern, other)
		}
	}
	if writer.Excluded([]string{escapeGlob("/data/a*")}, "/data/ab") {
		t.Errorf("escapeGlob(/data/a*) matches /data/ab")
	}
}

func TestCheckVersion(t *testing.T) {
	tests := []struct {
		version, want string // want: error text, empty for none
	}{
		{"10.11.19-MariaDB-0+deb12u1-log", ""},
		{"10.4.0-MariaDB", ""},
		{"11.4.2-MariaDB", ""},
		{"10.3.39-MariaDB-0+deb10u1", "too old: the writer needs 10.4 or later"},
		{"5.5.68-MariaDB", "too old"},
		{"8.0.36", "not MariaDB: MySQL is not supported"},
		{"8.4.0-0ubuntu0.24.04.1", "not MariaDB"},
		{"weird-MariaDB", "want x.y.z"},
	}
	for _, tt := range tests {
		err := checkVersion(tt.version)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("checkVersion(%q): got %v, want %q", tt.version, err, tt.want)
		}
	}
}

func TestConformance(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, m, nil) })
}

func TestIdentify(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	for _, purge := range []bool{false, true} {
		wr := newWriter(t, m, map[string]string{"purge_binlogs": strconv.FormatBool(purge), "service": "mariadb"})
		md, err := wr.Identify(t.Context())
		if err != nil {
			t.Fatalf("Identify: %v", err)
		}
		if !strings.Contains(md.Version, "MariaDB") || md.Writer != "mariadb" || md.LogsOwnedBy != "" {
			t.Errorf("Identify: got version %q writer %q logs owned by %q, want MariaDB, mariadb and nobody", md.Version, md.Writer, md.LogsOwnedBy)
		}
		if len(md.Components) != 1 {
			t.Fatalf("Identify: got %d components, want 1 (the binary logs are in the data directory): %+v", len(md.Components), md.Components)
		}
		c := md.Components[0]
		if c.Name != DataComponent || c.Needs != writer.NeedAtomic || !slices.Equal(c.Paths, []string{m.DataDir}) || c.Restore.Service != "mariadb" {
			t.Errorf("Identify: got %+v, want datadir, atomic, paths [%s], service mariadb", c, m.DataDir)
		}
		// The test server keeps its pid file and socket outside the data
		// directory; the temporary tablespace is inside.
		if want := []string{filepath.Join(m.DataDir, "ibtmp1")}; !slices.Equal(c.Excludes, want) {
			t.Errorf("Identify: got excludes %q, want %q", c.Excludes, want)
		}
		want := "nothing (purge_binlogs is off)"
		if purge {
			want = "binary logs before the backup's binlog file (purge_binlogs=true)"
		}
		if !strings.HasPrefix(c.Logs.Truncates, want) {
			t.Errorf("Identify with purge_binlogs=%v: got truncates %q, want %q", purge, c.Logs.Truncates, want)
		}
	}

	t.Run("TCP", func(t *testing.T) {
		wr, err := New("mariadb:tcp", map[string]string{"host": "127.0.0.1", "port": strconv.Itoa(m.Port), "password": m.RootPassword})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wr.Identify(t.Context()); err != nil {
			t.Errorf("Identify over TCP: %v", err)
		}
	})
}

// TestIdentifySeparateDirs puts the binary logs, the redo log and the data
// files each in a directory of its own outside the data directory.
func TestIdentifySeparateDirs(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	uid, gid := testenv.SystemUser(t, "mysql")
	sub := map[string]string{}
	for _, name := range []string{"binlog", "redo", "ibdata"} {
		sub[name] = filepath.Join(dir, name)
		if err := os.Mkdir(sub[name], 0o750); err != nil {
			t.Fatal(err)
		}
		testenv.Chown(t, sub[name], uid, gid)
	}
	m := testenv.StartMariaDB(t, dir,
		"log-bin="+filepath.Join(sub["binlog"], "mysql-bin"),
		"innodb_log_group_home_dir="+sub["redo"],
		"innodb_data_home_dir="+sub["ibdata"])
	md, err := newWriter(t, m, map[string]string{"purge_binlogs": "true"}).Identify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Components) != 2 {
		t.Fatalf("Identify: got %d components, want datadir and binlog: %+v", len(md.Components), md.Components)
	}
	data, logs := md.Components[0], md.Components[1]
	if want := []string{m.DataDir, sub["ibdata"], sub["redo"]}; !slices.Equal(data.Paths, want) {
		t.Errorf("datadir paths: got %q, want %q", data.Paths, want)
	}
	if want := []string{filepath.Join(sub["ibdata"], "ibtmp1")}; !slices.Equal(data.Excludes, want) {
		t.Errorf("datadir excludes: got %q, want %q", data.Excludes, want)
	}
	if data.Logs.Truncates != "" {
		t.Errorf("datadir: got truncates %q, want nothing", data.Logs.Truncates)
	}
	if logs.Name != BinlogComponent || logs.Kind != writer.KindLogs || !slices.Equal(logs.Paths, []string{sub["binlog"]}) ||
		!strings.Contains(logs.Logs.Truncates, "purge_binlogs=true") {
		t.Errorf("binlog component: got %+v, want logs in %s that purge_binlogs truncates", logs, sub["binlog"])
	}
}

// TestBackupComplete checks when BackupComplete purges the binary logs:
// only with purge_binlogs on, a truncating backup type, the component
// stored and the set not aborted, and then only the files before the one
// the position names.
func TestBackupComplete(t *testing.T) {
	tests := []struct {
		name   string
		purge  bool
		typ    writer.BackupType
		stored bool
		abort  bool
		purged bool
	}{
		{"purge", true, writer.Full, true, false, true},
		{"purge off", false, writer.Full, true, false, false},
		{"not stored", true, writer.Full, false, false, false},
		{"copy backup", true, writer.Copy, true, false, false},
		{"after abort", true, writer.Full, true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testenv.StartMariaDB(t, t.TempDir())
			m.Exec(t, "CREATE DATABASE d", "CREATE TABLE d.t (v INT)")
			for i := range 3 {
				m.Exec(t, "INSERT INTO d.t VALUES ("+strconv.Itoa(i)+")", "FLUSH BINARY LOGS")
			}
			before := binlogs(t, m)
			wr := newWriter(t, m, map[string]string{"purge_binlogs": strconv.FormatBool(tt.purge)})
			set := writer.Set{ID: "s1", Type: tt.typ, Scratch: t.TempDir()}
			pos := runSet(t, wr, set)
			if pos[PosFile] != before[len(before)-1] {
				t.Fatalf("recorded binlog file %q, want the newest, %q", pos[PosFile], before[len(before)-1])
			}
			m.Exec(t, "INSERT INTO d.t VALUES (9)", "FLUSH BINARY LOGS")
			all := binlogs(t, m)
			if tt.abort {
				if err := wr.Abort(t.Context(), set); err != nil {
					t.Fatal(err)
				}
			}
			err := wr.BackupComplete(t.Context(), writer.Completion{Set: set, Components: map[string]bool{DataComponent: tt.stored}})
			switch {
			case tt.abort && err == nil:
				t.Errorf("BackupComplete after Abort: got nil, want an error saying no position was recorded")
			case !tt.abort && err != nil:
				t.Errorf("BackupComplete: %v", err)
			}
			got := binlogs(t, m)
			want := all
			if tt.purged {
				want = all[slices.Index(all, pos[PosFile]):]
			}
			if !slices.Equal(got, want) {
				t.Errorf("binary logs after BackupComplete: got %q, want %q", got, want)
			}
		})
	}
}

// TestBackupCompleteInAnotherProcess gives BackupComplete a writer that did
// not make the set: it finds the position in the set's scratch directory.
func TestBackupCompleteInAnotherProcess(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	m.Exec(t, "FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
	opts := map[string]string{"purge_binlogs": "true"}
	set := writer.Set{ID: "s2", Type: writer.Full, Scratch: t.TempDir()}
	pos := runSet(t, newWriter(t, m, opts), set)
	later := newWriter(t, m, opts)
	if err := later.BackupComplete(t.Context(), writer.Completion{Set: set, Components: map[string]bool{DataComponent: true}}); err != nil {
		t.Fatalf("BackupComplete: %v", err)
	}
	if got := binlogs(t, m); got[0] != pos[PosFile] {
		t.Errorf("binary logs: got %q, want them to start at %s", got, pos[PosFile])
	}
}

// TestAbortResumesLoad freezes the server under the transfer load and
// aborts, after Freeze and while Freeze runs: the load must commit again
// within a second of Abort.
func TestAbortResumesLoad(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	load := m.StartTransferLoad(t, 4)
	for _, during := range []bool{false, true} {
		name := "after Freeze"
		if during {
			name = "during Freeze"
		}
		t.Run(name, func(t *testing.T) {
			wr := newWriter(t, m, nil)
			set := writer.Set{ID: "a", Type: writer.Full}
			if err := wr.PrepareSnapshot(t.Context(), set); err != nil {
				t.Fatal(err)
			}
			freezeErr := make(chan error, 1)
			go func() { freezeErr <- wr.Freeze(t.Context(), set) }()
			if !during {
				if err := <-freezeErr; err != nil {
					t.Fatalf("Freeze: %v", err)
				}
				frozenAt := time.Now()
				time.Sleep(300 * time.Millisecond)
				for _, a := range load.Acks() {
					// BLOCK_COMMIT waits for commits under way; their
					// acks may land a moment after Freeze returns.
					if a.Sent.After(frozenAt) {
						t.Fatalf("transfer %d committed at %v, %v after Freeze returned", a.ID, a.At.Format(time.StampMicro), a.At.Sub(frozenAt))
					}
				}
			}
			abortAt := time.Now()
			if err := wr.Abort(t.Context(), set); err != nil {
				t.Fatalf("Abort: %v", err)
			}
			if err := load.WaitProgress(time.Second); err != nil {
				t.Fatalf("after Abort: %v", err)
			}
			resumed := time.Since(abortAt)
			for _, a := range load.Acks() {
				if a.At.After(abortAt) {
					resumed = a.At.Sub(abortAt)
					break
				}
			}
			t.Logf("load committed again %v after Abort", resumed)
			if resumed > time.Second {
				t.Errorf("load committed again %v after Abort, want within 1s", resumed)
			}
			if during {
				if err := <-freezeErr; err == nil {
					t.Log("Freeze won the race with Abort; Abort released it")
				}
			}
			assertNoBackupStage(t, m)
		})
	}
	load.Stop()
	if _, err := m.Ledger(t); err != nil {
		t.Error(err)
	}
}

// TestLockWaitRetryable holds LOCK TABLES ... WRITE, which BACKUP STAGE
// START waits behind: PrepareSnapshot gives up with a retryable error when
// its context ends, Abort interrupts it, and neither leaves a lock behind.
func TestLockWaitRetryable(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	m.Exec(t, "CREATE DATABASE d", "CREATE TABLE d.t (v INT)")
	conn, err := m.DB(t).Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "LOCK TABLES d.t WRITE"); err != nil {
		t.Fatal(err)
	}

	wr := newWriter(t, m, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = wr.PrepareSnapshot(ctx, writer.Set{})
	if !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("PrepareSnapshot behind LOCK TABLES: got %v, want an error wrapping ErrRetryable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("PrepareSnapshot returned after %v, want soon after its 300ms context ended", d)
	}

	errc := make(chan error, 1)
	go func() { errc <- wr.PrepareSnapshot(context.Background(), writer.Set{}) }()
	time.Sleep(200 * time.Millisecond)
	if err := wr.Abort(t.Context(), writer.Set{}); err != nil {
		t.Errorf("Abort: %v", err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("PrepareSnapshot interrupted by Abort: got nil, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PrepareSnapshot still waiting 5s after Abort")
	}
	if _, err := conn.ExecContext(t.Context(), "UNLOCK TABLES"); err != nil {
		t.Fatal(err)
	}
	assertNoBackupStage(t, m)
}

func TestErrors(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	users := map[string][]string{
		"noreload":  {"SELECT"},
		"nomonitor": {"RELOAD"},
		"noadmin":   {"RELOAD", "BINLOG MONITOR", "PROCESS"},
		"noprocess": {"RELOAD", "BINLOG MONITOR", "BINLOG ADMIN"},
	}
	for user, privs := range users {
		m.Exec(t, "CREATE USER '"+user+"'@'localhost' IDENTIFIED BY 'pw'",
			"GRANT "+strings.Join(privs, ", ")+" ON *.* TO '"+user+"'@'localhost'")
	}
	refused := filepath.Join(t.TempDir(), "refused.sock")
	l, err := net.Listen("unix", refused)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the socket file stays, nobody listens

	tests := []struct {
		name  string
		opts  map[string]string
		phase writer.Phase
		want  []string
	}{
		{"wrong password", map[string]string{"user": "noreload", "password": "wrong"}, writer.PhaseIdentify,
			[]string{"refused user noreload", "Access denied", "give the right user= and password"}},
		{"no socket", map[string]string{"socket": filepath.Join(t.TempDir(), "none.sock")}, writer.PhaseIdentify,
			[]string{"no server is listening at socket", "start MariaDB or check socket="}},
		{"nobody listening", map[string]string{"socket": refused}, writer.PhasePrepareBackup,
			[]string{"no server is listening at socket", "connection refused"}},
		{"tcp down", map[string]string{"host": "127.0.0.1", "port": strconv.Itoa(testenv.FreePort(t))}, writer.PhasePrepareSnapshot,
			[]string{"no server is listening at 127.0.0.1:", "check host= and port="}},
		{"no RELOAD", map[string]string{"user": "noreload", "password": "pw"}, writer.PhasePrepareBackup,
			[]string{"BACKUP STAGE START needs the RELOAD privilege", "GRANT RELOAD ON *.* TO 'noreload'@'localhost'"}},
		{"no RELOAD at PrepareSnapshot", map[string]string{"user": "noreload", "password": "pw"}, writer.PhasePrepareSnapshot,
			[]string{"BACKUP STAGE START needs the RELOAD privilege", "GRANT RELOAD ON *.* TO 'noreload'@'localhost'"}},
		{"no BINLOG MONITOR", map[string]string{"user": "nomonitor", "password": "pw"}, writer.PhasePrepareBackup,
			[]string{"SHOW MASTER STATUS needs the BINLOG MONITOR privilege", "GRANT BINLOG MONITOR ON *.* TO 'nomonitor'@'localhost'"}},
		{"no BINLOG ADMIN", map[string]string{"user": "noadmin", "password": "pw", "purge_binlogs": "true"}, writer.PhasePrepareBackup,
			[]string{"lacks the BINLOG ADMIN privilege", "GRANT BINLOG ADMIN ON *.* TO 'noadmin'@'localhost', or turn purge_binlogs off"}},
		{"no PROCESS", map[string]string{"user": "noprocess", "password": "pw", "purge_binlogs": "true"}, writer.PhasePrepareBackup,
			[]string{"lacks the PROCESS privilege", "to see replicas", "GRANT PROCESS ON *.* TO 'noprocess'@'localhost'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := map[string]string{"socket": m.Socket}
			for k, v := range tt.opts {
				opts[k] = v
			}
			if opts["host"] != "" {
				delete(opts, "socket")
			}
			wr, err := New("mariadb:test", opts)
			if err != nil {
				t.Fatal(err)
			}
			defer wr.Abort(context.Background(), writer.Set{})
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			switch tt.phase {
			case writer.PhaseIdentify:
				_, err = wr.Identify(ctx)
			case writer.PhasePrepareBackup:
				err = wr.PrepareBackup(ctx, writer.Set{})
			case writer.PhasePrepareSnapshot:
				err = wr.PrepareSnapshot(ctx, writer.Set{})
			}
			if err == nil {
				t.Fatalf("%s: got nil, want an error with %q", tt.phase, tt.want)
			}
			t.Logf("%s: %v", tt.phase, err)
			if !strings.HasPrefix(err.Error(), `mariadb writer "mariadb:test": `) {
				t.Errorf("%s: got %q, want it to start by naming the writer", tt.phase, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: got %q, want it to say %q", tt.phase, err, w)
				}
			}
			if errors.Is(err, writer.ErrRetryable) {
				t.Errorf("%s: got a retryable error, want not retryable: %v", tt.phase, err)
			}
			if wr.sess != nil {
				t.Errorf("%s failed but left a session open", tt.phase)
			}
			assertNoConnections(t, m, opts["user"])
		})
	}
	assertNoBackupStage(t, m)
}

// TestReplicaStopsPurge connects mariadb-binlog as a fake replica: Identify
// says the replica owns the logs, and BackupComplete purges nothing while it
// reads, then purges once it has gone.
func TestReplicaStopsPurge(t *testing.T) {
	testenv.NeedCommand(t, "mariadb-binlog")
	m := testenv.StartMariaDB(t, t.TempDir())
	m.Exec(t, "FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
	replica := startReplica(t, m)

	wr := newWriter(t, m, map[string]string{"purge_binlogs": "true"})
	md, err := wr.Identify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.LogsOwnedBy, "Binlog Dump thread") {
		t.Errorf("Identify with a replica reading: got LogsOwnedBy %q, want it to name the Binlog Dump thread", md.LogsOwnedBy)
	}
	set := writer.Set{ID: "r", Type: writer.Full}
	runSet(t, wr, set)
	before := binlogs(t, m)
	done := writer.Completion{Set: set, Components: map[string]bool{DataComponent: true}}
	err = wr.BackupComplete(t.Context(), done)
	if err == nil || !errors.Is(err, writer.ErrRetryable) || !strings.Contains(err.Error(), "not purged: replicas read the binary log") {
		t.Errorf("BackupComplete with a replica reading: got %v, want a retryable error saying nothing was purged", err)
	}
	if got := binlogs(t, m); !slices.Equal(got, before) {
		t.Errorf("binary logs with a replica reading: got %q, want all of %q", got, before)
	}

	if err := replica.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	replica.Wait()
	// The server notices a vanished replica only when it next writes to
	// it, which on an idle log may be never: end its thread, as an
	// operator would.
	killDumpThreads(t, m)
	waitFor(t, "the Binlog Dump thread to end", func() bool { return dumpThreads(t, m) == 0 })
	if md, err := wr.Identify(t.Context()); err != nil || md.LogsOwnedBy != "" {
		t.Errorf("Identify without a replica: got LogsOwnedBy %q, %v; want nobody", md.LogsOwnedBy, err)
	}
	set.ID = "r2"
	pos := runSet(t, wr, set)
	if err := wr.BackupComplete(t.Context(), writer.Completion{Set: set, Components: done.Components}); err != nil {
		t.Fatalf("BackupComplete without a replica: %v", err)
	}
	if got := binlogs(t, m); got[0] != pos[PosFile] {
		t.Errorf("binary logs after the replica left: got %q, want them to start at %s", got, pos[PosFile])
	}
}

// startReplica runs mariadb-binlog as a replica that streams the binary
// log forever, its password in MYSQL_PWD rather than on the command line.
func startReplica(t *testing.T, m *testenv.MariaDB) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("mariadb-binlog", "--read-from-remote-server", "--stop-never",
		"--socket="+m.Socket, "--user=root", "mysql-bin.000001")
	cmd.Env = append(os.Environ(), "MYSQL_PWD="+m.RootPassword)
	if err := cmd.Start(); err != nil { // output goes to /dev/null
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFor(t, "mariadb-binlog to connect", func() bool { return dumpThreads(t, m) == 1 })
	return cmd
}

// killDumpThreads ends every Binlog Dump thread of m.
func killDumpThreads(t *testing.T, m *testenv.MariaDB) {
	t.Helper()
	rows, err := m.DB(t).QueryContext(t.Context(), "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		// 1094: the thread ended by itself meanwhile.
		var me *mysql.MySQLError
		if _, err := m.DB(t).ExecContext(t.Context(), "KILL CONNECTION "+strconv.FormatInt(id, 10)); err != nil && !(errors.As(err, &me) && me.Number == 1094) {
			t.Fatalf("KILL CONNECTION %d: %v", id, err)
		}
	}
}

func dumpThreads(t *testing.T, m *testenv.MariaDB) int {
	t.Helper()
	var n int
	err := m.DB(t).QueryRowContext(t.Context(), "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'").Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// runSet takes wr through one set, up to PostSnapshot, and returns the
// positions it reported.
func runSet(t *testing.T, wr *Writer, set writer.Set) map[string]string {
	t.Helper()
	ctx := t.Context()
	if _, err := wr.Identify(ctx); err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return wr.PrepareBackup(ctx, set) },
		func() error { return wr.PrepareSnapshot(ctx, set) },
		func() error { return wr.Freeze(ctx, set) },
		func() error { return wr.Thaw(ctx, set) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := wr.PostSnapshot(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Positions[PosFile] == "" || rep.Positions[PosGTID] == "" {
		t.Fatalf("PostSnapshot: got positions %v, want a binlog file and a GTID", rep.Positions)
	}
	return rep.Positions
}

func newWriter(t testing.TB, m *testenv.MariaDB, extra map[string]string) *Writer {
	t.Helper()
	opts := map[string]string{"socket": m.Socket, "user": "root", "password": m.RootPassword}
	for k, v := range extra {
		opts[k] = v
	}
	wr, err := New("mariadb:test", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wr.Abort(context.Background(), writer.Set{}) })
	return wr
}

// binlogs lists the server's binary log files.
func binlogs(t testing.TB, m *testenv.MariaDB) []string {
	t.Helper()
	rows, err := m.DB(t).QueryContext(t.Context(), "SHOW BINARY LOGS")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var names []string
	for rows.Next() {
		var name string
		dest := []any{&name}
		for range cols[1:] {
			dest = append(dest, new(sql.RawBytes))
		}
		if err := rows.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// assertNoBackupStage fails the test if any connection holds a BACKUP
// STAGE: a new one must get to BLOCK_COMMIT at once.
func assertNoBackupStage(t testing.TB, m *testenv.MariaDB) {
	t.Helper()
	conn, err := m.DB(t).Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, stage := range stages {
		if _, err := conn.ExecContext(t.Context(), "SET STATEMENT lock_wait_timeout=2 FOR BACKUP STAGE "+stage); err != nil {
			t.Errorf("BACKUP STAGE %s: %v (did the writer leave a lock behind?)", stage, err)
			break
		}
	}
	if _, err := conn.ExecContext(t.Context(), "BACKUP STAGE END"); err != nil {
		t.Error(err)
	}
}

// assertNoConnections fails the test if user keeps a connection open.
func assertNoConnections(t testing.TB, m *testenv.MariaDB, user string) {
	t.Helper()
	if user == "" || user == "root" {
		return // the test's own connections are root's
	}
	waitFor(t, "the writer's connections to close", func() bool {
		var n int
		if err := m.DB(t).QueryRowContext(t.Context(), "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?", user).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
