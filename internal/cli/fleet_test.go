package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-backup/umbra/internal/testenv"
)

// TestFleet: many hosts (separate umbra processes with distinct host
// names) back up their own trees, partly the same data, into one
// repository, again and again, while another host runs forget --prune in a
// loop. No backup fails, no prune fails, every backup left restores
// byte-identical, check --read-data is clean, and the data the hosts share
// is stored once. Issue 10's field failure: 37 packs of kept backups gone.
//
// UMBRA_FLEET_CLIENTS (20) and UMBRA_FLEET_ROUNDS (3) size it;
// UMBRA_FLEET_BACKENDS (local,s3) picks the repositories; with
// UMBRA_FLEET_REPORT set, a JSON line of figures per backend is appended to
// that file (scripts/fleet.sh).
func TestFleet(t *testing.T) {
	clients := envInt(t, "UMBRA_FLEET_CLIENTS", 20)
	rounds := envInt(t, "UMBRA_FLEET_ROUNDS", 3)
	backends := strings.Split(cmpOr(os.Getenv("UMBRA_FLEET_BACKENDS"), "local,s3"), ",")
	forEachBackend(t, func(t *testing.T, repo testRepo) {
		kind := "local"
		if strings.HasPrefix(repo.loc, "s3:") {
			kind = "s3"
		}
		if !slices.Contains(backends, kind) {
			t.Skipf("UMBRA_FLEET_BACKENDS=%s", os.Getenv("UMBRA_FLEET_BACKENDS"))
		}
		fleet(t, repo, kind, clients, rounds)
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// fleetReport is what scripts/fleet.sh puts into docs/benchmarks.md.
type fleetReport struct {
	Backend       string  `json:"backend"`
	Clients       int     `json:"clients"`
	Backups       int     `json:"backups"`
	Failed        int     `json:"failed"`
	Prunes        int     `json:"prunes"`
	Seconds       float64 `json:"seconds"`
	PerMinute     float64 `json:"backups_per_minute"`
	P50           float64 `json:"p50_seconds"`
	P99           float64 `json:"p99_seconds"`
	BackedUpBytes int64   `json:"backed_up_bytes"` // one round, all hosts
	RepoBytes     int64   `json:"repo_bytes"`      // at the end (local only)
}

func fleet(t *testing.T, repo testRepo, kind string, clients, rounds int) {
	// Every host has the same 1 MiB (a shared library, say) and 256 KiB
	// of its own, one file of which changes every round.
	shared := map[string][]byte{}
	for i := range 4 {
		shared[fmt.Sprintf("shared-%d", i)] = testenv.Random(t, 256<<10)
	}
	root := t.TempDir()
	type round struct {
		host, tree string // the tree as it was backed up, kept for comparing
	}
	copies := map[string]round{} // by "host round"
	var copiesMu sync.Mutex
	durations := make(chan time.Duration, clients*rounds)
	failures := make(chan string, clients*rounds)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		host := fmt.Sprintf("host-%03d", c)
		tree := filepath.Join(root, host, "data")
		if err := os.MkdirAll(tree, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range shared {
			if err := os.WriteFile(filepath.Join(tree, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{"own-a", "own-b"} {
			if err := os.WriteFile(filepath.Join(tree, name), testenv.Random(t, 128<<10), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				if err := os.WriteFile(filepath.Join(tree, "own-b"), testenv.Random(t, 128<<10), 0o644); err != nil {
					failures <- err.Error()
					return
				}
				kept := filepath.Join(root, host, fmt.Sprintf("round-%d", r))
				if out, err := exec.Command("cp", "-a", tree, kept).CombinedOutput(); err != nil {
					failures <- fmt.Sprintf("cp: %v: %s", err, out)
					return
				}
				copiesMu.Lock()
				copies[host+" "+strconv.Itoa(r)] = round{host, kept}
				copiesMu.Unlock()
				began := time.Now()
				res := umbraRun(t, t.TempDir(), repo.environ(), "backup", "--host", host, "--tag", fmt.Sprintf("round-%d", r), tree)
				durations <- time.Since(began)
				if res.code != 0 {
					failures <- fmt.Sprintf("%s round %d: exit %d: %s", host, r, res.code, res.stderr)
				}
			}
		}()
	}
	// Another host prunes over and over until every backup has ended.
	done := make(chan struct{})
	prunes := make(chan int)
	go func() {
		n := 0
		defer func() { prunes <- n }()
		for {
			select {
			case <-done:
				return
			default:
			}
			res := umbraRun(t, t.TempDir(), repo.environ(), "forget", "--keep-last", "1", "--prune")
			if res.code != 0 {
				failures <- fmt.Sprintf("forget --prune: exit %d: %s%s", res.code, res.stdout, res.stderr)
				return
			}
			n++
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	close(done)
	nPrunes := <-prunes
	close(durations)
	close(failures)
	var failed []string
	for f := range failures {
		failed = append(failed, f)
	}
	if len(failed) > 0 {
		t.Fatalf("%d failures beside prune, the first: %s", len(failed), failed[0])
	}
	if nPrunes == 0 {
		t.Fatal("no prune finished while the hosts backed up")
	}

	// Everything left restores byte-identical and checks clean.
	if res := umbraRepo(t, repo, "check", "--read-data"); res.code != 0 {
		t.Fatalf("check --read-data after %d prunes beside %d backups: exit %d\n%s%s", nPrunes, clients*rounds, res.code, res.stdout, res.stderr)
	}
	var list []struct {
		ID   string   `json:"id"`
		Host string   `json:"host"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(mustRepo(t, repo, "backups", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]bool{}
	for _, b := range list {
		hosts[b.Host] = true
		r, ok := copies[b.Host+" "+strings.TrimPrefix(b.Tags[0], "round-")]
		if !ok {
			t.Fatalf("backup %s of %s %v: no such round was backed up", b.ID, b.Host, b.Tags)
		}
		target := t.TempDir()
		mustRepo(t, repo, "restore", b.ID, "--target", target)
		testenv.CompareTrees(t, r.tree, filepath.Join(target, root, b.Host, "data"))
	}
	if len(hosts) != clients {
		t.Errorf("backups of %d hosts left, want every one of the %d", len(hosts), clients)
	}

	rep := fleetReport{Backend: kind, Clients: clients, Backups: clients * rounds, Prunes: nPrunes,
		Seconds: elapsed.Seconds(), PerMinute: float64(clients*rounds) / elapsed.Minutes(),
		BackedUpBytes: int64(clients) * (1<<20 + 256<<10)}
	var ds []time.Duration
	for d := range durations {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	rep.P50 = ds[len(ds)/2].Seconds()
	rep.P99 = ds[min(len(ds)-1, len(ds)*99/100)].Seconds()
	if kind == "local" {
		rep.RepoBytes = dirSize(t, repo.loc)
		// After the last prune little more than one round's data of
		// each host, and the shared data once, is left.
		if limit := rep.BackedUpBytes / 2; clients > 4 && rep.RepoBytes > limit {
			t.Errorf("repository holds %d bytes for %d hosts with 1 MiB in common; want under %d: the shared data stored once", rep.RepoBytes, clients, limit)
		}
	}
	t.Logf("%s: %d clients × %d rounds beside %d prunes in %s: %.0f backups/min, p50 %.2fs, p99 %.2fs, repository %d bytes for %d backed up per round",
		kind, clients, rounds, nPrunes, elapsed.Round(time.Second), rep.PerMinute, rep.P50, rep.P99, rep.RepoBytes, rep.BackedUpBytes)
	if path := os.Getenv("UMBRA_FLEET_REPORT"); path != "" {
		line, _ := json.Marshal(rep)
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "%s\n", line)
		f.Close()
	}
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
