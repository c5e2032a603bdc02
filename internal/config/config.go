// Package config reads umbra's configuration file and inline writer specs
// into one list of writer specs and the coordinator's settings.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/umbra-backup/umbra/internal/schedule"
)

// DefaultPath is where umbra looks for its configuration.
const DefaultPath = "/etc/umbra/umbra.toml"

// Config is the whole configuration file.
type Config struct {
	StateDir   string
	Repository Repository
	Shadow     Shadow
	Writers    []Spec
	Jobs       []Job
	Serve      Serve
	Notify     []Notify
}

// Notify is where umbra serve reports what its jobs did, and which events
// ("failure", "warning", "crash", "unverified", "stale"; none: all).
type Notify struct {
	On       []string
	Webhook  string // a JSON POST
	Email    string // through sendmail
	Sendmail string // default /usr/sbin/sendmail
	Command  string // /bin/sh -c, the event as JSON on stdin
}

// Serve is how umbra serve runs: where it listens, and how many jobs at once.
type Serve struct {
	Socket      string // the API's Unix socket; its permissions are the access
	SocketGroup string // a group that may use the socket besides its owner
	Listen      string // a TCP address besides it (token needed; TLS unless loopback)
	TokenFile   string // the bearer token for TCP calls
	TLSCert     string
	TLSKey      string
	MaxParallel int // jobs running at once; 0: the default (2)
	// OnStop is what SIGTERM does to a running job: "abort" (every
	// writer thawed, nothing truncated; the default) or "finish".
	OnStop string
}

// Job is a named backup (umbra backup --job NAME), or, for umbra serve, a
// verification or a prune on a schedule.
type Job struct {
	Name string
	// Type is "backup" (the default), "verify" (the latest backup of this
	// host, its Writers only if given) or "prune" (Keep applied to this
	// host's backups, all hosts' with AllHosts, then unused data removed).
	Type        string
	AllHosts    bool
	Writers     []string // writer instances ("postgres:main"); empty means all configured
	Paths       []string // plain paths besides the writers' data
	Retries     int      // for retryable set failures; -1 means the default (3)
	Fallback    bool     // back up a failing writer's data crash-consistently
	Strict      bool     // a failing writer fails the backup (else the others are stored)
	NoTruncate  []string // writers told the backup is a copy: they truncate nothing
	KeepShadows bool
	Tags        []string
	Keep        Keep // retention applied after a successful backup
	// Verify runs umbra verify on each backup the job stores.
	Verify bool
	// TruncateAfter is when the writers may truncate their logs: "stored"
	// (the default) or "verified", once the backup passed its
	// verification (which implies Verify).
	TruncateAfter string
	// Schedule is when umbra serve runs the job (nil: only when asked);
	// Jitter spreads the runs of many hosts by a fixed offset per job.
	Schedule *schedule.Schedule
	Jitter   time.Duration
	// RetryRuns is how often umbra serve runs a failed job again, RetryWait
	// apart (the first wait; each next one doubles).
	RetryRuns int
	RetryWait time.Duration
	// AlertAfter: umbra serve notifies "stale" when the job has stored no
	// backup for longer (zero: never).
	AlertAfter time.Duration
}

// Keep is a retention policy: how many backups to keep per period.
type Keep struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// Job returns the job named name.
func (c *Config) Job(name string) (Job, error) {
	var names []string
	for _, j := range c.Jobs {
		if j.Name == name {
			return j, nil
		}
		names = append(names, j.Name)
	}
	if len(names) == 0 {
		return Job{}, fmt.Errorf("no job %q: the configuration file defines no [[job]]; see umbra help config", name)
	}
	return Job{}, fmt.Errorf("no job %q; the configuration file defines: %s", name, strings.Join(names, ", "))
}

// Repository is where backups go and how to open them, for commands given
// no --repo or UMBRA_REPO, and no UMBRA_PASSWORD or UMBRA_PASSWORD_FILE.
type Repository struct {
	Location     string // a directory, or s3:https://host/bucket/prefix
	PasswordFile string // the password, on its first line
}

