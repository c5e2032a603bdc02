package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// runLogLines is how many of a run's last log lines are kept with it.
const runLogLines = 200

// runLog keeps a run's log lines (the phases with -v's detail, warnings,
// retries) for the API and the history, and passes each to the daemon's
// own log.
type runLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *runLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == runLogLines {
		l.lines = append(l.lines[:0], l.lines[1:]...)
	}
	l.lines = append(l.lines, s)
}

func (l *runLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// logger is a logger that writes to base (at its level) and, from debug
// up, to the run's lines.
func (l *runLog) logger(base *slog.Logger, runID string) *slog.Logger {
	return slog.New(&teeHandler{base: base.With("run", runID).Handler(), log: l})
}

type teeHandler struct {
	base  slog.Handler
	log   *runLog
	attrs []slog.Attr
	group string
}

func (h *teeHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", r.Time.Format("15:04:05.000"), r.Level, r.Message)
	write := func(a slog.Attr) bool {
		key := a.Key
		if h.group != "" {
			key = h.group + "." + key
		}
		fmt.Fprintf(&b, " %s=%v", key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	h.log.add(b.String())
	if h.base.Enabled(ctx, r.Level) {
		return h.base.Handle(ctx, r)
	}
	return nil
}

func (h *teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.base = h.base.WithAttrs(attrs)
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.base = h.base.WithGroup(name)
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}
