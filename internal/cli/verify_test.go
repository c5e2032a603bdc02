package cli

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// verifyJSON is the part of verify --json the tests read.
type verifyJSON struct {
	OK      bool `json:"ok"`
	Writers []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Checks []struct {
			Name   string `json:"name"`
			OK     bool   `json:"ok"`
			Detail string `json:"detail"`
		} `json:"checks"`
	} `json:"writers"`
}

// runVerify runs verify --json with a scratch directory of the test's.
func runVerify(t *testing.T, state string, env []string, args ...string) (verifyJSON, result) {
	t.Helper()
	res := umbraRun(t, state, env, append([]string{"--json", "verify", "--scratch", t.TempDir()}, args...)...)
	var v verifyJSON
	if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
		t.Fatalf("verify --json: exit %d: %v\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	return v, res
}

// TestVerifySQLite: a backup of SQLite under load verifies, the record shows
// each check and umbra backups says verified, and the live database is not
// touched; a backup of a database whose foreign keys the application broke
// (enforcement off, as SQLite's default) is stored, and verify fails naming
// the table, exit 5, recorded as failed.
func TestVerifySQLite(t *testing.T) {
	db := filepath.Join(testenv.Btrfs(t).Subvolume(t, "app"), "app.db")
	load := testenv.StartSQLiteLoad(t, db)
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	spec := "sqlite:path=" + db
	// A copy backup: the WAL's truncation, which a writer committing
	// without pause can keep busy past its budget (a warning, exit 3), is
	// not what this test is about.
	mustAppBackup(t, state, env, "--writer", spec, "--no-truncate", "sqlite:app")
	before, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	v, res := runVerify(t, state, env)
	if res.code != 0 || !v.OK || len(v.Writers) != 1 {
		t.Fatalf("verify of a backup under load: exit %d, %+v\n%s", res.code, v, res.stderr)
	}
	var names []string
	for _, c := range v.Writers[0].Checks {
		names = append(names, c.Name)
		if !c.OK {
			t.Errorf("check %s failed: %s", c.Name, c.Detail)
		}
	}
	if strings.Join(names, " ") != "restore integrity_check foreign_key_check" {
		t.Errorf("checks run: %v", names)
	}
	if after, err := os.Stat(db); err != nil || !os.SameFile(before, after) {
		t.Errorf("the live database was replaced during verification (%v)", err)
	}
	if err := load.WaitProgress(10 * time.Second); err != nil {
		t.Errorf("the application stopped committing during verification: %v", err)
	}
	load.Stop()
	var list []struct {
		Verification *struct {
			OK bool `json:"ok"`
		} `json:"verification"`
	}
	if err := json.Unmarshal([]byte(umbraRun(t, state, env, "--json", "backups").stdout), &list); err != nil || len(list) != 1 || list[0].Verification == nil || !list[0].Verification.OK {
		t.Errorf("backups --json after a passing verification: %+v (%v), want it verified", list, err)
	}

	// Damage the application did not notice.
	broken := filepath.Join(t.TempDir(), "orders.db")
	sqlite3(t, broken, "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
		"CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers(id))",
		"INSERT INTO customers VALUES (1)", "INSERT INTO orders VALUES (1, 1), (2, 7)")
	mustAppBackup(t, state, env, "--writer", "sqlite:path="+broken)
	v, res = runVerify(t, state, env)
	if res.code != 5 || v.OK || !strings.Contains(res.stdout, "orders row 2 refers to a missing row of customers") {
		t.Errorf("verify of a database with a broken foreign key: exit %d, ok %v\n%s%s; want exit 5 naming the table", res.code, v.OK, res.stdout, res.stderr)
	}
	show := umbraRun(t, state, env, "show", "latest").stdout
	if !strings.Contains(show, "FAILED verification") {
		t.Errorf("show latest does not give the failed verification:\n%s", show)
	}
}

// sqlite3 runs statements on the database at path with the sqlite3 shell.
func sqlite3(t *testing.T, path string, stmts ...string) {
	t.Helper()
	testenv.NeedCommand(t, "sqlite3")
	out, err := exec.Command("sqlite3", path, strings.Join(stmts, ";")+";").CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 %s: %v\n%s", path, err, out)
	}
}

