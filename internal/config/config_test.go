package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in   string
		want Spec
	}{
		{"sqlite:path=/data/app.db", Spec{Type: "sqlite", Name: "app", Options: map[string]string{"path": "/data/app.db"}}},
		{"sqlite:path=/data/app.db,name=main", Spec{Type: "sqlite", Name: "main", Options: map[string]string{"path": "/data/app.db"}}},
		{`script:freeze=/bin/f a\,b,thaw=/bin/t`, Spec{Type: "script", Name: "default", Options: map[string]string{"freeze": "/bin/f a,b", "thaw": "/bin/t"}}},
		{"script:freeze=x=y", Spec{Type: "script", Name: "default", Options: map[string]string{"freeze": "x=y"}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseSpec(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseSpecErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"sqlite", "no type before ':'"},
		{":path=x", "no type"},
		{"sqlite:path", `"path" is not KEY=VALUE`},
		{"sqlite:path=a,path=b", "path given twice"},
		{"sqlite:path=/x,name=a:b", "may not contain"},
	}
	for _, tt := range tests {
		_, err := ParseSpec(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "want TYPE:KEY=VALUE") {
			t.Errorf("ParseSpec(%q): got %v, want an error containing %q and the expected form", tt.in, err, tt.want)
		}
	}
}

func TestParseFile(t *testing.T) {
	cfg, err := Parse("test.toml", `
state_dir = "/tmp/state"
[repository]
location = "s3:https://minio.example/backups"
password_file = "/etc/umbra/umbra.pass"
[shadow]
freeze_limit = "5s"
provider = "btrfs"

[[writer]]
type = "sqlite"
path = "/data/app.db"

[[writer]]
type = "script"
name = "cache"
freeze = "/usr/local/bin/f"
timeout = 30
`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		StateDir:   "/tmp/state",
		Repository: Repository{Location: "s3:https://minio.example/backups", PasswordFile: "/etc/umbra/umbra.pass"},
		Shadow:     Shadow{FreezeLimit: 5 * time.Second, Provider: "btrfs"},
		Writers: []Spec{
			{Type: "sqlite", Name: "app", Options: map[string]string{"path": "/data/app.db"}},
			{Type: "script", Name: "cache", Options: map[string]string{"freeze": "/usr/local/bin/f", "timeout": "30"}},
		},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"unknown key", "frobnicate = 1", "unknown setting frobnicate"},
		{"bad duration", "[shadow]\nfreeze_limit = \"soon\"", "not a duration"},
		{"unknown repository key", "[repository]\npassword = \"x\"", "unknown setting repository.password"},
		{"no type", "[[writer]]\npath = \"/x\"", "type is missing"},
		{"duplicate", "[[writer]]\ntype=\"sqlite\"\npath=\"/a/x.db\"\n[[writer]]\ntype=\"sqlite\"\npath=\"/b/x.db\"", "configured twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("t.toml", tt.text)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load("/nonexistent/umbra.toml", false); err != nil {
		t.Errorf("missing default file: got %v, want an empty config", err)
	}
	if _, err := Load("/nonexistent/umbra.toml", true); err == nil {
		t.Error("missing explicit file: got nil error")
	}
}

func TestParseSpecRefusesPassword(t *testing.T) {
	_, err := ParseSpec("postgres:host=/run/postgresql,password=hunter2")
	if err == nil || !strings.Contains(err.Error(), "visible to every user in ps") || !strings.Contains(err.Error(), "password_file") {
		t.Fatalf("ParseSpec with password=: got %v, want a refusal naming password_file", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error repeats the password: %v", err)
	}
}

func TestParseJobs(t *testing.T) {
	cfg, err := Parse("t", `
[[writer]]
type = "postgres"
name = "main"

[[job]]
name = "nightly-db"
writers = ["postgres:main"]
paths = ["/etc"]
fallback = true
no_truncate = ["postgres:main"]
tags = ["nightly"]
[job.keep]
daily = 7
weekly = 4
`)
	if err != nil {
		t.Fatal(err)
	}
	j, err := cfg.Job("nightly-db")
	if err != nil {
		t.Fatal(err)
	}
	want := Job{Name: "nightly-db", Type: "backup", Writers: []string{"postgres:main"}, Paths: []string{"/etc"}, Retries: -1, Fallback: true,
		NoTruncate: []string{"postgres:main"}, Tags: []string{"nightly"}, Keep: Keep{Daily: 7, Weekly: 4}}
	if diff := cmp.Diff(want, j); diff != "" {
		t.Errorf("job (-want +got):\n%s", diff)
	}
	if _, err := cfg.Job("weekly"); err == nil || !strings.Contains(err.Error(), "nightly-db") {
		t.Errorf("unknown job: got %v, want the known ones named", err)
	}
	for _, bad := range []string{
		"[[job]]\nwriters = []",
		"[[writer]]\ntype = \"sqlite\"\npath = \"/a.db\"\n[[job]]\nname = \"x\"\nwriters = [\"sqlite:b\"]",
		"[[job]]\nname = \"x\"\nretries = \"three\"",
		"[[job]]\nname = \"x\"\nkeep_dayly = 3",
	} {
		if _, err := Parse("t", bad); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", bad)
		}
	}
}

func TestParseServe(t *testing.T) {
	cfg, err := Parse("t", `
[[job]]
name        = "nightly"
schedule    = "daily 02:00"
jitter      = "10m"
retry_runs  = 2
alert_after = "26h"

[[notify]]
webhook = "https://hooks.example/x"
on      = ["failure", "stale"]
[[notify]]
command = "logger umbra"

[serve]
socket       = "/run/u.sock"
listen       = "127.0.0.1:8420"
max_parallel = 3
on_stop      = "finish"
`)
	if err != nil {
		t.Fatal(err)
	}
	j := cfg.Jobs[0]
	if j.Schedule == nil || j.Schedule.String() != "daily 02:00" || j.Jitter != 10*time.Minute || j.RetryRuns != 2 ||
		j.RetryWait != time.Minute || j.AlertAfter != 26*time.Hour {
		t.Errorf("job: %+v (retry_wait defaults to 1m with retry_runs)", j)
	}
	if s := cfg.Serve; s.Socket != "/run/u.sock" || s.Listen != "127.0.0.1:8420" || s.MaxParallel != 3 || s.OnStop != "finish" {
		t.Errorf("serve: %+v", s)
	}
	if len(cfg.Notify) != 2 || cfg.Notify[0].Webhook == "" || len(cfg.Notify[0].On) != 2 || cfg.Notify[1].Command != "logger umbra" {
		t.Errorf("notify: %+v", cfg.Notify)
	}
	for bad, want := range map[string]string{
		"[[job]]\nname = \"x\"\nschedule = \"someday\"": "daily 02:00",
		"[[job]]\nname = \"x\"\nretry_runs = -1":        "cannot be negative",
		"[serve]\non_stop = \"wait\"":                   "on_stop",
		"[serve]\nmax_parallel = -2":                    "max_parallel",
		"[[notify]]\non = [\"failure\"]":                "exactly one of webhook",
		"[[notify]]\nwebhook = \"h\"\ncommand = \"c\"":  "exactly one of webhook",
		"[[notify]]\nwebhook = \"h\"\non = [\"fail\"]":  "the events are",
		"[serve]\nport = 1":                             "unknown setting serve.port",
	} {
		if _, err := Parse("t", bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q): %v; want an error saying %q", bad, err, want)
		}
	}
}
