package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/daemon"
)

// postJSON calls the API with a JSON body.
func (s *served) postJSON(path string, body any) (int, string) {
	s.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := s.client.Post("http://umbra"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// runAndWait starts a job (or an operation, at path) and waits for its
// end in the history.
func (s *served) runAndWait(path string, body any) daemon.Run {
	s.t.Helper()
	code, out := s.postJSON(path, body)
	if code != http.StatusAccepted {
		s.t.Fatalf("POST %s: %d %s", path, code, out)
	}
	var run daemon.Run
	if err := json.Unmarshal([]byte(out), &run); err != nil || run.ID == "" {
		s.t.Fatalf("POST %s: %v: %s", path, err, out)
	}
	s.waitLine(regexp.MustCompile(`ended" .*run=`+run.ID+` `), 2*time.Minute)
	var p daemon.Progress
	s.get("/api/v1/runs/"+run.ID, &p)
	return p.Run
}

// TestServeJobKinds: a verify job verifies this host's latest backup, a
// prune job forgets what its keep policy does not keep and frees the
// space; through the API a backup is verified, and restored under an
// empty directory but never into one that holds anything; umbra backup
// --job refuses a job that is not a backup.
func TestServeJobKinds(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "a.db")
	sqlite3(t, db, "CREATE TABLE t (n)", "INSERT INTO t VALUES (42)")
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = %q
[[job]]
name = "b"
[[job]]
name = "v"
type = "verify"
[[job]]
name = "p"
type = "prune"
[job.keep]
last = 1
[serve]
socket = "%s/umbra.sock"
`, db, dir))
	repo := newRepoDir(t)
	state := t.TempDir()
	if res := umbraRun(t, state, repo.environ(), "--config", cfg, "backup", "--job", "v"); res.code != 2 || !strings.Contains(res.stderr, "umbra serve runs") {
		t.Errorf("backup --job of a verify job: exit %d: %s", res.code, res.stderr)
	}
	s := startServe(t, state, repo.environ(), cfg)
	first := s.runAndWait("/api/v1/jobs/b/run", nil)
	sqlite3(t, db, "INSERT INTO t VALUES (43)")
	second := s.runAndWait("/api/v1/jobs/b/run", nil)
	if first.Status != daemon.StatusOK || second.Status != daemon.StatusOK || first.Kind != "backup" {
		t.Fatalf("backups: %+v %+v", first, second)
	}

	v := s.runAndWait("/api/v1/jobs/v/run", nil)
	if v.Status != daemon.StatusOK || v.Kind != "verify" || v.Backup != second.Backup || v.Verified == nil || !*v.Verified {
		t.Errorf("verify job: %+v; want the latest backup %s verified", v, second.Backup)
	}

	p := s.runAndWait("/api/v1/jobs/p/run", nil)
	if p.Status != daemon.StatusOK || len(p.Forgotten) != 1 || p.Forgotten[0] != first.Backup {
		t.Errorf("prune job (keep last 1): %+v; want %s forgotten", p, first.Backup)
	}
	var backups []struct {
		ID string `json:"id"`
	}
	s.get("/api/v1/backups", &backups)
	if len(backups) != 1 || backups[0].ID != second.Backup {
		t.Errorf("after the prune job the repository holds %+v; want only %s", backups, second.Backup)
	}

	op := s.runAndWait("/api/v1/backups/"+second.Backup[:8]+"/verify", nil)
	if op.Status != daemon.StatusOK || op.Kind != daemon.KindVerify || op.Job != "" || op.Backup != second.Backup || op.Verified == nil || !*op.Verified {
		t.Errorf("verify through the API: %+v", op)
	}
	target := filepath.Join(t.TempDir(), "copy")
	op = s.runAndWait("/api/v1/backups/latest/restore", map[string]string{"target": target})
	if op.Status != daemon.StatusOK || op.Kind != daemon.KindRestore || op.Target != target {
		t.Fatalf("restore through the API: %+v", op)
	}
	out := sqliteQuery(t, filepath.Join(target, db), "SELECT group_concat(n) FROM t")
	if out != "42,43" {
		t.Errorf("the restored database holds %q; want 42,43", out)
	}
	again := s.runAndWait("/api/v1/backups/latest/restore", map[string]string{"target": target})
	if again.Status != daemon.StatusFailed || !strings.Contains(again.Error, "not empty") {
		t.Errorf("a restore into a directory that holds files: %+v; want it refused", again)
	}
	if fi, err := os.Stat(filepath.Join(target, db)); err != nil || fi.Size() == 0 {
		t.Errorf("the first restore's files after the refused one: %v", err)
	}
	if code, body := s.postJSON("/api/v1/backups/latest/restore", map[string]string{}); code != http.StatusBadRequest || !strings.Contains(body, "never restores in place") {
		t.Errorf("a restore without a target: %d %s", code, body)
	}
	// The command line talks to the daemon: list, and run with --wait.
	list := umbraRun(t, state, nil, "--config", cfg, "jobs")
	if list.code != 0 || !regexp.MustCompile(`(?m)^b\s+on request\s+-\s+ok `).MatchString(list.stdout) || !strings.Contains(list.stdout, "\np ") {
		t.Errorf("umbra jobs: exit %d\n%s%s", list.code, list.stdout, list.stderr)
	}
	waited := umbraRun(t, state, nil, "--config", cfg, "--json", "jobs", "run", "v", "--wait")
	var vr daemon.Run
	if err := json.Unmarshal([]byte(waited.stdout), &vr); err != nil || waited.code != 0 || vr.Kind != "verify" || vr.Status != daemon.StatusOK {
		t.Errorf("umbra jobs run v --wait: exit %d, %+v (%v)\n%s", waited.code, vr, err, waited.stderr)
	}
	if res := umbraRun(t, state, nil, "--config", cfg, "jobs", "run", "nosuch"); res.code != 1 || !strings.Contains(res.stderr, "no such job") {
		t.Errorf("umbra jobs run nosuch: exit %d %s", res.code, res.stderr)
	}

	var runs []daemon.Run
	s.get("/api/v1/runs?limit=0", &runs)
	if len(runs) != 8 {
		t.Errorf("the history holds %d runs, want 8 (2 backups, 2 verify jobs, a prune job, a verification and 2 restores asked through the API)", len(runs))
	}

	// SIGHUP reads the configuration again: a job added shows; a broken
	// configuration is refused and the one in use stays.
	text, _ := os.ReadFile(cfg)
	if err := os.WriteFile(cfg, append(text, "[[job]]\nname = \"added\"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLine(regexp.MustCompile(`configuration reloaded" jobs=4`), time.Minute)
	if err := os.WriteFile(cfg, append(text, "[[job]]\nname = \"b\"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLine(regexp.MustCompile(`the configuration was not reloaded; the one in use stays`), time.Minute)
	var jobs []daemon.JobView
	s.get("/api/v1/jobs", &jobs)
	if len(jobs) != 4 {
		t.Errorf("after a refused reload: %d jobs, want the 4 of the last good configuration", len(jobs))
	}
	s.stop()
}

// sqliteQuery runs one query with the sqlite3 shell and returns its output.
func sqliteQuery(t *testing.T, path, query string) string {
	t.Helper()
	out, err := exec.Command("sqlite3", path, query).CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 %s: %v\n%s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestServeRetryAndLimit: a run that fails is run again after retry_wait
// (trigger retry, attempt 2) and then succeeds; with max_parallel = 1 a job
// asked for while another runs waits for it, and starts when it ends.
func TestServeRetryAndLimit(t *testing.T) {
	dir := t.TempDir()
	mkdirs(t, dir, "data", "slow")
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type   = "script"
name   = "flaky"
freeze = "test -e %[1]s/failed-once || { touch %[1]s/failed-once; exit 1; }"
thaw   = "true"
[[writer]]
type    = "script"
name    = "slow"
prepare = "sleep 2"
freeze  = "true"
thaw    = "true"
[[writer]]
type   = "script"
name   = "other"
freeze = "true"
thaw   = "true"
[[job]]
name       = "flaky"
writers    = ["script:flaky"]
paths      = ["%[1]s/data"]
strict     = true
retries    = 0
retry_runs = 2
retry_wait = "1s"
[[job]]
name    = "slow"
writers = ["script:slow"]
paths   = ["%[1]s/slow"]
[[job]]
name    = "other"
writers = ["script:other"]
paths   = ["%[1]s/data"]
[serve]
socket       = "%[1]s/umbra.sock"
max_parallel = 1
`, dir))
	repo := newRepoDir(t)
	s := startServe(t, t.TempDir(), repo.environ(), cfg)
	if code, body := s.post("/api/v1/jobs/flaky/run"); code != http.StatusAccepted {
		t.Fatalf("POST run flaky: %d %s", code, body)
	}
	ends := s.waitLines(regexp.MustCompile(`msg="job ended" job=flaky kind=backup run=(\S+) status=(\S+)`), 2, time.Minute)
	if ends[0][2] != daemon.StatusFailed || ends[1][2] != daemon.StatusOK {
		t.Fatalf("flaky job: %v then %v; want failed, then ok", ends[0][0], ends[1][0])
	}
	var runs []daemon.Run
	s.get("/api/v1/runs?job=flaky", &runs)
	if len(runs) != 2 || runs[0].Trigger != daemon.TriggerRetry || runs[0].Attempt != 2 || runs[0].Started.Sub(runs[1].Ended) < time.Second {
		t.Errorf("flaky job's runs: %+v; want a retry, attempt 2, at least retry_wait after the failure", runs)
	}

	if code, body := s.post("/api/v1/jobs/slow/run"); code != http.StatusAccepted || !strings.Contains(body, `"id"`) {
		t.Fatalf("POST run slow: %d %s", code, body)
	}
	code, body := s.post("/api/v1/jobs/other/run")
	if code != http.StatusAccepted || !strings.Contains(body, "waiting") {
		t.Errorf("a second job with max_parallel = 1: %d %s; want it accepted, waiting", code, body)
	}
	s.waitLine(regexp.MustCompile(`msg="job ended" job=other `), time.Minute)
	var slow, other []daemon.Run
	s.get("/api/v1/runs?job=slow", &slow)
	s.get("/api/v1/runs?job=other", &other)
	if len(slow) != 1 || len(other) != 1 || other[0].Started.Before(slow[0].Ended) {
		t.Errorf("with max_parallel = 1, other (%+v) started before slow (%+v) ended", other, slow)
	}
	s.stop()
}

// TestServeTLS: on an address other than loopback the API is served over
// TLS only, with the certificate configured; plain HTTP gets no answer
// from the API there.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "umbra test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, fmt.Sprintf(`
[serve]
socket   = "%[1]s/umbra.sock"
listen   = "0.0.0.0:0"
tls_cert = "%[2]s"
tls_key  = "%[3]s"
`, dir, certFile, keyFile))
	repo := newRepoDir(t)
	state := t.TempDir()
	s := startServe(t, state, repo.environ(), cfg)
	_, port, _ := net.SplitHostPort(s.tcp)
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: time.Minute}
	req, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1:"+port+"/api/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken(t, state))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("https with the token: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("https with the token: %s", resp.Status)
	}
	plain, err := http.Get("http://127.0.0.1:" + port + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(plain.Body)
		plain.Body.Close()
		if plain.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP on a TLS listener answered: %s", b)
		}
	}
	s.stop()
}

// TestServeStopPolicy: SIGTERM during a run aborts it by default (every
// writer thawed, nothing truncated: its complete command never runs), and
// lets it end with on_stop = "finish".
func TestServeStopPolicy(t *testing.T) {
	for _, policy := range []string{"abort", "finish"} {
		t.Run(policy, func(t *testing.T) {
			dir := t.TempDir()
			mkdirs(t, dir, "data")
			cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type     = "script"
name     = "slow"
prepare  = "touch %[1]s/prepared; sleep 2"
freeze   = "true"
thaw     = "true"
complete = "touch %[1]s/completed"
[[job]]
name    = "slow"
writers = ["script:slow"]
paths   = ["%[1]s/data"]
[serve]
socket  = "%[1]s/umbra.sock"
on_stop = "%[2]s"
`, dir, policy))
			repo := newRepoDir(t)
			state := t.TempDir()
			s := startServe(t, state, repo.environ(), cfg)
			if code, body := s.post("/api/v1/jobs/slow/run"); code != http.StatusAccepted {
				t.Fatalf("POST run: %d %s", code, body)
			}
			// The run is in its prepare command when the daemon is told to stop.
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
				if _, err := os.Stat(filepath.Join(dir, "prepared")); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatal("the job's prepare command did not run within a minute")
				}
			}
			s.stop()
			runs := historyOf(t, state)
			_, completed := os.Stat(filepath.Join(dir, "completed"))
			want := map[string]string{"abort": daemon.StatusAborted, "finish": daemon.StatusOK}[policy]
			if len(runs) != 1 || runs[0].Status != want || (completed == nil) != (policy == "finish") {
				t.Errorf("on_stop = %s: runs %+v, backup-complete ran: %v; want %s", policy, runs, completed == nil, want)
			}
		})
	}
}
