package cli

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// argvWatch samples every process's command line while a test runs, since
// any user can read them, and reports the secrets it saw there.
type argvWatch struct {
	stop chan struct{}
	done sync.WaitGroup
	mu   sync.Mutex
	seen []string
}

func watchArgv(secrets []string) *argvWatch {
	w := &argvWatch{stop: make(chan struct{})}
	w.done.Go(func() {
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, p := range procs {
				b, err := os.ReadFile(p)
				if err != nil {
					continue
				}
				for _, s := range secrets {
					if bytes.Contains(b, []byte(s)) {
						w.mu.Lock()
						w.seen = append(w.seen, fmt.Sprintf("%s: %q", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
						w.mu.Unlock()
					}
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return w
}

func (w *argvWatch) end() []string {
	close(w.stop)
	w.done.Wait()
	return w.seen
}

// noSecretIn fails the test if any secret appears in text.
func noSecretIn(t *testing.T, what, text string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("a secret appears in %s", what)
		}
	}
}

// privateTree fails the test if a file under dir holds a secret or is open
// to other users than its owner (dir itself too, if umbra made it).
func privateTree(t *testing.T, dir string, secrets []string, umbraMadeIt bool) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 && fi.Mode()&fs.ModeSymlink == 0 && (path != dir || umbraMadeIt) {
			t.Errorf("%s is mode %v: open to others than its owner", path, fi.Mode().Perm())
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			noSecretIn(t, path, string(b), secrets)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSecretsStaySecret: a backup (MariaDB, whose own copy runs
// mariadb-backup), a restore, wal-push, check and the listings, run with
// every kind of secret (the repository password from a file and from the
// environment, the S3 keys, a database password in the configuration file):
// no secret appears in any process's command line, any output (with -v and
// --json), any backup's record, or any file of the repository or the state
// directory, whose files are private to their owner.
func TestSecretsStaySecret(t *testing.T) {
	forEachBackend(t, func(t *testing.T, repo testRepo) {
		m := testenv.StartMariaDB(t, testenv.Ext4(t).Mount)
		password := fmt.Sprintf("repo-pw-%x", testenv.Random(t, 8))
		pwFile := filepath.Join(t.TempDir(), "pw")
		if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		secrets := []string{password, m.RootPassword}
		for _, kv := range repo.env {
			if k, v, _ := strings.Cut(kv, "="); k == "AWS_SECRET_ACCESS_KEY" {
				secrets = append(secrets, v)
			}
		}
		// A new repository for this password.
		repo.loc += "-secrets"
		env := append([]string{"UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD_FILE=" + pwFile}, repo.env...)
		cfg := filepath.Join(t.TempDir(), "umbra.toml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[[writer]]
type = "mariadb"
name = "main"
socket = %q
user = "root"
password = %q
`, m.Socket, m.RootPassword)), 0o600); err != nil {
			t.Fatal(err)
		}
		state := t.TempDir()
		wal := filepath.Join(t.TempDir(), "000000010000000000000001")
		if err := os.WriteFile(wal, testenv.Random(t, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}

		watch := watchArgv(secrets)
		var out strings.Builder
		step := func(env []string, args ...string) result {
			res := umbraRun(t, state, env, append([]string{"--config", cfg}, args...)...)
			out.WriteString(res.stdout + res.stderr)
			if res.code != 0 {
				t.Fatalf("umbra %v: exit %d\n%s%s", args, res.code, res.stdout, res.stderr)
			}
			return res
		}
		step(env, "init")
		step(env, "-v", "backup", "--json")
		// The password from the environment instead of a file.
		envPw := append([]string{"UMBRA_REPO=" + repo.loc, "UMBRA_PASSWORD=" + password}, repo.env...)
		step(envPw, "-v", "backup")
		step(env, "-v", "restore", "latest", "--target", t.TempDir())
		step(env, "-v", "wal-push", "--writer", "postgres:main", wal)
		step(env, "-v", "check", "--read-data")
		step(env, "backups", "--json")
		step(env, "show", "latest", "--json")
		step(env, "show", "latest")
		for _, seen := range watch.end() {
			t.Errorf("a secret in a command line: %s", seen)
		}
		noSecretIn(t, "umbra's output", out.String(), secrets)
		privateTree(t, state, secrets, false)
		if !strings.HasPrefix(repo.loc, "s3:") {
			privateTree(t, repo.loc, secrets, true)
		}
	})
}
