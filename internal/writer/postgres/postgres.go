// Package postgres is the writer for a PostgreSQL (13 or later) server on
// this host. Its data needs no freeze: between a non-exclusive
// pg_backup_start and pg_backup_stop on one held session, any copy of the
// data directory and tablespaces is made consistent by the WAL from start
// to stop, which the writer hands on with the backup label (DESIGN §2).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/umbra-backup/umbra/internal/peerdial"
	"github.com/umbra-backup/umbra/internal/writer"
)

// minVersion is the oldest server the writer supports (server_version_num).
const minVersion = 130000

// connectLimit bounds a connection attempt, so a server that does not answer
// is an error, not a hang.
const connectLimit = 10 * time.Second

var (
	_ writer.Writer           = (*Writer)(nil)
	_ writer.BackupPreparer   = (*Writer)(nil)
	_ writer.SnapshotPreparer = (*Writer)(nil)
	_ writer.PostSnapshotter  = (*Writer)(nil)
	_ writer.CopyCompleter    = (*Writer)(nil)
	_ writer.Completer        = (*Writer)(nil)
	_ writer.Aborter          = (*Writer)(nil)
	_ writer.Restorer         = (*Writer)(nil)
)

// Writer is one PostgreSQL server. It may serve one set after another;
// Abort or the end of a set closes its session.
type Writer struct {
	name      string
	connStr   string            // libpq keywords, without the password
	userCheck writer.UserVerify // the operator's check of a verification
	pass      string            // "" means libpq's own sources (PGPASSWORD, .pgpass)
	restore   restoreOptions

	mu   sync.Mutex
	sess *session // the set's held connection, nil between sets
	// asOwner: peer authentication refused umbra's own user, and the
	// socket's owner (the server's OS user) was let in: connect as it.
	asOwner bool

	aside writer.AsideList // what PreRestore moved aside
}

// options the writer accepts, with what each means (for the error text).
var options = map[string]string{
	"host":           "socket directory or host name (default: PGHOST or /var/run/postgresql)",
	"port":           "port (default: PGPORT or 5432)",
	"user":           "role to connect as, a superuser or one granted pg_backup_start/stop and REPLICATION (default: PGUSER or postgres)",
	"dbname":         "database to connect to (default: postgres)",
	"sslmode":        "libpq sslmode for TCP connections",
	"password":       "password (configuration file only)",
	"password_file":  "file holding the password on its first line (or use PGPASSWORD or ~/.pgpass)",
	"service":        "systemd unit that runs the server, used to stop and start it at restore (such as postgresql@15-main)",
	"start":          "command that starts the server at restore (instead of service)",
	"stop":           "command that stops the server at restore (instead of service)",
	"verify":         "a command that checks a verification's sandbox (PGHOST, PGPORT, PGUSER point at it), run as the server's user",
	"verify_timeout": "how long the verify command may take (default 5m)",
	"start_timeout":  "how long restore waits for the server to stop, and for the restored one to recover and accept connections (default 1h)",
}

// New returns the writer named name (such as "postgres:main").
func New(name string, opts map[string]string) (*Writer, error) {
	if err := writer.CheckOptions("postgres", name, opts, slices.Collect(maps.Keys(options))); err != nil {
		return nil, err
	}
	var kw []string
	for _, k := range []string{"host", "port", "user", "dbname", "sslmode"} {
		v := opts[k]
		switch {
		case v != "":
		case k == "dbname":
			v = "postgres"
		case k == "user" && os.Getenv("PGUSER") == "":
			v = "postgres"
		default:
			continue
		}
		kw = append(kw, k+"="+quote(v))
	}
	w := &Writer{name: name, connStr: strings.Join(kw, " "), restore: restoreOptions{
		service: opts["service"], start: opts["start"], stop: opts["stop"], startLimit: defaultStartLimit,
	}}
	if v := opts["start_timeout"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("postgres writer %q: start_timeout=%s: want a duration such as 10m or 2h", name, v)
		}
		w.restore.startLimit = d
	}
	if _, err := pgx.ParseConfig(w.connStr); err != nil {
		return nil, fmt.Errorf("postgres writer %q: %w", name, err)
	}
	pass, err := writer.Password(opts, "")
	if err != nil {
		return nil, fmt.Errorf("postgres writer %q: %w", name, err)
	}
	w.pass = pass
	if w.userCheck, err = writer.ParseUserVerify("postgres", name, opts); err != nil {
		return nil, err
	}
	return w, nil
}

