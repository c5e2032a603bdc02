package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestConformance(t *testing.T) {
	for _, aof := range []bool{false, true} {
		t.Run(fmt.Sprintf("appendonly=%v", aof), func(t *testing.T) {
			srv := testenv.StartRedis(t, t.TempDir(), testenv.RedisAppendOnly(aof), testenv.RedisPassword("pw"))
			writertest.Run(t, func(t *testing.T) writer.Writer { return newWriter(t, srv, nil) })
		})
	}
}

func TestNewOptions(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("from-file\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("REDISCLI_AUTH", "from-env")
	tests := []struct {
		name string
		opts map[string]string
		want string // error text; empty for success
		addr string
		pw   string
	}{
		{"defaults", map[string]string{}, "", "127.0.0.1:6379", "from-env"},
		{"addr", map[string]string{"addr": "10.0.0.1:6380"}, "", "10.0.0.1:6380", "from-env"},
		{"socket", map[string]string{"socket": "/run/redis.sock", "password_file": pwFile}, "", "/run/redis.sock", "from-file"},
		{"password", map[string]string{"password": "inline"}, "", "127.0.0.1:6379", "inline"},
		{"both", map[string]string{"addr": "h:1", "socket": "/s"}, "give addr= or socket=, not both", "", ""},
		{"bad addr", map[string]string{"addr": "localhost"}, "want HOST:PORT", "", ""},
		{"service and stop", map[string]string{"service": "redis", "stop": "true"}, "give service= or stop= and start=, not both", "", ""},
		{"missing password file", map[string]string{"password_file": "/nonexistent"}, "password_file:", "", ""},
		{"unknown", map[string]string{"adr": "h:1"}, `unknown option "adr"; valid options: addr, password, password_file, service, socket, start, stop, user`, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("redis:x", tt.opts)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `redis writer "redis:x": `) {
					t.Errorf("New(%v): got %v, want an error with %q", tt.opts, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%v): got %v, want nil", tt.opts, err)
			}
			if wr.addr != tt.addr || wr.password != tt.pw || wr.Name() != "redis:x" {
				t.Errorf("New(%v): got addr %q password %q, want %q and %q", tt.opts, wr.addr, wr.password, tt.addr, tt.pw)
			}
		})
	}
	t.Run("user without password", func(t *testing.T) {
		t.Setenv("REDISCLI_AUTH", "")
		_, err := New("redis:x", map[string]string{"user": "backup"})
		if err == nil || !strings.Contains(err.Error(), "user=backup needs a password") {
			t.Errorf("New(user=backup) without a password: got %v, want an error", err)
		}
	})
}

func TestIdentify(t *testing.T) {
	for _, aof := range []bool{false, true} {
		t.Run(fmt.Sprintf("appendonly=%v", aof), func(t *testing.T) {
			dir := t.TempDir()
			srv := testenv.StartRedis(t, dir, testenv.RedisAppendOnly(aof))
			md, err := newWriter(t, srv, map[string]string{"service": "redis-server.service"}).Identify(t.Context())
			if err != nil {
				t.Fatalf("Identify: got %v, want nil", err)
			}
			if md.Writer != "redis" || !strings.HasPrefix(md.Version, "7.") {
				t.Errorf("Identify: got writer %q version %q, want redis 7.x", md.Writer, md.Version)
			}
			want := map[string]struct {
				path  string
				needs writer.Need
			}{componentRDB: {filepath.Join(dir, "dump.rdb"), writer.NeedLive}}
			if aof {
				want[componentAOF] = struct {
					path  string
					needs writer.Need
				}{filepath.Join(dir, "appendonlydir"), writer.NeedAtomic}
			}
			if len(md.Components) != len(want) {
				t.Fatalf("Identify: got %d components, want %d: %+v", len(md.Components), len(want), md.Components)
			}
			for _, c := range md.Components {
				w, ok := want[c.Name]
				if !ok || len(c.Paths) != 1 || c.Paths[0] != w.path || c.Needs != w.needs {
					t.Errorf("Identify: got component %s %v needs %s, want %v", c.Name, c.Paths, c.Needs, w)
				}
				if c.Logs.Truncates != "nothing" || c.Restore.Service != "redis-server.service" {
					t.Errorf("Identify: component %s: got logs %q restore %+v, want nothing and the service", c.Name, c.Logs.Truncates, c.Restore)
				}
				// With AOF on, Redis loads the AOF: the RDB file alone restores nothing.
				if c.Name == componentRDB && c.Selectable == aof {
					t.Errorf("Identify: component rdb: got selectable %v with appendonly %v", c.Selectable, aof)
				}
			}
		})
	}
}

