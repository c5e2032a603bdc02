package retention

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestApply(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	items := []Item{
		{"a", at("2026-11-22 10:00")},
		{"b", at("2026-11-22 09:00")},
		{"c", at("2026-11-21 23:00")},
		{"d", at("2026-11-21 08:00")},
		{"e", at("2026-11-15 08:00")}, // previous ISO week
		{"f", at("2026-10-30 08:00")}, // previous month
		{"g", at("2025-12-31 08:00")}, // previous year
	}
	tests := []struct {
		name   string
		policy Policy
		keep   []string
	}{
		{"last 2", Policy{Last: 2}, []string{"a", "b"}},
		{"daily 2", Policy{Daily: 2}, []string{"a", "c"}},
		{"weekly 2", Policy{Weekly: 2}, []string{"a", "e"}},
		{"monthly 3", Policy{Monthly: 3}, []string{"a", "f", "g"}},
		{"yearly 1", Policy{Yearly: 1}, []string{"a"}},
		{"hourly all", Policy{Hourly: -1}, []string{"a", "b", "c", "d", "e", "f", "g"}},
		{"last 1 + monthly 2", Policy{Last: 1, Monthly: 2}, []string{"a", "f"}},
		{"more than there are", Policy{Daily: 100}, []string{"a", "c", "e", "f", "g"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var keep []string
			for _, d := range Apply(items, tt.policy, time.UTC) {
				if d.Keep {
					keep = append(keep, d.ID)
				}
			}
			if diff := cmp.Diff(tt.keep, keep); diff != "" {
				t.Errorf("%v keeps (-want +got):\n%s", tt.policy, diff)
			}
		})
	}
}

func TestReasons(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	ds := Apply([]Item{{"x", now}}, Policy{Last: 1, Daily: 1}, time.UTC)
	if diff := cmp.Diff([]string{"last", "daily 2026-11-22"}, ds[0].Reasons); diff != "" {
		t.Errorf("reasons (-want +got):\n%s", diff)
	}
	if !(Policy{}).Empty() || (Policy{Last: 1}).Empty() {
		t.Error("Empty is wrong")
	}
}