// quote writes a libpq keyword value so that spaces and quotes survive.
func quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Name returns the instance name.
func (w *Writer) Name() string { return w.name }

// connect opens a new connection named for umbra in pg_stat_activity.
//
// Debian's pg_hba.conf lets the postgres role in over the socket only from
// the OS user postgres ("local all postgres peer"), and umbra runs as root:
// refused so, it connects as the socket's owner, the server's own user, as
// pgBackRest and Barman run (peerdial), and keeps doing so.
func (w *Writer) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(w.connStr)
	if err != nil {
		return nil, err
	}
	if w.pass != "" {
		cfg.Password = w.pass
	}
	cfg.RuntimeParams["application_name"] = "umbra " + w.name
	cfg.ConnectTimeout = connectLimit
	w.mu.Lock()
	asOwner := w.asOwner
	w.mu.Unlock()
	if asOwner {
		if err := dialAsOwner(cfg); err != nil {
			return nil, fmt.Errorf("postgres writer %q: %w", w.name, err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if err != nil && !asOwner && errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "Peer authentication failed") &&
		os.Geteuid() == 0 && dialAsOwner(cfg) == nil {
		var again error
		if conn, again = pgx.ConnectConfig(ctx, cfg); again == nil {
			w.mu.Lock()
			w.asOwner = true
			w.mu.Unlock()
			err = nil
		} else {
			err = fmt.Errorf("%w (and as the socket's owner: %v)", err, again)
		}
	}
	if err != nil {
		return nil, w.connectErr(cfg, err)
	}
	return conn, nil
}

// dialAsOwner makes cfg connect to its Unix socket as the socket's owner;
// it fails if cfg is for TCP or root owns the socket.
func dialAsOwner(cfg *pgx.ConnConfig) error {
	if !strings.HasPrefix(cfg.Host, "/") {
		return fmt.Errorf("%s is not a socket directory", cfg.Host)
	}
	sock := filepath.Join(cfg.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.Port))
	var st syscall.Stat_t
	if err := syscall.Stat(sock, &st); err != nil {
		return err
	}
	if st.Uid == 0 {
		return fmt.Errorf("%s belongs to root", sock)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if network != "unix" {
			return nil, fmt.Errorf("connect as %s's owner: %s is not a socket", sock, addr)
		}
		return peerdial.Dial(ctx, addr, int(st.Uid), int(st.Gid))
	}
	return nil
}

// connectErr says what to do about a failed connection.
func (w *Writer) connectErr(cfg *pgx.ConnConfig, err error) error {
	where := fmt.Sprintf("%s port %d as %s", cfg.Host, cfg.Port, cfg.User)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "Peer authentication failed"):
		// Debian's pg_hba.conf: "local all postgres peer". umbra runs as
		// root, so the socket's peer is root, not postgres.
		return fmt.Errorf("postgres writer %q: PostgreSQL at %s refused the login: %s. umbra runs as %s; "+
			"let that OS user in as %s with a pg_ident.conf map (line \"umbra %s %s\", then \"map=umbra\" after \"peer\" on pg_hba.conf's local line for %s, "+
			"and reload PostgreSQL), or connect over TCP with a password (host=127.0.0.1, password_file=); docs/writers.md has the lines",
			w.name, where, pgErr.Message, osUser(), cfg.User, osUser(), cfg.User, cfg.User)
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
		return fmt.Errorf("postgres writer %q: PostgreSQL at %s refused the login: %s; check user= and the password (password_file=, the configuration file, PGPASSWORD or ~/.pgpass) and pg_hba.conf", w.name, where, pgErr.Message)
	case errors.As(err, &pgErr) && pgErr.Code == "3D000":
		return fmt.Errorf("postgres writer %q: %s; give an existing database with dbname=", w.name, pgErr.Message)
	case errors.As(err, &pgErr):
		return fmt.Errorf("postgres writer %q: connect to %s: %s (%s)", w.name, where, pgErr.Message, pgErr.Code)
	}
	return fmt.Errorf("postgres writer %q: cannot connect to PostgreSQL at %s: %w; is the server running, and are host= and port= right? %w", w.name, where, err, writer.ErrRetryable)
}

