package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPages: gen-man writes a page for every command but the hidden
// ones, each with its synopsis and description; completion scripts parse.
func TestManPages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man1")
	mustUmbra(t, t.TempDir(), "gen-man", dir)
	for _, cmd := range []string{"umbra", "umbra-backup", "umbra-restore", "umbra-verify", "umbra-serve", "umbra-shadow-create", "umbra-version"} {
		b, err := os.ReadFile(filepath.Join(dir, cmd+".1"))
		if err != nil {
			t.Errorf("no man page for %s: %v", cmd, err)
			continue
		}
		for _, want := range []string{".TH \"UMBRA\" \"1\"", "SYNOPSIS", "DESCRIPTION"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s.1 lacks %q", cmd, want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "umbra-thaw-guard.1")); err == nil {
		t.Error("a man page for the hidden thaw-guard command")
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		res := mustUmbra(t, t.TempDir(), "completion", shell)
		if !strings.Contains(res.stdout, "umbra") {
			t.Errorf("completion %s: %.200s", shell, res.stdout)
		}
		if shell == "bash" {
			check := exec.Command("bash", "-n")
			check.Stdin = strings.NewReader(res.stdout)
			if out, err := check.CombinedOutput(); err != nil {
				t.Errorf("bash -n on the bash completion: %v\n%s", err, out)
			}
		}
	}
}

// TestSystemdUnits: the units in packaging/systemd pass systemd-analyze
// verify, their man: documentation found among the generated pages.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze (Debian's systemd package)")
	}
	man := t.TempDir()
	mustUmbra(t, t.TempDir(), "gen-man", filepath.Join(man, "man1"))
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	units := map[string]string{"umbra.service": "umbra.service",
		"umbra-backup@.service": "umbra-backup@nightly.service", "umbra-backup@.timer": "umbra-backup@nightly.timer"}
	var paths []string
	for src, dst := range units {
		b, err := os.ReadFile(filepath.Join("..", "..", "packaging", "systemd", src))
		if err != nil {
			t.Fatal(err)
		}
		// The installed path, here the test binary, which is umbra.
		text := strings.ReplaceAll(string(b), "/usr/local/bin/umbra", self)
		p := filepath.Join(dir, dst)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, paths...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+man)
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
