// Package retention decides which backups a keep policy keeps: the last n,
// and the newest in each of the last n hours, days, weeks, months, years
// that have a backup.
package retention

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Policy counts how many of each kind to keep. Zero keeps none of that
// kind; -1 keeps all.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// Empty reports whether the policy keeps nothing, which forget refuses:
// an empty policy would delete every backup.
func (p Policy) Empty() bool {
	return p == Policy{}
}

func (p Policy) String() string {
	var parts []string
	for _, r := range p.rules() {
		if r.n != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, r.n))
		}
	}
	return strings.Join(parts, ", ")
}

// Item is one backup.
type Item struct {
	ID   string
	Time time.Time
}

// Decision is what Apply made of one item.
type Decision struct {
	Item
	Keep    bool
	Reasons []string // the rules that keep it, e.g. "daily 2026-11-22"
}

type rule struct {
	name   string
	n      int
	bucket func(time.Time) string
}

func (p Policy) rules() []rule {
	return []rule{
		{"last", p.Last, nil},
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15h") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// Apply decides for each item, newest first. Times are bucketed in loc.
func Apply(items []Item, p Policy, loc *time.Location) []Decision {
	ds := make([]Decision, len(items))
	for i, it := range items {
		ds[i] = Decision{Item: it}
	}
	sort.SliceStable(ds, func(i, j int) bool { return ds[i].Time.After(ds[j].Time) })
	for _, r := range p.rules() {
		if r.n == 0 {
			continue
		}
		seen := map[string]bool{}
		for i := range ds {
			if r.n > 0 && len(seen) >= r.n {
				break
			}
			key := fmt.Sprint(i)
			if r.bucket != nil {
				key = r.bucket(ds[i].Time.In(loc))
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			ds[i].Keep = true
			reason := r.name
			if r.bucket != nil {
				reason += " " + key
			}
			ds[i].Reasons = append(ds[i].Reasons, reason)
		}
	}
	return ds
}
