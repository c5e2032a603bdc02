package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestPartialBackup: one writer that cannot take part (Redis is down) does
// not cost the others their backup (issue 11): the SQLite writer's data is
// stored, Redis is recorded as failed with its reason, umbra exits 4 and
// says so last; a restore restores SQLite and says why Redis is not
// restored; "latest --writer redis" does not pick the partial backup. With
// --strict the whole backup fails and nothing is stored.
func TestPartialBackup(t *testing.T) {
	db := filepath.Join(testenv.Btrfs(t).Subvolume(t, "app"), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	down := fmt.Sprintf("redis:addr=127.0.0.1:%d", testenv.FreePort(t))
	repo := newRepoDir(t)
	state := t.TempDir()
	args := []string{"backup", "--retries", "0", "--writer", "sqlite:path=" + db, "--writer", down}

	res := umbraRun(t, state, repo.environ(), append([]string{"--json"}, args...)...)
	lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
	if res.code != 4 || !strings.Contains(lines[len(lines)-1], "partial") || !strings.Contains(lines[len(lines)-1], "redis:default") {
		t.Fatalf("backup with Redis down: exit %d, last line %q; want 4 and a last line saying the backup is partial without redis:default\n%s",
			res.code, lines[len(lines)-1], res.stderr)
	}
	// Said as it happens, without -v (issue 11: retries and failures
	// were silent).
	if !strings.Contains(res.stderr, "backing up the others without it") {
		t.Errorf("the writer left out was not announced as it happened:\n%s", res.stderr)
	}
	var b struct {
		ID  string `json:"id"`
		App struct {
			Writers []struct {
				Name        string `json:"name"`
				Consistency string `json:"consistency"`
				Failed      bool   `json:"failed"`
				Error       string `json:"error"`
			} `json:"writers"`
		} `json:"app"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, w := range b.App.Writers {
		got[w.Name] = w.Consistency
		if w.Failed {
			got[w.Name] = "failed: " + w.Error
		}
	}
	if len(got) != 2 || !strings.HasPrefix(got["redis:default"], "failed: ") || len(got["redis:default"]) < len("failed: x") {
		t.Errorf("writers recorded: %v; want SQLite and Redis failed with its reason", got)
	}
	for name, c := range got {
		if name != "redis:default" && c != "application" {
			t.Errorf("%s recorded %s beside the failed writer, want application", name, c)
		}
	}

	target := t.TempDir()
	rres := umbraRun(t, state, repo.environ(), "restore", b.ID, "--target", target)
	if rres.code != 0 || !strings.Contains(rres.stdout, "Not restored redis:default") {
		t.Errorf("restore of the partial backup: exit %d\n%s%s", rres.code, rres.stdout, rres.stderr)
	}
	if _, err := os.Stat(filepath.Join(target, db)); err != nil {
		t.Errorf("the SQLite database was not restored: %v", err)
	}
	if out := umbraRun(t, state, repo.environ(), "restore", "latest", "--writer", "redis:default", "--target", t.TempDir()); out.code == 0 ||
		!strings.Contains(out.stderr, "no backup holds writer redis:default") {
		t.Errorf("restore latest --writer redis:default: exit %d %s; want a refusal: no backup holds it", out.code, out.stderr)
	}

	res = umbraRun(t, state, repo.environ(), append(args, "--strict")...)
	if res.code != 1 || !strings.Contains(res.stderr, "redis:default") {
		t.Errorf("backup --strict with Redis down: exit %d, %s; want 1 naming the writer", res.code, res.stderr)
	}
	var list []json.RawMessage
	if err := json.Unmarshal([]byte(umbraRun(t, state, repo.environ(), "--json", "backups").stdout), &list); err != nil || len(list) != 1 {
		t.Errorf("after the strict failure: %d backups (%v), want the partial one only", len(list), err)
	}
}

// TestWritersShowsMisconfigured: a writer whose password_file is missing is
// listed as misconfigured, naming the file, beside the others (issue 11:
// one missing password_file hid every writer).
func TestWritersShowsMisconfigured(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	cfg := filepath.Join(t.TempDir(), "umbra.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[[writer]]
type = "sqlite"
path = %q

[[writer]]
type = "postgres"
name = "main"
password_file = "/nonexistent/pg.pass"
`, db)), 0o600); err != nil {
		t.Fatal(err)
	}
	res := umbraRun(t, t.TempDir(), nil, "--config", cfg, "--json", "writers")
	var views []writerView
	if err := json.Unmarshal([]byte(res.stdout), &views); err != nil {
		t.Fatalf("writers: exit %d: %v\n%s", res.code, err, res.stderr)
	}
	states := map[string]string{}
	for _, v := range views {
		states[v.Name] = v.State + ": " + v.Error
	}
	if len(views) != 2 || !strings.HasPrefix(states["postgres:main"], "misconfigured: ") ||
		!strings.Contains(states["postgres:main"], "/nonexistent/pg.pass") {
		t.Errorf("writers with one missing password_file: %v; want both, postgres:main misconfigured naming the file", states)
	}
}

