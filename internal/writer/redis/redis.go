// Package redis is the writer for one Redis server: before the snapshot it has
// Redis write a fresh RDB file (BGSAVE), or rewrite its append-only file
// (BGREWRITEAOF), and around a restore it stops and starts Redis.
package redis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/umbra-backup/umbra/internal/writer"
)

var (
	_ writer.Writer           = (*Writer)(nil)
	_ writer.SnapshotPreparer = (*Writer)(nil)
	_ writer.PostSnapshotter  = (*Writer)(nil)
	_ writer.Aborter          = (*Writer)(nil)
	_ writer.Restorer         = (*Writer)(nil)
)

// Component names.
const (
	componentRDB = "rdb"
	componentAOF = "aof"
)

// pollEvery is how often the writer asks Redis whether a save has ended, or
// whether it has stopped or started. Redis notices a finished save child in
// its cron, ten times a second by default.
const pollEvery = 20 * time.Millisecond

// dialLimit bounds a connection attempt when ctx allows longer.
const dialLimit = 10 * time.Second

// replyLimit bounds the wait for one reply when ctx allows longer. It is
// generous because Redis answers BGSAVE and BGREWRITEAOF only after fork(),
// which for a large data set on a slow hypervisor takes seconds; go-redis's
// default of 5s could fail a save that is fine.
const replyLimit = 30 * time.Second

// validOptions are the options New accepts.
var validOptions = []string{"addr", "password", "password_file", "service", "socket", "start", "stop", "user"}

// Writer makes one Redis server's data consistent. It needs no Freeze:
// Redis writes a new RDB file to a temporary name and renames it over the
// old one when it is complete, so the file is consistent whenever it is
// copied, and the append-only file is consistent in any atomic snapshot
// (see Identify). PrepareSnapshot makes sure the files on disk postdate the
// start of the set.
//
// A Writer may serve one set after another; Abort ends the current one.
type Writer struct {
	userCheck writer.UserVerify // the operator's check of a verification
	name      string
	network   string // "tcp" or "unix"
	addr      string // host:port or socket path
	user      string
	password  string
	stop      string // shell command
	start     string // shell command
	service   string // systemd unit

	mu       sync.Mutex
	aof      *bool             // appendonly as the last Identify saw it
	saved    map[string]string // positions of the save of set savedFor; nil between sets
	savedFor string

	aside writer.AsideList // what PreRestore moved aside
}

// New returns the writer named name (such as "redis:cache") for the Redis
// server described by opts:
//
//	addr=HOST:PORT     TCP address (default 127.0.0.1:6379), or
//	socket=PATH        Unix socket
//	user=NAME          ACL user (default: the default user)
//	password_file=PATH the password, or the option password (configuration
//	                   file only), or $REDISCLI_AUTH
//	service=UNIT       systemd unit stopped and started around a restore, or
//	stop=COMMAND, start=COMMAND  shell commands that do it
//
// Without service= or stop=, a restore stops Redis with SHUTDOWN NOSAVE.
func New(name string, opts map[string]string) (*Writer, error) {
	if err := writer.CheckOptions("redis", name, opts, validOptions); err != nil {
		return nil, err
	}
	w := &Writer{name: name, network: "tcp", addr: "127.0.0.1:6379", user: opts["user"],
		stop: opts["stop"], start: opts["start"], service: opts["service"]}
	switch addr, socket := opts["addr"], opts["socket"]; {
	case addr != "" && socket != "":
		return nil, fmt.Errorf("redis writer %q: give addr= or socket=, not both", name)
	case socket != "":
		w.network, w.addr = "unix", socket
	case addr != "":
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("redis writer %q: addr=%s: %v; want HOST:PORT, such as addr=127.0.0.1:6379", name, addr, err)
		}
		w.addr = addr
	}
	pw, err := writer.Password(opts, "REDISCLI_AUTH")
	if err != nil {
		return nil, fmt.Errorf("redis writer %q: %w", name, err)
	}
	w.password = pw
	if w.user != "" && w.password == "" {
		return nil, fmt.Errorf("redis writer %q: user=%s needs a password: password_file=, the option password (configuration file only), or REDISCLI_AUTH", name, w.user)
	}
	if w.service != "" && (w.stop != "" || w.start != "") {
		return nil, fmt.Errorf("redis writer %q: give service= or stop= and start=, not both", name)
	}
	uv, err := writer.ParseUserVerify("redis", name, opts)
	if err != nil {
		return nil, err
	}
	w.userCheck = uv
	return w, nil
}

