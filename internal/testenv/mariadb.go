package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mariaStartLimit bounds how long a MariaDB server may take to accept
// connections (InnoDB recovery of a copied data directory included).
const mariaStartLimit = 2 * time.Minute

// MariaDB is a private MariaDB server started for one test: its own option
// file, socket, TCP port on 127.0.0.1 and pid file in a short temporary run
// directory, and its data directory on a filesystem the test chose (a loop
// mount, so that providers can snapshot it). The server is small (32 MiB
// buffer pool, 16 MiB redo log) to fit a 256 MiB test filesystem, writes a
// binary log (mysql-bin.*, in the data directory unless the test moved it)
// and has server_id 1.
//
// t.Cleanup stops it, whether the test passed or not, also when it was
// restarted outside the test's control (see StartCommand), then removes
// the run directory and the data directory StartMariaDB made.
type MariaDB struct {
	Server       *Server // the mariadbd process this call started
	DataDir      string
	Socket       string
	Port         int
	PidFile      string
	Config       string // the option file, for --defaults-file
	RootPassword string // of root@localhost and root@127.0.0.1

	runDir string
	uid    int
	gid    int
	extra  []string

	mu sync.Mutex
	db *sql.DB
}

// StartMariaDB creates a MariaDB data directory (mariadb-install-db) in a
// fresh directory under parent, such as a loop-mounted filesystem's mount
// point or subvolume, and starts a server on it as the mysql user. root
// gets a random password (RootPassword), for the socket and for TCP.
// extra lines are appended to the option file's [mariadbd] section, such
// as "log-bin=/mnt/binlog/mysql-bin" (a directory the caller made and gave
// to the mysql user).
//
// It skips the test unless it runs as root with mariadbd,
// mariadb-install-db and the mysql user present. Every ancestor of parent
// is made searchable by others (Traversable), as the server runs as mysql.
// The data directory is removed when the test ends.
func StartMariaDB(t testing.TB, parent string, extra ...string) *MariaDB {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "mariadbd")
	NeedCommand(t, "mariadb-install-db")
	dir := tempDirOn(t, parent, "mariadb-")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := newMariaDB(t, filepath.Join(dir, "data"), extra)
	if err := os.Mkdir(m.DataDir, 0o750); err != nil {
		t.Fatalf("StartMariaDB: %v", err)
	}
	Chown(t, m.DataDir, m.uid, m.gid)
	install := exec.Command("mariadb-install-db", "--defaults-file="+m.Config, "--user=mysql",
		"--auth-root-authentication-method=normal", "--skip-test-db")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("mariadb-install-db into %s: %v\n%s", m.DataDir, err, out)
	}
	Chown(t, m.DataDir, m.uid, m.gid) // mariadb-install-db leaves a file owned by root
	m.start(t, "")

	// A fresh install lets root in without a password; give it one so that
	// tests exercise the writer's password handling.
	m.RootPassword = randomHex(t, 12)
	db := m.open(t, "root", "")
	defer db.Close()
	rows, err := db.QueryContext(t.Context(), "SELECT User, Host FROM mysql.user WHERE User = 'root'")
	if err != nil {
		t.Fatalf("StartMariaDB: list root accounts: %v", err)
	}
	var hosts []string
	for rows.Next() {
		var user, host string
		if err := rows.Scan(&user, &host); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, host)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatal(err)
	}
	for _, host := range hosts {
		q := fmt.Sprintf("ALTER USER 'root'@'%s' IDENTIFIED BY '%s'", host, m.RootPassword)
		if host != "localhost" && host != "127.0.0.1" && host != "::1" {
			q = fmt.Sprintf("DROP USER 'root'@'%s'", host) // the host name: unused, and skip-name-resolve warns about it
		}
		if _, err := db.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("StartMariaDB: %s: %v", q, err)
		}
	}
	return m
}

// StartCopy starts a second server, with its own socket, port and run
// directory but the same settings and credentials as m, on dataDir: a copy
// of m's data directory (cp -a of a shadow copy, a restore). The copy must
// belong to the mysql user, as cp -a keeps it. The server recovers InnoDB
// as after a crash before it accepts connections.
//
// extra lines follow m's in the option file, so they win, such as a
// log-bin= that names the copy's own binary log directory.
func (m *MariaDB) StartCopy(t testing.TB, dataDir string, extra ...string) *MariaDB {
	t.Helper()
	c := newMariaDB(t, dataDir, append(slices.Clone(m.extra), extra...))
	c.RootPassword = m.RootPassword
	c.start(t, m.RootPassword)
	return c
}