// TestVerifyPostgres: a backup of PostgreSQL under pgbench verifies
// (recovery to the stop LSN, pg_amcheck on every database) without
// production seeing anything: no socket in its directory, the same
// postmaster. A heap page damaged on disk while the server was stopped,
// which the server never read again, is stored by the next backup, and
// verify fails naming the relation.
func TestVerifyPostgres(t *testing.T) {
	data := filepath.Join(testenv.Btrfs(t).Subvolume(t, "pg"), "data")
	pg := testenv.InitPostgres(t, data, testenv.PostgresOptions{})
	pg.Exec(t, "CREATE TABLE precious AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g")
	pg.Exec(t, "CREATE INDEX ON precious (id)")
	load := pg.StartPgbench(t, 2)
	repo := newRepoDir(t)
	state := t.TempDir()
	env := repo.environ()
	mustAppBackup(t, state, env, "--writer", pg.Spec("main"))
	sockets := func() []string {
		entries, _ := os.ReadDir(pg.SocketDir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	pidBefore, _ := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	socketsBefore := sockets()
	v, res := runVerify(t, state, env)
	if res.code != 0 || !v.OK || len(v.Writers) != 1 {
		t.Fatalf("verify under pgbench: exit %d, %+v\n%s%s", res.code, v, res.stdout, res.stderr)
	}
	var names []string
	for _, c := range v.Writers[0].Checks {
		names = append(names, c.Name)
	}
	if strings.Join(names, ", ") != "restore, recovery, pg_amcheck --heapallindexed" {
		t.Errorf("checks run: %v", names)
	}
	pidAfter, _ := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if string(pidBefore) != string(pidAfter) || strings.Join(sockets(), " ") != strings.Join(socketsBefore, " ") {
		t.Errorf("production saw the verification: postmaster.pid %q → %q, sockets %v → %v", pidBefore, pidAfter, socketsBefore, sockets())
	}
	load.Stop()
	pg.PgbenchInvariant(t)

	// Damage: the line pointers of the table's first heap page, overwritten
	// while the server is down (each now a used item at offset 32767,
	// length 100: bits 0-14 offset, 15-16 flags, 17-31 length); it starts
	// without reading the page.
	var rel string
	if err := pg.Conn(t).QueryRow(t.Context(), "SELECT pg_relation_filepath('precious')").Scan(&rel); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, "CHECKPOINT")
	pg.Stop(t)
	f, err := os.OpenFile(filepath.Join(data, rel), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("\xff\xff\xc8\x00", 16)), 24); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pg.Start(t)
	mustAppBackup(t, state, env, "--writer", pg.Spec("main"))
	v, res = runVerify(t, state, env)
	if res.code != 5 || v.OK || !strings.Contains(res.stdout, `heap table \"postgres.public.precious\", block 0`) {
		t.Errorf("verify of a backup with a damaged heap page: exit %d, ok %v\n%s%s; want exit 5 naming the relation", res.code, v.OK, res.stdout, res.stderr)
	}
}

