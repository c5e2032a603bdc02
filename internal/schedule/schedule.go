// Package schedule reads when a job runs: calendar expressions in the form
// of systemd's OnCalendar (systemd.time(7)), the subset operators write.
//
//	minutely, hourly, daily, weekly, monthly, yearly
//	daily 02:00               a shorthand's day with a time of its own
//	Mon..Fri 02:30            weekdays (Mon,Wed and Mon..Fri), a time
//	*-*-01 03:00              a date YEAR-MONTH-DAY, a time
//	*:0/15                    every 15 minutes
//	*:*:0/5                   every 5 seconds
//
// Each field is *, a number, a list (1,15), a range (1..5) or a start with
// a step (0/15, 1..31/2). A missing date is every day; a missing time is
// 00:00:00; seconds default to 0. Times are local.
package schedule

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule is a parsed calendar expression.
type Schedule struct {
	text                    string
	weekdays                [7]bool // Sunday first, as time.Weekday
	years                   set     // absolute years; nil: any
	months, days            set
	hours, minutes, seconds set
	anyYear, anyWeekday     bool
}

// set says which values of a field match: index = value.
type set []bool

func (s set) has(v int) bool { return v >= 0 && v < len(s) && s[v] }

var shorthands = map[string]string{
	"minutely": "*-*-* *:*:00",
	"hourly":   "*-*-* *:00:00",
	"daily":    "*-*-* 00:00:00",
	"weekly":   "Mon *-*-* 00:00:00",
	"monthly":  "*-*-01 00:00:00",
	"yearly":   "*-01-01 00:00:00",
	"annually": "*-01-01 00:00:00",
}

var weekdayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// Parse reads a calendar expression; the error says what is wrong and
// shows the forms that are understood.
func Parse(text string) (*Schedule, error) {
	s, err := parse(text)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w; write it as systemd's OnCalendar, e.g. \"daily 02:00\", \"Mon..Fri 02:30\", \"*-*-01 03:00\", \"*:0/15\"", text, err)
	}
	return s, nil
}

