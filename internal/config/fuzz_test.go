package config

import (
	"strings"
	"testing"
)

// The configuration file and writer specs are operators' text: malformed
// input gets an error naming the problem, never a panic.

func FuzzParse(f *testing.F) {
	f.Add(`state_dir = "/var/lib/umbra"
[shadow]
freeze_limit = "10s"
[[writer]]
type = "postgres"
name = "main"
host = "/run/postgresql"
[job.nightly]
writers = ["postgres:main"]
paths = ["/etc"]
keep_daily = 7
`)
	f.Add(`[[writer]]
type = 3`)
	f.Add(`[job.x]
writers = ["nope"]`)
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := Parse("fuzz.toml", text)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		for _, j := range cfg.Jobs {
			if _, err := cfg.Job(j.Name); err != nil {
				t.Errorf("job %q parsed but not found: %v", j.Name, err)
			}
		}
		_, _ = Merge(cfg.Writers, nil)
	})
}

func FuzzParseSpec(f *testing.F) {
	f.Add("postgres:host=/run/postgresql,user=postgres")
	f.Add(`sqlite:path=/srv/a\,b.db`)
	f.Add("redis")
	f.Add(":=,")
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseSpec(s)
		if err != nil {
			return
		}
		if spec.Type == "" || spec.Instance() == "" {
			t.Errorf("ParseSpec(%q) = %+v without a type", s, spec)
		}
	})
}
