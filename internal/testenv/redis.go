package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisStartLimit bounds how long redis-server may take to answer PING with
// its data set loaded.
const redisStartLimit = 30 * time.Second

// Redis is a private redis-server started by StartRedis.
type Redis struct {
	Addr     string // 127.0.0.1:port
	Dir      string // its working directory: dump.rdb and appendonlydir
	Password string // requirepass, or empty
	// Config is the configuration file it was started with, outside Dir so
	// that a copy of Dir holds only Redis's own files.
	Config string
	Server *Server
}

// RedisOption changes the configuration of a server from StartRedis.
type RedisOption func(*redisConfig)

type redisConfig struct {
	appendOnly bool
	password   string
	extra      []string
}

// RedisAppendOnly turns the append-only file on (appendonly yes) or off (the
// default).
func RedisAppendOnly(on bool) RedisOption {
	return func(c *redisConfig) { c.appendOnly = on }
}

// RedisPassword sets requirepass, the default user's password.
func RedisPassword(pw string) RedisOption {
	return func(c *redisConfig) { c.password = pw }
}

// RedisConfig adds configuration lines, such as "save 3600 1".
func RedisConfig(lines ...string) RedisOption {
	return func(c *redisConfig) { c.extra = append(c.extra, lines...) }
}

// StartRedis starts a redis-server for the test on a free port of 127.0.0.1,
// keeping its data in dir (created if needed; the test chooses it, usually
// on a loop filesystem, and t.TempDir or the filesystem's teardown removes
// it). The server reads only the configuration written here, never one in
// /etc. Automatic saves are off (save ""), so that the only RDB files are
// the ones a test or writer asks for; RedisConfig("save 3600 1") turns them
// back on. It returns once the server answers PING with its data loaded;
// t.Cleanup stops it whether the test passed or not.
//
// It skips the test unless redis-server is on PATH.
func StartRedis(t testing.TB, dir string, opts ...RedisOption) *Redis {
	t.Helper()
	NeedCommand(t, "redis-server")
	var cfg redisConfig
	for _, o := range opts {
		o(&cfg)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("StartRedis: %v", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("StartRedis: %v", err)
	}
	port := FreePort(t)
	r := &Redis{
		Addr:     fmt.Sprintf("127.0.0.1:%d", port),
		Dir:      abs,
		Password: cfg.password,
		Config:   filepath.Join(t.TempDir(), "redis.conf"),
	}
	yes := map[bool]string{true: "yes", false: "no"}
	lines := []string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(port),
		"dir " + quoteRedis(abs),
		"daemonize no",
		`logfile ""`,
		`save ""`,
		"appendonly " + yes[cfg.appendOnly],
	}
	if cfg.password != "" {
		lines = append(lines, "requirepass "+quoteRedis(cfg.password))
	}
	lines = append(lines, cfg.extra...)
	// The file may hold the password: readable by its owner only.
	if err := os.WriteFile(r.Config, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("StartRedis: %v", err)
	}
	r.Start(t)
	return r
}

// Start starts the server again, with the same port, directory and
// configuration, after it has stopped (a restore test stops it with
// SHUTDOWN NOSAVE). It replaces r.Server; t.Cleanup stops the new process.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	if r.Server != nil && !r.Server.Exited() {
		t.Fatalf("start redis-server %s: it is still running (pid %d)", r.Addr, r.Server.Pid())
	}
	r.Server = StartServer(t, "redis-server "+r.Addr, exec.Command("redis-server", r.Config), redisStartLimit, r.ready)
}

// StartCommand is a shell command that starts the server again detached
// (as a writer's start= option would, for a restore); t.Cleanup kills
// whatever it started.
func (r *Redis) StartCommand(t testing.TB) string {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "redis.pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return fmt.Sprintf("redis-server %s --daemonize yes --pidfile %s", r.Config, pidFile)
}

// ShutdownAtCleanup stops, when the test ends, whatever Redis then listens
// at r.Addr, such as one a restore started by itself.
func (r *Redis) ShutdownAtCleanup(t testing.TB) {
	t.Cleanup(func() {
		c := r.newClient()
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.ShutdownNoSave(ctx).Err()
	})
}

// quoteRedis quotes s for a redis.conf line.
func quoteRedis(s string) string { return strconv.Quote(s) }

// ready returns nil once the server answers PING and is not loading.
func (r *Redis) ready() error {
	// Dial first: go-redis logs every failed dial to stderr.
	nc, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	_ = nc.Close()
	c := r.newClient()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return err
	}
	info, err := c.Info(ctx, "persistence").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "loading:0") {
		return errors.New("still loading its data set")
	}
	return nil
}

// newClient returns a client that never retries a command on its own (a
// retried INCR could count twice).
func (r *Redis) newClient() *goredis.Client {
	return NewRedisClient(r.Addr, r.Password)
}

