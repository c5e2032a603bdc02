package daemon

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/umbra-backup/umbra/internal/catalog"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/shadow"
)

// APIPrefix is where version 1 of the API is served.
const APIPrefix = "/api/v1"

// JobView is a job as the API shows it.
type JobView struct {
	Name     string    `json:"name"`
	Schedule string    `json:"schedule,omitempty"`
	Writers  []string  `json:"writers"`
	Paths    []string  `json:"paths,omitempty"`
	NextRun  time.Time `json:"next_run,omitzero"`
	Running  *Run      `json:"running,omitempty"`
	Waiting  string    `json:"waiting,omitempty"` // a run whose time came, waiting for its writers or a slot
	LastRun  *Run      `json:"last_run,omitempty"`
	// LastSuccess is the last run that stored a backup that can be
	// relied on.
	LastSuccess *Run `json:"last_success,omitempty"`
}

// Jobs lists the configured jobs, by name.
func (d *Daemon) Jobs() []JobView {
	d.mu.Lock()
	var out []JobView
	for _, js := range d.jobs {
		v := JobView{Name: js.cfg.Name, Writers: d.jobWriters(js.cfg), Paths: js.cfg.Paths, NextRun: js.next}
		if js.cfg.Schedule != nil {
			v.Schedule = js.cfg.Schedule.String()
		}
		if js.current != nil {
			if r, ok := d.hist.get(js.current.run.ID); ok {
				v.Running = &r
			}
		}
		if js.due != nil {
			v.Waiting = js.due.trigger
		}
		out = append(out, v)
	}
	d.mu.Unlock()
	for i := range out {
		out[i].LastRun, out[i].LastSuccess = d.hist.last(out[i].Name)
		if out[i].Running != nil && out[i].LastRun != nil && out[i].LastRun.ID == out[i].Running.ID {
			// The last run that ended is the one before.
			runs := d.hist.list(out[i].Name, 2)
			out[i].LastRun = nil
			if len(runs) == 2 {
				out[i].LastRun = &runs[1]
			}
		}
	}
	slices.SortFunc(out, func(a, b JobView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Runs lists the history, newest first: of one job if named, at most limit.
func (d *Daemon) Runs(job string, limit int) []Run { return d.hist.list(job, limit) }

// Progress is a running job's progress, and its log so far.
type Progress struct {
	Run        Run   `json:"run"`
	Files      int64 `json:"files"`
	BytesRead  int64 `json:"bytes_read"`
	BytesAdded int64 `json:"bytes_added"`
}

// progress is the run's state now, and whether it still runs.
func (d *Daemon) progress(id string) (Progress, bool, bool) {
	r, ok := d.hist.get(id)
	if !ok {
		return Progress{}, false, false
	}
	p := Progress{Run: r, Files: r.Files, BytesRead: r.BytesRead, BytesAdded: r.BytesAdded}
	d.mu.Lock()
	defer d.mu.Unlock()
	if js := d.jobs[r.Job]; js != nil && js.current != nil && js.current.run.ID == id {
		pr := js.current.progress
		p.Files, p.BytesRead, p.BytesAdded = pr.Files.Load(), pr.BytesRead.Load(), pr.BytesAdded.Load()
		p.Run.Log = js.current.log.snapshot()
		return p, true, true
	}
	if a := d.ops[id]; a != nil {
		p.Files, p.BytesRead = a.restored.Files.Load(), a.restored.Bytes.Load()
		p.Run.Log = a.log.snapshot()
		return p, true, true
	}
	return p, true, false
}

// Handler is the API, the metrics and (later) the UI. Authentication is
// the listener's: see Authenticated.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+APIPrefix+"/status", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		running := d.running
		d.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"version": d.opts.Version, "started": d.started, "running": running})
	})
	mux.HandleFunc("GET "+APIPrefix+"/jobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Jobs())
	})
	mux.HandleFunc("POST "+APIPrefix+"/jobs/{name}/run", func(w http.ResponseWriter, r *http.Request) {
		run, err := d.RunNow(r.PathValue("name"))
		switch {
		case errors.Is(err, ErrNoJob):
			writeError(w, http.StatusNotFound, err)
		case errors.Is(err, ErrBusy):
			writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error(), "run": run})
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, err)
		case run == nil:
			writeJSON(w, http.StatusAccepted, map[string]any{"waiting": "the job's writers are busy or every slot is taken; it starts when they free"})
		default:
			writeJSON(w, http.StatusAccepted, run)
		}
	})
	mux.HandleFunc("GET "+APIPrefix+"/runs", func(w http.ResponseWriter, r *http.Request) {
		limit := 100
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, fmt.Errorf("limit %q: want a number ≥ 0 (0: all)", l))
				return
			}
			limit = n
		}
		runs := d.Runs(r.URL.Query().Get("job"), limit)
		if runs == nil {
			runs = []Run{}
		}
		writeJSON(w, http.StatusOK, runs)
	})
	mux.HandleFunc("GET "+APIPrefix+"/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		p, ok, _ := d.progress(r.PathValue("id"))
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("no run %q in the history", r.PathValue("id")))
			return
		}
		writeJSON(w, http.StatusOK, p)
	})
	mux.HandleFunc("GET "+APIPrefix+"/runs/{id}/events", d.serveEvents)
	mux.HandleFunc("GET "+APIPrefix+"/backups", func(w http.ResponseWriter, r *http.Request) {
		d.withRepository(w, r, func(ctx context.Context, repo *repository.Repository) (any, error) {
			return catalog.Backups(ctx, repo)
		})
	})
	mux.HandleFunc("POST "+APIPrefix+"/backups/{id}/verify", func(w http.ResponseWriter, r *http.Request) {
		d.operate(w, KindVerify, r.PathValue("id"), "")
	})
	mux.HandleFunc("POST "+APIPrefix+"/backups/{id}/restore", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Target string `json:"target"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("want {\"target\": \"/absolute/empty/dir\"}: %w", err))
			return
		}
		d.operate(w, KindRestore, r.PathValue("id"), body.Target)
	})
	mux.HandleFunc("GET "+APIPrefix+"/shadows", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		cfg := d.cfg
		d.mu.Unlock()
		env := d.opts.Env(cfg)
		store, err := env.Store()
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		coord, err := env.Coordinator(store, shadow.Options{})
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		sets, err := coord.List(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if sets == nil {
			sets = []*shadow.Set{}
		}
		writeJSON(w, http.StatusOK, sets)
	})
	mux.HandleFunc("GET "+APIPrefix+"/verifications", func(w http.ResponseWriter, r *http.Request) {
		d.withRepository(w, r, func(ctx context.Context, repo *repository.Repository) (any, error) {
			v, err := repo.Verifications(ctx)
			if v == nil {
				v = []repository.Verification{}
			}
			return v, err
		})
	})
	mux.HandleFunc("GET "+APIPrefix+"/writers", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		cfg := d.cfg
		d.mu.Unlock()
		type view struct {
			Name string `json:"name"`
			Type string `json:"type"`
			Busy string `json:"busy,omitempty"` // the job running with it
		}
		out := []view{}
		d.mu.Lock()
		for _, s := range cfg.Writers {
			out = append(out, view{Name: s.Instance(), Type: s.Type, Busy: d.busy[s.Instance()]})
		}
		d.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	ui := uiHandler()
	for path := range uiPaths {
		if path == "/" {
			path = "/{$}"
		}
		mux.Handle("GET "+path, ui)
	}
	mux.HandleFunc(APIPrefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no %s %s in the API; docs/api.md lists the calls", r.Method, r.URL.Path))
	})
	return mux
}

func (d *Daemon) operate(w http.ResponseWriter, kind, ref, target string) {
	run, err := d.Operate(kind, ref, target)
	switch {
	case errors.Is(err, ErrStopping):
		writeError(w, http.StatusServiceUnavailable, err)
	case err != nil:
		writeError(w, http.StatusBadRequest, err)
	default:
		writeJSON(w, http.StatusAccepted, run)
	}
}

// withRepository opens the repository (shared lock: a prune may run
// beside) for one call.
func (d *Daemon) withRepository(w http.ResponseWriter, r *http.Request, fn func(context.Context, *repository.Repository) (any, error)) {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	repo, done, err := d.opts.Open(ctx, cfg)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("open the repository: %w", err))
		return
	}
	defer done()
	lock, err := repo.Lock(ctx, false, "api")
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("lock the repository: %w", err))
		return
	}
	defer lock.Unlock(context.Background())
	v, err := fn(lock.Context(), repo)
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// serveEvents follows a run as server-sent events: a "progress" event each
// half second while it runs, then one "end" with the run as recorded.
func (d *Daemon) serveEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("streaming unsupported"))
		return
	}
	if _, ok, _ := d.progress(id); !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("no run %q in the history", id))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		p, _, running := d.progress(id)
		event := "progress"
		if !running {
			event = "end"
		}
		b, _ := json.Marshal(p)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		flusher.Flush()
		if !running {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// Authenticated lets through calls that carry the token ("Authorization:
// Bearer TOKEN"), and /metrics and the UI's static files without one; the
// rest get 401.
func Authenticated(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" || uiPaths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="umbra"`)
			writeError(w, http.StatusUnauthorized, errors.New("a token is needed: Authorization: Bearer TOKEN, the token in umbra serve's token file"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
