package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// testRepo is a repository location and the environment to reach it.
type testRepo struct {
	loc string
	env []string
}

func (r testRepo) environ() []string {
	return append([]string{"UMBRA_REPO=" + r.loc, "UMBRA_PASSWORD=correct horse"}, r.env...)
}

// forEachBackend runs test against a fresh local repository and a fresh
// repository in a private MinIO server.
func forEachBackend(t *testing.T, test func(t *testing.T, repo testRepo)) {
	t.Run("local", func(t *testing.T) {
		test(t, newRepoDir(t))
	})
	t.Run("s3", func(t *testing.T) {
		endpoint, key, secret := testenv.MinIO(t)
		repo := testRepo{
			loc: "s3:http://" + endpoint + "/umbra-test/repo",
			env: []string{"AWS_ACCESS_KEY_ID=" + key, "AWS_SECRET_ACCESS_KEY=" + secret},
		}
		mustRepo(t, repo, "init")
		test(t, repo)
	})
}

func umbraRepo(t *testing.T, repo testRepo, args ...string) result {
	t.Helper()
	return umbraRun(t, t.TempDir(), repo.environ(), args...)
}

func mustRepo(t *testing.T, repo testRepo, args ...string) result {
	t.Helper()
	res := umbraRepo(t, repo, args...)
	if res.code != 0 {
		t.Fatalf("umbra %v: exit %d: %s%s", args, res.code, res.stdout, res.stderr)
	}
	return res
}

type backupJSON struct {
	ID    string `json:"id"`
	Stats struct {
		Bytes      int64 `json:"bytes"`
		BytesRead  int64 `json:"bytes_read"`
		BytesAdded int64 `json:"bytes_added"`
	} `json:"stats"`
	Warnings []string `json:"warnings"`
}

func backupOf(t *testing.T, repo testRepo, paths ...string) backupJSON {
	t.Helper()
	res := mustRepo(t, repo, append([]string{"backup", "--json"}, paths...)...)
	var b backupJSON
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, res.stdout)
	}
	return b
}

func newRepoDir(t *testing.T) testRepo {
	t.Helper()
	repo := testRepo{loc: filepath.Join(t.TempDir(), "repo")}
	mustRepo(t, repo, "init")
	return repo
}

// TestBackupRestoreRoundTrip: a generated tree with every kind of file and
// metadata, and a real one, come back identical; a second backup of
// unchanged data adds under 1%.
func TestBackupRestoreRoundTrip(t *testing.T) {
	forEachBackend(t, testRoundTrip)
}

func testRoundTrip(t *testing.T, repo testRepo) {
	gen := filepath.Join(t.TempDir(), "gen")
	testenv.MakeTree(t, gen)
	real := "/usr/share/doc"
	if _, err := os.Stat(real); err != nil {
		t.Skipf("no %s on this machine", real)
	}
	first := backupOf(t, repo, gen, real)
	second := backupOf(t, repo, gen, real)
	if second.Stats.BytesRead != 0 || float64(second.Stats.BytesAdded) > 0.01*float64(first.Stats.Bytes) {
		t.Errorf("unchanged backup read %d and added %d bytes of %d; want nothing read and under 1%% added",
			second.Stats.BytesRead, second.Stats.BytesAdded, first.Stats.Bytes)
	}
	target := t.TempDir()
	mustRepo(t, repo, "restore", second.ID[:8], "--target", target)
	testenv.CompareTrees(t, gen, filepath.Join(target, gen))
	testenv.CompareTrees(t, real, filepath.Join(target, real))

	ls := mustRepo(t, repo, "ls", "latest", filepath.Join(gen, "sub"))
	if !strings.Contains(ls.stdout, filepath.Join(gen, "sub", "deeper", "file")) || strings.Contains(ls.stdout, "random.bin") {
		t.Errorf("ls under a path:\n%s", ls.stdout)
	}
	if res := umbraRepo(t, repo, "ls", "latest", "/no/such/path"); res.code != 1 || !strings.Contains(res.stderr, "holds nothing at /no/such/path") {
		t.Errorf("ls of a path the backup does not hold: exit %d, %q; want 1 saying so", res.code, res.stderr)
	}
}

func TestWrongPassword(t *testing.T) {
	forEachBackend(t, func(t *testing.T, repo testRepo) {
		res := umbraRun(t, t.TempDir(), append(repo.env, "UMBRA_REPO="+repo.loc, "UMBRA_PASSWORD=wrong"), "backups")
		if res.code != 1 || !strings.Contains(res.stderr, "wrong password") {
			t.Errorf("wrong password: exit %d, %q", res.code, res.stderr)
		}
	})
	res := umbraRun(t, t.TempDir(), []string{"UMBRA_REPO=" + filepath.Join(t.TempDir(), "none"), "UMBRA_PASSWORD=x"}, "backups")
	if res.code != 1 || !strings.Contains(res.stderr, "umbra init") {
		t.Errorf("missing repository: exit %d, %q", res.code, res.stderr)
	}
}