// newMariaDB makes the run directory and option file; the server is not
// started yet.
func newMariaDB(t testing.TB, dataDir string, extra []string) *MariaDB {
	t.Helper()
	uid, gid := SystemUser(t, "mysql")
	// A short path: a Unix socket's path is limited to 107 bytes, and test
	// names make t.TempDir long.
	runDir, err := os.MkdirTemp("", "umbra-maria-")
	if err != nil {
		t.Fatal(err)
	}
	m := &MariaDB{
		DataDir: dataDir,
		Socket:  filepath.Join(runDir, "mysqld.sock"),
		Port:    FreePort(t),
		PidFile: filepath.Join(runDir, "mysqld.pid"),
		Config:  filepath.Join(runDir, "my.cnf"),
		runDir:  runDir,
		uid:     uid,
		gid:     gid,
		extra:   extra,
	}
	// Cleanups run last registered first: the run directory goes after the
	// servers have stopped.
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	t.Cleanup(func() { m.stopDetached(t) })
	t.Cleanup(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.db != nil {
			m.db.Close()
		}
	})
	cnf := []string{
		"[mariadbd]",
		"datadir=" + dataDir,
		"socket=" + m.Socket,
		"pid-file=" + m.PidFile,
		// A private tmpdir: a starting mariadbd deletes every #sql* file
		// in its tmpdir, which broke another test's mariadb-install-db
		// (its temporary tables vanished) when both used /tmp.
		"tmpdir=" + runDir,
		"port=" + strconv.Itoa(m.Port),
		"bind-address=127.0.0.1",
		"skip-name-resolve",
		"server-id=1",
		// Relative, so that the index names files relative to the data
		// directory and a copy of it finds its own binary logs.
		"log-bin=mysql-bin",
		"innodb_buffer_pool_size=32M",
		"innodb_log_file_size=16M",
		"innodb_log_buffer_size=4M",
		"key_buffer_size=1M",
		"aria_pagecache_buffer_size=8M",
		"max_connections=60",
		"performance_schema=OFF",
		"loose-feedback=OFF",
	}
	cnf = append(cnf, extra...)
	if err := os.WriteFile(m.Config, []byte(strings.Join(cnf, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	Chown(t, runDir, uid, gid)
	Traversable(t, dataDir)
	return m
}

// start runs mariadbd as the mysql user and waits until root can log in
// with password.
func (m *MariaDB) start(t testing.TB, password string) {
	t.Helper()
	cmd := exec.Command("mariadbd", "--defaults-file="+m.Config)
	AsUser(cmd, m.uid, m.gid)
	m.Server = StartServer(t, "mariadbd "+m.DataDir, cmd, mariaStartLimit, func() error {
		db := m.open(t, "root", password)
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return db.PingContext(ctx)
	})
}

// DSN is a go-sql-driver/mysql data source name for user over the socket.
func (m *MariaDB) DSN(user, password string) string {
	return m.mysqlConfig(user, password).FormatDSN()
}

func (m *MariaDB) mysqlConfig(user, password string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = user, password
	cfg.Net, cfg.Addr = "unix", m.Socket
	cfg.InterpolateParams = true
	// The driver logs connections the server closed (a test stops it) to
	// stderr; the test sees those errors where they matter.
	cfg.Logger = &mysql.NopLogger{}
	return cfg
}

// Spec is the umbra writer spec (--writer) for this server as root; the
// password goes in MYSQL_PWD (RootPassword), as a command line must not
// carry it.
func (m *MariaDB) Spec(name string) string {
	return fmt.Sprintf("mariadb:name=%s,socket=%s,user=root", name, m.Socket)
}

// DB is a connection pool as root over the socket, closed when the test
// ends. It reconnects by itself after the server restarts.
func (m *MariaDB) DB(t testing.TB) *sql.DB {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.db == nil {
		m.db = m.open(t, "root", m.RootPassword)
	}
	return m.db
}

func (m *MariaDB) open(t testing.TB, user, password string) *sql.DB {
	t.Helper()
	c, err := mysql.NewConnector(m.mysqlConfig(user, password))
	if err != nil {
		t.Fatal(err)
	}
	return sql.OpenDB(c)
}

// Exec runs statements as root, failing the test on the first error.
func (m *MariaDB) Exec(t testing.TB, queries ...string) {
	t.Helper()
	for _, q := range queries {
		if _, err := m.DB(t).ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// StartCommand is a shell command that starts m's server again in the
// background, as umbra's start= option would (after a restore), and returns
// at once. The server it starts is not m.Server; t.Cleanup stops it through
// its pid file.
func (m *MariaDB) StartCommand() string {
	return fmt.Sprintf("setsid -f mariadbd --defaults-file='%s' --user=mysql </dev/null >>'%s' 2>&1",
		m.Config, filepath.Join(m.runDir, "restarted.log"))
}

// stopDetached stops a server started by StartCommand, found by its pid
// file, and shows its output if the test failed.
func (m *MariaDB) stopDetached(t testing.TB) {
	t.Helper()
	if t.Failed() {
		if b, err := os.ReadFile(filepath.Join(m.runDir, "restarted.log")); err == nil {
			t.Logf("mariadbd %s (restarted) output:\n%s", m.DataDir, b)
		}
	}
	b, err := os.ReadFile(m.PidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !isMariadbd(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(serverStopLimit)
	for isMariadbd(pid) {
		if time.Now().After(deadline) {
			t.Logf("mariadbd (pid %d) did not stop within %v of SIGTERM; killing it", pid, serverStopLimit)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isMariadbd reports whether pid is a live (not zombie) mariadbd.
func isMariadbd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+3 > len(s) {
		return false
	}
	return s[open+1:end] == "mariadbd" && s[end+2] != 'Z'
}

// The transfer workload: MariaDBAccounts accounts in bank.accounts, each
// starting with MariaDBStartBalance; every transaction moves an amount
// between two accounts and records it in bank.transfers, so the total never
// changes and every balance follows from the transfers.
const (
	MariaDBAccounts     = 100
	MariaDBStartBalance = 1000
	MariaDBTotal        = MariaDBAccounts * MariaDBStartBalance
)

// MariaDBAck is one transfer the load saw commit: Sent is when it sent
// COMMIT, At when COMMIT returned.
type MariaDBAck struct {
	ID   int64
	Sent time.Time
	At   time.Time
}

// MariaDBLoad is the transfer workload running on a server: a few
// connections, each committing transfers as fast as it can. Its
// acknowledgements are the ground truth of what committed when. It waits,
// never fails, while commits are blocked (BACKUP STAGE), and retries
// deadlocks and lock wait time-outs.
type MariaDBLoad struct {
	t      testing.TB
	cancel context.CancelFunc
	wg     sync.WaitGroup
	nextID int64

	mu   sync.Mutex
	acks []MariaDBAck
	errs []error
	cond *sync.Cond // signalled on every ack
}

// StartTransferLoad creates the workload's tables unless they exist and
// starts workers connections committing transfers. It returns once a
// transfer has committed. Stop ends it; t.Cleanup stops it too.
func (m *MariaDB) StartTransferLoad(t testing.TB, workers int) *MariaDBLoad {
	t.Helper()
	db := m.DB(t)
	ctx := t.Context()
	m.Exec(t,
		"CREATE DATABASE IF NOT EXISTS bank",
		"CREATE TABLE IF NOT EXISTS bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS bank.transfers (id BIGINT PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB",
	)
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM bank.accounts").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		var vals []string
		for i := 1; i <= MariaDBAccounts; i++ {
			vals = append(vals, fmt.Sprintf("(%d, %d)", i, MariaDBStartBalance))
		}
		m.Exec(t, "INSERT INTO bank.accounts VALUES "+strings.Join(vals, ", "))
	}
	l := &MariaDBLoad{t: t}
	l.cond = sync.NewCond(&l.mu)
	if err := db.QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0) FROM bank.transfers").Scan(&l.nextID); err != nil {
		t.Fatal(err)
	}
	// A pool of its own: the test's queries must not wait behind the load.
	pool := m.open(t, "root", m.RootPassword)
	pool.SetMaxOpenConns(workers)
	lctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.work(lctx, pool)
		}()
	}
	t.Cleanup(func() {
		l.halt()
		pool.Close()
	})
	if err := l.WaitProgress(time.Minute); err != nil {
		t.Fatalf("StartTransferLoad: %v", err)
	}
	return l
}

func (l *MariaDBLoad) work(ctx context.Context, db *sql.DB) {
	for ctx.Err() == nil {
		l.mu.Lock()
		l.nextID++
		id := l.nextID
		l.mu.Unlock()
		a, b := 1+mrand.IntN(MariaDBAccounts), 1+mrand.IntN(MariaDBAccounts-1)
		if b >= a {
			b++
		}
		amount := 1 + mrand.Int64N(50)
		sent, at, err := transfer(ctx, db, id, a, b, amount)
		if ctx.Err() != nil {
			return // stopped: a transfer cut short is not a failure
		}
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205) {
			continue // deadlock or lock wait time-out: rolled back, try another
		}
		l.mu.Lock()
		if err != nil {
			l.errs = append(l.errs, fmt.Errorf("transfer %d: %w", id, err))
			l.cond.Broadcast()
			l.mu.Unlock()
			return
		}
		l.acks = append(l.acks, MariaDBAck{ID: id, Sent: sent, At: at})
		l.cond.Broadcast()
		l.mu.Unlock()
	}
}

// transfer moves amount from account src to dst, locking the lower id
// first so that two transfers never deadlock on each other's rows.
func transfer(ctx context.Context, db *sql.DB, id int64, src, dst int, amount int64) (sent, at time.Time, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return sent, at, err
	}
	defer tx.Rollback()
	first, second := src, dst
	if second < first {
		first, second = second, first
	}
	for _, acct := range []int{first, second} {
		delta := amount
		if acct == src {
			delta = -amount
		}
		if _, err := tx.ExecContext(ctx, "UPDATE bank.accounts SET balance = balance + ? WHERE id = ?", delta, acct); err != nil {
			return sent, at, err
		}
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO bank.transfers VALUES (?, ?, ?, ?)", id, src, dst, amount); err != nil {
		return sent, at, err
	}
	sent = time.Now()
	if err := tx.Commit(); err != nil {
		return sent, at, err
	}
	return sent, time.Now(), nil
}

// Acks returns the acknowledged transfers so far, in the order they were
// acknowledged.
func (l *MariaDBLoad) Acks() []MariaDBAck {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]MariaDBAck(nil), l.acks...)
}