// NewRedisClient returns a go-redis client for addr that speaks RESP2,
// sends no client identity, and never retries a command on its own.
func NewRedisClient(addr, password string) *goredis.Client {
	return goredis.NewClient(&goredis.Options{
		Addr:                     addr,
		Password:                 password,
		Protocol:                 2,
		DisableIdentity:          true,
		MaxRetries:               -1,
		DialerRetries:            1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// Client returns a client of the server, closed by t.Cleanup.
func (r *Redis) Client(t testing.TB) *goredis.Client {
	t.Helper()
	c := r.newClient()
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Do runs one command and returns its reply, failing the test on an error.
func (r *Redis) Do(t testing.TB, args ...any) any {
	t.Helper()
	c := r.newClient()
	defer c.Close()
	v, err := c.Do(t.Context(), args...).Result()
	if err != nil {
		t.Fatalf("redis %s: %v: %v", r.Addr, args, err)
	}
	return v
}

// Values returns the integer value of each key (0 for a missing key).
func (r *Redis) Values(t testing.TB, keys []string) []int64 {
	t.Helper()
	c := r.newClient()
	defer c.Close()
	vals, err := c.MGet(t.Context(), keys...).Result()
	if err != nil {
		t.Fatalf("redis %s: MGET: %v", r.Addr, err)
	}
	out := make([]int64, len(keys))
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, _ := v.(string)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("redis %s: key %s holds %q, want an integer", r.Addr, keys[i], s)
		}
		out[i] = n
	}
	return out
}

// KeyCount is the number of keys in all databases (the sum of INFO
// keyspace).
func (r *Redis) KeyCount(t testing.TB) int64 {
	t.Helper()
	info, ok := r.Do(t, "INFO", "keyspace").(string)
	if !ok {
		t.Fatalf("redis %s: INFO keyspace: not a string", r.Addr)
	}
	var total int64
	for line := range strings.Lines(info) {
		_, rest, ok := strings.Cut(strings.TrimSpace(line), ":keys=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			t.Fatalf("redis %s: INFO keyspace line %q: %v", r.Addr, line, err)
		}
		total += v
	}
	return total
}

// RedisLoad increments counters in Redis as fast as it can, from two
// goroutines, each key owned by one of them, so that every key's value is
// exactly the number of increments Redis applied to it. For each key it
// records the value of the last INCR acknowledged and of the last INCR
// sent: a copy of the data set taken at any instant holds, for each key, at
// least the acknowledged value read before the instant and at most the
// issued value read after it.
type RedisLoad struct {
	keys   []string
	acked  []atomic.Int64
	issued []atomic.Int64

	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

// StartRedisLoad starts INCR load on n keys named umbra:load:0 … and
// returns once every key has been incremented at least once. The keys'
// current values (0 if missing) are the starting point. t.Cleanup stops it.
func StartRedisLoad(t testing.TB, r *Redis, n int) *RedisLoad {
	t.Helper()
	l := &RedisLoad{keys: make([]string, n), acked: make([]atomic.Int64, n), issued: make([]atomic.Int64, n)}
	for i := range n {
		l.keys[i] = fmt.Sprintf("umbra:load:%d", i)
	}
	start := r.Values(t, l.keys)
	for i, v := range start {
		l.acked[i].Store(v)
		l.issued[i].Store(v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	const workers = 2
	for g := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := r.newClient()
			defer c.Close()
			for ctx.Err() == nil {
				for i := g; i < n; i += workers {
					if err := l.incr(ctx, c, i); err != nil {
						if ctx.Err() == nil {
							l.fail(err)
							cancel()
						}
						return
					}
				}
			}
		}()
	}
	t.Cleanup(func() { l.Stop() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		done := true
		for i := range l.keys {
			if l.acked[i].Load() <= start[i] {
				done = false
			}
		}
		if done {
			return l
		}
		if err := l.Err(); err != nil {
			t.Fatalf("StartRedisLoad: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("StartRedisLoad: not every key incremented within 30s")
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *RedisLoad) incr(ctx context.Context, c *goredis.Client, i int) error {
	want := l.acked[i].Load() + 1
	l.issued[i].Store(want)
	got, err := c.Incr(ctx, l.keys[i]).Result()
	if err != nil {
		return fmt.Errorf("INCR %s: %w", l.keys[i], err)
	}
	if got != want {
		return fmt.Errorf("INCR %s: got %d, want %d; something else changes the key", l.keys[i], got, want)
	}
	l.acked[i].Store(got)
	return nil
}

func (l *RedisLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// Keys returns the load's keys, in the order of Acked and Issued.
func (l *RedisLoad) Keys() []string { return l.keys }

// Acked returns, for each key, the value of the last acknowledged INCR:
// Redis had applied every increment up to it when this call began.
func (l *RedisLoad) Acked() []int64 {
	out := make([]int64, len(l.acked))
	for i := range l.acked {
		out[i] = l.acked[i].Load()
	}
	return out
}

// Issued returns, for each key, the value of the last INCR sent: Redis had
// applied no increment beyond it when this call ended.
func (l *RedisLoad) Issued() []int64 {
	out := make([]int64, len(l.issued))
	for i := range l.issued {
		out[i] = l.issued[i].Load()
	}
	return out
}

// WaitProgress returns nil once every key has been incremented after the
// call, and an error if that takes longer than d or the load failed.
func (l *RedisLoad) WaitProgress(d time.Duration) error {
	from := l.Acked()
	deadline := time.Now().Add(d)
	for {
		now := l.Acked()
		done := true
		for i := range now {
			if now[i] <= from[i] {
				done = false
			}
		}
		if done {
			return nil
		}
		if err := l.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis load: not every key incremented within %v", d)
		}
		time.Sleep(time.Millisecond)
	}
}

// Err returns the error that stopped the load, if any.
func (l *RedisLoad) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Stop ends the load, waits for it and returns the error that stopped it
// early, if any. It is safe to call more than once.
func (l *RedisLoad) Stop() error {
	l.cancel()
	l.wg.Wait()
	return l.Err()
}
