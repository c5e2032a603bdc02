package testenv

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestMariaDBTransferLoad runs the transfer load, stops the server cleanly,
// starts a second server on a copy of the data directory and checks that
// the copy holds every acknowledged transfer and a balanced ledger.
func TestMariaDBTransferLoad(t *testing.T) {
	m := StartMariaDB(t, t.TempDir())
	load := m.StartTransferLoad(t, 4)
	time.Sleep(300 * time.Millisecond)
	acks := load.Stop()
	t.Logf("%d transfers in 300ms", len(acks))
	if len(acks) < 10 {
		t.Fatalf("got %d transfers in 300ms, want at least 10", len(acks))
	}
	led, err := m.Ledger(t)
	if err != nil {
		t.Fatalf("Ledger: %v", err)
	}
	for _, a := range acks {
		if !led.Transfers[a.ID] {
			t.Fatalf("acknowledged transfer %d is missing", a.ID)
		}
	}

	m.Server.Stop(t)
	copyDir := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", m.DataDir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	c := m.StartCopy(t, copyDir)
	got, err := c.Ledger(t)
	if err != nil {
		t.Fatalf("Ledger of the copy: %v", err)
	}
	if len(got.Transfers) != len(led.Transfers) {
		t.Errorf("copy holds %d transfers, want %d", len(got.Transfers), len(led.Transfers))
	}
	// The load goes on where the copy left off.
	more := c.StartTransferLoad(t, 2)
	if err := more.WaitProgress(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	more.Stop()
	if _, err := c.Ledger(t); err != nil {
		t.Errorf("Ledger after more load: %v", err)
	}
}

// TestMariaDBStartCommand restarts a server with StartCommand, as a
// writer's start= option would, and checks that the test's clean-up stops
// that server too.
func TestMariaDBStartCommand(t *testing.T) {
	var config string
	t.Run("restart", func(t *testing.T) {
		m := StartMariaDB(t, t.TempDir())
		config = m.Config
		m.Server.Stop(t)
		if out, err := exec.Command("sh", "-c", m.StartCommand()).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", m.StartCommand(), err, out)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			err := m.DB(t).PingContext(t.Context())
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restarted server not ready: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := m.Ledger(t); err == nil {
			t.Error("Ledger without the load's tables: got nil, want an error")
		}
	})
	if config == "" {
		return
	}
	if b, err := exec.Command("pgrep", "-f", config).Output(); err == nil {
		t.Errorf("a server with option file %s still runs after its test's clean-up: pid %s", config, b)
	}
}
