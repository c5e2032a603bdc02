package mariadb

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/shadow/shadowtest"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/writertest"
)

// TestRestore restores a shadow set made under the transfer load into the
// live server's place: PreRestore stops the server and moves its data
// directory aside, the snapshot's files go back (as a restore would write
// them, excludes left out), PostRestore starts the server, which must
// finish InnoDB recovery and hold exactly the transfers of the set.
func TestRestore(t *testing.T) {
	_, m, coord := onBtrfs(t)
	load := m.StartTransferLoad(t, 4)
	time.Sleep(200 * time.Millisecond)
	tw := &timed{Writer: newWriter(t, m, nil)}
	set := createSet(t, coord, tw)
	time.Sleep(200 * time.Millisecond)
	acks := load.Stop()
	md := set.Writers[0].Metadata
	pos := set.Writers[0].Report.Positions
	ctx := t.Context()

	t.Run("no start option", func(t *testing.T) {
		wr := newWriter(t, m, nil)
		for _, fn := range []func(writer.Restore) error{
			func(r writer.Restore) error { return wr.PreRestore(ctx, r) },
			func(r writer.Restore) error { return wr.PostRestore(ctx, r) },
		} {
			err := fn(writer.Restore{Metadata: md})
			if err == nil || !strings.Contains(err.Error(), "set start=COMMAND or service=UNIT") {
				t.Errorf("got %v, want an error naming start= and service=", err)
			}
		}
		if err := m.DB(t).PingContext(ctx); err != nil {
			t.Errorf("server after a refused restore: %v", err)
		}
	})

	wr := newWriter(t, m, map[string]string{"start": m.StartCommand()})
	t.Run("server elsewhere", func(t *testing.T) {
		// The writer's socket leads nowhere, but a server runs on the data
		// directory: PreRestore must not move it away.
		lost := newWriter(t, m, map[string]string{"start": m.StartCommand(), "socket": filepath.Join(t.TempDir(), "none.sock")})
		err := lost.PreRestore(ctx, writer.Restore{Metadata: md})
		if err == nil || !strings.Contains(err.Error(), "still uses "+m.DataDir) {
			t.Errorf("PreRestore with the server running elsewhere: got %v, want a refusal naming %s", err, m.DataDir)
		}
		if aside := asides(t, m.DataDir); len(aside) != 0 {
			t.Errorf("PreRestore moved %q aside under a running server", aside)
		}
	})
	t.Run("target", func(t *testing.T) {
		r := writer.Restore{Metadata: md, Target: t.TempDir()}
		if err := wr.PreRestore(ctx, r); err != nil {
			t.Fatalf("PreRestore to a target: %v", err)
		}
		if err := wr.PostRestore(ctx, r); err != nil {
			t.Fatalf("PostRestore to a target: %v", err)
		}
		if err := m.DB(t).PingContext(ctx); err != nil {
			t.Errorf("server after a restore to a target: %v", err)
		}
		if aside := asides(t, m.DataDir); len(aside) != 0 {
			t.Errorf("a restore to a target moved %q aside", aside)
		}
	})

	r := writer.Restore{Metadata: md, Report: set.Writers[0].Report}
	if err := wr.PreRestore(ctx, r); err != nil {
		t.Fatalf("PreRestore: %v", err)
	}
	waitFor(t, "the server to exit", m.Server.Exited)
	aside := asides(t, m.DataDir)
	entries, err := os.ReadDir(m.DataDir)
	if len(aside) != 1 || err != nil || len(entries) != 0 {
		t.Fatalf("after PreRestore: got aside %q, live data directory %d entries (%v); want one aside and an empty data directory", aside, len(entries), err)
	}

	// The restore writes the components back where they were.
	if err := os.Remove(m.DataDir); err != nil {
		t.Fatal(err)
	}
	shadowtest.CopyComponents(t, set, tw.Name(), func(p string) string { return p })
	if _, err := os.Stat(filepath.Join(m.DataDir, "ibtmp1")); err == nil {
		t.Error("the restore wrote ibtmp1, which the data directory component excludes")
	}

	if err := wr.PostRestore(ctx, writer.Restore{Metadata: md, Report: r.Report, More: true}); err != nil {
		t.Fatalf("PostRestore with more to come: %v", err)
	}
	if _, err := os.Stat(m.Socket); err == nil {
		t.Fatal("PostRestore with more to come started the server")
	}
	start := time.Now()
	if err := wr.PostRestore(ctx, r); err != nil {
		t.Fatalf("PostRestore: %v", err)
	}
	t.Logf("PostRestore: server up, InnoDB recovered, in %v", time.Since(start))

	led, err := m.Ledger(t)
	if err != nil {
		t.Fatalf("restored server: %v", err)
	}
	checkAcks(t, acks, led, tw)
	var gtid string
	if err := m.DB(t).QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	if gtid != pos[PosGTID] {
		t.Errorf("restored @@gtid_binlog_pos: got %q, want the recorded %q", gtid, pos[PosGTID])
	}
}

// asides lists where PreRestore moved dir (writer.MoveAside's layout,
// TOP/.umbra-before-restore-TIME/DIR), and removes them when the test ends.
func asides(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		m, _ := filepath.Glob(filepath.Join(d, writer.AsideDirPrefix+"*", dir))
		for _, p := range m {
			writertest.CleanAside(t, writer.Moved{From: dir, To: p})
		}
		found = append(found, m...)
		if d == "/" || d == "." {
			return found
		}
	}
}