// TestNoPlaintextInRepository: no file content or file name of the backup
// appears in any file of the repository.
func TestNoPlaintextInRepository(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "very-secret-directory-name")
	content := bytes.Repeat([]byte("PLAINTEXT-MARKER-1234567890 "), 1000)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "confidential-file-name.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	repo := newRepoDir(t)
	backupOf(t, repo, dir)
	err := filepath.WalkDir(repo.loc, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, needle := range []string{"PLAINTEXT-MARKER", "very-secret-directory-name", "confidential-file-name"} {
			if bytes.Contains(b, []byte(needle)) {
				t.Errorf("%s holds %q in plaintext", p, needle)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCheckReadDataNamesDamagedBackups: a flipped byte in a pack is found
// by check --read-data, which names the backup using it; the other backup
// still restores.
func TestCheckReadDataNamesDamagedBackups(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	for _, d := range []string{a, b} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), testenv.Random(t, 3<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo := newRepoDir(t)
	ba := backupOf(t, repo, a)
	packsBefore := packFiles(t, repo)
	bb := backupOf(t, repo, b)
	var newPack string
	for p := range packFiles(t, repo) {
		if !packsBefore[p] {
			if fi, _ := os.Stat(p); fi.Size() > 1<<20 {
				newPack = p // b's data pack
			}
		}
	}
	if newPack == "" {
		t.Fatal("no data pack for the second backup")
	}
	data, err := os.ReadFile(newPack)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(newPack, data, 0o600); err != nil {
		t.Fatal(err)
	}
	res := umbraRepo(t, repo, "check", "--read-data")
	if res.code != 1 || !strings.Contains(res.stdout, "damaged backup: "+bb.ID) || strings.Contains(res.stdout, ba.ID) {
		t.Errorf("check --read-data: exit %d, want 1 naming %s only:\n%s", res.code, bb.ID[:8], res.stdout)
	}
	target := t.TempDir()
	mustRepo(t, repo, "restore", ba.ID, "--target", target)
	testenv.CompareTrees(t, a, filepath.Join(target, a))
}

func packFiles(t *testing.T, repo testRepo) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	_ = filepath.WalkDir(filepath.Join(repo.loc, "data"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out[p] = true
		}
		return err
	})
	return out
}

// TestUnreadableFileWarns: a file the backup cannot read is reported, the
// backup goes on and is recorded, and the exit status is 3.
func TestUnreadableFileWarns(t *testing.T) {
	testenv.NeedRoot(t) // to run umbra as another user
	// Not t.TempDir: its parent is closed to other users.
	dir, err := os.MkdirTemp("", "umbra-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "readable"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "secret"), []byte("no"), 0o600); err != nil {
		t.Fatal(err)
	}
	repo := testRepo{loc: filepath.Join(dir, "repo")}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	// The test binary's directory is root's; nobody runs a copy.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "umbra")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func(args ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"--state-dir", filepath.Join(dir, "state"), "--config", "/dev/null"}, args...)...)
		cmd.Env = append(append(os.Environ(), asUmbraEnv+"=1"), repo.environ()...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			return string(out), exit.ExitCode()
		case err != nil:
			t.Fatalf("run umbra as nobody: %v", err)
		}
		return string(out), 0
	}
	if out, code := asNobody("init"); code != 0 {
		t.Fatalf("init as nobody: %d %s", code, out)
	}
	out, code := asNobody("backup", data)
	if code != 3 || !strings.Contains(out, "secret") || !strings.Contains(out, "permission denied") {
		t.Fatalf("backup with an unreadable file: exit %d, want 3 with a warning naming it:\n%s", code, out)
	}
	if out, _ := asNobody("ls", "latest"); !strings.Contains(out, "readable") || strings.Contains(out, "secret") {
		t.Errorf("the backup should hold the readable file only:\n%s", out)
	}
}

// TestConcurrentBackups: two processes backing up into one repository at
// once both succeed, and the repository checks clean.
func TestConcurrentBackups(t *testing.T) {
	forEachBackend(t, testConcurrentBackups)
}