// TestPrepareSnapshotWaitsForRunningSave starts a slow save or rewrite, as
// if Redis (or someone) had begun it before the set, then adds a key:
// PrepareSnapshot must wait for that save and make its own, which holds the
// key.
func TestPrepareSnapshotWaitsForRunningSave(t *testing.T) {
	tests := []struct {
		name    string
		aof     bool
		running string // started before PrepareSnapshot
	}{
		{"rdb, save running", false, "BGSAVE"},
		{"rdb, rewrite running", false, "BGREWRITEAOF"},
		{"aof, rewrite running", true, "BGREWRITEAOF"},
		{"aof, save running", true, "BGSAVE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testenv.StartRedis(t, t.TempDir(), testenv.RedisAppendOnly(tt.aof))
			populate(t, srv, 500)
			counter := "rdb_saves"
			if tt.aof {
				counter = "aof_rewrites"
			}
			before := infoInt(t, srv, counter)
			// 500 keys at 1 ms each: the running save takes half a second.
			srv.Do(t, "CONFIG", "SET", "rdb-key-save-delay", "1000")
			srv.Do(t, tt.running)
			srv.Do(t, "CONFIG", "SET", "rdb-key-save-delay", "0")
			srv.Do(t, "SET", "late", "1")

			wr := newWriter(t, srv, nil)
			if _, err := wr.Identify(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := wr.PrepareSnapshot(t.Context(), writer.Set{}); err != nil {
				t.Fatalf("PrepareSnapshot: got %v, want nil", err)
			}
			want := before + 1
			if (tt.running == "BGSAVE") != tt.aof {
				want++ // the running one, then ours
			}
			if got := infoInt(t, srv, counter); got != want {
				t.Errorf("%s after PrepareSnapshot with a %s running: got %d, want %d", counter, tt.running, got, want)
			}
			rep, err := wr.PostSnapshot(t.Context(), writer.Set{})
			if err != nil {
				t.Fatalf("PostSnapshot: %v", err)
			}
			if rep.Positions["keys"] != "501" || (rep.Positions["rdb_last_save_time"] == "") == !tt.aof {
				t.Errorf("PostSnapshot: got positions %v, want keys 501 and, for an RDB save, rdb_last_save_time", rep.Positions)
			}
			if _, err := wr.PostSnapshot(t.Context(), writer.Set{ID: "other"}); err == nil {
				t.Error("PostSnapshot of another set: got nil, want an error")
			}

			copyDir := t.TempDir()
			copyData(t, srv.Dir, copyDir)
			second := testenv.StartRedis(t, copyDir, testenv.RedisAppendOnly(tt.aof))
			if got := second.Values(t, []string{"late"}); got[0] != 1 {
				t.Errorf("copy made after PrepareSnapshot: key late = %d, want 1 (set after the running %s began)", got[0], tt.running)
			}
		})
	}
}

func TestPrepareSnapshotSaveFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	srv := testenv.StartRedis(t, dir)
	populate(t, srv, 10)
	// Redis writes its temporary RDB file in its working directory; gone,
	// the save fails after BGSAVE has started it.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	wr := newWriter(t, srv, nil)
	err := wr.PrepareSnapshot(t.Context(), writer.Set{})
	if err == nil || !strings.Contains(err.Error(), "BGSAVE failed (rdb_last_bgsave_status:err)") || !errors.Is(err, writer.ErrRetryable) {
		t.Errorf("PrepareSnapshot with a save that fails: got %v, want a retryable BGSAVE failed error", err)
	}
	if _, err := wr.PostSnapshot(t.Context(), writer.Set{}); err == nil {
		t.Error("PostSnapshot after a failed PrepareSnapshot: got nil, want an error")
	}
}

func TestErrors(t *testing.T) {
	srv := testenv.StartRedis(t, t.TempDir(), testenv.RedisPassword("right"))
	srv.Do(t, "ACL", "SETUSER", "looker", "on", ">pw", "-@all", "+ping", "+info")
	srv.Do(t, "ACL", "SETUSER", "reader", "on", ">pw", "-@all", "+ping", "+info", "+config|get")
	down := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("REDISCLI_AUTH", "")

	tests := []struct {
		name      string
		opts      map[string]string
		prepare   bool // fail in PrepareSnapshot, not Identify
		want      string
		retryable bool
	}{
		{"wrong password", map[string]string{"addr": srv.Addr, "password_file": pwFile}, false,
			`authentication failed as user "default" at ` + srv.Addr + ` (WRONGPASS`, false},
		{"no password", map[string]string{"addr": srv.Addr}, false,
			`authentication failed as user "default" at ` + srv.Addr + ` (NOAUTH`, false},
		{"server down", map[string]string{"addr": down}, false,
			"cannot connect to " + down, true},
		{"socket missing", map[string]string{"socket": "/nonexistent/redis.sock"}, false,
			"cannot connect to /nonexistent/redis.sock", true},
		{"no config permission", map[string]string{"addr": srv.Addr, "user": "looker", "password": "pw"}, false,
			`user "looker" may not (NOPERM this user has no permissions to run the 'config|get' command); grant what umbra needs: ACL SETUSER looker +info +config|get +bgsave`, false},
		{"no bgsave permission", map[string]string{"addr": srv.Addr, "user": "reader", "password": "pw"}, true,
			`BGSAVE: user "reader" may not (NOPERM this user has no permissions to run the 'bgsave' command); grant`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr, err := New("redis:test", tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			_, err = wr.Identify(t.Context())
			if tt.prepare {
				if err != nil {
					t.Fatalf("Identify: got %v, want nil", err)
				}
				err = wr.PrepareSnapshot(t.Context(), writer.Set{})
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `redis writer "redis:test": `) {
				t.Fatalf("got %v, want an error naming the writer with %q", err, tt.want)
			}
			t.Log(err)
			if errors.Is(err, writer.ErrRetryable) != tt.retryable {
				t.Errorf("got retryable %v, want %v: %v", errors.Is(err, writer.ErrRetryable), tt.retryable, err)
			}
		})
	}
}

// TestSnapshotUnderLoad makes shadow sets with the real coordinator while
// INCR load runs, starts a second Redis on a copy of each set's files, and
// checks every counter against what the load saw: at least the value
// acknowledged before Create began, at most the last one sent when it
// returned.
func TestSnapshotUnderLoad(t *testing.T) {
	for _, fsync := range []string{"", "always", "everysec", "no"} {
		aof := fsync != ""
		opts := []testenv.RedisOption{testenv.RedisAppendOnly(aof)}
		if aof {
			// The RDB file is saved too, as with both turned on.
			opts = append(opts, testenv.RedisConfig("appendfsync "+fsync, "save 3600 1"))
		}
		t.Run(fmt.Sprintf("btrfs/appendonly=%v/appendfsync=%s", aof, fsync), func(t *testing.T) {
			fsys := testenv.Btrfs(t)
			snapshotUnderLoad(t, btrfs.New(), fsys.Subvolume(t, "redis"), opts...)
		})
		// The append-only data needs an atomic copy, which the live
		// provider cannot make: the writer copies it itself.
		t.Run(fmt.Sprintf("ext4-live/appendonly=%v/appendfsync=%s", aof, fsync), func(t *testing.T) {
			fsys := testenv.Ext4(t)
			set := snapshotUnderLoad(t, live.New(), filepath.Join(fsys.Mount, "redis"), opts...)
			if own := set.OwnCopies; aof != (len(own) == 1 && own[0] == "redis:test/"+componentAOF) {
				t.Errorf("set copied by the writer: %v (appendonly %v)", own, aof)
			}
		})
	}
}

