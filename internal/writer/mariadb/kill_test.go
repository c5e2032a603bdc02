package mariadb

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
)

// holdEnv carries a writer's options, as JSON, to a re-executed test binary
// that freezes the server and waits to be killed.
const holdEnv = "UMBRA_MARIADB_HOLD"

func TestMain(m *testing.M) {
	if opts := os.Getenv(holdEnv); opts != "" {
		os.Exit(holdFreeze(opts))
	}
	os.Exit(m.Run())
}

// holdFreeze freezes the server, says "frozen" and waits forever, as umbra
// does in the freeze window.
func holdFreeze(optsJSON string) int {
	var opts map[string]string
	if err := json.Unmarshal([]byte(optsJSON), &opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	wr, err := New("mariadb:held", opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	set := writer.Set{ID: "held", Type: writer.Full}
	if err := wr.PrepareSnapshot(ctx, set); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := wr.Freeze(ctx, set); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("frozen")
	select {}
}

// TestKilledWhileFrozen kills (SIGKILL) a process that holds the freeze:
// the kernel closes its connection, the server ends its BACKUP STAGE, and
// the load commits again within a second.
func TestKilledWhileFrozen(t *testing.T) {
	m := testenv.StartMariaDB(t, t.TempDir())
	load := m.StartTransferLoad(t, 4)
	opts, err := json.Marshal(map[string]string{"socket": m.Socket, "password": m.RootPassword})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+string(opts))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "frozen\n" {
		t.Fatalf("helper: got %q, %v; want frozen", line, err)
	}
	frozenAt := time.Now()
	time.Sleep(300 * time.Millisecond)
	for _, a := range load.Acks() {
		if a.Sent.After(frozenAt) {
			t.Fatalf("transfer %d committed %v after the helper froze the server", a.ID, a.At.Sub(frozenAt))
		}
	}

	killAt := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := load.WaitProgress(time.Second); err != nil {
		t.Fatalf("after kill -9 of the frozen process: %v", err)
	}
	for _, a := range load.Acks() {
		if a.At.After(killAt) {
			t.Logf("load committed again %v after kill -9", a.At.Sub(killAt))
			if d := a.At.Sub(killAt); d > time.Second {
				t.Errorf("load committed again %v after kill -9, want within 1s", d)
			}
			break
		}
	}
	load.Stop()
	assertNoBackupStage(t, m)
}
