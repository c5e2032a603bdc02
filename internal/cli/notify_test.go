package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestServeNotifications: umbra serve reports a failed job, a writer
// downgraded to crash-consistent, a failed verification and a job that has
// not succeeded within its alert_after, to a webhook (a local HTTP
// receiver), a command and sendmail, each getting only the events it asked
// for; a job that succeeds reports nothing; the webhook's URL, which holds a
// token, is not logged.
func TestServeNotifications(t *testing.T) {
	crashData := testenv.Btrfs(t).Subvolume(t, "app")
	if err := os.WriteFile(filepath.Join(crashData, "data"), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, n := range []string{"a", "v"} {
		sqlite3(t, filepath.Join(dir, n+".db"), "CREATE TABLE t (n)", "INSERT INTO t VALUES (1)")
	}
	got := make(chan map[string]any, 20)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e map[string]any
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &e); err != nil || r.Method != http.MethodPost || r.URL.Query().Get("token") != "s3cret-hook" {
			t.Errorf("webhook got %s %s: %s (%v)", r.Method, r.URL, b, err)
		}
		got <- e
	}))
	defer receiver.Close()
	sendmail := filepath.Join(dir, "sendmail")
	if err := os.WriteFile(sendmail, []byte("#!/bin/sh\necho \"args: $*\" >> "+dir+"/mail\ncat >> "+dir+"/mail\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = "%[1]s/a.db"
[[writer]]
type   = "script"
name   = "broken"
freeze = "exit 1"
thaw   = "true"
paths  = "%[2]s"
[[writer]]
type   = "sqlite"
name   = "v"
path   = "%[1]s/v.db"
verify = "false"
[[job]]
name    = "good"
writers = ["sqlite:a"]
[[job]]
name    = "bad"
writers = ["script:broken"]
strict  = true
[[job]]
name     = "crashy"
writers  = ["script:broken"]
fallback = true
[[job]]
name    = "checked"
writers = ["sqlite:v"]
verify  = true
[[job]]
name        = "idle"
writers     = ["sqlite:a"]
alert_after = "1s"
[[notify]]
webhook = "%[3]s/hook?token=s3cret-hook"
[[notify]]
command = "echo $UMBRA_EVENT $UMBRA_JOB >> %[1]s/events"
on      = ["failure"]
[[notify]]
email    = "ops@example.com"
sendmail = "%[4]s"
on       = ["unverified"]
[serve]
socket = "%[1]s/umbra.sock"
`, dir, crashData, receiver.URL, sendmail))
	repo := newRepoDir(t)
	s := startServe(t, t.TempDir(), repo.environ(), cfg)
	for i, job := range []string{"good", "bad", "crashy", "checked"} {
		if code, body := s.post("/api/v1/jobs/" + job + "/run"); code != http.StatusAccepted {
			t.Fatalf("POST run %s: %d %s", job, code, body)
		}
		s.waitLines(jobEnded, i+1, 2*time.Minute)
	}
	want := []string{"crash crashy", "failure bad", "stale idle", "unverified checked"}
	var events []string
	for len(events) < len(want) {
		select {
		case e := <-got:
			events = append(events, fmt.Sprintf("%v %v", e["event"], e["job"]))
			if e["host"] == "" || e["message"] == "" {
				t.Errorf("event without host or message: %v", e)
			}
		case <-time.After(time.Minute):
			t.Fatalf("the webhook got %v; want %v\n%s", events, want, s.log())
		}
	}
	// Each was sent by the time its job's end was logged (stale: its
	// time): nothing more comes for "good" once the daemon stops.
	s.stop()
	close(got)
	for e := range got {
		events = append(events, fmt.Sprintf("%v %v", e["event"], e["job"]))
	}
	slices.Sort(events)
	if !slices.Equal(events, want) {
		t.Errorf("webhook events %v; want %v", events, want)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "events")); strings.TrimSpace(string(b)) != "failure bad" {
		t.Errorf("the command (on = failure) got %q; want only \"failure bad\"", b)
	}
	mail, _ := os.ReadFile(filepath.Join(dir, "mail"))
	for _, w := range []string{"args: -t -oi", "To: ops@example.com", "Subject: umbra on ", "unverified: job checked", "failed its verification"} {
		if !strings.Contains(string(mail), w) {
			t.Errorf("the mail lacks %q:\n%s", w, mail)
		}
	}
	if regexp.MustCompile(`s3cret-hook`).MatchString(s.log()) {
		t.Error("the webhook's token shows in the log")
	}
}