// osUser names the user umbra runs as.
func osUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return fmt.Sprint(os.Getuid())
}

// server is what Identify learns about a running server.
type server struct {
	version     string
	versionNum  int
	dataDir     string
	walDir      string // "" when pg_wal is inside the data directory
	tablespaces []tablespace
	configDir   string // the directory of postgresql.conf when outside the data directory (Debian: /etc/postgresql/15/main)
	segSize     int64
	logsOwner   string
}

type tablespace struct{ oid, name, path string }

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// paths lists every directory the server's data lives in.
func (s *server) paths() []string {
	ps := []string{s.dataDir}
	if s.configDir != "" {
		ps = append(ps, s.configDir)
	}
	if s.walDir != "" {
		ps = append(ps, s.walDir)
	}
	for _, ts := range s.tablespaces {
		ps = append(ps, ts.path)
	}
	return ps
}

// inspect reads the server's facts over conn and checks that its files are
// on this host.
func (w *Writer) inspect(ctx context.Context, conn *pgx.Conn) (*server, error) {
	s := &server{}
	var num string
	err := conn.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('server_version_num')").Scan(&s.version, &num)
	if err != nil {
		return nil, w.queryErr("read the server version", err)
	}
	if s.versionNum, err = w.checkVersion(s.version, num); err != nil {
		return nil, err
	}
	var inRecovery bool
	err = conn.QueryRow(ctx, `SELECT current_setting('data_directory'), pg_is_in_recovery(),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&s.dataDir, &inRecovery, &s.segSize)
	if err != nil {
		return nil, w.queryErr("read data_directory (needs a superuser or a role in pg_read_all_settings)", err)
	}
	if inRecovery {
		return nil, fmt.Errorf("postgres writer %q: the server is a standby; back up the primary (backups from a standby are not supported yet)", w.name)
	}
	var configFile string
	if err := conn.QueryRow(ctx, "SELECT current_setting('config_file')").Scan(&configFile); err != nil {
		return nil, w.queryErr("read config_file", err)
	}
	if dir := filepath.Dir(configFile); !within(dir, s.dataDir) {
		s.configDir = dir
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "PG_VERSION")); err != nil {
		return nil, fmt.Errorf("postgres writer %q: the server's data directory %s is not readable here (%v); umbra must run as root on the database host", w.name, s.dataDir, err)
	}
	if target, err := os.Readlink(filepath.Join(s.dataDir, "pg_wal")); err == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(s.dataDir, target)
		}
		s.walDir = filepath.Clean(target)
	}
	rows, err := conn.Query(ctx, `SELECT oid::text, spcname, pg_tablespace_location(oid) FROM pg_tablespace
		WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname`)
	if err != nil {
		return nil, w.queryErr("list tablespaces", err)
	}
	for rows.Next() {
		var ts tablespace
		if err := rows.Scan(&ts.oid, &ts.name, &ts.path); err != nil {
			return nil, w.queryErr("list tablespaces", err)
		}
		s.tablespaces = append(s.tablespaces, ts)
	}
	if err := rows.Err(); err != nil {
		return nil, w.queryErr("list tablespaces", err)
	}
	s.logsOwner, err = w.logsOwner(ctx, conn)
	return s, err
}

// checkVersion reads server_version_num and refuses servers before 13.
func (w *Writer) checkVersion(version, num string) (int, error) {
	n, err := strconv.Atoi(num)
	if err != nil {
		return 0, fmt.Errorf("postgres writer %q: server_version_num %q is not a number", w.name, num)
	}
	if n < minVersion {
		return 0, fmt.Errorf("postgres writer %q: PostgreSQL %s is too old: umbra needs 13 or later (non-exclusive backups with a temporary replication slot); upgrade the server", w.name, version)
	}
	return n, nil
}

// logsOwner names another tool that reads the WAL: an archive_command that
// is not umbra's, or streaming replicas. Their WAL must not be pruned.
func (w *Writer) logsOwner(ctx context.Context, conn *pgx.Conn) (string, error) {
	var mode, command string
	var replicas int
	err := conn.QueryRow(ctx, `SELECT current_setting('archive_mode'), current_setting('archive_command'),
		(SELECT count(*) FROM pg_stat_replication)`).Scan(&mode, &command, &replicas)
	if err != nil {
		return "", w.queryErr("read archive settings", err)
	}
	var owners []string
	if mode != "off" && command != "" && !(strings.Contains(command, "umbra") && strings.Contains(command, "wal-push")) {
		owners = append(owners, fmt.Sprintf("archive_command %q is not umbra's", command))
	}
	if replicas > 0 {
		owners = append(owners, fmt.Sprintf("%d streaming replica(s) read the WAL", replicas))
	}
	return strings.Join(owners, "; "), nil
}

// Identify connects and describes the server's data: the data directory,
// each tablespace, and pg_wal when it lives elsewhere.
func (w *Writer) Identify(ctx context.Context) (writer.Metadata, error) {
	conn, err := w.connect(ctx)
	if err != nil {
		return writer.Metadata{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	s, err := w.inspect(ctx, conn)
	if err != nil {
		return writer.Metadata{}, err
	}
	return w.metadata(s), nil
}

// Files PostgreSQL's own base backups leave out of the data directory
// (protocol-replication.html, "BASE_BACKUP"): rebuilt at start, or
// meaningless in a copy. Directories stay, their contents go.
var (
	excludedContents = []string{"pg_wal", "pg_dynshmem", "pg_notify", "pg_replslot", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
	excludedFiles    = []string{"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "backup_label.old", "postgresql.auto.conf.tmp", "current_logfiles.tmp"}
)

func (w *Writer) metadata(s *server) writer.Metadata {
	restore := writer.RestoreMethod{Method: "stop-service", Service: w.restore.service}
	types := []writer.BackupType{writer.Full, writer.Copy}
	var excl []string
	for _, d := range excludedContents {
		excl = append(excl, filepath.Join(s.dataDir, d, "*"))
	}
	for _, f := range excludedFiles {
		excl = append(excl, filepath.Join(s.dataDir, f))
	}
	excl = append(excl, filepath.Join(s.dataDir, "**", "pgsql_tmp*"), filepath.Join(s.dataDir, "**", "pg_internal.init"))
	comps := []writer.Component{{
		Name:        "data",
		Kind:        writer.KindDatabase,
		Paths:       []string{s.dataDir},
		Excludes:    excl,
		Selectable:  false, // the cluster restores as a whole
		BackupTypes: types,
		Needs:       writer.NeedLive,
		Restore:     restore,
		Logs:        writer.LogFacts{Truncates: "nothing (PostgreSQL recycles its own WAL; the WAL a backup needs is kept by a temporary replication slot until it is copied)"},
	}}
	if s.walDir != "" {
		comps = append(comps, writer.Component{
			Name:        "wal",
			Kind:        writer.KindLogs,
			Paths:       []string{s.walDir},
			Excludes:    []string{filepath.Join(s.walDir, "*")}, // the backup's WAL is handed on
			BackupTypes: types,
			Needs:       writer.NeedLive,
			Restore:     restore,
		})
	}
	if s.configDir != "" {
		comps = append(comps, writer.Component{
			Name:        "config",
			Kind:        writer.KindFiles,
			Paths:       []string{s.configDir},
			BackupTypes: types,
			Needs:       writer.NeedLive,
			Restore:     restore,
		})
	}
	for _, ts := range s.tablespaces {
		comps = append(comps, writer.Component{
			Name:        "tablespace:" + ts.name,
			Kind:        writer.KindDatabase,
			Paths:       []string{ts.path},
			Excludes:    []string{filepath.Join(ts.path, "**", "pgsql_tmp*")},
			BackupTypes: types,
			Needs:       writer.NeedLive,
			Restore:     restore,
		})
	}
	return writer.Metadata{
		Writer:      "postgres",
		Instance:    w.name,
		Version:     s.version,
		Components:  comps,
		LogsOwnedBy: s.logsOwner,
	}
}

// queryErr wraps a failed query with what it was for and, for a missing
// privilege, the grant that fixes it.
func (w *Writer) queryErr(what string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		fix := ""
		if pgErr.Code == "42501" { // insufficient_privilege
			fix = "; connect as a superuser (user=postgres), or grant the role the privilege named"
		}
		return fmt.Errorf("postgres writer %q: %s: %s (%s)%s", w.name, what, pgErr.Message, pgErr.Code, fix)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("postgres writer %q: %s: %w: %w", w.name, what, err, writer.ErrRetryable)
	}
	return fmt.Errorf("postgres writer %q: %s: %w", w.name, what, err)
}