func testConcurrentBackups(t *testing.T, repo testRepo) {
	var dirs []string
	for range 2 {
		d := filepath.Join(t.TempDir(), "d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), testenv.Random(t, 20<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	var wg sync.WaitGroup
	results := make([]result, 2)
	for i, d := range dirs {
		wg.Go(func() { results[i] = umbraRepo(t, repo, "backup", d) })
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Errorf("backup %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	mustRepo(t, repo, "check", "--read-data")
	if res := mustRepo(t, repo, "backups", "--json"); strings.Count(res.stdout, `"tree"`) != 2 {
		t.Errorf("want 2 backups:\n%s", res.stdout)
	}
}

// TestKillDuringBackup: kill -9 at random moments during a backup; the
// repository still checks clean and every earlier backup restores.
func TestKillDuringBackup(t *testing.T) {
	forEachBackend(t, testKillDuringBackup)
}

func testKillDuringBackup(t *testing.T, repo testRepo) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if err := os.WriteFile(filepath.Join(src, string(rune('a'+i))), testenv.Random(t, 8<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	small := filepath.Join(t.TempDir(), "small")
	testenv.MakeTree(t, small)
	good := backupOf(t, repo, small)
	for i := range 4 {
		cmd := umbraCmd(t, t.TempDir(), repo.environ(), "backup", "--force", src)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+testenv.RandomInt(400)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		res := umbraRepo(t, repo, "check", "--read-data")
		if res.code != 0 {
			t.Fatalf("round %d: check after kill -9: exit %d\n%s%s", i, res.code, res.stdout, res.stderr)
		}
	}
	target := t.TempDir()
	mustRepo(t, repo, "restore", good.ID, "--target", target)
	testenv.CompareTrees(t, small, filepath.Join(target, small))
}

// TestForgetAndPrune: a keep policy removes the backups it does not keep,
// prune frees their data, and what is kept still restores.
func TestForgetAndPrune(t *testing.T) {
	forEachBackend(t, func(t *testing.T, repo testRepo) {
		dir := filepath.Join(t.TempDir(), "d")
		var ids []string
		for i := range 3 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "f"), testenv.Random(t, 2<<20+i), 0o644); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, backupOf(t, repo, dir).ID)
		}
		res := mustRepo(t, repo, "forget", "--keep-last", "1", "--dry-run")
		if strings.Count(res.stdout, "would remove") != 2 {
			t.Errorf("dry run:\n%s", res.stdout)
		}
		res = mustRepo(t, repo, "forget", "--keep-last", "1", "--prune", "--json")
		var out struct {
			Removed int `json:"removed"`
			Prune   struct {
				BytesFreed int64 `json:"bytes_freed"`
			} `json:"prune"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
			t.Fatal(err)
		}
		if out.Removed != 2 || out.Prune.BytesFreed < 4<<20 {
			t.Errorf("forget --keep-last 1 --prune: removed %d, freed %d; want 2 and the two old files' data", out.Removed, out.Prune.BytesFreed)
		}
		mustRepo(t, repo, "check", "--read-data")
		target := t.TempDir()
		mustRepo(t, repo, "restore", ids[2][:8], "--target", target)
		testenv.CompareTrees(t, dir, filepath.Join(target, dir))
		if res := umbraRepo(t, repo, "forget"); res.code != 2 {
			t.Errorf("forget with no policy: exit %d, want 2", res.code)
		}
	})
}

// TestKillDuringPrune: kill -9 at random moments during prune; the
// repository checks clean and every backup still restores.
func TestKillDuringPrune(t *testing.T) {
	repo := newRepoDir(t)
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var keep string
	for range 6 {
		for j := range 4 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(j)), testenv.Random(t, 4<<20), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		keep = backupOf(t, repo, dir).ID
	}
	mustRepo(t, repo, "forget", "--keep-last", "1")
	for i := range 4 {
		cmd := umbraCmd(t, t.TempDir(), repo.environ(), "prune")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+testenv.RandomInt(200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if res := umbraRepo(t, repo, "check", "--read-data"); res.code != 0 {
			t.Fatalf("round %d: check after kill -9 of prune: exit %d\n%s%s", i, res.code, res.stdout, res.stderr)
		}
	}
	mustRepo(t, repo, "prune") // the stale lock of the killed prune does not block
	target := t.TempDir()
	mustRepo(t, repo, "restore", keep, "--target", target)
	testenv.CompareTrees(t, dir, filepath.Join(target, dir))
}

// TestPruneBesideBackup: a prune beside a running backup (held just before
// its manifest, having reused the data of a forgotten backup) deletes
// nothing the backup uses; the prune after it ends keeps that data and
// deletes the rest; the backup restores and check finds nothing wrong.
func TestPruneBesideBackup(t *testing.T) {
	repo := newRepoDir(t)
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for j := range 4 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(j)), testenv.Random(t, 2<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := backupOf(t, repo, dir).ID
	mustRepo(t, repo, "forget", old)
	// Unused now; another file changes so the next backup has some data
	// of its own as well.
	if err := os.WriteFile(filepath.Join(dir, "0"), testenv.Random(t, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	running, stderr := startPausedEnv(t, state, repo.environ(), "manifest", "backup", "--json", dir)
	res := mustRepo(t, repo, "prune", "--json")
	var rep struct {
		PacksDeleted int `json:"packs_deleted"`
		PacksMarked  int `json:"packs_marked"`
		WaitingFor   int `json:"waiting_for"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.PacksDeleted != 0 || rep.PacksMarked == 0 || rep.WaitingFor != 1 {
		t.Errorf("prune beside a backup: %s; want packs marked, waiting for one operation, none deleted", res.stdout)
	}
	// Let the backup go on: it stores its manifest.
	if err := running.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := running.Wait(); err != nil {
		t.Fatalf("the backup beside the prune: %v", err)
	}
	stderr.Close()
	latest := backupOf(t, repo, dir) // unchanged: its data all reused again
	res = mustRepo(t, repo, "prune", "--json")
	var after struct {
		PacksRescued int `json:"packs_rescued"`
		PacksMarked  int `json:"packs_marked"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &after); err != nil {
		t.Fatal(err)
	}
	if after.PacksRescued == 0 || after.PacksMarked != 0 {
		t.Errorf("prune after the backup ended: %s; want the packs it used kept and the rest deleted", res.stdout)
	}
	mustRepo(t, repo, "check", "--read-data")
	target := t.TempDir()
	mustRepo(t, repo, "restore", latest.ID, "--target", target)
	testenv.CompareTrees(t, dir, filepath.Join(target, dir))
}

// TestChangingFileWarns: a file written to while the backup reads it is
// reported, the backup is recorded, and the exit status is 3.
func TestChangingFileWarns(t *testing.T) {
	dir := t.TempDir()
	busy := filepath.Join(dir, "busy.log")
	if err := os.WriteFile(busy, testenv.Random(t, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "quiet"), []byte("q"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(busy, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop := make(chan struct{})
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		page := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.WriteAt(page, int64(i%(16<<10))*4096); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	repo := newRepoDir(t)
	res := umbraRepo(t, repo, "backup", dir)
	close(stop)
	<-writing
	if res.code != 3 || !strings.Contains(res.stderr, "busy.log changed while it was read") {
		t.Fatalf("backup of a file being written: exit %d, want 3 with a warning naming it:\n%s", res.code, res.stderr)
	}
	if ls := mustRepo(t, repo, "ls", "latest", dir); !strings.Contains(ls.stdout, "busy.log") || !strings.Contains(ls.stdout, "quiet") {
		t.Errorf("the backup should hold both files:\n%s", ls.stdout)
	}
}

// TestWalFetchCannotOpenRepository: wal-fetch that cannot open the
// repository exits 126, which stops PostgreSQL's recovery, not 1, which
// PostgreSQL would take for the end of the archive (issue 11).
func TestWalFetchCannotOpenRepository(t *testing.T) {
	env := []string{"UMBRA_REPO=" + filepath.Join(t.TempDir(), "none"), "UMBRA_PASSWORD=x"}
	res := umbraRun(t, t.TempDir(), env, "wal-fetch", "--writer", "postgres:main", "000000010000000000000001", filepath.Join(t.TempDir(), "out"))
	if res.code != 126 {
		t.Errorf("wal-fetch from a repository that is not there: exit %d (%s), want 126", res.code, strings.TrimSpace(res.stderr))
	}
}

// TestRestoreFromReadOnlyRepository: a repository on a filesystem mounted
// read-only (the backup disk attached after a disaster) restores: without
// a lock, saying so; a backup there fails clearly.
func TestRestoreFromReadOnlyRepository(t *testing.T) {
	fs := testenv.Ext4(t)
	repo := testRepo{loc: filepath.Join(fs.Mount, "repo")}
	mustRepo(t, repo, "init")
	dir := oneFileTree(t, 1<<20)
	b := backupOf(t, repo, dir)
	if out, err := exec.Command("mount", "-o", "remount,ro", fs.Mount).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("mount", "-o", "remount,rw", fs.Mount).Run() })
	target := t.TempDir()
	res := mustRepo(t, repo, "restore", b.ID, "--target", target)
	if !strings.Contains(res.stderr, "restoring without one") {
		t.Errorf("restore from a read-only repository did not say it runs without a lock:\n%s", res.stderr)
	}
	testenv.CompareTrees(t, dir, filepath.Join(target, dir))
	if res := umbraRepo(t, repo, "backup", dir); res.code == 0 || !strings.Contains(res.stderr, "read-only") {
		t.Errorf("backup into a read-only repository: exit %d, %s; want a failure saying why", res.code, res.stderr)
	}
}

// TestFullRepositoryDisk: a backup into a repository whose disk fills up
// fails, saying so once (issue 11: the same ENOSPC line 662 times), and
// records nothing.
func TestFullRepositoryDisk(t *testing.T) {
	testenv.NeedRoot(t)
	disk := t.TempDir()
	if err := syscall.Mount("tmpfs", disk, "tmpfs", 0, "size=3m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(disk, syscall.MNT_DETACH) })
	repo := testRepo{loc: filepath.Join(disk, "repo")}
	mustRepo(t, repo, "init")
	dir := t.TempDir()
	for i := range 300 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), testenv.Random(t, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res := umbraRepo(t, repo, "backup", dir)
	if n := strings.Count(res.stderr, "no space left"); res.code != 1 || n != 1 {
		t.Errorf("backup onto a full disk: exit %d, \"no space left\" said %d times; want 1 and once:\n%s", res.code, n, res.stderr)
	}
	if list := umbraRepo(t, repo, "backups", "--json"); strings.TrimSpace(list.stdout) != "[]" {
		t.Errorf("a backup that filled the disk left a record: %s", list.stdout)
	}
}

// oneFileTree makes a directory holding one file of size random bytes.
func oneFileTree(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), testenv.Random(t, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRepositoryFromConfig: the configuration file's [repository] names
// the repository and its password file, so that no command needs UMBRA_*
// (PostgreSQL's archive_command included); UMBRA_PASSWORD still wins, and a
// password file that cannot be read is named.
func TestRepositoryFromConfig(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "umbra.pass")
	if err := os.WriteFile(pw, []byte("from the file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "umbra.toml")
	write := func(passwordFile string) {
		t.Helper()
		text := fmt.Sprintf("[repository]\nlocation = %q\npassword_file = %q\n", filepath.Join(dir, "repo"), passwordFile)
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(pw)
	state := t.TempDir()
	mustUmbra(t, state, "--config", cfg, "init")
	mustUmbra(t, state, "--config", cfg, "backup", oneFileTree(t, 1000))
	var list []json.RawMessage
	if err := json.Unmarshal([]byte(mustUmbra(t, state, "--config", cfg, "backups", "--json").stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("backups: %d (%v), want 1", len(list), err)
	}
	if res := umbraRun(t, state, []string{"UMBRA_PASSWORD=wrong"}, "--config", cfg, "backups"); res.code == 0 {
		t.Error("UMBRA_PASSWORD=wrong opened the repository: the configuration's password file won over the environment")
	}
	write(filepath.Join(dir, "missing.pass"))
	res := umbraRun(t, state, nil, "--config", cfg, "backups")
	if res.code == 0 || !strings.Contains(res.stderr, "password_file") || !strings.Contains(res.stderr, "missing.pass") {
		t.Errorf("a missing password file: exit %d, %q; want an error naming password_file and the file", res.code, res.stderr)
	}
}

// TestShadowDirNotBackedUp: a backup of a volume's root while a shadow set
// lives on it leaves out <mount>/.umbra-shadow, where the set's copies are:
// restored into a data directory that is a volume root, MariaDB took it for
// a database (issue 11), and read live it would store the copies again.
func TestShadowDirNotBackedUp(t *testing.T) {
	fs := testenv.Btrfs(t)
	if err := os.WriteFile(filepath.Join(fs.Mount, "data"), []byte("live"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	mustUmbra(t, state, "shadow", "create", fs.Mount)
	t.Cleanup(func() { umbraRun(t, state, nil, "shadow", "delete", "--all") })
	if entries, _ := os.ReadDir(filepath.Join(fs.Mount, ".umbra-shadow")); len(entries) == 0 {
		t.Fatal("the set left nothing in .umbra-shadow; the test needs it there")
	}
	repo := newRepoDir(t)
	mustRepo(t, repo, "backup", fs.Mount)
	out := mustRepo(t, repo, "ls", "latest", fs.Mount).stdout
	if strings.Contains(out, ".umbra-shadow") || !strings.Contains(out, "data") {
		t.Errorf("ls of the backup of %s:\n%s\nwant data and no .umbra-shadow", fs.Mount, out)
	}
}