func snapshotUnderLoad(t *testing.T, prov provider.Provider, dir string, opts ...testenv.RedisOption) *shadow.Set {
	srv := testenv.StartRedis(t, dir, opts...)
	load := testenv.StartRedisLoad(t, srv, 20)
	// A stale RDB file from before the set: a copy of it would fail.
	srv.Do(t, "SAVE")
	for range 100 {
		if err := load.WaitProgress(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// Saves of 200 ms (10 ms a key): a copy made before the writer's save
	// is complete would hold the stale file.
	srv.Do(t, "CONFIG", "SET", "rdb-key-save-delay", "10000")
	wr := newWriter(t, srv, nil)
	coord := newCoordinator(t, prov)

	acked := load.Acked()
	set, err := coord.Create(t.Context(), []writer.Writer{wr}, nil)
	issued := load.Issued()
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := coord.Delete(context.Background(), set.ID); err != nil {
			t.Errorf("delete set %s: %v", set.ID, err)
		}
	})
	if err := load.WaitProgress(10 * time.Second); err != nil {
		t.Fatalf("load after Create: %v", err)
	}
	if len(set.Writers) != 1 || set.Writers[0].Consistency != shadow.Application {
		t.Fatalf("Create: got writers %+v, want one with application consistency", set.Writers)
	}
	md, rep := set.Writers[0].Metadata, set.Writers[0].Report
	if rep.Positions["keys"] != "20" {
		t.Errorf("report: got positions %v, want keys 20", rep.Positions)
	}

	// The copy is made while the load goes on: the shadow must not move.
	copyDir := t.TempDir()
	for _, c := range md.Components {
		for _, p := range c.Paths {
			snap := shadowPath(t, set, p)
			for _, c := range rep.Copies {
				if c.Path == p {
					snap = c.Source // the writer's own copy
				}
			}
			if _, err := os.Lstat(snap); errors.Is(err, fs.ErrNotExist) {
				continue // the RDB file, with AOF on and no save yet
			}
			copyData(t, snap, filepath.Join(copyDir, filepath.Base(p)))
		}
	}
	if rdb := filepath.Join(copyDir, "dump.rdb"); fileExists(rdb) {
		testenv.NeedCommand(t, "redis-check-rdb")
		if out, err := exec.Command("redis-check-rdb", rdb).CombinedOutput(); err != nil {
			t.Errorf("redis-check-rdb on the copy: %v\n%s", err, out)
		}
	}
	if len(rep.Copies) > 0 {
		// The writer's own copy is whole, command by command: redis-check-aof
		// passes and Redis loads it without aof-load-truncated.
		testenv.NeedCommand(t, "redis-check-aof")
		manifests, _ := filepath.Glob(filepath.Join(copyDir, "appendonlydir", "*.manifest"))
		if len(manifests) != 1 {
			t.Fatalf("manifest of the copy: %v", manifests)
		}
		if out, err := exec.Command("redis-check-aof", manifests[0]).CombinedOutput(); err != nil {
			t.Errorf("redis-check-aof on the writer's own copy: %v\n%s", err, out)
		}
		opts = append(opts, testenv.RedisConfig("aof-load-truncated no"))
	}
	second := testenv.StartRedis(t, copyDir, opts...)
	if n := second.KeyCount(t); n != 20 {
		t.Errorf("Redis on the copy: got %d keys, want 20", n)
	}
	for i, v := range second.Values(t, load.Keys()) {
		if v < acked[i] || v > issued[i] {
			t.Errorf("Redis on the copy: key %s = %d, want between %d (acknowledged before Create) and %d (sent when it returned)",
				load.Keys()[i], v, acked[i], issued[i])
		}
	}
	if err := load.Stop(); err != nil {
		t.Errorf("load: %v", err)
	}
	t.Logf("provider %s: key 0 acknowledged %d before Create, sent %d when it returned; freeze window %v",
		prov.Name(), acked[0], issued[0], set.FreezeWindow())
	return set
}