// Name returns the instance name.
func (w *Writer) Name() string { return w.name }

// config is what the writer needs to know of a running server.
type config struct {
	version string
	dir     string
	rdb     string // the RDB file
	aof     bool
	aofPath string // the append-only directory (Redis ≥ 7) or file
	aofName string // appendfilename: the files' and the manifest's base name
}

// Identify describes the server's data. The RDB file is one component,
// copied live: Redis replaces it by rename once a save is complete, so every
// copy holds one whole save. With appendonly yes the append-only data is a
// second component, and Redis loads it, not the RDB file, at start; so the
// RDB file cannot be restored alone then.
//
// The append-only data needs an atomic copy. Since Redis 7 it is a
// directory of files that change together: a manifest naming a base file
// and incremental files, which a rewrite replaces (new manifest, new files,
// old ones deleted), while every write appends to the last incremental file.
// A copy file by file can pair a manifest with files it does not name, or
// miss files it does. A snapshot of the whole volume at one instant holds a
// manifest with exactly its files, and every write acknowledged before it,
// since Redis writes the append-only buffer before it replies. Quiescing
// instead would need CLIENT PAUSE WRITE held across the copy and no rewrite
// running, which an atomic snapshot makes unnecessary.
func (w *Writer) Identify(ctx context.Context) (writer.Metadata, error) {
	c := w.client()
	defer c.Close()
	cfg, err := w.config(ctx, c)
	if err != nil {
		return writer.Metadata{}, w.cmdErr(ctx, writer.PhaseIdentify, "read configuration", err)
	}
	if _, err := os.Stat(cfg.dir); err != nil {
		return writer.Metadata{}, fmt.Errorf("redis writer %q: Redis at %s keeps its data in %s, which umbra cannot see here (%v); run umbra on the Redis host", w.name, w.addr, cfg.dir, err)
	}
	w.mu.Lock()
	w.aof = &cfg.aof
	w.mu.Unlock()

	restore := writer.RestoreMethod{Method: "stop-service", Service: w.service}
	comps := []writer.Component{{
		Name:        componentRDB,
		Kind:        writer.KindDatabase,
		Paths:       []string{cfg.rdb},
		Selectable:  !cfg.aof,
		BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
		Needs:       writer.NeedLive,
		Restore:     restore,
		Logs:        writer.LogFacts{Truncates: "nothing"},
	}}
	if cfg.aof {
		comps = append(comps, writer.Component{
			Name:        componentAOF,
			Kind:        writer.KindDatabase,
			Paths:       []string{cfg.aofPath},
			Selectable:  true,
			BackupTypes: []writer.BackupType{writer.Full, writer.Copy},
			Needs:       writer.NeedAtomic,
			Restore:     restore,
			Logs:        writer.LogFacts{Truncates: "nothing"},
			OwnCopy:     true, // see copyAOF
		})
	}
	return writer.Metadata{Writer: "redis", Instance: w.name, Version: cfg.version, Components: comps}, nil
}

