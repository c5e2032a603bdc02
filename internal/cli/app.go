package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/backend/retry"
	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

// defaultStateDir keeps sets and locks across runs.
const defaultStateDir = job.DefaultStateDir

// app holds what every command shares: streams, global flags, and the
// registries of writers and providers, built here and nowhere else.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	configPath string
	stateDir   string
	json       bool
	verbose    bool
	retryFor   time.Duration
	// retrying is the last backend opened, wrapped to retry transient
	// failures; its count goes into the results.
	retrying *retry.Backend
	reg      Registry
}

// storeRetries is how many store calls failed and were made again.
func (a *app) storeRetries() int64 {
	if a.retrying == nil {
		return 0
	}
	return a.retrying.Retries()
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "umbra",
		Short: "Application-consistent shadow copies for Linux",
		Long: `umbra makes application-consistent shadow copies of Linux volumes and backs
them up, the way the Volume Shadow Copy Service does on Windows: writers
(PostgreSQL, MariaDB, Redis, SQLite, scripts) bring each application to a
consistent point, freezing it for a few milliseconds where it must,
providers (btrfs, reflink, live) take a point-in-time copy of every volume,
and a backup stores it and only then lets the writers truncate their logs.
A restore brings each application back: stopped, restored, recovered,
started.

Configuration is read from ` + config.DefaultPath + ` (see "umbra help config");
state is kept in ` + defaultStateDir + `.

Backups go to a deduplicating, encrypted repository: a local directory
(default ` + defaultRepo + `, or --repo / UMBRA_REPO / [repository] in the
configuration) or an S3 bucket; its password comes from UMBRA_PASSWORD,
UMBRA_PASSWORD_FILE, the configuration's password_file, or a prompt.

Exit status: 0 success, 1 failure, 2 bad command line, 3 completed with
warnings (some files could not be read, a log was not truncated), 4 partial
(a writer failed and was left out; the others are stored), 5 a backup
failed its verification (umbra verify), 126 wal-fetch
failed otherwise than "not archived", 130 interrupted (Ctrl-C, SIGTERM;
what was begun is undone).

The whole story (docs/writers.md has every writer's options):
  umbra writers --writer postgres:host=/run/postgresql,user=postgres
  umbra backup --writer postgres:host=/run/postgresql,user=postgres
  umbra backups
  umbra restore latest --force`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", "", "configuration file (default "+config.DefaultPath+")")
	root.PersistentFlags().StringVar(&a.stateDir, "state-dir", "", "where sets and locks are kept (default $UMBRA_STATE_DIR, the config's state_dir, or "+defaultStateDir+")")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON for scripts instead of text")
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log each phase, and each store call tried again, to stderr")
	root.PersistentFlags().DurationVar(&a.retryFor, "retry-for", 5*time.Minute, "how long a store call that fails transiently (5xx, a dropped connection, a timeout) is tried again before the command fails; 0: not at all")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	// An unknown command is a usage error (exit 2), as documented.
	root.Args = func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q; umbra --help lists the commands", args[0])
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	root.AddCommand(a.initCommand(), a.backupCommand(), a.backupsCommand(), a.lsCommand(), a.showCommand(), a.restoreCommand(), a.verifyCommand(), a.walPushCommand(), a.walFetchCommand(),
		a.checkCommand(), a.forgetCommand(), a.pruneCommand(), a.keyCommand(),
		a.shadowCommand(), a.writersCommand(), a.providersCommand(), a.guardCommand(), a.serveCommand(), a.jobsCommand(), a.mountCommand(), a.runCommand(), a.versionCommand(), configHelp())
	root.AddCommand(a.manCommand(a.rootCommand))
	return root
}

func (a *app) config() (*config.Config, error) {
	if a.configPath != "" {
		return config.Load(a.configPath, true)
	}
	return config.Load(config.DefaultPath, false)
}

// env is what a job runs with in this command.
func (a *app) env(cfg *config.Config) *job.Env {
	self, _ := os.Executable()
	return &job.Env{Registry: a.reg, Config: cfg, StateDir: a.stateDir, Log: a.logger(),
		Guard: []string{self, guardCommandName}, Pause: testPause}
}

func (a *app) store(cfg *config.Config) (*shadow.Store, error) {
	return a.env(cfg).Store()
}

// logger logs every phase with -v; without it, warnings only (a writer
// retried or left out, a store call tried again): issue 11's "35 s of
// silent retries".
func (a *app) logger() *slog.Logger {
	if !a.verbose {
		return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: dropTime}))
	}
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// dropTime leaves the time out of a warning: it goes to a terminal or a
// log that has its own.
func dropTime(groups []string, attr slog.Attr) slog.Attr {
	if len(groups) == 0 && attr.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return attr
}

// writers builds the configured writers (unless skipped) and the inline ones.
func (a *app) writers(cfg *config.Config, inline []string, withConfig bool) ([]writer.Writer, error) {
	wrs, _, err := a.writersAndSpecs(cfg, inline, withConfig)
	return wrs, err
}

// writersAndSpecs is writers with the spec each was built from; a writer
// that cannot be built fails them all, naming it (a usage error).
func (a *app) writersAndSpecs(cfg *config.Config, inline []string, withConfig bool) ([]writer.Writer, []config.Spec, error) {
	wrs, specs, err := a.env(cfg).Writers(inline, withConfig)
	return wrs, specs, usage(err)
}

// buildWriters is job.Env.BuildWriters, a bad spec a usage error.
func (a *app) buildWriters(cfg *config.Config, inline []string, withConfig bool) ([]writer.Writer, []config.Spec, []error, error) {
	wrs, specs, broken, err := a.env(cfg).BuildWriters(inline, withConfig)
	return wrs, specs, broken, usage(err)
}

// usage makes a job's configuration error the command line's usage error.
func usage(err error) error {
	var ce *job.ConfigError
	if errors.As(err, &ce) {
		return &usageError{ce.Err}
	}
	return err
}

// coordinator builds the coordinator with the config's settings, overridden
// by any flag given.
func (a *app) coordinator(cfg *config.Config, store *shadow.Store, over shadow.Options) (*shadow.Coordinator, error) {
	return a.env(cfg).Coordinator(store, over)
}

// testPause, set only in the test binary (never in a shipped umbra), holds
// umbra at a named point (a writer phase, or "manifest") so fault tests can
// kill it there.
var testPause func(ctx context.Context, point string) error

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
