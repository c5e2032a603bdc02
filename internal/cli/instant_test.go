package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// runLimit bounds each wait for an umbra run to report: it reports what
// it does, and this is only how long it may take at worst.
const runLimit = 3 * time.Minute

// runProc is an umbra run in the background, its --json events read as
// they come.
type runProc struct {
	cmd    *exec.Cmd
	events chan map[string]any
	mu     sync.Mutex
	stderr strings.Builder
	paused chan struct{}
	exited chan struct{}
	err    error
}

// startRun starts umbra --json run args; with pause, held at that point
// (UMBRA_TEST_PAUSE_AT) until resume.
func startRun(t *testing.T, state string, env []string, pause string, args ...string) *runProc {
	t.Helper()
	if pause != "" {
		env = append(env, pauseAtEnv+"="+pause)
	}
	p := &runProc{cmd: umbraCmd(t, state, env, append([]string{"--json", "run"}, args...)...),
		events: make(chan map[string]any, 16), paused: make(chan struct{}), exited: make(chan struct{})}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				p.events <- ev
			}
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		once := sync.OnceFunc(func() { close(p.paused) })
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "paused at "+pause) {
				once()
			}
		}
	}()
	go func() { wg.Wait(); p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(runLimit):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *runProc) errText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// await returns the next event, which must be of kind.
func (p *runProc) await(t *testing.T, kind string) map[string]any {
	t.Helper()
	select {
	case ev := <-p.events:
		if ev["event"] != kind {
			t.Fatalf("umbra run: event %v, want %s\n%s", ev, kind, p.errText())
		}
		return ev
	case <-p.exited:
		select {
		case ev := <-p.events:
			if ev["event"] == kind {
				return ev
			}
		default:
		}
		t.Fatalf("umbra run ended (%v) before %s:\n%s", p.err, kind, p.errText())
	case <-time.After(runLimit):
		p.dump()
		t.Fatalf("umbra run said no %s in %v:\n%s", kind, runLimit, p.errText())
	}
	return nil
}

// dump has a stuck umbra run print its goroutines (SIGQUIT) for the
// failure's message.
func (p *runProc) dump() {
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

// awaitPause waits until umbra run holds at its pause point.
func (p *runProc) awaitPause(t *testing.T) {
	t.Helper()
	select {
	case <-p.paused:
	case <-p.exited:
		t.Fatalf("umbra run ended (%v) before its pause:\n%s", p.err, p.errText())
	case <-time.After(runLimit):
		t.Fatalf("umbra run did not pause in %v:\n%s", runLimit, p.errText())
	}
}

// wait waits for umbra run to exit and returns its error.
func (p *runProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(runLimit):
		t.Fatalf("umbra run did not exit in %v:\n%s", runLimit, p.errText())
	}
	return nil
}

// runDirs are a test's places for umbra run: its work directory and its
// socket directory, reachable by the servers' users.
func runDirs(t *testing.T) (work, sockets string) {
	t.Helper()
	base := t.TempDir()
	testenv.Traversable(t, filepath.Join(base, "x"))
	return filepath.Join(base, "work"), filepath.Join(base, "sock")
}

// assertGone checks that nothing of an instance is left: no mount under
// work, no directory.
func assertGone(t *testing.T, work string) {
	t.Helper()
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mountinfo), work) {
		t.Errorf("a mount is left under %s", work)
	}
	if _, err := os.Stat(filepath.Join(work, "upper")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the instance's writes are left in %s: %v", work, err)
	}
}