func (w *Writer) config(ctx context.Context, c *goredis.Client) (config, error) {
	info, err := info(ctx, c, "server")
	if err != nil {
		return config{}, err
	}
	var cfg config
	cfg.version = info["redis_version"]
	get := map[string]string{"dir": "", "dbfilename": "", "appendonly": "", "appenddirname": "", "appendfilename": ""}
	for k := range get {
		if get[k], err = configGet(ctx, c, k); err != nil {
			return config{}, err
		}
	}
	if !filepath.IsAbs(get["dir"]) || get["dbfilename"] == "" {
		return config{}, fmt.Errorf("CONFIG GET: got dir %q and dbfilename %q, want an absolute directory and a file name", get["dir"], get["dbfilename"])
	}
	cfg.dir = get["dir"]
	cfg.rdb = filepath.Join(cfg.dir, get["dbfilename"])
	cfg.aof = get["appendonly"] == "yes"
	cfg.aofName = get["appendfilename"]
	cfg.aofPath = filepath.Join(cfg.dir, get["appenddirname"]) // Redis ≥ 7: a directory
	if get["appenddirname"] == "" {
		cfg.aofPath = filepath.Join(cfg.dir, get["appendfilename"]) // before 7: one file
	}
	return cfg, nil
}

// PrepareSnapshot has Redis write its data out and waits until it has: a
// BGSAVE, or a BGREWRITEAOF when the append-only file is on (Redis then
// loads that, not the RDB file). A save or rewrite already running may have
// started before the set, so the writer waits for it to end and then starts
// its own. It records the key count when the save is complete, for
// PostSnapshot.
func (w *Writer) PrepareSnapshot(ctx context.Context, set writer.Set) error {
	const phase = writer.PhasePrepareSnapshot
	c := w.client()
	defer c.Close()
	aof, err := configGet(ctx, c, "appendonly")
	if err != nil {
		return w.cmdErr(ctx, phase, "CONFIG GET appendonly", err)
	}
	on := aof == "yes"
	w.mu.Lock()
	identified := w.aof
	w.mu.Unlock()
	if identified != nil && *identified != on {
		// The set was planned for the other layout: its copy would miss
		// the data Redis now loads.
		return fmt.Errorf("redis writer %q: %s: appendonly changed to %s since Identify; start the backup again: %w", w.name, phase, aof, writer.ErrRetryable)
	}
	cmd, start, status := "BGSAVE", c.BgSave, "rdb_last_bgsave_status"
	if on {
		cmd, start, status = "BGREWRITEAOF", c.BgRewriteAOF, "aof_last_bgrewrite_status"
	}
	info, err := w.save(ctx, c, cmd, start, status)
	if err != nil {
		return err
	}
	pos := map[string]string{"keys": strconv.FormatInt(keyCount(info), 10)}
	if !on {
		pos["rdb_last_save_time"] = info["rdb_last_save_time"]
	}
	w.mu.Lock()
	w.saved, w.savedFor = pos, set.ID
	w.mu.Unlock()
	return nil
}

// save runs cmd (BGSAVE or BGREWRITEAOF, sent by start), waits until it
// has ended, and returns INFO as it was then. Redis refuses the command while a save or
// rewrite of the same kind runs, or any save while another child process
// runs; the running one may predate the set, so save waits for it and tries
// again. BGREWRITEAOF during a BGSAVE is scheduled to follow it, which is
// as good as started now. The result is the status field of INFO.
func (w *Writer) save(ctx context.Context, c *goredis.Client, cmd string, start func(context.Context) *goredis.StatusCmd, status string) (map[string]string, error) {
	const phase = writer.PhasePrepareSnapshot
	for {
		err := start(ctx).Err()
		busy := replyCode(err) != "" && (strings.Contains(err.Error(), "already in progress") || strings.Contains(err.Error(), "child process is active"))
		if err != nil && !busy {
			return nil, w.cmdErr(ctx, phase, cmd, err)
		}
		info, werr := w.waitIdle(ctx, c, cmd)
		if werr != nil {
			return nil, werr
		}
		if busy {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("redis writer %q: %s: %s refused while another one ran, until the phase's time ran out: %w: %w",
					w.name, phase, cmd, context.Cause(ctx), writer.ErrRetryable)
			case <-time.After(pollEvery):
				continue
			}
		}
		if st := info[status]; st != "ok" {
			return nil, fmt.Errorf("redis writer %q: %s: %s failed (%s:%s); the Redis log says why (disk full? fork refused? set vm.overcommit_memory=1): %w",
				w.name, phase, cmd, status, st, writer.ErrRetryable)
		}
		return info, nil
	}
}

