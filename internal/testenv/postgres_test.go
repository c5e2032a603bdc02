package testenv

import (
	"path/filepath"
	"testing"
)

func TestPostgresPgbench(t *testing.T) {
	fs := Btrfs(t)
	pg := InitPostgres(t, filepath.Join(fs.Mount, "pgdata"), PostgresOptions{})
	load := pg.StartPgbench(t, 4)
	load.Stop()
	if n := pg.PgbenchInvariant(t); n < 100 {
		t.Errorf("%d pgbench transactions in history, want at least 100", n)
	}
	// Break the invariant: the check must see it.
	pg.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1")
	ft := &fakeT{TB: t}
	pg.PgbenchInvariant(ft)
	if !ft.failed {
		t.Error("PgbenchInvariant did not notice a changed balance")
	}
}

// fakeT records Errorf instead of failing the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Errorf(string, ...any) { f.failed = true }
