package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgresStartLimit bounds a private server's start, recovery included.
const postgresStartLimit = 2 * time.Minute

// Postgres is a private PostgreSQL server for one test, run as the postgres
// system user on a Unix socket only (no TCP), with trust authentication.
type Postgres struct {
	Bin       string // directory of initdb, postgres, pg_ctl, pgbench
	DataDir   string
	SocketDir string
	Port      int
	Server    *Server
	uid, gid  int
}

// PostgresOptions shape a new cluster.
type PostgresOptions struct {
	// WALDir puts pg_wal there (initdb -X), such as on another volume.
	WALDir string
	// Settings are extra postgresql.conf lines, such as "archive_mode = on".
	Settings []string
	// CommandLine leaves the port and socket directory out of
	// postgresql.conf: only the server's command line has them (-p, -k),
	// as with pg_ctl -o, containers and init scripts.
	CommandLine bool
}

// PostgresBin finds the newest installed server's bin directory, skipping
// the test when there is none.
func PostgresBin(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	dirs = slices.DeleteFunc(dirs, func(d string) bool {
		_, err := os.Stat(filepath.Join(d, "initdb"))
		return err != nil
	})
	if len(dirs) == 0 {
		t.Skip("needs PostgreSQL (Debian's postgresql package); scripts/test.sh installs it")
	}
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(a) - version(b) })
	return dirs[len(dirs)-1]
}