// waitIdle polls INFO until Redis runs no save or rewrite and has none
// scheduled, and returns the last INFO.
func (w *Writer) waitIdle(ctx context.Context, c *goredis.Client, what string) (map[string]string, error) {
	for {
		info, err := info(ctx, c)
		if err != nil {
			return nil, w.cmdErr(ctx, writer.PhasePrepareSnapshot, "INFO (waiting for "+what+")", err)
		}
		busy := false
		for _, k := range []string{"rdb_bgsave_in_progress", "aof_rewrite_in_progress", "aof_rewrite_scheduled", "module_fork_in_progress"} {
			busy = busy || (info[k] != "" && info[k] != "0")
		}
		if !busy {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("redis writer %q: %s: %s still running when the phase's time ran out: %w: %w",
				w.name, writer.PhasePrepareSnapshot, what, context.Cause(ctx), writer.ErrRetryable)
		case <-time.After(pollEvery):
		}
	}
}

// keyCount sums the keys of every database in INFO keyspace.
func keyCount(info map[string]string) int64 {
	var n int64
	for k, v := range info {
		if !strings.HasPrefix(k, "db") {
			continue
		}
		keys, _, _ := strings.Cut(strings.TrimPrefix(v, "keys="), ",")
		if k, err := strconv.ParseInt(keys, 10, 64); err == nil {
			n += k
		}
	}
	return n
}

// PostSnapshot reports what the set's save recorded: "keys", the number of
// keys in all databases when the save was complete, and, for an RDB save,
// "rdb_last_save_time" (Unix seconds).
//
// Where no provider can copy the append-only data atomically, it copies it
// itself (copyAOF) and says so in the report's Copies.
func (w *Writer) PostSnapshot(ctx context.Context, set writer.Set) (writer.Report, error) {
	const phase = writer.PhasePostSnapshot
	w.mu.Lock()
	if w.saved == nil || w.savedFor != set.ID {
		w.mu.Unlock()
		return writer.Report{}, fmt.Errorf("redis writer %q: %s: no save recorded for set %q; PrepareSnapshot must come first", w.name, phase, set.ID)
	}
	rep := writer.Report{Positions: maps.Clone(w.saved)}
	w.mu.Unlock()
	c := w.client()
	defer c.Close()
	rep.Started = w.started(ctx, c)
	if !set.CopiesOwn(w.name, componentAOF) {
		return rep, nil
	}
	cfg, err := w.config(ctx, c)
	if err != nil {
		return writer.Report{}, w.cmdErr(ctx, phase, "read configuration", err)
	}
	src, err := w.copyAOF(ctx, set, cfg.aofPath, cfg.aofName+".manifest")
	if err != nil {
		return writer.Report{}, fmt.Errorf("redis writer %q: %s: copy the append-only data %s: %w", w.name, phase, cfg.aofPath, err)
	}
	rep.Copies = []writer.OwnCopy{{Path: cfg.aofPath, Source: src}}
	return rep, nil
}

// Abort forgets the set's save. It has nothing to release: the writer holds
// no connection, lock or pause between phases, and a BGSAVE or rewrite
// still running is Redis's own child, which leaves a complete file or none.
func (w *Writer) Abort(_ context.Context, _ writer.Set) error {
	w.mu.Lock()
	w.saved, w.savedFor = nil, ""
	w.mu.Unlock()
	return nil
}