// treeStamps lists each file of dir with its size and modification time.
func treeStamps(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(p, "/locks/") || fi.IsDir() {
			return nil
		}
		out[p] = fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRunPostgres: a backup taken under pgbench starts straight from the
// repository; the copy answers on its socket and on TCP with pgbench's
// invariant intact and every transaction committed before the backup
// began; writes to it succeed and land in the overlay only (production
// and the repository unchanged, the repository's check clean); umbra run
// --stop ends it and leaves nothing behind. Then --migrate: writes made
// to the instant copy, before and after its data was copied, are all on
// the real data directory it runs on at the end, on the same port.
func TestRunPostgres(t *testing.T) {
	data := filepath.Join(testenv.Btrfs(t).Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	load := pg.StartPgbench(t, 2)
	committed := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	mustAppBackup(t, state, env, "--writer", pg.Spec("main"))
	load.Stop()
	repoBefore := treeStamps(t, repo.loc)

	work, sockets := runDirs(t)
	port := testenv.FreePort(t)
	p := startRun(t, state, env, "", "latest", "--writer", "postgres:main", "--port", fmt.Sprint(port), "--datadir", work, "--socket-dir", sockets)
	ready := p.await(t, "ready")
	t.Logf("ready after %.0f ms: %v", ready["ready_ms"], ready["connect"])
	inst := &testenv.Postgres{SocketDir: sockets, Port: port, DataDir: fmt.Sprint(ready["data_dir"])}
	if n := inst.PgbenchInvariant(t); n < committed {
		t.Errorf("the copy holds %d pgbench transactions; %d had committed before the backup began", n, committed)
	}
	inst.Exec(t, "CREATE TABLE instant_writes AS SELECT g AS id FROM generate_series(1, 1000) g")
	inst.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance WHERE aid % 7 = 0")
	if n := inst.QueryInt(t, "SELECT count(*) FROM instant_writes"); n != 1000 {
		t.Errorf("written to the copy: %d rows, want 1000", n)
	}
	tcp := exec.Command(filepath.Join(pg.Bin, "psql"), "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres", "-Atc", "SELECT count(*) FROM instant_writes", "postgres")
	if out, err := tcp.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1000" {
		t.Errorf("the copy over TCP: %v: %s", err, out)
	}
	if pg.QueryInt(t, "SELECT count(*) FROM pg_class WHERE relname = 'instant_writes'") != 0 {
		t.Error("a write to the copy reached production")
	}
	if entries, _ := os.ReadDir(filepath.Join(work, "upper")); len(entries) == 0 {
		t.Error("the copy's writes are not in the overlay's upper directory")
	}
	list := mustUmbra(t, state, "run", "--list")
	if !strings.Contains(list.stdout, "postgres:main of backup") {
		t.Errorf("umbra run --list: %s", list.stdout)
	}
	mustUmbra(t, state, "run", "--stop", "--writer", "postgres:main")
	if err := p.wait(t); err != nil {
		t.Errorf("umbra run after --stop: %v\n%s", err, p.errText())
	}
	assertGone(t, work)
	if after := treeStamps(t, repo.loc); fmt.Sprint(after) != fmt.Sprint(repoBefore) {
		t.Error("the repository's files changed while the copy ran on it")
	}
	if res := umbraRun(t, state, env, "check", "--read-data"); res.code != 0 {
		t.Errorf("check after umbra run: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}

	// --migrate, with writes before and after the copy was made.
	dst := filepath.Join(t.TempDir(), "migrated")
	testenv.Traversable(t, dst)
	p = startRun(t, state, env, "migrate-switch", "latest", "--writer", "postgres:main", "--port", fmt.Sprint(port), "--datadir", work, "--socket-dir", sockets, "--migrate", dst)
	ready = p.await(t, "ready")
	inst = &testenv.Postgres{SocketDir: sockets, Port: port, DataDir: fmt.Sprint(ready["data_dir"])}
	inst.Exec(t, "CREATE TABLE during (id int PRIMARY KEY, at text)")
	inst.Exec(t, "INSERT INTO during SELECT g, 'serving' FROM generate_series(1, 500) g")
	p.awaitPause(t)
	inst.Exec(t, "INSERT INTO during SELECT g, 'copied' FROM generate_series(501, 1000) g")
	sumBefore := inst.QueryInt(t, "SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 100")
	inst.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100")
	inst.Exec(t, "UPDATE pgbench_branches SET bbalance = bbalance + 100 WHERE bid = 1")
	inst.Exec(t, "UPDATE pgbench_tellers SET tbalance = tbalance + 100 WHERE tid = 1")
	inst.Exec(t, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 100, now())")
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	migrated := p.await(t, "migrated")
	if err := p.wait(t); err != nil {
		t.Fatalf("umbra run --migrate: %v\n%s", err, p.errText())
	}
	t.Logf("migrated: stopped %.0f ms (shutdown %.0f, sync %.0f of %v bytes, start %.0f)", migrated["stop_ms"], migrated["shutdown_ms"], migrated["sync_ms"], migrated["synced_bytes"], migrated["start_ms"])
	moved := &testenv.Postgres{SocketDir: sockets, Port: port, DataDir: dst}
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(pg.Bin, "pg_ctl"), "stop", "-D", dst, "-m", "immediate")
		uid, gid := pg.Owner()
		testenv.AsUser(cmd, uid, gid)
		cmd.Dir = "/"
		_ = cmd.Run()
	})
	var dir string
	if err := moved.Conn(t).QueryRow(t.Context(), "SHOW data_directory").Scan(&dir); err != nil || dir != dst {
		t.Errorf("after --migrate the server runs on %q (%v), want %s", dir, err, dst)
	}
	if n := moved.QueryInt(t, "SELECT count(*) FROM during"); n != 1000 {
		t.Errorf("after --migrate: %d of the 1000 rows written during the instant run", n)
	}
	if n := moved.QueryInt(t, "SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 100"); n != sumBefore+100 {
		t.Errorf("after --migrate the first 100 accounts sum to %d, want %d: the updates made after the copy are missing", n, sumBefore+100)
	}
	moved.PgbenchInvariant(t)
	assertGone(t, work)
}

