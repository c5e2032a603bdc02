package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/umbra-backup/umbra/internal/daemon"
	"github.com/umbra-backup/umbra/internal/schedule"
)

// served is an umbra serve process under test.
type served struct {
	t      *testing.T
	cmd    *exec.Cmd
	socket string
	tcp    string
	client *http.Client

	mu    sync.Mutex
	lines []string
	grew  *sync.Cond
	ended bool
}

// startServe starts umbra serve with the configuration text cfg (its
// [serve] socket is dir/umbra.sock) and waits until it listens.
func startServe(t *testing.T, state string, env []string, cfgPath string, args ...string) *served {
	t.Helper()
	cmd := umbraCmd(t, state, env, append([]string{"--config", cfgPath, "serve"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{t: t, cmd: cmd}
	s.grew = sync.NewCond(&s.mu)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.grew.Broadcast()
			s.mu.Unlock()
		}
		s.mu.Lock()
		s.ended = true
		s.grew.Broadcast()
		s.mu.Unlock()
	}()
	t.Cleanup(func() {
		if t.Failed() {
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			time.Sleep(time.Second)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("umbra serve's log:\n%s", s.log())
		}
	})
	m := s.waitLine(regexp.MustCompile(`umbra serve listening" socket=(\S+) tcp=(\S*)`), 30*time.Second)
	s.socket, s.tcp = m[1], strings.Trim(m[2], `"`)
	s.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.socket)
	}}, Timeout: time.Minute}
	return s
}

func (s *served) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// waitLine waits for a log line matching re (from the start of the log),
// and returns its submatches.
func (s *served) waitLine(re *regexp.Regexp, limit time.Duration) []string {
	s.t.Helper()
	return s.waitLines(re, 1, limit)[0]
}