func parse(text string) (*Schedule, error) {
	fields := strings.Fields(text)
	if len(fields) == 0 {
		return nil, errors.New("empty")
	}
	if exp, ok := shorthands[strings.ToLower(fields[0])]; ok {
		switch {
		case len(fields) == 1:
			fields = strings.Fields(exp)
		case len(fields) == 2 && strings.Contains(fields[1], ":"):
			// "daily 02:00": the shorthand's days, the given time.
			e := strings.Fields(exp)
			fields = append(e[:len(e)-1], fields[1])
		default:
			return nil, fmt.Errorf("%s takes at most a time after it", fields[0])
		}
	}
	s := &Schedule{text: text, anyWeekday: true, anyYear: true}
	date, clock := "*-*-*", "00:00:00"
	for i, f := range fields {
		switch {
		case strings.Contains(f, ":"):
			if i != len(fields)-1 {
				return nil, fmt.Errorf("the time %s must come last", f)
			}
			clock = f
		case strings.Contains(f, "-") && !strings.ContainsAny(f, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
			date = f
		case i == 0:
			if err := s.parseWeekdays(f); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%q is neither a weekday, a date (Y-M-D) nor a time (H:M[:S])", f)
		}
	}
	d := strings.Split(date, "-")
	switch len(d) {
	case 2:
		d = append([]string{"*"}, d...)
	case 3:
	default:
		return nil, fmt.Errorf("date %s: want YEAR-MONTH-DAY or MONTH-DAY", date)
	}
	var err error
	if d[0] != "*" {
		s.anyYear = false
		if s.years, err = field(d[0], 1970, 2200, "year"); err != nil {
			return nil, err
		}
	}
	if s.months, err = field(d[1], 1, 12, "month"); err != nil {
		return nil, err
	}
	if s.days, err = field(d[2], 1, 31, "day"); err != nil {
		return nil, err
	}
	c := strings.Split(clock, ":")
	switch len(c) {
	case 2:
		c = append(c, "00")
	case 3:
	default:
		return nil, fmt.Errorf("time %s: want HOUR:MINUTE[:SECOND]", clock)
	}
	if s.hours, err = field(c[0], 0, 23, "hour"); err != nil {
		return nil, err
	}
	if s.minutes, err = field(c[1], 0, 59, "minute"); err != nil {
		return nil, err
	}
	if s.seconds, err = field(c[2], 0, 59, "second"); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Schedule) parseWeekdays(f string) error {
	s.anyWeekday = false
	for item := range strings.SplitSeq(strings.ToLower(f), ",") {
		from, to, isRange := strings.Cut(item, "..")
		a, ok := weekdayNames[prefix3(from)]
		if !ok {
			return fmt.Errorf("weekday %q: want Mon, Tue, … Sun", from)
		}
		b := a
		if isRange {
			if b, ok = weekdayNames[prefix3(to)]; !ok {
				return fmt.Errorf("weekday %q: want Mon, Tue, … Sun", to)
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			s.weekdays[d] = true
			if d == b {
				break
			}
		}
	}
	return nil
}

func prefix3(s string) string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// field reads one numeric field: *, N, A..B, and either with /STEP, in
// comma-separated lists, within [lo, hi].
func field(f string, lo, hi int, what string) (set, error) {
	out := make(set, hi+1)
	for item := range strings.SplitSeq(f, ",") {
		rng, stepText, stepped := strings.Cut(item, "/")
		step := 1
		if stepped {
			n, err := strconv.Atoi(stepText)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("%s %q: the step must be a positive number", what, item)
			}
			step = n
		}
		a, b := lo, hi
		switch {
		case rng == "*":
		case strings.Contains(rng, ".."):
			x, y, _ := strings.Cut(rng, "..")
			var err1, err2 error
			a, err1 = strconv.Atoi(x)
			b, err2 = strconv.Atoi(y)
			if err1 != nil || err2 != nil || a > b {
				return nil, fmt.Errorf("%s %q: want A..B with A ≤ B", what, item)
			}
		default:
			n, err := strconv.Atoi(rng)
			if err != nil {
				return nil, fmt.Errorf("%s %q: not a number", what, item)
			}
			a = n
			if !stepped {
				b = n
			}
		}
		if a < lo || b > hi {
			return nil, fmt.Errorf("%s %q: out of %d..%d", what, item, lo, hi)
		}
		for v := a; v <= b; v += step {
			out[v] = true
		}
	}
	return out, nil
}

// String is the expression as written.
func (s *Schedule) String() string { return s.text }

// horizon bounds the search for the next time: an expression that matches
// nothing (Feb 30) has none.
const horizon = 8 * 366

// Next is the first time after t (strictly) that the schedule matches, in
// t's location; the zero time if there is none within eight years.
func (s *Schedule) Next(t time.Time) time.Time {
	loc := t.Location()
	t = t.Truncate(time.Second)
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
	for range horizon {
		if s.dayMatches(day) {
			if n, ok := s.firstInDay(day, t); ok {
				return n
			}
		}
		day = time.Date(day.Year(), day.Month(), day.Day()+1, 0, 0, 0, 0, loc)
	}
	return time.Time{}
}

func (s *Schedule) dayMatches(d time.Time) bool {
	return (s.anyYear || s.years.has(d.Year())) && s.months.has(int(d.Month())) && s.days.has(d.Day()) &&
		(s.anyWeekday || s.weekdays[d.Weekday()])
}

// firstInDay is the first matching time of day d after t. A time that the
// clock skips (a DST change) does not exist and is not matched.
func (s *Schedule) firstInDay(d, t time.Time) (time.Time, bool) {
	for h := range 24 {
		if !s.hours.has(h) {
			continue
		}
		if end := time.Date(d.Year(), d.Month(), d.Day(), h, 59, 59, 0, d.Location()); !end.After(t) {
			continue
		}
		for m := range 60 {
			if !s.minutes.has(m) {
				continue
			}
			for sec := range 60 {
				if !s.seconds.has(sec) {
					continue
				}
				c := time.Date(d.Year(), d.Month(), d.Day(), h, m, sec, 0, d.Location())
				if c.After(t) && c.Hour() == h && c.Minute() == m {
					return c, true
				}
			}
		}
	}
	return time.Time{}, false
}

// Offset is a fixed delay within jitter for the job named key: runs of
// many hosts' jobs spread over the jitter, while each keeps its own time
// (like systemd's RandomizedDelaySec with FixedRandomDelay).
func Offset(key string, jitter time.Duration) time.Duration {
	if jitter <= 0 {
		return 0
	}
	var h uint64 = 14695981039346656037 // FNV-1a
	for _, b := range []byte(key) {
		h ^= uint64(b)
		h *= 1099511628211
	}
	return time.Duration(h % uint64(jitter/time.Second+1) * uint64(time.Second))
}
