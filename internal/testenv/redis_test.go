package testenv

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRedis(t *testing.T) {
	var addr string
	t.Run("serve", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "redis")
		r := StartRedis(t, dir, RedisPassword("s3cret"), RedisAppendOnly(true))
		addr = r.Addr
		if got := r.Do(t, "CONFIG", "GET", "dir").([]any); len(got) != 2 || got[1] != dir {
			t.Errorf("CONFIG GET dir: got %v, want [dir %s]", got, dir)
		}
		if _, err := os.Stat(filepath.Join(dir, "appendonlydir")); err != nil {
			t.Errorf("RedisAppendOnly(true): %v, want an appendonlydir", err)
		}
		// The password is required.
		anon := NewRedisClient(r.Addr, "")
		defer anon.Close()
		if err := anon.Ping(t.Context()).Err(); err == nil {
			t.Error("PING without the password: got nil, want NOAUTH")
		}

		load := StartRedisLoad(t, r, 5)
		if err := load.WaitProgress(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		before := load.Acked()
		vals := r.Values(t, load.Keys())
		after := load.Issued()
		for i, v := range vals {
			if v < before[i] || v > after[i] {
				t.Errorf("key %s: got %d, want between acknowledged %d and issued %d", load.Keys()[i], v, before[i], after[i])
			}
		}
		if err := load.Stop(); err != nil {
			t.Errorf("load: %v", err)
		}
		if got := r.KeyCount(t); got != 5 {
			t.Errorf("KeyCount: got %d, want 5", got)
		}

		// Stopped and started again on the same port and data.
		final := load.Acked()
		r.Server.Stop(t)
		r.Start(t)
		for i, v := range r.Values(t, load.Keys()) {
			if v != final[i] {
				t.Errorf("after restart: key %s: got %d, want %d", load.Keys()[i], v, final[i])
			}
		}
	})
	if addr == "" {
		return // skipped
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = conn.Close()
		t.Errorf("redis-server at %s still accepts connections after its test ended", addr)
	}
}

func TestRedisSkipsWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var skipped bool
	t.Run("inner", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		StartRedis(t, t.TempDir())
	})
	if !skipped {
		t.Error("StartRedis without redis-server: test went on, want it skipped")
	}
}