// Shadow holds the coordinator's settings.
type Shadow struct {
	FreezeLimit time.Duration
	CommitLimit time.Duration
	PhaseLimit  time.Duration
	Provider    string
}

// Spec configures one writer instance.
type Spec struct {
	Type    string            // sqlite, script, …
	Name    string            // instance name, unique per type
	Options map[string]string // everything else, as the writer reads it
}

// Instance is the writer's full name, such as "sqlite:app".
func (s Spec) Instance() string { return s.Type + ":" + s.Name }

type fileFormat struct {
	StateDir   string           `toml:"state_dir"`
	Repository repositoryFormat `toml:"repository"`
	Shadow     shadowFormat     `toml:"shadow"`
	Writer     []map[string]any `toml:"writer"`
	Job        []jobFormat      `toml:"job"`
	Serve      serveFormat      `toml:"serve"`
	Notify     []notifyFormat   `toml:"notify"`
}

type notifyFormat struct {
	On       []string `toml:"on"`
	Webhook  string   `toml:"webhook"`
	Email    string   `toml:"email"`
	Sendmail string   `toml:"sendmail"`
	Command  string   `toml:"command"`
}

type serveFormat struct {
	Socket      string `toml:"socket"`
	SocketGroup string `toml:"socket_group"`
	Listen      string `toml:"listen"`
	TokenFile   string `toml:"token_file"`
	TLSCert     string `toml:"tls_cert"`
	TLSKey      string `toml:"tls_key"`
	MaxParallel int    `toml:"max_parallel"`
	OnStop      string `toml:"on_stop"`
}

type repositoryFormat struct {
	Location     string `toml:"location"`
	PasswordFile string `toml:"password_file"`
}

type jobFormat struct {
	Name          string     `toml:"name"`
	Type          string     `toml:"type"`
	AllHosts      bool       `toml:"all_hosts"`
	Writers       []string   `toml:"writers"`
	Paths         []string   `toml:"paths"`
	Retries       *int       `toml:"retries"`
	Fallback      bool       `toml:"fallback"`
	Strict        bool       `toml:"strict"`
	NoTruncate    []string   `toml:"no_truncate"`
	KeepShadows   bool       `toml:"keep_shadows"`
	Tags          []string   `toml:"tags"`
	Keep          keepFormat `toml:"keep"`
	Verify        bool       `toml:"verify"`
	TruncateAfter string     `toml:"truncate_after"`
	Schedule      string     `toml:"schedule"`
	Jitter        duration   `toml:"jitter"`
	RetryRuns     int        `toml:"retry_runs"`
	RetryWait     duration   `toml:"retry_wait"`
	AlertAfter    duration   `toml:"alert_after"`
}

type keepFormat struct {
	Last    int `toml:"last"`
	Hourly  int `toml:"hourly"`
	Daily   int `toml:"daily"`
	Weekly  int `toml:"weekly"`
	Monthly int `toml:"monthly"`
	Yearly  int `toml:"yearly"`
}

