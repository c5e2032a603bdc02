package daemon

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/umbra-backup/umbra/internal/config"
)

// consistencyLevels are the values of umbra_writer_consistency's level.
var consistencyLevels = []string{"application", "crash", "copy", "failed"}

// metrics are the daemon's Prometheus metrics, all derived from the runs
// the history records (and set again from it at start), so that /metrics,
// the API and the history agree.
type metrics struct {
	reg *prometheus.Registry

	lastRun, lastSuccess, lastDuration, lastOK *prometheus.GaugeVec
	lastRead, lastAdded                        *prometheus.GaugeVec
	runs, skips, readTotal, addedTotal         *prometheus.CounterVec
	freeze                                     *prometheus.HistogramVec
	consistency                                *prometheus.GaugeVec
	verifyOK, verifyTime                       *prometheus.GaugeVec
	repoBackups, repoSize                      prometheus.Gauge
}

func newMetrics(d *Daemon) *metrics {
	job := []string{"job"}
	g := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	c := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &metrics{
		reg:          prometheus.NewRegistry(),
		lastRun:      g("umbra_job_last_run_timestamp_seconds", "When the job's last run ended, in seconds since the epoch.", job...),
		lastSuccess:  g("umbra_job_last_success_timestamp_seconds", "When the job last stored a backup that can be relied on (status ok or warning), in seconds since the epoch.", job...),
		lastDuration: g("umbra_job_last_run_duration_seconds", "How long the job's last run took.", job...),
		lastOK:       g("umbra_job_last_run_success", "1 if the job's last run stored a backup that can be relied on, else 0.", job...),
		lastRead:     g("umbra_job_last_run_read_bytes", "Bytes the job's last run read from its sources.", job...),
		lastAdded:    g("umbra_job_last_run_added_bytes", "Bytes the job's last run added to the repository.", job...),
		runs:         c("umbra_job_runs_total", "Runs of the job that ended, by status (ok, warning, partial, unverified, failed, aborted, interrupted).", "job", "status"),
		skips:        c("umbra_job_skipped_runs_total", "Scheduled times skipped because the job's previous run had not ended.", job...),
		readTotal:    c("umbra_job_read_bytes_total", "Bytes read by the job's runs.", job...),
		addedTotal:   c("umbra_job_added_bytes_total", "Bytes added to the repository by the job's runs.", job...),
		freeze: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "umbra_job_freeze_window_seconds", Help: "How long the job's applications were frozen for the shadow copy.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, job),
		consistency: g("umbra_writer_consistency", "1 for the consistency level of the writer's data in the job's last backup (application, crash, copy, or failed: left out), 0 for the others.", "job", "writer", "level"),
		verifyOK:    g("umbra_job_last_verification_success", "1 if the last verification of the job's backups passed, else 0.", job...),
		verifyTime:  g("umbra_job_last_verification_timestamp_seconds", "When the job's backups were last verified, in seconds since the epoch.", job...),
		repoBackups: prometheus.NewGauge(prometheus.GaugeOpts{Name: "umbra_repository_backups", Help: "Backups in the repository, as the last run counted them."}),
		repoSize:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "umbra_repository_size_bytes", Help: "Bytes of data packs in the repository, as the last run counted them."}),
	}
	up := prometheus.NewGauge(prometheus.GaugeOpts{Name: "umbra_daemon_up", Help: "1 while umbra serve runs."})
	up.Set(1)
	startT := prometheus.NewGauge(prometheus.GaugeOpts{Name: "umbra_daemon_start_time_seconds", Help: "When umbra serve started, in seconds since the epoch."})
	startT.Set(float64(d.started.UnixNano()) / 1e9)
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "umbra_build_info", Help: "umbra's version and the Go it was built with; always 1."}, []string{"version", "goversion"})
	info.WithLabelValues(d.opts.Version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.lastRun, m.lastSuccess, m.lastDuration, m.lastOK, m.lastRead, m.lastAdded, m.runs, m.skips,
		m.readTotal, m.addedTotal, m.freeze, m.consistency, m.verifyOK, m.verifyTime, m.repoBackups, m.repoSize,
		up, startT, info, &stateCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	runs := d.hist.list("", 0) // newest first
	for i := len(runs) - 1; i >= 0; i-- {
		if runs[i].Status != StatusRunning {
			m.observe(&runs[i])
		}
	}
	return m
}

// setJobs makes every configured job's counters visible at zero before
// its first run.
func (m *metrics) setJobs(jobs []config.Job) {
	for _, j := range jobs {
		m.runs.WithLabelValues(j.Name, StatusOK)
		m.runs.WithLabelValues(j.Name, StatusFailed)
		m.skips.WithLabelValues(j.Name)
	}
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// observe takes an ended run. The history replays runs oldest first.
func (m *metrics) observe(r *Run) {
	j := r.Job
	if j == "" {
		return // an operation asked through the API, not a job
	}
	m.runs.WithLabelValues(j, r.Status).Inc()
	m.lastRun.WithLabelValues(j).Set(unix(r.Ended))
	m.lastDuration.WithLabelValues(j).Set(r.Ended.Sub(r.Started).Seconds())
	ok := 0.0
	if r.Succeeded() {
		ok = 1
		m.lastSuccess.WithLabelValues(j).Set(unix(r.Ended))
	}
	m.lastOK.WithLabelValues(j).Set(ok)
	if r.Backup == "" {
		return
	}
	m.lastRead.WithLabelValues(j).Set(float64(r.BytesRead))
	m.lastAdded.WithLabelValues(j).Set(float64(r.BytesAdded))
	m.readTotal.WithLabelValues(j).Add(float64(r.BytesRead))
	m.addedTotal.WithLabelValues(j).Add(float64(r.BytesAdded))
	if len(r.Writers) > 0 {
		m.freeze.WithLabelValues(j).Observe(r.FreezeMS / 1000)
	}
	for _, w := range r.Writers {
		level := w.Consistency
		if w.Failed {
			level = "failed"
		}
		for _, l := range consistencyLevels {
			v := 0.0
			if l == level {
				v = 1
			}
			m.consistency.WithLabelValues(j, w.Name, l).Set(v)
		}
	}
	if r.Verified != nil {
		v := 0.0
		if *r.Verified {
			v = 1
		}
		m.verifyOK.WithLabelValues(j).Set(v)
		m.verifyTime.WithLabelValues(j).Set(unix(r.Ended))
	}
}

func (m *metrics) skipped(job string) { m.skips.WithLabelValues(job).Inc() }

func (m *metrics) repository(backups int, size int64) {
	m.repoBackups.Set(float64(backups))
	m.repoSize.Set(float64(size))
}

// stateCollector reports what the scheduler knows at the time of the
// scrape: whether each job runs, and when it runs next.
type stateCollector struct{ d *Daemon }

var (
	runningDesc = prometheus.NewDesc("umbra_job_running", "1 while the job runs, else 0.", []string{"job"}, nil)
	nextDesc    = prometheus.NewDesc("umbra_job_next_run_timestamp_seconds", "When the job's schedule runs it next, in seconds since the epoch.", []string{"job"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- runningDesc
	ch <- nextDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	for name, js := range c.d.jobs {
		running := 0.0
		if js.current != nil {
			running = 1
		}
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, running, name)
		if !js.next.IsZero() {
			ch <- prometheus.MustNewConstMetric(nextDesc, prometheus.GaugeValue, unix(js.next), name)
		}
	}
}