// InitPostgres makes a new cluster in dataDir (created if missing, and
// given to the postgres user) and starts it. The server is small and fast
// to start; WAL segments are the default 16 MiB.
func InitPostgres(t testing.TB, dataDir string, opts PostgresOptions) *Postgres {
	t.Helper()
	NeedRoot(t)
	pg := &Postgres{Bin: PostgresBin(t), DataDir: dataDir}
	pg.uid, pg.gid = SystemUser(t, "postgres")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	Chown(t, dataDir, pg.uid, pg.gid)
	Traversable(t, dataDir)
	args := []string{"-D", dataDir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"}
	if opts.WALDir != "" {
		if err := os.MkdirAll(opts.WALDir, 0o700); err != nil {
			t.Fatal(err)
		}
		Chown(t, opts.WALDir, pg.uid, pg.gid)
		Traversable(t, opts.WALDir)
		args = append(args, "-X", opts.WALDir)
	}
	pg.run(t, "initdb", args...)
	pg.SocketDir = socketDir(t)
	pg.Port = FreePort(t)
	var conf []string
	if !opts.CommandLine {
		conf = []string{
			fmt.Sprintf("port = %d", pg.Port),
			fmt.Sprintf("unix_socket_directories = '%s'", pg.SocketDir),
		}
	}
	conf = append(conf, []string{
		"listen_addresses = ''",
		"shared_buffers = 16MB",
		"max_wal_size = 64MB",
		"min_wal_size = 32MB",
		"checkpoint_timeout = 5min",
		"log_min_messages = warning",
		"fsync = on",
	}...)
	conf = append(conf, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("\n# umbra test server\n" + strings.Join(conf, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	pg.Start(t)
	return pg
}

// OpenPostgres starts a server on an existing data directory, such as a
// copy of a snapshot (recovery runs first), on a new port and socket.
func OpenPostgres(t testing.TB, dataDir string) *Postgres {
	t.Helper()
	NeedRoot(t)
	pg := &Postgres{Bin: PostgresBin(t), DataDir: dataDir}
	pg.uid, pg.gid = SystemUser(t, "postgres")
	Chown(t, dataDir, pg.uid, pg.gid)
	Traversable(t, dataDir)
	pg.Start(t)
	return pg
}

// Start starts the server, or starts it again on the same port and socket
// directory, and waits until it accepts connections, recovery included.
func (pg *Postgres) Start(t testing.TB) {
	t.Helper()
	if pg.SocketDir == "" {
		pg.SocketDir = socketDir(t)
		pg.Port = FreePort(t)
	}
	cmd := exec.Command(filepath.Join(pg.Bin, "postgres"), "-D", pg.DataDir,
		"-p", strconv.Itoa(pg.Port), "-k", pg.SocketDir)
	AsUser(cmd, pg.uid, pg.gid)
	pg.Server = StartServer(t, "postgres "+pg.DataDir, cmd, postgresStartLimit, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.ConnString("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	pg.Server.StopSignal = syscall.SIGINT // fast shutdown: do not wait for clients
}

func socketDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	Traversable(t, dir)
	return dir
}

// Stop shuts the server down (fast shutdown).
func (pg *Postgres) Stop(t testing.TB) { pg.Server.Stop(t) }

// ConnString is a libpq connection string for database db.
func (pg *Postgres) ConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", pg.SocketDir, pg.Port, db)
}

// Spec is the umbra writer spec for this server.
func (pg *Postgres) Spec(name string) string {
	return fmt.Sprintf("postgres:name=%s,host=%s,port=%d,user=postgres", name, pg.SocketDir, pg.Port)
}

// Conn opens a connection to database postgres, closed by t.Cleanup.
func (pg *Postgres) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.ConnString("postgres"))
	if err != nil {
		t.Fatalf("connect to %s: %v", pg.DataDir, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Exec runs SQL statements, failing the test on error.
func (pg *Postgres) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.ConnString("postgres"))
	if err != nil {
		t.Fatalf("connect to %s: %v", pg.DataDir, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// QueryInt runs a query returning one integer.
func (pg *Postgres) QueryInt(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.ConnString("postgres"))
	if err != nil {
		t.Fatalf("connect to %s: %v", pg.DataDir, err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// Tablespace creates tablespace name at dir (made and given to postgres).
func (pg *Postgres) Tablespace(t testing.TB, name, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	Chown(t, dir, pg.uid, pg.gid)
	Traversable(t, dir)
	pg.Exec(t, fmt.Sprintf("CREATE TABLESPACE %s LOCATION '%s'", name, dir))
}

// Owner is the postgres user's uid and gid.
func (pg *Postgres) Owner() (uid, gid int) { return pg.uid, pg.gid }

func (pg *Postgres) run(t testing.TB, prog string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(pg.Bin, prog), args...)
	AsUser(cmd, pg.uid, pg.gid)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
}

// AssertNoUmbraSession fails the test unless, within 5 s, the server has no
// session of umbra's (so no backup in progress) and no replication slot.
func (pg *Postgres) AssertNoUmbraSession(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		sessions := pg.QueryInt(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'umbra %'")
		slots := pg.QueryInt(t, "SELECT count(*) FROM pg_replication_slots")
		if sessions == 0 && slots == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d umbra sessions (in backup mode) and %d replication slots left on the server", sessions, slots)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PgbenchInvariant checks pgbench's bookkeeping: the sum of account,
// teller and branch balances each equals the sum of the deltas in history,
// all read in one snapshot (transactions may still be committing). It
// returns the number of history rows (committed transactions).
func (pg *Postgres) PgbenchInvariant(t testing.TB) int64 {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.ConnString("postgres"))
	if err != nil {
		t.Fatalf("connect to %s: %v", pg.DataDir, err)
	}
	defer conn.Close(context.Background())
	var hist, accounts, tellers, branches, n int64
	err = conn.QueryRow(t.Context(), `SELECT
		(SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
		(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
		(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
		(SELECT count(*) FROM pgbench_history)`).Scan(&hist, &accounts, &tellers, &branches, &n)
	if err != nil {
		t.Fatalf("pgbench invariant on %s: %v", pg.DataDir, err)
	}
	for what, sum := range map[string]int64{"accounts": accounts, "tellers": tellers, "branches": branches} {
		if sum != hist {
			t.Errorf("pgbench invariant broken on %s: balances of %s sum to %d, history deltas to %d", pg.DataDir, what, sum, hist)
		}
	}
	return n
}

// PgbenchInit creates pgbench's tables at scale 1, with extra pgbench -i
// arguments such as "--tablespace=ts".
func (pg *Postgres) PgbenchInit(t testing.TB, args ...string) {
	t.Helper()
	args = append([]string{"-i", "-q", "-s", "1", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres"}, args...)
	pg.run(t, "pgbench", append(args, "postgres")...)
}

// Pgbench is a running pgbench load.
type Pgbench struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// StartPgbench initializes pgbench's tables at scale 1 (if they do not
// exist yet) and runs `pgbench -c clients` against the server until Stop
// or the end of the test. It returns once transactions are committing.
func (pg *Postgres) StartPgbench(t testing.TB, clients int) *Pgbench {
	t.Helper()
	if pg.QueryInt(t, "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'") == 0 {
		pg.PgbenchInit(t)
	}
	before := pg.QueryInt(t, "SELECT count(*) FROM pgbench_history")
	cmd := exec.Command(filepath.Join(pg.Bin, "pgbench"), "-n", "-c", strconv.Itoa(clients), "-T", "3600",
		"-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "postgres")
	AsUser(cmd, pg.uid, pg.gid)
	cmd.Dir = "/"
	b := &Pgbench{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.out, b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbench: %v", err)
	}
	go func() { b.err = cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.Stop() })
	deadline := time.Now().Add(30 * time.Second)
	for pg.QueryInt(t, "SELECT count(*) FROM pgbench_history") < before+100 {
		select {
		case <-b.done:
			t.Fatalf("pgbench exited: %v\n%s", b.err, b.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbench committed under 100 transactions in 30s:\n%s", b.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return b
}

// Stop ends pgbench (SIGINT, as ^C) and waits for it.
func (b *Pgbench) Stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(os.Interrupt)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}
