package testenv

import (
	"database/sql"
	"path/filepath"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

func TestSQLiteLoadTwoDatabases(t *testing.T) {
	dir := t.TempDir()
	dbs := []string{filepath.Join(dir, "a.db"), filepath.Join(dir, "b.db")}
	l := StartSQLiteLoad(t, dbs...)
	if err := l.WaitProgress(10 * time.Second); err != nil {
		t.Fatalf("WaitProgress: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	acks := l.Stop()
	if len(acks) < 4 {
		t.Fatalf("got %d acks in 300ms, want at least 4", len(acks))
	}
	for i, a := range acks {
		want := Ack{DB: i % 2, N: int64(i/2 + 1)}
		if a.DB != want.DB || a.N != want.N {
			t.Fatalf("ack %d: got db %d n %d, want db %d n %d", i, a.DB, a.N, want.DB, want.N)
		}
		if i > 0 && a.At.Before(acks[i-1].At) {
			t.Fatalf("ack %d at %v before ack %d at %v", i, a.At, i-1, acks[i-1].At)
		}
	}
	// Every acknowledged commit is in its database; a commit cut short by
	// SIGTERM may be there unacknowledged. Database 1 never runs ahead of
	// database 0, nor more than one behind.
	acked := [2]int64{}
	for _, a := range acks {
		acked[a.DB] = a.N
	}
	got := [2]int64{counter(t, dbs[0]), counter(t, dbs[1])}
	if got[0] < acked[0] || got[1] < acked[1] || got[0]-got[1] < 0 || got[0]-got[1] > 1 || got[0] > acked[0]+1 {
		t.Errorf("got counters %v, want at least the acknowledged %v, at most one more, and database 1 at most one behind database 0", got, acked)
	}
}

func TestSQLiteLoadResumes(t *testing.T) {
	db := filepath.Join(t.TempDir(), "one.db")
	first := StartSQLiteLoad(t, db).Stop()
	if len(first) == 0 {
		t.Fatal("first load: no acks")
	}
	// A commit cut short by SIGTERM may be in without an ack: go by the
	// database, which holds at least every acknowledged commit.
	stored := counter(t, db)
	if last := first[len(first)-1].N; stored < last || stored > last+1 {
		t.Fatalf("after the first load the counter is %d; want the last ack %d or one more", stored, last)
	}
	second := StartSQLiteLoad(t, db).Stop()
	if len(second) == 0 {
		t.Fatal("second load: no acks")
	}
	want := stored + 1
	for i, a := range second {
		if a.DB != 0 || a.N != want+int64(i) {
			t.Fatalf("second load ack %d: got db %d n %d, want db 0 n %d", i, a.DB, a.N, want+int64(i))
		}
	}
}

func TestWaitProgressAfterStop(t *testing.T) {
	l := StartSQLiteLoad(t, filepath.Join(t.TempDir(), "x.db"))
	l.Stop()
	if err := l.WaitProgress(time.Second); err == nil {
		t.Error("WaitProgress after Stop: got nil, want an error")
	}
}

func counter(t *testing.T, path string) int64 {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	if err := db.QueryRowContext(t.Context(), "SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}