// waitLines waits for n log lines matching re.
func (s *served) waitLines(re *regexp.Regexp, n int, limit time.Duration) [][]string {
	s.t.Helper()
	timer := time.AfterFunc(limit, func() {
		s.mu.Lock()
		s.grew.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var found [][]string
		for _, l := range s.lines {
			if m := re.FindStringSubmatch(l); m != nil {
				found = append(found, m)
			}
		}
		if len(found) >= n {
			return found[:n]
		}
		if s.ended || time.Now().After(deadline) {
			s.t.Fatalf("umbra serve: %d of %d lines matching %s (ended: %v)\n%s", len(found), n, re, s.ended, strings.Join(s.lines, "\n"))
		}
		s.grew.Wait()
	}
}

// get calls the API on the socket and decodes the JSON answer into v.
func (s *served) get(path string, v any) {
	s.t.Helper()
	resp, err := s.client.Get("http://umbra" + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
	}
	if v == nil {
		return
	}
	if sp, ok := v.(*string); ok {
		*sp = string(b)
		return
	}
	if err := json.Unmarshal(b, v); err != nil {
		s.t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

// stop sends SIGTERM and waits for the daemon to end, which it must do
// cleanly (exit 0).
func (s *served) stop() {
	s.t.Helper()
	start := time.Now()
	defer func() { s.t.Logf("umbra serve stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond)) }()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			s.t.Fatalf("umbra serve after SIGTERM: %v\n%s", err, s.log())
		}
	case <-time.After(2 * time.Minute):
		s.t.Fatalf("umbra serve did not stop within 2 minutes of SIGTERM\n%s", s.log())
	}
}

// metric reads one sample from /metrics text ("" labels: none).
func metric(text, name, labels string) (float64, bool) {
	prefix := name
	if labels != "" {
		prefix += "{" + labels + "}"
	}
	for l := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), prefix+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "umbra.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var jobEnded = regexp.MustCompile(`msg="job ended" job=(\S+) kind=\S+ run=(\S+) status=(\S+)`)

// TestServeSchedules: a daemon with three jobs on second-level schedules
// runs each at its times, never two runs of one job at once (the slow one's
// times that come while it runs are skipped and counted), and its history,
// API, metrics and repository agree; stopped, and started again after a
// scheduled time has passed, it runs each job once at start (catch-up),
// for the time it missed, and the metrics it starts with agree with the
// history.
func TestServeSchedules(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		sqlite3(t, filepath.Join(dir, n+".db"), "CREATE TABLE t (n)", "INSERT INTO t VALUES (1)")
	}
	mkdirs(t, dir, "slow")
	schedules := map[string]string{"a": "*:*:0/2", "b": "*:*:1/3", "slow": "*:*:0/1"}
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = "%[1]s/a.db"
[[writer]]
type = "sqlite"
name = "b"
path = "%[1]s/b.db"
[[writer]]
type    = "script"
name    = "slow"
prepare = "sleep 2.5"
freeze  = "true"
thaw    = "true"
[[job]]
name     = "a"
writers  = ["sqlite:a"]
schedule = "%[2]s"
[[job]]
name     = "b"
writers  = ["sqlite:b"]
schedule = "%[3]s"
[[job]]
name     = "slow"
writers  = ["script:slow"]
paths    = ["%[1]s/slow"]
schedule = "%[4]s"
[serve]
socket       = "%[1]s/umbra.sock"
max_parallel = 3
`, dir, schedules["a"], schedules["b"], schedules["slow"]))
	repo := newRepoDir(t)
	state := t.TempDir()
	s := startServe(t, state, repo.environ(), cfg)
	for job, n := range map[string]int{"a": 3, "b": 3, "slow": 2} {
		s.waitLines(regexp.MustCompile(`msg="job ended" job=`+job+` `), n, 2*time.Minute)
	}

	// History, API and metrics agree (read until no run ended between the
	// reads of the metrics and of the history).
	var runs []daemon.Run
	var metrics string
	for try := 0; ; try++ {
		var before string
		s.get("/metrics", &before)
		runs = nil
		s.get("/api/v1/runs?limit=0", &runs)
		s.get("/metrics", &metrics)
		if agree := checkRunsMetrics(runs, metrics); agree == nil {
			break
		} else if try == 5 {
			t.Fatalf("metrics and history disagree: %v", agree)
		}
	}
	var jobs []daemon.JobView
	s.get("/api/v1/jobs", &jobs)
	if len(jobs) != 3 {
		t.Fatalf("API lists %d jobs, want 3: %+v", len(jobs), jobs)
	}
	for _, j := range jobs {
		last, _ := lastEnded(runs, j.Name)
		if j.LastRun == nil || (j.Running == nil && j.LastRun.ID != last.ID) {
			t.Errorf("job %s: the API's last run %+v is not the history's %s", j.Name, j.LastRun, last.ID)
		}
		if j.NextRun.IsZero() {
			t.Errorf("job %s: no next run", j.Name)
		}
	}
	if skipped, _ := metric(metrics, "umbra_job_skipped_runs_total", `job="slow"`); skipped < 1 {
		t.Errorf("the slow job (2.5 s a run, scheduled each second) skipped %v times; want its times during a run skipped", skipped)
	}
	s.stop()

	// Down past a time of each job: the next start runs each once, at
	// once, for the time it missed.
	runs = historyOf(t, state)
	missed := map[string]time.Time{}
	var latest time.Time
	for job, text := range schedules {
		sch, _ := schedule.Parse(text)
		last, _ := lastEnded(runs, job)
		ref := last.Started
		if last.Scheduled.After(ref) {
			ref = last.Scheduled
		}
		missed[job] = sch.Next(ref)
		if missed[job].After(latest) {
			latest = missed[job]
		}
	}
	time.Sleep(time.Until(latest) + 200*time.Millisecond) // the clock is what is waited for
	restarted := time.Now()
	s = startServe(t, state, repo.environ(), cfg)
	for job := range schedules {
		s.waitLine(regexp.MustCompile(`msg="job started" job=`+job+` run=\S+ trigger=catch-up`), time.Minute)
	}
	var metrics2 string
	for try := 0; ; try++ {
		runs = nil
		s.get("/api/v1/runs?limit=0", &runs)
		s.get("/metrics", &metrics2)
		if agree := checkRunsMetrics(runs, metrics2); agree == nil {
			break
		} else if try == 5 {
			t.Fatalf("after a restart, metrics and history disagree: %v", agree)
		}
	}
	s.stop()
	runs = historyOf(t, state)
	for job := range schedules {
		var after []daemon.Run
		for _, r := range runs {
			if r.Job == job && !r.Started.Before(restarted) {
				after = append(after, r)
			}
		}
		slices.SortFunc(after, func(a, b daemon.Run) int { return a.Started.Compare(b.Started) })
		catchUps := slices.IndexFunc(after, func(r daemon.Run) bool { return r.Trigger == daemon.TriggerCatchUp })
		switch {
		case len(after) == 0 || after[0].Trigger != daemon.TriggerCatchUp:
			t.Errorf("job %s: the first run after the restart is not a catch-up: %+v", job, after)
		case !after[0].Scheduled.Equal(missed[job]):
			t.Errorf("job %s: caught up the time %s; the one missed was %s", job, after[0].Scheduled, missed[job])
		case slices.ContainsFunc(after[catchUps+1:], func(r daemon.Run) bool { return r.Trigger == daemon.TriggerCatchUp }):
			t.Errorf("job %s: more than one catch-up run: %+v", job, after)
		}
	}
	checkSchedule(t, runs, schedules)

	// The repository holds exactly the backups the history says were stored.
	var stored []string
	for _, r := range runs {
		if r.Backup != "" {
			stored = append(stored, r.Backup)
		}
	}
	var listed []struct {
		ID string `json:"id"`
	}
	res := umbraRun(t, t.TempDir(), repo.environ(), "--json", "backups")
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil {
		t.Fatalf("backups --json: %v\n%s", err, res.stdout)
	}
	var ids []string
	for _, b := range listed {
		ids = append(ids, b.ID)
	}
	slices.Sort(ids)
	slices.Sort(stored)
	if !slices.Equal(ids, stored) {
		t.Errorf("the repository holds %d backups, the history says %d were stored:\n%v\n%v", len(ids), len(stored), ids, stored)
	}
}

// historyOf reads the run history of a stopped daemon from its state
// directory, newest first.
func historyOf(t *testing.T, state string) []daemon.Run {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(state, "serve", "runs", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var runs []daemon.Run
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r daemon.Run
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		runs = append(runs, r)
	}
	slices.SortFunc(runs, func(a, b daemon.Run) int { return b.Started.Compare(a.Started) })
	return runs
}

// checkRunsMetrics says how the metrics disagree with the runs, or nil.
func checkRunsMetrics(runs []daemon.Run, metrics string) error {
	count := map[string]int{}
	for _, r := range runs {
		if r.Status != daemon.StatusRunning {
			count[r.Job+"/"+r.Status]++
		}
	}
	for key, n := range count {
		job, status, _ := strings.Cut(key, "/")
		got, _ := metric(metrics, "umbra_job_runs_total", fmt.Sprintf(`job=%q,status=%q`, job, status))
		if int(got) != n {
			return fmt.Errorf("umbra_job_runs_total{job=%q,status=%q} = %v; the history has %d", job, status, got, n)
		}
	}
	for _, job := range []string{"a", "b", "slow"} {
		last, ok := lastEnded(runs, job)
		if !ok {
			continue
		}
		got, _ := metric(metrics, "umbra_job_last_run_timestamp_seconds", fmt.Sprintf(`job=%q`, job))
		if want := float64(last.Ended.UnixNano()) / 1e9; got < want-0.001 || got > want+0.001 {
			return fmt.Errorf("umbra_job_last_run_timestamp_seconds{job=%q} = %v; the history's last run ended %v", job, got, want)
		}
	}
	return nil
}

// lastEnded is job's newest run that ended (runs are newest first).
func lastEnded(runs []daemon.Run, job string) (daemon.Run, bool) {
	for _, r := range runs {
		if r.Job == job && r.Status != daemon.StatusRunning {
			return r, true
		}
	}
	return daemon.Run{}, false
}

// checkSchedule: each scheduled run at a time of its schedule, started at
// it (not before, and not more than a few seconds after on a busy machine),
// and no two runs of a job overlapping.
func checkSchedule(t *testing.T, runs []daemon.Run, schedules map[string]string) {
	t.Helper()
	byJob := map[string][]daemon.Run{}
	for _, r := range runs {
		byJob[r.Job] = append(byJob[r.Job], r)
	}
	for job, rs := range byJob {
		sch, err := schedule.Parse(schedules[job])
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(rs, func(a, b daemon.Run) int { return a.Started.Compare(b.Started) })
		for i, r := range rs {
			if r.Status != daemon.StatusOK && r.Status != daemon.StatusAborted {
				t.Errorf("run %s of %s: %s: %s", r.ID, job, r.Status, r.Error)
			}
			if r.Trigger == daemon.TriggerSchedule || r.Trigger == daemon.TriggerCatchUp {
				if !sch.Next(r.Scheduled.Add(-time.Second)).Equal(r.Scheduled) {
					t.Errorf("run %s of %s: scheduled %s, not a time of %q", r.ID, job, r.Scheduled, schedules[job])
				}
			}
			if r.Trigger == daemon.TriggerSchedule {
				if late := r.Started.Sub(r.Scheduled); late < 0 || late > 5*time.Second {
					t.Errorf("run %s of %s: started %s after its time %s", r.ID, job, late, r.Scheduled)
				}
			}
			if i > 0 && r.Started.Before(rs[i-1].Ended) {
				t.Errorf("job %s: run %s started at %s, before run %s ended (%s)", job, r.ID, r.Started, rs[i-1].ID, rs[i-1].Ended)
			}
		}
	}
}

// post calls the API on the socket; it returns the status and body.
func (s *served) post(path string) (int, string) {
	s.t.Helper()
	resp, err := s.client.Post("http://umbra"+path, "application/json", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeKilledDuringBackup: umbra serve killed with -9 while a job's
// application is frozen: the thaw guard thaws it at once, nothing is
// truncated (the writer never hears the backup completed), and the next
// start marks the run interrupted, cleans up its shadow set and runs the
// job again, which then completes.
func TestServeKilledDuringBackup(t *testing.T) {
	tk := startTicker(t)
	pid := tk.cmd.Process.Pid
	dir := t.TempDir()
	mkdirs(t, dir, "data")
	marker := filepath.Join(dir, "completed")
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type     = "script"
name     = "app"
freeze   = "kill -STOP %[2]d"
thaw     = "kill -CONT %[2]d"
complete = "echo $UMBRA_SET_ID >> %[3]s"
[[job]]
name    = "k"
writers = ["script:app"]
paths   = ["%[1]s/data"]
[serve]
socket = "%[1]s/umbra.sock"
`, dir, pid, marker))
	repo := newRepoDir(t)
	state := t.TempDir()
	s := startServe(t, state, append(repo.environ(), pauseAtEnv+"=freeze"), cfg)
	if code, body := s.post("/api/v1/jobs/k/run"); code != http.StatusAccepted {
		t.Fatalf("POST run: %d %s", code, body)
	}
	s.waitLine(regexp.MustCompile(`paused at freeze`), time.Minute)
	if tk.ticks(t, 300*time.Millisecond) {
		t.Fatal("the application ticks at the freeze point: the test would prove nothing")
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	if !tk.ticks(t, 5*time.Second) {
		t.Fatal("the application is still frozen 5 s after umbra serve was killed")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the writer heard the backup completed (it may truncate) although umbra serve died before storing it")
	}

	s = startServe(t, state, repo.environ(), cfg)
	s.waitLine(regexp.MustCompile(`msg="job started" job=k run=\S+ trigger=recover`), time.Minute)
	ended := s.waitLine(jobEnded, 2*time.Minute)
	if ended[3] != daemon.StatusOK {
		t.Fatalf("the recovered run: %s", ended[0])
	}
	var runs []daemon.Run
	s.get("/api/v1/runs?job=k", &runs)
	if len(runs) != 2 || runs[1].Status != daemon.StatusInterrupted || runs[0].Trigger != daemon.TriggerRecover || runs[0].Status != daemon.StatusOK {
		t.Fatalf("history after the restart: %+v; want the killed run interrupted, then a recover run ok", runs)
	}
	s.stop()
	b, err := os.ReadFile(marker)
	if err != nil || strings.Count(string(b), "\n") != 1 {
		t.Errorf("backup-complete ran %q: want once, for the recovered run only", b)
	}
	var sets []json.RawMessage
	res := umbraRun(t, state, nil, "--json", "shadow", "list")
	if err := json.Unmarshal([]byte(res.stdout), &sets); err != nil || len(sets) != 0 {
		t.Errorf("shadow sets left after the recovered run: %s (%v)", res.stdout, err)
	}
}

// TestServeAccess: the socket is its owner's only; on TCP every call but
// /metrics needs the token, and a missing or wrong one is refused; plain
// HTTP is refused on anything but loopback; neither the repository's
// password nor the token shows in the API, the metrics or the log.
func TestServeAccess(t *testing.T) {
	dir := t.TempDir()
	sqlite3(t, filepath.Join(dir, "a.db"), "CREATE TABLE t (n)")
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = "%[1]s/a.db"
[[job]]
name = "a"
[serve]
socket = "%[1]s/umbra.sock"
`, dir))
	repo := newRepoDir(t)
	state := t.TempDir()

	refused := umbraRun(t, state, repo.environ(), "--config", cfg, "serve", "--listen", "0.0.0.0:0")
	if refused.code != 1 || !strings.Contains(refused.stderr, "plain HTTP is served only on a loopback address") {
		t.Errorf("serve --listen 0.0.0.0:0 without TLS: exit %d\n%s", refused.code, refused.stderr)
	}

	s := startServe(t, state, repo.environ(), cfg, "--listen", "127.0.0.1:0")
	fi, err := os.Stat(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("socket %s has mode %v: want its owner's only", s.socket, perm)
	}
	if code, body := s.post("/api/v1/jobs/a/run"); code != http.StatusAccepted {
		t.Fatalf("POST run: %d %s", code, body)
	}
	s.waitLine(jobEnded, time.Minute)

	token := apiToken(t, state)
	if fi, err := os.Stat(daemon.TokenPath(state)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	call := func(path, auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.tcp+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, auth := range []string{"", "Bearer ", "Bearer " + token[:len(token)-1] + "x", "Basic " + token, token} {
		for _, path := range []string{"/api/v1/jobs", "/api/v1/runs", "/api/v1/backups", "/api/v1/nothing"} {
			if code, body := call(path, auth); code != http.StatusUnauthorized {
				t.Errorf("GET %s with Authorization %q: %d %s; want 401", path, auth, code, body)
			}
		}
	}
	var seen strings.Builder
	for _, path := range []string{"/api/v1/jobs", "/api/v1/runs", "/api/v1/backups", "/api/v1/writers", "/api/v1/verifications", "/api/v1/status"} {
		code, body := call(path, "Bearer "+token)
		if code != http.StatusOK {
			t.Errorf("GET %s with the token: %d %s", path, code, body)
		}
		seen.WriteString(body)
	}
	code, body := call("/metrics", "")
	if code != http.StatusOK || !strings.Contains(body, `umbra_job_last_success_timestamp_seconds{job="a"}`) {
		t.Errorf("GET /metrics without a token: %d\n%s", code, body)
	}
	seen.WriteString(body)
	lintMetrics(t, body)
	s.stop()
	seen.WriteString(s.log())
	for _, secret := range []string{"correct horse", token} {
		if strings.Contains(seen.String(), secret) {
			t.Errorf("a secret (%.6s…) shows in the API, the metrics or the log", secret)
		}
	}
}

// lintMetrics checks the exposition with Prometheus's linter (promlint, what
// promtool check metrics runs), and with promtool itself where it is
// installed (Debian's prometheus package, as scripts/deps.sh installs it).
func lintMetrics(t *testing.T, text string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Logf("no promtool (Debian's prometheus package); promlint alone checked the metrics")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// apiToken is the token umbra serve made in its state directory.
func apiToken(t *testing.T, state string) string {
	t.Helper()
	b, err := os.ReadFile(daemon.TokenPath(state))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// mkdirs makes directories under dir.
func mkdirs(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
