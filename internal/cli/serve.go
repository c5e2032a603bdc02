package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/config"
	"github.com/umbra-backup/umbra/internal/daemon"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/repoopen"
	"github.com/umbra-backup/umbra/internal/repository"
)

// Version is umbra's version, set when a release is built
// (-ldflags "-X github.com/umbra-backup/umbra/internal/cli.Version=1.2.3").
var Version = "dev"

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print umbra's version, its Go and the repository format it writes",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if a.json {
				return a.printJSON(map[string]any{"version": Version, "go": runtime.Version(), "repository_format": repository.FormatVersion})
			}
			fmt.Fprintf(a.stdout, "umbra %s (%s), repository format %d\n", Version, runtime.Version(), repository.FormatVersion)
			return nil
		},
	}
}

func (a *app) serveCommand() *cobra.Command {
	var f repoFlags
	var socket, listen string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the configured jobs on their schedules, with a REST API and metrics",
		Long: `Run every [[job]] of the configuration file that has a schedule, at its
times (systemd OnCalendar syntax: "daily 02:00", "Mon..Fri 02:30", "*:0/15";
see umbra help config), until SIGTERM.

- A job never runs twice at once, nor beside another job with a writer of
  its own; at most [serve] max_parallel jobs run together (default 2).
- A time missed while umbra serve was down runs once at start ("catch-up");
  a run the daemon died in (kill -9, a crash) is marked interrupted and run
  again at start ("recover"). Its writers were thawed by the thaw guard and
  nothing was truncated.
- Jobs whose data is on one volume take turns (a shadow set holds its
  volumes until its backup is stored): the later one waits, up to an hour,
  with nothing frozen.
- A failed run is tried again retry_runs times, retry_wait apart (doubling).
- Every run is kept in the history (state_dir/serve/runs, 500 per job).
- SIGHUP reads the configuration again (a broken one is refused and the old
  one kept); SIGTERM aborts running jobs (writers thawed, nothing truncated)
  or, with [serve] on_stop = "finish", lets them end.

The API (docs/api.md) answers on a Unix socket (--socket, default
` + daemon.DefaultSocket + `), open to its owner only, or its socket_group too;
--listen ADDR serves it on TCP as well, where every call but /metrics needs
the token of [serve] token_file (default state_dir/serve/token, made at the
first start): "Authorization: Bearer TOKEN". Plain HTTP only on loopback;
elsewhere [serve] tls_cert and tls_key. Prometheus metrics are at /metrics.

The repository's password must come without a prompt: [repository]
password_file, UMBRA_PASSWORD_FILE or UMBRA_PASSWORD.`,
		Example: `  umbra serve
  umbra serve --listen 127.0.0.1:8420
  curl --unix-socket /run/umbra/umbra.sock http://umbra/api/v1/jobs
  curl --unix-socket /run/umbra/umbra.sock -X POST http://umbra/api/v1/jobs/nightly/run
  systemctl reload umbra       # SIGHUP: read the configuration again`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			env := func(cfg *config.Config) *job.Env {
				e := a.env(cfg)
				e.Log = log
				// Jobs on one volume take turns: a set holds its
				// volumes until its backup is stored.
				e.WaitBusy = time.Hour
				return e
			}
			open := func(ctx context.Context, cfg *config.Config) (*repository.Repository, func(), error) {
				loc := cmp.Or(f.repo, os.Getenv("UMBRA_REPO"), cfg.Repository.Location, defaultRepo)
				pw, err := daemonPassword(cfg)
				if err != nil {
					return nil, nil, err
				}
				return (&repoopen.Opener{Location: loc, Password: pw, RetryFor: a.retryFor, Log: log}).Open(ctx)
			}
			// The repository must open now: a daemon that fails at 02:00
			// for a password it never had helps no one.
			_, done, err := open(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			done()
			d, err := daemon.New(daemon.Options{Load: a.config, Env: env, Open: open,
				StateDir: env(cfg).StateDirectory(), Log: log, Version: Version})
			if err != nil {
				return err
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					if err := d.Reload(); err != nil {
						log.Error("the configuration was not reloaded; the one in use stays", "err", err)
					}
				}
			}()
			s := cfg.Serve
			err = d.Serve(cmd.Context(), daemon.Listen{Socket: cmp.Or(socket, s.Socket), SocketGroup: s.SocketGroup,
				TCP: cmp.Or(listen, s.Listen), TLSCert: s.TLSCert, TLSKey: s.TLSKey, TokenFile: s.TokenFile})
			if err != nil {
				return err
			}
			log.Info("umbra serve stopped")
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&socket, "socket", "", "the API's Unix socket (default [serve] socket, or "+daemon.DefaultSocket+")")
	cmd.Flags().StringVar(&listen, "listen", "", "serve the API on this TCP address too (token needed), e.g. 127.0.0.1:8420")
	return cmd
}

// daemonPassword is the repository's password from the environment or the
// configuration: a daemon has no terminal to ask on.
func daemonPassword(cfg *config.Config) (string, error) {
	if p := os.Getenv("UMBRA_PASSWORD"); p != "" {
		return p, nil
	}
	if file := os.Getenv("UMBRA_PASSWORD_FILE"); file != "" {
		return repoopen.ReadSecret(file, "UMBRA_PASSWORD_FILE")
	}
	if cfg.Repository.PasswordFile != "" {
		return repoopen.ReadSecret(cfg.Repository.PasswordFile, "[repository] password_file")
	}
	return "", errors.New("umbra serve needs the repository's password without a prompt: set [repository] password_file (or UMBRA_PASSWORD_FILE)")
}