// WaitProgress returns nil as soon as a transfer is acknowledged after the
// call, and an error if none is within d or the load failed.
func (l *MariaDBLoad) WaitProgress(d time.Duration) error {
	start := time.Now()
	timer := time.AfterFunc(d, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer timer.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := len(l.acks)
	for {
		for _, a := range l.acks[seen:] {
			if !a.At.Before(start) {
				return nil
			}
		}
		seen = len(l.acks)
		if len(l.errs) > 0 {
			return fmt.Errorf("load failed: %w", errors.Join(l.errs...))
		}
		if time.Since(start) >= d {
			return fmt.Errorf("no transfer acknowledged within %v", d)
		}
		l.cond.Wait()
	}
}

// Stop ends the load, waits for its connections and returns every
// acknowledgement. A transfer that failed other than by Stop fails the test.
func (l *MariaDBLoad) Stop() []MariaDBAck {
	l.t.Helper()
	l.halt()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		l.t.Errorf("transfer load: %v", errors.Join(l.errs...))
	}
	return append([]MariaDBAck(nil), l.acks...)
}

func (l *MariaDBLoad) halt() {
	l.cancel()
	l.wg.Wait()
}

// MariaDBLedger is the transfer workload's state as one server holds it.
type MariaDBLedger struct {
	Total     int64          // sum of every balance
	Transfers map[int64]bool // ids of the committed transfers
}