type shadowFormat struct {
	FreezeLimit duration `toml:"freeze_limit"`
	CommitLimit duration `toml:"commit_limit"`
	PhaseLimit  duration `toml:"phase_limit"`
	Provider    string   `toml:"provider"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration; write it like \"30s\" or \"2m\"", b)
	}
	d.Duration = v
	return nil
}

// Load reads the file at path. A missing file is an empty configuration
// only when it is the default path; a file the user named must exist.
func Load(path string, explicit bool) (*Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return &Config{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return Parse(path, string(b))
}

// Parse reads configuration text; name is used in errors.
func Parse(name, text string) (*Config, error) {
	var f fileFormat
	md, err := toml.Decode(text, &f)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var keys []string
		for _, k := range und {
			if len(k) > 0 && k[0] == "writer" {
				continue // writer tables are free-form, checked by each writer
			}
			keys = append(keys, k.String())
		}
		if len(keys) > 0 {
			return nil, fmt.Errorf("config %s: unknown setting %s; see umbra help config", name, strings.Join(keys, ", "))
		}
	}
	cfg := &Config{
		StateDir:   f.StateDir,
		Repository: Repository(f.Repository),
		Shadow: Shadow{
			FreezeLimit: f.Shadow.FreezeLimit.Duration,
			CommitLimit: f.Shadow.CommitLimit.Duration,
			PhaseLimit:  f.Shadow.PhaseLimit.Duration,
			Provider:    f.Shadow.Provider,
		},
	}
	cfg.Serve = Serve(f.Serve)
	switch cfg.Serve.OnStop {
	case "", "abort", "finish":
	default:
		return nil, fmt.Errorf("config %s: [serve] on_stop = %q; want \"abort\" or \"finish\"", name, cfg.Serve.OnStop)
	}
	if cfg.Serve.MaxParallel < 0 {
		return nil, fmt.Errorf("config %s: [serve] max_parallel cannot be negative", name)
	}
	for i, n := range f.Notify {
		targets := 0
		for _, v := range []string{n.Webhook, n.Email, n.Command} {
			if v != "" {
				targets++
			}
		}
		if targets != 1 {
			return nil, fmt.Errorf("config %s: notify #%d: give exactly one of webhook, email and command", name, i+1)
		}
		for _, on := range n.On {
			if !slices.Contains([]string{"failure", "warning", "crash", "unverified", "stale"}, on) {
				return nil, fmt.Errorf("config %s: notify #%d: on = %q; the events are failure, warning, crash, unverified and stale", name, i+1, on)
			}
		}
		cfg.Notify = append(cfg.Notify, Notify(n))
	}
	for i, w := range f.Writer {
		opts := map[string]string{}
		for k, v := range w {
			switch v := v.(type) {
			case string:
				opts[k] = v
			case int64, float64, bool:
				opts[k] = fmt.Sprint(v)
			default:
				return nil, fmt.Errorf("config %s: writer #%d: %s must be a string, number or boolean", name, i+1, k)
			}
		}
		spec, err := newSpec(opts)
		if err != nil {
			return nil, fmt.Errorf("config %s: writer #%d: %w", name, i+1, err)
		}
		cfg.Writers = append(cfg.Writers, spec)
	}
	if err := checkUnique(cfg.Writers); err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	seen := map[string]bool{}
	for i, j := range f.Job {
		if j.Name == "" || seen[j.Name] {
			return nil, fmt.Errorf("config %s: job #%d: every [[job]] needs a name of its own", name, i+1)
		}
		seen[j.Name] = true
		job := Job{Name: j.Name, Type: j.Type, AllHosts: j.AllHosts, Writers: j.Writers, Paths: j.Paths, Retries: -1, Fallback: j.Fallback, Strict: j.Strict,
			NoTruncate: j.NoTruncate, KeepShadows: j.KeepShadows, Tags: j.Tags, Keep: Keep(j.Keep),
			Verify: j.Verify || j.TruncateAfter == "verified", TruncateAfter: j.TruncateAfter,
			Jitter: j.Jitter.Duration, RetryRuns: j.RetryRuns, RetryWait: j.RetryWait.Duration, AlertAfter: j.AlertAfter.Duration}
		if j.Schedule != "" {
			sch, err := schedule.Parse(j.Schedule)
			if err != nil {
				return nil, fmt.Errorf("config %s: job %s: %w", name, j.Name, err)
			}
			job.Schedule = sch
		}
		if job.RetryRuns < 0 || job.Jitter < 0 || job.RetryWait < 0 {
			return nil, fmt.Errorf("config %s: job %s: retry_runs, retry_wait and jitter cannot be negative", name, j.Name)
		}
		if job.RetryRuns > 0 && job.RetryWait == 0 {
			job.RetryWait = time.Minute
		}
		switch job.Type {
		case "":
			job.Type = "backup"
		case "backup", "verify", "prune":
		default:
			return nil, fmt.Errorf("config %s: job %s: type = %q; want \"backup\", \"verify\" or \"prune\"", name, j.Name, j.Type)
		}
		if job.Type != "backup" && (len(j.Paths) > 0 || j.Fallback || j.Strict || len(j.NoTruncate) > 0 || j.Verify || j.TruncateAfter != "") {
			return nil, fmt.Errorf("config %s: job %s: paths, fallback, strict, no_truncate, verify and truncate_after are for backup jobs, not %s", name, j.Name, job.Type)
		}
		if job.Type == "prune" && Keep(j.Keep) == (Keep{}) {
			return nil, fmt.Errorf("config %s: job %s: a prune job needs [job.keep] (what to keep); an empty policy would remove every backup", name, j.Name)
		}
		switch j.TruncateAfter {
		case "", "stored", "verified":
		default:
			return nil, fmt.Errorf("config %s: job %s: truncate_after = %q; want \"stored\" or \"verified\"", name, j.Name, j.TruncateAfter)
		}
		if j.Retries != nil {
			job.Retries = *j.Retries
		}
		for _, w := range append(slices.Clone(j.Writers), j.NoTruncate...) {
			if !slices.ContainsFunc(cfg.Writers, func(s Spec) bool { return s.Instance() == w }) {
				return nil, fmt.Errorf("config %s: job %s: no writer %s among the [[writer]] sections", name, j.Name, w)
			}
		}
		cfg.Jobs = append(cfg.Jobs, job)
	}
	return cfg, nil
}

// ParseSpec reads an inline writer spec: TYPE:KEY=VALUE[,KEY=VALUE…].
// A comma inside a value is written "\,".
func ParseSpec(s string) (Spec, error) {
	bad := func(why string) (Spec, error) {
		return Spec{}, fmt.Errorf("writer spec %q: %s; want TYPE:KEY=VALUE[,KEY=VALUE...], e.g. sqlite:path=/data/app.db", s, why)
	}
	typ, rest, ok := strings.Cut(s, ":")
	if !ok || typ == "" {
		return bad("no type before ':'")
	}
	opts := map[string]string{"type": typ}
	for _, kv := range splitUnescaped(rest) {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return bad(fmt.Sprintf("%q is not KEY=VALUE", kv))
		}
		if _, dup := opts[k]; dup {
			return bad(fmt.Sprintf("%s given twice", k))
		}
		if k == "password" {
			// Anyone can read a command line with ps.
			return Spec{}, fmt.Errorf("writer spec %s: a password on the command line is visible to every user in ps; use password_file=PATH, the writer's section in the configuration file, or the client's environment variable (PGPASSWORD, MYSQL_PWD, REDISCLI_AUTH)", typ)
		}
		opts[k] = v
	}
	spec, err := newSpec(opts)
	if err != nil {
		return bad(err.Error())
	}
	return spec, nil
}

func splitUnescaped(s string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteByte(',')
			i++
		case s[i] == ',':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(parts, cur.String())
}

// newSpec takes type and name out of opts. The default name is the base
// name of the path option without its extension, else "default".
func newSpec(opts map[string]string) (Spec, error) {
	typ := opts["type"]
	if typ == "" {
		return Spec{}, errors.New("type is missing (sqlite, script, …)")
	}
	name := opts["name"]
	if name == "" {
		name = "default"
		if p := opts["path"]; p != "" {
			name = strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		}
	}
	if strings.ContainsAny(name, ":/ ") {
		return Spec{}, fmt.Errorf("name %q may not contain ':', '/' or spaces", name)
	}
	delete(opts, "type")
	delete(opts, "name")
	return Spec{Type: typ, Name: name, Options: opts}, nil
}

// Merge adds inline specs after the file's, refusing duplicate instances.
func Merge(file, inline []Spec) ([]Spec, error) {
	all := append(append([]Spec(nil), file...), inline...)
	return all, checkUnique(all)
}

func checkUnique(specs []Spec) error {
	seen := map[string]bool{}
	for _, s := range specs {
		if seen[s.Instance()] {
			return fmt.Errorf("writer %s is configured twice; give one a different name=", s.Instance())
		}
		seen[s.Instance()] = true
	}
	return nil
}
