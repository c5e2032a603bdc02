package writer

import (
	"slices"
	"testing"
)

// TestServiceCommand: service = "postgresql@15-main" works without systemd
// too (issue 11: in a container restore stopped at systemctl): through
// postgresql-common's pg_ctlcluster for a cluster's unit, else service(8).
func TestServiceCommand(t *testing.T) {
	defer func(f func() bool) { systemdRunning = f }(systemdRunning)
	for _, tc := range []struct {
		systemd      bool
		unit, action string
		want         []string
	}{
		{true, "postgresql@15-main", "stop", []string{"systemctl", "stop", "postgresql@15-main"}},
		{false, "postgresql@15-main", "stop", []string{"pg_ctlcluster", "15", "main", "stop"}},
		{false, "postgresql@9.6-main.service", "start", []string{"pg_ctlcluster", "9.6", "main", "start"}},
		{false, "mariadb", "start", []string{"service", "mariadb", "start"}},
		{false, "redis-server.service", "stop", []string{"service", "redis-server", "stop"}},
		{false, "redis-server@main", "stop", []string{"service", "redis-server", "stop"}},
	} {
		systemdRunning = func() bool { return tc.systemd }
		name, args := ServiceCommand(tc.action, tc.unit)
		if got := append([]string{name}, args...); !slices.Equal(got, tc.want) {
			t.Errorf("systemd %v, %s %s: %v, want %v", tc.systemd, tc.action, tc.unit, got, tc.want)
		}
	}
}
