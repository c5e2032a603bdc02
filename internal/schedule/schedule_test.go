package schedule

import (
	"strings"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	utc := time.UTC
	at := func(s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04:05", s, utc)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, tc := range []struct {
		expr, after, want string
	}{
		{"daily", "2026-12-02 08:00:00", "2026-12-03 00:00:00"},
		{"daily 02:00", "2026-12-02 01:59:59", "2026-12-02 02:00:00"},
		{"daily 02:00", "2026-12-02 02:00:00", "2026-12-03 02:00:00"}, // strictly after
		{"hourly", "2026-12-31 23:10:00", "2027-01-01 00:00:00"},
		{"minutely", "2026-12-02 08:00:30", "2026-12-02 08:01:00"},
		{"weekly", "2026-12-02 08:00:00", "2026-12-07 00:00:00"}, // a Wednesday → Monday
		{"monthly", "2026-12-02 08:00:00", "2027-01-01 00:00:00"},
		{"yearly", "2026-12-02 08:00:00", "2027-01-01 00:00:00"},
		{"Mon..Fri 02:30", "2026-12-04 03:00:00", "2026-12-07 02:30:00"}, // Friday → Monday
		{"Sat,Sun 10:00", "2026-12-02 00:00:00", "2026-12-05 10:00:00"},
		{"Fri..Mon 10:00", "2026-12-02 00:00:00", "2026-12-04 10:00:00"}, // wraps through Sunday
		{"*-*-01 03:00", "2026-12-02 00:00:00", "2027-01-01 03:00:00"},
		{"*-02-29 00:00", "2026-03-01 00:00:00", "2028-02-29 00:00:00"},
		{"2030-06-15 12:00", "2026-12-02 00:00:00", "2030-06-15 12:00:00"},
		{"*:0/15", "2026-12-02 08:16:00", "2026-12-02 08:30:00"},
		{"*:*:0/5", "2026-12-02 08:00:03", "2026-12-02 08:00:05"},
		{"*:*:0/5", "2026-12-02 08:00:55", "2026-12-02 08:01:00"},
		{"*:*:2/5", "2026-12-02 08:00:03", "2026-12-02 08:00:07"},
		{"08..10:00", "2026-12-02 10:30:00", "2026-12-03 08:00:00"},
		{"*-*-* 1,13:05:09", "2026-12-02 02:00:00", "2026-12-02 13:05:09"},
		{"12-24 18:00", "2026-12-25 00:00:00", "2027-12-24 18:00:00"},
	} {
		s, err := Parse(tc.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.expr, err)
			continue
		}
		if got := s.Next(at(tc.after)); !got.Equal(at(tc.want)) {
			t.Errorf("%q after %s: got %s, want %s", tc.expr, tc.after, got.Format(time.DateTime), tc.want)
		}
	}
}

func TestNextNever(t *testing.T) {
	s, err := Parse("*-02-30")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Next(time.Now()); !got.IsZero() {
		t.Errorf("February 30th: got %s, want none", got)
	}
}

// TestNextSkipsMissingTime: 02:30 does not exist in Europe/Berlin on the
// day summer time starts; the next one is the day after.
func TestNextSkipsMissingTime(t *testing.T) {
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	s, _ := Parse("daily 02:30")
	got := s.Next(time.Date(2026, 3, 29, 0, 0, 0, 0, loc))
	if want := time.Date(2026, 3, 30, 2, 30, 0, 0, loc); !got.Equal(want) {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"", "empty"},
		{"sometimes", "weekday \"sometimes\""},
		{"Mon foo", "neither a weekday"},
		{"Funday 02:00", "weekday"},
		{"daily 25:00", "hour \"25\": out of 0..23"},
		{"*:0/0", "step must be a positive"},
		{"*-13-01", "month \"13\": out of 1..12"},
		{"02:00 Mon", "must come last"},
		{"5..3:00", "A ≤ B"},
		{"daily Mon", "at most a time"},
	} {
		_, err := Parse(tc.expr)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "daily 02:00") {
			t.Errorf("Parse(%q): %v; want an error saying %q and showing the forms", tc.expr, err, tc.want)
		}
	}
}

func TestOffset(t *testing.T) {
	if Offset("a", 0) != 0 {
		t.Error("no jitter, yet an offset")
	}
	seen := map[time.Duration]bool{}
	for _, k := range []string{"db1/nightly", "db2/nightly", "db3/nightly", "db4/nightly"} {
		o := Offset(k, time.Hour)
		if o < 0 || o > time.Hour || o != Offset(k, time.Hour) {
			t.Errorf("Offset(%q) = %s: want a fixed value within the hour", k, o)
		}
		seen[o] = true
	}
	if len(seen) < 2 {
		t.Error("four keys, one offset: the jitter spreads nothing")
	}
}