// TestRestoreGoesOnAfterAWriterFails: in place, a writer that cannot be
// brought back (Redis, whose start command fails) does not keep the others
// down: SQLite, after it in the backup, is restored; the summary names
// each; umbra exits 1 (issue 11).
func TestRestoreGoesOnAfterAWriterFails(t *testing.T) {
	fs := testenv.Btrfs(t)
	r := testenv.StartRedis(t, fs.Subvolume(t, "redis"))
	r.ShutdownAtCleanup(t)
	db := filepath.Join(fs.Subvolume(t, "app"), "app.db")
	testenv.StartSQLiteLoad(t, db).Stop()
	repo := newRepoDir(t)
	state := t.TempDir()
	mustAppBackup(t, state, repo.environ(), "--writer", "redis:addr="+r.Addr+",start=false", "--writer", "sqlite:path="+db)
	if err := os.Remove(db); err != nil {
		t.Fatal(err)
	}
	res := umbraRun(t, state, repo.environ(), "restore", "latest", "--force")
	if res.code != 1 || !strings.Contains(res.stdout, "FAILED redis:default") || !strings.Contains(res.stdout, "Restored sqlite:") ||
		!strings.Contains(res.stderr, "1 of 2 writers could not be restored") {
		t.Errorf("restore with Redis unable to start: exit %d\n%s%s\nwant 1, Redis failed, SQLite restored, and a count", res.code, res.stdout, res.stderr)
	}
	if _, err := os.Stat(db); err != nil {
		t.Errorf("SQLite was not restored after Redis failed: %v", err)
	}
}

// TestWritersShowsNotReady: umbra writers runs the checks a backup starts
// with, so a writer certain to fail the next backup (a role that may log in
// and read the settings but lacks REPLICATION) is "not ready" with the
// reason, not "stable" (issue 11); a role with what it needs is stable.
func TestWritersShowsNotReady(t *testing.T) {
	pg := testenv.InitPostgres(t, filepath.Join(t.TempDir(), "data"), testenv.PostgresOptions{})
	pg.Exec(t, "CREATE ROLE weak LOGIN")
	pg.Exec(t, "GRANT pg_read_all_settings TO weak")
	spec := pg.Spec("main")
	weak := strings.Replace(pg.Spec("weak"), "user=postgres", "user=weak", 1)
	res := umbraRun(t, t.TempDir(), nil, "--json", "writers", "--writer", spec, "--writer", weak)
	var views []writerView
	if err := json.Unmarshal([]byte(res.stdout), &views); err != nil {
		t.Fatalf("writers: exit %d: %v\n%s", res.code, err, res.stderr)
	}
	states := map[string]string{}
	for _, v := range views {
		states[v.Name] = v.State + ": " + v.Error
	}
	if states["postgres:main"] != "stable: " {
		t.Errorf("postgres:main as a superuser: %q, want stable", states["postgres:main"])
	}
	if got := states["postgres:weak"]; !strings.HasPrefix(got, "not ready: the next backup would fail") || !strings.Contains(got, "REPLICATION") {
		t.Errorf("postgres:weak without REPLICATION: %q, want not ready, naming REPLICATION", got)
	}
}