// TestRunMariaDB: a backup taken under the transfer load starts straight
// from the repository; the copy's ledger balances and holds every transfer
// acknowledged before the backup began; writes to it succeed and stay out
// of production. An umbra run killed with -9 leaves the server and the
// mount behind: umbra run --stop kills and cleans them. --migrate then
// moves it, with the writes made meanwhile, to a real data directory.
func TestRunMariaDB(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.Btrfs(t).Subvolume(t, "db"))
	load := m.StartTransferLoad(t, 4)
	acked := load.Acks()
	repo := newRepoDir(t)
	state := t.TempDir()
	env := append(repo.environ(), "MYSQL_PWD="+m.RootPassword)
	mustAppBackup(t, state, env, "--writer", m.Spec("main"))
	load.Stop()

	work, sockets := runDirs(t)
	port := testenv.FreePort(t)
	args := []string{"latest", "--writer", "mariadb:main", "--port", fmt.Sprint(port), "--datadir", work, "--socket-dir", sockets}
	p := startRun(t, state, env, "", args...)
	ready := p.await(t, "ready")
	t.Logf("ready after %.0f ms: %v", ready["ready_ms"], ready["connect"])
	inst := &testenv.MariaDB{Socket: fmt.Sprint(ready["socket"]), RootPassword: m.RootPassword}
	led, err := inst.Ledger(t)
	if err != nil {
		t.Fatalf("the copy's ledger: %v", err)
	}
	for _, a := range acked {
		if !led.Transfers[a.ID] {
			t.Fatalf("transfer %d, acknowledged before the backup began, is not in the copy", a.ID)
		}
	}
	inst.Exec(t, "CREATE DATABASE instant", "CREATE TABLE instant.t (id INT PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO instant.t VALUES (1), (2), (3)")
	var n int
	if err := m.DB(t).QueryRowContext(t.Context(), "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'instant'").Scan(&n); err != nil || n != 0 {
		t.Errorf("a write to the copy reached production (%d, %v)", n, err)
	}

	// kill -9: the server runs on with its mount gone; --stop cleans up.
	pid, err := os.ReadFile(filepath.Join(sockets, "mysqld.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.wait(t)
	res := umbraRun(t, state, env, "run", "--stop", "--writer", "mariadb:main")
	if res.code != 0 || !strings.Contains(res.stdout, "Cleaned up") {
		t.Errorf("run --stop after kill -9: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	if serverPID, _ := strconv.Atoi(strings.TrimSpace(string(pid))); serverPID == 0 || process.Alive(serverPID) {
		t.Errorf("the copy's server (pid %q) runs on after the clean-up", pid)
	}
	assertGone(t, work)

	// --migrate, with writes before and after the copy was made.
	dst := filepath.Join(t.TempDir(), "migrated")
	testenv.Traversable(t, dst)
	p = startRun(t, state, env, "migrate-switch", append(args, "--migrate", dst)...)
	ready = p.await(t, "ready")
	inst = &testenv.MariaDB{Socket: fmt.Sprint(ready["socket"]), RootPassword: m.RootPassword}
	inst.Exec(t, "CREATE DATABASE during", "CREATE TABLE during.t (id INT PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO during.t VALUES (1), (2)")
	p.awaitPause(t)
	inst.Exec(t, "INSERT INTO during.t VALUES (3), (4)", "UPDATE bank.accounts SET balance = balance - 5 WHERE id = 1",
		"UPDATE bank.accounts SET balance = balance + 5 WHERE id = 2", "INSERT INTO bank.transfers VALUES (999999999, 1, 2, 5)")
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	migrated := p.await(t, "migrated")
	if err := p.wait(t); err != nil {
		t.Fatalf("umbra run --migrate: %v\n%s", err, p.errText())
	}
	t.Logf("migrated: stopped %.0f ms (shutdown %.0f, sync %.0f, start %.0f)", migrated["stop_ms"], migrated["shutdown_ms"], migrated["sync_ms"], migrated["start_ms"])
	t.Cleanup(func() {
		if pid, err := os.ReadFile(filepath.Join(sockets, "mysqld.pid")); err == nil {
			if n, _ := strconv.Atoi(strings.TrimSpace(string(pid))); n > 0 {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	moved := &testenv.MariaDB{Socket: filepath.Join(sockets, "mysqld.sock"), RootPassword: m.RootPassword}
	var dir string
	if err := moved.DB(t).QueryRowContext(t.Context(), "SELECT @@datadir").Scan(&dir); err != nil || filepath.Clean(dir) != dst {
		t.Errorf("after --migrate the server runs on %q (%v), want %s", dir, err, dst)
	}
	if err := moved.DB(t).QueryRowContext(t.Context(), "SELECT COUNT(*) FROM during.t").Scan(&n); err != nil || n != 4 {
		t.Errorf("after --migrate: %d of the 4 rows written during the instant run (%v)", n, err)
	}
	led, err = moved.Ledger(t)
	if err != nil || !led.Transfers[999999999] {
		t.Errorf("after --migrate the ledger: %v; the transfer made after the copy there: %v", err, led.Transfers[999999999])
	}
	assertGone(t, work)
}

// TestRestoreTablePostgres: a table dropped after the backup comes back
// into the live server with its rows, indexes and constraints while
// pgbench keeps committing there; again it is refused (the table exists),
// restored beside under another name with only the rows --where selects,
// and replaced with --force.
func TestRestoreTablePostgres(t *testing.T) {
	data := filepath.Join(testenv.Btrfs(t).Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	pg.Exec(t, `CREATE TABLE customers (id int PRIMARY KEY);
		INSERT INTO customers SELECT generate_series(1, 10);
		CREATE TABLE orders (id serial PRIMARY KEY, customer int NOT NULL REFERENCES customers, amount int CHECK (amount > 0), note text);
		CREATE INDEX orders_customer ON orders (customer);
		INSERT INTO orders (customer, amount, note) SELECT 1 + g % 10, g, md5(g::text) FROM generate_series(1, 3000) g`)
	sum := func(pg *testenv.Postgres, table string) int64 {
		return pg.QueryInt(t, fmt.Sprintf("SELECT coalesce(sum(hashtext(id || note)), 0) FROM %s", table))
	}
	want := sum(pg, "orders")
	load := pg.StartPgbench(t, 2)
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	mustAppBackup(t, state, env, "--writer", pg.Spec("main"))
	pg.Exec(t, "DROP TABLE orders")
	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")

	restoreTable := func(args ...string) result {
		return umbraRun(t, state, env, append([]string{"restore", "latest", "--writer", "postgres:main", "--json"}, args...)...)
	}
	res := restoreTable("--table", "public.orders")
	if res.code != 0 {
		t.Fatalf("restore --table: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM orders"); n != 3000 || sum(pg, "orders") != want {
		t.Errorf("restored orders: %d rows, checksum %d; want 3000 rows, %d", n, sum(pg, "orders"), want)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'"); n != 2 {
		t.Errorf("restored orders has %d indexes, want 2 (its key and orders_customer)", n)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype IN ('p', 'f', 'c')"); n != 3 {
		t.Errorf("restored orders has %d of its 3 constraints", n)
	}
	conn := pg.Conn(t)
	if _, err := conn.Exec(t.Context(), "INSERT INTO orders (customer, amount) VALUES (99, 1)"); err == nil {
		t.Error("the restored foreign key does not hold: a row naming a missing customer was accepted")
	}
	if after := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history"); after <= before {
		t.Errorf("pgbench committed nothing while the table was restored (%d → %d)", before, after)
	}

	res = restoreTable("--table", "public.orders")
	if res.code != 2 || !strings.Contains(res.stderr, "--force") {
		t.Errorf("restore over an existing table: exit %d: %s; want 2 naming --force", res.code, res.stderr)
	}
	res = restoreTable("--table", "public.orders", "--into", "public.orders_then", "--where", "amount <= 100")
	if res.code != 0 {
		t.Fatalf("restore --into --where: exit %d: %s", res.code, res.stderr)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM orders_then"); n != 100 {
		t.Errorf("--where amount <= 100 restored %d rows, want 100", n)
	}
	pg.Exec(t, "DELETE FROM orders WHERE id > 10")
	res = restoreTable("--table", "public.orders", "--force")
	if res.code != 0 {
		t.Fatalf("restore --force: exit %d: %s", res.code, res.stderr)
	}
	if n := pg.QueryInt(t, "SELECT count(*) FROM orders"); n != 3000 {
		t.Errorf("after --force orders holds %d rows, want 3000", n)
	}
	load.Stop()
	pg.PgbenchInvariant(t)
}

// TestRestoreTableMariaDB: a table dropped after the backup comes back into
// the live server with its rows, its indexes and its foreign key while the
// transfer load commits there; refused over itself; beside it under
// another name with the rows --where selects; replaced with --force.
func TestRestoreTableMariaDB(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.Btrfs(t).Subvolume(t, "db"))
	m.Exec(t, "CREATE DATABASE shop",
		"CREATE TABLE shop.customers (id INT PRIMARY KEY) ENGINE=InnoDB",
		"INSERT INTO shop.customers VALUES (1), (2), (3)",
		"CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, customer INT NOT NULL, amount INT, KEY by_amount (amount), FOREIGN KEY (customer) REFERENCES shop.customers (id)) ENGINE=InnoDB",
		"INSERT INTO shop.orders (customer, amount) SELECT 1 + seq % 3, seq FROM shop.seq_1_to_2000")
	load := m.StartTransferLoad(t, 2)
	repo := newRepoDir(t)
	state := t.TempDir()
	env := append(repo.environ(), "MYSQL_PWD="+m.RootPassword)
	mustAppBackup(t, state, env, "--writer", m.Spec("main"))
	m.Exec(t, "DROP TABLE shop.orders")
	before := len(load.Acks())

	restoreTable := func(args ...string) result {
		return umbraRun(t, state, env, append([]string{"restore", "latest", "--writer", "mariadb:main"}, args...)...)
	}
	count := func(q string) int {
		var n int
		if err := m.DB(t).QueryRowContext(t.Context(), q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if res := restoreTable("--table", "shop.orders"); res.code != 0 {
		t.Fatalf("restore --table: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	if n := count("SELECT COUNT(*) FROM shop.orders"); n != 2000 {
		t.Errorf("restored shop.orders holds %d rows, want 2000", n)
	}
	if n := count("SELECT COUNT(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'shop' AND TABLE_NAME = 'orders'"); n != 3 {
		t.Errorf("restored shop.orders has %d indexes, want 3 (PRIMARY, by_amount, the foreign key's)", n)
	}
	if _, err := m.DB(t).ExecContext(t.Context(), "INSERT INTO shop.orders (customer, amount) VALUES (99, 1)"); err == nil {
		t.Error("the restored foreign key does not hold")
	}
	if err := load.WaitProgress(time.Minute); err != nil || len(load.Acks()) <= before {
		t.Errorf("the live server stopped committing: %v", err)
	}
	if res := restoreTable("--table", "shop.orders"); res.code != 2 || !strings.Contains(res.stderr, "--force") {
		t.Errorf("restore over an existing table: exit %d: %s; want 2 naming --force", res.code, res.stderr)
	}
	if res := restoreTable("--table", "shop.orders", "--into", "archive.orders_then", "--where", "amount <= 100"); res.code != 0 {
		t.Fatalf("restore --into --where: exit %d: %s", res.code, res.stderr)
	}
	if n := count("SELECT COUNT(*) FROM archive.orders_then"); n != 100 {
		t.Errorf("--where amount <= 100 restored %d rows, want 100", n)
	}
	m.Exec(t, "DELETE FROM shop.orders WHERE id > 10")
	if res := restoreTable("--table", "shop.orders", "--force"); res.code != 0 {
		t.Fatalf("restore --force: exit %d: %s", res.code, res.stderr)
	}
	if n := count("SELECT COUNT(*) FROM shop.orders"); n != 2000 {
		t.Errorf("after --force shop.orders holds %d rows, want 2000", n)
	}
	load.Stop()
	if _, err := m.Ledger(t); err != nil {
		t.Error(err)
	}
}

// TestRunAndRestoreTableSQLite: umbra run makes the backup's database
// usable by path, its writes kept from the repository and from the live
// file; a table dropped after the backup comes back into the live
// database with its rows, index and trigger; refused over itself; beside
// it under another name with the rows --where selects (its index renamed);
// replaced with --force.
func TestRunAndRestoreTableSQLite(t *testing.T) {
	db := filepath.Join(testenv.Btrfs(t).Subvolume(t, "app"), "app.db")
	sqlite3(t, db, "PRAGMA journal_mode=WAL",
		"CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount INT CHECK (amount > 0))",
		"CREATE INDEX orders_customer ON orders (customer)",
		"CREATE TABLE audit (n INT)", "INSERT INTO audit VALUES (0)",
		"CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN UPDATE audit SET n = n + 1; END",
		"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 500) INSERT INTO orders (customer, amount) SELECT 'c' || (i % 7), i FROM g")
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	mustAppBackup(t, state, env, "--writer", "sqlite:path="+db)
	query := func(path, q string) string {
		out, err := exec.Command("sqlite3", path, q).CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3 %s %q: %v: %s", path, q, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	work, sockets := runDirs(t)
	p := startRun(t, state, env, "", "latest", "--writer", "sqlite:app", "--datadir", work, "--socket-dir", sockets)
	ready := p.await(t, "ready")
	copyPath := fmt.Sprint(ready["connect"])
	if got := query(copyPath, "INSERT INTO orders (customer, amount) VALUES ('new', 1); SELECT count(*) FROM orders"); got != "501" {
		t.Errorf("the backup's database through umbra run: %s rows after an insert, want 501", got)
	}
	if got := query(db, "SELECT count(*) FROM orders"); got != "500" {
		t.Errorf("a write to the copy reached the live database: %s rows", got)
	}
	mustUmbra(t, state, "run", "--stop")
	if err := p.wait(t); err != nil {
		t.Errorf("umbra run after --stop: %v", err)
	}
	assertGone(t, work)

	sqlite3(t, db, "DROP TABLE orders")
	restoreTable := func(args ...string) result {
		return umbraRun(t, state, env, append([]string{"restore", "latest", "--writer", "sqlite:app"}, args...)...)
	}
	if res := restoreTable("--table", "orders"); res.code != 0 {
		t.Fatalf("restore --table: exit %d: %s%s", res.code, res.stdout, res.stderr)
	}
	if got := query(db, "SELECT count(*), sum(amount) FROM orders"); got != "500|125250" {
		t.Errorf("restored orders: %s, want 500|125250", got)
	}
	if got := query(db, "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master WHERE tbl_name = 'orders' AND type IN ('index', 'trigger') ORDER BY name)"); got != "orders_audit,orders_customer" {
		t.Errorf("restored orders' index and trigger: %q", got)
	}
	if got := query(db, "INSERT INTO orders (customer, amount) VALUES ('x', 1); SELECT n FROM audit"); got != "501" {
		t.Errorf("the restored trigger: audit %s, want 501", got)
	}
	if res := restoreTable("--table", "orders"); res.code != 2 || !strings.Contains(res.stderr, "--force") {
		t.Errorf("restore over an existing table: exit %d: %s; want 2 naming --force", res.code, res.stderr)
	}
	if res := restoreTable("--table", "orders", "--into", "orders_then", "--where", "amount <= 10"); res.code != 0 {
		t.Fatalf("restore --into --where: exit %d: %s", res.code, res.stderr)
	}
	if got := query(db, "SELECT count(*) FROM orders_then; SELECT count(*) FROM sqlite_master WHERE name = 'orders_then_orders_customer'"); got != "10\n1" {
		t.Errorf("--into orders_then --where amount <= 10: %q, want 10 rows and its index", got)
	}
	if res := restoreTable("--table", "orders", "--force"); res.code != 0 {
		t.Fatalf("restore --force: exit %d: %s", res.code, res.stderr)
	}
	if got := query(db, "SELECT count(*) FROM orders; PRAGMA integrity_check"); got != "500\nok" {
		t.Errorf("after --force: %q", got)
	}
}

// TestRunRedis: a backup of Redis (RDB, under the counter load) serves
// from the repository with every increment acknowledged before the backup
// began; a write to it stays out of production; --migrate moves it, with
// the writes made before and after the copy, to a real directory.
func TestRunRedis(t *testing.T) {
	r := testenv.StartRedis(t, testenv.Btrfs(t).Subvolume(t, "redis"))
	load := testenv.StartRedisLoad(t, r, 20)
	acked := load.Acked()
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	mustAppBackup(t, state, env, "--writer", "redis:name=cache,addr="+r.Addr)
	if err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	work, sockets := runDirs(t)
	port := testenv.FreePort(t)
	dst := filepath.Join(t.TempDir(), "migrated")
	testenv.Traversable(t, dst)
	p := startRun(t, state, env, "migrate-switch", "latest", "--writer", "redis:cache", "--port", fmt.Sprint(port),
		"--datadir", work, "--socket-dir", sockets, "--migrate", dst)
	ready := p.await(t, "ready")
	inst := &testenv.Redis{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	for i, v := range inst.Values(t, load.Keys()) {
		if v < acked[i] {
			t.Errorf("%s is %d in the copy; %d was acknowledged before the backup began", load.Keys()[i], v, acked[i])
		}
	}
	inst.Do(t, "SET", "during", "serving")
	if got := r.Client(t).Exists(t.Context(), "during").Val(); got != 0 {
		t.Error("a write to the copy reached production")
	}
	p.awaitPause(t)
	inst.Do(t, "SET", "after", "copied")
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	p.await(t, "migrated")
	if err := p.wait(t); err != nil {
		t.Fatalf("umbra run --migrate: %v\n%s", err, p.errText())
	}
	t.Cleanup(func() { _ = inst.Client(t).Do(context.Background(), "SHUTDOWN", "NOSAVE").Err() })
	var dir string
	if res, err := inst.Client(t).ConfigGet(t.Context(), "dir").Result(); err == nil {
		dir = res["dir"]
	}
	if dir != dst {
		t.Errorf("after --migrate Redis works in %q, want %s (ready: %v)", dir, dst, ready["data_dir"])
	}
	for k, want := range map[string]string{"during": "serving", "after": "copied"} {
		if got := inst.Client(t).Get(t.Context(), k).Val(); got != want {
			t.Errorf("after --migrate %s = %q, want %q", k, got, want)
		}
	}
	assertGone(t, work)
}