// TestVerifyRedis: backups of Redis under load, RDB on btrfs and AOF on
// ext4, verify: the files pass redis-check-rdb / redis-check-aof and a
// sandbox Redis loads them; production keeps answering and saves nothing
// because of it.
func TestVerifyRedis(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  func(t *testing.T) *testenv.Redis
		checks string
	}{
		{"btrfs/rdb", func(t *testing.T) *testenv.Redis {
			return testenv.StartRedis(t, testenv.Btrfs(t).Subvolume(t, "redis"))
		}, "restore, redis-check-rdb, load"},
		{"ext4/aof", func(t *testing.T) *testenv.Redis {
			return testenv.StartRedis(t, filepath.Join(testenv.Ext4(t).Mount, "redis"), testenv.RedisAppendOnly(true))
		}, "restore, redis-check-aof, load"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.start(t)
			load := testenv.StartRedisLoad(t, r, 20)
			repo := newRepoDir(t)
			state := t.TempDir()
			mustAppBackup(t, state, repo.environ(), "--writer", "redis:addr="+r.Addr)
			saved := r.Do(t, "LASTSAVE")
			v, res := runVerify(t, state, repo.environ())
			if res.code != 0 || !v.OK || len(v.Writers) != 1 {
				t.Fatalf("verify: exit %d, %+v\n%s%s", res.code, v, res.stdout, res.stderr)
			}
			var names []string
			for _, c := range v.Writers[0].Checks {
				names = append(names, c.Name)
			}
			if got := strings.Join(names, ", "); got != tc.checks {
				t.Errorf("checks run: %s, want %s", got, tc.checks)
			}
			if err := load.Stop(); err != nil {
				t.Errorf("the load failed during verification: %v", err)
			}
			if got := r.Do(t, "LASTSAVE"); got != saved {
				t.Errorf("production saved during verification: LASTSAVE %v → %v", saved, got)
			}
		})
	}
}

// TestVerifyMariaDB: a backup of MariaDB under load verifies (InnoDB
// recovers in a sandbox started with none of production's options, CHECK
// TABLE passes on every table) while production keeps committing.
func TestVerifyMariaDB(t *testing.T) {
	m := testenv.StartMariaDB(t, testenv.Btrfs(t).Subvolume(t, "db"))
	m.Exec(t, "CREATE DATABASE shop", "CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB",
		"CREATE TABLE shop.notes (id INT PRIMARY KEY, v TEXT) ENGINE=Aria", "INSERT INTO shop.notes VALUES (1, 'x')")
	db := m.DB(t)
	stop := make(chan struct{})
	loaded := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				loaded <- nil
				return
			default:
			}
			if _, err := db.ExecContext(t.Context(), "INSERT INTO shop.orders (v) VALUES (REPEAT('x', 100))"); err != nil {
				loaded <- err
				return
			}
		}
	}()
	repo := newRepoDir(t)
	state := t.TempDir()
	env := append(repo.environ(), "MYSQL_PWD="+m.RootPassword)
	mustAppBackup(t, state, env, "--writer", m.Spec("main"))
	v, res := runVerify(t, state, env)
	close(stop)
	if err := <-loaded; err != nil {
		t.Errorf("production stopped committing during the verification: %v", err)
	}
	if res.code != 0 || !v.OK || len(v.Writers) != 1 {
		t.Fatalf("verify: exit %d, %+v\n%s%s", res.code, v, res.stdout, res.stderr)
	}
	var names []string
	for _, c := range v.Writers[0].Checks {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, ", "); got != "restore, recovery, CHECK TABLE" {
		t.Errorf("checks run: %s", got)
	}
	// The test server writes a binary log: the sandbox resolves what
	// InnoDB found prepared with the restored one and ends at the GTID the
	// backup recorded.
	if d := v.Writers[0].Checks[1].Detail; !strings.Contains(d, "ends at the recorded GTID") {
		t.Errorf("recovery: %q, want the GTID compared", d)
	}
}