// TestRestore backs up Redis, changes the data, and restores in place:
// PreRestore must stop Redis without saving (the live files, moved aside,
// are those of the backup, not of the changed data) and PostRestore must run
// start= and wait for the server.
func TestRestore(t *testing.T) {
	for _, aof := range []bool{false, true} {
		t.Run(fmt.Sprintf("appendonly=%v", aof), func(t *testing.T) {
			dir := t.TempDir()
			// Save points on: a plain SHUTDOWN would write an RDB file.
			srv := testenv.StartRedis(t, dir, testenv.RedisAppendOnly(aof), testenv.RedisPassword("pw"), testenv.RedisConfig("save 3600 1"))
			load := testenv.StartRedisLoad(t, srv, 10)
			if err := load.Stop(); err != nil {
				t.Fatal(err)
			}
			want := load.Acked()

			marker := filepath.Join(t.TempDir(), "started")
			wr := newWriter(t, srv, map[string]string{"start": "echo $REDISCLI_AUTH > " + marker})
			md, err := wr.Identify(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := wr.PrepareSnapshot(t.Context(), writer.Set{}); err != nil {
				t.Fatal(err)
			}
			rep, err := wr.PostSnapshot(t.Context(), writer.Set{})
			if err != nil {
				t.Fatal(err)
			}
			backup := t.TempDir()
			copyData(t, dir, backup) // no writes now: a plain copy is the backup
			rdbBefore := readOrNil(t, filepath.Join(dir, "dump.rdb"))

			// Changes after the backup, which the restore must undo.
			for _, k := range load.Keys() {
				srv.Do(t, "INCRBY", k, "1000")
			}
			srv.Do(t, "SET", "after-backup", "1")

			var live []string
			for _, c := range md.Components {
				for _, p := range c.Paths {
					if _, err := os.Lstat(p); err == nil {
						live = append(live, p)
					}
				}
			}
			if err := wr.PreRestore(t.Context(), writer.Restore{Metadata: md}); err != nil {
				t.Fatalf("PreRestore: %v", err)
			}
			waitExited(t, srv.Server)
			var aside []string
			for _, m := range wr.MovedAside() {
				aside = append(aside, m.To)
			}
			writertest.CleanAside(t, wr.MovedAside()...)
			if len(aside) != len(live) {
				t.Errorf("PreRestore moved aside %v, want the live files %v", aside, live)
			}
			for _, p := range aside {
				if filepath.Base(p) == "dump.rdb" && !bytes.Equal(readOrNil(t, p), rdbBefore) {
					t.Errorf("PreRestore: %s differs from dump.rdb before the stop; Redis saved on shutdown", p)
				}
			}
			if _, err := os.Lstat(filepath.Join(dir, "dump.rdb")); err == nil {
				t.Error("PreRestore: dump.rdb exists after the stop; Redis saved on shutdown")
			}

			copyData(t, backup, dir) // the restore
			errc := make(chan error, 1)
			go func() { errc <- wr.PostRestore(t.Context(), writer.Restore{Metadata: md, Report: rep}) }()
			waitFile(t, marker)
			if got := strings.TrimSpace(string(readOrNil(t, marker))); got != "pw" {
				t.Errorf("start= command: got REDISCLI_AUTH %q, want the password", got)
			}
			srv.Start(t) // what start= would do
			if err := <-errc; err != nil {
				t.Fatalf("PostRestore: %v", err)
			}
			if got, want := strconv.FormatInt(srv.KeyCount(t), 10), rep.Positions["keys"]; got != want {
				t.Errorf("after restore: got %s keys, want %s as recorded at PostSnapshot", got, want)
			}
			for i, v := range srv.Values(t, load.Keys()) {
				if v != want[i] {
					t.Errorf("after restore: key %s = %d, want %d", load.Keys()[i], v, want[i])
				}
			}
		})
	}
}

// TestRestoreEdges: a restore to a target touches nothing, an in-place one
// without start= is refused before Redis is stopped, and a server that is
// down already needs no stopping.
func TestRestoreEdges(t *testing.T) {
	srv := testenv.StartRedis(t, t.TempDir())
	wr := newWriter(t, srv, nil) // no start=: in place it would refuse
	r := writer.Restore{Target: t.TempDir()}
	if err := wr.PreRestore(t.Context(), r); err != nil {
		t.Errorf("PreRestore to a target: got %v, want nil", err)
	}
	if err := wr.PostRestore(t.Context(), r); err != nil {
		t.Errorf("PostRestore to a target: got %v, want nil", err)
	}
	srv.Do(t, "PING") // still running

	err := wr.PreRestore(t.Context(), writer.Restore{})
	if err == nil || !strings.Contains(err.Error(), "set start=COMMAND or service=UNIT") {
		t.Errorf("PreRestore in place without start=: got %v, want a refusal naming start= and service=", err)
	}
	srv.Do(t, "PING") // left running
	if err := wr.PostRestore(t.Context(), writer.Restore{More: true}); err != nil {
		t.Errorf("PostRestore with more to come: got %v, want nil", err)
	}

	// A server that is down already (crashed) is stopped enough.
	srv.Server.Kill()
	down := newWriter(t, srv, map[string]string{"start": "true"})
	if err := down.PreRestore(t.Context(), writer.Restore{}); err != nil {
		t.Errorf("PreRestore of a server that is down: got %v, want nil", err)
	}
}

// TestRestoreKeyCount checks PostRestore's loose comparison with the key
// count PostSnapshot recorded: only a Redis that comes back empty from a
// backup with keys fails the restore.
func TestRestoreKeyCount(t *testing.T) {
	tests := []struct {
		name     string
		recorded map[string]string // the backup's positions
		restore  bool              // put the backup's files back
		want     string            // error text; empty for success
	}{
		{"files restored", map[string]string{"keys": "10"}, true, ""},
		{"fewer keys than recorded", map[string]string{"keys": "50"}, true, ""},
		{"empty backup", map[string]string{"keys": "0"}, false, ""},
		{"no count recorded", nil, false, ""},
		{"files not restored", map[string]string{"keys": "10"}, false,
			`post-restore: Redis at %s started with no keys, but the backup held 10, so it did not load the restored files`},
		{"count not a number", map[string]string{"keys": "many"}, true, `the backup recorded keys="many", not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			srv := testenv.StartRedis(t, dir)
			populate(t, srv, 10)
			srv.Do(t, "SAVE")
			backup := t.TempDir()
			copyData(t, dir, backup)

			wr := newWriter(t, srv, map[string]string{"start": "true"})
			md, err := wr.Identify(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := wr.PreRestore(t.Context(), writer.Restore{Metadata: md}); err != nil {
				t.Fatalf("PreRestore: %v", err)
			}
			writertest.CleanAside(t, wr.MovedAside()...)
			waitExited(t, srv.Server)
			if tt.restore {
				copyData(t, backup, dir)
			}
			srv.Start(t) // what start= would do
			r := writer.Restore{Metadata: md, Report: writer.Report{Positions: tt.recorded}}
			err = wr.PostRestore(t.Context(), r)
			if tt.want == "" {
				if err != nil {
					t.Errorf("PostRestore with positions %v, %d keys back: got %v, want nil", tt.recorded, srv.KeyCount(t), err)
				}
				return
			}
			want := tt.want
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, srv.Addr)
			}
			if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), `redis writer "redis:test": `) {
				t.Errorf("PostRestore with positions %v, %d keys back: got %v, want an error naming the writer with %q", tt.recorded, srv.KeyCount(t), err, want)
			}
			if errors.Is(err, writer.ErrRetryable) {
				t.Errorf("PostRestore: got a retryable error, want a final one: %v", err)
			}
		})
	}
}

// TestRestoreService checks that service= stops and starts the unit with
// systemctl, here a stand-in on PATH that stops Redis as systemd would.
func TestRestoreService(t *testing.T) {
	srv := testenv.StartRedis(t, t.TempDir())
	bin := t.TempDir()
	log := filepath.Join(bin, "log")
	// The service manager umbra finds (systemctl under systemd, else
	// service(8)) is faked: it logs its calls and stops the server.
	for _, name := range []string{"systemctl", "service"} {
		script := fmt.Sprintf("#!/bin/sh\necho %s \"$@\" >> %s\ncase \"$*\" in *stop*) kill -TERM %d;; esac\n", name, log, srv.Server.Pid())
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	wr := newWriter(t, srv, map[string]string{"service": "redis-test.service"})
	if err := wr.PreRestore(t.Context(), writer.Restore{}); err != nil {
		t.Fatalf("PreRestore: %v", err)
	}
	waitExited(t, srv.Server)
	srv.Start(t)
	if err := wr.PostRestore(t.Context(), writer.Restore{}); err != nil {
		t.Fatalf("PostRestore: %v", err)
	}
	var want string
	for _, action := range []string{"stop", "start"} {
		name, args := writer.ServiceCommand(action, "redis-test.service")
		want += name + " " + strings.Join(args, " ") + "\n"
	}
	if got := string(readOrNil(t, log)); got != want {
		t.Errorf("service manager calls: got %q, want %q", got, want)
	}
}

func newWriter(t *testing.T, srv *testenv.Redis, extra map[string]string) *Writer {
	t.Helper()
	opts := map[string]string{"addr": srv.Addr}
	if srv.Password != "" {
		opts["password"] = srv.Password
	}
	for k, v := range extra {
		opts[k] = v
	}
	wr, err := New("redis:test", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wr.Abort(context.Background(), writer.Set{}) })
	return wr
}

func newCoordinator(t *testing.T, prov provider.Provider) *shadow.Coordinator {
	t.Helper()
	store, err := shadow.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return shadow.New([]provider.Provider{prov}, store, shadow.Options{})
}

// shadowPath is where the set holds the live path p.
func shadowPath(t *testing.T, set *shadow.Set, p string) string {
	t.Helper()
	for _, v := range set.Volumes() {
		if rel, err := filepath.Rel(v.Source, p); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(v.Snapshot, rel)
		}
	}
	t.Fatalf("no shadow of %s in set %s: %+v", p, set.ID, set.Volumes())
	return ""
}

// populate sets n keys k0… in one MSET.
func populate(t *testing.T, srv *testenv.Redis, n int) {
	t.Helper()
	args := []any{"MSET"}
	for i := range n {
		args = append(args, fmt.Sprintf("k%d", i), strings.Repeat("v", 100))
	}
	srv.Do(t, args...)
}

func infoInt(t *testing.T, srv *testenv.Redis, field string) int64 {
	t.Helper()
	info, _ := srv.Do(t, "INFO", "persistence").(string)
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO %s: %v", field, err)
			}
			return n
		}
	}
	t.Fatalf("INFO persistence has no %s", field)
	return 0
}

// copyData copies the file or directory src to dst, which for a directory
// may exist; existing files are replaced.
func copyData(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

func readOrNil(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return b
}

func waitExited(t *testing.T, s *testenv.Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("%s still running 10s after it no longer accepts connections", s.Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written within 10s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