// client returns a client for one phase, which closes it. It holds at most
// one connection, made on the first command: the writer sends a handful of
// commands in order, and a failed one is the phase's to retry or report, so
// go-redis must not retry a command or a dial on its own. A command ends at
// ctx's deadline or after replyLimit; go-redis does not interrupt a reply
// it is waiting for when ctx is cancelled without a deadline.
func (w *Writer) client() *goredis.Client {
	silenceGoRedis.Do(func() {
		// go-redis logs every failed dial to a process-wide logger on
		// stderr. The writer reports the failure itself, as an error, so
		// the log would only add noise: `umbra writers` would print a
		// line for every server that is down.
		goredis.SetLogger(&logging.VoidLogger{})
	})
	return goredis.NewClient(&goredis.Options{
		Network:  w.network,
		Addr:     w.addr,
		Username: w.user,
		Password: w.password,
		// RESP2: the handshake is HELLO 2 (or AUTH before Redis 6) and
		// nothing else, with no push notifications to handle. The typed
		// commands the writer uses would read RESP3 replies as well.
		Protocol:              2,
		DialTimeout:           dialLimit,
		DialerRetries:         1,  // one attempt, not go-redis's five
		MaxRetries:            -1, // no retries
		ReadTimeout:           replyLimit,
		PoolSize:              1,
		MinIdleConns:          0,
		ContextTimeoutEnabled: true,
		// Send only the commands the writer needs (and its ACL user may
		// run): no CLIENT SETINFO, no CLIENT MAINT_NOTIFICATIONS.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// silenceGoRedis turns go-redis's logging off once, when the first client
// is made.
var silenceGoRedis sync.Once

// info runs INFO section… and returns its fields, keyspace lines included
// ("db0" → "keys=3,expires=0,avg_ttl=0").
func info(ctx context.Context, c *goredis.Client, sections ...string) (map[string]string, error) {
	s, err := c.Info(ctx, sections...).Result()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m, nil
}

// configGet returns one configuration parameter; "" if the server does not
// know it (an older version).
func configGet(ctx context.Context, c *goredis.Client, name string) (string, error) {
	m, err := c.ConfigGet(ctx, name).Result()
	if err != nil {
		return "", err
	}
	return m[name], nil
}

// replyErr returns the error reply from the server in err, such as
// "NOPERM this user has no permissions to run the 'bgsave' command", or nil.
func replyErr(err error) goredis.Error {
	var re goredis.Error
	if errors.As(err, &re) {
		return re
	}
	return nil
}

// replyCode returns the code of err's error reply, its first word (ERR,
// NOAUTH, WRONGPASS, NOPERM, LOADING…), or "" if err holds none.
func replyCode(err error) string {
	re := replyErr(err)
	if re == nil {
		return ""
	}
	code, _, _ := strings.Cut(re.Error(), " ")
	return code
}

// cmdErr describes a failed command. Servers that cannot be reached, busy
// servers and time-outs are retryable; wrong credentials and missing
// permissions are not. go-redis connects, and authenticates, on a client's
// first command, so any command may fail for those reasons.
func (w *Writer) cmdErr(ctx context.Context, phase writer.Phase, what string, err error) error {
	if replyCode(err) == "" && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		// An i/o time-out at ctx's deadline: say why there was one.
		err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("redis writer %q: %s: cannot connect to %s: %w; is Redis running? check addr= or socket=: %w",
			w.name, phase, w.addr, err, writer.ErrRetryable)
	}
	prefix := fmt.Sprintf("redis writer %q: %s: %s", w.name, phase, what)
	user := w.user
	if user == "" {
		user = "default"
	}
	re := replyErr(err)
	switch replyCode(err) {
	case "WRONGPASS", "NOAUTH":
		// Not the command's fault: name the reply alone, not go-redis's
		// "failed to authenticate" around it.
		return fmt.Errorf("redis writer %q: %s: authentication failed as user %q at %s (%w); give the right password (password_file=, or REDISCLI_AUTH) and check user=", w.name, phase, user, w.addr, re)
	case "NOPERM":
		return fmt.Errorf("%s: user %q may not (%w); grant what umbra needs: ACL SETUSER %s +info +config|get +bgsave +bgrewriteaof +ping +shutdown", prefix, user, re, user)
	case "LOADING", "BUSY", "TRYAGAIN":
		return fmt.Errorf("%s: %w: %w", prefix, err, writer.ErrRetryable)
	case "":
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || isNetErr(err) {
			return fmt.Errorf("%s at %s: %w: %w", prefix, w.addr, err, writer.ErrRetryable)
		}
	}
	return fmt.Errorf("%s: %w", prefix, err)
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}