// Ledger reads the transfer workload's tables and checks its invariants:
// the total is MariaDBTotal and every balance equals its start balance plus
// what the transfers table moved into it, minus what it moved out.
func (m *MariaDB) Ledger(t testing.TB) (MariaDBLedger, error) {
	t.Helper()
	ctx := t.Context()
	db := m.DB(t)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return MariaDBLedger{}, err
	}
	defer tx.Rollback()
	want := map[int]int64{}
	for i := 1; i <= MariaDBAccounts; i++ {
		want[i] = MariaDBStartBalance
	}
	led := MariaDBLedger{Transfers: map[int64]bool{}}
	rows, err := tx.QueryContext(ctx, "SELECT id, src, dst, amount FROM bank.transfers")
	if err != nil {
		return led, err
	}
	for rows.Next() {
		var id, amount int64
		var src, dst int
		if err := rows.Scan(&id, &src, &dst, &amount); err != nil {
			rows.Close()
			return led, err
		}
		led.Transfers[id] = true
		want[src] -= amount
		want[dst] += amount
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return led, err
	}
	rows, err = tx.QueryContext(ctx, "SELECT id, balance FROM bank.accounts ORDER BY id")
	if err != nil {
		return led, err
	}
	defer rows.Close()
	var wrong []string
	n := 0
	for rows.Next() {
		var id int
		var bal int64
		if err := rows.Scan(&id, &bal); err != nil {
			return led, err
		}
		n++
		led.Total += bal
		if bal != want[id] {
			wrong = append(wrong, fmt.Sprintf("account %d holds %d, its transfers say %d", id, bal, want[id]))
		}
	}
	if err := rows.Err(); err != nil {
		return led, err
	}
	switch {
	case n != MariaDBAccounts:
		return led, fmt.Errorf("ledger: got %d accounts, want %d", n, MariaDBAccounts)
	case led.Total != MariaDBTotal:
		return led, fmt.Errorf("ledger: got total %d, want %d", led.Total, MariaDBTotal)
	case len(wrong) > 0:
		return led, fmt.Errorf("ledger: %d accounts disagree with the transfers: %s", len(wrong), strings.Join(wrong[:min(len(wrong), 5)], "; "))
	}
	return led, nil
}
