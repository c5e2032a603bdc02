package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/umbra-backup/umbra/internal/daemon"
)

// artifactsDir is where tests leave what a person should look at
// (screenshots): $UMBRA_TEST_ARTIFACTS, else test-artifacts/ in the
// checkout.
func artifactsDir(t *testing.T, sub string) string {
	t.Helper()
	dir := os.Getenv("UMBRA_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-artifacts")
	}
	dir, _ = filepath.Abs(filepath.Join(dir, sub))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts Debian's headless Chromium, closed at the test's end; it
// fails the test on any JavaScript exception the pages throw.
func browser(t *testing.T) context.Context {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("no chromium: install Debian's chromium package (scripts/deps.sh does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true), chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	var mu sync.Mutex
	var thrown []string
	// The first call starts the browser, for as long as ctx lives.
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			mu.Lock()
			d := e.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			thrown = append(thrown, fmt.Sprintf("%s:%d: %s", d.URL, d.LineNumber+1, desc))
			mu.Unlock()
		}
	}); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
		mu.Lock()
		defer mu.Unlock()
		for _, e := range thrown {
			t.Errorf("the page threw: %s", e)
		}
	})
	return ctx
}

// page drives one tab with a time limit on each step.
type page struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatal(err)
	}
}

func (p *page) text(id string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf("document.getElementById(%q).innerText", id)))
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

// shot saves a screenshot of the whole page under the artifacts.
func (p *page) shot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(p.shots, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
}

// TestServeUI: in headless Chromium, the UI asks for the token, refuses a
// wrong one, lists the jobs with their schedules, runs a job from its
// button and follows it live to its result, which agrees with the API;
// the job's page draws its charts and the backups page lists the backup.
// Screenshots go to test-artifacts/ui.
func TestServeUI(t *testing.T) {
	ctx := browser(t)
	dir := t.TempDir()
	sqlite3(t, filepath.Join(dir, "a.db"), "CREATE TABLE t (n)", "INSERT INTO t VALUES (1)")
	cfg := writeConfig(t, fmt.Sprintf(`
[[writer]]
type = "sqlite"
name = "a"
path = "%[1]s/a.db"
[[job]]
name     = "nightly"
schedule = "daily 02:00"
[[job]]
name = "adhoc"
[serve]
socket = "%[1]s/umbra.sock"
`, dir))
	repo := newRepoDir(t)
	state := t.TempDir()
	s := startServe(t, state, repo.environ(), cfg, "--listen", "127.0.0.1:0")
	// Two runs before, so that the job's charts have a line to draw.
	for i := range 2 {
		if code, body := s.post("/api/v1/jobs/nightly/run"); code != 202 {
			t.Fatalf("POST run: %d %s", code, body)
		}
		s.waitLines(jobEnded, i+1, time.Minute)
	}
	token := apiToken(t, state)
	p := &page{t: t, ctx: ctx, shots: artifactsDir(t, "ui")}
	base := "http://" + s.tcp + "/"

	p.do(chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("token")))
	p.shot("login.png")
	p.do(chromedp.SendKeys(chromedp.ID("token"), "wrong-token-wrong-token"),
		chromedp.Click(chromedp.ID("login-button")),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.getElementById("login-error").textContent.length > 0`)(ctx, t)
			return err
		}))
	if refused := p.text("login-error"); !strings.Contains(refused, "refused") {
		t.Errorf("a wrong token: the page says %q", refused)
	}

	p.do(chromedp.SetValue(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login-button")),
		chromedp.WaitVisible(chromedp.CSS(`#jobs tr[data-job="nightly"]`)))
	jobsText := p.text("jobs")
	p.shot("jobs.png")
	for _, want := range []string{"nightly", "daily 02:00", "adhoc", "on request", "sqlite:a"} {
		if !strings.Contains(jobsText, want) {
			t.Errorf("the jobs page does not show %q:\n%s", want, jobsText)
		}
	}
	p.do(chromedp.Click(chromedp.CSS(`button.run[data-job="nightly"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#run [data-status="ok"]`)))
	backupID, runText := p.text("backup-id"), p.text("run")
	if logText := p.text("log"); !strings.Contains(logText, "phase done") {
		t.Errorf("the run's page shows no log of its phases:\n%s", logText)
	}
	p.shot("run.png")
	var runs []daemon.Run
	s.get("/api/v1/runs?job=nightly", &runs)
	if len(runs) != 3 || runs[0].Trigger != daemon.TriggerAPI || runs[0].Backup != backupID || !strings.Contains(runText, "sqlite:a: application") {
		t.Errorf("the run started from the page: page says backup %q and\n%s\nthe API: %+v", backupID, runText, runs)
	}

	p.do(chromedp.Navigate(base+"#/jobs/nightly"), chromedp.WaitVisible(chromedp.CSS(".charts svg polyline")))
	evalCtx, cancel := context.WithTimeout(ctx, time.Minute)
	polylines, err := chromedp.Run(evalCtx, chromedp.Evaluate[int](`document.querySelectorAll(".charts svg polyline").length`))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	p.shot("job.png")
	if polylines != 3 {
		t.Errorf("the job's page draws %d charts, want 3 (duration, added, freeze window)", polylines)
	}
	p.do(chromedp.Navigate(base+"#/backups"), chromedp.WaitVisible(chromedp.CSS(`#backups tbody tr`)))
	backupsText := p.text("backups")
	p.shot("backups.png")
	if len(backupID) < 8 || !strings.Contains(backupsText, backupID[:8]) || !strings.Contains(backupsText, "sqlite:a (application)") {
		t.Fatalf("the backups page does not list backup %q with its writer:\n%s", backupID, backupsText)
	}

	// Verify from the backups page: the verification runs in a sandbox
	// and its page follows it to its verdict.
	p.do(chromedp.Click(chromedp.CSS(`button.verify[data-backup="`+backupID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#run [data-status="ok"]`)))
	verified := p.text("run")
	p.shot("verify.png")
	if !strings.Contains(verified, "Verification: passed") || !strings.Contains(verified, backupID) || !strings.Contains(verified, "check=integrity_check ok=true") ||
		strings.Contains(verified+runText, "null") {
		t.Errorf("the verification page:\n%s", verified)
	}
	var records []struct {
		Backup string `json:"backup"`
		OK     bool   `json:"ok"`
	}
	s.get("/api/v1/verifications", &records)
	if len(records) != 1 || records[0].Backup != backupID || !records[0].OK {
		t.Errorf("verification records after the page's verify: %+v", records)
	}
}