// TestTruncateAfterVerified: with --truncate-after verified, SQLite's WAL is
// truncated after a backup that passed its verification, and left alone
// after one that failed it (a broken foreign key), which exits 5.
func TestTruncateAfterVerified(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	sqlite3(t, path, "PRAGMA journal_mode=WAL", "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
		"CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers(id))",
		"INSERT INTO customers VALUES (1)", "INSERT INTO orders VALUES (1, 1), (2, 7)")
	// The application keeps the database open, so the WAL stays until a
	// checkpoint truncates it.
	app, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.SetMaxOpenConns(1)
	write := func() {
		t.Helper()
		if _, err := app.ExecContext(t.Context(), "INSERT INTO customers (id) VALUES (NULL)"); err != nil {
			t.Fatal(err)
		}
	}
	walSize := func() int64 {
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	repo := newRepoDir(t)
	state := t.TempDir()
	backup := func() result {
		return umbraRun(t, state, repo.environ(), "backup", "--writer", "sqlite:path="+path, "--truncate-after", "verified")
	}
	write()
	if res := backup(); res.code != 5 || !strings.Contains(res.stderr, "nothing was truncated") {
		t.Fatalf("backup of a database that fails verification: exit %d\n%s%s; want 5, nothing truncated", res.code, res.stdout, res.stderr)
	}
	if walSize() == 0 {
		t.Error("the WAL was truncated after a backup that failed its verification")
	}
	if _, err := app.ExecContext(t.Context(), "DELETE FROM orders WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if res := backup(); res.code != 0 {
		t.Fatalf("backup that passes verification: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if n := walSize(); n != 0 {
		t.Errorf("the WAL holds %d bytes after a backup that passed its verification; want it truncated", n)
	}
}

// TestVerifyUserCheck: a writer's verify= command runs against the sandbox
// (UMBRA_VERIFY_DB names SQLite's restored copy) and its outcome is a
// check of the record: passing, or failing with exit 5.
func TestVerifyUserCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	sqlite3(t, path, "CREATE TABLE t (n INTEGER)", "INSERT INTO t VALUES (1), (2), (3)")
	repo := newRepoDir(t)
	state := t.TempDir()
	for _, tc := range []struct {
		want string
		code int
	}{{"3", 0}, {"4", 5}} {
		check := `sqlite3 "$UMBRA_VERIFY_DB" "select count(*) from t" | grep -qx ` + tc.want
		mustAppBackup(t, state, repo.environ(), "--writer", "sqlite:path="+path+",verify="+check)
		v, res := runVerify(t, state, repo.environ())
		checks := v.Writers[0].Checks
		last := checks[len(checks)-1]
		if res.code != tc.code || last.Name != "verify: "+check || last.OK != (tc.code == 0) {
			t.Errorf("verify with %q: exit %d, last check %+v; want exit %d", check, res.code, last, tc.code)
		}
	}
}

// TestVerifyKilled: umbra verify killed (-9) while PostgreSQL runs in its
// sandbox leaves that server behind; the next verification kills it,
// removes the sandbox, and verifies.
func TestVerifyKilled(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	repo := newRepoDir(t)
	state := t.TempDir()
	mustAppBackup(t, state, repo.environ(), "--writer", pg.Spec("main"))
	scratch := t.TempDir()
	testenv.Traversable(t, filepath.Join(scratch, "x"))
	cmd := umbraCmd(t, state, repo.environ(), "verify", "--scratch", scratch)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Until the sandbox's postmaster is up (what umbra does), within a limit.
	var server []int
	for deadline := time.Now().Add(2 * time.Minute); len(server) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no server started in the sandbox within 2 minutes")
		}
		server = processesIn(scratch, "postgres")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if len(processesIn(scratch, "postgres")) == 0 {
		t.Fatal("the sandbox's server went with umbra; the test needs it left behind")
	}
	if res := umbraRun(t, state, repo.environ(), "verify", "--scratch", scratch); res.code != 0 {
		t.Fatalf("verify after a killed one: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if left := processesIn(scratch, ""); len(left) > 0 {
		t.Errorf("processes still run in the scratch directory: %v", left)
	}
	if entries, _ := os.ReadDir(scratch); len(entries) > 0 {
		t.Errorf("the scratch directory still holds %d entries", len(entries))
	}
}

// processesIn lists the processes (named name, unless empty) whose working
// directory lies in dir.
func processesIn(dir, name string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		if comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm")); name == "" || strings.TrimSpace(string(comm)) == name {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestVerifyDamagedSQLitePage: a page of an SQLite database overwritten on
// disk, which the application has not read since, is stored by the backup;
// verify fails and says the database is damaged (exit 5).
func TestVerifyDamagedSQLitePage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	sqlite3(t, path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "CREATE INDEX t_v ON t (v)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t SELECT i, hex(randomblob(40)) FROM n")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Page 10 (of 4 KiB), past its header: cells of the table or index.
	if _, err := f.WriteAt([]byte(strings.Repeat("\x55", 512)), 9*4096+1024); err != nil {
		t.Fatal(err)
	}
	f.Close()
	repo := newRepoDir(t)
	state := t.TempDir()
	mustAppBackup(t, state, repo.environ(), "--writer", "sqlite:path="+path)
	v, res := runVerify(t, state, repo.environ())
	if res.code != 5 || v.OK || !strings.Contains(res.stdout, "database is damaged") {
		t.Errorf("verify of a damaged page: exit %d, ok %v\n%s%s; want exit 5, the database said damaged", res.code, v.OK, res.stdout, res.stderr)
	}
}

// TestVerifyDamagedRedis: Redis's files damaged on disk after Redis wrote
// them (a flipped stretch of the RDB file; the append-only base cut in half),
// which Redis does not notice because it never reads them back while it runs,
// are stored by a backup that succeeds; verify fails naming the file, exit 5,
// recorded as failed. A script writer's freeze command does the damage: it
// runs after Redis's own save for the backup and before the copy is taken.
func TestVerifyDamagedRedis(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  func(t *testing.T) *testenv.Redis
		damage string // a shell command, $D the server's directory
		named  string
	}{
		{"btrfs/rdb", func(t *testing.T) *testenv.Redis {
			return testenv.StartRedis(t, testenv.Btrfs(t).Subvolume(t, "redis"))
		}, `f=$D/dump.rdb; s=$(stat -c %s $f); head -c 256 /dev/zero | tr '\0' U | dd of=$f bs=1 seek=$((s/2)) conv=notrunc status=none`, "/dump.rdb"},
		{"ext4/aof", func(t *testing.T) *testenv.Redis {
			return testenv.StartRedis(t, filepath.Join(testenv.Ext4(t).Mount, "redis"), testenv.RedisAppendOnly(true))
		}, `for f in $D/appendonlydir/*.base.*; do truncate -s $(($(stat -c %s $f)/2)) $f; done`, "/appendonlydir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.start(t)
			load := testenv.StartRedisLoad(t, r, 4)
			// Enough keys that the file is more than its header.
			for i := range 2000 {
				r.Do(t, "SET", fmt.Sprintf("bulk:%d", i), strings.Repeat("v", 100))
			}
			repo := newRepoDir(t)
			state := t.TempDir()
			damage := "D=" + r.Dir + "; " + tc.damage
			mustAppBackup(t, state, repo.environ(), "--writer", "redis:addr="+r.Addr,
				"--writer", "script:name=rot,freeze="+damage+",thaw=true")
			if err := load.Stop(); err != nil {
				t.Errorf("Redis failed while its file was damaged (it should not notice): %v", err)
			}
			v, res := runVerify(t, state, repo.environ())
			if res.code != 5 || v.OK || !strings.Contains(res.stdout, tc.named+": ") {
				t.Fatalf("verify of a damaged file: exit %d, ok %v\n%s%s; want exit 5 naming %s", res.code, v.OK, res.stdout, res.stderr, tc.named)
			}
			show := umbraRun(t, state, repo.environ(), "backups")
			if !strings.Contains(show.stdout, "FAILED") {
				t.Errorf("backups does not show the verification failed:\n%s", show.stdout)
			}
		})
	}
}
