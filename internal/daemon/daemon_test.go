package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/backend/local"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/repoopen"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/testenv"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/sqlite"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestDaemonConcurrency runs a daemon in-process (under the race detector
// in CI): a job scheduled every second and a second one sharing its writer,
// started through the API while the API, the metrics and reloads are
// hammered. The two never run at once, every run ends ok, and Run returns
// once stopped.
func TestDaemonConcurrency(t *testing.T) {
	testenv.NeedCommand(t, "sqlite3")
	dir := t.TempDir()
	db := filepath.Join(dir, "a.db")
	if out, err := exec.Command("sqlite3", db, "CREATE TABLE t (n); INSERT INTO t VALUES (1);").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	be, err := local.Create(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	repo, err := repository.Init(context.Background(), be, "pw", repository.Options{Config: repository.DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	repo.Close()
	text := fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = %q
[[job]]
name     = "every"
schedule = "*:*:0/1"
[[job]]
name = "asked"
`, db)
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	reg := job.Registry{
		Writers:   map[string]job.WriterFactory{"sqlite": func(n string, o map[string]string) (writer.Writer, error) { return sqlite.New(n, o) }},
		Providers: func() []provider.Provider { return []provider.Provider{live.New()} },
	}
	state := filepath.Join(dir, "state")
	d, err := New(Options{
		Load: func() (*config.Config, error) { return config.Parse("t", text) },
		Env: func(cfg *config.Config) *job.Env {
			return &job.Env{Registry: reg, Config: cfg, StateDir: state, Log: log, WaitBusy: time.Minute}
		},
		Open: func(ctx context.Context, _ *config.Config) (*repository.Repository, func(), error) {
			return (&repoopen.Opener{Location: filepath.Join(dir, "repo"), Password: "pw"}).Open(ctx)
		},
		StateDir: state, Log: log, Version: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		_ = d.Run(ctx)
		close(stopped)
	}()
	h := d.Handler()
	var wg sync.WaitGroup
	hammer, stopHammer := context.WithCancel(context.Background())
	for _, path := range []string{"/api/v1/jobs", "/api/v1/runs?limit=0", "/metrics", "/api/v1/writers", "/api/v1/status"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for hammer.Err() == nil {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				if rec.Code != http.StatusOK {
					t.Errorf("GET %s: %d %s", path, rec.Code, rec.Body)
					return
				}
			}
		}()
	}
	asked := 0
	deadline := time.Now().Add(2 * time.Minute)
	for {
		runs := d.Runs("", 0)
		every := slices.IndexFunc(runs, func(r Run) bool { return r.Job == "every" && r.Status != StatusRunning })
		if asked < 3 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/jobs/asked/run", nil))
			if rec.Code == http.StatusAccepted {
				asked++
			}
			if err := d.Reload(); err != nil {
				t.Fatal(err)
			}
		}
		ended := 0
		for _, r := range runs {
			if r.Status != StatusRunning {
				ended++
			}
		}
		if asked == 3 && every >= 0 && ended >= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 minutes: %d runs asked, runs %+v", asked, runs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopHammer()
	wg.Wait()
	cancel()
	<-stopped

	runs := d.Runs("", 0)
	slices.SortFunc(runs, func(a, b Run) int { return a.Started.Compare(b.Started) })
	for i, r := range runs {
		if r.Status != StatusOK && r.Status != StatusAborted {
			t.Errorf("run %s of %s: %s: %s", r.ID, r.Job, r.Status, r.Error)
		}
		if i > 0 && r.Started.Before(runs[i-1].Ended) {
			t.Errorf("run %s of %s started before run %s of %s ended: they share sqlite:a", r.ID, r.Job, runs[i-1].ID, runs[i-1].Job)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}
