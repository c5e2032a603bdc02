package writer

import "testing"

func TestExcluded(t *testing.T) {
	patterns := []string{"/data/pg_wal/*", "/data/postmaster.pid", "/data/**/pgsql_tmp*"}
	tests := []struct {
		path string
		want bool
	}{
		{"/data/pg_wal/000000010000000000000001", true},
		{"/data/pg_wal/archive_status/x.done", true},
		{"/data/pg_wal", false}, // the directory stays, its contents go
		{"/data/postmaster.pid", true},
		{"/data/postmaster.opts", false},
		{"/data/pgsql_tmp", true},
		{"/data/base/pgsql_tmp/pgsql_tmp123.0", true},
		{"/data/base/1/1259", false},
		{"/other/pgsql_tmp", false},
		{"/database/pg_wal/x", false},
	}
	for _, tt := range tests {
		if got := Excluded(patterns, tt.path); got != tt.want {
			t.Errorf("Excluded(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}
