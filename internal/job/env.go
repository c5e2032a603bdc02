// Package job runs what umbra does for an operator, a configured backup from
// its writers' first phase to its retention, in the same way for the umbra
// command and for the daemon (umbra serve): each builds an Env and calls it.
package job

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/guard"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

// DefaultStateDir keeps sets and locks across runs.
const DefaultStateDir = "/var/lib/umbra"

// WriterFactory builds the writer instance name ("postgres:main") from its
// options.
type WriterFactory func(name string, opts map[string]string) (writer.Writer, error)

// Registry is what umbra runs with: the writer types by name, and the
// providers in the order they are preferred. Nothing below builds a writer
// or provider otherwise, so a daemon or a test can hand down its own.
type Registry struct {
	Writers   map[string]WriterFactory
	Providers func() []provider.Provider
}

// Env is what every job runs with.
type Env struct {
	Registry Registry
	Config   *config.Config
	// StateDir overrides the configuration's state_dir (and
	// UMBRA_STATE_DIR); empty: those, else DefaultStateDir.
	StateDir string
	Log      *slog.Logger
	// Guard is the command line that starts umbra's thaw guard (umbra's
	// own executable and the guard's hidden command).
	Guard []string
	// Pause, in tests only, holds a run at a named point (a writer phase,
	// or "manifest") so that it can be killed there.
	Pause func(ctx context.Context, point string) error
	// WaitBusy is how long a backup waits for a writer or volume another
	// backup holds (shadow.Options.WaitBusy); zero: not at all.
	WaitBusy time.Duration
}

// ConfigError is a writer specification that is wrong: a command line's
// usage error, a daemon's bad configuration.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// BrokenWriter is a writer whose options are wrong (a password_file that
// is missing): it is named, and the others still run where they can.
type BrokenWriter struct {
	Name string
	Err  error
}

func (b *BrokenWriter) Error() string { return fmt.Sprintf("writer %s: %v", b.Name, b.Err) }
func (b *BrokenWriter) Unwrap() error { return b.Err }

// StateDirectory is where state is kept: StateDir, else UMBRA_STATE_DIR,
// else the configuration's state_dir, else DefaultStateDir.
func (e *Env) StateDirectory() string {
	dir := e.StateDir
	if dir == "" {
		dir = os.Getenv("UMBRA_STATE_DIR")
	}
	if dir == "" && e.Config != nil {
		dir = e.Config.StateDir
	}
	if dir == "" {
		dir = DefaultStateDir
	}
	return dir
}

// Store opens the state directory's store of shadow sets.
func (e *Env) Store() (*shadow.Store, error) {
	return shadow.OpenStore(e.StateDirectory())
}

// BuildWriters builds the writers of the configuration (withConfig) and of
// the inline specs ("postgres:host=…"); the ones whose options are wrong
// come back as BrokenWriter errors, beside the others. A spec that cannot
// be parsed, or names an unknown type, is a ConfigError.
func (e *Env) BuildWriters(inline []string, withConfig bool) ([]writer.Writer, []config.Spec, []error, error) {
	var specs []config.Spec
	if withConfig && e.Config != nil {
		specs = e.Config.Writers
	}
	var extra []config.Spec
	for _, s := range inline {
		spec, err := config.ParseSpec(s)
		if err != nil {
			return nil, nil, nil, &ConfigError{err}
		}
		extra = append(extra, spec)
	}
	specs, err := config.Merge(specs, extra)
	if err != nil {
		return nil, nil, nil, &ConfigError{err}
	}
	kinds := e.Registry.Writers
	var wrs []writer.Writer
	var built []config.Spec
	var broken []error
	for _, spec := range specs {
		mk, ok := kinds[spec.Type]
		if !ok {
			known := slices.Sorted(maps.Keys(kinds))
			return nil, nil, nil, &ConfigError{fmt.Errorf("writer %s: unknown type %q; known types: %s", spec.Instance(), spec.Type, strings.Join(known, ", "))}
		}
		wr, err := mk(spec.Instance(), spec.Options)
		if err != nil {
			broken = append(broken, &BrokenWriter{spec.Instance(), err})
			continue
		}
		wrs = append(wrs, wr)
		built = append(built, spec)
	}
	return wrs, built, broken, nil
}

// Writers is BuildWriters where one broken writer fails them all, as a
// ConfigError naming it.
func (e *Env) Writers(inline []string, withConfig bool) ([]writer.Writer, []config.Spec, error) {
	wrs, specs, broken, err := e.BuildWriters(inline, withConfig)
	if err == nil && len(broken) > 0 {
		err = &ConfigError{broken[0]}
	}
	return wrs, specs, err
}

// Coordinator builds the coordinator with the configuration's settings,
// overridden by any set in over.
func (e *Env) Coordinator(store *shadow.Store, over shadow.Options) (*shadow.Coordinator, error) {
	var opts shadow.Options
	if e.Config != nil {
		s := e.Config.Shadow
		opts = shadow.Options{PhaseLimit: s.PhaseLimit, FreezeLimit: s.FreezeLimit, CommitLimit: s.CommitLimit, Provider: s.Provider}
	}
	opts.Log = e.Log
	opts.WaitBusy = e.WaitBusy
	if over.FreezeLimit != 0 {
		opts.FreezeLimit = over.FreezeLimit
	}
	if over.CommitLimit != 0 {
		opts.CommitLimit = over.CommitLimit
	}
	if over.Provider != "" {
		opts.Provider = over.Provider
	}
	if over.Type != "" {
		opts.Type = over.Type
	}
	opts.FSFreeze = over.FSFreeze
	// Without one, a set that needs the guard (fsfreeze, a guarded
	// writer) is refused by the coordinator, saying so.
	if argv := e.Guard; len(argv) > 0 {
		opts.Guard = func(ctx context.Context, plan guard.Plan) (func() error, error) {
			g, err := guard.Start(ctx, argv, plan)
			if err != nil {
				return nil, err
			}
			return g.Release, nil
		}
	}
	if e.Pause != nil {
		pause := e.Pause
		opts.OnPhase = func(ctx context.Context, p writer.Phase) error { return pause(ctx, string(p)) }
	}
	return shadow.New(e.Registry.Providers(), store, opts), nil
}

// BackupWriters builds the writer of each instance of the backup (of only
// those in only, if any): the configured one, else one from the spec the
// backup recorded (its password from password_file or the environment).
func (e *Env) BackupWriters(info *backup.Info, only []string) (map[string]writer.Writer, error) {
	configured, _, err := e.Writers(nil, true)
	if err != nil {
		return nil, err
	}
	wrs := map[string]writer.Writer{}
	for _, wr := range configured {
		wrs[wr.Name()] = wr
	}
	for _, wi := range info.Writers {
		if wi.Failed || wrs[wi.Name] != nil || (len(only) > 0 && !slices.Contains(only, wi.Name)) {
			continue
		}
		mk, ok := e.Registry.Writers[wi.Spec.Type]
		if !ok {
			return nil, fmt.Errorf("writer %s: type %q unknown to this umbra; configure it to restore", wi.Name, wi.Spec.Type)
		}
		wr, err := mk(wi.Name, maps.Clone(wi.Spec.Options))
		if err != nil {
			return nil, fmt.Errorf("writer %s: %w", wi.Name, err)
		}
		wrs[wi.Name] = wr
	}
	return wrs, nil
}
