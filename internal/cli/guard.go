package cli

import (
	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/guard"
)

const guardCommandName = "thaw-guard"

// guardCommand is the process that thaws frozen filesystems if umbra dies;
// umbra starts it itself for --fsfreeze.
func (a *app) guardCommand() *cobra.Command {
	return &cobra.Command{
		Use:    guardCommandName,
		Short:  "Release a set's freezes if umbra exits or the limit passes (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return guard.Run(cmd.Context(), a.stdin, a.stdout, a.stderr)
		},
	}
}

func configHelp() *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "The configuration file",
		Long: `umbra reads /etc/umbra/umbra.toml, or the file given with --config. Every
setting is optional; a missing default file is an empty configuration.

  state_dir = "/var/lib/umbra"     # sets, locks and writers' last results

  [repository]                     # --repo, UMBRA_REPO, UMBRA_PASSWORD(_FILE) win
  location      = "/var/backups/umbra"       # or s3:https://host/bucket/prefix
  password_file = "/etc/umbra/umbra.pass"    # the password; never the password here

  [shadow]
  freeze_limit = "60s"             # longest writers stay frozen
  commit_limit = "10s"             # longest providers take to commit
  phase_limit  = "5m"              # every other phase
  provider     = ""                # force one provider: btrfs, reflink, live

  [[writer]]                       # one table per writer instance
  type = "sqlite"
  name = "app"                     # default: the file name without extension
  path = "/srv/app/app.db"

  [[writer]]
  type    = "script"
  name    = "myapp"
  freeze  = "/usr/local/bin/myapp-freeze"
  thaw    = "/usr/local/bin/myapp-thaw"
  paths   = "/srv/myapp"           # colon-separated; data the script covers
  timeout = "30s"                  # per command

  [[writer]]                       # postgres, mariadb, redis: see docs/writers.md
  type          = "postgres"
  name          = "main"
  host          = "/run/postgresql"
  password_file = "/etc/umbra/pg.pass"   # never password= on a command line
  service       = "postgresql@15-main"   # how restore stops and starts it

  Every writer also takes verify = "COMMAND" (and verify_timeout): the
  operator's own check of a verification sandbox (docs/verify.md).

  [[job]]                          # umbra backup --job nightly
  name         = "nightly"
  type         = "backup"          # umbra serve also runs "verify" jobs (this host's
                                   # latest backup) and "prune" jobs ([job.keep] on
                                   # this host's backups, all_hosts = true for all,
                                   # then unused data removed)
  writers      = ["postgres:main"] # default: every [[writer]]
  paths        = ["/etc"]          # plain paths besides the writers' data
  retries      = 3                 # for busy writers and time-outs (5s, 10s, ...)
  fallback     = false             # true: a failing writer's data is kept as "crash"
  strict       = false             # true: a failing writer fails the backup (else the others
                                   # are stored, it is recorded as failed, exit status 4)
  no_truncate  = []                # writers told it is a copy backup
  keep_shadows = false
  tags         = ["nightly"]
  verify       = false             # true: umbra verify each stored backup (exit 5 if it fails)
  truncate_after = "stored"        # "verified": writers truncate only after it passed
  schedule     = "daily 02:00"     # umbra serve runs it: systemd OnCalendar syntax,
                                   # e.g. "Mon..Fri 02:30", "*-*-01 03:00", "*:0/15"
  jitter       = "10m"             # a fixed offset within this, per job: hosts spread
  retry_runs   = 2                 # umbra serve runs a failed job again this often,
  retry_wait   = "10m"             # first after this, each next wait doubled
  [job.keep]                       # retention after each success (then umbra prune)
  daily  = 7
  weekly = 4

  [serve]                          # umbra serve
  socket       = "/run/umbra/umbra.sock"   # the API; owner only (+ socket_group)
  socket_group = ""
  listen       = ""                # e.g. "127.0.0.1:8420": TCP too, token needed;
  token_file   = ""                # default state_dir/serve/token, made if missing
  tls_cert     = ""                # needed to listen on anything but loopback
  tls_key      = ""
  max_parallel = 2                 # jobs at once (never two sharing a writer)
  on_stop      = "abort"           # SIGTERM: "abort" running jobs (writers thawed,
                                   # nothing truncated) or let them "finish"

Script commands run with /bin/sh -c and see UMBRA_PHASE, UMBRA_SET_ID,
UMBRA_BACKUP_TYPE, UMBRA_WRITER, UMBRA_PATHS and, from post-snapshot on,
UMBRA_SNAPSHOTS ("source=snapshot" lines). Keys: prepare, freeze, thaw, post,
complete, abort, pre-restore, post-restore, paths, needs, timeout.

The same writers can be given for one run with --writer TYPE:KEY=VALUE,...`,
	}
}
